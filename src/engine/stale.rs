//! Stale-while-revalidate: which keys are stale. A soft invalidation marks
//! a key stale (it stays readable, and expires at the latest when its grace
//! ends); `TAG.GETL` then hands the stale value to everyone and a refresh
//! lease to one caller. The state is data, kept by the server in a hash per
//! database (`tagcache:stale`, field = key, value = the time the key is
//! fresh until, `0` for a key marked stale), so replicas, RDB, AOF and
//! failover keep it. This is the module's mirror of which keys that hash
//! names, so that a write of any other key costs one lookup: memory
//! proportional to the keys now stale.

use super::index::Db;
use std::collections::{HashMap, HashSet};

/// The hash of a database's stale state (in a cluster, one per slot:
/// `tagcache:stale{<slot>}`).
pub const STALE_HASH: &[u8] = b"tagcache:stale";

/// Whether a key fresh until `fresh_until` (unix ms; 0: marked stale) is
/// stale at `now_ms`.
pub fn is_stale(fresh_until: i64, now_ms: i64) -> bool {
    fresh_until <= now_ms
}

/// The stored value of a key's stale state.
pub fn parse(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[derive(Default)]
pub struct Stale {
    keys: HashMap<Db, HashSet<Vec<u8>>>,
}

impl Stale {
    pub fn mark(&mut self, db: Db, key: &[u8]) {
        self.keys.entry(db).or_default().insert(key.to_vec());
    }

    /// The key carries no stale state now; whether it did.
    pub fn clear(&mut self, db: Db, key: &[u8]) -> bool {
        let Some(set) = self.keys.get_mut(&db) else {
            return false;
        };
        let was = set.remove(key);
        if set.is_empty() {
            self.keys.remove(&db);
        }
        was
    }

    pub fn contains(&self, db: Db, key: &[u8]) -> bool {
        self.keys.get(&db).is_some_and(|s| s.contains(key))
    }

    /// The database's state, as its hash now names it.
    pub fn set_db(&mut self, db: Db, keys: impl IntoIterator<Item = Vec<u8>>) {
        let set: HashSet<Vec<u8>> = keys.into_iter().collect();
        if set.is_empty() {
            self.keys.remove(&db);
        } else {
            self.keys.insert(db, set);
        }
    }

    /// The keys of `db` that `held` says one hash holds are now `keys`
    /// (that hash was written by a client).
    pub fn replace_where(
        &mut self,
        db: Db,
        held: impl Fn(&[u8]) -> bool,
        keys: impl IntoIterator<Item = Vec<u8>>,
    ) {
        let set = self.keys.entry(db).or_default();
        set.retain(|k| !held(k));
        set.extend(keys);
        if set.is_empty() {
            self.keys.remove(&db);
        }
    }

    pub fn flush(&mut self, db: Option<Db>) {
        match db {
            Some(db) => drop(self.keys.remove(&db)),
            None => self.keys.clear(),
        }
    }

    pub fn swap(&mut self, a: Db, b: Db) {
        super::index::swap_dbs(&mut self.keys, a, b);
    }

    pub fn len(&self) -> usize {
        self.keys.values().map(HashSet::len).sum()
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_follow_databases_and_keep_no_memory_once_cleared() {
        let mut s = Stale::default();
        s.mark(0, b"k");
        s.mark(1, b"j");
        s.swap(0, 1);
        assert!(s.contains(1, b"k") && s.contains(0, b"j"));
        assert!(s.clear(1, b"k"));
        assert!(!s.clear(1, b"k"));
        assert_eq!(s.len(), 1);
        s.flush(None);
        assert_eq!(s.len(), 0);
        assert!(s.keys.is_empty());
    }

    #[test]
    fn stale_times() {
        assert!(is_stale(0, 5));
        assert!(is_stale(5, 5));
        assert!(!is_stale(6, 5));
        assert_eq!(parse(b"123"), Some(123));
        assert_eq!(parse(b"x"), None);
    }
}
