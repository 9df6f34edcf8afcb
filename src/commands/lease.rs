//! TAG.GETL: a read that hands out a lease on a miss, and lets the callers
//! that find the lease held wait inside the server (`WAIT`) for the fill.

use super::args;
use crate::engine::error::Result;
use crate::engine::index::Db;
use crate::engine::plan::Access;
use crate::engine::{self, stale, stats};
use crate::server::acl::Caller;
use crate::server::blocked::{self, pair};
use crate::server::config;
use crate::server::keys::{self, argv};
use redis_module::{Context, ContextFlags, RedisResult, RedisString, RedisValue};

/// Whether `key` (which exists) is stale now.
fn is_stale(ctx: &Context, db: Db, key: &[u8]) -> Result<bool> {
    if !engine::with(|s| s.stale.contains(db, key))? {
        return Ok(false);
    }
    let p = config::layout();
    // The hash has the last word (a client may have changed it).
    Ok(keys::hash_get(ctx, &p.stale_hash(key), key)
        .and_then(|v| stale::parse(&v))
        .is_some_and(|fresh_until| stale::is_stale(fresh_until, keys::now_ms())))
}

pub fn tag_getl(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let a = args::parse_getl(&argv)?;
    crate::server::moves::learn(ctx, a.key);
    if let Some(c) = Caller::of(ctx) {
        c.check(ctx, a.key, Access::Read)?;
    }
    let db = keys::selected_db(ctx);
    let ttl_ms = a.ttl_ms.unwrap_or_else(config::lease_ttl);
    if let Some(v) = keys::read_string(ctx, a.key)? {
        if !is_stale(ctx, db, a.key)? {
            return Ok(pair(Some(v), None));
        }
        // Stale: everyone is served the value at once, and one caller at a
        // time holds the lease to refresh it.
        stats::bump(&stats::STALE_SERVED);
        let token = blocked::issue(ctx, db, a.key, ttl_ms);
        if token.is_some() {
            stats::bump(&stats::REFRESH_LEASES);
        }
        return Ok(pair(Some(v), token));
    }
    if let Some(token) = blocked::issue(ctx, db, a.key, ttl_ms) {
        return Ok(pair(None, Some(token)));
    }
    let cannot_block = ctx
        .get_flags()
        .intersects(ContextFlags::MULTI | ContextFlags::LUA | ContextFlags::DENY_BLOCKING);
    match a.wait_ms {
        Some(wait) if !cannot_block && blocked::block(ctx, db, a.key, ttl_ms, wait) => {
            Ok(RedisValue::NoReply)
        }
        _ => Ok(pair(None, None)),
    }
}
