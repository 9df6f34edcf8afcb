//! TAG.INFO: the module's counters and settings.

use crate::engine::error::Error;
use crate::engine::stats;
use crate::server::info::{fields, Field};
use redis_module::{Context, RedisResult, RedisString, RedisValue};

/// `TAG.INFO`: a flat array of name, value pairs, as `MEMORY STATS` replies.
pub fn tag_info(_ctx: &Context, args: &[RedisString]) -> RedisResult {
    if args.len() != 1 {
        return Err(Error::WrongArity("tag.info").into());
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
