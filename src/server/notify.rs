//! Keyspace notifications and server events, turned into changes of the
//! engine's state: the index follows every change of a tag set or of a
//! tagged key at once, whoever makes it; the Redis writes that follow from
//! a change (a vanished key leaving its tag sets, a rule's purge) are owed,
//! and paid by `apply::settle` before any module command acts, in a
//! post-notification job where the server has them, and before the server
//! sleeps.
//!
//! The module's own writes are mirrored by `apply` and ignored here. While
//! a dataset loads nothing is tracked: the index is rebuilt when it ends.

use super::config;
use super::guards::{Applying, InNotification};
use super::keys::{self, Mode};
use super::owed;
use super::rebuild;
use super::rules;
use crate::engine::index::{Db, Scope};
use crate::engine::plan::Prefix;
use crate::engine::{self, Wake};
use redis_module::{raw, Context, ContextFlags, KeyType, RedisString};
use std::cell::Cell;
use std::os::raw::c_int;

/// Bound on keys remembered as tagged before they exist.
const GHOSTS_MAX: usize = 100_000;

/// Sees every client command (and the master's stream on a replica; not
/// the module's own calls). A command that names members of a tag set
/// (`SADD`, `SREM`, `SMOVE`) has them noted (see `engine::Named`), so that
/// the set's notification can check just those members rather than the
/// whole set, and so that a `SADD` that changes nothing still counts.
unsafe extern "C" fn on_command(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    COMMANDS_SEEN.with(|c| c.set(c.get().wrapping_add(1)));
    // SAFETY: plain function pointers of the module API.
    let (Some(count), Some(arg)) = (unsafe { raw::RedisModule_CommandFilterArgsCount }, unsafe {
        raw::RedisModule_CommandFilterArgGet
    }) else {
        return;
    };
    // SAFETY: `fctx` is the live filter context Redis passed in.
    let argc = unsafe { count(fctx) };
    if argc < 1 {
        return;
    }
    // SAFETY: indexes below `argc` are valid arguments of the command, alive
    // for the whole callback.
    let slice = |i: c_int| RedisString::string_as_slice(unsafe { arg(fctx, i) });
    // Every command of every client passes here: decide on the name's
    // length first (GET, SET, DEL… leave after it).
    let name = slice(0);
    let is = |word: &[u8]| name.eq_ignore_ascii_case(word);
    if config::slotted() {
        let moving =
            (name.len() == 7 && is(b"migrate")) || (name.len() == 14 && is(b"restore-asking"));
        MOVING.with(|m| m.set(moving));
        if !moving && super::moves::any_ahead() {
            if let Some((key, away)) = writes_a_key_left_behind(fctx, argc) {
                refuse(fctx, argc, &key, &away);
                return;
            }
        }
        let renames = (name.len() == 6 && is(b"rename")) || (name.len() == 8 && is(b"renamenx"));
        if renames && argc == 3 {
            if let Some(away) = renames_what_has_not_arrived(slice(1)) {
                refuse(fctx, argc, slice(1), &away);
                return;
            }
        }
        if name.len() == 7 && is(b"cluster") {
            let word = |i: c_int, w: &[u8]| argc > i && slice(i).eq_ignore_ascii_case(w);
            if argc >= 4 && word(1, b"setslot") {
                let timeout = (4..argc - 1)
                    .find(|&i| slice(i).eq_ignore_ascii_case(b"timeout"))
                    .map(|i| slice(i + 1));
                super::moves::setslot_any(slice(2), slice(3), timeout);
                if argc >= 5 && word(3, b"node") {
                    super::moves::setslot_node(slice(2), slice(4), timeout);
                }
            }
            // (`SETSLOT` is followed by `moves::setslot_any`.)
            let changes_slots = [
                &b"addslots"[..],
                b"addslotsrange",
                b"delslots",
                b"delslotsrange",
                b"flushslots",
                b"reset",
                b"failover",
                b"forget",
            ]
            .iter()
            .any(|w| word(1, w));
            if changes_slots {
                super::moves::forget_myself();
            }
        }
    }
    match name.len() {
        3 if is(b"acl") => return super::acl::acl_may_have_changed(),
        6 if is(b"module") => return super::keys::modules_changed(),
        4 if argc == 1 && is(b"exec") => return end_transaction(),
        4 if argc >= 3 && (is(b"sadd") || is(b"srem")) => {}
        5 if argc == 1 && is(b"multi") => {
            super::update(|s| {
                let seq = s.next_seq();
                s.named.transaction(true, seq)
            });
            return;
        }
        5 if argc == 4 && is(b"smove") => {}
        7 if argc == 1 && is(b"discard") => return end_transaction(),
        _ => return,
    }
    let p = config::layout();
    // An atomic migration's import is read whole when it ends: notes of
    // its writes would never be used, and would crowd out clients' notes.
    let under = |k: &[u8]| p.index_of(k).is_some() && !(p.slotted && super::moves::importing(k));
    let mut sets: Vec<(&[u8], Vec<Vec<u8>>)> = Vec::new();
    if name.len() == 4 {
        if under(slice(1)) {
            sets.push((slice(1), (2..argc).map(|i| slice(i).to_vec()).collect()));
        }
    } else {
        for set in [slice(1), slice(2)] {
            if under(set) {
                sets.push((set, vec![slice(3).to_vec()]));
            }
        }
    }
    if sets.is_empty() {
        return;
    }
    super::update(|s| {
        let seq = s.next_seq();
        for (set, members) in sets {
            s.named.note(set, members.into_iter(), seq);
        }
    });
}

fn end_transaction() {
    super::update(|s| s.named.transaction(false, 0));
    super::acl::acl_may_have_changed();
}

/// A context for the server calls a filter makes (it is handed none).
static FILTER_CTX: std::sync::atomic::AtomicPtr<raw::RedisModuleCtx> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// The server's commands in the `@write` category, read when the
    /// module loads (a command not among them, such as another module's,
    /// counts as a read: a deletion it makes is cleaned up when the slot
    /// is read where it arrives).
    static WRITE_COMMANDS: std::cell::RefCell<std::collections::HashSet<Vec<u8>>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// What a write becomes when it is refused by the filter.
pub const REFUSAL: &str = "tag.tryagain";

/// The module's own detached context: calls made through it carry no
/// client's flags (`ASKING`, `READONLY`).
pub fn own_ctx() -> Option<*mut raw::RedisModuleCtx> {
    let ctx = FILTER_CTX.load(std::sync::atomic::Ordering::Relaxed);
    (!ctx.is_null()).then_some(ctx)
}

/// Whether the server runs commands as a master now (the filter's own
/// context: not a replica, not loading).
fn master_now() -> Option<*mut raw::RedisModuleCtx> {
    let ctx = FILTER_CTX.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: a plain function pointer of the module API.
    let flags_of = unsafe { raw::RedisModule_GetContextFlags }?;
    if ctx.is_null() {
        return None;
    }
    // SAFETY: the detached context lives as long as the module.
    let server = unsafe { flags_of(ctx) } as u32;
    let replica = server & (raw::REDISMODULE_CTX_FLAGS_SLAVE | raw::REDISMODULE_CTX_FLAGS_LOADING);
    (replica == 0).then_some(ctx)
}

/// A `RENAME` of `key` in a slot arriving here by `MIGRATE` whose data is
/// not read yet: the tags that arrived for `key` are not in the index, and
/// would not follow it to its new name. Refused as a command whose keys are
/// split between two nodes (the server itself refuses a `RENAME` there to a
/// name not arrived yet); returns a key of the slot that is not here, to
/// refuse it by.
fn renames_what_has_not_arrived(key: &[u8]) -> Option<Vec<u8>> {
    master_now()?;
    super::moves::unread(key).then(|| config::layout().set_for(b"", key))
}

/// A key the filtered command writes whose index set or stale hash has
/// left ahead of it with a slot migrating by `MIGRATE`, with that module
/// key (`moves::write_refused`). Reads pass; so does everything on a
/// replica or while loading (the master's word, and nothing left here).
fn writes_a_key_left_behind(
    fctx: *mut raw::RedisModuleCommandFilterCtx,
    argc: c_int,
) -> Option<(Vec<u8>, Vec<u8>)> {
    // SAFETY: plain function pointers of the module API.
    let (Some(get), Some(keys_of), Some(free)) = (
        unsafe { raw::RedisModule_CommandFilterArgGet },
        unsafe { raw::RedisModule_GetCommandKeysWithFlags },
        unsafe { raw::RedisModule_Free },
    ) else {
        return None;
    };
    let ctx = master_now()?;
    // SAFETY: indexes below `argc` are the command's live arguments.
    let mut argv: Vec<*mut raw::RedisModuleString> =
        (0..argc).map(|i| unsafe { get(fctx, i) }).collect();
    let mut n: c_int = 0;
    let mut flags: *mut c_int = std::ptr::null_mut();
    // SAFETY: `argv` holds `argc` live strings; the server allocates the
    // two arrays it returns (or returns null), freed below.
    let positions = unsafe { keys_of(ctx, argv.as_mut_ptr(), argc, &mut n, &mut flags) };
    if positions.is_null() {
        return None;
    }
    let count = usize::try_from(n).unwrap_or(0);
    // SAFETY: the server returned `n` positions and as many flags.
    let (at, fl) = unsafe {
        (
            std::slice::from_raw_parts(positions, count),
            (!flags.is_null()).then(|| std::slice::from_raw_parts(flags, count)),
        )
    };
    const WRITES: u32 = raw::REDISMODULE_CMD_KEY_RW
        | raw::REDISMODULE_CMD_KEY_OW
        | raw::REDISMODULE_CMD_KEY_RM
        | raw::REDISMODULE_CMD_KEY_INSERT
        | raw::REDISMODULE_CMD_KEY_DELETE
        | raw::REDISMODULE_CMD_KEY_UPDATE;
    // Redis 7.0 gives no flags for keys found by a plain range (`DEL`,
    // `GET`…): the command's own category tells then.
    let command_writes = || {
        let name = argv
            .first()
            .map(|&a| RedisString::string_as_slice(a).to_ascii_lowercase());
        WRITE_COMMANDS.with_borrow(|w| name.is_some_and(|n| w.contains(&n)))
    };
    let refused = at.iter().enumerate().find_map(|(i, &pos)| {
        let writes = match fl.and_then(|f| f.get(i)) {
            Some(&f) if f != 0 => (f as u32) & WRITES != 0,
            _ => command_writes(),
        };
        let key = usize::try_from(pos)
            .ok()
            .and_then(|p| argv.get(p))
            .copied()?;
        let key = RedisString::string_as_slice(key);
        writes
            .then(|| super::moves::write_refused(key))
            .flatten()
            .map(|away| (key.to_vec(), away))
    });
    // SAFETY: both arrays came from the server's allocator, freed once.
    unsafe {
        free(positions.cast());
        if !flags.is_null() {
            free(flags.cast());
        }
    }
    refused
}

/// Turns the filtered command into `TAG.TRYAGAIN key away`, whose two keys
/// (the key, here, and the module key that left) make the server itself
/// answer as for any command whose keys a migrating slot has split:
/// `TRYAGAIN`, and in a transaction `EXECABORT` at `EXEC`; or a
/// redirection, if the slot's state has changed.
fn refuse(fctx: *mut raw::RedisModuleCommandFilterCtx, argc: c_int, key: &[u8], away: &[u8]) {
    // SAFETY: plain function pointers of the module API; each new string
    // is handed to the server, which frees it with the command.
    unsafe {
        let (Some(replace), Some(delete), Some(insert), Some(create)) = (
            raw::RedisModule_CommandFilterArgReplace,
            raw::RedisModule_CommandFilterArgDelete,
            raw::RedisModule_CommandFilterArgInsert,
            raw::RedisModule_CreateString,
        ) else {
            return;
        };
        let string = |b: &[u8]| create(std::ptr::null_mut(), b.as_ptr().cast(), b.len());
        for i in (1..argc).rev() {
            delete(fctx, i);
        }
        replace(fctx, 0, string(REFUSAL.as_bytes()));
        insert(fctx, 1, string(key));
        insert(fctx, 2, string(away));
    }
}

pub fn register_filter(ctx: &Context) {
    let writes = keys::call(
        ctx,
        Mode::Local,
        "COMMAND",
        &[b"LIST", b"FILTERBY", b"ACLCAT", b"write"],
    )
    .map(keys::Reply::into_bytes_list)
    .unwrap_or_default();
    WRITE_COMMANDS
        .with_borrow_mut(|w| w.extend(writes.into_iter().map(|n| n.to_ascii_lowercase())));
    // SAFETY: called from the module's init with its context.
    unsafe {
        if let Some(detach) = raw::RedisModule_GetDetachedThreadSafeContext {
            FILTER_CTX.store(detach(ctx.ctx), std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(f) = raw::RedisModule_RegisterCommandFilter {
            f(
                ctx.ctx,
                Some(on_command),
                raw::REDISMODULE_CMDFILTER_NOSELF as c_int,
            );
        }
    }
}

/// Events after which a key no longer holds what it was tagged for.
fn replaces(event: &[u8]) -> bool {
    matches!(event, b"set" | b"restore" | b"copy_to") || event.ends_with(b"store")
}

fn removes(event: &[u8]) -> bool {
    matches!(event, b"del" | b"expired" | b"evicted" | b"move_from")
}

/// Events that change nothing a cache reader sees (a TTL alone, a miss),
/// or that repeat another event of the same change (Redis 8.2 sends
/// `overwritten` and `type_changed` besides the command's own event).
fn is_change(event: &[u8]) -> bool {
    !matches!(
        event,
        b"expire" | b"persist" | b"new" | b"keymiss" | b"loaded" | b"overwritten" | b"type_changed"
    )
}

/// Subscribes to every keyspace event class a change of a key can show up
/// in (not misses, not key creation).
pub fn subscribe_keyspace(ctx: &Context) -> bool {
    // SAFETY: called from init with the module's context; `on_raw_event`
    // matches the notification callback signature.
    unsafe {
        raw::RedisModule_SubscribeToKeyspaceEvents.is_some_and(|f| {
            f(ctx.ctx, raw::REDISMODULE_NOTIFY_ALL, Some(on_raw_event))
                == raw::REDISMODULE_OK as c_int
        })
    }
}

/// Called for every change of every key: kept as thin as the server
/// allows (the event name is compared as bytes, nothing is allocated).
unsafe extern "C" fn on_raw_event(
    ctx: *mut raw::RedisModuleCtx,
    _type: c_int,
    event: *const std::os::raw::c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    if event.is_null() || key.is_null() {
        return raw::REDISMODULE_OK as c_int;
    }
    // SAFETY: Redis passes a NUL-terminated event name and a live key,
    // both valid for the duration of the callback.
    let event = unsafe { std::ffi::CStr::from_ptr(event) }.to_bytes();
    let key = RedisString::string_as_slice(key);
    on_keyspace_event(&Context::new(ctx), event, key);
    raw::REDISMODULE_OK as c_int
}

pub fn on_keyspace_event(ctx: &Context, event: &[u8], key: &[u8]) {
    // The module's own writes of a key (a `TAG.SET`) count too.
    if (replaces(event) || removes(event) || matches!(event, b"rename_from" | b"rename_to"))
        && !MOVING.with(Cell::get)
    {
        super::moves::written(ctx, key);
    }
    // The module mirrors its own writes; a key it opens may expire on the
    // way, and that is not its write.
    if Applying::active() && !matches!(event, b"expired" | b"evicted") {
        return;
    }
    let db = keys::selected_db(ctx);
    let p = config::layout();
    // An atomic migration's import writes keys in any order: they are
    // read once it ends (`moves::arrived`).
    if p.slotted && super::moves::importing(key) {
        return;
    }
    let index = p.index_of(key);
    // Most keys of a busy server are neither tagged nor watched by a rule or
    // a lease: leave them after one lookup.
    if index.is_none()
        && !rules::is_links_key(key)
        && !p.is_stale_hash(key)
        && !matches!(event, b"rename_from" | b"rename_to")
    {
        let quiet = engine::with(|s| {
            !s.index.is_tagged(db, key)
                && !s.stale.contains(db, key)
                && !s.has_rules(db)
                && !s.watching()
                && s.purges.jobs.is_empty()
        });
        if quiet.unwrap_or(true) {
            return;
        }
    }
    let flags = ctx.get_flags();
    if flags.intersects(ContextFlags::LOADING) {
        return;
    }
    let _in = InNotification::begin();
    // A `MIGRATE` or `RESTORE-ASKING` of a key whose slot is not on the
    // move is a client's: it removes or replaces as any command does.
    // (A key that expires or is evicted meanwhile is not moving.)
    let moving = p.slotted
        && MOVING.with(Cell::get)
        && !matches!(event, b"expired" | b"evicted")
        && super::moves::slot_moving(ctx, key);
    if p.slotted && (index.is_some() || p.is_stale_hash(key)) {
        if moving && removes(event) {
            super::moves::left_ahead(key);
        } else if is_change(event) {
            super::moves::back(key);
            super::moves::module_key_here(key);
        }
    }
    if rules::is_links_key(key) && moving && removes(event) {
        // This master's copy of the rules left with its slot: it keeps
        // them, and writes them again in a slot it keeps.
        super::update(|s| s.owed.push_back(engine::Owed::Rehome { db }));
    } else if rules::is_links_key(key) && is_change(event) {
        // A client's plain write, or a copy arriving with a slot (a
        // client's RESTORE-ASKING looks the same): a rule the module does
        // not vouch for acts for nobody, and is written again as such. A
        // replica takes its master's word.
        if flags.intersects(ContextFlags::SLAVE) {
            super::rules::reload_rules(ctx, db, true);
        } else {
            rules::disown_now(ctx, db);
        }
    }
    // An index set moving with its slot changes nothing here: on the node
    // it reaches, the slot is read whole once it is assigned there
    // (`moves::arrived`); on the node it leaves, each of its keys is
    // forgotten as it leaves in turn.
    if let Some((tag, scope)) = index.filter(|_| !moving) {
        tag_set_changed(ctx, db, &p, (tag, scope), key, event);
    }
    // A client wrote a stale hash itself: the master reads it again (a
    // replica keeps no stale state of its own; it reads it when promoted).
    // One moving with its slot is no client's write: the node it leaves
    // keeps the marks of the keys still here (a write that would change one
    // is refused), and the node it reaches reads it with the slot.
    if p.is_stale_hash(key)
        && is_change(event)
        && !moving
        && !super::moves::unread(key)
        && !flags.intersects(ContextFlags::SLAVE)
    {
        rebuild::load_stale_hash(ctx, db, key, None);
    }
    let master = !flags.intersects(ContextFlags::SLAVE);
    if index.is_none() && moving {
        let wakes = engine::with(|s| {
            if removes(event) {
                s.index.forget_key(db, key);
                s.stale.clear(db, key);
                s.key_deleted(db, key)
            } else {
                s.key_written(db, key)
            }
        });
        apply_wakes(ctx, wakes.unwrap_or_default());
        return;
    }
    let in_exec = flags.intersects(ContextFlags::MULTI);
    let wakes =
        engine::with(|s| key_changed(s, db, key, event, master, in_exec)).unwrap_or_default();
    apply_wakes(ctx, wakes);
    if engine::with(|s| s.owes()).unwrap_or(false) {
        // Expiry and eviction run outside any command: nobody reads in
        // between, and the server's own DELs are being queued then.
        if !owed::has_post_jobs() && !matches!(event, b"expired" | b"evicted") {
            owed::settle_untags(ctx);
        }
        owed::settle_later(ctx);
    }
}

/// The key as a cached value: its tags, its lease, the rules it fires.
///
/// On a master the index follows the key at once and the tag sets are owed
/// the change. A replica's index follows its tag sets only: the master's
/// stream brings every change of them (the removals its own upkeep makes
/// included), in order.
fn key_changed(
    s: &mut engine::State,
    db: Db,
    key: &[u8],
    event: &[u8],
    master: bool,
    in_exec: bool,
) -> Vec<Wake> {
    let mut wakes = Vec::new();
    if !in_exec && is_change(event) {
        s.named.written(key);
    }
    let in_exec = in_exec.then(|| s.named.last_multi());
    // A key a client put in a tag set before it existed: its first write
    // creates it, replacing nothing.
    let created = replaces(event) && !s.ghosts.is_empty() && s.ghosts.remove(&(db, key.to_vec()));
    // A sliced purge spares a key written or deleted meanwhile, and
    // follows a renamed one.
    if is_change(event) && !matches!(event, b"rename_from" | b"rename_to") {
        s.purges.touched(db, key);
    }
    // A value deleted, expired, replaced or moved away is fresh: its
    // stale state goes (an in-place change, an EXPIRE, keep it).
    if master
        && (removes(event) || replaces(event) || matches!(event, b"rename_from" | b"rename_to"))
        && s.stale.clear(db, key)
    {
        s.owed.push_back(engine::Owed::Fresh {
            db,
            key: key.to_vec(),
        });
    }
    if event == b"rename_from" {
        s.renaming = Some(key.to_vec());
        wakes.extend(s.key_deleted(db, key));
    } else if event == b"rename_to" {
        let from = s.renaming.take();
        match &from {
            Some(from) => s.purges.renamed(db, from, key),
            None => s.purges.touched(db, key),
        }
        match from {
            Some(from) if master => s.rename_key(db, &from, key, in_exec),
            _ if master => s.untag_key(db, key, in_exec),
            _ => {}
        }
        wakes.extend(s.key_written(db, key));
    } else if removes(event) {
        if master {
            s.untag_key(db, key, in_exec);
        }
        // A lease on a key that exists is a refresh lease (a fill lease
        // ends when the key is written): when the stale key expires, it
        // goes on as the fill lease of the key.
        if event != b"expired" {
            wakes.extend(s.key_deleted(db, key));
        }
    } else if replaces(event) {
        if master && !created {
            s.untag_key(db, key, in_exec);
        }
        wakes.extend(s.key_written(db, key));
    } else if is_change(event) {
        wakes.extend(s.key_written(db, key));
    }
    if master && is_change(event) {
        s.fire_rules(db, key);
    }
    wakes
}

/// The key as a tag set: the index learns its members.
fn tag_set_changed(
    ctx: &Context,
    db: Db,
    p: &Prefix,
    (tag, scope): (&[u8], Scope),
    set: &[u8],
    event: &[u8],
) {
    match event {
        b"sadd" | b"srem" => match engine::with(|s| s.named.take(set)).ok().flatten() {
            Some(named) => {
                // A cluster's set holds the members of its own slot only:
                // others named in it are left alone.
                for m in named.into_iter().filter(|m| scope.holds(m)) {
                    let member = p
                        .sets_holding(tag, &m)
                        .iter()
                        .any(|s| keys::call2(ctx, Mode::Local, c"SISMEMBER", s, &m) == Ok(1));
                    let ghost = member && !keys::exists(ctx, &m);
                    super::update(|s| {
                        if member {
                            s.index.add(db, &m, tag);
                            if ghost {
                                if s.ghosts.len() > GHOSTS_MAX {
                                    s.ghosts.clear();
                                }
                                s.ghosts.insert((db, m.clone()));
                            }
                        } else {
                            s.index.remove(db, &m, tag);
                        }
                    });
                }
            }
            None => drop(reconcile(ctx, db, p, tag, scope)),
        },
        e if (removes(e) || e == b"rename_from") && scope == Scope::All => {
            let evicted = e == b"evicted";
            super::update(|s| {
                let keys = s.index.drop_tag(db, tag);
                if evicted && !keys.is_empty() {
                    s.owed.push_back(engine::Owed::Orphans { db, keys });
                }
            });
        }
        e if removes(e) || e == b"rename_from" => {
            // Another set of the slot may still hold some of its members.
            let keys = reconcile(ctx, db, p, tag, scope);
            if e == b"evicted" && !keys.is_empty() {
                super::update(|s| s.owed.push_back(engine::Owed::Orphans { db, keys }));
            }
        }
        e if is_change(e) => drop(reconcile(ctx, db, p, tag, scope)),
        _ => {}
    }
}

/// Reads the sets of `tag` within `scope` again (one was rewritten
/// wholesale: a `*STORE`, a rename or copy into the index, a restore; or,
/// in a cluster, one of two sets of a slot went). Returns the keys that no
/// longer carry the tag.
fn reconcile(ctx: &Context, db: Db, p: &Prefix, tag: &[u8], scope: Scope) -> Vec<Vec<u8>> {
    let mut members = Vec::new();
    for set in p.scope_sets(tag, scope) {
        if keys::key_type(ctx, &set) == KeyType::Set {
            members.extend(keys::smembers(ctx, &set).unwrap_or_default());
        }
    }
    engine::with(|s| s.index.set_members_in(db, tag, scope, &members)).unwrap_or_default()
}

fn apply_wakes(ctx: &Context, wakes: Vec<Wake>) {
    if !wakes.is_empty() {
        super::blocked::wake(ctx, wakes);
    }
}

/// How many client commands have arrived so far (a sliced purge yields
/// more of the server while other clients are active).
pub fn commands_seen() -> u64 {
    COMMANDS_SEEN.with(Cell::get)
}

thread_local! {
    static COMMANDS_SEEN: Cell<u64> = const { Cell::new(0) };
    /// The command running moves keys between cluster nodes (`MIGRATE` on
    /// the node they leave, `RESTORE-ASKING` on the one they reach): their
    /// index sets move with them, so the keys keep their tags.
    static MOVING: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C" fn on_event_loop(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut std::ffi::c_void,
) {
    if sub != raw::REDISMODULE_SUBEVENT_EVENTLOOP_BEFORE_SLEEP {
        return;
    }
    // No command runs now: an expiry or eviction is not a migration.
    MOVING.with(|m| m.set(false));
    if config::slotted() {
        super::moves::after_setslot(&Context::new(ctx));
    }
    if engine::with(|s| s.owes()).unwrap_or(false) {
        owed::settle(&Context::new(ctx));
    }
    // Notes of commands that have run, once nothing is owed, count no more.
    super::update(|s| {
        if !s.owes() && !s.named.is_empty() {
            s.named.settled();
        }
    });
    super::blocked::release_woken();
    super::purge::before_sleep(&Context::new(ctx));
}

fn subscribe(ctx: &Context, id: u64, cb: raw::RedisModuleEventCallback) -> bool {
    let event = raw::RedisModuleEvent { id, dataver: 1 };
    // SAFETY: called from init with the module's context; `cb` matches the
    // server-event callback signature.
    unsafe {
        raw::RedisModule_SubscribeToServerEvent
            .is_some_and(|f| f(ctx.ctx, event, cb) == raw::REDISMODULE_OK as i32)
    }
}

fn dataset_replaced(ctx: &Context) {
    super::moves::clear_ahead();
    super::moves::clear_written();
    let wakes = engine::with(|s| s.dataset_replaced()).unwrap_or_default();
    apply_wakes(ctx, wakes);
}

unsafe extern "C" fn on_flush(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    sub: u64,
    data: *mut std::ffi::c_void,
) {
    if sub != raw::REDISMODULE_SUBEVENT_FLUSHDB_START || data.is_null() {
        return;
    }
    // SAFETY: for FLUSHDB events Redis passes a RedisModuleFlushInfo.
    let info = unsafe { &*(data as *const raw::RedisModuleFlushInfo) };
    let db = (info.dbnum >= 0).then_some(info.dbnum);
    super::update(|s| s.flush(db));
    dataset_replaced(&Context::new(ctx));
}

unsafe extern "C" fn on_swapdb(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    _sub: u64,
    data: *mut std::ffi::c_void,
) {
    if data.is_null() {
        return;
    }
    // SAFETY: for SWAPDB events Redis passes a RedisModuleSwapDbInfo.
    let info = unsafe { &*(data as *const raw::RedisModuleSwapDbInfo) };
    super::update(|s| s.swap(info.dbnum_first, info.dbnum_second));
    dataset_replaced(&Context::new(ctx));
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
            rebuild::rebuild(&ctx)
        }
        _ => {
            super::update(|s| s.flush(None));
            dataset_replaced(&ctx);
        }
    }
}

/// A replica loading with `repl-diskless-load swapdb` keeps serving the old
/// dataset (and its index) until the new one is swapped in.
unsafe extern "C" fn on_async_load(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut std::ffi::c_void,
) {
    if sub == raw::REDISMODULE_SUBEVENT_REPL_ASYNC_LOAD_COMPLETED {
        let ctx = Context::new(ctx);
        dataset_replaced(&ctx);
        rebuild::rebuild(&ctx);
    }
}

/// A replica promoted to master takes over the upkeep of stale state.
unsafe extern "C" fn on_role_changed(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut std::ffi::c_void,
) {
    super::moves::clear_ahead();
    // A master turned replica is importing nothing any more.
    super::moves::forget_myself();
    if sub == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_MASTER {
        rebuild::load_all_stale(&Context::new(ctx));
    }
}

pub fn subscribe_server_events(ctx: &Context) -> Result<(), String> {
    let ok = subscribe(ctx, raw::REDISMODULE_EVENT_FLUSHDB, Some(on_flush))
        && subscribe(ctx, raw::REDISMODULE_EVENT_SWAPDB, Some(on_swapdb))
        && subscribe(ctx, raw::REDISMODULE_EVENT_LOADING, Some(on_loading))
        && subscribe(ctx, raw::REDISMODULE_EVENT_EVENTLOOP, Some(on_event_loop))
        && subscribe(
            ctx,
            raw::REDISMODULE_EVENT_REPL_ASYNC_LOAD,
            Some(on_async_load),
        )
        && subscribe(
            ctx,
            raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
            Some(on_role_changed),
        );
    if !ok {
        return Err("could not subscribe to server events".into());
    }
    let options =
        raw::REDISMODULE_OPTIONS_HANDLE_REPL_ASYNC_LOAD as c_int | super::moves::subscribe(ctx);
    // SAFETY: called from init with the module's context; the options are
    // given all at once (each call replaces the last).
    unsafe {
        if let Some(f) = raw::RedisModule_SetModuleOptions {
            f(ctx.ctx, options);
        }
    }
    Ok(())
}
