//! tagcache: cache invalidation inside Redis. The command table and the
//! module's start-up; everything else lives in three layers:
//! `commands` (parse, call the engine, reply) over `engine` (plain Rust:
//! the state and the plans) and `server` (everything that talks to Redis).

#![deny(clippy::undocumented_unsafe_blocks)]

mod commands;
mod engine;
mod server;

use redis_module::configuration::ConfigurationFlags;
use redis_module::{redis_module, Context, RedisString, Status};
use server::cmdinfo::flags;
use server::config;

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
    server::init(ctx, args, register_commands)
}

/// The command table. Each command gets an entry of its own that hands its
/// handler the arguments as the server holds them (`server::dispatch`),
/// rather than the crate's entry, which retains and frees every argument
/// of every call.
macro_rules! command_table {
    ($([$name:literal, $handler:path]),* $(,)?) => {
        fn register_commands(ctx: &Context) -> Result<(), String> {
            $(
                {
                    extern "C" fn entry(
                        ctx: *mut redis_module::raw::RedisModuleCtx,
                        argv: *mut *mut redis_module::raw::RedisModuleString,
                        argc: std::os::raw::c_int,
                    ) -> std::os::raw::c_int {
                        server::dispatch(ctx, argv, argc, $handler)
                    }
                    server::create_command(ctx, $name, flags($name), Some(entry))?;
                }
            )*
            Ok(())
        }
    };
}

command_table! {
    ["tag.set", commands::tag_set],
    ["tag.apply", commands::tag_apply],
    ["tag.add", commands::tag_add],
    ["tag.rem", commands::tag_rem],
    ["tag.purge", commands::tag_purge],
    ["tag.invalidate", commands::tag_invalidate],
    ["tag.members", commands::tag_members],
    ["tag.card", commands::tag_card],
    ["tag.tags", commands::tag_tags],
    ["tag.info", commands::tag_info],
    ["tag.link", commands::tag_link],
    ["tag.unlink", commands::tag_unlink],
    ["tag.links", commands::tag_links],
    ["tag.getl", commands::tag_getl],
    ["ver.get", commands::ver_get],
    ["ver.set", commands::ver_set],
    ["ver.bump", commands::ver_bump],
    ["ver.current", commands::ver_current],
}

redis_module! {
    name: "tagcache",
    version: 10000,
    allocator: (Alloc, ALLOC),
    data_types: [],
    init: init,
    commands: [],
    configurations: [
        i64: [
            ["events-stream-maxlen", &config::STREAM_MAXLEN, config::STREAM_MAXLEN_DEFAULT, config::STREAM_MAXLEN_MIN, config::STREAM_MAXLEN_MAX, ConfigurationFlags::DEFAULT, None],
            ["lease-ttl", &config::LEASE_TTL, config::LEASE_TTL_DEFAULT, config::LEASE_TTL_MIN, config::LEASE_TTL_MAX, ConfigurationFlags::DEFAULT, None],
            ["purge-atomic-max", &config::PURGE_ATOMIC_MAX, config::PURGE_ATOMIC_MAX_DEFAULT, config::PURGE_ATOMIC_MAX_MIN, config::PURGE_ATOMIC_MAX_MAX, ConfigurationFlags::DEFAULT, None],
            ["purge-slice-us", &config::PURGE_SLICE_US, config::PURGE_SLICE_US_DEFAULT, config::PURGE_SLICE_US_MIN, config::PURGE_SLICE_US_MAX, ConfigurationFlags::DEFAULT, None],
            ["cluster-timeout-ms", &config::CLUSTER_TIMEOUT_MS, config::CLUSTER_TIMEOUT_MS_DEFAULT, config::CLUSTER_TIMEOUT_MS_MIN, config::CLUSTER_TIMEOUT_MS_MAX, ConfigurationFlags::DEFAULT, None],
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
