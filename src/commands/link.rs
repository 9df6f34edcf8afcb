//! TAG.LINK, TAG.UNLINK, TAG.LINKS: rules that purge a tag when a key is
//! written, deleted or expires (`source-prefix + rest` purges tag
//! `tag-prefix + rest`), whoever changes the key.
//!
//! Rules are kept in the hash `tagcache:links` of the database they apply
//! to, so they persist and replicate with the data (in a cluster, a copy on
//! every master: `server::rules`). A rule records the user who created it:
//! its purges have that user's permissions.

use super::args;
use crate::engine::error::{Error, Result};
use crate::engine::plan::{Access, Kind, Plan, Write};
use crate::engine::rules::Rule;
use crate::engine::{self, stats};
use crate::server::acl::Caller;
use crate::server::apply::{self, Cause};
use crate::server::config;
use crate::server::keys::{self, argv};
use crate::server::{cluster, rules};
use redis_module::{Context, RedisResult, RedisString, RedisValue};

fn links_plan<'a>(keys: &[Vec<u8>], write: impl Fn(Vec<u8>) -> Write<'a>) -> Plan<'a> {
    // In a cluster a master may hold copies in several of its slots.
    let mut plan = Plan {
        local: true,
        ..Plan::default()
    };
    for key in keys {
        plan.check(key.clone(), Access::Write, Kind::Hash);
        plan.write(write(key.clone()));
    }
    plan
}

/// Applies the write of the rule for `source` (`value`, or none: removed)
/// and vouches for it alone: whatever else the hash holds is trusted only
/// as far as it was before.
fn apply_links(ctx: &Context, plan: &Plan, source: &[u8], value: Option<Vec<u8>>) -> Result<i64> {
    apply::check(ctx, Caller::of(ctx).as_ref(), plan)?;
    let replies = apply::apply(ctx, plan, Cause::Command)?;
    let db = keys::selected_db(ctx);
    engine::with(|s| s.vouch(db, source, value))?;
    crate::server::rules::reload_rules(ctx, db, false);
    Ok(replies.iter().sum::<i64>().min(1))
}

pub fn tag_link(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let (source, tag_prefix, grace_ms) = match argv.as_slice() {
        [source, tag_prefix] => (source, tag_prefix, None),
        [source, tag_prefix, soft, grace] if soft.eq_ignore_ascii_case(b"SOFT") => {
            (source, tag_prefix, Some(args::parse_grace(grace)?))
        }
        [_, _, word, ..] if argv.len() <= 4 => return Err(Error::Syntax(word.to_vec()).into()),
        _ => return Err(Error::WrongArity("tag.link").into()),
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
    let owner = crate::server::acl::user_name(ctx);
    let value = Rule {
        tag_prefix: tag_prefix.to_vec(),
        owner,
        grace_ms,
    }
    .encode();
    let plan = links_plan(&[rules::links_key(ctx)?], |key| Write::HashSet {
        key: key.into(),
        field: (*source).into(),
        value: value.clone().into(),
    });
    apply_links(ctx, &plan, source, Some(value.clone()))?;
    cluster::share_rule(ctx, source, Some(&value));
    Ok(RedisValue::SimpleStringStatic("OK"))
}

pub fn tag_unlink(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let [source] = argv.as_slice() else {
        return Err(Error::WrongArity("tag.unlink").into());
    };
    let plan = links_plan(&rules::links_keys(ctx), |key| Write::HashDel {
        key: key.into(),
        field: (*source).into(),
    });
    let removed = apply_links(ctx, &plan, source, None)?;
    cluster::share_rule(ctx, source, None);
    Ok(RedisValue::Integer(removed))
}

pub fn tag_links(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    if args.len() != 1 {
        return Err(Error::WrongArity("tag.links").into());
    }
    let caller = Caller::of(ctx);
    for key in rules::links_keys(ctx) {
        if let Some(c) = &caller {
            c.check(ctx, &key, Access::Read)?;
        }
        keys::ensure_kind(ctx, &key, Kind::Hash)?;
    }
    let mut rules = rules::read_rules(ctx);
    rules.sort();
    // A cluster master may hold the same rule in two copies (one arrived
    // with a slot): it is one rule.
    rules.dedup_by(|a, b| a.0 == b.0);
    Ok(RedisValue::Array(
        rules
            .into_iter()
            .map(|(s, value)| {
                let rule = Rule::decode(&value);
                let mut row = vec![
                    RedisValue::StringBuffer(s),
                    RedisValue::StringBuffer(rule.tag_prefix),
                ];
                if let Some(g) = rule.grace_ms {
                    row.push(RedisValue::SimpleStringStatic("SOFT"));
                    row.push(RedisValue::Integer(g));
                }
                RedisValue::Array(row)
            })
            .collect(),
    ))
}
