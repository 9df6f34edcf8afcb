//! Purges: what one asks for (`Request`, whoever makes it: a command, a
//! rule, another master), and the purges too large for one atomic step,
//! run in slices between which the server serves everyone else.
//!
//! A sliced purge's selection is fixed when the call arrives: the job holds
//! the *names* of the keys that carried the tags then (never index ids,
//! which a key untagged meanwhile gives back for another key to take). It
//! forgets a name whose value is written or which is deleted meanwhile (a
//! fresh fill survives), follows a rename, and deletes every other name it
//! holds, whatever happens to the tag sets in between: a key merely
//! untagged is still deleted, since its value is what the purge
//! invalidates. Plain Rust, unit-tested without a server.

use super::index::{Db, Index};
use super::Client;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Who a purge's count goes to when it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// Its caller (`Job::waiter`).
    Caller,
    /// A cluster-wide purge this master gathers (`engine::cluster`).
    Gather(u64),
    /// Another master's cluster-wide purge: node id and its gather id.
    Remote(Vec<u8>, u64),
    /// Nobody: its count was already given (`ASYNC`), or nobody asked (a
    /// rule).
    Nobody,
}

/// A soft invalidation: the selected keys are marked stale rather than
/// deleted, and expire at `until` (unix ms) at the latest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Soft {
    pub grace_ms: i64,
    pub until: i64,
}

/// One purge (or soft invalidation), as asked for: what to select, what to
/// do to it, for whom, and where its end goes. Every purge (a command's, a
/// rule's, another master's) is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub db: Db,
    /// Every key that carries any of them (`all`: every one of them).
    pub tags: Vec<Vec<u8>>,
    pub all: bool,
    /// Marks stale instead of deleting.
    pub soft: Option<Soft>,
    /// Whose permissions it has (`None`: the server's).
    pub user: Option<Vec<u8>>,
    /// A rule's purge, fired by a change of this key: a key the user may
    /// not delete is left in place and counted (a command's purge fails
    /// instead, before anything is deleted), the source itself is spared,
    /// and its deletions fire no further rules.
    pub rule_source: Option<Vec<u8>>,
    /// Where its count goes.
    pub reply_to: ReplyTo,
    /// Whether its end publishes the one event of the call (the master
    /// that received it does; another master's share does not).
    pub publish: bool,
}

impl Request {
    pub fn by_rule(&self) -> bool {
        self.rule_source.is_some()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the names of the ids selected when the call arrived, a
    /// batch per step (the index keeps each id naming its key meanwhile).
    Listing,
    /// Checking the caller's permission on each key (nothing deleted yet).
    Checking,
    Deleting,
}

/// What happened to a key while the job was still listing: applied, in
/// order, once every name is known.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Touched(Vec<u8>),
    Renamed(Vec<u8>, Vec<u8>),
}

type Hasher = foldhash::fast::RandomState;

/// The names a job selected, stored once, one after another; found by
/// name through a table of positions.
#[derive(Default)]
struct Names {
    bytes: Vec<u8>,
    /// End of each name in `bytes`.
    ends: Vec<usize>,
    by_name: HashTable<u32>,
    hasher: Hasher,
}

/// Name `i` of `bytes`, whose names end at `ends`.
fn nth<'b>(bytes: &'b [u8], ends: &[usize], i: usize) -> Option<&'b [u8]> {
    let start = match i {
        0 => 0,
        _ => *ends.get(i - 1)?,
    };
    bytes.get(start..*ends.get(i)?)
}

impl Names {
    fn get(&self, i: usize) -> Option<&[u8]> {
        nth(&self.bytes, &self.ends, i)
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        self.find_hashed(self.hasher.hash_one(name), name)
    }

    fn find_hashed(&self, hash: u64, name: &[u8]) -> Option<usize> {
        self.by_name
            .find(hash, |&i| self.get(i as usize) == Some(name))
            .map(|&i| i as usize)
    }

    /// Names for `n` names of `bytes` bytes in all, made at once.
    fn with_capacity(n: usize, bytes: usize) -> Names {
        Names {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(n),
            by_name: HashTable::with_capacity(n),
            hasher: Hasher::default(),
        }
    }

    /// Adds `name`; its position (`None` if it is there already, or past
    /// what positions can number).
    fn push(&mut self, name: &[u8]) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        if self.find_hashed(hash, name).is_some() {
            return None;
        }
        let i = self.ends.len();
        let pos = u32::try_from(i).ok()?;
        self.bytes.extend_from_slice(name);
        self.ends.push(self.bytes.len());
        let (bytes, ends, hasher) = (&self.bytes, &self.ends, &self.hasher);
        self.by_name.insert_unique(hash, pos, |&j| {
            hasher.hash_one(nth(bytes, ends, j as usize).unwrap_or_default())
        });
        Some(i)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }
}

/// One sliced purge in progress.
pub struct Job {
    pub id: u64,
    pub req: Request,
    pub phase: Phase,
    names: Names,
    /// One bit per name: still this purge's to delete.
    pending: Vec<u64>,
    /// Where checking, then deleting, has got to in `names`.
    cursor: usize,
    /// Names before this position were checked against the user's ACL (a
    /// name added later, by a rename, is checked when it is deleted).
    checked: usize,
    left: usize,
    /// Keys this purge deleted.
    pub deleted: i64,
    /// The caller, blocked until the end (or, with `early`, until every key
    /// is checked; `None` once it left or was answered).
    pub waiter: Option<Client>,
    /// `ASYNC` of a user checked key by key: the count the caller is told
    /// once every key passed (a key it may not delete fails the call with
    /// `NOPERM` instead, as for a purge it waits for).
    pub early: Option<i64>,
    refused: bool,
    /// Listing: the ids still to name, and the index's pin that keeps them
    /// naming their keys (`None` once listed).
    ids: Vec<u32>,
    listed: usize,
    pub pin: Option<u64>,
    check: bool,
    seen: Vec<Seen>,
}

fn bit(i: usize) -> (usize, u64) {
    (i / 64, 1u64 << (i % 64))
}

impl Job {
    fn new(id: u64, req: Request, selected: &[Vec<u8>], check: bool) -> Job {
        let bytes = selected.iter().map(Vec::len).sum();
        let mut names = Names::with_capacity(selected.len(), bytes);
        let mut pending = vec![0u64; selected.len() / 64 + 1];
        let mut left = 0;
        for name in selected {
            if let Some(i) = names.push(name) {
                let (w, b) = bit(i);
                if let Some(word) = pending.get_mut(w) {
                    *word |= b;
                    left += 1;
                }
            }
        }
        let phase = if check {
            Phase::Checking
        } else {
            Phase::Deleting
        };
        Job {
            id,
            req,
            phase,
            names,
            pending,
            cursor: 0,
            checked: if check { 0 } else { usize::MAX },
            left,
            deleted: 0,
            waiter: None,
            early: None,
            refused: false,
            ids: Vec::new(),
            listed: 0,
            pin: None,
            check,
            seen: Vec::new(),
        }
    }

    /// A job of the ids selected (each once), to be named a batch at a
    /// time while the index is pinned (`pin`).
    fn listing(id: u64, req: Request, ids: Vec<u32>, pin: u64, check: bool) -> Job {
        let mut job = Job::new(id, req, &[], check);
        job.phase = Phase::Listing;
        job.left = ids.len();
        job.pending = vec![0u64; ids.len() / 64 + 1];
        job.names = Names::with_capacity(ids.len(), 0);
        job.ids = ids;
        job.pin = Some(pin);
        job
    }

    /// Names up to `n` more ids (`name_of` answers from the pinned index).
    /// Once all are named, what happened meanwhile is applied in order and
    /// the job moves on; returns its pin then, for the caller to release.
    pub fn list<'a>(&mut self, n: usize, name_of: impl Fn(u32) -> Option<&'a [u8]>) -> Option<u64> {
        if self.phase != Phase::Listing {
            return None;
        }
        let end = self.listed.saturating_add(n).min(self.ids.len());
        for i in self.listed..end {
            let named = self.ids.get(i).and_then(|&id| name_of(id));
            match named.and_then(|name| self.names.push(name)) {
                Some(at) => {
                    let (w, b) = bit(at);
                    if self.pending.len() <= w {
                        self.pending.resize(w + 1, 0);
                    }
                    if let Some(word) = self.pending.get_mut(w) {
                        *word |= b;
                    }
                }
                None => self.left = self.left.saturating_sub(1),
            }
        }
        self.listed = end;
        if self.listed < self.ids.len() {
            return None;
        }
        self.ids = Vec::new();
        self.phase = if self.check {
            Phase::Checking
        } else {
            Phase::Deleting
        };
        for seen in std::mem::take(&mut self.seen) {
            match seen {
                Seen::Touched(k) => self.forget(&k),
                Seen::Renamed(from, to) => self.renamed(&from, &to),
            }
        }
        self.pin.take()
    }

    pub fn is_listing(&self) -> bool {
        self.phase == Phase::Listing
    }

    pub fn db(&self) -> Db {
        self.req.db
    }

    pub fn left(&self) -> usize {
        self.left
    }

    pub fn done(&self) -> bool {
        self.left == 0
    }

    fn is_pending(&self, i: usize) -> bool {
        let (w, b) = bit(i);
        self.pending.get(w).is_some_and(|word| word & b != 0)
    }

    fn clear(&mut self, i: usize) -> bool {
        let (w, b) = bit(i);
        match self.pending.get_mut(w) {
            Some(word) if *word & b != 0 => {
                *word &= !b;
                self.left -= 1;
                true
            }
            _ => false,
        }
    }

    fn set(&mut self, i: usize) {
        let (w, b) = bit(i);
        if self.pending.len() <= w {
            self.pending.resize(w + 1, 0);
        }
        if let Some(word) = self.pending.get_mut(w) {
            if *word & b == 0 {
                *word |= b;
                self.left += 1;
            }
        }
    }

    /// `key`'s value was written, or the key deleted: not this purge's.
    fn forget(&mut self, key: &[u8]) {
        if self.phase == Phase::Listing {
            self.seen.push(Seen::Touched(key.to_vec()));
            return;
        }
        if let Some(i) = self.names.find(key) {
            self.clear(i);
        }
    }

    /// `from` was renamed to `to`: what `to` held is gone, and `from`'s
    /// value, if this purge is to delete it, is now at `to`.
    fn renamed(&mut self, from: &[u8], to: &[u8]) {
        if self.phase == Phase::Listing {
            self.seen.push(Seen::Renamed(from.to_vec(), to.to_vec()));
            return;
        }
        self.forget(to);
        let Some(i) = self.names.find(from) else {
            return;
        };
        if !self.clear(i) {
            return;
        }
        let at = match self.names.find(to) {
            Some(j) => Some(j),
            None => self.names.push(to),
        };
        if let Some(j) = at {
            self.set(j);
            // A name added behind the cursor is still to be reached.
            if j < self.cursor {
                self.cursor = j;
            }
        }
    }

    /// The next `n` keys still pending, by name, to check the caller's
    /// permission on; moves to deleting once all are checked.
    pub fn next_to_check(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while self.phase == Phase::Checking && out.len() < n {
            if self.cursor >= self.names.len() {
                self.phase = Phase::Deleting;
                self.checked = self.names.len();
                self.cursor = 0;
                break;
            }
            let i = self.cursor;
            self.cursor += 1;
            if self.is_pending(i) {
                if let Some(name) = self.names.get(i) {
                    out.push(name.to_vec());
                }
            }
        }
        out
    }

    /// Whether `name`, taken by `batch`, is still to be checked against
    /// the user's ACL (it came in by a rename after the checks).
    pub fn unchecked(&self, name: &[u8]) -> bool {
        self.names.find(name).is_some_and(|i| i >= self.checked)
    }

    /// Up to `n` keys still pending, by name, taken out of the job.
    pub fn batch(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n.min(self.left));
        while out.len() < n && self.left > 0 && self.cursor < self.names.len() {
            let i = self.cursor;
            self.cursor += 1;
            if self.clear(i) {
                if let Some(name) = self.names.get(i) {
                    out.push(name.to_vec());
                }
            }
        }
        if self.cursor >= self.names.len() {
            self.left = 0;
        }
        out
    }

    /// A check failed: nothing was deleted, nothing is to be published.
    pub fn refuse(&mut self) {
        self.refused = true;
        self.abandon();
    }

    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Nothing is left to do (flushed, or a check failed).
    pub fn abandon(&mut self) {
        self.left = 0;
        self.pending = Vec::new();
        self.names = Names::default();
    }
}

/// The purges in progress.
#[derive(Default)]
pub struct Purges {
    pub jobs: Vec<Job>,
    last_id: u64,
}

impl Purges {
    /// A purge of `selected`, the keys that carry the request's tags now
    /// (their names); `check`: each key is checked against the user's ACL
    /// before any is deleted. Returns its id and how many keys it holds.
    #[cfg(test)]
    pub fn start(&mut self, req: Request, selected: &[Vec<u8>], check: bool) -> (u64, usize) {
        self.last_id += 1;
        let job = Job::new(self.last_id, req, selected, check);
        let n = job.left();
        self.jobs.push(job);
        (self.last_id, n)
    }

    /// A purge of the keys whose ids the pinned index (`pin`) listed for
    /// the request's tags, each once; named a batch per step. Returns its id.
    pub fn start_listing(&mut self, req: Request, ids: Vec<u32>, pin: u64, check: bool) -> u64 {
        self.last_id += 1;
        self.jobs
            .push(Job::listing(self.last_id, req, ids, pin, check));
        self.last_id
    }

    /// `key`'s value was written, or the key deleted, by something other
    /// than a purge's own step: no purge deletes it now.
    pub fn touched(&mut self, db: Db, key: &[u8]) {
        for j in self.jobs.iter_mut().filter(|j| j.req.db == db) {
            j.forget(key);
        }
    }

    /// `from` was renamed to `to` in `db`: purges follow the value.
    pub fn renamed(&mut self, db: Db, from: &[u8], to: &[u8]) {
        for j in self.jobs.iter_mut().filter(|j| j.req.db == db) {
            j.renamed(from, to);
        }
    }

    /// `SWAPDB a b`: a purge follows its keys to their new number.
    pub fn swapped(&mut self, a: Db, b: Db) {
        for j in &mut self.jobs {
            if j.req.db == a {
                j.req.db = b;
            } else if j.req.db == b {
                j.req.db = a;
            }
        }
    }

    pub fn get(&mut self, id: u64) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    /// The jobs with nothing left, out of the list.
    pub fn take_done(&mut self) -> Vec<Job> {
        let (done, running): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.jobs)
            .into_iter()
            .partition(Job::done);
        self.jobs = running;
        done
    }

    /// The caller of a purge left (disconnected, unblocked): the purge goes
    /// on without it. Whether it was one.
    pub fn forget_waiter(&mut self, client: Client) -> bool {
        let mut found = false;
        for j in &mut self.jobs {
            if j.waiter == Some(client) {
                j.waiter = None;
                found = true;
            }
        }
        found
    }

    pub fn keys_left(&self) -> usize {
        self.jobs.iter().map(Job::left).sum()
    }

    /// The dataset of `db` (`None`: all) was flushed or replaced: nothing is
    /// left to delete there. The jobs end (and their callers get their
    /// counts) at the next slice.
    pub fn flushed(&mut self, db: Option<Db>) {
        for j in &mut self.jobs {
            if db.is_none_or(|d| d == j.req.db) {
                j.abandon();
            }
        }
    }
}

/// The keys that carry any of `tags` now (`all`: every one of them), each
/// once: a purge's selection.
pub fn select(ix: &Index, db: Db, tags: &[Vec<u8>], all: bool) -> Vec<Vec<u8>> {
    if !all {
        return super::plan::purge_members(ix, db, tags);
    }
    let Some((first, rest)) = tags.split_first() else {
        return Vec::new();
    };
    ix.members(db, first)
        .into_iter()
        .filter(|k| rest.iter().all(|t| ix.has(db, k, t)))
        .collect()
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    fn request(user: Option<&[u8]>) -> Request {
        Request {
            db: 0,
            tags: vec![b"t".to_vec()],
            all: false,
            soft: None,
            user: user.map(<[u8]>::to_vec),
            rule_source: None,
            reply_to: ReplyTo::Caller,
            publish: true,
        }
    }

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("k{i}").into_bytes()).collect()
    }

    fn drain(j: &mut Job) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        for _ in 0..1000 {
            let b = j.batch(3);
            if b.is_empty() && j.done() {
                break;
            }
            all.extend(b);
        }
        all.sort();
        all
    }

    #[test]
    fn checks_then_deletes_what_nobody_wrote() {
        let mut p = Purges::default();
        let (id, n) = p.start(request(Some(b"u")), &names(10), true);
        assert_eq!(n, 10);
        p.touched(0, b"k1");
        p.touched(0, b"late"); // never selected: nothing to forget
        let j = p.get(id).unwrap();
        assert_eq!(j.phase, Phase::Checking);
        let mut checked = j.next_to_check(100);
        checked.sort();
        assert_eq!(checked.len(), 9);
        assert!(j.next_to_check(100).is_empty());
        assert_eq!(j.phase, Phase::Deleting);
        let all = drain(j);
        assert_eq!(all.len(), 9);
        assert!(!all.contains(&b"k1".to_vec()) && !all.contains(&b"late".to_vec()));
        assert!(j.done());
        assert!(!j.unchecked(b"k2"));
        assert_eq!(p.take_done().len(), 1);
    }

    #[test]
    fn a_name_renamed_in_after_the_checks_is_checked_when_deleted() {
        let mut p = Purges::default();
        let (id, _) = p.start(request(Some(b"u")), &names(3), true);
        let j = p.get(id).unwrap();
        assert_eq!(j.next_to_check(10).len(), 3);
        assert!(j.next_to_check(10).is_empty());
        p.renamed(0, b"k0", b"secret");
        let j = p.get(id).unwrap();
        assert!(j.unchecked(b"secret"));
        assert!(!j.unchecked(b"k1"));
    }

    #[test]
    fn a_job_holds_names_that_no_later_key_can_take() {
        // The index gives a freed id to the next key tagged; a job of names
        // cannot come to mean that key.
        let mut ix = Index::default();
        for k in names(5) {
            ix.add(0, &k, b"t");
        }
        let mut p = Purges::default();
        let sel = select(&ix, 0, &[b"t".to_vec()], false);
        let (id, _) = p.start(request(None), &sel, false);
        ix.remove(0, b"k3", b"t");
        ix.add(0, b"victim", b"other");
        let got = drain(p.get(id).unwrap());
        assert_eq!(
            got,
            names(5),
            "k3, untagged meanwhile, still goes; victim never"
        );
    }

    #[test]
    fn a_job_follows_a_rename_and_spares_what_was_written() {
        let mut p = Purges::default();
        let (id, _) = p.start(request(None), &names(4), false);
        // Half way through, k0 renamed to a name behind the cursor.
        let first = p.get(id).unwrap().batch(2);
        assert_eq!(first, vec![b"k0".to_vec(), b"k1".to_vec()]);
        p.renamed(0, b"k2", b"a");
        p.renamed(0, b"x", b"k3"); // k3 overwritten by a rename: spared
        p.touched(1, b"a"); // another database: changes nothing here
        let rest = drain(p.get(id).unwrap());
        assert_eq!(rest, vec![b"a".to_vec()]);
        assert!(
            !p.get(id).unwrap().unchecked(b"a"),
            "nothing to check: no user"
        );
    }

    #[test]
    fn all_selects_keys_that_carry_every_tag() {
        let mut ix = Index::default();
        ix.add(0, b"a", b"x");
        ix.add(0, b"a", b"y");
        ix.add(0, b"b", b"x");
        ix.add(0, b"c", b"y");
        let tags = [b"x".to_vec(), b"y".to_vec()];
        assert_eq!(select(&ix, 0, &tags, true), vec![b"a".to_vec()]);
        let mut any = select(&ix, 0, &tags, false);
        any.sort();
        assert_eq!(any, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(select(&ix, 0, &[b"x".to_vec(), b"none".to_vec()], true).is_empty());
    }

    #[test]
    fn repeated_names_count_once() {
        let mut p = Purges::default();
        let sel = vec![b"a".to_vec(), b"a".to_vec(), b"b".to_vec()];
        let (id, n) = p.start(request(None), &sel, false);
        assert_eq!(n, 2);
        assert_eq!(
            drain(p.get(id).unwrap()),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }

    /// A job of ids, listed a few at a time from a pinned index while the
    /// keyspace changes between the steps.
    fn listing_job(ix: &mut Index, tags: &[&[u8]]) -> (Purges, u64) {
        let mut p = Purges::default();
        let tags: Vec<Vec<u8>> = tags.iter().map(|t| t.to_vec()).collect();
        let ids = ix.member_ids(0, &tags, false);
        let pin = ix.pin(0);
        let mut req = request(None);
        req.tags = tags;
        let id = p.start_listing(req, ids, pin, false);
        (p, id)
    }

    fn list_all(p: &mut Purges, id: u64, ix: &mut Index) {
        for _ in 0..100 {
            let j = p.get(id).unwrap();
            if !j.is_listing() {
                return;
            }
            if let Some(pin) = j.list(2, |i| ix.name_of(0, i)) {
                ix.unpin(0, pin);
            }
        }
        panic!("never listed");
    }

    #[test]
    fn a_listing_job_names_what_was_selected_whatever_the_index_does_meanwhile() {
        let mut ix = Index::default();
        for k in names(6) {
            ix.add(0, &k, b"t");
        }
        let (mut p, id) = listing_job(&mut ix, &[b"t"]);
        // Before any id is named: k1 untagged (still the purge's), k2
        // written (spared), k3 renamed to r3 (followed), and a new key
        // tagged into the id k1 gave back (never the purge's).
        ix.remove(0, b"k1", b"t");
        p.touched(0, b"k2");
        p.renamed(0, b"k3", b"r3");
        ix.rename(0, b"k3", b"r3");
        ix.add(0, b"victim", b"t");
        ix.add(0, b"victim2", b"other");
        list_all(&mut p, id, &mut ix);
        let got = drain(p.get(id).unwrap());
        let want: Vec<Vec<u8>> = [&b"k0"[..], b"k1", b"k4", b"k5", b"r3"]
            .iter()
            .map(|k| k.to_vec())
            .collect();
        assert_eq!(got, want);
        // Unpinned: the ids given back are handed out again.
        ix.add(0, b"later", b"t");
        assert!(ix.is_tagged(0, b"later"));
    }

    #[test]
    fn a_flushed_index_ignores_the_pin_of_a_job_from_before() {
        let mut ix = Index::default();
        ix.add(0, b"a", b"t");
        let (mut p, id) = listing_job(&mut ix, &[b"t"]);
        ix.flush(Some(0));
        ix.add(0, b"b", b"t");
        let other = ix.pin(0);
        p.flushed(Some(0));
        let j = p.take_done().pop().unwrap();
        assert_eq!(j.id, id);
        ix.unpin(0, j.pin.unwrap());
        // The new index is still pinned by `other`: a key released keeps
        // its name until that pin ends.
        let b = ix.member_ids(0, &[b"t".to_vec()], false);
        assert_eq!(b.len(), 1);
        ix.remove(0, b"b", b"t");
        ix.add(0, b"c", b"x");
        assert_eq!(ix.name_of(0, b[0]), Some(&b"b"[..]));
        ix.unpin(0, other);
        assert_eq!(ix.name_of(0, b[0]), None);
    }

    #[test]
    fn callers_swaps_and_flushes() {
        let mut p = Purges::default();
        let (id, _) = p.start(request(None), &names(5), false);
        p.get(id).unwrap().waiter = Some(9);
        assert!(p.forget_waiter(9));
        assert!(!p.forget_waiter(9));
        assert_eq!(p.keys_left(), 5);
        p.swapped(0, 4);
        p.flushed(Some(0));
        assert_eq!(p.keys_left(), 5, "its keys are in database 4 now");
        p.flushed(Some(4));
        assert_eq!(p.keys_left(), 0);
    }
}
