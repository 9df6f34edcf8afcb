//! Purges too large for one atomic step, run in slices between which the
//! server serves everyone else. Plain Rust: a job holds the ids of the keys
//! that carried the tags when the call arrived (4 bytes each, so that the
//! call itself costs next to nothing), forgets any key written or deleted
//! since (a fresh fill survives), checks the caller's permission on every
//! key before it deletes any, then hands out batches.

use super::index::{Db, Index};
use super::Client;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Checking the caller's permission on each key (nothing deleted yet).
    Checking,
    Deleting,
}

/// One sliced purge in progress.
/// Who a purge's count goes to when it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// Its caller (`waiter`), with one event.
    Caller,
    /// A cluster-wide purge this master gathers (`engine::cluster`).
    Gather(u64),
    /// Another master's cluster-wide purge: node id and its gather id.
    Remote(Vec<u8>, u64),
    /// Nobody: its count was already given (`ASYNC` in a cluster).
    Nobody,
}

pub struct Job {
    pub id: u64,
    pub db: Db,
    pub tags: Vec<Vec<u8>>,
    /// The user whose permissions the purge has (`None`: the server).
    pub user: Option<Vec<u8>>,
    pub phase: Phase,
    /// Key ids at arrival, in the order they are taken.
    order: Vec<u32>,
    /// Where checking, then deleting, has got to in `order`.
    cursor: usize,
    /// One bit per key id: still this purge's to delete.
    pending: Vec<u64>,
    left: usize,
    /// Keys this purge deleted.
    pub deleted: i64,
    /// The caller, blocked until the end (`None` with `ASYNC`, or once it
    /// left).
    pub waiter: Option<Client>,
    /// Who is told the count when it ends.
    pub reply_to: ReplyTo,
    /// Started by a rule: its deletions fire no further rules.
    pub by_rule: bool,
    abandoned: bool,
    refused: bool,
}

fn bit(id: u32) -> (usize, u64) {
    ((id / 64) as usize, 1u64 << (id % 64))
}

impl Job {
    fn new(id: u64, db: Db, tags: Vec<Vec<u8>>, user: Option<Vec<u8>>, order: Vec<u32>) -> Job {
        let words = order.iter().max().map_or(0, |&m| m as usize / 64 + 1);
        let mut pending = vec![0u64; words];
        for &k in &order {
            let (w, b) = bit(k);
            if let Some(word) = pending.get_mut(w) {
                *word |= b;
            }
        }
        let phase = if user.is_some() {
            Phase::Checking
        } else {
            Phase::Deleting
        };
        Job {
            id,
            db,
            tags,
            user,
            phase,
            left: order.len(),
            order,
            cursor: 0,
            pending,
            deleted: 0,
            waiter: None,
            reply_to: ReplyTo::Caller,
            by_rule: false,
            abandoned: false,
            refused: false,
        }
    }

    pub fn left(&self) -> usize {
        self.left
    }

    pub fn done(&self) -> bool {
        self.left == 0
    }

    fn is_pending(&self, id: u32) -> bool {
        let (w, b) = bit(id);
        self.pending.get(w).is_some_and(|word| word & b != 0)
    }

    fn clear(&mut self, id: u32) -> bool {
        let (w, b) = bit(id);
        match self.pending.get_mut(w) {
            Some(word) if *word & b != 0 => {
                *word &= !b;
                self.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// The next `n` keys still pending, by name, to check the caller's
    /// permission on; moves to deleting once all are checked.
    pub fn next_to_check(&mut self, ix: &Index, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while self.phase == Phase::Checking && out.len() < n {
            let Some(&id) = self.order.get(self.cursor) else {
                self.phase = Phase::Deleting;
                self.cursor = 0;
                break;
            };
            self.cursor += 1;
            if self.is_pending(id) {
                if let Some(name) = ix.key_name(self.db, id) {
                    out.push(name.to_vec());
                }
            }
        }
        out
    }

    /// Up to `n` keys still pending, by name, taken out of the job.
    pub fn batch(&mut self, ix: &Index, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n.min(self.left));
        while out.len() < n && self.left > 0 {
            let Some(&id) = self.order.get(self.cursor) else {
                break;
            };
            self.cursor += 1;
            if self.clear(id) {
                if let Some(name) = ix.key_name(self.db, id) {
                    out.push(name.to_vec());
                }
            }
        }
        if self.cursor >= self.order.len() {
            self.left = 0;
        }
        out
    }

    /// Whether it stopped before deleting what it was for (flushed, or a
    /// check failed): then its sets are left as they are.
    pub fn abandoned(&self) -> bool {
        self.abandoned
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
        self.abandoned = true;
        self.left = 0;
        self.pending = Vec::new();
        self.order = Vec::new();
    }
}

/// The purges in progress.
#[derive(Default)]
pub struct Purges {
    pub jobs: Vec<Job>,
    last_id: u64,
}

impl Purges {
    /// A purge of the keys `order` that carry `tags` now (their
    /// `Index::member_ids`, just taken); pins the database's ids.
    pub fn start(
        &mut self,
        ix: &mut Index,
        db: Db,
        tags: Vec<Vec<u8>>,
        user: Option<Vec<u8>>,
        order: Vec<u32>,
    ) -> (u64, usize) {
        let n = order.len();
        ix.pin(db, true);
        self.last_id += 1;
        self.jobs
            .push(Job::new(self.last_id, db, tags, user, order));
        (self.last_id, n)
    }

    /// `key` was written or deleted by something else: it is no longer any
    /// purge's to delete. Call before the index forgets the key.
    pub fn touched(&mut self, ix: &Index, db: Db, key: &[u8]) {
        if self.jobs.is_empty() {
            return;
        }
        let Some(id) = ix.key_id(db, key) else {
            return;
        };
        for j in self.jobs.iter_mut().filter(|j| j.db == db) {
            j.clear(id);
        }
    }

    pub fn get(&mut self, id: u64) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    /// The jobs with nothing left, out of the list (their ids unpinned).
    pub fn take_done(&mut self, ix: &mut Index) -> Vec<Job> {
        let (done, running): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.jobs)
            .into_iter()
            .partition(Job::done);
        self.jobs = running;
        for j in &done {
            ix.pin(j.db, false);
        }
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
            if db.is_none_or(|d| d == j.db) {
                j.abandon();
            }
        }
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    fn index(n: usize) -> Index {
        let mut ix = Index::default();
        for i in 0..n {
            ix.add(0, format!("k{i}").as_bytes(), b"t");
        }
        ix
    }

    #[test]
    fn checks_then_deletes_what_nobody_touched() {
        let mut ix = index(10);
        let mut p = Purges::default();
        let tags = vec![b"t".to_vec()];
        let order = ix.member_ids(0, &tags);
        let (id, n) = p.start(&mut ix, 0, tags, Some(b"u".to_vec()), order);
        assert_eq!(n, 10);
        p.touched(&ix, 0, b"k1");
        ix.add(0, b"late", b"t"); // first tagged after the call: not touched
        let j = p.get(id).unwrap();
        assert_eq!(j.phase, Phase::Checking);
        let mut checked = j.next_to_check(&ix, 100);
        checked.sort();
        assert_eq!(checked.len(), 9);
        assert!(j.next_to_check(&ix, 100).is_empty());
        assert_eq!(j.phase, Phase::Deleting);
        let mut all = j.batch(&ix, 4);
        all.extend(j.batch(&ix, 100));
        assert_eq!(all.len(), 9);
        assert!(!all.contains(&b"k1".to_vec()) && !all.contains(&b"late".to_vec()));
        assert!(j.done());
        assert_eq!(p.take_done(&mut ix).len(), 1);
    }

    #[test]
    fn callers_and_flushes() {
        let mut ix = index(5);
        let mut p = Purges::default();
        let tags = vec![b"t".to_vec()];
        let order = ix.member_ids(0, &tags);
        let (id, _) = p.start(&mut ix, 0, tags, None, order);
        p.get(id).unwrap().waiter = Some(9);
        assert!(p.forget_waiter(9));
        assert!(!p.forget_waiter(9));
        assert_eq!(p.keys_left(), 5);
        p.flushed(Some(4));
        assert_eq!(p.keys_left(), 5);
        p.flushed(Some(0));
        assert_eq!(p.keys_left(), 0);
    }
}
