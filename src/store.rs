//! Thin glue over the module API: calls into Redis with owned replies, the
//! caller's ACL, the selected database, and the guard that tells the
//! notification handler which writes are the module's own.

use crate::error::{Error, Result};
use crate::index::Db;
use redis_module::{
    raw, CallOptionResp, CallOptions, CallOptionsBuilder, CallReply, CallResult, Context, KeyType,
    RedisString,
};
use std::cell::Cell;

/// An owned reply from a call into Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Int(i64),
    Bytes(Vec<u8>),
    Array(Vec<Reply>),
    Nil,
    Other,
}

impl Reply {
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            _ => 0,
        }
    }

    pub fn into_bytes_list(self) -> Vec<Vec<u8>> {
        match self {
            Reply::Array(items) => items
                .into_iter()
                .filter_map(|r| match r {
                    Reply::Bytes(b) => Some(b),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn own(reply: &CallReply) -> Reply {
    match reply {
        CallReply::I64(i) => Reply::Int(i.to_i64()),
        CallReply::String(s) => Reply::Bytes(s.as_bytes().to_vec()),
        CallReply::VerbatimString(v) => v
            .as_parts()
            .map_or(Reply::Other, |(_, b)| Reply::Bytes(b.to_vec())),
        CallReply::Null(_) => Reply::Nil,
        CallReply::Array(a) => Reply::Array(
            a.iter()
                .map(|r| r.as_ref().map_or(Reply::Other, own))
                .collect(),
        ),
        CallReply::Set(a) => Reply::Array(
            a.iter()
                .map(|r| r.as_ref().map_or(Reply::Other, own))
                .collect(),
        ),
        _ => Reply::Other,
    }
}

/// How a call into Redis is made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Not propagated: the command replicates its own effect explicitly.
    Local,
    /// Propagated to replicas and the AOF as it runs.
    Replicated,
}

fn options(mode: Mode) -> CallOptions {
    let b = CallOptionsBuilder::new()
        .errors_as_replies()
        .resp(CallOptionResp::Resp2);
    // On Redis 7.0 any call without the replicate flag made from inside a
    // notification (even a read) drops the DELs the server had queued for
    // keys expiring or being evicted at that moment.
    if mode == Mode::Replicated || InNotification::active() {
        b.replicate().build()
    } else {
        b.build()
    }
}

pub fn call(ctx: &Context, mode: Mode, cmd: &str, args: &[&[u8]]) -> Result<Reply> {
    let res: CallResult = ctx.call_ext(cmd, &options(mode), args);
    match res {
        Ok(r) => Ok(own(&r)),
        Err(e) => {
            let msg = e.to_utf8_string().unwrap_or_default();
            if msg.starts_with("WRONGTYPE") {
                Err(Error::WrongType)
            } else {
                Err(Error::Internal(format!("{cmd}: {msg}")))
            }
        }
    }
}

pub fn selected_db(ctx: &Context) -> Db {
    unsafe { raw::RedisModule_GetSelectedDb.map_or(0, |f| f(ctx.ctx)) }
}

pub fn select_db(ctx: &Context, db: Db) {
    unsafe {
        if let Some(f) = raw::RedisModule_SelectDb {
            f(ctx.ctx, db);
        }
    }
}

/// Unix time in milliseconds as the server sees it.
pub fn now_ms() -> i64 {
    unsafe { raw::RedisModule_Milliseconds.map_or(0, |f| f()) }
}

pub fn key_type(ctx: &Context, key: &[u8]) -> KeyType {
    let name = RedisString::create_from_slice(ctx.ctx, key);
    ctx.open_key(&name).key_type()
}

pub fn exists(ctx: &Context, key: &[u8]) -> bool {
    key_type(ctx, key) != KeyType::Empty
}

/// Writes a string value as `SET` does (any old value and TTL replaced),
/// through the key API rather than a command call: the TTL is the absolute
/// `deadline`, the old one when `keep_ttl`, or none. Fires the keyspace
/// events `SET` fires; closing the key signals WATCH and CLIENT TRACKING.
fn write_string(
    ctx: &Context,
    key: &[u8],
    value: &[u8],
    deadline: Option<i64>,
    keep_ttl: bool,
) -> Result<()> {
    let missing = || Error::Internal("key API unavailable".into());
    let (open, close, set, get_ttl, set_ttl, set_abs) = unsafe {
        (
            raw::RedisModule_OpenKey.ok_or_else(missing)?,
            raw::RedisModule_CloseKey.ok_or_else(missing)?,
            raw::RedisModule_StringSet.ok_or_else(missing)?,
            raw::RedisModule_GetExpire.ok_or_else(missing)?,
            raw::RedisModule_SetExpire.ok_or_else(missing)?,
            raw::RedisModule_SetAbsExpire.ok_or_else(missing)?,
        )
    };
    let name = RedisString::create_from_slice(ctx.ctx, key);
    let val = RedisString::create_from_slice(ctx.ctx, value);
    let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as i32;
    let ok = raw::REDISMODULE_OK as i32;
    let written = unsafe {
        let kp = open(ctx.ctx, name.inner, mode);
        if kp.is_null() {
            return Err(Error::Internal("cannot open key".into()));
        }
        // Asking a missing key for its TTL crashes Redis 8.2: only ask an
        // existing one.
        let exists = raw::RedisModule_KeyType
            .is_some_and(|f| f(kp) != raw::REDISMODULE_KEYTYPE_EMPTY as i32);
        let old_ttl = if keep_ttl && exists { get_ttl(kp) } else { -1 };
        let mut status = set(kp, val.inner);
        if status == ok {
            status = match deadline {
                Some(d) => set_abs(kp, d),
                None if keep_ttl && old_ttl >= 0 => set_ttl(kp, old_ttl.max(1)),
                None => ok,
            };
        }
        close(kp);
        status == ok
    };
    if !written {
        return Err(Error::Internal("string write failed".into()));
    }
    ctx.notify_keyspace_event(redis_module::NotifyEvent::STRING, "set", &name);
    if deadline.is_some() {
        ctx.notify_keyspace_event(redis_module::NotifyEvent::GENERIC, "expire", &name);
    }
    Ok(())
}

/// Writes a string value through the key API and replicates it as the
/// `SET` that has the same effect anywhere: `PXAT <deadline>` (absolute, so
/// replicas and the AOF expire it at the master's instant) or `KEEPTTL`.
pub fn set_string(
    ctx: &Context,
    key: &[u8],
    value: &[u8],
    deadline: Option<i64>,
    keep_ttl: bool,
) -> Result<()> {
    write_string(ctx, key, value, deadline, keep_ttl)?;
    let when = deadline.map(|d| d.to_string());
    let mut args: Vec<&[u8]> = vec![key, value];
    match &when {
        Some(w) => args.extend([&b"PXAT"[..], w.as_bytes()]),
        None if keep_ttl => args.push(b"KEEPTTL"),
        None => {}
    }
    ctx.replicate("SET", args.as_slice());
    Ok(())
}

/// Fails with WRONGTYPE unless every key is a set or absent.
pub fn ensure_sets(ctx: &Context, keys: &[Vec<u8>]) -> Result<()> {
    for k in keys {
        match key_type(ctx, k) {
            KeyType::Empty | KeyType::Set => {}
            _ => return Err(Error::WrongType),
        }
    }
    Ok(())
}

pub fn smembers(ctx: &Context, key: &[u8]) -> Result<Vec<Vec<u8>>> {
    Ok(call(ctx, Mode::Local, "SMEMBERS", &[key])?.into_bytes_list())
}

/// What the caller wants to do with a key, for the ACL check.
#[derive(Clone, Copy)]
pub enum Access {
    Read,
    Write,
    Delete,
}

/// The calling user, resolved once per command. `None` stands for the
/// replication link, the AOF loader and other contexts without a user,
/// which Redis does not restrict either.
pub struct Caller {
    user: *mut raw::RedisModuleUser,
}

impl Caller {
    pub fn of(ctx: &Context) -> Caller {
        // Commands from the master link or the AOF run without a user (and
        // asking for its name then crashes Redis 7.0).
        let f = ctx.get_flags();
        if f.intersects(
            redis_module::ContextFlags::REPLICATED | redis_module::ContextFlags::LOADING,
        ) {
            return Caller {
                user: std::ptr::null_mut(),
            };
        }
        let user = unsafe {
            match (
                raw::RedisModule_GetCurrentUserName,
                raw::RedisModule_GetModuleUserFromUserName,
                raw::RedisModule_FreeString,
            ) {
                (Some(name_of), Some(user_of), Some(free)) => {
                    let name = name_of(ctx.ctx);
                    if name.is_null() {
                        std::ptr::null_mut()
                    } else {
                        let u = user_of(name);
                        free(ctx.ctx, name);
                        if u.is_null() {
                            // A user deleted while connected may do nothing.
                            usize::MAX as *mut raw::RedisModuleUser
                        } else {
                            u
                        }
                    }
                }
                _ => std::ptr::null_mut(),
            }
        };
        Caller { user }
    }

    pub fn check(&self, ctx: &Context, key: &[u8], access: Access) -> Result<()> {
        if self.user.is_null() {
            return Ok(());
        }
        let denied = || Error::NoPerm(String::from_utf8_lossy(key).into_owned());
        if self.user == usize::MAX as *mut raw::RedisModuleUser {
            return Err(denied());
        }
        let flags = match access {
            Access::Read => raw::REDISMODULE_CMD_KEY_ACCESS,
            Access::Write => raw::REDISMODULE_CMD_KEY_UPDATE | raw::REDISMODULE_CMD_KEY_INSERT,
            Access::Delete => raw::REDISMODULE_CMD_KEY_DELETE,
        };
        let name = RedisString::create_from_slice(ctx.ctx, key);
        let ok = unsafe {
            raw::RedisModule_ACLCheckKeyPermissions.map_or(raw::REDISMODULE_OK as i32, |f| {
                f(self.user, name.inner, flags as i32)
            })
        };
        if ok == raw::REDISMODULE_OK as i32 {
            Ok(())
        } else {
            Err(denied())
        }
    }

    pub fn check_all<K: AsRef<[u8]>>(
        &self,
        ctx: &Context,
        keys: &[K],
        access: Access,
    ) -> Result<()> {
        keys.iter()
            .try_for_each(|k| self.check(ctx, k.as_ref(), access))
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        if !self.user.is_null() && self.user != usize::MAX as *mut raw::RedisModuleUser {
            unsafe {
                if let Some(free) = raw::RedisModule_FreeModuleUser {
                    free(self.user);
                }
            }
        }
    }
}

thread_local! {
    static OWN_WRITES: Cell<u32> = const { Cell::new(0) };
    static IN_NOTIFICATION: Cell<u32> = const { Cell::new(0) };
}

/// A nesting depth kept while a guard lives (commands and notifications
/// nest: a command's write fires a notification that runs a command).
pub struct Depth(&'static std::thread::LocalKey<Cell<u32>>);

impl Depth {
    fn enter(depth: &'static std::thread::LocalKey<Cell<u32>>) -> Depth {
        depth.with(|c| c.set(c.get() + 1));
        Depth(depth)
    }

    fn inside(depth: &'static std::thread::LocalKey<Cell<u32>>) -> bool {
        depth.with(|c| c.get() > 0)
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        self.0.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// While its guard lives, calls are made from inside a keyspace notification.
pub struct InNotification;

impl InNotification {
    pub fn begin() -> Depth {
        Depth::enter(&IN_NOTIFICATION)
    }

    pub fn active() -> bool {
        Depth::inside(&IN_NOTIFICATION)
    }
}

/// While its guard lives, `del` and `set` notifications come from the
/// module's own command, which keeps the index itself: the handler leaves
/// them alone.
pub struct OwnWrites;

impl OwnWrites {
    pub fn begin() -> Depth {
        Depth::enter(&OWN_WRITES)
    }

    pub fn active() -> bool {
        Depth::inside(&OWN_WRITES)
    }
}

/// Prefixes each name: `tag:` + `a` -> `tag:a`.
pub fn prefixed<T: AsRef<[u8]>>(prefix: &[u8], names: &[T]) -> Vec<Vec<u8>> {
    names
        .iter()
        .map(|n| [prefix, n.as_ref()].concat())
        .collect()
}

/// Whether the command is replayed from the master link or the AOF.
pub fn from_master(ctx: &Context) -> bool {
    ctx.get_flags()
        .intersects(redis_module::ContextFlags::REPLICATED | redis_module::ContextFlags::LOADING)
}

/// Whether the server may write on its own behalf now (a master, not
/// loading a dataset).
pub fn may_write(ctx: &Context) -> bool {
    let f = ctx.get_flags();
    !f.intersects(redis_module::ContextFlags::SLAVE | redis_module::ContextFlags::LOADING)
}

lazy_static::lazy_static! {
    static ref INDEX: std::sync::Mutex<crate::index::Index> =
        std::sync::Mutex::new(crate::index::Index::default());
}

/// Runs `f` on the reverse index. Only the main thread touches it, so the
/// lock is never contended; a poisoned lock is recovered, not propagated.
pub fn with_index<R>(f: impl FnOnce(&mut crate::index::Index) -> R) -> R {
    let mut guard = INDEX.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// The arguments after the command name, as bytes.
pub fn argv(args: &[RedisString]) -> Vec<&[u8]> {
    args.iter().skip(1).map(|a| a.as_slice()).collect()
}

/// In a cluster, the keys a command derives must share a slot.
pub fn ensure_same_slot<K: AsRef<[u8]>>(ctx: &Context, keys: &[K]) -> Result<()> {
    if ctx
        .get_flags()
        .contains(redis_module::ContextFlags::CLUSTER)
        && !crate::slot::same_slot(keys)
    {
        return Err(Error::CrossSlot);
    }
    Ok(())
}

/// Reads a string key without a call into Redis. `Ok(None)` when absent.
pub fn read_string(ctx: &Context, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let name = RedisString::create_from_slice(ctx.ctx, key);
    let k = ctx.open_key(&name);
    match k.key_type() {
        KeyType::Empty => Ok(None),
        KeyType::String => Ok(k.read().map_err(|_| Error::WrongType)?.map(<[u8]>::to_vec)),
        _ => Err(Error::WrongType),
    }
}
