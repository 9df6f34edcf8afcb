//! TAG.INFO: the module's counters and settings.

use crate::engine::error::Error;
use crate::engine::stats;
use crate::server::info::{fields, reply_map};
use redis_module::{Context, RedisResult, RedisString, RedisValue};

/// `TAG.INFO`: name/value pairs, a map under RESP3 and a flat array under
/// RESP2 (as `CONFIG GET` and `XINFO` reply).
pub fn tag_info(ctx: &Context, args: &[RedisString]) -> RedisResult {
    if args.len() != 1 {
        return Err(Error::WrongArity("tag.info").into());
    }
    stats::bump(&stats::COMMANDS);
    reply_map(ctx, &fields());
    Ok(RedisValue::NoReply)
}
