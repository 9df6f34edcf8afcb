//! Applying plans: check every key of a plan (slot, ACL, type), then make
//! its writes, replicate each as written (absolute keys, absolute times),
//! and mirror each into the index. Also pays the writes the keyspace owes
//! the tag sets (`Owed`), which every module write command does before and
//! after it acts, so no command reads or leaves work pending.

use super::acl::Caller;
use super::blocked;
use super::config;
use super::guards::Applying;
use super::keys::{self, Mode};
use crate::engine::error::Result;
use crate::engine::index::{Db, Scope};
use crate::engine::plan::{self, Access, Bytes, Kind, Plan, Prefix, Write};
use crate::engine::{self};
use redis_module::Context;

/// Checks the whole plan before anything is written: every key in the
/// command's slot (in a cluster), allowed to the caller (`None`: the
/// server itself, or the master link), and of the right type.
pub fn check(ctx: &Context, caller: Option<&Caller>, plan: &Plan) -> Result<()> {
    let checks = plan.checks();
    let p = config::layout();
    if super::config::slotted() && !plan.local {
        let keys: Vec<&[u8]> = checks.iter().map(|c| c.0).collect();
        keys::ensure_same_slot(&keys)?;
        ensure_here(ctx, &p, &checks)?;
    }
    if let Some(c) = caller.filter(|c| !c.all_keys(ctx)) {
        for (key, access, kind) in &checks {
            // The key the command declares was checked by the server; the
            // module's own writes of a stale hash (its record of its keys'
            // state) are not the caller's. Deleting or expiring one is.
            let own = *access == Access::Write && *kind == Kind::Hash && p.is_stale_hash(key);
            if (*access == Access::Write && plan.declared == Some(*key)) || own {
                continue;
            }
            c.check(ctx, key, *access)?;
        }
    }
    let db = keys::selected_db(ctx);
    for (key, _, kind) in &checks {
        // A tag set the index knows members of is a set: the index follows
        // every change of a tag set's type as it happens. (A cluster's tag
        // has several sets: each is opened.)
        let known_set = *kind == Kind::Set
            && match p.index_of(key) {
                Some((tag, Scope::All)) => {
                    engine::with(|s| s.index.has_members(db, tag)).unwrap_or(false)
                }
                // In a cluster: the module's set of the slot of a key the
                // index says carries the tag, where no client-written set
                // shares the slot (so that set is what holds it).
                Some((tag, Scope::Slot(slot))) => plan.declared.is_some_and(|k| {
                    crate::engine::slot::slot(k) == slot
                        && crate::engine::slot::slot(&p.set(tag)) != slot
                        && engine::with(|s| s.index.has(db, k, tag)).unwrap_or(false)
                }),
                None => false,
            };
        if !known_set {
            keys::ensure_kind(ctx, key, *kind)?;
        }
    }
    Ok(())
}

/// While the command's slot moves by `MIGRATE` (leaving this node or
/// arriving), the index sets and stale hashes it would write must be here:
/// one that left ahead of its keys, or has not arrived yet, is refused as
/// the server refuses a command whose keys are split between the two
/// nodes. (Writing one here would leave the other node's copy wrong, or
/// make a key the `MIGRATE` of the slot's own copy collides with.)
fn ensure_here(ctx: &Context, p: &Prefix, checks: &plan::Checks<'_>) -> Result<()> {
    let Some(first) = checks.first() else {
        return Ok(());
    };
    if !keys::may_write(ctx) || !super::moves::slot_moving(ctx, first.0) {
        return Ok(());
    }
    let away = checks.iter().any(|(key, access, _)| {
        *access == Access::Write
            && (p.index_of(key).is_some() || p.is_stale_hash(key))
            && !keys::exists(ctx, key)
    });
    if away {
        return Err(crate::engine::error::Error::TryAgain(SPLIT));
    }
    Ok(())
}

/// Why a write is refused while its slot moves.
pub const SPLIT: &str = "Multiple keys request during rehashing of slot";

/// Why a plan is applied: a rule's own purge fires no further rules.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Command,
    Rule,
}

/// Each write's integer reply, in order.
pub type Replies = smallvec::SmallVec<[i64; 4]>;

/// Makes the plan's writes in the selected database, in order; returns
/// each write's integer reply (keys deleted, members added…). Each write is
/// replicated as made, or the whole plan as its one `replicate_as` command.
pub fn apply(ctx: &Context, plan: &Plan, cause: Cause) -> Result<Replies> {
    apply_from(ctx, plan, cause, &keys::Own::none())
}

/// As `apply`, for a plan that borrows from the command's arguments `own`:
/// a value written is stored as the argument string itself, not a copy.
pub fn apply_from(ctx: &Context, plan: &Plan, cause: Cause, own: &keys::Own) -> Result<Replies> {
    let db = keys::selected_db(ctx);
    let p = config::layout();
    let mode = if plan.as_apply {
        Mode::Local
    } else {
        Mode::Replicated
    };
    let mut replies = Replies::with_capacity(plan.writes.len());
    // The index mirrors every tag set exactly on a master that is not
    // loading, so it can tell which set writes would change nothing. (In a
    // cluster a member may be held by a client-written set of its slot
    // rather than the module's: it carries the tag either way, as with one
    // set on a standalone server.)
    let known = keys::may_write(ctx).then_some((db, &p));
    // Where the index knows, a key leaving one set for another moves in one
    // call; the addition is then made (its reply is the move's).
    // Not while slots move: a command naming two keys is refused there when
    // one of them is not on this node yet.
    let mut moves = match known {
        Some(_) => plan::set_moves(&plan.writes, |set, m| membership(known, set, m)),
        None => Default::default(),
    };
    if !moves.is_empty() && config::slotted() && super::moves::any_moving(ctx) {
        moves.clear();
    }
    let mut moved: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
    let _applying = Applying::begin();
    for (i, w) in plan.writes.iter().enumerate() {
        let reply = match (moves.iter().find(|m| m.0 == i), w) {
            (Some(&(_, j)), Write::SetRem { set, members }) => {
                let to = match plan.writes.get(j) {
                    Some(Write::SetAdd { set: to, .. }) => to,
                    _ => set,
                };
                let member = members.first().map(AsRef::as_ref).unwrap_or_default();
                match keys::call3(ctx, mode, c"SMOVE", set, to, member) {
                    Ok(n) => {
                        if n == 1 {
                            moved.push(j);
                        }
                        n
                    }
                    // A refused call changed nothing: the two writes are
                    // made one by one.
                    Err(_) => write(ctx, w, mode, known, own)?,
                }
            }
            _ if moved.contains(&i) => 1,
            _ => write(ctx, w, mode, known, own)?,
        };
        replies.push(reply);
        // A name marked stale that is no key records nothing.
        if let (Write::MarkStale { .. }, 0) = (w, reply) {
            continue;
        }
        let wakes = engine::with(|s| s.mirror(db, &p, w, plan.as_apply, cause == Cause::Command));
        blocked::wake(ctx, wakes.unwrap_or_default());
    }
    let mut numbers = Default::default();
    if let Some(args) = plan.apply_form(&mut numbers) {
        keys::replicate_from(ctx, c"TAG.APPLY", &args, own);
    }
    for w in &plan.writes {
        if let Write::SetString { value, .. } = w {
            keys::trim_stored(own, value);
        }
    }
    Ok(replies)
}

/// Whether the index says `member` is in the tag set `set`; `None` when it
/// cannot tell (not a tag set, or a replica/loading). Only a yes is sure
/// in the middle of a plan: the index adds a member after the set does,
/// but forgets a deleted key before the plan takes it out of its sets.
fn membership(known: Option<(Db, &Prefix)>, set: &[u8], member: &[u8]) -> Option<bool> {
    let (db, p) = known?;
    let tag = p.tag_of(set)?;
    engine::with(|s| s.index.has(db, member, tag)).ok()
}

fn write(
    ctx: &Context,
    w: &Write,
    mode: Mode,
    known: Option<(Db, &Prefix)>,
    own: &keys::Own,
) -> Result<i64> {
    let reply = match w {
        Write::SetString {
            key,
            value,
            deadline,
            keep_ttl,
        } => {
            keys::write_string(ctx, key, value, *deadline, *keep_ttl, own)?;
            if mode == Mode::Replicated {
                keys::replicate_set(ctx, key, value, *deadline, *keep_ttl);
            }
            1
        }
        Write::SetAdd { set, members } => match members.as_slice() {
            // A key written again with the tags it had: its SADDs would add
            // nothing (and fire no event), so they are not made. This is
            // the common refill, and an RM_Call is most of a TAG.SET's cost.
            [one] if membership(known, set, one) == Some(true) => 0,
            [one] => keys::call2(ctx, mode, c"SADD", set, one)?,
            _ => call_list(ctx, mode, "SADD", set, members)?,
        },
        Write::SetRem { set, members } => match members.as_slice() {
            [one] => keys::call2(ctx, mode, c"SREM", set, one)?,
            _ => call_list(ctx, mode, "SREM", set, members)?,
        },
        Write::Del { keys } => keys::delete(ctx, mode, keys)?,
        Write::Unlink { keys } => delete(ctx, mode, "UNLINK", keys)?,
        Write::HashSet { key, field, value } => {
            keys::call(ctx, mode, "HSET", &[key, field, value])?.int()
        }
        Write::HashDel { key, field } => keys::call(ctx, mode, "HDEL", &[key, field])?.int(),
        Write::MarkStale { key, hash, until } => {
            i64::from(keys::mark_stale(ctx, key, hash, *until, mode)?)
        }
    };
    Ok(reply)
}

/// `DEL`/`UNLINK` of `keys`: one call, or in a cluster one per slot (a
/// call may not span slots there).
fn delete(ctx: &Context, mode: Mode, cmd: &str, keys: &[Bytes]) -> Result<i64> {
    if !config::slotted() {
        return match keys.split_first() {
            Some((first, rest)) => call_list(ctx, mode, cmd, first, rest),
            None => Ok(0),
        };
    }
    let mut n = 0;
    for group in crate::engine::slot::by_slot(keys, |k| k.as_ref()).values() {
        if let Some((first, rest)) = group.split_first() {
            n += call_list(ctx, mode, cmd, first, rest)?;
        }
    }
    Ok(n)
}

fn call_list<A: AsRef<[u8]>>(
    ctx: &Context,
    mode: Mode,
    cmd: &str,
    first: &[u8],
    rest: &[A],
) -> Result<i64> {
    let mut args: Vec<&[u8]> = Vec::with_capacity(rest.len() + 1);
    args.push(first);
    args.extend(rest.iter().map(|a| a.as_ref()));
    Ok(keys::call(ctx, mode, cmd, &args)?.int())
}

/// Keys a purge plan deleted: the replies of its deletions of members
/// (not of the tag sets themselves).
pub fn deleted_count(plan: &Plan, replies: &[i64]) -> i64 {
    plan.counted.iter().filter_map(|&i| replies.get(i)).sum()
}

/// The keys that carry `tag`, as the caller may learn them: a member it may
/// read is listed only if it exists (reading it is allowed); a member it may
/// not read is listed as the set names it, so the answer does not depend on
/// whether that key exists.
pub fn visible_members(ctx: &Context, tag: &[u8], caller: Option<&Caller>) -> Result<Vec<Vec<u8>>> {
    if tag.is_empty() {
        return Err(crate::engine::error::Error::EmptyTag);
    }
    super::moves::read_arrived_now(ctx);
    let p = config::layout();
    let db = keys::selected_db(ctx);
    let tags = [tag.to_vec()];
    let (members, sets) = engine::with(|s| {
        let members = s.index.members(db, tag);
        let sets = plan::index_sets(&s.index, db, &p, &tags, &members);
        (members, sets)
    })
    .unwrap_or_default();
    for set in &sets {
        if let Some(c) = caller {
            c.check(ctx, set, Access::Read)?;
        }
        keys::ensure_kind(ctx, set, Kind::Set)?;
    }
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let readable = caller.is_none_or(|c| c.check(ctx, &m, Access::Read).is_ok());
        if !readable || keys::exists(ctx, &m) {
            out.push(m);
        }
    }
    Ok(out)
}
