//! Publishing events: on the events channel and, when configured,
//! appended to the events stream (replicated like any write).

use super::config;
use super::keys::{self, Mode};
use crate::engine::events::payload;
pub use crate::engine::events::{Event, Op};
use crate::engine::stats;
use redis_module::Context;

/// PUBLISH without a command call (not replicated, as from a module).
fn publish(ctx: &Context, channel: &[u8], message: &[u8]) -> bool {
    // SAFETY: reading a function pointer of the module API.
    let Some(publish) = (unsafe { redis_module::raw::RedisModule_PublishMessage }) else {
        return false;
    };
    let channel = redis_module::RedisString::create_from_slice(ctx.ctx, channel);
    let message = redis_module::RedisString::create_from_slice(ctx.ctx, message);
    // SAFETY: the strings outlive the call; `ctx` is the running context.
    unsafe {
        publish(ctx.ctx, channel.inner, message.inner) == redis_module::raw::REDISMODULE_OK as i32
    }
}

/// Publishes the event once the change is done. Only a master emits: a
/// replica receives the stream entry through replication.
pub fn emit(ctx: &Context, ev: &Event) {
    if !keys::may_write(ctx) {
        return;
    }
    let body = payload(ev, keys::now_ms());
    let channel = config::EVENTS_CHANNEL.get();
    if !channel.is_empty() && publish(ctx, channel.as_bytes(), body.as_bytes()) {
        stats::bump(&stats::EVENTS);
    }
    let stream = config::EVENTS_STREAM.get();
    if !stream.is_empty() {
        let maxlen = config::stream_maxlen().to_string();
        let args: [&[u8]; 7] = [
            stream.as_bytes(),
            b"MAXLEN",
            b"~",
            maxlen.as_bytes(),
            b"*",
            b"event",
            body.as_bytes(),
        ];
        // The module's own record of a change: no rule fires on it (a rule
        // on the stream's name would otherwise fire itself for ever).
        let _own = super::guards::Applying::begin();
        if let Err(e) = keys::call(ctx, Mode::Replicated, "XADD", &args) {
            super::log::warning(ctx, &format!("tagcache: events stream append failed: {e}"));
        }
    }
}

/// A purge (a call, a rule firing, the end of a sliced purge) is done: its
/// keys are counted, leases on its tags are refused from now on, and its
/// one event is published.
pub fn purged(ctx: &Context, ev: &Event) {
    let counter = match ev.grace_ms {
        Some(_) => &stats::KEYS_MARKED_STALE,
        None => &stats::KEYS_PURGED,
    };
    stats::add(counter, ev.keys.max(0) as u64);
    super::update(|s| s.leases.tags_purged(ev.tags));
    emit(ctx, ev);
}
