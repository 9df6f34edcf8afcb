//! TAG.GETL and the lease hooks the other commands call.
//!
//! A caller who finds a lease held and asked to `WAIT` is blocked inside
//! the server (RM_BlockClient), queued on the key, and woken by the first
//! of: a write of the key (reply: the value), the lease lapsing or being
//! revoked (the first waiter is handed the next lease), or its own timeout
//! (reply: `[nil, nil]`).

use crate::args::parse_i64;
use crate::config;
use crate::error::{Error, Result};
use crate::index::Db;
use crate::lease::{Book, Verdict};
use crate::stats;
use crate::store::{self, argv, Access, Caller};
use redis_module::{raw, Context, ContextFlags, RedisResult, RedisString, RedisValue};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::os::raw::{c_int, c_void};

type Bc = *mut raw::RedisModuleBlockedClient;

struct Waiter {
    bc: Bc,
    ttl_ms: i64,
}

#[derive(Default)]
struct State {
    book: Book,
    waiters: HashMap<(Db, Vec<u8>), VecDeque<Waiter>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Why a waiter is woken; read by its reply callback.
enum Wake {
    /// The key was written: reply with its value.
    Value { key: Vec<u8> },
    /// The lease lapsed or was revoked: take the next one.
    Lease { db: Db, key: Vec<u8>, ttl_ms: i64 },
}

struct GetlArgs<'a> {
    key: &'a [u8],
    ttl_ms: i64,
    wait_ms: Option<i64>,
}

fn parse_getl<'a>(argv: &[&'a [u8]]) -> Result<GetlArgs<'a>> {
    let Some((key, rest)) = argv.split_first() else {
        return Err(Error::WrongArity("tag.getl"));
    };
    let mut a = GetlArgs {
        key,
        ttl_ms: config::lease_ttl(),
        wait_ms: None,
    };
    let mut seen_ttl = false;
    for pair in rest.chunks(2) {
        let (raw_word, value) = match pair {
            [w, v] => (*w, *v),
            [w, ..] => return Err(Error::Syntax(String::from_utf8_lossy(w).into_owned())),
            [] => break,
        };
        let word = String::from_utf8_lossy(raw_word).to_ascii_uppercase();
        let n = parse_i64(value)?;
        match word.as_str() {
            "TTL" if !seen_ttl => {
                if n <= 0 {
                    return Err(Error::Invalid(
                        "TTL must be a positive number of milliseconds".into(),
                    ));
                }
                seen_ttl = true;
                a.ttl_ms = n;
            }
            "WAIT" if a.wait_ms.is_none() => {
                if n < 0 {
                    return Err(Error::Invalid("WAIT must not be negative".into()));
                }
                a.wait_ms = Some(n);
            }
            _ => {
                return Err(Error::Syntax(
                    String::from_utf8_lossy(raw_word).into_owned(),
                ))
            }
        }
    }
    Ok(a)
}

fn pair(value: Option<Vec<u8>>, token: Option<String>) -> RedisValue {
    RedisValue::Array(vec![
        value.map_or(RedisValue::Null, RedisValue::StringBuffer),
        token.map_or(RedisValue::Null, RedisValue::BulkString),
    ])
}

/// Issues a lease on `key` (if none is live) and arms its lapse timer.
fn issue(ctx: &Context, db: Db, key: &[u8], ttl_ms: i64) -> Option<String> {
    let issued = STATE.with(|s| s.borrow_mut().book.issue(db, key, ttl_ms, store::now_ms()));
    let (token, lease) = issued?;
    stats::bump(&stats::LEASES_GRANTED);
    let data = Box::into_raw(Box::new((db, key.to_vec(), lease.seq)));
    unsafe {
        if let Some(create) = raw::RedisModule_CreateTimer {
            create(ctx.ctx, ttl_ms, Some(on_lapse), data.cast());
        }
    }
    Some(token)
}

unsafe extern "C" fn on_lapse(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    let (db, key, seq) = *Box::from_raw(data.cast::<(Db, Vec<u8>, u64)>());
    let lapsed = STATE.with(|s| s.borrow_mut().book.lapse(db, &key, seq));
    if lapsed {
        hand_over(db, &key);
    }
}

fn unblock(bc: Bc, wake: Wake) {
    let data = Box::into_raw(Box::new(wake));
    unsafe {
        if let Some(f) = raw::RedisModule_UnblockClient {
            f(bc, data.cast());
        }
    }
}

/// The key has no lease now: the first waiter gets the next one.
fn hand_over(db: Db, key: &[u8]) {
    let first = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let k = (db, key.to_vec());
        let w = s.waiters.get_mut(&k).and_then(VecDeque::pop_front);
        if s.waiters.get(&k).is_some_and(VecDeque::is_empty) {
            s.waiters.remove(&k);
        }
        w
    });
    if let Some(w) = first {
        unblock(
            w.bc,
            Wake::Lease {
                db,
                key: key.to_vec(),
                ttl_ms: w.ttl_ms,
            },
        );
    }
}

unsafe extern "C" fn on_wake(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    let data =
        raw::RedisModule_GetBlockedClientPrivateData.map_or(std::ptr::null_mut(), |f| f(ctx));
    let reply = match data.cast::<Wake>().as_ref() {
        None => Ok(pair(None, None)),
        Some(Wake::Value { key }) => store::read_string(&context, key).map(|v| pair(v, None)),
        Some(Wake::Lease { db, key, ttl_ms }) => {
            store::read_string(&context, key).map(|v| match v {
                Some(v) => pair(Some(v), None),
                None => pair(None, issue(&context, *db, key, *ttl_ms)),
            })
        }
    };
    context.reply(reply.map_err(Into::into)) as c_int
}

unsafe extern "C" fn on_timeout(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    let bc = raw::RedisModule_GetBlockedClientHandle.map_or(std::ptr::null_mut(), |f| f(ctx));
    forget_waiter(bc);
    // The handle is released once the timeout reply is out.
    if let Some(f) = raw::RedisModule_UnblockClient {
        f(bc, std::ptr::null_mut());
    }
    context.reply(Ok(pair(None, None))) as c_int
}

unsafe extern "C" fn on_disconnect(_ctx: *mut raw::RedisModuleCtx, bc: Bc) {
    forget_waiter(bc);
    if let Some(f) = raw::RedisModule_UnblockClient {
        f(bc, std::ptr::null_mut());
    }
}

unsafe extern "C" fn free_wake(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if !data.is_null() {
        drop(Box::from_raw(data.cast::<Wake>()));
    }
}

fn forget_waiter(bc: Bc) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.waiters.retain(|_, q| {
            q.retain(|w| w.bc != bc);
            !q.is_empty()
        });
    });
}

fn block(ctx: &Context, db: Db, key: &[u8], ttl_ms: i64, wait_ms: i64) -> bool {
    let (Some(block), Some(on_dc)) = (unsafe { raw::RedisModule_BlockClient }, unsafe {
        raw::RedisModule_SetDisconnectCallback
    }) else {
        return false;
    };
    let bc = unsafe {
        block(
            ctx.ctx,
            Some(on_wake),
            Some(on_timeout),
            Some(free_wake),
            wait_ms,
        )
    };
    if bc.is_null() {
        return false;
    }
    unsafe { on_dc(bc, Some(on_disconnect)) };
    STATE.with(|s| {
        s.borrow_mut()
            .waiters
            .entry((db, key.to_vec()))
            .or_default()
            .push_back(Waiter { bc, ttl_ms })
    });
    true
}

pub fn tag_getl(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let a = parse_getl(&argv)?;
    Caller::of(ctx).check(ctx, a.key, Access::Read)?;
    if let Some(v) = store::read_string(ctx, a.key)? {
        return Ok(pair(Some(v), None));
    }
    let db = store::selected_db(ctx);
    if let Some(token) = issue(ctx, db, a.key, a.ttl_ms) {
        return Ok(pair(None, Some(token)));
    }
    let cannot_block = ctx
        .get_flags()
        .intersects(ContextFlags::MULTI | ContextFlags::LUA | ContextFlags::DENY_BLOCKING);
    match a.wait_ms {
        Some(wait) if !cannot_block && block(ctx, db, a.key, a.ttl_ms, wait) => {
            Ok(RedisValue::NoReply)
        }
        _ => Ok(pair(None, None)),
    }
}

/// Consumes a lease token for a fill of `key` with `tags`. `Ok(false)` when
/// the lease was invalidated since it was issued; an error for a token this
/// server never issued.
pub fn redeem(db: Db, key: &[u8], token: &[u8], tags: &[&[u8]]) -> Result<bool> {
    let v = STATE.with(|s| {
        s.borrow_mut()
            .book
            .redeem(db, key, token, tags, store::now_ms())
    })?;
    Ok(v == Verdict::Store)
}

/// The key was written (`gone == false`) or deleted: its lease is void,
/// and its waiters are woken with the value or handed the next lease.
pub fn key_written(db: Db, key: &[u8], gone: bool) {
    let (revoked, waiters) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let revoked = s.book.key_changed(db, key);
        let waiters = if !gone {
            s.waiters.remove(&(db, key.to_vec()))
        } else {
            None
        };
        (revoked, waiters)
    });
    if let Some(q) = waiters {
        for w in q {
            unblock(w.bc, Wake::Value { key: key.to_vec() });
        }
    } else if gone && revoked {
        hand_over(db, key);
    }
}

/// Whether any lease or waiter exists (then every write matters).
pub fn watching() -> bool {
    STATE.with(|s| {
        let s = s.borrow();
        s.book.outstanding() > 0 || !s.waiters.is_empty()
    })
}

pub fn tags_purged(tags: &[Vec<u8>]) {
    STATE.with(|s| s.borrow_mut().book.tags_purged(tags));
}

/// The dataset was flushed, swapped or reloaded: every lease is void, and
/// each waited-on key's first waiter is handed a fresh one.
pub fn flushed() {
    let keys: Vec<(Db, Vec<u8>)> = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.book.clear();
        s.waiters.keys().cloned().collect()
    });
    for (db, key) in keys {
        hand_over(db, &key);
    }
}

pub fn outstanding() -> (usize, usize) {
    STATE.with(|s| {
        let s = s.borrow();
        (
            s.book.outstanding(),
            s.waiters.values().map(VecDeque::len).sum(),
        )
    })
}
