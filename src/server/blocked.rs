//! Clients blocked in `TAG.GETL … WAIT`, and lease timers.
//!
//! Each blocked client has one owner at a time, and is released exactly
//! once: while it waits, the engine's waiter queue owns it; whoever takes
//! it out of that queue (a wake, its timeout, its disconnection) is the one
//! that calls `RM_UnblockClient`. A disconnection reported for a client
//! already woken finds nothing to release (Redis 7.0 reports those too, and
//! a second `RM_UnblockClient` would free it twice).

use super::keys;
use crate::engine::index::Db;
use crate::engine::{self, stats, Client, Wake};
use redis_module::{raw, Context, RedisValue};
use std::os::raw::{c_int, c_void};

type Bc = *mut raw::RedisModuleBlockedClient;

/// `[value, token]`, the reply of TAG.GETL.
pub fn pair(value: Option<Vec<u8>>, token: Option<String>) -> RedisValue {
    RedisValue::Array(vec![
        value.map_or(RedisValue::Null, RedisValue::StringBuffer),
        token.map_or(RedisValue::Null, RedisValue::BulkString),
    ])
}

/// Issues a lease on `key` (if none is live) and arms its lapse timer.
pub fn issue(ctx: &Context, db: Db, key: &[u8], ttl_ms: i64) -> Option<String> {
    let (token, lease) = engine::with(|s| s.leases.issue(db, key, ttl_ms, keys::now_ms()))
        .ok()
        .flatten()?;
    stats::bump(&stats::LEASES_GRANTED);
    let data = Box::into_raw(Box::new((db, key.to_vec(), lease.seq)));
    // SAFETY: the timer API is present on every server we load on (checked
    // by the Option); `data` is a leaked Box that `on_lapse` takes back
    // exactly once, when the timer fires. `ttl_ms` is at most a day.
    unsafe {
        if let Some(create) = raw::RedisModule_CreateTimer {
            create(ctx.ctx, ttl_ms, Some(on_lapse), data.cast());
        }
    }
    Some(token)
}

unsafe extern "C" fn on_lapse(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    // SAFETY: `data` is the Box leaked by `issue` for this timer only.
    let (db, key, seq) = *unsafe { Box::from_raw(data.cast::<(Db, Vec<u8>, u64)>()) };
    let wake = engine::with(|s| {
        if s.leases.lapse(db, &key, seq) {
            s.hand_over(db, &key)
        } else {
            None
        }
    })
    .ok()
    .flatten();
    wake_all(&Context::new(ctx), wake.into_iter().collect());
}

/// Wakes clients: each is released, with what its reply needs, when the
/// server is about to sleep (`release_woken`). Redis 7.0 loses the reply of
/// a client released and then unblocked or timed out before its reply runs;
/// released there, its reply runs at once.
pub fn wake(ctx: &Context, wakes: Vec<Wake>) {
    wake_all(ctx, wakes);
}

fn wake_all(_ctx: &Context, wakes: Vec<Wake>) {
    if !wakes.is_empty() {
        super::update(|s| s.waking.extend(wakes));
    }
}

/// Called as the server is about to sleep, just before it runs the replies
/// of released clients.
pub fn release_woken() {
    let woken = engine::with(|s| std::mem::take(&mut s.waking)).unwrap_or_default();
    for w in woken {
        let client = w.client();
        let data = Box::into_raw(Box::new(w));
        // SAFETY: `client` is a handle from RM_BlockClient that the engine
        // held until now; taking it out made us its only owner, so this is
        // its one release. Redis hands `data` back to `free_wake`.
        unsafe {
            if let Some(f) = raw::RedisModule_UnblockClient {
                f(client as Bc, data.cast());
            }
        }
    }
}

unsafe extern "C" fn on_wake(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    // SAFETY: called by Redis with a reply context for a client we woke.
    let data = unsafe {
        raw::RedisModule_GetBlockedClientPrivateData.map_or(std::ptr::null_mut(), |f| f(ctx))
    };
    // SAFETY: the private data is the `Wake` boxed by `wake_all`, alive
    // until `free_wake` runs after this callback.
    let reply = match unsafe { data.cast::<Wake>().as_ref() } {
        None | Some(Wake::Timeout { .. }) => Ok(pair(None, None)),
        Some(Wake::Purged { deleted, .. }) => Ok(RedisValue::Integer(*deleted)),
        Some(Wake::Members { members, .. }) => Ok(RedisValue::Array(
            members
                .iter()
                .map(|m| RedisValue::StringBuffer(m.clone()))
                .collect(),
        )),
        // The text of an engine error: client bytes in it are escaped.
        Some(Wake::Failed { error, .. }) => {
            return context.reply(Err(redis_module::RedisError::String(error.clone()))) as c_int
        }
        Some(Wake::Value { key, .. }) => keys::read_string(&context, key).map(|v| pair(v, None)),
        Some(Wake::Lease {
            db, key, ttl_ms, ..
        }) => keys::read_string(&context, key).map(|v| match v {
            Some(v) => pair(Some(v), None),
            None => pair(None, issue(&context, *db, key, *ttl_ms)),
        }),
    };
    context.reply(reply.map_err(Into::into)) as c_int
}

unsafe extern "C" fn on_timeout(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    // SAFETY: called by Redis with the timed-out client's context.
    let bc =
        unsafe { raw::RedisModule_GetBlockedClientHandle.map_or(std::ptr::null_mut(), |f| f(ctx)) };
    // Only `CLIENT UNBLOCK` gets here (the module keeps the time itself);
    // Redis does not call this for a client already woken.
    let gathered = engine::with(|s| s.gathers.forget_client(bc as Client))
        .ok()
        .flatten();
    let purge = gathered == Some(true)
        || engine::with(|s| s.purges.forget_waiter(bc as Client)).unwrap_or(false);
    if purge
        || gathered.is_some()
        || engine::with(|s| s.forget_waiter(bc as Client)).unwrap_or(false)
    {
        release(bc);
    }
    if purge {
        return context.reply(Err(redis_module::RedisError::Str(
            "UNBLOCKED the purge carries on in the background",
        ))) as c_int;
    }
    if gathered.is_some() {
        return context.reply(Err(redis_module::RedisError::Str(
            "UNBLOCKED client unblocked while the other masters answer",
        ))) as c_int;
    }
    context.reply(Ok(pair(None, None))) as c_int
}

/// Blocks the caller of a sliced purge until it ends (no time limit: a
/// client that gives up disconnects, or is unblocked with `CLIENT
/// UNBLOCK`, and the purge carries on). `None` when it cannot block.
pub fn block_for_purge(ctx: &Context) -> Option<Client> {
    // SAFETY: plain function pointers of the module API.
    let (Some(block), Some(on_dc)) = (unsafe { raw::RedisModule_BlockClient }, unsafe {
        raw::RedisModule_SetDisconnectCallback
    }) else {
        return None;
    };
    // SAFETY: `ctx` is the calling command's context; the callbacks match
    // the signatures Redis expects.
    let bc = unsafe { block(ctx.ctx, Some(on_wake), Some(on_timeout), Some(free_wake), 0) };
    if bc.is_null() {
        return None;
    }
    // SAFETY: `bc` was just returned by RM_BlockClient.
    unsafe { on_dc(bc, Some(on_disconnect)) };
    Some(bc as Client)
}

/// The module times `WAIT` itself rather than leave it to the server:
/// Redis 7.0 loses the reply of a client whose server timeout falls in the
/// same event-loop turn as its wake.
fn on_wait_over(ctx: &Context, id: u64) {
    let wake = engine::with(|s| s.wait_over(id)).ok().flatten();
    wake_all(ctx, wake.into_iter().collect());
}

unsafe extern "C" fn on_disconnect(_ctx: *mut raw::RedisModuleCtx, bc: Bc) {
    let gathered = engine::with(|s| s.gathers.forget_client(bc as Client))
        .ok()
        .flatten();
    if gathered.is_some() || engine::with(|s| s.forget_waiter(bc as Client)).unwrap_or(false) {
        release(bc);
    }
}

/// The one release of a client nobody will reply to through us.
fn release(bc: Bc) {
    // SAFETY: the caller just took `bc` out of the waiter queue: it is
    // live and released nowhere else.
    unsafe {
        if let Some(f) = raw::RedisModule_UnblockClient {
            f(bc, std::ptr::null_mut());
        }
    }
}

unsafe extern "C" fn free_wake(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if !data.is_null() {
        // SAFETY: `data` is the Box leaked by `wake_all`; Redis frees it once.
        drop(unsafe { Box::from_raw(data.cast::<Wake>()) });
    }
}

/// Blocks the caller until the key is filled, its lease passes to it, or
/// `wait_ms` runs out (0: no limit). False when it cannot block.
pub fn block(ctx: &Context, db: Db, key: &[u8], ttl_ms: i64, wait_ms: i64) -> bool {
    // SAFETY: plain function pointers of the module API.
    let (Some(block), Some(on_dc)) = (unsafe { raw::RedisModule_BlockClient }, unsafe {
        raw::RedisModule_SetDisconnectCallback
    }) else {
        return false;
    };
    // SAFETY: `ctx` is the calling command's context; the callbacks match
    // the signatures Redis expects. No server timeout (0): see `on_wait_over`.
    let bc = unsafe { block(ctx.ctx, Some(on_wake), Some(on_timeout), Some(free_wake), 0) };
    if bc.is_null() {
        return false;
    }
    // SAFETY: `bc` was just returned by RM_BlockClient.
    unsafe { on_dc(bc, Some(on_disconnect)) };
    let id = engine::with(|s| s.add_waiter(db, key, bc as Client, ttl_ms));
    if let (Ok(id), true) = (id, wait_ms > 0) {
        let ms = u64::try_from(wait_ms).unwrap_or(0);
        ctx.create_timer(std::time::Duration::from_millis(ms), on_wait_over, id);
    }
    true
}
