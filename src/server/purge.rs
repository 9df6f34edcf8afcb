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
use super::config;
use super::events::{Event, Op};
use super::keys::{self, Caller};
use crate::engine::error::Error;
use crate::engine::plan::{self, Access, Prefix, TagSets};
use crate::engine::purge::Phase;
use crate::engine::{self, stats, Wake};
use redis_module::Context;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Keys per step inside a slice (the clock is read between steps).
const BATCH: usize = 128;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// Starts a sliced purge of the keys that carry `tags` now, with the
/// caller's permissions. `block`: the caller waits for the count. Returns
/// how many keys carried the tags, or `None` when the caller cannot be
/// blocked.
pub fn start(ctx: &Context, tags: Vec<Vec<u8>>, block: bool) -> Option<i64> {
    let db = keys::selected_db(ctx);
    let waiter = if block {
        Some(blocked::block_for_purge(ctx)?)
    } else {
        None
    };
    let user = keys::user_name(ctx);
    let n = engine::with(|s| {
        let (id, n) = s.purges.start(&mut s.index, db, tags, user);
        if let Some(job) = s.purges.get(id) {
            job.waiter = waiter;
        }
        n
    })
    .unwrap_or(0);
    later(ctx);
    Some(i64::try_from(n).unwrap_or(i64::MAX))
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
        engine::with(|s| s.purges.flushed(None));
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
    let Some((db, phase, user)) = engine::with(|s| {
        s.purges
            .get(id)
            .filter(|j| !j.done())
            .map(|j| (j.db, j.phase, j.user.clone()))
    })
    .flatten() else {
        return Ok(false);
    };
    keys::select_db(ctx, db);
    if phase == Phase::Checking {
        let names = engine::with(|s| {
            let ix = &s.index;
            s.purges.get(id).map(|j| j.next_to_check(ix, BATCH))
        })
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
    .flatten() else {
        return Ok(false);
    };
    if batch.is_empty() {
        return Ok(false);
    }
    let p = Prefix(config::tag_prefix());
    let plan = engine::with(|s| plan::purge(&s.index, db, &p, &tags, &batch, TagSets::Keep))
        .unwrap_or_default();
    let deleted = match apply::apply(ctx, &plan, Cause::Command) {
        Ok(replies) => apply::deleted_count(&plan, &replies),
        Err(e) => {
            ctx.log_warning(&format!("tagcache: purge slice failed: {e}"));
            0
        }
    };
    engine::with(|s| {
        if let Some(j) = s.purges.get(id) {
            j.deleted += deleted;
        }
    });
    Ok(true)
}

/// A check failed: nothing was deleted; the caller gets the error.
fn fail(ctx: &Context, id: u64, e: Error) {
    // Ended at the next `finish`, which publishes nothing for it.
    let waiter = engine::with(|s| {
        s.purges.get(id).and_then(|j| {
            j.refuse();
            j.waiter.take()
        })
    })
    .flatten();
    match waiter {
        Some(client) => blocked::wake(
            ctx,
            vec![Wake::Failed {
                client,
                error: e.to_string(),
            }],
        ),
        None => ctx.log_warning(&format!("tagcache: background purge refused: {e}")),
    }
}

/// Ends the purges with nothing left: one event each, the count to the
/// caller that waits.
fn finish(ctx: &Context) {
    let done = engine::with(|s| s.purges.take_done(&mut s.index)).unwrap_or_default();
    let p = Prefix(config::tag_prefix());
    for job in done.into_iter().filter(|j| !j.refused()) {
        let home = keys::selected_db(ctx);
        keys::select_db(ctx, job.db);
        if !job.abandoned() {
            let plan = engine::with(|s| plan::rebuild_sets(&s.index, job.db, &p, &job.tags))
                .unwrap_or_default();
            if let Err(e) = apply::apply(ctx, &plan, Cause::Rule) {
                ctx.log_warning(&format!("tagcache: purge could not rewrite its sets: {e}"));
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
