//! TAG.SET, TAG.ADD, TAG.REM, TAG.PURGE, TAG.MEMBERS, TAG.CARD, TAG.TAGS.
//!
//! Each parses its arguments, has the engine plan the change, has the
//! server check the whole plan (slot, ACL, types) and only then apply it.
//! What is replicated is the plan's writes, with absolute keys and times.

use super::args::{self, Condition};
use crate::engine::error::{Error, Result};
use crate::engine::plan::{self, Access, Expiry, Plan, Prefix};
use crate::engine::purge::{ReplyTo, Request, Soft};
use crate::engine::{self, stats};
use crate::server::acl::Caller;
use crate::server::apply::{self, Cause};
use crate::server::keys::{self, argv};
use crate::server::purge;
use crate::server::{blocked, cluster, config};
use redis_module::{Context, ContextFlags, RedisResult, RedisString, RedisValue};

fn bulk_list(items: Vec<Vec<u8>>) -> RedisValue {
    RedisValue::Array(items.into_iter().map(RedisValue::StringBuffer).collect())
}

/// Plans from the index and checks the plan. Checking opens keys, and a key
/// found expired is reclaimed (and the index told) right then: if the
/// index moved, the plan is made again from what it says now.
fn planned<'a>(
    ctx: &Context,
    mut make: impl FnMut(&engine::State) -> Plan<'a>,
) -> Result<Plan<'a>> {
    let caller = Caller::of(ctx);
    for _ in 0..3 {
        let (plan, before) = engine::with(|s| (make(s), s.index.changes()))?;
        apply::check(ctx, caller.as_ref(), &plan)?;
        if engine::with(|s| s.index.changes())? == before {
            return Ok(plan);
        }
    }
    Err(Error::Internal("the index kept changing".into()))
}

fn same_tag_set(p: &Prefix, key: &[u8], tags: &[&[u8]]) -> Result<()> {
    if p.tag_of(key).is_some_and(|own| tags.contains(&own)) {
        return Err(Error::Invalid(
            "a key cannot carry the tag whose index it is".into(),
        ));
    }
    Ok(())
}

pub fn tag_set(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let a = args::parse_tag_set(&argv)?;
    crate::server::moves::learn(ctx, a.key);
    let p = config::layout();
    same_tag_set(&p, a.key, &a.tags)?;
    let now = keys::now_ms();
    let fresh_until = a.expiry.deadline(now, "tag.set")?;
    // With `STALE`, the key lives on, stale, after its fresh time.
    let deadline = match (fresh_until, a.stale_ms) {
        (Some(d), Some(ms)) => Some(d.checked_add(ms).ok_or(Error::InvalidExpire("tag.set"))?),
        (d, _) => d,
    };
    let db = keys::selected_db(ctx);
    let expiry = Expiry {
        deadline,
        keep_ttl: a.expiry == args::Expiry::Keep,
    };
    let fill = plan::Fill {
        key: a.key,
        value: a.value,
        expiry,
        tags: &a.tags,
    };
    let plan = planned(ctx, |s| {
        let mut plan = plan::tag_set(&s.index, db, &p, &fill, now);
        plan.declared = Some(a.key);
        if let (Some(until), Some(_)) = (fresh_until, a.stale_ms) {
            plan::soft_expiry(&mut plan, &p, a.key, until);
        }
        plan
    })?;
    let refused = match a.condition {
        Condition::Always => false,
        Condition::IfAbsent => keys::exists(ctx, a.key),
        Condition::IfPresent => !keys::exists(ctx, a.key),
    };
    if refused {
        return Ok(RedisValue::Null);
    }
    if let Some(token) = a.lease {
        let verdict = engine::with(|s| s.leases.redeem(db, a.key, token, &a.tags, now))??;
        if verdict != engine::lease::Verdict::Store {
            stats::bump(&stats::LEASES_REJECTED);
            // The lease is gone: whoever waits for the key may take the next.
            let wake = engine::with(|s| match s.leases.held(db, a.key, now) {
                Some(_) => None,
                None => s.hand_over(db, a.key),
            })
            .ok()
            .flatten();
            blocked::wake(ctx, wake.into_iter().collect());
            return Ok(RedisValue::Null);
        }
    }
    apply::apply_from(ctx, &plan, Cause::Command, &keys::Own::new(args, &argv))?;
    stats::bump(&stats::TAG_WRITES);
    keys::reply_ok(ctx)
}

/// TAG.APPLY: the absolute form TAG.SET replicates as (also callable:
/// every key it names is checked like TAG.SET's).
pub fn tag_apply(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let a = args::parse_apply(&argv)?;
    let expiry = Expiry {
        deadline: a.deadline,
        keep_ttl: a.keep_ttl,
    };
    if a.add.iter().chain(&a.rem).any(|set| *set == a.key) {
        return Err(Error::Invalid("a key cannot carry the tag whose index it is".into()).into());
    }
    // Replayed from the master or the AOF, the sets are the master's word.
    // Called by a client, they must be the key's tag sets, as TAG.SET would
    // name them: the ones it leaves and the ones it has after.
    if !keys::from_master(ctx) {
        let p = config::layout();
        let db = keys::selected_db(ctx);
        let mut old: Vec<Vec<u8>> = engine::with(|s| s.index.tags(db, a.key))?
            .iter()
            .flat_map(|t| p.sets_holding(t, a.key))
            .filter(|set| !a.add.contains(&set.as_slice()))
            .collect();
        let mut rem: Vec<Vec<u8>> = a.rem.iter().map(|s| s.to_vec()).collect();
        old.sort();
        rem.sort();
        rem.dedup();
        let under = a
            .add
            .iter()
            .all(|s| p.tag_of(s).is_some_and(|t| !t.is_empty()));
        if old != rem || !under {
            return Err(Error::Invalid(
                "TAG.APPLY must name the key's tag sets: the ones it joins, then the ones it leaves"
                    .into(),
            )
            .into());
        }
    }
    let owned = |l: &[&[u8]]| l.iter().map(|s| s.to_vec()).collect();
    let plan = plan::string_with_sets(a.key, a.value, expiry, owned(&a.add), owned(&a.rem));
    apply::check(ctx, Caller::of(ctx).as_ref(), &plan)?;
    apply::apply_from(ctx, &plan, Cause::Command, &keys::Own::new(args, &argv))?;
    Ok(RedisValue::SimpleStringStatic("OK"))
}

pub fn tag_add(ctx: &Context, args: &[RedisString]) -> RedisResult {
    tag_change(ctx, args, true)
}

pub fn tag_rem(ctx: &Context, args: &[RedisString]) -> RedisResult {
    tag_change(ctx, args, false)
}

/// TAG.ADD (`add`) and TAG.REM: the reply is the number of tags changed.
fn tag_change(ctx: &Context, args: &[RedisString], add: bool) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let cmd = if add { "tag.add" } else { "tag.rem" };
    let (key, tags) = args::parse_key_tags(&argv, cmd)?;
    crate::server::moves::learn(ctx, key);
    let p = config::layout();
    if add {
        same_tag_set(&p, key, &tags)?;
    }
    let db = keys::selected_db(ctx);
    // Reclaims the key if it has expired, before the index is read.
    let exists = keys::exists(ctx, key);
    let mut changed = 0;
    let plan = planned(ctx, |s| {
        let (plan, n) = plan::tag_change(&s.index, db, &p, key, &tags, add);
        changed = n;
        plan
    })?;
    // The master checked existence; a replayed AOF may meet the key already
    // logically expired and must apply the write anyway.
    if add && !exists && !keys::from_master(ctx) {
        return Err(Error::NoSuchKey.into());
    }
    apply::apply(ctx, &plan, Cause::Command)?;
    Ok(RedisValue::Integer(changed))
}

pub fn tag_purge(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    invalidate(ctx, args::parse_purge(&argv)?)
}

pub fn tag_invalidate(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    invalidate(ctx, args::parse_invalidate(&argv)?)
}

/// `TAG.INVALIDATE`, and `TAG.PURGE`, its short form: one request, run on
/// this server, or in a cluster on every master.
fn invalidate(ctx: &Context, a: args::PurgeArgs) -> RedisResult {
    let caller = Caller::of(ctx);
    let req = Request {
        db: keys::selected_db(ctx),
        tags: a.tags.iter().map(|t| t.to_vec()).collect(),
        all: a.all,
        soft: a.grace_ms.map(|grace_ms| Soft {
            grace_ms,
            until: keys::now_ms().saturating_add(grace_ms),
        }),
        user: caller.as_ref().and_then(Caller::name),
        rule_source: None,
        reply_to: ReplyTo::Caller,
        publish: true,
    };
    // Above `purge-atomic-max` keys, in slices, where the caller can wait:
    // the call checks the tag sets; each key is checked before any goes.
    let can_wait = !ctx
        .get_flags()
        .intersects(ContextFlags::MULTI | ContextFlags::LUA | ContextFlags::DENY_BLOCKING);
    if config::slotted() {
        return cluster::purge(ctx, req, caller.as_ref(), can_wait, a.is_async);
    }
    purge::alone(ctx, req, caller.as_ref(), can_wait, a.is_async)
}

fn one_arg<'a>(argv: &[&'a [u8]], cmd: &'static str) -> Result<&'a [u8]> {
    match argv {
        [one] => Ok(one),
        _ => Err(Error::WrongArity(cmd)),
    }
}

pub fn tag_members(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let tag = one_arg(&argv, "tag.members")?;
    if config::slotted() {
        return cluster::read(ctx, tag, cluster::Read::Members);
    }
    Ok(bulk_list(apply::visible_members(
        ctx,
        tag,
        Caller::of(ctx).as_ref(),
    )?))
}

pub fn tag_card(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let tag = one_arg(&argv, "tag.card")?;
    if config::slotted() {
        return cluster::read(ctx, tag, cluster::Read::Card);
    }
    let n = apply::visible_members(ctx, tag, Caller::of(ctx).as_ref())?.len();
    Ok(RedisValue::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// The tags `key` carries whose index the caller may read.
pub fn tag_tags(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let key = one_arg(&argv, "tag.tags")?;
    crate::server::moves::learn(ctx, key);
    let caller = Caller::of(ctx);
    if let Some(c) = &caller {
        c.check(ctx, key, Access::Read)?;
    }
    if !keys::exists(ctx, key) {
        return Ok(RedisValue::Array(Vec::new()));
    }
    let db = keys::selected_db(ctx);
    let p = config::layout();
    // Opening each tag set reclaims one that has expired (and untags the
    // key in the index) before the answer is read.
    for t in engine::with(|s| s.index.tags(db, key))? {
        for set in p.sets_holding(&t, key) {
            keys::key_type(ctx, &set);
        }
    }
    let mut tags = engine::with(|s| s.index.tags(db, key))?;
    if let Some(c) = &caller {
        tags.retain(|t| c.check(ctx, &p.set_for(t, key), Access::Read).is_ok());
    }
    Ok(bulk_list(tags))
}

/// `TAG.TRYAGAIN [arg ...]`: the command filter turns a write into this
/// while the index sets of its key have left ahead of it with a slot
/// moving by `MIGRATE` (`server::moves::write_refused`): the write is
/// refused, as the server refuses a command whose keys are split between
/// two nodes, and the client sends it again.
pub fn tag_tryagain(_ctx: &Context, _args: &[RedisString]) -> RedisResult {
    Err(Error::TryAgain(crate::server::apply::SPLIT).into())
}
