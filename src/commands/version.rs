//! VER.GET, VER.SET, VER.BUMP, VER.CURRENT: versioned keys in one round
//! trip. The token `<ver-prefix><scope>` holds the scope's version as an
//! integer string; values live at `v<N>:<key>`.
//!
//! Writes replicate their effect (`SET ver:<scope> N KEEPTTL`, `SET
//! v<N>:<key> value PXAT t`): the version chosen depends on the clock, so
//! replaying the command elsewhere could choose another.

use super::args::{self, parse_i64};
use crate::engine::error::{Error, Result};
use crate::engine::plan::{self, Access, Expiry, Kind, Plan};
use crate::engine::version::{self, value_key};
use crate::engine::{self, stats};
use crate::server::acl::Caller;
use crate::server::apply::{self, Cause};
use crate::server::config;
use crate::server::events::{self, Event, Op};
use crate::server::keys::{self, argv};
use redis_module::{Context, RedisResult, RedisString, RedisValue};
use std::sync::atomic::{AtomicI64, Ordering};

/// Highest version this process has handed out, for any scope.
static HIGH_WATER: AtomicI64 = AtomicI64::new(0);

fn token_key(scope: &[u8]) -> Vec<u8> {
    [config::ver_prefix(), scope].concat()
}

/// The scope's current version, `None` when it has none.
fn current(ctx: &Context, token: &[u8]) -> Result<Option<i64>> {
    match keys::read_string(ctx, token)? {
        None => Ok(None),
        Some(v) => parse_i64(&v)
            .map(Some)
            .map_err(|_| Error::Invalid("version token is not an integer".into())),
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
        .max(keys::now_ms().saturating_mul(1000))
}

/// The version that would follow `cur` now.
fn next(cur: Option<i64>) -> Result<i64> {
    version::next(cur, HIGH_WATER.load(Ordering::Relaxed), now_us())
}

/// A bump keeps the token's TTL, as `INCR` would.
const KEEP: Expiry = Expiry {
    deadline: None,
    keep_ttl: true,
};

fn readable(ctx: &Context, caller: &Option<Caller>, key: &[u8]) -> Result<()> {
    match caller {
        Some(c) => c.check(ctx, key, Access::Read),
        None => Ok(()),
    }
}

pub fn ver_get(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let [scope, key] = argv.as_slice() else {
        return Err(Error::WrongArity("ver.get").into());
    };
    let token = token_key(scope);
    let caller = Caller::of(ctx);
    readable(ctx, &caller, &token)?;
    let Some(version) = current(ctx, &token)? else {
        return Ok(RedisValue::Null);
    };
    let vkey = value_key(version, key);
    keys::ensure_same_slot(&[&token, &vkey])?;
    readable(ctx, &caller, &vkey)?;
    Ok(match keys::read_string(ctx, &vkey)? {
        Some(v) => RedisValue::StringBuffer(v),
        None => RedisValue::Null,
    })
}

pub fn ver_current(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let [scope] = argv.as_slice() else {
        return Err(Error::WrongArity("ver.current").into());
    };
    let token = token_key(scope);
    readable(ctx, &Caller::of(ctx), &token)?;
    Ok(current(ctx, &token)?.map_or(RedisValue::Null, RedisValue::Integer))
}

pub fn ver_set(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    let a = args::parse_ver_set(&argv)?;
    let deadline = a.expiry.deadline(keys::now_ms(), "ver.set")?;
    let token = token_key(a.scope);
    let cur = current(ctx, &token)?;
    // The value key is known only once the version is: the plan names it
    // for the version that will be used, and is checked as a whole.
    let version = match cur {
        Some(v) => v,
        None => next(None)?,
    };
    let vkey = value_key(version, a.key);
    let p = config::layout();
    let db = keys::selected_db(ctx);
    let plan = engine::with(|s| {
        let mut plan = Plan::default();
        plan.check(&token[..], Access::Write, Kind::String);
        if cur.is_none() {
            let v = version.to_string().into_bytes();
            plan::overwrite(
                &mut plan,
                &s.index,
                db,
                &p,
                (&token[..]).into(),
                v.into(),
                KEEP,
            );
        }
        let e = Expiry {
            deadline,
            keep_ttl: false,
        };
        plan::overwrite(
            &mut plan,
            &s.index,
            db,
            &p,
            (&vkey[..]).into(),
            a.value.into(),
            e,
        );
        plan
    })?;
    apply::check(ctx, Caller::of(ctx).as_ref(), &plan)?;
    apply::apply_from(ctx, &plan, Cause::Command, &keys::Own::new(args, &argv))?;
    HIGH_WATER.fetch_max(version, Ordering::Relaxed);
    Ok(RedisValue::SimpleStringStatic("OK"))
}

pub fn ver_bump(ctx: &Context, args: &[RedisString]) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(args);
    if argv.is_empty() {
        return Err(Error::WrongArity("ver.bump").into());
    }
    let mut scopes: Vec<&[u8]> = Vec::new();
    for s in &argv {
        if !scopes.contains(s) {
            scopes.push(s);
        }
    }
    let tokens: Vec<Vec<u8>> = scopes.iter().map(|s| token_key(s)).collect();
    // Values of every scope share the `v<N>:` namespace: each version is
    // handed out once, whatever the scope, so each raises the floor for
    // the next.
    let mut versions = Vec::with_capacity(tokens.len());
    let mut floor = HIGH_WATER.load(Ordering::Relaxed);
    for t in &tokens {
        let v = version::next(current(ctx, t)?, floor, now_us())?;
        floor = floor.max(v);
        versions.push(v);
    }
    let p = config::layout();
    let db = keys::selected_db(ctx);
    let plan = engine::with(|s| {
        let mut plan = Plan::default();
        for (t, v) in tokens.iter().zip(&versions) {
            let text = v.to_string().into_bytes();
            plan::overwrite(
                &mut plan,
                &s.index,
                db,
                &p,
                (&t[..]).into(),
                text.into(),
                KEEP,
            );
        }
        plan
    })?;
    apply::check(ctx, Caller::of(ctx).as_ref(), &plan)?;
    apply::apply(ctx, &plan, Cause::Command)?;
    if let Some(&high) = versions.iter().max() {
        HIGH_WATER.fetch_max(high, Ordering::Relaxed);
    }
    stats::add(&stats::BUMPS, versions.len() as u64);
    let scope_names: Vec<Vec<u8>> = scopes.iter().map(|s| s.to_vec()).collect();
    events::emit(
        ctx,
        &Event {
            op: Op::Bump,
            tags: &[],
            scopes: &scope_names,
            keys: 0,
            source: None,
            all: false,
            grace_ms: None,
        },
    );
    // One reply per scope named, repeats included, in order.
    let by_scope = |s: &[u8]| {
        scopes
            .iter()
            .position(|x| *x == s)
            .and_then(|i| versions.get(i).copied())
            .unwrap_or(0)
    };
    if argv.len() == 1 {
        return Ok(RedisValue::Integer(versions.first().copied().unwrap_or(0)));
    }
    Ok(RedisValue::Array(
        argv.iter()
            .map(|s| RedisValue::Integer(by_scope(s)))
            .collect(),
    ))
}
