//! Builds the index and the rules from the dataset: when a dataset has been
//! loaded (RDB, AOF, a full sync, `DEBUG RELOAD`, an asynchronous load) and
//! when the module is loaded into a running server. On a master, members
//! whose key did not survive (it expired while the server was down) are
//! then taken out of their sets.

use super::config;
use super::keys::{self, Mode};
use crate::engine::index::Db;
use crate::engine::plan::SLOT_INDEX;
use crate::engine::{self, Owed};
use redis_module::Context;

fn databases(ctx: &Context) -> Db {
    let reply = keys::call(ctx, Mode::Local, "CONFIG", &[b"GET", b"databases"]);
    reply
        .ok()
        .and_then(|r| r.into_bytes_list().get(1).cloned())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(16)
}

pub fn rebuild(ctx: &Context) {
    super::update(|s| s.flush(None));
    let p = config::layout();
    let home = keys::selected_db(ctx);
    let writes = keys::may_write(ctx);
    for db in 0..databases(ctx) {
        keys::select_db(ctx, db);
        super::rules::reload_rules(ctx, db, true);
        load_stale(ctx, db);
        let mut sets = keys::keys_under(ctx, p.tags, b"set");
        if p.slotted {
            sets.extend(keys::keys_under(ctx, SLOT_INDEX, b"set"));
        }
        for set in sets {
            read_index_set(ctx, db, &set, writes, &Default::default(), None);
        }
    }
    keys::select_db(ctx, home);
    if engine::with(|s| s.owes()).unwrap_or(false) {
        super::owed::settle_later(ctx);
    }
}

/// The names of a slot's keys, as just listed: asking them whether a key
/// exists saves as many calls into the server.
pub type Names<'a> = std::collections::HashSet<&'a [u8], foldhash::fast::RandomState>;

/// The members of the index set `set` (a set, in the selected database
/// `db`) into the index; a member that is no key (it expired while the
/// server was down, or never came) is owed its removal where `writes`. A
/// member in `settled` (written since the set was made) carries the tag
/// only if the index says so; otherwise it too is owed its removal. Which
/// keys exist: those in `present` if given, else the server's answer.
pub fn read_index_set(
    ctx: &Context,
    db: Db,
    set: &[u8],
    writes: bool,
    settled: &std::collections::HashSet<Vec<u8>>,
    present: Option<&Names<'_>>,
) {
    let exists = |k: &[u8]| match present {
        None => keys::exists(ctx, k),
        Some(names) => names.contains(k),
    };
    let Some((tag, scope)) = config::layout().index_of(set).map(|(t, s)| (t.to_vec(), s)) else {
        return;
    };
    // The members end to end in one buffer (a slot's read at the end of a
    // resharding takes every member of its sets), read whole before any is
    // asked about: asking may expire a key, and its removal from this set
    // must not come in the middle of the scan.
    let mut members = keys::Packed::default();
    keys::each_member(ctx, set, |m| members.push(m));
    let (mut live, mut gone, mut rewritten) = (Vec::new(), Vec::new(), Vec::new());
    for member in members.iter() {
        // A cluster's set holds its own slot's keys: others named in it
        // are left alone.
        if !scope.holds(member) {
            continue;
        }
        if settled.contains(member) {
            rewritten.push(member.to_vec());
        } else if exists(member) {
            live.push(member);
        } else if writes {
            gone.push(member.to_vec());
        }
    }
    super::update(|s| {
        s.index.add_many(db, &tag, &live);
        if writes {
            gone.extend(rewritten.into_iter().filter(|k| !s.index.has(db, k, &tag)));
        }
        for key in gone {
            let seq = s.next_seq();
            s.owed.push_back(Owed::Untag {
                db,
                tag: tag.clone(),
                key,
                seq,
                in_exec: None,
            });
        }
    });
}

/// The stale state of the selected database `db`, read from its stale
/// hashes. On a master, a field naming a key that no longer exists (it
/// expired while the server was down) is owed its removal.
pub fn load_stale(ctx: &Context, db: Db) {
    let p = config::layout();
    let writes = keys::may_write(ctx);
    let mut live = Vec::new();
    for hash in keys::keys_under(ctx, crate::engine::stale::STALE_HASH, b"hash") {
        if !p.is_stale_hash(&hash) {
            continue;
        }
        for key in keys::hash_fields(ctx, &hash) {
            if keys::exists(ctx, &key) {
                live.push(key);
            } else if writes {
                super::update(|s| s.owed.push_back(Owed::Fresh { db, key }));
            }
        }
    }
    super::update(|s| s.stale.set_db(db, live));
}

/// One stale hash of `db`, written by a client: the keys it names are
/// stale (the hash has the last word; one that is no key is fresh again
/// when it is first written).
///
/// With `present` (a master reading a slot that arrived), a field naming no
/// key of the slot is owed its removal instead.
pub fn load_stale_hash(ctx: &Context, db: Db, hash: &[u8], present: Option<&Names<'_>>) {
    let p = config::layout();
    let mut fields = keys::hash_fields(ctx, hash);
    let slot = crate::engine::slot::slot(hash);
    if let Some(names) = present {
        let (live, gone): (Vec<_>, Vec<_>) = fields
            .into_iter()
            .partition(|k| names.contains(k.as_slice()));
        fields = live;
        super::update(|s| {
            s.owed
                .extend(gone.into_iter().map(|key| Owed::Fresh { db, key }))
        });
    }
    super::update(|s| {
        s.stale.replace_where(
            db,
            |k| !p.slotted || crate::engine::slot::slot(k) == slot,
            fields,
        )
    });
}

/// Every database's stale state again (this server just became a master:
/// as a replica it kept none, its master's writes being the truth).
pub fn load_all_stale(ctx: &Context) {
    let home = keys::selected_db(ctx);
    for db in 0..databases(ctx) {
        keys::select_db(ctx, db);
        load_stale(ctx, db);
    }
    keys::select_db(ctx, home);
    if engine::with(|s| s.owes()).unwrap_or(false) {
        super::owed::settle_later(ctx);
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    #[test]
    fn glob_escaping() {
        assert_eq!(super::super::keys::glob_literal(b"tag:"), b"tag:*".to_vec());
        assert_eq!(
            super::super::keys::glob_literal(b"a*[b]"),
            b"a\\*\\[b\\]*".to_vec()
        );
    }
}
