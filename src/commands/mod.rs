//! The commands, one file per family: each parses its arguments into a
//! typed form, has the engine plan the change, has the server check and
//! apply it, and turns the result into a reply.
//!
//! Commands that write run through `server::write_command`, which pays
//! the writes the keyspace owes the tag sets before and after them.

pub mod args;
pub mod info;
pub mod lease;
pub mod link;
pub mod tag;
pub mod version;

use crate::server::write_command;
use redis_module::{Context, RedisResult, RedisString};

macro_rules! writes {
    ($($name:ident => $handler:path),* $(,)?) => {
        $(
            pub fn $name(ctx: &Context, args: &[RedisString]) -> RedisResult {
                write_command(ctx, args, $handler)
            }
        )*
    };
}

writes! {
    tag_set => tag::tag_set,
    tag_apply => tag::tag_apply,
    tag_add => tag::tag_add,
    tag_rem => tag::tag_rem,
    tag_purge => tag::tag_purge,
    tag_invalidate => tag::tag_invalidate,
    tag_link => link::tag_link,
    tag_unlink => link::tag_unlink,
    tag_getl => lease::tag_getl,
    ver_set => version::ver_set,
    ver_bump => version::ver_bump,
}

pub use info::tag_info;
pub use link::tag_links;
pub use tag::{tag_card, tag_members, tag_tags};
pub use version::{ver_current, ver_get};
