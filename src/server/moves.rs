//! Slots that move, as each server signals it, fed into one path
//! (`engine::moves`): `arrived` rebuilds what the module keeps for a set
//! of slots from their data, `left` forgets it.
//!
//! The signals: Valkey 9.0+'s atomic slot migration event (the module
//! declares that it handles it, without which the server refuses `CLUSTER
//! MIGRATESLOTS`); Redis 8.4+'s slot migration and trim events (looked up
//! at run time: subscribing fails on older servers); and `CLUSTER SETSLOT
//! … NODE`, which ends a resharding by `MIGRATE`/`RESTORE-ASKING`. While a
//! resharding by `MIGRATE` runs, the commands that move keys are told
//! from a client's own `MIGRATE` or `RESTORE-ASKING` by the slot's state
//! (`[slot->-node]`, `[slot-<-node]` in `CLUSTER NODES`): only keys of a
//! slot on the move keep their tags without their index sets.

use super::keys::{self, Mode, Reply};
use super::{config, rebuild, rules};
use crate::engine::index::Db;
use crate::engine::moves::{self, Myself, Signal, SlotSet, Then};
use crate::engine::{self, Owed};
use redis_module::{raw, Context, KeyType};
use std::cell::RefCell;
use std::os::raw::{c_char, c_int};

/// `VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION`.
const HANDLE_ATOMIC_SLOT_MIGRATION: c_int = 1 << 5;

/// A cluster has one database.
const DB: Db = 0;

thread_local! {
    /// This node's line of `CLUSTER NODES` and when it was read: again
    /// after a command that changes slots here, or 100 ms later (what the
    /// cluster bus changes). Generating and reading it costs more than a
    /// `MIGRATE` of ten keys, so not every turn of a resharding.
    static MYSELF: RefCell<Option<(Myself, std::time::Instant)>> = const { RefCell::new(None) };
    /// Slots given to this node by `CLUSTER SETSLOT … NODE` commands, acted
    /// on once the slot is served here, and until when they may still run
    /// (Valkey holds the command until its replicas have it).
    static SETSLOT: RefCell<Vec<(u16, std::time::Instant)>> = const { RefCell::new(Vec::new()) };
    /// The module's own keys of a slot leaving by `MIGRATE` (index sets,
    /// stale hashes) that have left ahead of the keys they name, by slot:
    /// while the slot is still migrating here, a write that would change
    /// what one of them says is refused (`write_refused`).
    static AHEAD: RefCell<std::collections::HashMap<u16, std::collections::HashSet<Vec<u8>>>> =
        RefCell::new(std::collections::HashMap::new());
    /// `CLUSTER SETSLOT` commands seen and not yet seen to have run (the
    /// state they ask for is not on this node's line yet), and until when
    /// they may still run: Valkey holds one until its replicas have it, and
    /// runs it in a later turn without passing the command filter again.
    /// While any is pending, a copy of the line is used only in the turn it
    /// was read in, and only if no `SETSLOT` came since, so that a copy
    /// read before the command ran is never used after; and it is read
    /// again `SETTLE` after the last read, if nothing needed it sooner.
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// When the line was last read, the `SETSLOT`s seen by then, and the
    /// turn of the event loop it was read in.
    static READ: std::cell::Cell<Option<(std::time::Instant, u64, u64)>> = const { std::cell::Cell::new(None) };
    /// `CLUSTER SETSLOT` commands seen, and turns of the event loop ended.
    static SEEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static TURN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Whether a timer will read the line `SETTLE` after the last read.
    static SETTLE_ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Slots whose keys arrived by an atomic import and are not read yet:
    /// read a few at a time from a timer, so that a large import does not
    /// hold the server once it ends; and at once where something needs
    /// them (`read_arrived_now`, `learn`).
    static TO_READ: RefCell<SlotSet> = RefCell::new(SlotSet::default());
    static TO_READ_ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether the server may hold a `CLUSTER SETSLOT` and run it in a later
    /// turn without passing the filter again (Valkey, for its replicas).
    static MAY_HOLD_SETSLOT: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    /// Whether a slot was served here as a stable slot when last asked
    /// (`served_here`), with the `SETSLOT`s seen then, the turn and when.
    static SERVED: RefCell<std::collections::HashMap<u16, (bool, u64, u64, std::time::Instant)>> =
        RefCell::new(std::collections::HashMap::new());
    /// What has happened here to slots arriving by `MIGRATE` whose data is
    /// not read yet (`Arrival`), by slot. Kept until the slot is read, its
    /// import is given up, or a new one starts.
    static ARRIVALS: RefCell<std::collections::HashMap<u16, Arrival>> =
        RefCell::new(std::collections::HashMap::new());
    /// The slots this node's line showed importing (arriving by
    /// `MIGRATE`) when last read. Asked from keyspace notifications, where
    /// no command may be called (on Redis 7.0 a call there drops the DELs
    /// queued for keys expiring at that moment), so kept beside the line.
    static ARRIVING: RefCell<SlotSet> = RefCell::new(SlotSet::default());
    /// Whether `ARRIVING` or `SETSLOT` names any slot: every write of every
    /// key asks it.
    static ANY_ARRIVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether the line was read since slots last changed here: if not,
    /// it is read before the server sleeps.
    static KNOWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A `CLUSTER SETSLOT` seen by the command filter.
struct Pending {
    slot: u16,
    asked: moves::Asked,
    /// When it was seen, and until when it may still run.
    at: std::time::Instant,
    until: std::time::Instant,
}

/// A slot arriving here by `MIGRATE`, before its data is read.
#[derive(Default)]
struct Arrival {
    /// Keys replaced or removed here (by a client with `ASKING`, or in the
    /// turn the slot's `SETSLOT … NODE` ran): the index holds what such a
    /// key carries since; the index sets and stale hash that came from the
    /// node it left say what it carried before. As large as the names
    /// written meanwhile.
    written: std::collections::HashSet<Vec<u8>>,
    /// The slot's index sets and stale hash that are here: a module
    /// command on one of its keys reads those for that key (`learn`).
    module_keys: std::collections::HashSet<Vec<u8>>,
}

/// Which server runs the module, by `INFO server`: Valkey names itself.
fn valkey_major(ctx: &Context) -> Option<u32> {
    let Ok(Reply::Bytes(info)) = keys::call(ctx, Mode::Local, "INFO", &[b"server"]) else {
        return None;
    };
    let text = String::from_utf8_lossy(&info);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("valkey_version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

/// Subscribes to the slot migration events of the server that runs the
/// module; returns the module options it must declare with them.
pub fn subscribe(ctx: &Context) -> c_int {
    let sub = |id: u64, cb: raw::RedisModuleEventCallback| {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        // SAFETY: called from init with the module's context; the callback
        // matches the server-event callback signature. A server that does
        // not know the event answers an error.
        unsafe {
            raw::RedisModule_SubscribeToServerEvent
                .is_some_and(|f| f(ctx.ctx, event, cb) == raw::REDISMODULE_OK as i32)
        }
    };
    let valkey = valkey_major(ctx);
    MAY_HOLD_SETSLOT.set(valkey.is_some());
    match valkey {
        Some(major) if major >= 9 && sub(moves::VALKEY_EVENT, Some(on_valkey)) => {
            HANDLE_ATOMIC_SLOT_MIGRATION
        }
        Some(_) => 0,
        None => {
            // Redis before 8.4 has neither event: nothing to do there.
            sub(moves::REDIS_EVENT, Some(on_redis));
            sub(moves::REDIS_TRIM_EVENT, Some(on_redis));
            0
        }
    }
}

#[repr(C)]
struct ValkeyRange {
    start: c_int,
    end: c_int,
}

/// `ValkeyModuleAtomicSlotMigrationInfoV1`.
#[repr(C)]
struct ValkeyInfo {
    version: u64,
    job_name: [c_char; 41],
    slot_ranges: *const ValkeyRange,
    num_slot_ranges: u32,
}

#[repr(C)]
struct RedisRange {
    start: u16,
    end: u16,
}

/// `RedisModuleSlotRangeArray`: a count, then the ranges.
#[repr(C)]
struct RedisRanges {
    num_ranges: i32,
    ranges: [RedisRange; 0],
}

/// `RedisModuleClusterSlotMigrationInfoV1`.
#[repr(C)]
struct RedisInfo {
    version: u64,
    source: [c_char; 41],
    destination: [c_char; 41],
    task_id: *const c_char,
    slots: *const RedisRanges,
}

/// `RedisModuleClusterSlotMigrationTrimInfoV1`.
#[repr(C)]
struct RedisTrimInfo {
    version: u64,
    slots: *const RedisRanges,
}

unsafe extern "C" fn on_valkey(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    sub: u64,
    data: *mut std::ffi::c_void,
) {
    let (Some(signal), false) = (moves::valkey_signal(sub), data.is_null()) else {
        return;
    };
    // SAFETY: for this event Valkey passes its migration info, whose
    // ranges array holds `num_slot_ranges` entries, alive for the call.
    let slots = unsafe {
        let info = &*(data as *const ValkeyInfo);
        let mut slots = SlotSet::default();
        if !info.slot_ranges.is_null() && info.num_slot_ranges as usize <= moves::SLOTS {
            let ranges =
                std::slice::from_raw_parts(info.slot_ranges, info.num_slot_ranges as usize);
            for r in ranges {
                slots.add_range(i64::from(r.start), i64::from(r.end));
            }
        }
        slots
    };
    signal_now(&Context::new(ctx), signal, &slots);
}

unsafe extern "C" fn on_redis(
    ctx: *mut raw::RedisModuleCtx,
    eid: raw::RedisModuleEvent,
    sub: u64,
    data: *mut std::ffi::c_void,
) {
    let (Some(signal), false) = (moves::redis_signal(eid.id, sub), data.is_null()) else {
        return;
    };
    // SAFETY: for these events Redis passes its migration (or trim) info,
    // whose range array holds `num_ranges` entries, alive for the call.
    let slots = unsafe {
        let ranges = match eid.id {
            moves::REDIS_EVENT => (*(data as *const RedisInfo)).slots,
            _ => (*(data as *const RedisTrimInfo)).slots,
        };
        let mut slots = SlotSet::default();
        if !ranges.is_null() {
            let n = usize::try_from((*ranges).num_ranges).unwrap_or(0);
            if n <= moves::SLOTS {
                let first = std::ptr::addr_of!((*ranges).ranges).cast::<RedisRange>();
                for r in std::slice::from_raw_parts(first, n) {
                    slots.add_range(i64::from(r.start), i64::from(r.end));
                }
            }
        }
        slots
    };
    signal_now(&Context::new(ctx), signal, &slots);
}

/// The one path: what a signal means for the module's state.
pub fn signal_now(ctx: &Context, signal: Signal, slots: &SlotSet) {
    let then = engine::with(|s| s.moves.on(signal, slots)).unwrap_or(Then::Nothing);
    match then {
        Then::Nothing => {}
        Then::Arrived(slots) if signal == Signal::ImportCompleted => {
            // An import's stream may have run module commands that wrote
            // the index directly (`TAG.APPLY`) while later plain writes of
            // it went unread: the slots are read from nothing. (A `MIGRATE`
            // resharding's keys arrive by `RESTORE-ASKING` alone, and a
            // client writing there with `ASKING` is a client: nothing to
            // forget.)
            super::update(|s| {
                s.index.forget_slots(DB, &slots);
                s.stale.replace_where(DB, |k| slots.holds(k), Vec::new());
            });
            TO_READ.with_borrow_mut(|t| {
                for slot in slots.iter() {
                    t.add(slot);
                }
            });
            arriving_changed();
            arm_reads(ctx);
        }
        Then::Arrived(slots) => arrived(ctx, &slots),
        Then::Left(slots) => left(ctx, &slots),
    }
    // A server's signal changed this node's slots; `Assigned` came from a
    // line just read, which reading the slots does not change.
    if signal != Signal::Assigned {
        forget_myself();
    }
}

fn arm_reads(ctx: &Context) {
    if !TO_READ_ARMED.replace(true) {
        ctx.create_timer(std::time::Duration::ZERO, on_read_some, ());
    }
}

/// How long one turn of the event loop reads arrived slots (at least one).
const READ_SLICE: std::time::Duration = std::time::Duration::from_millis(1);

fn on_read_some(ctx: &Context, (): ()) {
    TO_READ_ARMED.set(false);
    let start = std::time::Instant::now();
    while let Some(slot) = TO_READ.with_borrow(|t| t.iter().next()) {
        read_slot_now(ctx, slot);
        if start.elapsed() >= READ_SLICE {
            break;
        }
    }
    if !TO_READ.with_borrow(SlotSet::is_empty) {
        arm_reads(ctx);
    }
}

/// Reads one slot that arrived by an atomic import, if it is not read yet.
fn read_slot_now(ctx: &Context, slot: u16) {
    let waiting = TO_READ.with_borrow_mut(|t| {
        let waiting = t.contains(slot);
        t.remove(slot);
        waiting
    });
    if waiting {
        arriving_changed();
        let mut one = SlotSet::default();
        one.add(slot);
        arrived(ctx, &one);
    }
}

/// Reads every slot that arrived by an atomic import and is not read yet:
/// before a purge, an invalidation or a count of a tag's keys, which must
/// see all of them.
pub fn read_arrived_now(ctx: &Context) {
    if TO_READ.with_borrow(SlotSet::is_empty) {
        return;
    }
    let slots = TO_READ.with_borrow_mut(std::mem::take);
    arriving_changed();
    arrived(ctx, &slots);
}

/// Forgets what the module keeps for `slots`: their keys left this node.
/// This master's rules, if they lived in one of them, are written again in
/// a slot it keeps.
fn left(ctx: &Context, slots: &SlotSet) {
    TO_READ.with_borrow_mut(|t| {
        for slot in slots.iter() {
            t.remove(slot);
        }
    });
    let home = keys::selected_db(ctx);
    keys::select_db(ctx, DB);
    let master = keys::may_write(ctx);
    let rules_left = master
        && rules::links_key(ctx)
            .map(|k| slots.holds(&k))
            .unwrap_or(false);
    super::update(|s| {
        s.index.forget_slots(DB, slots);
        s.stale.replace_where(DB, |k| slots.holds(k), Vec::new());
        if rules_left {
            s.owed.push_back(Owed::Rehome { db: DB });
        }
    });
    keys::select_db(ctx, home);
    if engine::with(|s| s.owes()).unwrap_or(false) {
        super::owed::settle_later(ctx);
    }
}

/// Rebuilds what the module keeps for `slots` from the data there now:
/// the members of their index sets (a member that is no key is owed its
/// removal on a master, as after a load), their stale hashes, and rules
/// that came with them (another master's copy acts for nobody here).
///
/// A key written here before its slot was read (`written`) keeps what the
/// index holds for it: what arrived says what it carried before.
fn arrived(ctx: &Context, slots: &SlotSet) {
    let p = config::layout();
    let home = keys::selected_db(ctx);
    keys::select_db(ctx, DB);
    let master = keys::may_write(ctx);
    for slot in slots.iter() {
        let rewritten = ARRIVALS
            .with_borrow_mut(|a| a.remove(&slot))
            .map(|a| a.written)
            .unwrap_or_default();
        let stale: Vec<(Vec<u8>, bool)> = engine::with(|s| {
            rewritten
                .iter()
                .map(|k| (k.clone(), s.stale.contains(DB, k)))
                .collect()
        })
        .unwrap_or_default();
        let here = keys_in_slot(ctx, slot);
        // A member of a set of the slot is a key of the slot: one listed
        // here exists (one past its expiry goes when the server deletes it).
        let names: rebuild::Names = here.iter().collect();
        for key in here.iter() {
            if p.index_of(key).is_some() {
                if keys::key_type(ctx, key) == KeyType::Set {
                    rebuild::read_index_set(ctx, DB, key, master, &rewritten, Some(&names));
                }
            } else if p.is_stale_hash(key) {
                rebuild::load_stale_hash(ctx, DB, key, master.then_some(&names));
            } else if rules::is_links_key(key) {
                if master {
                    rules::disown_now(ctx, DB);
                } else {
                    rules::reload_rules(ctx, DB, true);
                }
            }
        }
        super::update(|s| {
            for (key, was) in stale {
                if was {
                    s.stale.mark(DB, &key);
                } else if s.stale.clear(DB, &key) && master {
                    s.owed.push_back(Owed::Fresh { db: DB, key });
                }
            }
        });
    }
    keys::select_db(ctx, home);
    if engine::with(|s| s.owes()).unwrap_or(false) {
        super::owed::settle_later(ctx);
    }
}

/// How many keys of `slot` are here, if the server says.
fn count_in_slot(ctx: &Context, slot: u16) -> Option<i64> {
    let s = slot.to_string();
    keys::call(
        ctx,
        Mode::Local,
        "CLUSTER",
        &[b"COUNTKEYSINSLOT", s.as_bytes()],
    )
    .map(|r| r.int())
    .ok()
}

/// Every key of `slot` here.
fn keys_in_slot(ctx: &Context, slot: u16) -> keys::Packed {
    let s = slot.to_string();
    let n = count_in_slot(ctx, slot).unwrap_or(0);
    if n <= 0 {
        return keys::Packed::default();
    }
    let n = n.to_string();
    keys::call_packed(
        ctx,
        Mode::Local,
        "CLUSTER",
        &[b"GETKEYSINSLOT", s.as_bytes(), n.as_bytes()],
    )
    .unwrap_or_default()
}

/// Whether writes to `key` now are an atomic migration's import (left
/// alone until it ends).
pub fn importing(key: &[u8]) -> bool {
    engine::with(|s| s.moves.importing(key)).unwrap_or(false)
}

/// This node's slots, read once per turn of the event loop.
fn with_myself<T>(ctx: &Context, f: impl FnOnce(&Myself) -> T) -> Option<T> {
    let usable = |at: &std::time::Instant| {
        if PENDING.with_borrow(Vec::is_empty) {
            return at.elapsed() <= MYSELF_FOR;
        }
        READ.get()
            .is_some_and(|(_, seen, turn)| seen == SEEN.get() && turn == TURN.get())
    };
    MYSELF.with(|m| {
        let mut m = m.borrow_mut();
        if m.as_ref().is_none_or(|(_, at)| !usable(at)) {
            *m = match keys::call(ctx, Mode::Local, "CLUSTER", &[b"NODES"]) {
                Ok(Reply::Bytes(text)) => {
                    Myself::parse(&text).map(|me| (me, std::time::Instant::now()))
                }
                _ => None,
            };
            if let Some((me, at)) = m.as_ref() {
                READ.set(Some((*at, SEEN.get(), TURN.get())));
                line_read(me);
            }
        }
        m.as_ref().map(|(me, _)| f(me))
    })
}

/// This node's line was just read: the slots arriving here are those it
/// shows importing, and the keys written in slots that no longer arrive
/// (their import ended without a `SETSLOT … NODE` here, or was given up)
/// are done with.
fn line_read(me: &Myself) {
    KNOWN.set(true);
    // The `SETSLOT`s that ran are done with; the module keys that left
    // ahead in a slot no longer migrating are forgotten (one that failed
    // changed nothing, and keeps them).
    let now = std::time::Instant::now();
    PENDING.with_borrow_mut(|q| q.retain(|p| now < p.until && !me.shows(p.slot, p.asked)));
    AHEAD.with_borrow_mut(|a| a.retain(|&s, _| me.migrating.contains(s)));
    let before = ARRIVING.replace(me.importing.clone());
    // A slot asked to import that the line does not show yet still counts.
    let asked: Vec<u16> = PENDING.with_borrow(|q| {
        q.iter()
            .filter(|p| p.asked == moves::Asked::Importing)
            .map(|p| p.slot)
            .collect()
    });
    ARRIVING.with_borrow_mut(|a| asked.iter().for_each(|&slot| a.add(slot)));
    // An import given up (`SETSLOT … STABLE`, or `NODE` another): what the
    // module learned of its keys here goes with it (they are in no slot of
    // this node's; if the slot is given here later, it is read whole).
    let mut given_up = SlotSet::default();
    for slot in before.iter() {
        if !me.importing.contains(slot)
            && !me.owned.contains(slot)
            && !queued(slot)
            && !asked.contains(&slot)
        {
            given_up.add(slot);
        }
    }
    if !given_up.is_empty() {
        super::update(|s| {
            s.index.forget_slots(DB, &given_up);
            s.stale.replace_where(DB, |k| given_up.holds(k), Vec::new());
        });
    }
    if !ARRIVALS.with_borrow(std::collections::HashMap::is_empty) {
        ARRIVALS.with_borrow_mut(|a| a.retain(|&s, _| unread_slot(s)));
    }
    arriving_changed();
}

/// Whether a `SETSLOT … NODE` of `slot` waits to be acted on.
fn queued(slot: u16) -> bool {
    SETSLOT.with_borrow(|q| q.iter().any(|&(s, _)| s == slot))
}

/// Whether a `SETSLOT … IMPORTING` of `slot` has not been seen to run yet:
/// the slot counts as arriving until a read of the line says.
fn importing_asked(slot: u16) -> bool {
    PENDING.with_borrow(|q| {
        q.iter()
            .any(|p| p.slot == slot && p.asked == moves::Asked::Importing)
    })
}

fn arriving_changed() {
    let asked = PENDING.with_borrow(|q| q.iter().any(|p| p.asked == moves::Asked::Importing));
    let any = asked
        || ARRIVING.with_borrow(|a| !a.is_empty())
        || SETSLOT.with_borrow(|q| !q.is_empty())
        || TO_READ.with_borrow(|t| !t.is_empty());
    ANY_ARRIVING.set(any);
}

fn unread_slot(slot: u16) -> bool {
    ARRIVING.with_borrow(|a| a.contains(slot))
        || queued(slot)
        || importing_asked(slot)
        || TO_READ.with_borrow(|t| t.contains(slot))
}

/// Whether the slot of `key` is arriving here by `MIGRATE` and its data is
/// not read yet (importing when the line was last read, or its `SETSLOT …
/// NODE` not acted on): the index holds only what was written here for its
/// keys. Makes no call.
pub fn unread(key: &[u8]) -> bool {
    ANY_ARRIVING.get() && unread_slot(crate::engine::slot::slot(key))
}

/// A key was replaced or removed here (not moved here by a resharding).
/// If its slot is arriving and not read yet, this write is the key's last
/// word once it is (`arrived`). Makes no call. (A write replayed from the
/// AOF is not recorded: what is recorded lives in memory, and a restart
/// forgets it.)
pub fn written(ctx: &Context, key: &[u8]) {
    if !unread(key)
        || !config::slotted()
        || importing(key)
        || ctx
            .get_flags()
            .intersects(redis_module::ContextFlags::LOADING)
    {
        return;
    }
    let p = config::layout();
    if p.index_of(key).is_some() || p.is_stale_hash(key) || rules::is_links_key(key) {
        return;
    }
    let slot = crate::engine::slot::slot(key);
    ARRIVALS.with_borrow_mut(|a| a.entry(slot).or_default().written.insert(key.to_vec()));
}

/// A module key (index set or stale hash) of a slot arriving here by
/// `MIGRATE`, before the slot is read, is here now.
pub fn module_key_here(key: &[u8]) {
    if !unread(key) {
        return;
    }
    let slot = crate::engine::slot::slot(key);
    ARRIVALS.with_borrow_mut(|a| a.entry(slot).or_default().module_keys.insert(key.to_vec()));
}

/// Before a module command reads or changes what `key` carries: if its
/// slot is arriving here and not read yet, what has arrived of the slot's
/// index sets and stale hash is read for `key` alone, so that the command
/// sees the tags and stale mark it has here (a key rewritten here since
/// has the index's word already). Sets that arrive later are read with the
/// slot.
pub fn learn(ctx: &Context, key: &[u8]) {
    if !unread(key) || !config::slotted() {
        return;
    }
    let slot = crate::engine::slot::slot(key);
    // An atomic import's slot is all here: read whole (a replica too).
    if TO_READ.with_borrow(|t| t.contains(slot)) {
        read_slot_now(ctx, slot);
        return;
    }
    if !keys::may_write(ctx) {
        return;
    }
    let Some(module_keys) = ARRIVALS.with_borrow(|a| {
        let arrival = a.get(&slot)?;
        (!arrival.written.contains(key)).then(|| arrival.module_keys.clone())
    }) else {
        return;
    };
    if module_keys.is_empty() || !keys::exists(ctx, key) {
        return;
    }
    let p = config::layout();
    let hash = p.stale_hash(key);
    let (mut tags, mut stale) = (Vec::new(), false);
    for k in &module_keys {
        if let Some((tag, _)) = p.index_of(k) {
            if keys::call2(ctx, Mode::Local, c"SISMEMBER", k, key) == Ok(1) {
                tags.push(tag.to_vec());
            }
        } else if *k == hash {
            stale = keys::call2(ctx, Mode::Local, c"HEXISTS", k, key) == Ok(1);
        }
    }
    super::update(|s| {
        for tag in &tags {
            s.index.add(DB, key, tag);
        }
        if stale {
            s.stale.mark(DB, key);
        }
    });
}

/// Forgets the keys written in slots arriving here, and the slots not read
/// yet (the dataset was flushed or replaced).
pub fn clear_written() {
    ARRIVALS.with_borrow_mut(std::collections::HashMap::clear);
    TO_READ.with_borrow_mut(|t| *t = SlotSet::default());
    arriving_changed();
}

/// Whether the slot of `key` is on the move by `MIGRATE` here (leaving or
/// arriving): a `MIGRATE` or `RESTORE-ASKING` of it is a resharding's.
pub fn slot_moving(ctx: &Context, key: &[u8]) -> bool {
    let slot = crate::engine::slot::slot(key);
    // An atomic import's slot is not served here until it ends, and is
    // not on the move by `MIGRATE`.
    if importing(key) {
        return false;
    }
    // A master serves a key of a slot it owns, is not migrating and is not
    // importing; a command that moves keys runs on a slot it owns or
    // imports: the two tell apart which.
    if keys::may_write(ctx) {
        if let Some(served) = served_here(slot, false) {
            return !served;
        }
    }
    with_myself(ctx, |me| {
        me.migrating.contains(slot) || me.importing.contains(slot)
    })
    .unwrap_or(false)
}

/// Whether `slot` is this node's and stable (neither migrating nor
/// importing): a call on a key of it that does not exist is answered here
/// only then; the server sends it elsewhere (`MOVED`, `ASK`) when the slot
/// is importing, migrating, or another node's. Asked through the module's
/// own context, since a client's `ASKING` would let an importing slot
/// answer; kept until a `SETSLOT` is seen here, or 100 ms. Far cheaper
/// than a `CLUSTER NODES`, which Valkey makes by looking up every slot:
/// a resharding asks once a slot, not once a turn. `None` where it cannot
/// tell (no context, or the name asked about exists).
fn served_here(slot: u16, fresh: bool) -> Option<bool> {
    let now = std::time::Instant::now();
    if !fresh {
        // As the line: while a `SETSLOT` may still run, only in the turn
        // asked in (Valkey runs a held one without passing the filter).
        let known = SERVED.with_borrow(|c| c.get(&slot).copied());
        let pending = MAY_HOLD_SETSLOT.get() && !PENDING.with_borrow(Vec::is_empty);
        if let Some((served, seen, turn, at)) = known {
            let usable = seen == SEEN.get()
                && if pending {
                    turn == TURN.get()
                } else {
                    now.saturating_duration_since(at) <= MYSELF_FOR
                };
            if usable {
                return Some(served);
            }
        }
    }
    let ctx = Context::new(super::notify::own_ctx()?);
    // A name of the slot no key has: the index set of the empty tag.
    let mut name = crate::engine::plan::SLOT_INDEX.to_vec();
    name.push(b'{');
    name.extend_from_slice(crate::engine::slot::name_in(slot));
    name.push(b'}');
    let served = match keys::call(&ctx, Mode::Local, "EXISTS", &[&name]) {
        Ok(Reply::Int(0)) => true,
        Ok(_) => return None,
        Err(_) => false,
    };
    SERVED.with_borrow_mut(|c| {
        if c.len() >= moves::SLOTS {
            c.clear();
        }
        c.insert(slot, (served, SEEN.get(), TURN.get(), now));
    });
    Some(served)
}

/// Whether slots of this node are moving, by either kind of migration.
pub fn any_moving(ctx: &Context) -> bool {
    engine::with(|s| s.moves.active()).unwrap_or(false)
        || SETSLOT.with_borrow(|q| !q.is_empty())
        || with_myself(ctx, Myself::moving).unwrap_or(false)
}

const MYSELF_FOR: std::time::Duration = std::time::Duration::from_millis(100);

/// A command that changes this node's slots ran (or a slot signal came):
/// the node's line is read again when next needed.
pub fn forget_myself() {
    MYSELF.with(|m| m.borrow_mut().take());
    KNOWN.set(false);
}

/// A module key (index set or stale hash) of a slot leaving by `MIGRATE`
/// has just left this node.
pub fn left_ahead(key: &[u8]) {
    let slot = crate::engine::slot::slot(key);
    AHEAD.with_borrow_mut(|a| a.entry(slot).or_default().insert(key.to_vec()));
}

/// A module key was written here again (it is here, whatever its slot).
pub fn back(key: &[u8]) {
    AHEAD.with_borrow_mut(|a| {
        if a.is_empty() {
            return;
        }
        let slot = crate::engine::slot::slot(key);
        if let Some(keys) = a.get_mut(&slot) {
            keys.remove(key);
            if keys.is_empty() {
                a.remove(&slot);
            }
        }
    });
}

/// Forgets every module key that left ahead (the dataset was flushed or
/// replaced, or this node's role changed: a replica refuses nothing).
pub fn clear_ahead() {
    AHEAD.with_borrow_mut(std::collections::HashMap::clear);
}

/// `CLUSTER SETSLOT <slot> <state> … [TIMEOUT <ms>]` is about to run (seen
/// by the command filter). It is pending for as long as Valkey may hold it
/// (its `TIMEOUT`, 2 s by default) and a second more: one that failed never
/// shows, and this node's line is read every turn until then.
pub fn setslot_any(slot: &[u8], state: &[u8], timeout_ms: Option<&[u8]>) {
    if let (Some(slot), Some(asked)) = (slot_arg(slot), moves::Asked::parse(state)) {
        let at = std::time::Instant::now();
        let until = at + held(timeout_ms);
        let arriving = ARRIVING.with_borrow(|a| a.contains(slot));
        SEEN.set(SEEN.get().wrapping_add(1));
        PENDING.with_borrow_mut(|q| {
            q.push(Pending {
                slot,
                asked,
                at,
                until,
            })
        });
        if asked == moves::Asked::Importing {
            if !arriving {
                // A new import: what was recorded in an earlier one of the
                // slot says nothing about the keys that arrive now. (The
                // same command again in the middle of one changes nothing.)
                ARRIVALS.with_borrow_mut(|a| a.remove(&slot));
            }
            // Arriving from now: a write here is recorded until the slot
            // is read (a read of the line drops it if the command failed).
            ARRIVING.with_borrow_mut(|a| a.add(slot));
        } else if arriving && state.eq_ignore_ascii_case(b"stable") {
            // An import given up (the command cannot fail): what the
            // module learned of its keys here goes with it, as a read of
            // the line would find.
            ARRIVING.with_borrow_mut(|a| a.remove(slot));
            ARRIVALS.with_borrow_mut(|a| a.remove(&slot));
            PENDING.with_borrow_mut(|q| q.retain(|p| p.slot != slot));
            let mut one = SlotSet::default();
            one.add(slot);
            super::update(|s| {
                s.index.forget_slots(DB, &one);
                s.stale.replace_where(DB, |k| one.holds(k), Vec::new());
            });
        }
        arriving_changed();
    }
}

/// How long Valkey may hold a `SETSLOT` (its `TIMEOUT`, 2 s by default, at
/// most a minute here) and a second more.
fn held(timeout_ms: Option<&[u8]>) -> std::time::Duration {
    let ms = timeout_ms
        .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
        .unwrap_or(2000)
        .min(60_000);
    std::time::Duration::from_millis(ms + 1000)
}

/// A slot number as a command gave it.
fn slot_arg(arg: &[u8]) -> Option<u16> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|&s| usize::from(s) < moves::SLOTS)
}

/// How long a `SETSLOT` may wait for a read of the line that shows it ran,
/// when nothing needs the line sooner. Until then a slot asked to import
/// counts as arriving, one asked to migrate as migrating, and a slot given
/// here is seen to be by `served_here`: a `CLUSTER NODES` costs the server
/// more than a `MIGRATE` of ten keys (on Valkey, of a thousand), and a
/// resharding by `MIGRATE` changes a slot every few milliseconds.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(1000);

/// Whether a pending `SETSLOT` has waited `SETTLE` since it was seen and
/// since the line was last read.
fn settle_due(now: std::time::Instant) -> bool {
    let read = READ.get().map(|(at, _, _)| at);
    PENDING.with_borrow(|q| {
        q.iter().any(|p| {
            let since = read.map_or(p.at, |r| r.max(p.at));
            now.saturating_duration_since(since) >= SETTLE
        })
    })
}

/// The module key whose record of `key` a write of `key` now would leave
/// wrong, if any: an index set of one of its tags, or its stale hash, that
/// left ahead of it while its slot is migrating here by `MIGRATE`. Such a
/// write is refused as the server refuses a command whose keys are split
/// between the two nodes of a migrating slot (`notify::refuse`).
pub fn write_refused(key: &[u8]) -> Option<Vec<u8>> {
    AHEAD.with_borrow(|a| {
        let slot = crate::engine::slot::slot(key);
        let ahead = a.get(&slot)?;
        // A slot this node's line, as last read, shows not migrating any
        // more (its owner changed by the cluster bus, with no `SETSLOT`
        // here): the server's own answer (a redirection) stands.
        let migrating =
            MYSELF.with_borrow(|m| m.as_ref().map(|(me, _)| me.migrating.contains(slot)));
        let asked = PENDING.with_borrow(|q| {
            q.iter()
                .any(|p| p.slot == slot && p.asked == moves::Asked::Migrating)
        });
        if migrating == Some(false) && !asked {
            return None;
        }
        let p = config::layout();
        engine::with(|s| {
            let mut found = None;
            s.index.each_tag(DB, key, |tag| {
                if found.is_none() {
                    found = p
                        .sets_holding(tag, key)
                        .into_iter()
                        .find(|set| ahead.contains(set));
                }
            });
            found.or_else(|| {
                let hash = p.stale_hash(key);
                (s.stale.contains(DB, key) && ahead.contains(&hash)).then_some(hash)
            })
        })
        .ok()
        .flatten()
    })
}

/// Whether module keys have left ahead of their keys anywhere here.
pub fn any_ahead() -> bool {
    AHEAD.with_borrow(|a| !a.is_empty())
}

/// `CLUSTER SETSLOT <slot> NODE <id>` is about to run (seen by the command
/// filter): once it has, a slot given to this node is read again. (One
/// given to another node was forgotten key by key as its keys left.)
pub fn setslot_node(slot: &[u8], node: &[u8], timeout_ms: Option<&[u8]>) {
    let Some(slot) = slot_arg(slot) else {
        return;
    };
    if super::bus::my_id().is_some_and(|me| !node.eq_ignore_ascii_case(&me)) {
        return;
    }
    SETSLOT.with(|q| {
        q.borrow_mut()
            .push((slot, std::time::Instant::now() + held(timeout_ms)))
    });
    arriving_changed();
}

/// Acts on the `CLUSTER SETSLOT` commands that ran (called before the
/// server sleeps, and from a timer): a slot given to this node is read
/// again once it is served here; one not served yet waits for its command
/// to run. (A slot that left by `MIGRATE` was forgotten key by key as its
/// keys left.) The line is read when slots changed here otherwise, or
/// `SETTLE` after a `SETSLOT` while any is not seen to have run.
pub fn after_setslot(ctx: &Context) {
    TURN.set(TURN.get().wrapping_add(1));
    let now = std::time::Instant::now();
    PENDING.with_borrow_mut(|q| q.retain(|p| now < p.until));
    if settle_due(now) || !KNOWN.get() {
        forget_myself();
        if with_myself(ctx, |_| ()).is_none() {
            return;
        }
    }
    arriving_changed();
    if !PENDING.with_borrow(Vec::is_empty) && !SETTLE_ARMED.replace(true) {
        ctx.create_timer(SETTLE, on_settle, ());
    }
    forget_ahead_of_empty_slots(ctx);
    if SETSLOT.with_borrow(Vec::is_empty) {
        return;
    }
    let mut mine = SlotSet::default();
    SETSLOT.with(|q| {
        q.borrow_mut()
            .retain(|&(s, until)| match served_here(s, true) {
                Some(true) => {
                    mine.add(s);
                    false
                }
                // Not run yet (Valkey holds it for the replicas), or it
                // failed: until it may still run.
                _ => now < until,
            })
    });
    if !mine.is_empty() {
        // Served here: no longer importing, whatever the line last said.
        ARRIVING.with_borrow_mut(|a| {
            for slot in mine.iter() {
                a.remove(slot);
            }
        });
        PENDING.with_borrow_mut(|q| q.retain(|p| !mine.contains(p.slot)));
    }
    arriving_changed();
    if !mine.is_empty() {
        signal_now(ctx, Signal::Assigned, &mine);
    }
    // What was recorded of slots this node gave up importing is done with.
    ARRIVALS.with_borrow_mut(|a| a.retain(|&s, _| unread_slot(s)));
}

/// The module keys that left ahead of their keys in a slot asked to end
/// its migration (`SETSLOT … NODE` or `STABLE`) are done with once no key
/// of the slot is left here: no write here can then leave one wrong.
fn forget_ahead_of_empty_slots(ctx: &Context) {
    let asked: Vec<u16> = AHEAD.with_borrow(|a| {
        a.keys()
            .copied()
            .filter(|&s| {
                PENDING.with_borrow(|q| {
                    q.iter()
                        .any(|p| p.slot == s && p.asked == moves::Asked::Settled)
                })
            })
            .collect()
    });
    for slot in asked {
        if count_in_slot(ctx, slot) == Some(0) {
            AHEAD.with_borrow_mut(|a| a.remove(&slot));
        }
    }
}

fn on_settle(ctx: &Context, (): ()) {
    SETTLE_ARMED.set(false);
    after_setslot(ctx);
}
