//! tagcache: cache invalidation inside Redis. The command table and the
//! module's start-up; everything else lives in the modules below.

mod args;
mod cmdinfo;
mod commands;
mod config;
mod error;
mod events;
mod index;
mod lease;
mod link;
mod notify;
mod rebuild;
mod rules;
mod slot;
mod stats;
mod store;

use commands::{info, tag, version};
use redis_module::configuration::ConfigurationFlags;
use redis_module::{redis_module, Context, RedisString, Status};

// Unit tests run without a server, so they cannot use the server's allocator.
#[cfg(not(test))]
type Alloc = redis_module::alloc::RedisAlloc;
#[cfg(not(test))]
const ALLOC: Alloc = redis_module::alloc::RedisAlloc;
#[cfg(test)]
type Alloc = std::alloc::System;
#[cfg(test)]
const ALLOC: Alloc = std::alloc::System;

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    std::panic::set_hook(Box::new(|info| {
        redis_module::logging::log_warning(format!("tagcache: internal error: {info}"));
    }));
    let raw_args: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
    match config::parse_load_args(&raw_args) {
        Ok(settings) => config::apply(settings),
        Err(why) => {
            ctx.log_warning(&format!("tagcache: refusing to load: {why}"));
            return Status::Err;
        }
    }
    info::register_info(ctx);
    notify::register_filter(ctx);
    if let Err(why) = cmdinfo::register(ctx).and_then(|_| notify::subscribe_server_events(ctx)) {
        ctx.log_warning(&format!("tagcache: refusing to load: {why}"));
        return Status::Err;
    }
    Status::Ok
}

redis_module! {
    name: "tagcache",
    version: 10000,
    allocator: (Alloc, ALLOC),
    data_types: [],
    init: init,
    commands: [
        ["tag.set", tag::tag_set, "write deny-oom", 0, 0, 0, ""],
        ["tag.add", tag::tag_add, "write deny-oom", 0, 0, 0, ""],
        ["tag.rem", tag::tag_rem, "write", 0, 0, 0, ""],
        ["tag.purge", tag::tag_purge, "write", 0, 0, 0, ""],
        ["tag.members", tag::tag_members, "readonly", 0, 0, 0, ""],
        ["tag.card", tag::tag_card, "readonly", 0, 0, 0, ""],
        ["tag.tags", tag::tag_tags, "readonly fast", 0, 0, 0, ""],
        ["tag.info", info::tag_info, "readonly fast", 0, 0, 0, ""],
        ["tag.link", link::tag_link, "write deny-oom", 0, 0, 0, ""],
        ["tag.unlink", link::tag_unlink, "write", 0, 0, 0, ""],
        ["tag.links", link::tag_links, "readonly", 0, 0, 0, ""],
        ["tag.getl", commands::lease::tag_getl, "write deny-oom", 0, 0, 0, ""],
        ["ver.get", version::ver_get, "readonly fast", 0, 0, 0, ""],
        ["ver.set", version::ver_set, "write deny-oom", 0, 0, 0, ""],
        ["ver.bump", version::ver_bump, "write deny-oom fast", 0, 0, 0, ""],
        ["ver.current", version::ver_current, "readonly fast", 0, 0, 0, ""],
    ],
    event_handlers: [
        [@ALL: notify::on_keyspace_event],
    ],
    configurations: [
        i64: [
            ["events-stream-maxlen", &config::STREAM_MAXLEN, config::STREAM_MAXLEN_DEFAULT, config::STREAM_MAXLEN_MIN, config::STREAM_MAXLEN_MAX, ConfigurationFlags::DEFAULT, None],
            ["lease-ttl", &config::LEASE_TTL, config::LEASE_TTL_DEFAULT, config::LEASE_TTL_MIN, config::LEASE_TTL_MAX, ConfigurationFlags::DEFAULT, None],
        ],
        string: [
            ["tag-prefix", &config::TAG_PREFIX, config::TAG_PREFIX_DEFAULT, ConfigurationFlags::DEFAULT, None],
            ["ver-prefix", &config::VER_PREFIX, config::VER_PREFIX_DEFAULT, ConfigurationFlags::DEFAULT, None],
            ["events-channel", &config::EVENTS_CHANNEL, config::EVENTS_CHANNEL_DEFAULT, ConfigurationFlags::DEFAULT, None],
            ["events-stream", &config::EVENTS_STREAM, config::EVENTS_STREAM_DEFAULT, ConfigurationFlags::DEFAULT, None],
        ],
        bool: [],
        enum: [],
        module_args_as_configuration: false,
    ]
}
