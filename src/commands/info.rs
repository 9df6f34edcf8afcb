//! TAG.INFO and the `INFO tagcache` section: counters and settings.

use crate::config;
use crate::stats::{self, get};
use crate::store::with_index;
use redis_module::{raw, Context, RedisResult, RedisString, RedisValue};
use std::ffi::CString;

enum Field {
    Int(i64),
    Text(String),
}

fn fields() -> Vec<(&'static str, Field)> {
    let (keys, tags) = with_index(|ix| (ix.keys(), ix.tag_count()));
    let (leases, waiters) = crate::commands::lease::outstanding();
    let n = |v: u64| Field::Int(i64::try_from(v).unwrap_or(i64::MAX));
    vec![
        ("commands", n(get(&stats::COMMANDS))),
        ("tagged_keys", Field::Int(keys as i64)),
        ("tags", Field::Int(tags as i64)),
        ("tag_writes", n(get(&stats::TAG_WRITES))),
        ("purges", n(get(&stats::PURGES))),
        ("keys_purged", n(get(&stats::KEYS_PURGED))),
        ("index_cleanups", n(get(&stats::INDEX_CLEANUPS))),
        ("version_bumps", n(get(&stats::BUMPS))),
        ("rule_firings", n(get(&stats::RULE_FIRINGS))),
        ("events_published", n(get(&stats::EVENTS))),
        ("leases_granted", n(get(&stats::LEASES_GRANTED))),
        ("leases_rejected", n(get(&stats::LEASES_REJECTED))),
        ("leases_outstanding", Field::Int(leases as i64)),
        ("lease_waiters", Field::Int(waiters as i64)),
        ("tag_prefix", Field::Text(config::TAG_PREFIX.get())),
        ("ver_prefix", Field::Text(config::VER_PREFIX.get())),
        ("events_channel", Field::Text(config::EVENTS_CHANNEL.get())),
        ("events_stream", Field::Text(config::EVENTS_STREAM.get())),
        ("events_stream_maxlen", Field::Int(config::stream_maxlen())),
        ("lease_ttl", Field::Int(config::lease_ttl())),
    ]
}

/// `TAG.INFO`: a flat array of name, value pairs, as `MEMORY STATS` replies.
pub fn tag_info(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 1 {
        return Err(crate::error::Error::WrongArity("tag.info").into());
    }
    stats::bump(&stats::COMMANDS);
    let mut out = Vec::new();
    for (name, value) in fields() {
        out.push(RedisValue::SimpleStringStatic(name));
        out.push(match value {
            Field::Int(i) => RedisValue::Integer(i),
            Field::Text(s) => RedisValue::BulkString(s),
        });
    }
    Ok(RedisValue::Array(out))
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

pub fn register_info(ctx: &Context) {
    unsafe {
        if let Some(f) = raw::RedisModule_RegisterInfoFunc {
            f(ctx.ctx, Some(info_func));
        }
    }
}
