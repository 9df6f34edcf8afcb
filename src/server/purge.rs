//! The one way a purge runs, whoever asks (a command, a rule firing,
//! another master): `here` takes a `Request`, decides atomic or sliced,
//! checks, and runs it.
//!
//! Up to `purge-atomic-max` keys (and wherever nobody can wait) a purge is
//! one atomic step. Above it, it runs in slices of about `purge-slice-us`
//! each, one per turn of the event loop, so that every other client is
//! served in between (Redis's own model for bounded background work is its
//! active expiry cycle). A command's purge first checks every key against
//! the caller's ACL (a key it may not delete fails the purge before
//! anything is deleted); a rule's leaves such keys in place. Each slice is
//! an ordinary plan whose deletions and set updates are replicated as they
//! are made, so whatever a restart interrupts is still tagged.

use super::acl::Caller;
use super::apply::{self, Cause};
use super::blocked;
use super::bus;
use super::config;
use super::events::{Event, Op};
use super::keys;
use crate::engine::cluster::Gathered;
use crate::engine::error::{Error, Result};
use crate::engine::index::Db;
use crate::engine::plan::{self, Access, Kind, Plan, TagSets};
use crate::engine::purge::{Job, Phase, ReplyTo, Request};
use crate::engine::{self, stats, Wake};
use redis_module::{raw, Context};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Keys per step inside a slice at most (the clock is read between steps).
const BATCH: usize = 128;
/// Names a listing step reads at most.
const LIST_BATCH: usize = 4096;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// What one key of a step has cost lately, in nanoseconds, deleting
    /// (or checking) and listing: a step is sized to what is left of the
    /// slice, so a slice ends within its budget rather than one whole
    /// batch past it.
    static PER_KEY_NS: Cell<u64> = const { Cell::new(2_000) };
    static PER_NAME_NS: Cell<u64> = const { Cell::new(200) };
}

/// The estimate for a step of this kind.
fn estimate(listing: bool) -> &'static std::thread::LocalKey<Cell<u64>> {
    match listing {
        true => &PER_NAME_NS,
        false => &PER_KEY_NS,
    }
}

/// Keys for a step that should take at most `left`.
fn step_size(left: Duration, listing: bool) -> usize {
    let per_key = estimate(listing).with(Cell::get).max(1);
    let n = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX) / per_key;
    let max = if listing { LIST_BATCH } else { BATCH };
    usize::try_from(n).unwrap_or(max).clamp(1, max)
}

/// Folds the cost of a step of `n` keys into the estimate.
fn learn(n: usize, took: Duration, listing: bool) {
    let Ok(n) = u64::try_from(n.max(1)) else {
        return;
    };
    let seen = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX) / n;
    estimate(listing).with(|c| c.set((c.get() * 3 + seen) / 4));
}

/// How a purge on this node went.
pub enum Here {
    /// Done at once: the keys deleted (soft: marked), of those selected
    /// that existed.
    Done { deleted: i64 },
    /// Going on in slices; its end goes where the request says.
    /// `answered`: the calling client is blocked, and answered by the job
    /// (at its end, or once its keys are checked).
    Sliced { carried: i64, answered: bool },
}

/// How the caller of a purge may wait for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Nobody can wait (`MULTI`, a script): one atomic step, whatever its
    /// size.
    Never,
    /// The calling client is blocked until a sliced purge ends.
    Blocked,
    /// `ASYNC`: the calling client gets the count of keys that carried the
    /// tags at once, or, if its keys are checked one by one, once every
    /// key passed (blocked until then; `NOPERM` if one does not).
    Async,
    /// Nobody waits here: a sliced purge's end goes to `reply_to` only.
    Detached,
}

/// Runs the purge `req` on this node with `caller`'s permissions (the
/// user `req.user` names, as the call found it). Publishes no event for an
/// atomic purge: whoever asked does (`published`); a sliced one publishes
/// its own when it ends, if `req.publish`.
pub fn here(ctx: &Context, req: Request, caller: Option<&Caller>, wait: Wait) -> Result<Here> {
    super::moves::read_arrived_now(ctx);
    let db = req.db;
    keys::select_db(ctx, db);
    let max = config::purge_atomic_max();
    let over = |n: usize| max == 0 || i64::try_from(n).unwrap_or(i64::MAX) > max;
    // The sum of the tags' sizes bounds the count without listing them.
    let bound = engine::with(|s| s.index.member_count_bound(db, &req.tags))?;
    if wait != Wait::Never && over(bound) {
        let (ids, listed) = select_ids(db, &req.tags, req.all)?;
        if over(ids.len()) {
            return sliced(ctx, req, caller, wait, ids, listed);
        }
    }
    atomic(ctx, &req, caller)
}

fn select(
    db: crate::engine::index::Db,
    tags: &[Vec<u8>],
    all: bool,
) -> Result<(Vec<Vec<u8>>, u64)> {
    engine::with(|s| {
        (
            crate::engine::purge::select(&s.index, db, tags, all),
            s.index.changes(),
        )
    })
}

/// The ids of the keys a sliced purge selects (named later, a batch per
/// step: copying a million names is one step far longer than a slice).
fn select_ids(db: Db, tags: &[Vec<u8>], all: bool) -> Result<(Vec<u32>, u64)> {
    engine::with(|s| (s.index.member_ids(db, tags, all), s.index.changes()))
}

/// The names of `ids`, for the checks that need them: in a cluster the
/// sets of a tag are one per slot of its keys.
fn names_for_sets(db: Db, ids: &[u32]) -> Result<Vec<Vec<u8>>> {
    if !config::slotted() {
        return Ok(Vec::new());
    }
    engine::with(|s| {
        ids.iter()
            .filter_map(|&id| s.index.name_of(db, id).map(<[u8]>::to_vec))
            .collect()
    })
}

/// A command's purge may delete every key selected, or fails; a rule's
/// deletes those its owner may delete (the rest are counted) and spares
/// its source. Returns the keys to delete.
fn allowed(
    ctx: &Context,
    req: &Request,
    caller: Option<&Caller>,
    keys: Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let Some(source) = &req.rule_source else {
        return keys;
    };
    let Some(c) = caller.filter(|c| !c.all_keys(ctx)) else {
        return keys.into_iter().filter(|k| k != source).collect();
    };
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if &k == source {
            continue;
        }
        if c.check(ctx, &k, access(req)).is_ok() {
            out.push(k);
        } else {
            stats::bump(&stats::RULE_KEYS_DENIED);
        }
    }
    out
}

/// Whether a rule's owner may change the tag sets of its tags.
fn sets_allowed(
    ctx: &Context,
    req: &Request,
    caller: Option<&Caller>,
    members: &[Vec<u8>],
) -> bool {
    let Some(c) = caller.filter(|c| !c.all_keys(ctx)) else {
        return true;
    };
    let p = config::layout();
    let sets = engine::with(|s| plan::index_sets(&s.index, req.db, &p, &req.tags, members))
        .unwrap_or_default();
    sets.iter()
        .all(|set| c.check(ctx, set, Access::Write).is_ok())
}

/// What the request does to each key it selects, as the user's ACL sees
/// it: deleting, or (soft) changing its expiry.
fn access(req: &Request) -> Access {
    match req.soft {
        Some(_) => Access::Expire,
        None => Access::Delete,
    }
}

/// What the request does to the tag sets it selects from: a purge deletes
/// them (or takes its keys out), a soft invalidation only reads them, as
/// `TAG.MEMBERS` would.
fn set_access(req: &Request) -> Access {
    match req.soft {
        Some(_) => Access::Read,
        None => Access::Delete,
    }
}

/// The plan for `members`: deleting them, and taking them out of their tag
/// sets (`sets`), or marking them stale.
fn plan_for<'a>(req: &Request, members: &'a [Vec<u8>], sets: TagSets) -> Result<plan::Plan<'a>> {
    let p = config::layout();
    match req.soft {
        Some(soft) => Ok(plan::mark_stale(&p, members, soft.until)),
        None => engine::with(|s| plan::purge(&s.index, req.db, &p, &req.tags, members, sets)),
    }
}

fn cause(req: &Request) -> Cause {
    if req.by_rule() {
        Cause::Rule
    } else {
        Cause::Command
    }
}

/// The purge in one step: the plan that passed its check is the one
/// applied (if checking let a key expire, the index moved: plan again).
fn atomic(ctx: &Context, req: &Request, caller: Option<&Caller>) -> Result<Here> {
    let db = req.db;
    for _ in 0..3 {
        let (found, before) = select(db, &req.tags, req.all)?;
        let (members, sets) = if req.by_rule() {
            if !sets_allowed(ctx, req, caller, &found) {
                stats::add(&stats::RULE_KEYS_DENIED, found.len() as u64);
                return Ok(Here::Done { deleted: 0 });
            }
            (allowed(ctx, req, caller, found), TagSets::Remove)
        } else if req.all {
            // Keys that carry only some of the tags stay in their sets.
            (found, TagSets::Remove)
        } else {
            (found, TagSets::Delete)
        };
        let mut plan = plan_for(req, &members, sets)?;
        if req.soft.is_some() {
            // A purge's plan checks its tag sets itself; a soft one reads them.
            let p = config::layout();
            for set in engine::with(|s| plan::index_sets(&s.index, db, &p, &req.tags, &members))? {
                plan.check(set, Access::Read, Kind::Set);
            }
        }
        if req.by_rule() {
            // The index sets may have been replaced by another type since:
            // then the rule has nothing to purge there.
            if apply::check(ctx, None, &plan).is_err() {
                return Ok(Here::Done { deleted: 0 });
            }
        } else {
            apply::check(ctx, caller, &plan)?;
        }
        if engine::with(|s| s.index.changes())? != before {
            continue;
        }
        let replies = apply::apply(ctx, &plan, cause(req))?;
        super::update(|s| s.leases.tags_purged(&req.tags));
        return Ok(Here::Done {
            deleted: apply::deleted_count(&plan, &replies),
        });
    }
    Err(Error::Internal("the index kept changing".into()))
}

/// Starts the purge in slices. A command's checks of the tag sets come
/// first (a refused call changes nothing and blocks nobody).
fn sliced(
    ctx: &Context,
    req: Request,
    caller: Option<&Caller>,
    wait: Wait,
    mut ids: Vec<u32>,
    listed: u64,
) -> Result<Here> {
    let db = req.db;
    let p = config::layout();
    let named = names_for_sets(db, &ids)?;
    if req.by_rule() {
        if !sets_allowed(ctx, &req, caller, &named) {
            stats::add(&stats::RULE_KEYS_DENIED, ids.len() as u64);
            return Ok(Here::Done { deleted: 0 });
        }
    } else {
        let names = engine::with(|s| plan::index_sets(&s.index, db, &p, &req.tags, &named))?;
        let mut sets = Plan {
            local: true,
            ..Plan::default()
        };
        for set in names {
            sets.check(set, set_access(&req), Kind::Set);
        }
        apply::check(ctx, caller, &sets)?;
    }
    let check = !req.by_rule() && caller.is_some_and(|c| !c.all_keys(ctx));
    let block = wait == Wait::Blocked || (wait == Wait::Async && check);
    let waiter = match block {
        true => Some(
            blocked::block_for_purge(ctx)
                .ok_or_else(|| Error::Internal("cannot block the caller".into()))?,
        ),
        false => None,
    };
    // The checks read the tag sets, and a set that expired on the way took
    // its members' tags with it: list them again then.
    if engine::with(|s| s.index.changes())? != listed {
        ids = select_ids(db, &req.tags, req.all)?.0;
    }
    let held = ids.len();
    let (id, ghosts) = engine::with(|s| {
        // Names a client put in a tag set before they were keys, that the
        // job holds (few: the ghosts are bounded).
        let carries = |k: &[u8]| {
            let mut has = req.tags.iter().map(|t| s.index.has(db, k, t));
            match req.all {
                true => has.all(|x| x),
                false => has.any(|x| x),
            }
        };
        let ghosts: Vec<Vec<u8>> = s
            .ghosts
            .iter()
            .filter(|(d, k)| *d == db && carries(k))
            .map(|(_, k)| k.clone())
            .collect();
        let pin = s.index.pin(db);
        s.index.hold_compaction(true);
        (s.purges.start_listing(req, ids, pin, check), ghosts)
    })?;
    // One that is still no key carries nothing: the count leaves it out
    // (the job keeps it: any command may make it a key before its turn).
    let n = held.saturating_sub(ghosts.iter().filter(|k| !keys::exists(ctx, k)).count());
    super::update(|s| {
        if let Some(job) = s.purges.get(id) {
            job.waiter = waiter;
            if wait == Wait::Async && waiter.is_some() {
                job.early = Some(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    });
    later(ctx);
    Ok(Here::Sliced {
        carried: i64::try_from(n).unwrap_or(i64::MAX),
        answered: waiter.is_some(),
    })
}

/// Asks for the next slice. From inside a slice, the next one runs in the
/// next turn of the event loop, once the replies of this turn are written:
/// the timer is made before the server sleeps (`before_sleep`), and the
/// loop is woken through its pipe so that it does not sleep. (A timer made
/// inside a timer's callback fires 1 ms later at the earliest, which left
/// the server idle half the time; one made in the same turn would run
/// before the replies of that turn are written, so that a client waiting
/// for each reply waited two slices.)
fn later(ctx: &Context) {
    if IN_SLICE.with(Cell::get) {
        WANTED.with(|w| w.set(true));
        return;
    }
    if !ARMED.with(|a| a.replace(true)) {
        ctx.create_timer(Duration::ZERO, on_timer, ());
    }
}

/// Before the server sleeps: the next slice asked for by the last one.
pub fn before_sleep(ctx: &Context) {
    if !WANTED.with(|w| w.replace(false)) || ARMED.with(|a| a.replace(true)) {
        return;
    }
    ctx.create_timer(Duration::ZERO, on_timer, ());
    // The poll's timeout was reckoned before this timer existed: a byte in
    // the loop's pipe makes it return at once.
    // SAFETY: a module API function pointer; the callback takes no data.
    unsafe {
        if let Some(f) = raw::RedisModule_EventLoopAddOneShot {
            f(Some(on_wake), std::ptr::null_mut());
        }
    }
}

thread_local! {
    static IN_SLICE: Cell<bool> = const { Cell::new(false) };
    /// A slice asked for the next one.
    static WANTED: Cell<bool> = const { Cell::new(false) };
    /// The last turn's slice gave its turn to clients' replies.
    static YIELDED: Cell<bool> = const { Cell::new(false) };
    /// Client commands seen when the last slice ended.
    static SEEN_AT_END: Cell<u64> = const { Cell::new(0) };
    /// When a slice last found that clients had sent commands since the
    /// one before (a client that waits for each reply sends its next
    /// command a little after a slice, so one gap without one says little).
    static BUSY_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Clients sent commands in the last 100 ms.
fn busy() -> bool {
    BUSY_AT
        .with(Cell::get)
        .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
}

extern "C" fn on_wake(_: *mut std::ffi::c_void) {}

/// How long this slice may run: `purge-slice-us`, or a quarter of it while
/// other clients send commands (`busy`), so that a client waiting for each reply
/// before its next command is answered every quarter slice rather than
/// every slice (the purge still has the CPU whenever they have nothing).
fn budget() -> Duration {
    let us = u64::try_from(config::purge_slice_us()).unwrap_or(1000);
    let us = match busy() {
        true => (us / 4).max(u64::try_from(config::PURGE_SLICE_US_MIN).unwrap_or(100)),
        false => us,
    };
    Duration::from_micros(us)
}

fn on_timer(ctx: &Context, (): ()) {
    ARMED.with(|a| a.set(false));
    let seen = super::notify::commands_seen();
    if seen != SEEN_AT_END.with(Cell::get) {
        BUSY_AT.with(|b| b.set(Some(Instant::now())));
        // Clients' commands ran in this turn of the loop: their replies
        // are written before the server sleeps, after this timer. Once in
        // a row, the slice waits for the next turn rather than make them
        // wait for it.
        if !YIELDED.with(|y| y.replace(true)) {
            SEEN_AT_END.with(|c| c.set(seen));
            WANTED.with(|w| w.set(true));
            return;
        }
    }
    YIELDED.with(|y| y.set(false));
    IN_SLICE.with(|c| c.set(true));
    slice(ctx);
    SEEN_AT_END.with(|c| c.set(super::notify::commands_seen()));
    IN_SLICE.with(|c| c.set(false));
}

/// One slice: works through the purges in progress, in turn, until the
/// slice's time is up; ends the purges that are done.
fn slice(ctx: &Context) {
    if !keys::may_write(ctx) {
        // A master turned replica: its own master decides from now on.
        super::update(|s| s.purges.flushed(None));
    }
    // In a cluster, while a slot of this master moves, its keys and their
    // index sets are on two nodes: the purge waits for the move to end.
    if config::slotted()
        && engine::with(|s| !s.purges.jobs.is_empty()).unwrap_or(false)
        && bus::migrating(ctx)
    {
        if !ARMED.with(|a| a.replace(true)) {
            ctx.create_timer(Duration::from_millis(10), on_timer, ());
        }
        return;
    }
    let budget = budget();
    let started = Instant::now();
    let home = keys::selected_db(ctx);
    let ids: Vec<u64> =
        engine::with(|s| s.purges.jobs.iter().map(|j| j.id).collect()).unwrap_or_default();
    let mut failed = Vec::new();
    for id in ids {
        while let Some(left) = budget.checked_sub(started.elapsed()) {
            let listing =
                engine::with(|s| s.purges.get(id).is_some_and(|j| j.is_listing())).unwrap_or(false);
            let n = step_size(left, listing);
            let t = Instant::now();
            let more = step(ctx, id, n);
            learn(n, t.elapsed(), listing);
            match more {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    failed.push((id, e));
                    break;
                }
            }
        }
    }
    for (id, e) in failed {
        fail(ctx, id, e);
    }
    finish(ctx);
    keys::select_db(ctx, home);
    if engine::with(|s| !s.purges.jobs.is_empty()).unwrap_or(false) {
        later(ctx);
    }
}

/// One batch of `n` keys of one purge: checks or deletes. `Ok(false)` when this purge
/// has nothing more to do now.
fn step(ctx: &Context, id: u64, n: usize) -> Result<bool> {
    let Some((req, phase)) = engine::with(|s| {
        s.purges
            .get(id)
            .filter(|j| !j.done())
            .map(|j| (j.req.clone(), j.phase))
    })?
    else {
        return Ok(false);
    };
    keys::select_db(ctx, req.db);
    if phase == Phase::Listing {
        let db = req.db;
        let pin = engine::with(|s| {
            let index = &s.index;
            s.purges
                .get(id)
                .and_then(|j| j.list(n, |i| index.name_of(db, i)))
        })?;
        if let Some(pin) = pin {
            super::update(|s| s.index.unpin(db, pin));
        }
        return Ok(true);
    }
    let caller = req.user.as_deref().map(Caller::named);
    if phase == Phase::Checking {
        let names =
            engine::with(|s| s.purges.get(id).map(|j| j.next_to_check(n)))?.unwrap_or_default();
        if let Some(c) = caller.as_ref().filter(|c| !c.all_keys(ctx)) {
            for k in &names {
                c.check(ctx, k, access(&req))?;
            }
        }
        // Every key passed: an `ASYNC` caller gets its count now.
        let early = engine::with(|s| {
            s.purges
                .get(id)
                .filter(|j| j.phase == Phase::Deleting && j.early.is_some())
                .and_then(|j| Some((j.waiter.take()?, j.early.take()?)))
        })?;
        if let Some((client, carried)) = early {
            blocked::wake(
                ctx,
                vec![Wake::Purged {
                    client,
                    deleted: carried,
                }],
            );
        }
        return Ok(true);
    }
    let batch = engine::with(|s| s.purges.get(id).map(|j| j.batch(n)))?.unwrap_or_default();
    if batch.is_empty() {
        return Ok(false);
    }
    // A name that came in by a rename after the checks is checked now; a
    // command's purge leaves one its caller may not touch.
    let batch = match caller
        .as_ref()
        .filter(|c| !req.by_rule() && !c.all_keys(ctx))
    {
        Some(c) => {
            let unchecked: Vec<bool> = engine::with(|s| {
                s.purges
                    .get(id)
                    .map(|j| batch.iter().map(|k| j.unchecked(k)).collect())
            })?
            .unwrap_or_default();
            batch
                .into_iter()
                .zip(unchecked)
                .filter(|(k, later)| !later || c.check(ctx, k, access(&req)).is_ok())
                .map(|(k, _)| k)
                .collect()
        }
        None => batch,
    };
    let members = allowed(ctx, &req, caller.as_ref(), batch);
    // Every slice takes its keys out of their sets (those it untags on the
    // way included), so the sets are exact at every turn: a client that
    // rewrites one in the middle reads no deleted key back into the index.
    let plan = plan_for(&req, &members, TagSets::Remove)?;
    let deleted = match apply::apply(ctx, &plan, cause(&req)) {
        Ok(replies) => apply::deleted_count(&plan, &replies),
        Err(e) => {
            super::log::warning(ctx, &format!("tagcache: purge slice failed: {e}"));
            0
        }
    };
    super::update(|s| {
        if let Some(j) = s.purges.get(id) {
            j.deleted += deleted;
        }
    });
    Ok(true)
}

/// A check failed: nothing was deleted; the caller gets the error.
fn fail(ctx: &Context, id: u64, e: Error) {
    // Ended at the next `finish`, which publishes nothing for it.
    let (waiter, reply_to) = engine::with(|s| {
        s.purges.get(id).map(|j| {
            j.refuse();
            (j.waiter.take(), j.req.reply_to.clone())
        })
    })
    .ok()
    .flatten()
    .unwrap_or((None, ReplyTo::Nobody));
    if matches!(reply_to, ReplyTo::Gather(_) | ReplyTo::Remote(..)) {
        bus::answer(ctx, &reply_to, Err(e.to_string()));
        return;
    }
    match waiter {
        Some(client) => blocked::wake(
            ctx,
            vec![Wake::Failed {
                client,
                error: e.to_string(),
            }],
        ),
        None => super::log::warning(ctx, &format!("tagcache: background purge refused: {e}")),
    }
}

/// Ends the purges with nothing left: leases on their tags refused, one
/// event each (if theirs to publish), the count to whoever waits.
fn finish(ctx: &Context) {
    let done = engine::with(|s| {
        let done = s.purges.take_done();
        // A job ended while still listing (flushed, refused) lets go of
        // the index.
        for j in &done {
            if let Some(pin) = j.pin {
                s.index.unpin(j.db(), pin);
            }
        }
        if s.purges.jobs.is_empty() {
            s.index.hold_compaction(false);
        }
        done
    })
    .unwrap_or_default();
    for job in done.into_iter().filter(|j| !j.refused()) {
        ended(ctx, job);
    }
}

fn ended(ctx: &Context, job: Job) {
    super::update(|s| s.leases.tags_purged(&job.req.tags));
    if job.req.publish {
        keys::select_db(ctx, job.db());
        published(ctx, &job.req, job.deleted);
    }
    match &job.req.reply_to {
        ReplyTo::Gather(_) | ReplyTo::Remote(..) => {
            bus::answer(ctx, &job.req.reply_to, Ok(Gathered::Count(job.deleted)));
        }
        ReplyTo::Caller | ReplyTo::Nobody => {}
    }
    if let Some(client) = job.waiter {
        // An `ASYNC` caller still waiting for its keys to be checked (the
        // job ended first: flushed, every key written) gets its count.
        blocked::wake(
            ctx,
            vec![Wake::Purged {
                client,
                deleted: job.early.unwrap_or(job.deleted),
            }],
        );
    }
}

/// The one event of a purge (`purge`, or `link` for a rule's), with the
/// keys it deleted; counted.
pub fn published(ctx: &Context, req: &Request, deleted: i64) {
    if req.by_rule() {
        stats::bump(&stats::RULE_FIRINGS);
    } else if req.soft.is_none() {
        stats::bump(&stats::PURGES);
    }
    super::events::purged(
        ctx,
        &Event {
            op: match (req.by_rule(), req.soft) {
                (true, _) => Op::Link,
                (false, Some(_)) => Op::Stale,
                (false, None) => Op::Purge,
            },
            tags: &req.tags,
            scopes: &[],
            keys: deleted,
            source: req.rule_source.as_deref(),
            all: req.all,
            grace_ms: req.soft.map(|s| s.grace_ms),
        },
    );
}

/// `TAG.PURGE` answered by this server alone (standalone, or the only
/// master of a cluster): the count, or the caller blocked until a sliced
/// purge ends; one event.
pub fn alone(
    ctx: &Context,
    req: Request,
    caller: Option<&Caller>,
    can_wait: bool,
    is_async: bool,
) -> redis_module::RedisResult {
    use redis_module::RedisValue;
    let wait = match (can_wait, is_async) {
        (false, _) => Wait::Never,
        (true, false) => Wait::Blocked,
        (true, true) => Wait::Async,
    };
    let event = req.clone();
    Ok(match here(ctx, req, caller, wait)? {
        Here::Sliced { answered: true, .. } => RedisValue::NoReply,
        Here::Sliced { carried, .. } => RedisValue::Integer(carried),
        Here::Done { deleted } => {
            published(ctx, &event, deleted);
            RedisValue::Integer(deleted)
        }
    })
}
