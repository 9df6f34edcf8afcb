//! What the module does, in plain Rust over one `State`: the index, the
//! rules, the lease book, and the writes the keyspace still owes the tag
//! sets. Operations plan (check everything, compute the writes) and return
//! the plan; `server` applies it. Nothing here calls Redis, so `cargo test`
//! reaches all of it.

pub mod cluster;
pub mod entry;
pub mod error;
pub mod events;
pub mod index;
pub mod lease;
pub mod moves;
pub mod notes;
pub mod plan;
pub mod purge;
pub mod rules;
pub mod slab;
pub mod slot;
pub mod stale;
pub mod stats;
pub mod version;

use index::{Db, Index};
use lease::Book;
use rules::Rules;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

/// A blocked client, as the server knows it (an opaque handle here).
pub type Client = usize;

/// A client waiting in `TAG.GETL … WAIT` for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub client: Client,
    /// Unique for the life of the process: a stale timer finds no waiter
    /// even if the server reuses the client handle.
    pub id: u64,
    pub ttl_ms: i64,
}

/// How a waiter is woken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The key was written: reply with its value.
    Value {
        client: Client,
        db: Db,
        key: Vec<u8>,
    },
    /// The key has no lease now: this waiter may take the next one.
    Lease {
        client: Client,
        db: Db,
        key: Vec<u8>,
        ttl_ms: i64,
    },
    /// Its `WAIT` ran out: reply `[nil, nil]`.
    Timeout { client: Client },
    /// A sliced purge it waits for ended: reply its count.
    Purged { client: Client, deleted: i64 },
    /// A sliced purge it waits for was refused (nothing deleted).
    Failed { client: Client, error: String },
    /// A cluster-wide `TAG.MEMBERS` gathered its answer.
    Members {
        client: Client,
        members: Vec<Vec<u8>>,
    },
}

impl Wake {
    pub fn client(&self) -> Client {
        match self {
            Wake::Value { client, .. }
            | Wake::Lease { client, .. }
            | Wake::Timeout { client }
            | Wake::Purged { client, .. }
            | Wake::Failed { client, .. }
            | Wake::Members { client, .. } => *client,
        }
    }
}

/// A write the keyspace owes the tag sets: a change made by a client
/// command (a key deleted, overwritten, renamed; a rule's source written)
/// is in the index at once, and its Redis writes follow before any module
/// command acts and before the server sleeps. Each is checked against the
/// index when it runs, so a later command's change wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owed {
    /// `key` no longer carries `tag`: take it out of the set, unless it
    /// carries the tag again by then. `seq` orders it among client notes.
    Untag {
        db: Db,
        tag: Vec<u8>,
        key: Vec<u8>,
        seq: u64,
        /// Owed by a write inside `EXEC`: the last `MULTI` seen then.
        in_exec: Option<u64>,
    },
    /// `key` carries `tag` (renamed in): put it in the set, if it still does.
    Retag { db: Db, tag: Vec<u8>, key: Vec<u8> },
    /// A tag set was evicted: the keys that carried the tag go too, since
    /// no purge could reach them any more.
    Orphans { db: Db, keys: Vec<Vec<u8>> },
    /// A write to `source` fired rules: purge these tags, each with its
    /// rule owner's permissions.
    Fire {
        db: Db,
        source: Vec<u8>,
        tags: Vec<rules::Fired>,
    },
    /// A set write made at once without replication (Redis 7.0, inside a
    /// client command's notification), which replicas and the AOF are owed
    /// after that command: `SADD` (`add`) or `SREM` of `key` in `set`.
    Propagate {
        db: Db,
        add: bool,
        set: Vec<u8>,
        key: Vec<u8>,
    },
    /// `key` was deleted, expired or overwritten while stale: its stale
    /// state leaves the stale hash, unless it is stale again by then.
    Fresh { db: Db, key: Vec<u8> },
    /// In a cluster, the hash holding this master's rules moved to another
    /// master with its slot: the rules are written again in a slot it keeps.
    Rehome { db: Db },
    /// Something other than the module wrote rules into the hash of `db`,
    /// and they were written again, in place, as owned by nobody: replicas
    /// and the AOF are owed that rewrite (after the client's write).
    Disown { db: Db },
}

/// Everything that lives across commands. Owned by the main thread (Redis
/// calls modules from it only), reached through `with`.
#[derive(Default)]
pub struct State {
    /// The tag sets, mirrored both ways (key -> tags, tag -> keys).
    pub index: Index,
    /// Rules per database, loaded from `tagcache:links`.
    pub rules: HashMap<Db, Rules>,
    /// Leases handed out by TAG.GETL (not persisted: a lost lease costs a fill).
    pub leases: Book,
    /// Clients blocked in TAG.GETL, per key, first come first served.
    pub waiters: HashMap<(Db, Vec<u8>), VecDeque<Waiter>>,
    /// Slots moving by atomic slot migration.
    pub moves: moves::Moves,
    /// Writes owed to the tag sets, in order.
    pub owed: VecDeque<Owed>,
    /// Set writes already made that replicas and the AOF are owed
    /// (`Owed::Propagate`), in order; apart from `owed`, which is scanned
    /// after every notification, while these can pile up by the thousand
    /// inside one script.
    pub owed_replication: VecDeque<Owed>,
    /// Members client commands name for tag sets, awaiting their notification.
    pub named: notes::Named,
    /// The source of a RENAME between its `rename_from` and `rename_to`.
    pub renaming: Option<Vec<u8>>,
    /// Last waiter id handed out.
    pub waiter_seq: u64,
    /// Orders owed cleanups and client notes.
    pub seq: u64,
    /// Waiters taken out of their queue and released when the server is
    /// about to sleep, just before it runs their replies, so that no client
    /// command comes between the two.
    pub waking: Vec<Wake>,
    /// Sliced purges in progress.
    pub purges: purge::Purges,
    /// Cluster-wide commands this master waits on other masters for.
    pub gathers: cluster::Gathers,
    /// Keys a client added to a tag set before they existed (`SADD tag:t k`
    /// then `SET k …`): their first write creates them, it replaces nothing.
    pub ghosts: std::collections::HashSet<(Db, Vec<u8>)>,
    /// The rules of each database as the module last wrote or loaded them
    /// (source prefix -> stored value): a rule a client writes into the hash
    /// with a plain command is not vouched for.
    pub vouched: HashMap<Db, HashMap<Vec<u8>, Vec<u8>>>,
    /// The keys the stale hashes name (`stale`).
    pub stale: stale::Stale,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Runs `f` on the state. Redis runs commands, notifications and timers on
/// one thread, and no code calls into Redis while it holds the state, so
/// the borrow cannot clash. If it ever did, `f` is skipped rather than the
/// server aborted, and the failure shows: a command replies the error, and
/// `TAG.INFO` counts it (`state_busy`).
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> error::Result<R> {
    STATE.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => Ok(f(&mut s)),
        Err(_) => {
            stats::bump(&stats::STATE_BUSY);
            Err(error::Error::Internal("module state in use".into()))
        }
    })
}

impl State {
    /// Any lease or waiter exists: then every write of a key matters.
    pub fn watching(&self) -> bool {
        self.leases.outstanding() > 0 || !self.waiters.is_empty()
    }

    pub fn has_rules(&self, db: Db) -> bool {
        !self.rules.is_empty() && self.rules.contains_key(&db)
    }

    /// `key` was written (not deleted): its lease is void, and whoever
    /// waits for it gets the value.
    pub fn key_written(&mut self, db: Db, key: &[u8]) -> Vec<Wake> {
        if !self.watching() {
            return Vec::new();
        }
        self.leases.key_changed(db, key);
        self.waiters
            .remove(&(db, key.to_vec()))
            .into_iter()
            .flatten()
            .map(|w| Wake::Value {
                client: w.client,
                db,
                key: key.to_vec(),
            })
            .collect()
    }

    /// `key` was deleted: a lease on it is void, and the first waiter may
    /// take the next one.
    pub fn key_deleted(&mut self, db: Db, key: &[u8]) -> Vec<Wake> {
        if !self.watching() {
            return Vec::new();
        }
        if self.leases.key_changed(db, key) {
            return self.hand_over(db, key).into_iter().collect();
        }
        Vec::new()
    }

    /// The key has no lease now: its first waiter is handed the next one.
    pub fn hand_over(&mut self, db: Db, key: &[u8]) -> Option<Wake> {
        let k = (db, key.to_vec());
        let q = self.waiters.get_mut(&k)?;
        let w = q.pop_front();
        if q.is_empty() {
            self.waiters.remove(&k);
        }
        w.map(|w| Wake::Lease {
            client: w.client,
            db,
            key: key.to_vec(),
            ttl_ms: w.ttl_ms,
        })
    }

    /// A blocked client left (disconnect, unblock): whether it was still
    /// waiting (then its caller owns its release).
    pub fn forget_waiter(&mut self, client: Client) -> bool {
        let before = self.waking.len();
        self.waking.retain(|w| w.client() != client);
        self.waking.len() != before
            || self.take_waiter(|w| w.client == client).is_some()
            || self.purges.forget_waiter(client)
    }

    /// The waiter `id`'s wait ran out: its wake, if it still waits.
    pub fn wait_over(&mut self, id: u64) -> Option<Wake> {
        self.take_waiter(|w| w.id == id)
            .map(|w| Wake::Timeout { client: w.client })
    }

    fn take_waiter(&mut self, which: impl Fn(&Waiter) -> bool) -> Option<Waiter> {
        let mut found = None;
        self.waiters.retain(|_, q| {
            if found.is_none() {
                if let Some(i) = q.iter().position(&which) {
                    found = q.remove(i);
                }
            }
            !q.is_empty()
        });
        found
    }

    /// Queues a waiter for `key`; returns its id.
    pub fn add_waiter(&mut self, db: Db, key: &[u8], client: Client, ttl_ms: i64) -> u64 {
        self.waiter_seq += 1;
        let id = self.waiter_seq;
        self.waiters
            .entry((db, key.to_vec()))
            .or_default()
            .push_back(Waiter { client, id, ttl_ms });
        id
    }

    /// The dataset of `db` (`None`: all) was flushed, swapped or reloaded:
    /// leases are void, and each waited-on key's first waiter gets a new one.
    pub fn dataset_replaced(&mut self) -> Vec<Wake> {
        self.leases.clear();
        let keys: Vec<(Db, Vec<u8>)> = self.waiters.keys().cloned().collect();
        keys.into_iter()
            .filter_map(|(db, k)| self.hand_over(db, &k))
            .collect()
    }

    /// The rules of `db` are now `pairs` (source prefix, stored value).
    /// `vouch`: the module loaded them with the dataset (or a replica took
    /// them from its master); otherwise a rule that differs from what the
    /// module last wrote or loaded acts for nobody.
    pub fn set_rules(&mut self, db: Db, pairs: Vec<(Vec<u8>, Vec<u8>)>, vouch: bool) {
        let known = self.vouched.entry(db).or_default();
        if vouch {
            *known = pairs.iter().cloned().collect();
        } else {
            // A rule gone from the hash is vouched for no more: a client
            // that writes the same value back later has not written a rule
            // the module vouches for.
            known.retain(|src, _| pairs.iter().any(|(s, _)| s == src));
        }
        let rules = pairs.into_iter().map(|(src, value)| {
            let mut rule = rules::Rule::decode(&value);
            if known.get(&src) != Some(&value) {
                rule.owner = Some(rules::Rule::NOBODY.to_vec());
            }
            (src, rule)
        });
        let rules = Rules::from_rules(rules);
        if rules.is_empty() {
            self.rules.remove(&db);
        } else {
            self.rules.insert(db, rules);
        }
        if self.vouched.get(&db).is_some_and(HashMap::is_empty) {
            self.vouched.remove(&db);
        }
    }

    /// The module itself wrote (`Some`) or removed the rule for `source`.
    pub fn vouch(&mut self, db: Db, source: &[u8], value: Option<Vec<u8>>) {
        let known = self.vouched.entry(db).or_default();
        match value {
            Some(v) => drop(known.insert(source.to_vec(), v)),
            None => drop(known.remove(source)),
        }
    }

    /// Whether the module vouches for `value` as the rule for `source`.
    pub fn vouched_for(&self, db: Db, source: &[u8], value: &[u8]) -> bool {
        self.vouched
            .get(&db)
            .and_then(|k| k.get(source))
            .is_some_and(|v| v.as_slice() == value)
    }

    /// Rules fired by a change of `key`, queued to run as owed writes.
    pub fn fire_rules(&mut self, db: Db, key: &[u8]) {
        let Some(rules) = self.rules.get(&db) else {
            return;
        };
        let tags = rules.fired_by(key);
        if !tags.is_empty() {
            self.owed.push_back(Owed::Fire {
                db,
                source: key.to_vec(),
                tags,
            });
        }
    }

    /// `key` is gone or replaced by a client command: it carries nothing
    /// now, and its sets owe the removal.
    pub fn untag_key(&mut self, db: Db, key: &[u8], in_exec: Option<u64>) {
        for tag in self.index.remove_key(db, key) {
            let seq = self.next_seq();
            self.owed.push_back(Owed::Untag {
                db,
                tag,
                key: key.to_vec(),
                seq,
                in_exec,
            });
        }
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A client renamed `from` to `to`: the tags follow the key.
    pub fn rename_key(&mut self, db: Db, from: &[u8], to: &[u8], in_exec: Option<u64>) {
        let (moved, lost) = self.index.rename(db, from, to);
        for tag in lost {
            let seq = self.next_seq();
            self.owed.push_back(Owed::Untag {
                db,
                tag,
                key: to.to_vec(),
                seq,
                in_exec,
            });
        }
        for tag in moved {
            let seq = self.next_seq();
            self.owed.push_back(Owed::Untag {
                db,
                tag: tag.clone(),
                key: from.to_vec(),
                seq,
                in_exec,
            });
            self.owed.push_back(Owed::Retag {
                db,
                tag,
                key: to.to_vec(),
            });
        }
    }

    /// Whether an owed write is still due (the index has the last word).
    pub fn still_due(&self, owed: &Owed) -> bool {
        match owed {
            Owed::Untag { db, tag, key, .. } => !self.index.has(*db, key, tag),
            Owed::Retag { db, tag, key } => self.index.has(*db, key, tag),
            Owed::Fresh { db, key } => !self.stale.contains(*db, key),
            Owed::Propagate { .. } => true,
            Owed::Orphans { .. }
            | Owed::Fire { .. }
            | Owed::Rehome { .. }
            | Owed::Disown { .. } => true,
        }
    }

    pub fn flush(&mut self, db: Option<Db>) {
        self.index.flush(db);
        self.stale.flush(db);
        self.purges.flushed(db);
        self.ghosts.retain(|(d, _)| db.is_some_and(|x| x != *d));
        match db {
            Some(db) => {
                self.rules.remove(&db);
                self.vouched.remove(&db);
            }
            None => {
                self.rules.clear();
                self.vouched.clear();
            }
        }
        self.owed.retain(|o| db.is_some_and(|d| owed_db(o) != d));
        self.owed_replication
            .retain(|o| db.is_some_and(|d| owed_db(o) != d));
    }

    /// Whether any owed work (writes or their replication) waits.
    pub fn owes(&self) -> bool {
        !self.owed.is_empty() || !self.owed_replication.is_empty()
    }

    pub fn swap(&mut self, a: Db, b: Db) {
        self.index.swap(a, b);
        index::swap_dbs(&mut self.rules, a, b);
        index::swap_dbs(&mut self.vouched, a, b);
        self.purges.swapped(a, b);
        self.stale.swap(a, b);
        self.ghosts = std::mem::take(&mut self.ghosts)
            .into_iter()
            .map(|(d, k)| {
                (
                    if d == a {
                        b
                    } else if d == b {
                        a
                    } else {
                        d
                    },
                    k,
                )
            })
            .collect();
        for o in self.owed.iter_mut().chain(self.owed_replication.iter_mut()) {
            let d = match o {
                Owed::Untag { db, .. }
                | Owed::Retag { db, .. }
                | Owed::Propagate { db, .. }
                | Owed::Fresh { db, .. }
                | Owed::Orphans { db, .. }
                | Owed::Fire { db, .. }
                | Owed::Rehome { db }
                | Owed::Disown { db } => db,
            };
            if *d == a {
                *d = b;
            } else if *d == b {
                *d = a;
            }
        }
    }
}

fn owed_db(o: &Owed) -> Db {
    match o {
        Owed::Untag { db, .. }
        | Owed::Retag { db, .. }
        | Owed::Propagate { db, .. }
        | Owed::Fresh { db, .. }
        | Owed::Orphans { db, .. }
        | Owed::Fire { db, .. }
        | Owed::Rehome { db }
        | Owed::Disown { db } => *db,
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_writes_yield_to_later_changes() {
        let mut s = State::default();
        s.index.add(0, b"k", b"t");
        s.untag_key(0, b"k", None);
        let owed = s.owed.pop_front().unwrap();
        assert!(s.still_due(&owed));
        s.index.add(0, b"k", b"t");
        assert!(!s.still_due(&owed), "re-tagged meanwhile: the set keeps it");
    }

    fn owed_untag(s: &mut State) -> (u64, Option<u64>) {
        match s.owed.pop_front() {
            Some(Owed::Untag { seq, in_exec, .. }) => (seq, in_exec),
            other => panic!("an untag is owed, not {other:?}"),
        }
    }

    #[test]
    fn a_sadd_counts_only_after_the_cleanup_it_follows() {
        let mut s = State::default();
        // SADD (nothing changed: already a member), then the key deleted.
        let seq = s.next_seq();
        s.named.note(b"tag:t", std::iter::once(b"k".to_vec()), seq);
        s.index.add(0, b"k", b"t");
        s.named.written(b"k");
        s.untag_key(0, b"k", None);
        let (owed, ex) = owed_untag(&mut s);
        assert!(
            !s.named.claim(b"tag:t", b"k", owed, ex),
            "the SADD came first"
        );
        // The key overwritten, then added again.
        s.index.add(0, b"k", b"t");
        s.named.written(b"k");
        s.untag_key(0, b"k", None);
        let (owed, ex) = owed_untag(&mut s);
        let seq = s.next_seq();
        s.named.note(b"tag:t", std::iter::once(b"k".to_vec()), seq);
        assert!(
            s.named.claim(b"tag:t", b"k", owed, ex),
            "the SADD came after"
        );
        assert!(s.named.is_empty());
    }

    #[test]
    fn transaction_notes_count_within_their_exec() {
        let mut s = State::default();
        // An old note, then MULTI; SET k; SADD tag:t k; EXEC
        let old = s.next_seq();
        s.named.note(b"tag:u", std::iter::once(b"k".to_vec()), old);
        let multi = s.next_seq();
        s.named.transaction(true, multi);
        let seq = s.next_seq();
        s.named.note(b"tag:t", std::iter::once(b"k".to_vec()), seq);
        s.named.settled();
        assert!(!s.named.is_empty(), "kept while the transaction is queued");
        s.named.transaction(false, 0);
        s.index.add(0, b"k", b"t");
        s.index.add(0, b"k", b"u");
        let floor = Some(s.named.last_multi());
        s.untag_key(0, b"k", floor);
        let (owed_t, ex_t) = owed_untag(&mut s);
        let (owed_u, ex_u) = owed_untag(&mut s);
        let claims = [
            s.named.claim(b"tag:t", b"k", owed_t, ex_t),
            s.named.claim(b"tag:u", b"k", owed_u, ex_u),
        ];
        assert_eq!(
            claims.iter().filter(|c| **c).count(),
            1,
            "only the queued note counts"
        );
        s.named.settled();
        assert!(s.named.is_empty());
    }

    #[test]
    fn rules_written_by_clients_act_for_nobody() {
        let mut s = State::default();
        let pair = |src: &str, v: &[u8]| (src.as_bytes().to_vec(), v.to_vec());
        s.set_rules(0, vec![pair("a:", b"alice\0t:")], true);
        s.set_rules(
            0,
            vec![pair("a:", b"alice\0t:"), pair("b:", b"root\0u:")],
            false,
        );
        let fired =
            |s: &State, k: &[u8]| s.rules.get(&0).map(|r| r.fired_by(k)).unwrap_or_default();
        assert_eq!(
            fired(&s, b"a:1"),
            vec![(b"t:1".to_vec(), Some(b"alice".to_vec()), None)]
        );
        assert_eq!(
            fired(&s, b"b:1"),
            vec![(b"u:1".to_vec(), Some(rules::Rule::NOBODY.to_vec()), None)]
        );

        s.set_rules(0, vec![], false);
        assert!(s.rules.is_empty());
        // Written back by a client after it was removed: nobody's.
        s.set_rules(0, vec![pair("a:", b"alice\0t:")], false);
        assert_eq!(
            fired(&s, b"a:1"),
            vec![(b"t:1".to_vec(), Some(rules::Rule::NOBODY.to_vec()), None)]
        );
    }

    #[test]
    fn rename_owes_both_sides() {
        let mut s = State::default();
        s.index.add(0, b"a", b"t");
        s.rename_key(0, b"a", b"b", None);
        let owed: Vec<Owed> = s.owed.drain(..).collect();
        assert_eq!(owed.len(), 2);
        assert!(owed.iter().all(|o| s.still_due(o)));
        assert_eq!(s.index.tags(0, b"b"), vec![b"t".to_vec()]);
    }

    #[test]
    fn waiters_are_handed_leases_one_at_a_time() {
        let mut s = State::default();
        s.add_waiter(0, b"k", 1, 5);
        let second = s.add_waiter(0, b"k", 2, 5);
        let third = s.add_waiter(0, b"k", 3, 5);
        assert!(matches!(
            s.hand_over(0, b"k"),
            Some(Wake::Lease { client: 1, .. })
        ));
        assert!(s.forget_waiter(2));
        assert!(!s.forget_waiter(2), "released once");
        assert!(s.wait_over(second).is_none(), "a stale timer finds nobody");
        assert_eq!(s.wait_over(third), Some(Wake::Timeout { client: 3 }));
        assert!(s.hand_over(0, b"k").is_none());
        assert!(s.waiters.is_empty());
    }

    #[test]
    fn a_woken_client_is_released_once() {
        let mut s = State::default();
        s.add_waiter(0, b"k", 7, 5);
        let wakes = s.key_written(0, b"k");
        assert_eq!(wakes.len(), 1);
        s.waking.extend(wakes);
        assert!(
            s.forget_waiter(7),
            "a disconnection before the release owns it"
        );
        assert!(s.waking.is_empty());
        assert!(!s.forget_waiter(7));
    }

    #[test]
    fn swap_and_flush_follow_owed_writes() {
        let mut s = State::default();
        s.index.add(3, b"k", b"t");
        s.untag_key(3, b"k", None);
        s.swap(3, 4);
        assert_eq!(owed_db(&s.owed[0]), 4);
        s.flush(Some(4));
        assert!(s.owed.is_empty());
    }
}
