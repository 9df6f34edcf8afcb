//! Keyspace-notification and server-event handlers: they keep the reverse
//! index and the tag sets in step with every change of the keyspace,
//! whoever makes it.
//!
//! A master removes a vanished key from its tag sets (writes that are
//! replicated like any other); a replica or a loading server only updates
//! its in-memory index, since the master's stream carries the writes.

use crate::config;
use crate::index::Db;
use crate::store::{self, with_index, Mode, OwnWrites};
use redis_module::{raw, Context, NotifyEvent, RedisString};
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::raw::c_int;

thread_local! {
    /// `rename_from` names the source; `rename_to`, fired next, the target.
    static RENAMING: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    /// Members that clients are adding to tag sets with plain SADD, keyed
    /// by set, until the `sadd` notification says in which database.
    static SADDED: RefCell<Sadded> = RefCell::new(Sadded::default());
}

/// Client SADDs waiting for their notification, with their member count
/// kept as they come and go so the bound costs nothing to check.
#[derive(Default)]
struct Sadded {
    by_set: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    members: usize,
}

/// Bound on members remembered between a SADD and its notification (a SADD
/// that fails, e.g. WRONGTYPE, never notifies).
const SADDED_MAX: usize = 100_000;

/// Sees every client command (not the module's own calls). A plain `SADD`
/// to a tag set is remembered so that the index learns the membership too:
/// then a key tagged by client code is cleaned up like any other.
unsafe extern "C" fn on_command(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    let (Some(count), Some(arg)) = (
        raw::RedisModule_CommandFilterArgsCount,
        raw::RedisModule_CommandFilterArgGet,
    ) else {
        return;
    };
    let argc = count(fctx);
    if argc < 3 {
        return;
    }
    let bytes = |i: c_int| RedisString::string_as_slice(arg(fctx, i));
    if !bytes(0).eq_ignore_ascii_case(b"sadd") {
        return;
    }
    let set = bytes(1);
    if !set.starts_with(&config::tag_prefix()) {
        return;
    }
    SADDED.with(|s| {
        let mut s = s.borrow_mut();
        if s.members > SADDED_MAX {
            *s = Sadded::default();
        }
        s.members += (argc - 2) as usize;
        let members = s.by_set.entry(set.to_vec()).or_default();
        members.extend((2..argc).map(|i| bytes(i).to_vec()));
    });
}

pub fn register_filter(ctx: &Context) {
    unsafe {
        if let Some(f) = raw::RedisModule_RegisterCommandFilter {
            f(
                ctx.ctx,
                Some(on_command),
                raw::REDISMODULE_CMDFILTER_NOSELF as c_int,
            );
        }
    }
}

/// Whether a client SADD of `member` to `set` is still pending (consumed).
fn take_sadded(set: &[u8], member: &[u8]) -> bool {
    SADDED.with(|s| {
        let mut s = s.borrow_mut();
        let Some(members) = s.by_set.get_mut(set) else {
            return false;
        };
        let Some(i) = members.iter().position(|m| m == member) else {
            return false;
        };
        members.swap_remove(i);
        if members.is_empty() {
            s.by_set.remove(set);
        }
        s.members = s.members.saturating_sub(1);
        true
    })
}

/// A client's SADD to a tag set took effect in `db`.
fn learn_sadd(db: Db, set: &[u8], prefix: &[u8]) {
    let Some(members) = SADDED.with(|s| {
        let mut s = s.borrow_mut();
        let taken = s.by_set.remove(set);
        if let Some(m) = &taken {
            s.members = s.members.saturating_sub(m.len());
        }
        taken
    }) else {
        return;
    };
    let tag = set.get(prefix.len()..).unwrap_or_default();
    with_index(|ix| {
        for m in &members {
            ix.add(db, m, &[tag]);
        }
    });
}

/// Events after which the key no longer holds what it was tagged for.
fn ends_tags(event: &str) -> bool {
    matches!(
        event,
        "del"
            | "expired"
            | "evicted"
            | "set"
            | "restore"
            | "move_from"
            | "copy_to"
            | "sortstore"
            | "sunionstore"
            | "sinterstore"
            | "sdiffstore"
            | "zunionstore"
            | "zinterstore"
            | "zdiffstore"
            | "georadiusstore"
            | "geosearchstore"
    )
}

type Job = Box<dyn FnOnce(&Context)>;

thread_local! {
    static DEFERRED: RefCell<Vec<Job>> = RefCell::new(Vec::new());
    static TIMER_ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` once it is safe to write. Where the server offers
/// post-notification jobs, `f` runs in one, atomically with the change.
/// Redis 7.0 has none, and a write made inside a notification there is
/// unsafe (it makes a failing command count as a change and be
/// replicated, and can drop the DELs of expiring keys); so `f` is queued
/// and runs, replicated on its own, when the server is about to sleep or
/// in a 0 ms timer, whichever comes first.
pub fn run_after(ctx: &Context, f: impl FnOnce(&Context) + 'static) {
    let job = std::rc::Rc::new(RefCell::new(Some(f)));
    let queued = job.clone();
    let status = ctx.add_post_notification_job(move |ctx| {
        if let Some(f) = queued.borrow_mut().take() {
            f(ctx);
        }
    });
    if status == Ok(redis_module::Status::Ok) {
        return;
    }
    let pending = job.borrow_mut().take();
    if let Some(f) = pending {
        DEFERRED.with(|d| d.borrow_mut().push(Box::new(f)));
        if !TIMER_ARMED.with(|t| t.replace(true)) {
            ctx.create_timer(std::time::Duration::ZERO, drain_deferred, ());
        }
    }
}

fn drain_deferred(ctx: &Context, (): ()) {
    TIMER_ARMED.with(|t| t.set(false));
    drain(ctx);
}

/// Runs the deferred jobs. Called from the 0 ms timer and, so that no
/// client command of the next event-loop turn runs before them, from the
/// server's before-sleep hook.
fn drain(ctx: &Context) {
    // Jobs may queue more jobs (a purge's deletions); a bounded number of
    // rounds here, the rest on the next timer.
    for _ in 0..64 {
        let jobs = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
        if jobs.is_empty() {
            return;
        }
        for job in jobs {
            job(ctx);
        }
    }
    if DEFERRED.with(|d| !d.borrow().is_empty()) && !TIMER_ARMED.with(|t| t.replace(true)) {
        ctx.create_timer(std::time::Duration::ZERO, drain_deferred, ());
    }
}

unsafe extern "C" fn on_event_loop(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut std::ffi::c_void,
) {
    if sub == raw::REDISMODULE_SUBEVENT_EVENTLOOP_BEFORE_SLEEP
        && DEFERRED.with(|d| !d.borrow().is_empty())
    {
        drain(&Context::new(ctx));
    }
}

/// Runs a write that keeps the tag sets in step, replicated.
fn write_later(ctx: &Context, db: Db, cmd: &'static str, args: Vec<Vec<u8>>) {
    run_membership_later(ctx, db, cmd, args, None);
}

/// A membership change decided now but made later: `(key, tag, wanted)`
/// is checked against the index when the write runs, because a command of
/// the same transaction, script or pipeline may have re-tagged (or deleted)
/// the key meanwhile, and the latest state wins.
fn run_membership_later(
    ctx: &Context,
    db: Db,
    cmd: &'static str,
    args: Vec<Vec<u8>>,
    check: Option<(Vec<u8>, Vec<u8>, bool)>,
) {
    run_after(ctx, move |ctx| {
        if let Some((key, tag, wanted)) = &check {
            if with_index(|ix| ix.has_tag(db, key, tag)) != *wanted {
                return;
            }
            // A client SADD of the key that changed nothing (the member was
            // still there) sends no notification: it is found here instead.
            if !*wanted && take_sadded(args.first().map_or(&[][..], Vec::as_slice), key) {
                with_index(|ix| ix.add(db, key, &[tag]));
                return;
            }
        }
        let home = store::selected_db(ctx);
        store::select_db(ctx, db);
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        if let Err(e) = store::call(ctx, Mode::Replicated, cmd, &refs) {
            ctx.log_warning(&format!("tagcache: index update failed: {e}"));
        }
        store::select_db(ctx, home);
    });
}

/// Takes `key` out of the set of `tag`, unless it carries the tag again by
/// the time the write runs.
fn srem_later(ctx: &Context, db: Db, key: &[u8], tag: &[u8], prefix: &[u8]) {
    let set = [prefix, tag].concat();
    let check = Some((key.to_vec(), tag.to_vec(), false));
    run_membership_later(ctx, db, "SREM", vec![set, key.to_vec()], check);
}

fn remove_from_sets(ctx: &Context, db: Db, key: &[u8], tags: &[Vec<u8>]) {
    let prefix = config::tag_prefix();
    for t in tags {
        srem_later(ctx, db, key, t, &prefix);
    }
    crate::stats::bump(&crate::stats::INDEX_CLEANUPS);
}

/// A tag set was evicted: the keys that carried the tag could no longer be
/// purged through it, so they go too (memory is short anyway).
fn drop_orphans(ctx: &Context, db: Db, tag: &[u8]) {
    let keys = with_index(|ix| ix.keys_with_tag(db, tag));
    for chunk in keys.chunks(1024) {
        let mut args = Vec::with_capacity(chunk.len());
        args.extend(chunk.iter().cloned());
        write_later(ctx, db, "DEL", args);
    }
}

pub fn on_keyspace_event(ctx: &Context, _kind: NotifyEvent, event: &str, key: &[u8]) {
    let own = OwnWrites::active() && matches!(event, "del" | "set");
    // The module's own deletions and writes (a purge of many keys) keep
    // the index themselves: unless a rule or a lease watches, nothing to do.
    if own
        && !crate::link::any_rules()
        && !crate::commands::lease::watching()
        && key != crate::link::LINKS_KEY
    {
        return;
    }
    let db = store::selected_db(ctx);
    let prefix = config::tag_prefix();
    let on_index = key.starts_with(&prefix);
    // Most keys of a busy server are neither tagged nor watched by a rule or
    // a lease: leave them after one lookup.
    let watched = crate::link::has_rules(db) || crate::commands::lease::watching();
    if !on_index
        && !watched
        && key != crate::link::LINKS_KEY
        && !matches!(event, "rename_from" | "rename_to")
        && (own || !with_index(|ix| ix.contains(db, key)))
    {
        return;
    }
    let _scope = store::InNotification::begin();
    let flags = ctx.get_flags();
    if flags.contains(redis_module::ContextFlags::LOADING) {
        return; // the index is rebuilt when loading ends
    }
    let writes = !flags.contains(redis_module::ContextFlags::SLAVE);
    if on_index {
        if event == "sadd" {
            learn_sadd(db, key, &prefix);
        } else if event == "evicted" && writes {
            drop_orphans(ctx, db, key.get(prefix.len()..).unwrap_or_default());
        }
        return;
    }
    if ends_tags(event) && !own {
        let gone = matches!(event, "del" | "expired" | "evicted" | "move_from");
        crate::commands::lease::key_written(db, key, gone);
        let tags = with_index(|ix| ix.remove_key(db, key));
        if writes && !tags.is_empty() {
            remove_from_sets(ctx, db, key, &tags);
        }
    } else if event == "rename_from" {
        RENAMING.with(|r| *r.borrow_mut() = Some(key.to_vec()));
    } else if event == "rename_to" {
        crate::commands::lease::key_written(db, key, false);
        let Some(from) = RENAMING.with(|r| r.borrow_mut().take()) else {
            return;
        };
        crate::commands::lease::key_written(db, &from, true);
        let (moved, overwritten) = with_index(|ix| ix.rename(db, &from, key));
        if writes {
            if !overwritten.is_empty() {
                remove_from_sets(ctx, db, key, &overwritten);
            }
            for t in &moved {
                srem_later(ctx, db, &from, t, &prefix);
                let set = [&prefix[..], t].concat();
                let check = Some((key.to_vec(), t.clone(), true));
                run_membership_later(ctx, db, "SADD", vec![set, key.to_vec()], check);
            }
        }
    } else if !own && !matches!(event, "expire" | "persist") {
        crate::commands::lease::key_written(db, key, false);
    }
    crate::link::on_keyspace_event(ctx, event, key, db, writes);
}

fn subscribe(ctx: &Context, id: u64, cb: raw::RedisModuleEventCallback) -> bool {
    let event = raw::RedisModuleEvent { id, dataver: 1 };
    unsafe {
        raw::RedisModule_SubscribeToServerEvent
            .is_some_and(|f| f(ctx.ctx, event, cb) == raw::REDISMODULE_OK as i32)
    }
}

unsafe extern "C" fn on_flush(
    _ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    sub: u64,
    data: *mut std::ffi::c_void,
) {
    if sub != raw::REDISMODULE_SUBEVENT_FLUSHDB_START || data.is_null() {
        return;
    }
    let info = &*(data as *const raw::RedisModuleFlushInfo);
    let db = if info.dbnum < 0 {
        None
    } else {
        Some(info.dbnum)
    };
    with_index(|ix| ix.flush(db));
    crate::link::forget(db);
    crate::commands::lease::flushed();
}

unsafe extern "C" fn on_swapdb(
    _ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    _sub: u64,
    data: *mut std::ffi::c_void,
) {
    if data.is_null() {
        return;
    }
    let info = &*(data as *const raw::RedisModuleSwapDbInfo);
    with_index(|ix| ix.swap(info.dbnum_first, info.dbnum_second));
    crate::link::swap(info.dbnum_first, info.dbnum_second);
    crate::commands::lease::flushed();
}

unsafe extern "C" fn on_loading(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut std::ffi::c_void,
) {
    let ctx = Context::new(ctx);
    match sub {
        raw::REDISMODULE_SUBEVENT_LOADING_ENDED | raw::REDISMODULE_SUBEVENT_LOADING_FAILED => {
            crate::rebuild::rebuild(&ctx)
        }
        _ => {
            with_index(|ix| ix.flush(None));
            crate::link::forget(None);
            crate::commands::lease::flushed();
        }
    }
}

pub fn subscribe_server_events(ctx: &Context) -> Result<(), String> {
    let ok = subscribe(ctx, raw::REDISMODULE_EVENT_FLUSHDB, Some(on_flush))
        && subscribe(ctx, raw::REDISMODULE_EVENT_SWAPDB, Some(on_swapdb))
        && subscribe(ctx, raw::REDISMODULE_EVENT_LOADING, Some(on_loading))
        && subscribe(ctx, raw::REDISMODULE_EVENT_EVENTLOOP, Some(on_event_loop));
    if ok {
        Ok(())
    } else {
        Err("could not subscribe to server events".into())
    }
}
