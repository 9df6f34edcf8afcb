//! VER.GET, VER.SET, VER.BUMP, VER.CURRENT: versioned keys in one round
//! trip. The token `<ver-prefix><scope>` holds the scope's version as an
//! integer string; values live at `v<N>:<key>`.
//!
//! Writes replicate their effect (`SET ver:<scope> N`, `SET v<N>:<key> value
//! PXAT t`): the version chosen depends on the clock, so replaying the
//! command elsewhere could choose another.

use crate::args::{self, parse_i64};
use crate::config;
use crate::error::{Error, Result};
use crate::events::{self, Event, Op};
use crate::stats;
use crate::store::{self, argv, Access, Caller};
use redis_module::{Context, RedisResult, RedisString, RedisValue};
use std::sync::atomic::{AtomicI64, Ordering};

/// Highest version this process has handed out, for any scope.
static HIGH_WATER: AtomicI64 = AtomicI64::new(0);

fn token_key(scope: &[u8]) -> Vec<u8> {
    [config::ver_prefix().as_slice(), scope].concat()
}

fn value_key(version: i64, key: &[u8]) -> Vec<u8> {
    [format!("v{version}:").as_bytes(), key].concat()
}

/// The scope's current version, `None` when it has none.
fn current(ctx: &Context, token: &[u8]) -> Result<Option<i64>> {
    match store::read_string(ctx, token)? {
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
        .max(store::now_ms().saturating_mul(1000))
}

/// The version that would follow `cur` now.
fn next(cur: Option<i64>) -> i64 {
    args::next_version(cur, HIGH_WATER.load(Ordering::Relaxed), now_us())
}

/// Moves the token to version `next` and replicates it.
fn advance(ctx: &Context, token: &[u8], next: i64) -> Result<i64> {
    HIGH_WATER.fetch_max(next, Ordering::Relaxed);
    // KEEPTTL: a bump leaves a token's TTL as INCR would.
    store::set_string(ctx, token, next.to_string().as_bytes(), None, true)?;
    Ok(next)
}

pub fn ver_get(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let [scope, key] = argv.as_slice() else {
        return Err(Error::WrongArity("ver.get").into());
    };
    let token = token_key(scope);
    let caller = Caller::of(ctx);
    caller.check(ctx, &token, Access::Read)?;
    let Some(version) = current(ctx, &token)? else {
        return Ok(RedisValue::Null);
    };
    let vkey = value_key(version, key);
    store::ensure_same_slot(ctx, &[&token, &vkey])?;
    caller.check(ctx, &vkey, Access::Read)?;
    Ok(match store::read_string(ctx, &vkey)? {
        Some(v) => RedisValue::StringBuffer(v),
        None => RedisValue::Null,
    })
}

pub fn ver_current(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let [scope] = argv.as_slice() else {
        return Err(Error::WrongArity("ver.current").into());
    };
    let token = token_key(scope);
    Caller::of(ctx).check(ctx, &token, Access::Read)?;
    Ok(current(ctx, &token)?.map_or(RedisValue::Null, RedisValue::Integer))
}

pub fn ver_set(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let a = args::parse_ver_set(&argv)?;
    let deadline = a.expiry.deadline(store::now_ms(), "ver.set")?;
    let token = token_key(a.scope);
    let caller = Caller::of(ctx);
    caller.check(ctx, &token, Access::Write)?;
    let cur = current(ctx, &token)?;
    // The value key is known only once the version is: check it for the
    // version that will be used, before anything is written.
    let version = cur.unwrap_or_else(|| next(None));
    let vkey = value_key(version, a.key);
    store::ensure_same_slot(ctx, &[&token, &vkey])?;
    caller.check(ctx, &vkey, Access::Write)?;
    if cur.is_none() {
        advance(ctx, &token, version)?;
    }
    store::set_string(ctx, &vkey, a.value, deadline, false)?;
    Ok(RedisValue::SimpleStringStatic("OK"))
}

pub fn ver_bump(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    if argv.is_empty() {
        return Err(Error::WrongArity("ver.bump").into());
    }
    let mut scopes: Vec<&[u8]> = Vec::new();
    for s in &argv {
        if !scopes.contains(s) {
            scopes.push(s);
        }
    }
    let caller = Caller::of(ctx);
    let tokens: Vec<Vec<u8>> = scopes.iter().map(|s| token_key(s)).collect();
    caller.check_all(ctx, &tokens, Access::Write)?;
    store::ensure_same_slot(ctx, &tokens)?;
    let currents = tokens
        .iter()
        .map(|t| current(ctx, t))
        .collect::<Result<Vec<_>>>()?;
    let mut versions = Vec::with_capacity(tokens.len());
    for (t, cur) in tokens.iter().zip(currents) {
        versions.push(advance(ctx, t, next(cur))?);
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
