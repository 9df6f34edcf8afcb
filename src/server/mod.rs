//! The only code that talks to Redis: key access and calls, applying plans
//! (with replication and ACL), keyspace notifications turned into changes
//! of the engine's state, blocked clients, timers, settings, command info.

pub mod acl;
pub mod apply;
pub mod blocked;
pub mod bus;
pub mod cluster;
pub mod cmdinfo;
pub mod config;
pub mod events;
pub mod guards;
pub mod info;
pub mod keys;
pub mod log;
pub mod moves;
pub mod notify;
pub mod owed;
pub mod purge;
pub mod rebuild;
pub mod rules;

use redis_module::{raw, Context, RedisResult, RedisString, Status};
use std::ffi::CString;
use std::os::raw::c_int;

/// Runs a module command that writes. The writes the keyspace owes the tag
/// sets are paid before it acts (so it sees every earlier command's
/// effect, in a pipeline, transaction or script alike) and after (the
/// rules its own writes fired); no early return inside `f` can skip them.
pub fn write_command(
    ctx: &Context,
    args: &[RedisString],
    f: fn(&Context, &[RedisString]) -> RedisResult,
) -> RedisResult {
    owed::settle(ctx);
    let reply = f(ctx, args);
    owed::settle(ctx);
    reply
}

/// The module's commands, as `init` registered them.
static COMMANDS: std::sync::OnceLock<&'static [cmdinfo::Info]> = std::sync::OnceLock::new();

/// Every module command's entry: finds the command's record by its name
/// and runs its handler (through `write_command` for one that writes) with
/// the call's arguments borrowed (the server holds them for the whole
/// call; a handler that keeps one longer retains it), then sends its reply.
extern "C" fn entry(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    let n = usize::try_from(argc).unwrap_or(0);
    let mut args: smallvec::SmallVec<[RedisString; 12]> = if argv.is_null() {
        smallvec::SmallVec::new()
    } else {
        // SAFETY: the server passes `argc` live strings at `argv` for the
        // duration of the call.
        unsafe { std::slice::from_raw_parts(argv, n) }
            .iter()
            .map(|&s| RedisString::from_redis_module_string(ctx, s))
            .collect()
    };
    let name = args.first().map(RedisString::as_slice).unwrap_or_default();
    let info = COMMANDS.get().and_then(|t| {
        t.iter()
            .find(|i| i.name.len() == name.len() && name.eq_ignore_ascii_case(i.name.as_bytes()))
    });
    let reply = match info {
        Some(i) if i.writes => write_command(&context, &args, i.handler),
        Some(i) => (i.handler)(&context, &args),
        None => Err(crate::engine::error::Error::Internal("unknown command".into()).into()),
    };
    // SAFETY: the strings are borrowed, not owned: forgetting them leaves
    // their reference counts as the server set them. (RedisString has no
    // other resource to release.)
    unsafe { args.set_len(0) };
    context.reply(reply) as c_int
}

/// Registers one module command (its key specs, ACL categories and
/// documentation are added by `cmdinfo::register`).
pub fn create_command(
    ctx: &Context,
    name: &str,
    flags: &str,
    entry: raw::RedisModuleCmdFunc,
) -> Result<(), String> {
    let (Ok(cname), Ok(cflags)) = (CString::new(name), CString::new(flags)) else {
        return Err(format!("bad command name {name}"));
    };
    // SAFETY: a module API call from init with the module's context; the
    // strings are live for the call (the server copies them).
    let ok = unsafe {
        raw::RedisModule_CreateCommand.is_some_and(|f| {
            f(ctx.ctx, cname.as_ptr(), entry, cflags.as_ptr(), 0, 0, 0)
                == raw::REDISMODULE_OK as c_int
        })
    };
    if ok {
        Ok(())
    } else {
        Err(format!("could not create command {name}"))
    }
}

/// Module start-up: settings from the load arguments, command info,
/// notifications and server events, then the index of whatever data the
/// server already holds (`MODULE LOAD` into a running server).
pub fn init(ctx: &Context, args: &[RedisString], commands: &'static [cmdinfo::Info]) -> Status {
    std::panic::set_hook(Box::new(|info| {
        log::warning_anywhere(&format!("tagcache: internal error: {info}"));
    }));
    let raw_args: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
    match config::parse_load_args(&raw_args) {
        Ok(settings) => {
            config::apply(settings);
            if let Err(why) = config::freeze() {
                log::warning(ctx, &format!("tagcache: refusing to load: {why}"));
                return Status::Err;
            }
        }
        Err(why) => {
            log::warning(ctx, &format!("tagcache: refusing to load: {why}"));
            return Status::Err;
        }
    }
    let cluster = ctx
        .get_flags()
        .intersects(redis_module::ContextFlags::CLUSTER);
    config::set_slotted(cluster);
    let _ = COMMANDS.set(commands);
    for info in commands {
        if let Err(why) = create_command(ctx, info.name, info.flags, Some(entry)) {
            log::warning(ctx, &format!("tagcache: refusing to load: {why}"));
            return Status::Err;
        }
    }
    info::register(ctx);
    cluster::register(ctx);
    notify::register_filter(ctx);
    if !notify::subscribe_keyspace(ctx) {
        log::warning(
            ctx,
            "tagcache: refusing to load: could not subscribe to keyspace events",
        );
        return Status::Err;
    }
    if let Err(why) =
        cmdinfo::register(ctx, commands).and_then(|_| notify::subscribe_server_events(ctx))
    {
        log::warning(ctx, &format!("tagcache: refusing to load: {why}"));
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

/// Changes the engine's state where nobody can be told of a failure (a
/// notification, a timer, a server event): a state that cannot be reached
/// is logged, and counted by `engine::with`.
pub fn update(f: impl FnOnce(&mut crate::engine::State)) {
    if let Err(e) = crate::engine::with(f) {
        log::warning_anywhere(&format!("tagcache: {e}"));
    }
}
