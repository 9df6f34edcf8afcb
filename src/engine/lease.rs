//! Lease bookkeeping for TAG.GETL and TAG.SET … LEASE, in plain Rust.
//!
//! Every lease and every purge mark carries a number from one sequence, so
//! "did this happen after the lease was issued" is a comparison, exact even
//! within one millisecond. Marks are kept only while some lease could still
//! be refused by them: memory is bounded by the outstanding leases and the
//! purges made during the longest of them. Nothing here is persisted or
//! replicated: a lost lease costs one extra fill, never a stale value.

use super::error::{Error, Result};
use super::index::Db;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub seq: u64,
    pub expires_ms: i64,
}

/// What a fill with a token may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Store,
    /// The lease was issued, but the key was written, deleted, filled,
    /// purged through one of the tags, or the lease lapsed since.
    Refuse,
}

pub struct Book {
    seq: u64,
    secret: RandomState,
    leases: HashMap<(Db, Vec<u8>), Lease>,
    purged: HashMap<Vec<u8>, u64>,
}

impl Default for Book {
    fn default() -> Self {
        Book {
            seq: 0,
            secret: RandomState::new(),
            leases: HashMap::new(),
            purged: HashMap::new(),
        }
    }
}

impl Book {
    fn mac(&self, seq: u64) -> u64 {
        self.secret.hash_one(seq)
    }

    fn token(&self, seq: u64) -> String {
        format!("{seq:x}-{:016x}", self.mac(seq))
    }

    /// The sequence number of a token this process issued.
    fn parse(&self, token: &[u8]) -> Result<u64> {
        let malformed = || Error::Lease("malformed or never issued");
        let text = std::str::from_utf8(token).map_err(|_| malformed())?;
        let (seq, mac) = text.split_once('-').ok_or_else(malformed)?;
        let seq = u64::from_str_radix(seq, 16).map_err(|_| malformed())?;
        let mac = u64::from_str_radix(mac, 16).map_err(|_| malformed())?;
        if mac != self.mac(seq) || seq == 0 || seq > self.seq {
            return Err(malformed());
        }
        Ok(seq)
    }

    pub fn held(&self, db: Db, key: &[u8], now_ms: i64) -> Option<Lease> {
        self.leases
            .get(&(db, key.to_vec()))
            .copied()
            .filter(|l| l.expires_ms > now_ms)
    }

    /// Issues a lease on a miss, unless a live one is held. Returns the
    /// token and the lease.
    pub fn issue(
        &mut self,
        db: Db,
        key: &[u8],
        ttl_ms: i64,
        now_ms: i64,
    ) -> Option<(String, Lease)> {
        if self.held(db, key, now_ms).is_some() {
            return None;
        }
        self.seq += 1;
        let lease = Lease {
            seq: self.seq,
            expires_ms: now_ms.saturating_add(ttl_ms),
        };
        self.leases.insert((db, key.to_vec()), lease);
        Some((self.token(self.seq), lease))
    }

    /// Decides a fill of `key` carrying `tags` with `token`, and consumes
    /// the lease when the fill may go ahead. Errors for a token this
    /// process never issued.
    pub fn redeem(
        &mut self,
        db: Db,
        key: &[u8],
        token: &[u8],
        tags: &[&[u8]],
        now_ms: i64,
    ) -> Result<Verdict> {
        let seq = self.parse(token)?;
        let Some(lease) = self.held(db, key, now_ms).filter(|l| l.seq == seq) else {
            return Ok(Verdict::Refuse);
        };
        if tags
            .iter()
            .any(|t| self.purged.get(*t).is_some_and(|&p| p > lease.seq))
        {
            self.leases.remove(&(db, key.to_vec()));
            return Ok(Verdict::Refuse);
        }
        self.leases.remove(&(db, key.to_vec()));
        self.prune();
        Ok(Verdict::Store)
    }

    /// The key was written or deleted: its lease, if any, is void.
    pub fn key_changed(&mut self, db: Db, key: &[u8]) -> bool {
        if self.leases.is_empty() {
            return false;
        }
        let gone = self.leases.remove(&(db, key.to_vec())).is_some();
        if gone {
            self.prune();
        }
        gone
    }

    /// The lease with `seq` lapsed (if it is still the key's lease).
    pub fn lapse(&mut self, db: Db, key: &[u8], seq: u64) -> bool {
        let k = (db, key.to_vec());
        if self.leases.get(&k).is_some_and(|l| l.seq == seq) {
            self.leases.remove(&k);
            self.prune();
            return true;
        }
        false
    }

    pub fn tags_purged(&mut self, tags: &[Vec<u8>]) {
        if self.leases.is_empty() {
            self.purged.clear();
            return;
        }
        self.seq += 1;
        for t in tags {
            self.purged.insert(t.clone(), self.seq);
        }
        if self.purged.len() > 2 * self.leases.len() + 1024 {
            self.prune();
        }
    }

    /// Drops purge marks that no outstanding lease is older than.
    fn prune(&mut self) {
        match self.leases.values().map(|l| l.seq).min() {
            None => self.purged.clear(),
            Some(oldest) => self.purged.retain(|_, &mut p| p > oldest),
        }
    }

    pub fn clear(&mut self) {
        self.leases.clear();
        self.purged.clear();
    }

    pub fn outstanding(&self) -> usize {
        self.leases.len()
    }

    #[cfg(test)]
    pub fn marks(&self) -> usize {
        self.purged.len()
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lease_per_key_until_filled() {
        let mut b = Book::default();
        let (tok, _) = b.issue(0, b"k", 1000, 0).unwrap();
        assert!(b.issue(0, b"k", 1000, 1).is_none());
        assert!(b.issue(1, b"k", 1000, 1).is_some(), "databases are apart");
        assert_eq!(
            b.redeem(0, b"k", tok.as_bytes(), &[b"t"], 2),
            Ok(Verdict::Store)
        );
        assert_eq!(
            b.redeem(0, b"k", tok.as_bytes(), &[b"t"], 3),
            Ok(Verdict::Refuse),
            "one store per token"
        );
    }

    #[test]
    fn purge_after_issue_refuses_only_its_tags() {
        let mut b = Book::default();
        let (t1, _) = b.issue(0, b"a", 1000, 0).unwrap();
        let (t2, _) = b.issue(0, b"b", 1000, 0).unwrap();
        b.tags_purged(&[b"x".to_vec()]);
        assert_eq!(
            b.redeem(0, b"a", t1.as_bytes(), &[b"x"], 1),
            Ok(Verdict::Refuse)
        );
        assert_eq!(
            b.redeem(0, b"b", t2.as_bytes(), &[b"y"], 1),
            Ok(Verdict::Store)
        );
    }

    #[test]
    fn purge_before_issue_does_not_refuse() {
        let mut b = Book::default();
        let (_, _) = b.issue(0, b"other", 1000, 0).unwrap();
        b.tags_purged(&[b"x".to_vec()]);
        let (t, _) = b.issue(0, b"a", 1000, 0).unwrap();
        assert_eq!(
            b.redeem(0, b"a", t.as_bytes(), &[b"x"], 1),
            Ok(Verdict::Store)
        );
    }

    #[test]
    fn write_and_lapse_refuse() {
        let mut b = Book::default();
        let (t, _) = b.issue(0, b"a", 1000, 0).unwrap();
        assert!(b.key_changed(0, b"a"));
        assert_eq!(b.redeem(0, b"a", t.as_bytes(), &[], 1), Ok(Verdict::Refuse));
        let (t, _) = b.issue(0, b"a", 10, 0).unwrap();
        assert_eq!(
            b.redeem(0, b"a", t.as_bytes(), &[], 10),
            Ok(Verdict::Refuse),
            "lapsed"
        );
        let (_, l) = b.issue(0, b"a", 10, 20).unwrap();
        assert!(b.lapse(0, b"a", l.seq));
        assert!(!b.lapse(0, b"a", l.seq));
    }

    #[test]
    fn bad_tokens_are_errors() {
        let mut b = Book::default();
        for bad in [&b""[..], b"zz", b"1-2", b"\xff", b"5"] {
            assert!(b.redeem(0, b"a", bad, &[], 0).is_err(), "{bad:?}");
        }
        let other = Book::default();
        let (t, _) = b.issue(0, b"a", 10, 0).unwrap();
        let mut o = other;
        assert!(
            o.redeem(0, b"a", t.as_bytes(), &[], 0).is_err(),
            "another server's token"
        );
    }

    #[test]
    fn marks_are_bounded() {
        let mut b = Book::default();
        b.tags_purged(&[b"x".to_vec()]);
        assert_eq!(b.marks(), 0, "no lease, nothing to remember");
        let (t, _) = b.issue(0, b"a", 1000, 0).unwrap();
        for i in 0..5000 {
            b.tags_purged(&[format!("t{i}").into_bytes()]);
        }
        assert!(b.marks() <= 5000);
        b.redeem(0, b"a", t.as_bytes(), &[], 1).unwrap();
        assert_eq!(b.marks(), 0);
        assert_eq!(b.outstanding(), 0);
    }
}
