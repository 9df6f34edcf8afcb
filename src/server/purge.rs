//! Sliced purges: a purge of more keys than `purge-atomic-max` runs in
//! slices of about `purge-slice-us` each, one per turn of the event loop,
//! so that every other client is served in between (Redis's own model for
//! bounded background work is its active expiry cycle). First every key is
//! checked against the caller's ACL (a key it may not delete fails the
//! purge before anything is deleted); then each slice is an ordinary plan
//! whose deletions and set updates are replicated as they are made, and
//! whatever a restart interrupts is still tagged.

use super::apply::{self, Cause};
use super::blocked;
use super::cluster;
use super::config;
use super::events::{Event, Op};
use super::keys::{self, Caller};
use crate::engine::cluster::Gathered;
use crate::engine::error::Error;
use crate::engine::plan::{self, Access, Kind, Plan, TagSets};
use crate::engine::purge::{Phase, ReplyTo};
use crate::engine::{self, stats, Client, Wake};
use redis_module::{Context, RedisResult, RedisValue};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Keys per step inside a slice (the clock is read between steps).
const BATCH: usize = 128;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// How a purge on this node went.
pub enum Here {
    /// Done at once: keys deleted, and keys that carried the tags.
    Done { deleted: i64, carried: i64 },
    /// Going on in slices; its end goes where it was told.
    Sliced { carried: i64 },
}

/// Purges `tags` on this node with `caller`'s permissions: in one atomic
/// step up to `purge-atomic-max` keys, or where `may_slice` is false; else
/// in slices, whose count goes to `reply_to` (and to the calling client,
/// blocked until then, with `block`). Publishes no event: whoever asked
/// does.
pub fn here(
    ctx: &Context,
    tags: &[Vec<u8>],
    caller: Option<&Caller>,
    may_slice: bool,
    reply_to: ReplyTo,
    block: bool,
    cause: Cause,
) -> Result<Here, Error> {
    let p = config::layout();
    let db = keys::selected_db(ctx);
    let max = config::purge_atomic_max();
    // Past the bound, the keys are listed once: to count them exactly,
    // and as the sliced purge's own list (a million keys take milliseconds
    // to list, which every other client waits for).
    let over = |n: usize| max == 0 || i64::try_from(n).unwrap_or(i64::MAX) > max;
    let bound = engine::with(|s| s.index.member_count_bound(db, tags)).unwrap_or(0);
    let list = || engine::with(|s| (s.index.member_ids(db, tags), s.index.changes()));
    let (mut order, listed) = match may_slice && over(bound) {
        true => list().unwrap_or_default(),
        false => Default::default(),
    };
    if may_slice && over(order.len()) {
        let mut sets = Plan {
            local: true,
            ..Plan::default()
        };
        // A cluster's tag has a set per slot of its keys.
        let members = match p.slotted {
            true => engine::with(|s| plan::purge_members(&s.index, db, tags)).unwrap_or_default(),
            false => Vec::new(),
        };
        let names = engine::with(|s| plan::index_sets(&s.index, db, &p, tags, &members))
            .unwrap_or_default();
        for set in names {
            sets.check(set, Access::Delete, Kind::Set);
        }
        apply::check(ctx, caller, &sets)?;
        let waiter = if block {
            blocked::block_for_purge(ctx)
        } else {
            None
        };
        if waiter.is_some() || !block {
            // The checks read the tag sets, and a set that expired on the
            // way took its members' tags with it: list them again then.
            if engine::with(|s| s.index.changes()).ok() != Some(listed) {
                order = list().map(|(ids, _)| ids).unwrap_or_default();
            }
            let user = caller.and_then(Caller::name);
            let carried = start(ctx, tags.to_vec(), user, reply_to, waiter, order, cause);
            return Ok(Here::Sliced { carried });
        }
    }
    // As `planned`, for a plan that borrows the members it found: the plan
    // that passed its check is the one applied.
    for _ in 0..3 {
        let (members, before) =
            engine::with(|s| (plan::purge_members(&s.index, db, tags), s.index.changes()))
                .unwrap_or_default();
        let plan = engine::with(|s| plan::purge(&s.index, db, &p, tags, &members, TagSets::Delete))
            .unwrap_or_default();
        apply::check(ctx, caller, &plan)?;
        if engine::with(|s| s.index.changes()).ok() != Some(before) {
            continue;
        }
        let replies = apply::apply(ctx, &plan, cause)?;
        stats::bump(&stats::PURGES);
        return Ok(Here::Done {
            deleted: apply::deleted_count(&plan, &replies),
            carried: i64::try_from(members.len()).unwrap_or(i64::MAX),
        });
    }
    Err(Error::Internal("the index kept changing".into()))
}

/// `TAG.PURGE` answered by this server alone (standalone, or the only
/// master of a cluster): the count, or the caller blocked until a sliced
/// purge ends; one event.
pub fn alone(
    ctx: &Context,
    tags: &[Vec<u8>],
    caller: Option<&Caller>,
    can_wait: bool,
    is_async: bool,
) -> RedisResult {
    let here = here(
        ctx,
        tags,
        caller,
        can_wait,
        ReplyTo::Caller,
        !is_async,
        Cause::Command,
    )?;
    Ok(match here {
        Here::Sliced { carried } if is_async => RedisValue::Integer(carried),
        Here::Sliced { .. } => RedisValue::NoReply,
        Here::Done { deleted, carried } => {
            apply::purged(
                ctx,
                &Event {
                    op: Op::Purge,
                    tags,
                    scopes: &[],
                    keys: deleted,
                    source: None,
                },
            );
            RedisValue::Integer(if is_async { carried } else { deleted })
        }
    })
}

/// Starts a sliced purge of the keys `order` that carry `tags` now, with
/// `user`'s permissions, for `cause`. Returns how many keys carried the
/// tags.
fn start(
    ctx: &Context,
    tags: Vec<Vec<u8>>,
    user: Option<Vec<u8>>,
    reply_to: ReplyTo,
    waiter: Option<Client>,
    order: Vec<u32>,
    cause: Cause,
) -> i64 {
    let db = keys::selected_db(ctx);
    let n = engine::with(|s| {
        let (id, n) = s.purges.start(&mut s.index, db, tags, user, order);
        if let Some(job) = s.purges.get(id) {
            job.waiter = waiter;
            job.reply_to = reply_to;
            job.by_rule = cause == Cause::Rule;
        }
        n
    })
    .unwrap_or(0);
    later(ctx);
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn later(ctx: &Context) {
    if !ARMED.with(|a| a.replace(true)) {
        ctx.create_timer(Duration::ZERO, on_timer, ());
    }
}

fn on_timer(ctx: &Context, (): ()) {
    ARMED.with(|a| a.set(false));
    slice(ctx);
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
        && cluster::migrating(ctx)
    {
        if !ARMED.with(|a| a.replace(true)) {
            ctx.create_timer(Duration::from_millis(10), on_timer, ());
        }
        return;
    }
    let budget = Duration::from_micros(u64::try_from(config::purge_slice_us()).unwrap_or(1000));
    let started = Instant::now();
    let home = keys::selected_db(ctx);
    let ids: Vec<u64> =
        engine::with(|s| s.purges.jobs.iter().map(|j| j.id).collect()).unwrap_or_default();
    let mut failed = Vec::new();
    for id in ids {
        while started.elapsed() < budget {
            match step(ctx, id) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    failed.push((id, e));
                    break;
                }
            }
        }
    }
    keys::select_db(ctx, home);
    for (id, e) in failed {
        fail(ctx, id, e);
    }
    finish(ctx);
    if engine::with(|s| !s.purges.jobs.is_empty()).unwrap_or(false) {
        later(ctx);
    }
}

/// One batch of one purge: checks or deletes. `Ok(false)` when this purge
/// has nothing more to do now.
fn step(ctx: &Context, id: u64) -> Result<bool, Error> {
    let Some((db, phase, user, by_rule)) = engine::with(|s| {
        s.purges
            .get(id)
            .filter(|j| !j.done())
            .map(|j| (j.db, j.phase, j.user.clone(), j.by_rule))
    })
    .ok()
    .flatten() else {
        return Ok(false);
    };
    keys::select_db(ctx, db);
    if phase == Phase::Checking {
        let names = engine::with(|s| {
            let ix = &s.index;
            s.purges.get(id).map(|j| j.next_to_check(ix, BATCH))
        })
        .ok()
        .flatten()
        .unwrap_or_default();
        if let Some(name) = user {
            let caller = Caller::named(&name);
            if caller.all_keys(ctx) {
                return Ok(true);
            }
            for k in &names {
                caller.check(ctx, k, Access::Delete)?;
            }
        }
        return Ok(true);
    }
    let Some((tags, batch)) = engine::with(|s| {
        let ix = &s.index;
        s.purges
            .get(id)
            .map(|j| (j.tags.clone(), j.batch(ix, BATCH)))
    })
    .ok()
    .flatten() else {
        return Ok(false);
    };
    if batch.is_empty() {
        return Ok(false);
    }
    let p = config::layout();
    // In a cluster the keys' sets are many (one per slot), so each slice
    // takes its keys out of them rather than rewriting them at the end.
    let sets = if p.slotted {
        TagSets::Remove
    } else {
        TagSets::Keep
    };
    let plan =
        engine::with(|s| plan::purge(&s.index, db, &p, &tags, &batch, sets)).unwrap_or_default();
    let cause = if by_rule { Cause::Rule } else { Cause::Command };
    let deleted = match apply::apply(ctx, &plan, cause) {
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
        s.purges
            .get(id)
            .map(|j| {
                j.refuse();
                (j.waiter.take(), j.reply_to.clone())
            })
            .unwrap_or((None, ReplyTo::Caller))
    })
    .unwrap_or((None, ReplyTo::Caller));
    if reply_to != ReplyTo::Caller && reply_to != ReplyTo::Nobody {
        cluster::answer(ctx, &reply_to, Err(e.to_string()));
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

/// Ends the purges with nothing left: one event each, the count to the
/// caller that waits.
fn finish(ctx: &Context) {
    let done = engine::with(|s| s.purges.take_done(&mut s.index)).unwrap_or_default();
    let p = config::layout();
    for job in done.into_iter().filter(|j| !j.refused()) {
        if job.reply_to != ReplyTo::Caller {
            if job.reply_to != ReplyTo::Nobody {
                cluster::answer(ctx, &job.reply_to, Ok(Gathered::Count(job.deleted)));
            }
            continue;
        }
        let home = keys::selected_db(ctx);
        keys::select_db(ctx, job.db);
        if !job.abandoned() && !p.slotted {
            let plan = engine::with(|s| plan::rebuild_sets(&s.index, job.db, &p, &job.tags))
                .unwrap_or_default();
            if let Err(e) = apply::apply(ctx, &plan, Cause::Rule) {
                super::log::warning(
                    ctx,
                    &format!("tagcache: purge could not rewrite its sets: {e}"),
                );
            }
        }
        stats::bump(&stats::PURGES);
        apply::purged(
            ctx,
            &Event {
                op: Op::Purge,
                tags: &job.tags,
                scopes: &[],
                keys: job.deleted,
                source: None,
            },
        );
        keys::select_db(ctx, home);
        if let Some(client) = job.waiter {
            blocked::wake(
                ctx,
                vec![Wake::Purged {
                    client,
                    deleted: job.deleted,
                }],
            );
        }
    }
}
