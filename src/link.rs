//! TAG.LINK rules.

use redis_module::Context;

pub fn on_keyspace_event(_ctx: &Context, _event: &str, _key: &[u8]) {}
