//! TAG.GETL: a read that hands out a lease on a miss, and lets the callers
//! that find the lease held wait inside the server (`WAIT`) for the fill.

use super::args;
use crate::engine::plan::Access;
use crate::engine::stats;
use crate::server::acl::Caller;
use crate::server::blocked::{self, pair};
use crate::server::config;
use crate::server::keys::{self, argv};
use redis_module::{Context, ContextFlags, RedisResult, RedisString, RedisValue};

pub fn tag_getl(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let a = args::parse_getl(&argv)?;
    if let Some(c) = Caller::of(ctx) {
        c.check(ctx, a.key, Access::Read)?;
    }
    if let Some(v) = keys::read_string(ctx, a.key)? {
        return Ok(pair(Some(v), None));
    }
    let db = keys::selected_db(ctx);
    let ttl_ms = a.ttl_ms.unwrap_or_else(config::lease_ttl);
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
