//! The only code that talks to Redis: key access and calls, applying plans
//! (with replication and ACL), keyspace notifications turned into changes
//! of the engine's state, blocked clients, timers, settings, command info.

pub mod apply;
pub mod blocked;
pub mod cluster;
pub mod cmdinfo;
pub mod config;
pub mod events;
pub mod info;
pub mod keys;
pub mod notify;
pub mod purge;
pub mod rebuild;
pub mod rules;

use redis_module::{Context, RedisResult, RedisString, Status};

/// Runs a module command that writes. The writes the keyspace owes the tag
/// sets are paid before it acts (so it sees every earlier command's
/// effect, in a pipeline, transaction or script alike) and after (the
/// rules its own writes fired); no early return inside `f` can skip them.
pub fn write_command(
    ctx: &Context,
    args: Vec<RedisString>,
    f: fn(&Context, Vec<RedisString>) -> RedisResult,
) -> RedisResult {
    apply::settle(ctx);
    let reply = f(ctx, args);
    apply::settle(ctx);
    reply
}

/// Module start-up: settings from the load arguments, command info,
/// notifications and server events, then the index of whatever data the
/// server already holds (`MODULE LOAD` into a running server).
pub fn init(ctx: &Context, args: &[RedisString]) -> Status {
    std::panic::set_hook(Box::new(|info| {
        redis_module::logging::log_warning(format!("tagcache: internal error: {info}"));
    }));
    let raw_args: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
    match config::parse_load_args(&raw_args) {
        Ok(settings) => {
            config::apply(settings);
            config::tag_prefix();
        }
        Err(why) => {
            ctx.log_warning(&format!("tagcache: refusing to load: {why}"));
            return Status::Err;
        }
    }
    let cluster = ctx
        .get_flags()
        .intersects(redis_module::ContextFlags::CLUSTER);
    config::set_slotted(cluster);
    if cluster {
        let p = config::tag_prefix();
        let idx = crate::engine::plan::SLOT_INDEX;
        if p.starts_with(idx) || idx.starts_with(p) {
            ctx.log_warning("tagcache: refusing to load: in a cluster, tag-prefix must not overlap tagcache:idx:");
            return Status::Err;
        }
    }
    info::register(ctx);
    cluster::register(ctx);
    notify::register_filter(ctx);
    if !notify::subscribe_keyspace(ctx) {
        ctx.log_warning("tagcache: refusing to load: could not subscribe to keyspace events");
        return Status::Err;
    }
    if let Err(why) = cmdinfo::register(ctx).and_then(|_| notify::subscribe_server_events(ctx)) {
        ctx.log_warning(&format!("tagcache: refusing to load: {why}"));
        return Status::Err;
    }
    if !ctx
        .get_flags()
        .intersects(redis_module::ContextFlags::LOADING)
    {
        rebuild::rebuild(ctx);
    }
    Status::Ok
}
