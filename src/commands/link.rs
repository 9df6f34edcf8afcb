//! TAG.LINK, TAG.UNLINK, TAG.LINKS: rules that purge a tag when a key is
//! written, deleted or expires (`source-prefix + rest` purges tag
//! `tag-prefix + rest`), whoever changes the key.
//!
//! Rules are kept in the hash `tagcache:links` of the database they apply
//! to, so they persist and replicate with the data. A rule records the user
//! who created it: its purges have that user's permissions.

use crate::engine::error::{Error, Result};
use crate::engine::plan::{Access, Kind, Plan, Write};
use crate::engine::rules::Rule;
use crate::engine::stats;
use crate::server::apply::{self, Cause};
use crate::server::config;
use crate::server::keys::{self, argv, Caller};
use crate::server::notify::LINKS_KEY;
use crate::server::rebuild;
use redis_module::{Context, RedisResult, RedisString, RedisValue};

fn links_plan(access: Access, write: Write<'_>) -> Plan<'_> {
    let mut plan = Plan::default();
    plan.check(LINKS_KEY, access, Kind::Hash);
    plan.write(write);
    plan
}

fn apply_links(ctx: &Context, plan: &Plan) -> Result<i64> {
    apply::check(ctx, Caller::of(ctx).as_ref(), plan)?;
    let replies = apply::apply(ctx, plan, Cause::Command)?;
    rebuild::reload_rules(ctx, keys::selected_db(ctx), true);
    Ok(replies.first().copied().unwrap_or(0))
}

pub fn tag_link(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let [source, tag_prefix] = argv.as_slice() else {
        return Err(Error::WrongArity("tag.link").into());
    };
    if source.is_empty() {
        return Err(Error::Invalid("source-prefix must not be empty".into()).into());
    }
    let prefix = config::tag_prefix();
    if source.starts_with(prefix) || prefix.starts_with(source) {
        return Err(
            Error::Invalid("source-prefix must not cover the tag index keys".into()).into(),
        );
    }
    let rule = Rule {
        tag_prefix: tag_prefix.to_vec(),
        owner: keys::user_name(ctx),
    };
    let plan = links_plan(
        Access::Write,
        Write::HashSet {
            key: LINKS_KEY.into(),
            field: (*source).into(),
            value: rule.encode().into(),
        },
    );
    apply_links(ctx, &plan)?;
    Ok(RedisValue::SimpleStringStatic("OK"))
}

pub fn tag_unlink(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let [source] = argv.as_slice() else {
        return Err(Error::WrongArity("tag.unlink").into());
    };
    let plan = links_plan(
        Access::Write,
        Write::HashDel {
            key: LINKS_KEY.into(),
            field: (*source).into(),
        },
    );
    Ok(RedisValue::Integer(apply_links(ctx, &plan)?))
}

pub fn tag_links(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    if args.len() != 1 {
        return Err(Error::WrongArity("tag.links").into());
    }
    if let Some(c) = Caller::of(ctx) {
        c.check(ctx, LINKS_KEY, Access::Read)?;
    }
    keys::ensure_kind(ctx, LINKS_KEY, Kind::Hash)?;
    let mut rules = rebuild::read_rules(ctx);
    rules.sort();
    Ok(RedisValue::Array(
        rules
            .into_iter()
            .map(|(s, value)| {
                RedisValue::Array(vec![
                    RedisValue::StringBuffer(s),
                    RedisValue::StringBuffer(Rule::decode(&value).tag_prefix),
                ])
            })
            .collect(),
    ))
}
