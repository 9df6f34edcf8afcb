//! The writes the keyspace owes the tag sets (`engine::Owed`): a key
//! deleted, overwritten or renamed by a client leaves its sets, a rule's
//! source written fires its purge, rules a client wrote are disowned. A
//! change is in the index at once; its Redis writes are paid here before
//! any module command acts, in a post-notification job where the server
//! has them, and before the server sleeps.

use super::acl::Caller;
use super::apply::{self, Cause};
use super::bus;
use super::config;
use super::guards::Applying;
use super::keys::{self, Mode};
use crate::engine::cluster::{kind, Gathered, How, PurgeAsk};
use crate::engine::error::Result;
use crate::engine::index::Db;
use crate::engine::plan::{self, TagSets};
use crate::engine::purge::{ReplyTo, Request, Soft};
use crate::engine::rules::Fired;
use crate::engine::{self, stats, Owed};
use redis_module::Context;
use std::cell::{Cell, OnceCell};

thread_local! {
    /// Paying inside a client command's notification on Redis 7.0: set
    /// writes are made without replication, and replicated after the
    /// command (a write propagated from inside a notification there goes
    /// out before the command that caused it: `SUNIONSTORE k tag:t` would
    /// reach a replica after the `SREM tag:t k` it caused).
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static TIMER_ARMED: Cell<bool> = const { Cell::new(false) };
    static POST_JOBS: OnceCell<bool> = const { OnceCell::new() };
}

/// Pays, now, the owed removals of keys from tag sets (and re-additions of
/// renamed ones), leaving other owed work (rule firings) for `settle`:
/// where the server has no post-notification jobs (Redis 7.0), a plain
/// command later in the same pipeline must not read a tag set that still
/// names a key the index has already untagged. Called from inside a
/// notification, so every call replicates as it is made.
pub fn settle_untags(ctx: &Context) {
    let Ok(due) = engine::with(|s| {
        let mut due = Vec::new();
        s.owed.retain(|o| match o {
            Owed::Untag { .. } | Owed::Retag { .. } => {
                due.push(o.clone());
                false
            }
            _ => true,
        });
        due
    }) else {
        return;
    };
    if due.is_empty() || !keys::may_write(ctx) {
        return;
    }
    let home = keys::selected_db(ctx);
    QUIET.with(|q| q.set(true));
    for o in due {
        if engine::with(|s| s.still_due(&o)).unwrap_or(false) {
            pay(ctx, o);
        }
    }
    QUIET.with(|q| q.set(false));
    keys::select_db(ctx, home);
}

/// A set write of an owed upkeep: replicated as made, or, inside a 7.0
/// notification, made quietly and its replication owed.
fn set_write(ctx: &Context, db: Db, add: bool, set: &[u8], key: &[u8]) -> Result<()> {
    let cmd = if add { c"SADD" } else { c"SREM" };
    if !QUIET.with(Cell::get) {
        return keys::call2(ctx, Mode::Replicated, cmd, set, key).map(drop);
    }
    let changed = keys::call2(ctx, Mode::Quiet, cmd, set, key)?;
    if changed > 0 {
        super::update(|s| {
            s.owed_replication.push_back(Owed::Propagate {
                db,
                add,
                set: set.to_vec(),
                key: key.to_vec(),
            })
        });
    }
    Ok(())
}

/// Pays every owed write (a bounded number per call; the rest on the next
/// turn). Only a master that is not loading writes: elsewhere the master's
/// own writes arrive by replication, and nothing is owed.
pub fn settle(ctx: &Context) {
    if !engine::with(|s| s.owes()).unwrap_or(false) {
        return;
    }
    if !keys::may_write(ctx) {
        super::update(|s| {
            s.owed.clear();
            s.owed_replication.clear();
        });
        return;
    }
    let home = keys::selected_db(ctx);
    for _ in 0..100_000 {
        // The writes already made are replicated before any other: they
        // came first.
        let Some(next) = engine::with(|s| {
            if let Some(o) = s.owed_replication.pop_front() {
                return Some(o);
            }
            while let Some(o) = s.owed.pop_front() {
                if s.still_due(&o) {
                    return Some(o);
                }
            }
            None
        })
        .ok()
        .flatten() else {
            break;
        };
        pay(ctx, next);
    }
    keys::select_db(ctx, home);
    let more = engine::with(|s| {
        s.named.settled();
        // A burst of owed writes keeps no memory once paid.
        if s.owed.is_empty() && s.owed.capacity() > 64 {
            s.owed = Default::default();
        }
        if s.owed_replication.is_empty() && s.owed_replication.capacity() > 64 {
            s.owed_replication = Default::default();
        }
        s.owes()
    });
    if more.unwrap_or(false) {
        settle_later(ctx);
    }
}

fn pay(ctx: &Context, owed: Owed) {
    let p = config::layout();
    let db = match &owed {
        Owed::Untag { db, .. } | Owed::Retag { db, .. } | Owed::Propagate { db, .. } => *db,
        Owed::Orphans { db, .. } | Owed::Fire { db, .. } => *db,
        Owed::Rehome { db } | Owed::Disown { db } | Owed::Fresh { db, .. } => *db,
    };
    keys::select_db(ctx, db);
    let done = match owed {
        Owed::Fresh { key, .. } => {
            let _applying = Applying::begin();
            keys::call(ctx, Mode::Replicated, "HDEL", &[&p.stale_hash(&key), &key]).map(drop)
        }
        Owed::Untag {
            tag,
            key,
            seq,
            in_exec,
            ..
        } => {
            let sets = p.sets_holding(&tag, &key);
            // Client code that rewrites a key and then adds it to its tag set
            // again (its SADD changed nothing: the key was still a member)
            // keeps it there.
            let readded = sets.iter().any(|set| {
                engine::with(|s| s.named.claim(set, &key, seq, in_exec)).unwrap_or(false)
                    && keys::call2(ctx, Mode::Local, c"SISMEMBER", set, &key) == Ok(1)
            });
            if readded {
                super::update(|s| {
                    s.index.add(db, &key, &tag);
                });
                return;
            }
            stats::bump(&stats::INDEX_CLEANUPS);
            let _applying = Applying::begin();
            sets.iter()
                .try_for_each(|set| set_write(ctx, db, false, set, &key))
        }
        Owed::Retag { tag, key, .. } => {
            let _applying = Applying::begin();
            set_write(ctx, db, true, &p.set_for(&tag, &key), &key)
        }
        Owed::Propagate { add, set, key, .. } => {
            keys::replicate(ctx, if add { c"SADD" } else { c"SREM" }, &[&set, &key]);
            Ok(())
        }
        Owed::Orphans { db, keys: orphans } => {
            let plan =
                engine::with(|s| plan::purge(&s.index, db, &p, &[], &orphans, TagSets::Remove))
                    .unwrap_or_default();
            apply::apply(ctx, &plan, Cause::Rule).map(drop)
        }
        Owed::Fire { db, source, tags } => fire(ctx, db, &source, tags),
        Owed::Rehome { db } => super::rules::rehome(ctx, db),
        Owed::Disown { db } => super::rules::disown(ctx, db),
    };
    if let Err(e) = done {
        super::log::warning(ctx, &format!("tagcache: index upkeep failed: {e}"));
    }
}

/// A rule fired by a change of `source`: each rule's tags are purged, on
/// every master, with its owner's permissions, as any purge is (sliced
/// above `purge-atomic-max`); keys the owner may not delete stay, tagged,
/// and are counted. The source key is spared.
fn fire(ctx: &Context, db: Db, source: &[u8], fired: Vec<Fired>) -> Result<()> {
    // Rules of one owner and grace fired by one change purge together: one
    // event.
    type Group = (Option<Vec<u8>>, Option<i64>);
    let mut groups: Vec<(Group, Vec<Vec<u8>>)> = Vec::new();
    for (tag, owner, grace) in fired {
        let group = (owner, grace);
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, list)) => list.push(tag),
            None => groups.push((group, vec![tag])),
        }
    }
    let now = keys::now_ms();
    for ((owner, grace), tags) in groups {
        let req = Request {
            db,
            tags,
            all: false,
            soft: grace.map(|grace_ms| Soft {
                grace_ms,
                until: now.saturating_add(grace_ms),
            }),
            user: owner,
            rule_source: Some(source.to_vec()),
            reply_to: ReplyTo::Nobody,
            publish: true,
        };
        let caller = req.user.as_deref().map(Caller::named);
        if let Some(done) = purge_everywhere(ctx, req.clone(), caller.as_ref()) {
            stats::bump(&stats::RULE_FIRINGS);
            done?;
            continue;
        }
        let event = req.clone();
        if let super::purge::Here::Done { deleted, .. } =
            super::purge::here(ctx, req, caller.as_ref(), super::purge::Wait::Detached)?
        {
            super::purge::published(ctx, &event, deleted);
        }
    }
    Ok(())
}

/// Arranges for the owed writes to be paid soon: in a post-notification job
/// where the server has them (Redis 7.2+, Valkey), else in a 0 ms timer;
/// and in any case before the server sleeps, and before the next module
/// command acts.
pub fn settle_later(ctx: &Context) {
    if ctx.add_post_notification_job(settle) == Ok(redis_module::Status::Ok) {
        return;
    }
    if !TIMER_ARMED.with(|t| t.replace(true)) {
        ctx.create_timer(std::time::Duration::ZERO, settle_on_timer, ());
    }
}

fn settle_on_timer(ctx: &Context, (): ()) {
    TIMER_ARMED.with(|t| t.set(false));
    settle(ctx);
}

/// Whether the server runs post-notification jobs (Redis 7.2+, Valkey).
pub fn has_post_jobs() -> bool {
    POST_JOBS.with(|p| {
        *p.get_or_init(|| {
            // SAFETY: reading a function pointer of the module API.
            let f = unsafe { redis_module::raw::RedisModule_AddPostNotificationJob };
            f.is_some()
        })
    })
}

/// A rule fired here: every master purges its tags, with the rule owner's
/// permissions, and this master publishes the one event, with the total,
/// once all have answered. `None` when this master is the only one (the
/// caller purges as on a standalone server).
fn purge_everywhere(
    ctx: &Context,
    req: Request,
    caller: Option<&super::acl::Caller>,
) -> Option<crate::engine::error::Result<()>> {
    let source = req.rule_source.clone().filter(|_| config::slotted())?;
    let others = bus::other_masters(ctx);
    if others.is_empty() {
        return None;
    }
    let id = match engine::with(|s| s.gathers.open_purge(None, &req, others.clone())) {
        Ok(id) => id,
        Err(e) => return Some(Err(e)),
    };
    let fields = PurgeAsk::of(id, &req, How::Rule(source)).to_fields();
    bus::ask(ctx, id, &others, kind::PURGE, &fields);
    bus::arm_timeout(ctx, id);
    let reply_to = ReplyTo::Gather(id);
    let local = Request {
        reply_to: reply_to.clone(),
        publish: false,
        ..req
    };
    Some(
        match super::purge::here(ctx, local, caller, super::purge::Wait::Detached) {
            Ok(super::purge::Here::Done { deleted }) => {
                bus::answer(ctx, &reply_to, Ok(Gathered::Count(deleted)));
                Ok(())
            }
            Ok(super::purge::Here::Sliced { .. }) => Ok(()),
            Err(e) => {
                bus::answer(ctx, &reply_to, Err(e.to_string()));
                Ok(())
            }
        },
    )
}
