//! Thin glue over the module API: calls into Redis with owned replies, key
//! access, the caller's ACL, the selected database, and the guards that tell
//! the notification handler where it is called from.

use super::guards::InNotification;
use crate::engine::error::{Error, Result};
use crate::engine::index::Db;
use crate::engine::plan::Kind;
use redis_module::{
    raw, CallOptionResp, CallOptions, CallOptionsBuilder, CallReply, CallResult, Context, KeyType,
    RedisString,
};
use std::ffi::CStr;

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
    /// Not propagated, even from inside a notification: the caller
    /// propagates the write itself, later (see `owed::settle_untags`).
    Quiet,
}

fn options(mode: Mode) -> CallOptions {
    let b = CallOptionsBuilder::new()
        .errors_as_replies()
        .resp(CallOptionResp::Resp2);
    // On Redis 7.0 any call without the replicate flag made from inside a
    // notification (even a read) drops the DELs the server had queued for
    // keys expiring or being evicted at that moment.
    if mode == Mode::Replicated || (InNotification::active() && mode != Mode::Quiet) {
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
    // SAFETY: a module API call with the running context.
    unsafe { raw::RedisModule_GetSelectedDb.map_or(0, |f| f(ctx.ctx)) }
}

pub fn select_db(ctx: &Context, db: Db) {
    // SAFETY: a module API call with the running context.
    unsafe {
        if let Some(f) = raw::RedisModule_SelectDb {
            f(ctx.ctx, db);
        }
    }
}

/// Unix time in milliseconds as the server sees it.
pub fn now_ms() -> i64 {
    // SAFETY: a module API call without arguments.
    unsafe { raw::RedisModule_Milliseconds.map_or(0, |f| f()) }
}

pub fn key_type(ctx: &Context, key: &[u8]) -> KeyType {
    let name = RedisString::create_from_slice(ctx.ctx, key);
    ctx.open_key(&name).key_type()
}

pub fn exists(ctx: &Context, key: &[u8]) -> bool {
    // SAFETY: reading a function pointer of the module API.
    let Some(key_exists) = (unsafe { raw::RedisModule_KeyExists }) else {
        return key_type(ctx, key) != KeyType::Empty;
    };
    let name = RedisString::create_from_slice(ctx.ctx, key);
    // SAFETY: the running context and a live string; the call opens no
    // key (an expired key is deleted as by a read, as opening it would).
    unsafe { key_exists(ctx.ctx, name.inner) != 0 }
}

/// Writes a string value as `SET` does (any old value and TTL replaced),
/// through the key API rather than a command call: the TTL is the absolute
/// `deadline`, the old one when `keep_ttl`, or none. Fires the keyspace
/// events `SET` fires; closing the key signals WATCH and CLIENT TRACKING.
pub fn write_string(
    ctx: &Context,
    key: &[u8],
    value: &[u8],
    deadline: Option<i64>,
    keep_ttl: bool,
    own: &Own,
) -> Result<()> {
    let missing = || Error::Internal("key API unavailable".into());
    // SAFETY: reading function pointers of the module API.
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
    let name = Str::of(ctx, own, key);
    let val = Str::of(ctx, own, value);
    let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as i32;
    let ok = raw::REDISMODULE_OK as i32;
    // SAFETY: the key is opened, written and closed here with the running
    // context; `name` and `val` outlive the calls.
    let written = unsafe {
        let kp = open(ctx.ctx, name.ptr(), mode);
        if kp.is_null() {
            return Err(Error::Internal("cannot open key".into()));
        }
        // Asking a missing key for its TTL crashes Redis 8.2: only ask an
        // existing one.
        let exists = raw::RedisModule_KeyType
            .is_some_and(|f| f(kp) != raw::REDISMODULE_KEYTYPE_EMPTY as i32);
        let old_ttl = if keep_ttl && exists { get_ttl(kp) } else { -1 };
        let mut status = set(kp, val.ptr());
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
    notify(ctx, raw::REDISMODULE_NOTIFY_STRING, c"set", name.ptr());
    if deadline.is_some() {
        notify(ctx, raw::REDISMODULE_NOTIFY_GENERIC, c"expire", name.ptr());
    }
    Ok(())
}

/// The command's own argument strings, with where their bytes are: a
/// plan borrows its keys and values from them, and a borrowed one is
/// passed back to the server as the same string (no copy).
pub struct Own<'a> {
    strs: &'a [RedisString],
    bytes: &'a [&'a [u8]],
}

impl<'a> Own<'a> {
    /// The arguments after the command name (`args`), with their bytes as
    /// `argv` read them.
    pub fn new(args: &'a [RedisString], argv: &'a [&'a [u8]]) -> Own<'a> {
        Own {
            strs: args.get(1..).unwrap_or_default(),
            bytes: argv,
        }
    }

    /// No argument strings (a plan the module made itself).
    pub fn none() -> Own<'static> {
        Own {
            strs: &[],
            bytes: &[],
        }
    }

    /// The argument `bytes` is, when it points into one (the plan borrows
    /// them), whatever its content.
    fn find(&self, bytes: &[u8]) -> Option<&'a RedisString> {
        let i = self
            .bytes
            .iter()
            .position(|b| std::ptr::eq(b.as_ptr(), bytes.as_ptr()) && b.len() == bytes.len())?;
        self.strs.get(i)
    }
}

/// Trims the spare room of the command's own argument `value` once it is
/// stored: a big argument can arrive as the whole query buffer, and stored
/// as it is the room would stay allocated (SET trims it the same way). The
/// trim may move the bytes, so it comes after every use of slices into them
/// (the plan's, replication's).
pub fn trim_stored(own: &Own, value: &[u8]) {
    let Some(v) = own.find(value) else {
        return;
    };
    // SAFETY: a module API function pointer, called on a live string the
    // command holds.
    unsafe {
        if let Some(trim) = raw::RedisModule_TrimStringAllocation {
            trim(v.inner);
        }
    }
}

/// A Redis string for some bytes: the command's own argument when the
/// bytes are one (borrowed, no copy), else a new string.
pub enum Str<'a> {
    Own(&'a RedisString),
    New(RedisString),
}

impl<'a> Str<'a> {
    pub fn of(ctx: &Context, own: &Own<'a>, bytes: &[u8]) -> Str<'a> {
        match own.find(bytes) {
            Some(s) => Str::Own(s),
            None => Str::New(RedisString::create_from_slice(ctx.ctx, bytes)),
        }
    }

    pub fn ptr(&self) -> *mut raw::RedisModuleString {
        match self {
            Str::Own(s) => s.inner,
            Str::New(s) => s.inner,
        }
    }
}

/// Replicates a string write as the `SET` that has the same effect
/// anywhere: `PXAT <deadline>` (absolute, so replicas and the AOF expire it
/// at the master's instant) or `KEEPTTL`.
pub fn replicate_set(
    ctx: &Context,
    key: &[u8],
    value: &[u8],
    deadline: Option<i64>,
    keep_ttl: bool,
) {
    let when = deadline.map(|d| d.to_string());
    let mut args: Vec<&[u8]> = vec![key, value];
    match &when {
        Some(w) => args.extend([&b"PXAT"[..], w.as_bytes()]),
        None if keep_ttl => args.push(b"KEEPTTL"),
        None => {}
    }
    ctx.replicate("SET", args.as_slice());
}

/// Fails with WRONGTYPE unless `key` is absent or of the `kind`.
pub fn ensure_kind(ctx: &Context, key: &[u8], kind: Kind) -> Result<()> {
    if kind == Kind::Any {
        return Ok(());
    }
    let ok = match (kind, key_type(ctx, key)) {
        (Kind::Any, _) | (_, KeyType::Empty) => true,
        (Kind::Set, t) => t == KeyType::Set,
        (Kind::String, t) => t == KeyType::String,
        (Kind::Hash, t) => t == KeyType::Hash,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::WrongType)
    }
}

/// The members of a set, read through the key API: in a cluster a command
/// call on a slot being imported would be redirected, and a set that
/// arrives with a migration is read at exactly that moment.
pub fn smembers(ctx: &Context, key: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    each_member(ctx, key, |member| out.push(member.to_vec()));
    Ok(out)
}

/// Each member of a set (nothing if `key` is no set), as `smembers` reads
/// them, lent to `f` rather than copied.
pub fn each_member(ctx: &Context, key: &[u8], mut f: impl FnMut(&[u8])) {
    let name = RedisString::create_from_slice(ctx.ctx, key);
    let k = ctx.open_key(&name);
    if k.key_type() != KeyType::Set {
        return;
    }
    redis_module::ScanKeyCursor::new(k).for_each(|_, member, _| f(member));
}

/// Names end to end in one buffer: a slot's read lists every key of the
/// slot and every member of its sets, and an allocation each would cost
/// more than the listing.
#[derive(Default)]
pub struct Packed {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Packed {
    pub fn push(&mut self, name: &[u8]) {
        self.buf.extend_from_slice(name);
        self.ends.push(self.buf.len());
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .filter_map(|(a, &b)| self.buf.get(a..b))
    }
}

/// The strings of the array reply to `cmd args`, packed.
pub fn call_packed(ctx: &Context, mode: Mode, cmd: &str, args: &[&[u8]]) -> Result<Packed> {
    let mut out = Packed::default();
    match ctx.call_ext::<_, CallResult>(cmd, &options(mode), args) {
        Ok(CallReply::Array(a)) => {
            for r in a.iter() {
                if let Ok(CallReply::String(s)) = r {
                    out.push(s.as_bytes());
                }
            }
            Ok(out)
        }
        Ok(_) => Ok(out),
        Err(e) => Err(Error::Internal(format!(
            "{cmd}: {}",
            e.to_utf8_string().unwrap_or_default()
        ))),
    }
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

/// The arguments after the command name, as bytes.
pub fn argv(args: &[RedisString]) -> smallvec::SmallVec<[&[u8]; 12]> {
    args.iter().skip(1).map(|a| a.as_slice()).collect()
}

/// In a cluster, the keys a command derives must share a slot.
pub fn ensure_same_slot<K: AsRef<[u8]>>(keys: &[K]) -> Result<()> {
    if super::config::slotted() && !crate::engine::slot::same_slot(keys) {
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

/// `cmd a b` through RM_Call with the arguments passed as buffers (no
/// string objects made on this side): the common shape of the module's own
/// set writes (`SADD set key`, `SREM set key`). Returns the integer reply.
pub fn call2(ctx: &Context, mode: Mode, cmd: &CStr, a: &[u8], b: &[u8]) -> Result<i64> {
    call_buffers(ctx, mode, cmd, &[a, b])
}

/// As `call2`, with three arguments (`SMOVE source destination member`).
pub fn call3(ctx: &Context, mode: Mode, cmd: &CStr, a: &[u8], b: &[u8], c: &[u8]) -> Result<i64> {
    call_buffers(ctx, mode, cmd, &[a, b, c])
}

/// `cmd args…` (two or three) through RM_Call, each argument passed as a
/// buffer; the integer reply.
fn call_buffers(ctx: &Context, mode: Mode, cmd: &CStr, args: &[&[u8]]) -> Result<i64> {
    let r = replicates(mode);
    // SAFETY: reading a function pointer of the module API.
    let Some(call) = (unsafe { raw::RedisModule_Call }) else {
        return Err(Error::Internal("command calls unavailable".into()));
    };
    let (c, f) = (ctx.ctx, cmd.as_ptr());
    // SAFETY: each format names as many buffers as are passed, each as
    // (pointer, length) of a live slice.
    let reply = unsafe {
        match *args {
            [a, b] => {
                let fmt = if r { c"!Ebb" } else { c"Ebb" };
                call(c, f, fmt.as_ptr(), a.as_ptr(), a.len(), b.as_ptr(), b.len())
            }
            [a, b, d] => {
                let fmt = if r { c"!Ebbb" } else { c"Ebbb" };
                let (ap, bp, dp) = (a.as_ptr(), b.as_ptr(), d.as_ptr());
                call(c, f, fmt.as_ptr(), ap, a.len(), bp, b.len(), dp, d.len())
            }
            _ => return Err(Error::Internal("unsupported command call".into())),
        }
    };
    int_reply(reply, cmd)
}

/// Whether a command call in `mode` is replicated as made.
fn replicates(mode: Mode) -> bool {
    mode == Mode::Replicated || (InNotification::active() && mode != Mode::Quiet)
}

/// The integer reply of a command call (freed here): `WRONGTYPE` and other
/// errors as errors, any other reply as 0.
fn int_reply(reply: *mut raw::RedisModuleCallReply, cmd: &CStr) -> Result<i64> {
    if reply.is_null() {
        return Err(Error::Internal("command call failed".into()));
    }
    // SAFETY: module API function pointers; `reply` is a live call reply,
    // read and then freed once.
    unsafe {
        let (Some(kind), Some(int), Some(free)) = (
            raw::RedisModule_CallReplyType,
            raw::RedisModule_CallReplyInteger,
            raw::RedisModule_FreeCallReply,
        ) else {
            return Err(Error::Internal("command calls unavailable".into()));
        };
        let t = kind(reply) as isize;
        let n = int(reply);
        let wrong_type = t == raw::REDISMODULE_REPLY_ERROR
            && raw::RedisModule_CallReplyStringPtr.is_some_and(|f| {
                let mut len = 0usize;
                let p = f(reply, &mut len);
                !p.is_null()
                    && std::slice::from_raw_parts(p.cast::<u8>(), len).starts_with(b"WRONGTYPE")
            });
        free(reply);
        match t {
            raw::REDISMODULE_REPLY_INTEGER => Ok(n),
            raw::REDISMODULE_REPLY_ERROR if wrong_type => Err(Error::WrongType),
            raw::REDISMODULE_REPLY_ERROR => {
                Err(Error::Internal(format!("{} failed", cmd.to_string_lossy())))
            }
            _ => Ok(0),
        }
    }
}

/// Fires a keyspace event as Redis's own command would have.
fn notify(ctx: &Context, class: i32, event: &CStr, key: *mut raw::RedisModuleString) {
    // SAFETY: a module API call with the running context, a static event
    // name and a live key string.
    unsafe {
        if let Some(f) = raw::RedisModule_NotifyKeyspaceEvent {
            f(ctx.ctx, class, event.as_ptr(), key);
        }
    }
}

/// Replicates `cmd args...`, the arguments passed as buffers: Redis makes
/// the one copy it propagates, and no string objects are made here first.
pub fn replicate(ctx: &Context, cmd: &CStr, args: &[&[u8]]) {
    // SAFETY: a module API function pointer.
    let Some(f) = (unsafe { raw::RedisModule_Replicate }) else {
        return;
    };
    macro_rules! arms {
        ($($n:literal => $fmt:literal [$($i:ident)*]),* $(,)?) => {
            match args {
                $(
                    [$($i),*] => {
                        // SAFETY: the format names one (pointer, length)
                        // buffer per argument, each a live slice.
                        unsafe { f(ctx.ctx, cmd.as_ptr(), $fmt.as_ptr(), $($i.as_ptr(), $i.len()),*) };
                    }
                )*
                _ => {
                    ctx.replicate(&cmd.to_string_lossy(), args);
                }
            }
        };
    }
    arms! {
        1 => c"b" [a0],
        2 => c"bb" [a0 a1],
        3 => c"bbb" [a0 a1 a2],
        4 => c"bbbb" [a0 a1 a2 a3],
        5 => c"bbbbb" [a0 a1 a2 a3 a4],
        6 => c"bbbbbb" [a0 a1 a2 a3 a4 a5],
        7 => c"bbbbbbb" [a0 a1 a2 a3 a4 a5 a6],
        8 => c"bbbbbbbb" [a0 a1 a2 a3 a4 a5 a6 a7],
        9 => c"bbbbbbbbb" [a0 a1 a2 a3 a4 a5 a6 a7 a8],
        10 => c"bbbbbbbbbb" [a0 a1 a2 a3 a4 a5 a6 a7 a8 a9],
        11 => c"bbbbbbbbbbb" [a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 a10],
        12 => c"bbbbbbbbbbbb" [a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 a10 a11],
    }
}

/// As `replicate`, passing the first two arguments (a write's key and
/// value) as the command's own strings when they are: the server keeps a
/// reference, not a copy (the value is most of the bytes of a write).
pub fn replicate_from(ctx: &Context, cmd: &CStr, args: &[&[u8]], own: &Own) {
    // SAFETY: a module API function pointer.
    let Some(f) = (unsafe { raw::RedisModule_Replicate }) else {
        return;
    };
    let (Some(rest), Some(k), Some(v)) = (
        args.get(2..),
        args.first().and_then(|a| own.find(a)),
        args.get(1).and_then(|a| own.find(a)),
    ) else {
        return replicate(ctx, cmd, args);
    };
    macro_rules! arms {
        ($($fmt:literal [$($i:ident)*]),* $(,)?) => {
            match rest {
                $(
                    [$($i),*] => {
                        // SAFETY: the format names the two strings, then one
                        // (pointer, length) buffer per further argument,
                        // each live until after the call.
                        unsafe {
                            f(ctx.ctx, cmd.as_ptr(), $fmt.as_ptr(), k.inner, v.inner,
                              $($i.as_ptr(), $i.len()),*)
                        };
                    }
                )*
                _ => replicate(ctx, cmd, args),
            }
        };
    }
    arms! {
        c"ss" [],
        c"ssb" [a0],
        c"ssbb" [a0 a1],
        c"ssbbb" [a0 a1 a2],
        c"ssbbbb" [a0 a1 a2 a3],
        c"ssbbbbb" [a0 a1 a2 a3 a4],
        c"ssbbbbbb" [a0 a1 a2 a3 a4 a5],
        c"ssbbbbbbb" [a0 a1 a2 a3 a4 a5 a6],
        c"ssbbbbbbbb" [a0 a1 a2 a3 a4 a5 a6 a7],
        c"ssbbbbbbbbb" [a0 a1 a2 a3 a4 a5 a6 a7 a8],
        c"ssbbbbbbbbbb" [a0 a1 a2 a3 a4 a5 a6 a7 a8 a9],
    }
}

/// Replies `+OK` straight from a static string (the crate's own reply path
/// copies it into a fresh C string first).
pub fn reply_ok(ctx: &Context) -> redis_module::RedisResult {
    // SAFETY: a module API call with the running context and a static,
    // NUL-terminated string.
    unsafe {
        if let Some(f) = raw::RedisModule_ReplyWithSimpleString {
            f(ctx.ctx, c"OK".as_ptr());
            return Ok(redis_module::RedisValue::NoReply);
        }
    }
    Ok(redis_module::RedisValue::SimpleStringStatic("OK"))
}

/// Sets one field of a hash through the key API, from wherever the module
/// runs (a keyspace notification included): neither replicated nor
/// notified. The caller replicates the change itself.
pub fn hash_set_here(ctx: &Context, key: &[u8], field: &[u8], value: &[u8]) -> Result<()> {
    let missing = || Error::Internal("key API unavailable".into());
    // SAFETY: reading function pointers of the module API.
    let (open, close, set) = unsafe {
        (
            raw::RedisModule_OpenKey.ok_or_else(missing)?,
            raw::RedisModule_CloseKey.ok_or_else(missing)?,
            raw::RedisModule_HashSet.ok_or_else(missing)?,
        )
    };
    let name = RedisString::create_from_slice(ctx.ctx, key);
    let f = RedisString::create_from_slice(ctx.ctx, field);
    let v = RedisString::create_from_slice(ctx.ctx, value);
    let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as i32;
    // SAFETY: the key is opened, written and closed here with the running
    // context; the strings outlive the calls; the field list ends with NULL
    // as RM_HashSet requires.
    let written = unsafe {
        let kp = open(ctx.ctx, name.inner, mode);
        if kp.is_null() {
            return Err(Error::Internal("cannot open key".into()));
        }
        let n = set(
            kp,
            raw::REDISMODULE_HASH_NONE as i32,
            f.inner,
            v.inner,
            std::ptr::null_mut::<raw::RedisModuleString>(),
        );
        close(kp);
        n
    };
    if written < 0 {
        return Err(Error::Internal("hash write failed".into()));
    }
    Ok(())
}

/// Escapes glob characters so the prefix matches literally in SCAN MATCH.
pub fn glob_literal(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'*');
    out
}

/// Every key of `kind` under `prefix` in the selected database.
pub fn keys_under(ctx: &Context, prefix: &[u8], kind: &[u8]) -> Vec<Vec<u8>> {
    let pattern = glob_literal(prefix);
    let mut cursor = b"0".to_vec();
    let mut out = Vec::new();
    loop {
        let args: [&[u8]; 7] = [
            &cursor, b"MATCH", &pattern, b"COUNT", b"1000", b"TYPE", kind,
        ];
        let Ok(Reply::Array(mut parts)) = call(ctx, Mode::Local, "SCAN", &args) else {
            return out;
        };
        out.extend(parts.pop().map(Reply::into_bytes_list).unwrap_or_default());
        match parts.pop() {
            Some(Reply::Bytes(c)) if c != b"0" => cursor = c,
            _ => return out,
        }
    }
}

/// Marks `key` stale, if it exists: it expires at `until` at the latest
/// (an earlier expiry is kept) and the stale hash `hash` names it. Returns
/// whether the key existed. Opening it for writing signals WATCH and client
/// tracking as `PEXPIREAT` would, so an in-process copy asks again.
pub fn mark_stale(ctx: &Context, key: &[u8], hash: &[u8], until: i64, mode: Mode) -> Result<bool> {
    let missing = || Error::Internal("key API unavailable".into());
    // SAFETY: reading function pointers of the module API.
    let (open, close, kind, get_ttl, set_abs) = unsafe {
        (
            raw::RedisModule_OpenKey.ok_or_else(missing)?,
            raw::RedisModule_CloseKey.ok_or_else(missing)?,
            raw::RedisModule_KeyType.ok_or_else(missing)?,
            raw::RedisModule_GetExpire.ok_or_else(missing)?,
            raw::RedisModule_SetAbsExpire.ok_or_else(missing)?,
        )
    };
    let name = RedisString::create_from_slice(ctx.ctx, key);
    let now = now_ms();
    // SAFETY: the key is opened, read, written and closed here with the
    // running context; `name` outlives the calls. A missing key is not
    // asked for its TTL (that crashes Redis 8.2).
    let end = unsafe {
        let kp = open(
            ctx.ctx,
            name.inner,
            (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as i32,
        );
        if kp.is_null() {
            return Err(Error::Internal("cannot open key".into()));
        }
        if kind(kp) == raw::REDISMODULE_KEYTYPE_EMPTY as i32 {
            close(kp);
            return Ok(false);
        }
        let ttl = get_ttl(kp);
        let current = (ttl >= 0).then(|| now.saturating_add(ttl));
        let end = current.map_or(until, |c| c.min(until));
        if current != Some(end) {
            set_abs(kp, end);
        }
        close(kp);
        (current != Some(end)).then_some(end)
    };
    if let Some(end) = end {
        notify(ctx, raw::REDISMODULE_NOTIFY_GENERIC, c"expire", name.inner);
        if mode == Mode::Replicated {
            let at = end.to_string();
            replicate(ctx, c"PEXPIREAT", &[key, at.as_bytes()]);
        }
    }
    // Through the key API rather than a command call: one per key marked.
    hash_set_here(ctx, hash, key, b"0")?;
    let hash_name = RedisString::create_from_slice(ctx.ctx, hash);
    notify(ctx, raw::REDISMODULE_NOTIFY_HASH, c"hset", hash_name.inner);
    if mode == Mode::Replicated {
        replicate(ctx, c"HSET", &[hash, key, b"0"]);
    }
    Ok(true)
}

/// The fields of a hash (none if it is not one).
pub fn hash_fields(ctx: &Context, key: &[u8]) -> Vec<Vec<u8>> {
    match call(ctx, Mode::Local, "HKEYS", &[key]) {
        Ok(reply) => reply.into_bytes_list(),
        Err(_) => Vec::new(),
    }
}

/// One field of a hash, if the key is a hash that has it.
pub fn hash_get(ctx: &Context, key: &[u8], field: &[u8]) -> Option<Vec<u8>> {
    match call(ctx, Mode::Local, "HGET", &[key, field]) {
        Ok(Reply::Bytes(v)) => Some(v),
        _ => None,
    }
}

/// Deletes `names` through the key API, as `DEL` would: each key that
/// existed is deleted (closing it signals `WATCH` and client tracking), a
/// `del` keyspace event is fired for it when the server publishes generic
/// events, and (`Replicated`) one `DEL` of the keys deleted is replicated,
/// one per slot in a cluster. Returns how many existed. No command call
/// per batch, and no notification the server would wrap in a context of
/// its own for the module's handler when nobody else listens: most of what
/// a purge costs beyond the server's own deletion.
pub fn delete<K: AsRef<[u8]>>(ctx: &Context, mode: Mode, names: &[K]) -> Result<i64> {
    let missing = || Error::Internal("key API unavailable".into());
    // SAFETY: reading function pointers of the module API.
    let (open, close, kind, del) = unsafe {
        (
            raw::RedisModule_OpenKey.ok_or_else(missing)?,
            raw::RedisModule_CloseKey.ok_or_else(missing)?,
            raw::RedisModule_KeyType.ok_or_else(missing)?,
            raw::RedisModule_DeleteKey.ok_or_else(missing)?,
        )
    };
    // SAFETY: a module API call without arguments.
    let events = unsafe { raw::RedisModule_GetNotifyKeyspaceEvents.map_or(-1, |f| f()) };
    let publish = events & raw::REDISMODULE_NOTIFY_GENERIC != 0 || other_modules(ctx);
    let mut gone: Vec<RedisString> = Vec::with_capacity(names.len());
    for k in names {
        let name = RedisString::create_from_slice(ctx.ctx, k.as_ref());
        // SAFETY: the key is opened, deleted and closed here with the
        // running context; `name` outlives the calls.
        let existed = unsafe {
            let kp = open(ctx.ctx, name.inner, raw::REDISMODULE_WRITE as i32);
            if kp.is_null() {
                return Err(Error::Internal("cannot open key".into()));
            }
            let existed = kind(kp) != raw::REDISMODULE_KEYTYPE_EMPTY as i32 && del(kp) == 0;
            close(kp);
            existed
        };
        if existed {
            if publish {
                notify(ctx, raw::REDISMODULE_NOTIFY_GENERIC, c"del", name.inner);
            }
            gone.push(name);
        }
    }
    let n = i64::try_from(gone.len()).unwrap_or(i64::MAX);
    if mode == Mode::Replicated && !gone.is_empty() {
        if super::config::slotted() {
            for group in crate::engine::slot::by_slot(&gone, |g| g.as_slice()).values() {
                let strings: Vec<*mut raw::RedisModuleString> =
                    group.iter().map(|g| g.inner).collect();
                replicate_strings(ctx, c"DEL", &strings);
            }
        } else {
            let all: Vec<*mut raw::RedisModuleString> = gone.iter().map(|g| g.inner).collect();
            replicate_strings(ctx, c"DEL", &all);
        }
    }
    Ok(n)
}

thread_local! {
    /// Whether another module is loaded (it may index keys by their
    /// keyspace events); `None`: ask again (a `MODULE` command ran).
    static OTHER_MODULES: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// A `MODULE` command ran: the modules loaded are asked again.
pub fn modules_changed() {
    OTHER_MODULES.with(|m| m.set(None));
}

/// Whether a module other than this one (and the server's own Lua engine)
/// is loaded: then every deletion fires its `del` event, which such a
/// module may be listening for whatever `notify-keyspace-events` says.
fn other_modules(ctx: &Context) -> bool {
    if let Some(known) = OTHER_MODULES.with(std::cell::Cell::get) {
        return known;
    }
    let others = match call(ctx, Mode::Local, "MODULE", &[b"LIST"]) {
        Ok(Reply::Array(list)) => list.into_iter().any(|m| {
            let Reply::Array(fields) = m else {
                return true;
            };
            let name = fields.windows(2).find_map(|w| match w {
                [Reply::Bytes(k), Reply::Bytes(v)] if k.as_slice() == b"name" => Some(v.clone()),
                _ => None,
            });
            !matches!(name.as_deref(), Some(b"tagcache" | b"lua"))
        }),
        _ => true,
    };
    OTHER_MODULES.with(|m| m.set(Some(others)));
    others
}

/// Replicates `cmd` with live strings as its arguments: the server takes
/// a reference to each, no copy.
fn replicate_strings(ctx: &Context, cmd: &CStr, args: &[*mut raw::RedisModuleString]) {
    // SAFETY: a module API call; the "v" format takes an array of live
    // strings and its length.
    unsafe {
        if let Some(f) = raw::RedisModule_Replicate {
            f(
                ctx.ctx,
                cmd.as_ptr(),
                c"v".as_ptr(),
                args.as_ptr(),
                args.len(),
            );
        }
    }
}
