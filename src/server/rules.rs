//! Where rules are kept: the hash `tagcache:links` of the database they
//! apply to. In a cluster every master keeps its own copy (each hash must
//! live in a slot its master owns): `tagcache:links{<n>}`, with `{<n>}` one
//! of its slots, and a master holds the union of the copies it has (a
//! resharding may bring it another master's).

use super::apply::{self, Cause};
use super::config;
use super::keys::{self, Mode, Reply};
use crate::engine::error::{Error, Result};
use crate::engine::plan::{Access, Kind, Plan, Write};
use crate::engine::rules::Rule;
use crate::engine::slot;
use redis_module::{Context, KeyType};

pub const LINKS_KEY: &[u8] = b"tagcache:links";
const CLUSTER_LINKS: &[u8] = b"tagcache:links{";

pub fn is_links_key(key: &[u8]) -> bool {
    key == LINKS_KEY || (config::slotted() && key.starts_with(CLUSTER_LINKS))
}

/// The hash this master writes its rules to.
pub fn links_key(ctx: &Context) -> Result<Vec<u8>> {
    if !config::slotted() {
        return Ok(LINKS_KEY.to_vec());
    }
    let first = first_owned_slot(ctx)
        .ok_or_else(|| Error::Invalid("this master serves no slot to keep rules in".into()))?;
    Ok([CLUSTER_LINKS, slot::name_in(first), b"}"].concat())
}

/// The slot this master keeps its rules in, from `CLUSTER NODES` (its own
/// line, flagged `myself`, ends with its slot ranges, and `[slot->-node]`
/// for slots on the move): its last slot not on the move, since a
/// resharding takes a master's slots from the first.
fn first_owned_slot(ctx: &Context) -> Option<u16> {
    let Ok(Reply::Bytes(text)) = keys::call(ctx, Mode::Local, "CLUSTER", &[b"NODES"]) else {
        return None;
    };
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().find(|l| {
        l.split(' ')
            .nth(2)
            .is_some_and(|f| f.split(',').any(|x| x == "myself"))
    })?;
    let fields: Vec<&str> = line.split(' ').skip(8).collect();
    let moving: Vec<u16> = fields
        .iter()
        .filter_map(|f| f.strip_prefix('[')?.split('-').next()?.parse().ok())
        .collect();
    fields
        .iter()
        .filter(|f| !f.starts_with('['))
        .flat_map(|range| {
            let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
            let first = ends.next();
            let last = ends.next().or(first);
            first.zip(last).map(|(a, b)| a..=b).into_iter().flatten()
        })
        .filter(|s| !moving.contains(s))
        .max()
}

/// Writes this master's rules again, in a slot it keeps (its copy left
/// with a slot that moved to another master).
pub fn rehome(ctx: &Context, db: crate::engine::index::Db) -> Result<()> {
    let rules = crate::engine::with(|s| s.vouched.get(&db).cloned())
        .ok()
        .flatten();
    let Some(rules) = rules.filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let key = links_key(ctx)?;
    let mut plan = Plan {
        local: true,
        ..Plan::default()
    };
    plan.check(key.clone(), Access::Write, Kind::Hash);
    for (source, value) in rules {
        plan.write(Write::HashSet {
            key: key.clone().into(),
            field: source.into(),
            value: value.into(),
        });
    }
    apply::check(ctx, None, &plan)?;
    apply::apply(ctx, &plan, Cause::Rule)?;
    reload_rules(ctx, db, false);
    Ok(())
}

/// A client wrote rules of the selected database `db` (any command, a
/// `RESTORE`, a copy arriving with a slot): each rule the module does not
/// vouch for is written again, at once and in place, as owned by nobody,
/// so that what persists says who wrote it (a save in the same pipeline,
/// a reload, a restart, a replica or a failover read the same). The
/// rewrite reaches replicas and the AOF after the client's own write
/// (`Owed::Disown`).
pub fn disown_now(ctx: &Context, db: crate::engine::index::Db) {
    let mut changed = false;
    for key in links_keys(ctx) {
        for (source, value) in read_hash(ctx, &key) {
            let rule = Rule::decode(&value);
            let vouched =
                crate::engine::with(|s| s.vouched_for(db, &source, &value)).unwrap_or(false);
            if vouched || rule.owner.as_deref() == Some(Rule::NOBODY) {
                continue;
            }
            let value = Rule {
                owner: Some(Rule::NOBODY.to_vec()),
                ..rule
            }
            .encode();
            match keys::hash_set_here(ctx, &key, &source, &value) {
                Ok(()) => changed = true,
                Err(e) => super::log::warning(ctx, &format!("tagcache: cannot disown a rule: {e}")),
            }
        }
    }
    if changed {
        super::update(|s| s.owed.push_back(crate::engine::Owed::Disown { db }));
    }
    reload_rules(ctx, db, false);
}

/// Sends replicas and the AOF the rules of `db` owned by nobody, as they
/// now are in the hash (after the client writes that put them there).
pub fn disown(ctx: &Context, db: crate::engine::index::Db) -> Result<()> {
    keys::select_db(ctx, db);
    for key in links_keys(ctx) {
        for (source, value) in read_hash(ctx, &key) {
            if Rule::decode(&value).owner.as_deref() == Some(Rule::NOBODY) {
                keys::replicate(ctx, c"HSET", &[&key, &source, &value]);
            }
        }
    }
    Ok(())
}

/// Every rules hash of the selected database.
pub fn links_keys(ctx: &Context) -> Vec<Vec<u8>> {
    if !config::slotted() {
        return vec![LINKS_KEY.to_vec()];
    }
    let mut out = keys::keys_under(ctx, CLUSTER_LINKS, b"hash");
    out.retain(|k| k.ends_with(b"}"));
    out
}

/// Makes (`Some`: the rule as stored) or removes the rule for `source`
/// on this master, as the module (the caller was checked where the call
/// arrived). Returns how many rules it removed.
pub fn store_here(ctx: &Context, source: &[u8], value: Option<Vec<u8>>) -> Result<i64> {
    let mut plan = Plan {
        local: true,
        ..Plan::default()
    };
    match &value {
        Some(value) => {
            let key = links_key(ctx)?;
            plan.check(key.clone(), Access::Write, Kind::Hash);
            plan.write(Write::HashSet {
                key: key.into(),
                field: source.to_vec().into(),
                value: value.clone().into(),
            });
        }
        None => {
            for key in links_keys(ctx) {
                plan.check(key.clone(), Access::Write, Kind::Hash);
                plan.write(Write::HashDel {
                    key: key.into(),
                    field: source.to_vec().into(),
                });
            }
        }
    }
    apply::check(ctx, None, &plan)?;
    let replies = apply::apply(ctx, &plan, Cause::Command)?;
    let db = keys::selected_db(ctx);
    let removed = value.is_none();
    crate::engine::with(|s| s.vouch(db, source, value))?;
    reload_rules(ctx, db, false);
    Ok(match removed {
        false => 0,
        true => replies.iter().sum::<i64>().min(1),
    })
}

/// The (source prefix, encoded rule) pairs of the selected database.
pub fn read_rules(ctx: &Context) -> Vec<(Vec<u8>, Vec<u8>)> {
    links_keys(ctx)
        .iter()
        .flat_map(|key| read_hash(ctx, key))
        .collect()
}

/// The (field, value) pairs of one rules hash (none if it is not a hash).
fn read_hash(ctx: &Context, key: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    if keys::key_type(ctx, key) != KeyType::Hash {
        return Vec::new();
    }
    let Ok(reply) = keys::call(ctx, Mode::Local, "HGETALL", &[key]) else {
        return Vec::new();
    };
    let flat = reply.into_bytes_list();
    flat.chunks_exact(2)
        .filter_map(|p| match p {
            [field, value] => Some((field.clone(), value.clone())),
            _ => None,
        })
        .collect()
}

/// The rules of `db`, read again from its `tagcache:links` hash.
/// `vouch`: the module itself wrote the hash, or loaded it with the data.
pub fn reload_rules(ctx: &Context, db: crate::engine::index::Db, vouch: bool) {
    let home = keys::selected_db(ctx);
    keys::select_db(ctx, db);
    let pairs = read_rules(ctx);
    keys::select_db(ctx, home);
    super::update(|s| s.set_rules(db, pairs, vouch));
}
