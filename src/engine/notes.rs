//! Notes of the members client commands name for tag sets, kept in order
//! so that a `SADD` that changed nothing still counts when it came after a
//! key's overwrite. Plain Rust.

use std::collections::HashMap;

/// Members that client commands name for a tag set (`SADD`, `SREM`,
/// `SMOVE`), seen by the command filter before the command runs. The set's
/// notification checks each against the set. A `SADD` that changes nothing
/// sends no notification: if its key had just been overwritten (client code
/// rewriting a key, then adding it to its set again), its note keeps the
/// membership that the overwrite's cleanup would otherwise take away.
///
/// Order decides. A note counts against a cleanup owed before it; a later
/// write of its member (any command that changes the key) ends it. Inside
/// `EXEC` the queued commands were noted when they were queued, before the
/// writes of the transaction ran: a cleanup owed inside `EXEC` counts any
/// note still standing, and writes there end none.
#[derive(Default)]
pub struct Named {
    by_set: HashMap<Vec<u8>, Vec<Note>>,
    /// How many notes name each member.
    members: HashMap<Vec<u8>, usize>,
    count: usize,
    /// Transactions begun and not yet executed or discarded: their notes
    /// must wait for their `EXEC`.
    open: usize,
    last_multi: u64,
}

#[derive(Clone, Debug)]
struct Note {
    member: Vec<u8>,
    seq: u64,
}

const NAMED_MAX: usize = 100_000;

impl Named {
    pub fn note(&mut self, set: &[u8], members: impl Iterator<Item = Vec<u8>>, seq: u64) {
        if self.count > NAMED_MAX {
            *self = Named::default();
        }
        let list = self.by_set.entry(set.to_vec()).or_default();
        for member in members {
            *self.members.entry(member.clone()).or_default() += 1;
            list.push(Note { member, seq });
            self.count += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The most recent `MULTI`.
    pub fn last_multi(&self) -> u64 {
        self.last_multi
    }

    /// A client began (`true`, at `seq`) or ended (`false`) a transaction.
    pub fn transaction(&mut self, begun: bool, seq: u64) {
        if begun {
            self.last_multi = seq;
        }
        self.open = if begun {
            self.open.saturating_add(1)
        } else {
            self.open.saturating_sub(1)
        };
    }

    fn forget(&mut self, member: &[u8], n: usize) {
        if let Some(c) = self.members.get_mut(member) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.members.remove(member);
            }
        }
        self.count = self.count.saturating_sub(n);
    }

    /// `key` was written: notes on it no longer have the last word.
    pub fn written(&mut self, key: &[u8]) {
        if self.count == 0 || !self.members.contains_key(key) {
            return;
        }
        let mut gone = 0;
        self.by_set.retain(|_, list| {
            let before = list.len();
            list.retain(|n| n.member != key);
            gone += before - list.len();
            !list.is_empty()
        });
        self.forget(key, gone);
    }

    /// Forgets the notes of commands that have run (all, unless a
    /// transaction is still being queued).
    pub fn settled(&mut self) {
        if self.open == 0 && self.count > 0 {
            self.by_set.clear();
            self.members.clear();
            self.count = 0;
        }
    }

    /// Whether a client command named `member` for `set` after a cleanup
    /// owed at `owed_seq` (`in_exec`: owed inside an `EXEC` whose `MULTI`
    /// came at that point or before; queued notes count from there). Uses
    /// the note up.
    pub fn claim(
        &mut self,
        set: &[u8],
        member: &[u8],
        owed_seq: u64,
        in_exec: Option<u64>,
    ) -> bool {
        let Some(list) = self.by_set.get_mut(set) else {
            return false;
        };
        let Some(i) = list
            .iter()
            .position(|n| n.member == member && n.seq > in_exec.unwrap_or(owed_seq))
        else {
            return false;
        };
        list.swap_remove(i);
        if list.is_empty() {
            self.by_set.remove(set);
        }
        self.forget(member, 1);
        true
    }

    /// The members named for `set` (forgotten here); `None` when none.
    pub fn take(&mut self, set: &[u8]) -> Option<Vec<Vec<u8>>> {
        let list = self.by_set.remove(set)?;
        for n in &list {
            self.forget(&n.member, 1);
        }
        Some(list.into_iter().map(|n| n.member).collect())
    }
}
