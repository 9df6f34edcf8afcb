//! What the module does, in plain Rust over one `State`: the index, the
//! rules, the lease book, and the writes the keyspace still owes the tag
//! sets. Operations plan (check everything, compute the writes) and return
//! the plan; `server` applies it. Nothing here calls Redis, so `cargo test`
//! reaches all of it.

pub mod error;
pub mod events;
pub mod index;
pub mod lease;
pub mod plan;
pub mod rules;
pub mod slot;
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
}

impl Wake {
    pub fn client(&self) -> Client {
        match self {
            Wake::Value { client, .. } | Wake::Lease { client, .. } | Wake::Timeout { client } => {
                *client
            }
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
        tags: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
}

/// Members that client commands name for a tag set (`SADD`, `SREM`,
/// `SMOVE`), seen by the command filter before the command runs. The set's
/// notification checks each against the set. A `SADD` that changes nothing
/// sends no notification: if its key had just been overwritten (client code
/// rewriting a key, then adding it to its set again), the note keeps the
/// membership that the overwrite's cleanup would otherwise take away.
///
/// Order decides: a note counts against a cleanup owed *before* it. A
/// command queued in `MULTI` runs at `EXEC`, so its note is armed then,
/// and counts against cleanups owed during that `EXEC`; a later command of
/// the transaction that names the member cancels it (the `SADD` was not
/// the last word on that key).
#[derive(Default)]
pub struct Named {
    by_set: HashMap<Vec<u8>, Vec<Note>>,
    count: usize,
    /// Some note waits for its transaction's `EXEC`, or came from one.
    transactional: bool,
}

#[derive(Clone, Debug)]
struct Note {
    member: Vec<u8>,
    client: u64,
    /// When it counts from: 0 while queued in `MULTI`.
    seq: u64,
    from_exec: bool,
    /// For a note from an `EXEC`: the last cleanup that transaction owed
    /// (known once it is over).
    until: Option<u64>,
}

const NAMED_MAX: usize = 100_000;

impl Named {
    /// A command of `client` names `members` of `set`; `seq` is now, or 0
    /// while the command is queued in a transaction.
    pub fn note(
        &mut self,
        set: &[u8],
        members: impl Iterator<Item = Vec<u8>>,
        client: u64,
        seq: u64,
    ) {
        if self.count > NAMED_MAX {
            *self = Named::default();
        }
        let list = self.by_set.entry(set.to_vec()).or_default();
        let before = list.len();
        list.extend(members.map(|member| Note {
            member,
            client,
            seq,
            from_exec: false,
            until: None,
        }));
        self.count += list.len() - before;
        self.transactional |= seq == 0;
    }

    /// Whether any note is kept at all.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the filter must look at every command (a transaction is
    /// involved).
    pub fn transactional(&self) -> bool {
        self.transactional
    }

    fn each_note(&mut self, mut f: impl FnMut(&mut Note) -> bool) {
        let mut removed = 0;
        self.by_set.retain(|_, list| {
            let before = list.len();
            list.retain_mut(|n| f(n));
            removed += before - list.len();
            !list.is_empty()
        });
        self.count = self.count.saturating_sub(removed);
        self.transactional = self
            .by_set
            .values()
            .flatten()
            .any(|n| n.seq == 0 || (n.from_exec && n.until.is_none()));
    }

    /// `client` sent `EXEC`: its queued notes count from `seq`.
    pub fn exec(&mut self, client: u64, seq: u64) {
        self.each_note(|n| {
            if n.client == client && n.seq == 0 {
                n.seq = seq;
                n.from_exec = true;
            }
            true
        });
    }

    /// `client` sent `DISCARD` (or its transaction is otherwise over).
    pub fn discard(&mut self, client: u64) {
        self.each_note(|n| !(n.client == client && n.seq == 0));
    }

    /// `client`, in a transaction, queued a command naming `args`: its
    /// earlier queued notes on those members are no longer the last word.
    pub fn queued_command(&mut self, client: u64, args: &[&[u8]]) {
        self.each_note(|n| {
            !(n.client == client && n.seq == 0 && args.contains(&n.member.as_slice()))
        });
    }

    /// A transaction's `EXEC` is over (a real client sent a command after
    /// it, at `now`): notes that came from it count against cleanups owed
    /// until now only.
    pub fn exec_over(&mut self, now: u64) {
        self.each_note(|n| {
            if n.from_exec && n.until.is_none() {
                n.until = Some(now);
            }
            true
        });
    }

    /// Forgets the notes that have taken effect (all but those queued).
    pub fn settled(&mut self) {
        if self.count > 0 {
            self.each_note(|n| n.seq == 0);
        }
    }

    /// Whether a client command named `member` for `set` after a cleanup
    /// owed at `owed_seq` (the note is used up).
    pub fn claim(&mut self, set: &[u8], member: &[u8], owed_seq: u64) -> bool {
        let Some(list) = self.by_set.get_mut(set) else {
            return false;
        };
        let later = |n: &Note| {
            n.member == member
                && n.seq != 0
                && if n.from_exec {
                    n.seq < owed_seq && n.until.is_none_or(|u| owed_seq <= u)
                } else {
                    n.seq > owed_seq
                }
        };
        let Some(i) = list.iter().position(later) else {
            return false;
        };
        list.swap_remove(i);
        if list.is_empty() {
            self.by_set.remove(set);
        }
        self.count = self.count.saturating_sub(1);
        true
    }

    /// The members named for `set` by commands that have run (forgotten
    /// here); `None` when there are none.
    pub fn take(&mut self, set: &[u8]) -> Option<Vec<Vec<u8>>> {
        let list = self.by_set.get_mut(set)?;
        let (run, queued): (Vec<Note>, Vec<Note>) = list.drain(..).partition(|n| n.seq != 0);
        self.count = self.count.saturating_sub(run.len());
        if queued.is_empty() {
            self.by_set.remove(set);
        } else {
            *list = queued;
        }
        if run.is_empty() {
            return None;
        }
        Some(run.into_iter().map(|n| n.member).collect())
    }
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
    /// Writes owed to the tag sets, in order.
    pub owed: VecDeque<Owed>,
    /// Members client commands name for tag sets, awaiting their notification.
    pub named: Named,
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
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Runs `f` on the state. Redis runs commands, notifications and timers on
/// one thread, and no code calls into Redis while it holds the state, so
/// the borrow cannot clash; if it ever did, `f` is skipped (and logged by
/// the caller's fallback) rather than the server aborted.
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    STATE.with(|s| s.try_borrow_mut().ok().map(|mut s| f(&mut s)))
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
        self.waking.len() != before || self.take_waiter(|w| w.client == client).is_some()
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
    pub fn untag_key(&mut self, db: Db, key: &[u8]) {
        for tag in self.index.remove_key(db, key) {
            let seq = self.next_seq();
            self.owed.push_back(Owed::Untag {
                db,
                tag,
                key: key.to_vec(),
                seq,
            });
        }
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A client renamed `from` to `to`: the tags follow the key.
    pub fn rename_key(&mut self, db: Db, from: &[u8], to: &[u8]) {
        let (moved, lost) = self.index.rename(db, from, to);
        for tag in lost {
            let seq = self.next_seq();
            self.owed.push_back(Owed::Untag {
                db,
                tag,
                key: to.to_vec(),
                seq,
            });
        }
        for tag in moved {
            let seq = self.next_seq();
            self.owed.push_back(Owed::Untag {
                db,
                tag: tag.clone(),
                key: from.to_vec(),
                seq,
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
            Owed::Orphans { .. } | Owed::Fire { .. } => true,
        }
    }

    pub fn flush(&mut self, db: Option<Db>) {
        self.index.flush(db);
        match db {
            Some(db) => drop(self.rules.remove(&db)),
            None => self.rules.clear(),
        }
        self.owed.retain(|o| db.is_some_and(|d| owed_db(o) != d));
    }

    pub fn swap(&mut self, a: Db, b: Db) {
        self.index.swap(a, b);
        index::swap_dbs(&mut self.rules, a, b);
        for o in self.owed.iter_mut() {
            let d = match o {
                Owed::Untag { db, .. }
                | Owed::Retag { db, .. }
                | Owed::Orphans { db, .. }
                | Owed::Fire { db, .. } => db,
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
        | Owed::Orphans { db, .. }
        | Owed::Fire { db, .. } => *db,
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
        s.untag_key(0, b"k");
        let owed = s.owed.pop_front().unwrap();
        assert!(s.still_due(&owed));
        s.index.add(0, b"k", b"t");
        assert!(!s.still_due(&owed), "re-tagged meanwhile: the set keeps it");
    }

    #[test]
    fn a_sadd_counts_only_after_the_cleanup_it_follows() {
        let mut s = State::default();
        // SADD (nothing changed: already a member), then the key deleted.
        let seq = s.next_seq();
        s.named
            .note(b"tag:t", std::iter::once(b"k".to_vec()), 1, seq);
        s.index.add(0, b"k", b"t");
        s.untag_key(0, b"k");
        let Some(Owed::Untag { seq: owed, .. }) = s.owed.pop_front() else {
            panic!("an untag is owed");
        };
        assert!(!s.named.claim(b"tag:t", b"k", owed), "the SADD came first");
        // The key overwritten, then added again.
        s.index.add(0, b"k", b"t");
        s.untag_key(0, b"k");
        let Some(Owed::Untag { seq: owed, .. }) = s.owed.pop_front() else {
            panic!("an untag is owed");
        };
        let seq = s.next_seq();
        s.named
            .note(b"tag:t", std::iter::once(b"k".to_vec()), 1, seq);
        assert!(s.named.claim(b"tag:t", b"k", owed), "the SADD came after");
    }

    #[test]
    fn transaction_notes_count_within_their_exec() {
        let mut s = State::default();
        // MULTI; SET k; SADD tag:t k; EXEC
        s.named.note(b"tag:t", std::iter::once(b"k".to_vec()), 7, 0);
        assert!(s.named.transactional());
        let exec = s.next_seq();
        s.named.exec(7, exec);
        s.index.add(0, b"k", b"t");
        s.untag_key(0, b"k");
        let Some(Owed::Untag { seq: owed, .. }) = s.owed.pop_front() else {
            panic!("an untag is owed");
        };
        let now = s.seq;
        s.named.exec_over(now);
        assert!(s.named.claim(b"tag:t", b"k", owed));
        // MULTI; SADD tag:t k; DEL k; EXEC: the DEL has the last word.
        s.named.note(b"tag:t", std::iter::once(b"k".to_vec()), 7, 0);
        s.named.queued_command(7, &[b"k"]);
        let exec = s.next_seq();
        s.named.exec(7, exec);
        assert!(s.named.is_empty());
        // A note from an EXEC that is over counts no more.
        s.named.note(b"tag:t", std::iter::once(b"x".to_vec()), 7, 0);
        let exec = s.next_seq();
        s.named.exec(7, exec);
        let now = s.seq;
        s.named.exec_over(now);
        let later = s.next_seq();
        assert!(!s.named.claim(b"tag:t", b"x", later));
        s.named.settled();
        assert!(s.named.is_empty());
    }

    #[test]
    fn rename_owes_both_sides() {
        let mut s = State::default();
        s.index.add(0, b"a", b"t");
        s.rename_key(0, b"a", b"b");
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
        s.untag_key(3, b"k");
        s.swap(3, 4);
        assert_eq!(owed_db(&s.owed[0]), 4);
        s.flush(Some(4));
        assert!(s.owed.is_empty());
    }
}
