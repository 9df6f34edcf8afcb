//! TAG.SET, TAG.ADD, TAG.REM, TAG.PURGE, TAG.MEMBERS, TAG.CARD, TAG.TAGS.
//!
//! Replication: TAG.SET and TAG.PURGE replicate their effect (plain SET,
//! SREM, DEL, and TAG.ADD so a replica's reverse index follows), never the
//! command itself, because their outcome depends on the clock and on the
//! index; TAG.ADD and TAG.REM are deterministic and replicate verbatim.

use crate::args::{self, Condition};
use crate::commands::lease;
use crate::config;
use crate::error::{Error, Result};
use crate::events::{self, Event, Op};
use crate::stats;
use crate::store::{self, argv, prefixed, with_index, Access, Caller, Mode, OwnWrites};
use redis_module::{Context, RedisResult, RedisString, RedisValue};

fn bulk_list(items: Vec<Vec<u8>>) -> RedisValue {
    RedisValue::Array(items.into_iter().map(RedisValue::StringBuffer).collect())
}

pub fn tag_set(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let a = args::parse_tag_set(&argv)?;
    let prefix = config::tag_prefix();
    let new_sets = prefixed(&prefix, &a.tags);
    if new_sets.iter().any(|s| s.as_slice() == a.key) {
        return Err(Error::Invalid("a key cannot carry the tag whose index it is".into()).into());
    }
    let db = store::selected_db(ctx);
    // Reading the key first lets a lazily expired key clean its index now.
    let exists = store::exists(ctx, a.key);
    let old_tags = with_index(|ix| ix.tags(db, a.key));
    let dropped: Vec<Vec<u8>> = old_tags
        .iter()
        .filter(|t| !a.tags.contains(&t.as_slice()))
        .cloned()
        .collect();
    let dropped_sets = prefixed(&prefix, &dropped);

    let mut all_keys: Vec<&[u8]> = vec![a.key];
    all_keys.extend(new_sets.iter().chain(&dropped_sets).map(Vec::as_slice));
    store::ensure_same_slot(ctx, &all_keys)?;
    let caller = Caller::of(ctx);
    caller.check(ctx, a.key, Access::Write)?;
    caller.check_all(ctx, &new_sets, Access::Write)?;
    caller.check_all(ctx, &dropped_sets, Access::Write)?;
    store::ensure_sets(ctx, &new_sets)?;
    let now = store::now_ms();
    let deadline = a.expiry.deadline(now, "tag.set")?;
    match a.condition {
        Condition::IfAbsent if exists => return Ok(RedisValue::Null),
        Condition::IfPresent if !exists => return Ok(RedisValue::Null),
        _ => {}
    }
    if let Some(token) = a.lease {
        if !lease::redeem(db, a.key, token, &a.tags)? {
            stats::bump(&stats::LEASES_REJECTED);
            return Ok(RedisValue::Null);
        }
    }

    let _own = OwnWrites::begin();
    if deadline.is_some_and(|d| d <= now) {
        // Like SET with a past EXAT: the key ends up deleted, and so do its tags.
        let all_old = prefixed(&prefix, &old_tags);
        for set in &all_old {
            store::call(ctx, Mode::Replicated, "SREM", &[set, a.key])?;
        }
        store::call(ctx, Mode::Replicated, "DEL", &[a.key])?;
        with_index(|ix| ix.remove_key(db, a.key));
        lease::key_written(db, a.key, true);
        drop(_own);
        crate::link::drain(ctx);
        return Ok(RedisValue::SimpleStringStatic("OK"));
    }

    // Replicated as SET first; the tag changes follow as SREM and TAG.ADD.
    store::set_string(
        ctx,
        a.key,
        a.value,
        deadline,
        a.expiry == args::Expiry::Keep,
    )?;
    for set in &dropped_sets {
        store::call(ctx, Mode::Local, "SREM", &[set, a.key])?;
    }
    for set in &new_sets {
        store::call(ctx, Mode::Local, "SADD", &[set, a.key])?;
    }
    with_index(|ix| ix.replace(db, a.key, &a.tags));

    for set in &dropped_sets {
        ctx.replicate("SREM", &[set.as_slice(), a.key][..]);
    }
    let mut add_args: Vec<&[u8]> = vec![a.key];
    add_args.extend(a.tags.iter().copied());
    ctx.replicate("TAG.ADD", add_args.as_slice());

    stats::bump(&stats::TAG_WRITES);
    lease::key_written(db, a.key, false);
    drop(_own);
    crate::link::drain(ctx);
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// The index sets of `tags`, which must share the key's slot in a cluster.
fn key_tag_sets(ctx: &Context, key: &[u8], tags: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
    let sets = prefixed(&config::tag_prefix(), tags);
    let mut all: Vec<&[u8]> = vec![key];
    all.extend(sets.iter().map(Vec::as_slice));
    store::ensure_same_slot(ctx, &all)?;
    Ok(sets)
}

pub fn tag_add(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let (key, tags) = args::parse_key_tags(&argv, "tag.add")?;
    let sets = key_tag_sets(ctx, key, &tags)?;
    if sets.iter().any(|s| s.as_slice() == key) {
        return Err(Error::Invalid("a key cannot carry the tag whose index it is".into()).into());
    }
    let caller = Caller::of(ctx);
    caller.check(ctx, key, Access::Read)?;
    caller.check_all(ctx, &sets, Access::Write)?;
    store::ensure_sets(ctx, &sets)?;
    // The master checked existence; a replica (or an AOF replay) may see
    // the key already logically expired and must apply the write anyway.
    if !store::from_master(ctx) && !store::exists(ctx, key) {
        return Err(Error::NoSuchKey.into());
    }
    let db = store::selected_db(ctx);
    let _own = OwnWrites::begin();
    let mut added = 0;
    for set in &sets {
        added += store::call(ctx, Mode::Local, "SADD", &[set, key])?.int();
    }
    with_index(|ix| ix.add(db, key, &tags));
    ctx.replicate_verbatim();
    Ok(RedisValue::Integer(added))
}

pub fn tag_rem(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let (key, tags) = args::parse_key_tags(&argv, "tag.rem")?;
    let sets = key_tag_sets(ctx, key, &tags)?;
    let caller = Caller::of(ctx);
    caller.check_all(ctx, &sets, Access::Write)?;
    store::ensure_sets(ctx, &sets)?;
    let db = store::selected_db(ctx);
    let _own = OwnWrites::begin();
    let mut removed = 0;
    for set in &sets {
        removed += store::call(ctx, Mode::Local, "SREM", &[set, key])?.int();
    }
    with_index(|ix| ix.remove_tags(db, key, &tags));
    ctx.replicate_verbatim();
    Ok(RedisValue::Integer(removed))
}

/// Deletes every key carrying any of `tags` and the tags' index sets, after
/// checking that the caller may delete each of them. Returns the number of
/// keys deleted. Shared by TAG.PURGE and rule firings (`caller` is `None`
/// for a rule, which acts for the server rather than a user).
///
/// `keep` is the key whose change fired a rule: it survives the purge and
/// keeps its tags.
pub fn purge(
    ctx: &Context,
    tags: &[Vec<u8>],
    caller: Option<&Caller>,
    keep: Option<&[u8]>,
) -> Result<i64> {
    let sets = prefixed(&config::tag_prefix(), tags);
    store::ensure_same_slot(ctx, &sets)?;
    if let Some(c) = caller {
        c.check_all(ctx, &sets, Access::Delete)?;
    }
    store::ensure_sets(ctx, &sets)?;
    let mut members: Vec<Vec<u8>> = Vec::new();
    let mut kept_in: Vec<&[u8]> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let found = store::smembers(ctx, set)?;
        if i == 0 {
            members = found;
        } else {
            // Several tags may share keys: each key once.
            let mut seen: std::collections::HashSet<Vec<u8>> = members.iter().cloned().collect();
            members.extend(found.into_iter().filter(|m| seen.insert(m.clone())));
        }
    }
    if let Some(k) = keep {
        for set in &sets {
            if store::call(ctx, Mode::Local, "SISMEMBER", &[set, k])?.int() == 1 {
                kept_in.push(set);
            }
        }
        members.retain(|m| m.as_slice() != k);
    }
    if let Some(c) = caller {
        c.check_all(ctx, &members, Access::Delete)?;
    }
    let db = store::selected_db(ctx);
    let _own = OwnWrites::begin();
    // A purged key leaves the other tags it carried too.
    // Grouped by set: one SREM per other tag, however many keys share it.
    let mut other: std::collections::BTreeMap<Vec<u8>, Vec<&[u8]>> = Default::default();
    with_index(|ix| {
        for m in &members {
            for t in ix.remove_key_except(db, m, tags) {
                other.entry(t).or_default().push(m.as_slice());
            }
        }
    });
    let prefix = config::tag_prefix();
    for (t, keys) in &other {
        let set = [&prefix[..], t].concat();
        let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
        args.push(&set);
        args.extend(keys.iter().copied());
        store::call(ctx, Mode::Replicated, "SREM", &args)?;
    }
    let mut deleted = 0;
    for chunk in members.chunks(1024) {
        let keys: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        deleted += store::call(ctx, Mode::Replicated, "DEL", &keys)?.int();
    }
    let set_keys: Vec<&[u8]> = sets.iter().map(Vec::as_slice).collect();
    if !set_keys.is_empty() {
        store::call(ctx, Mode::Replicated, "DEL", &set_keys)?;
    }
    if let Some(k) = keep {
        for set in kept_in {
            store::call(ctx, Mode::Replicated, "SADD", &[set, k])?;
        }
    }
    if lease::watching() {
        for m in &members {
            lease::key_written(db, m, true);
        }
    }
    lease::tags_purged(tags);
    stats::bump(&stats::PURGES);
    stats::add(&stats::KEYS_PURGED, deleted.max(0) as u64);
    Ok(deleted)
}

pub fn tag_purge(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    if argv.is_empty() {
        return Err(Error::WrongArity("tag.purge").into());
    }
    let tags: Vec<Vec<u8>> = args::distinct_tags(&argv)?
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let caller = Caller::of(ctx);
    let deleted = purge(ctx, &tags, Some(&caller), None)?;
    events::emit(
        ctx,
        &Event {
            op: Op::Purge,
            tags: &tags,
            scopes: &[],
            keys: deleted,
            source: None,
        },
    );
    crate::link::drain(ctx);
    Ok(RedisValue::Integer(deleted))
}

/// Members of the tag's set that exist now.
fn live_members(ctx: &Context, tag: &[u8]) -> Result<Vec<Vec<u8>>> {
    if tag.is_empty() {
        return Err(Error::EmptyTag);
    }
    let set = [&config::tag_prefix()[..], tag].concat();
    Caller::of(ctx).check(ctx, &set, Access::Read)?;
    store::ensure_sets(ctx, std::slice::from_ref(&set))?;
    let members = store::smembers(ctx, &set)?;
    Ok(members
        .into_iter()
        .filter(|m| store::exists(ctx, m))
        .collect())
}

fn one_arg<'a>(argv: &[&'a [u8]], cmd: &'static str) -> Result<&'a [u8]> {
    match argv {
        [one] => Ok(one),
        _ => Err(Error::WrongArity(cmd)),
    }
}

pub fn tag_members(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let tag = one_arg(&argv, "tag.members")?;
    Ok(bulk_list(live_members(ctx, tag)?))
}

pub fn tag_card(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let tag = one_arg(&argv, "tag.card")?;
    Ok(RedisValue::Integer(live_members(ctx, tag)?.len() as i64))
}

pub fn tag_tags(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let key = one_arg(&argv, "tag.tags")?;
    let caller = Caller::of(ctx);
    caller.check(ctx, key, Access::Read)?;
    if !store::exists(ctx, key) {
        return Ok(RedisValue::Array(Vec::new()));
    }
    let db = store::selected_db(ctx);
    let prefix = config::tag_prefix();
    let mut tags = Vec::new();
    // The index may remember a set that a client deleted; the set decides.
    for t in with_index(|ix| ix.tags(db, key)) {
        let set = [&prefix[..], &t].concat();
        if store::key_type(ctx, &set) == redis_module::KeyType::Set
            && store::call(ctx, Mode::Local, "SISMEMBER", &[&set, key])?.int() == 1
        {
            tags.push(t);
        }
    }
    Ok(bulk_list(tags))
}
