//! Counters and settings, for TAG.INFO and the `INFO tagcache` section.

use super::config;
use crate::engine::stats::get;
use crate::engine::{self, stats};
use redis_module::{raw, Context};
use std::ffi::CString;

pub enum Field {
    Int(i64),
    Text(String),
}

pub fn fields() -> Vec<(&'static str, Field)> {
    let (keys, tags, leases, waiters, purges, purge_left, stale) = engine::with(|s| {
        (
            s.index.keys(),
            s.index.tag_count(),
            s.leases.outstanding(),
            s.waiters
                .values()
                .map(std::collections::VecDeque::len)
                .sum::<usize>(),
            s.purges.jobs.len(),
            s.purges.keys_left(),
            s.stale.len(),
        )
    })
    .unwrap_or_default();
    let n = |v: u64| Field::Int(i64::try_from(v).unwrap_or(i64::MAX));
    let u = |v: usize| Field::Int(i64::try_from(v).unwrap_or(i64::MAX));
    vec![
        ("commands", n(get(&stats::COMMANDS))),
        ("tagged_keys", u(keys)),
        ("tags", u(tags)),
        ("stale_keys", u(stale)),
        ("tag_writes", n(get(&stats::TAG_WRITES))),
        ("purges", n(get(&stats::PURGES))),
        ("keys_purged", n(get(&stats::KEYS_PURGED))),
        ("index_cleanups", n(get(&stats::INDEX_CLEANUPS))),
        ("version_bumps", n(get(&stats::BUMPS))),
        ("rule_firings", n(get(&stats::RULE_FIRINGS))),
        ("rule_keys_denied", n(get(&stats::RULE_KEYS_DENIED))),
        ("events_published", n(get(&stats::EVENTS))),
        ("state_busy", n(get(&stats::STATE_BUSY))),
        ("keys_marked_stale", n(get(&stats::KEYS_MARKED_STALE))),
        ("stale_served", n(get(&stats::STALE_SERVED))),
        ("refresh_leases", n(get(&stats::REFRESH_LEASES))),
        ("leases_granted", n(get(&stats::LEASES_GRANTED))),
        ("leases_rejected", n(get(&stats::LEASES_REJECTED))),
        ("leases_outstanding", u(leases)),
        ("purges_in_progress", u(purges)),
        ("purge_keys_left", u(purge_left)),
        ("lease_waiters", u(waiters)),
        ("tag_prefix", Field::Text(config::TAG_PREFIX.get())),
        ("ver_prefix", Field::Text(config::VER_PREFIX.get())),
        ("events_channel", Field::Text(config::EVENTS_CHANNEL.get())),
        ("events_stream", Field::Text(config::EVENTS_STREAM.get())),
        ("events_stream_maxlen", Field::Int(config::stream_maxlen())),
        ("lease_ttl", Field::Int(config::lease_ttl())),
        ("purge_atomic_max", Field::Int(config::purge_atomic_max())),
        ("purge_slice_us", Field::Int(config::purge_slice_us())),
    ]
}

/// The `# tagcache_stats` section of `INFO` (also shown by `INFO tagcache`).
unsafe extern "C" fn info_func(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: i32) {
    let (Some(section), Some(int), Some(text)) = (
        raw::RedisModule_InfoAddSection,
        raw::RedisModule_InfoAddFieldLongLong,
        raw::RedisModule_InfoAddFieldCString,
    ) else {
        return;
    };
    section(ctx, c"stats".as_ptr());
    for (name, value) in fields() {
        let Ok(name) = CString::new(name) else {
            continue;
        };
        match value {
            Field::Int(i) => {
                int(ctx, name.as_ptr(), i);
            }
            Field::Text(s) => {
                // INFO fields cannot hold line breaks; settings never do.
                if let Ok(v) = CString::new(s.replace(['\r', '\n'], " ")) {
                    text(ctx, name.as_ptr(), v.as_ptr());
                }
            }
        }
    }
}

pub fn register(ctx: &Context) {
    // SAFETY: called from init with the module's context.
    unsafe {
        if let Some(f) = raw::RedisModule_RegisterInfoFunc {
            f(ctx.ctx, Some(info_func));
        }
    }
}

/// Replies name/value pairs in their order: a map, which the server sends
/// as a flat array to a RESP2 client.
pub fn reply_map(ctx: &Context, pairs: &[(&'static str, Field)]) {
    // SAFETY: module API calls with the running command's context, in the
    // order a map reply needs (its length, then each name and value); the
    // strings outlive the calls.
    unsafe {
        let (Some(map), Some(int), Some(bulk)) = (
            raw::RedisModule_ReplyWithMap,
            raw::RedisModule_ReplyWithLongLong,
            raw::RedisModule_ReplyWithStringBuffer,
        ) else {
            return;
        };
        map(ctx.ctx, i64::try_from(pairs.len()).unwrap_or(0));
        for (name, value) in pairs {
            bulk(ctx.ctx, name.as_ptr().cast(), name.len());
            match value {
                Field::Int(i) => drop(int(ctx.ctx, *i)),
                Field::Text(s) => drop(bulk(ctx.ctx, s.as_ptr().cast(), s.len())),
            }
        }
    }
}
