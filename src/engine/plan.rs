//! Plans: everything a command will write, and every key it must be allowed
//! to touch, computed before anything is written. The server checks every
//! key of the plan (type, ACL, slot), then applies the `writes` in order and
//! mirrors each into the index; nothing it could have checked can fail half
//! way. Plans borrow the command's arguments rather than copy them.

use super::index::{Db, Index, Scope};
use super::slot;
use super::{Owed, State, Wake};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::collections::BTreeMap;

pub type Bytes<'a> = Cow<'a, [u8]>;

/// The members of a set write: most often one key, kept inline.
pub type Members<'a> = SmallVec<[Bytes<'a>; 1]>;

/// What a plan's keys need: access and type, per key.
pub type Checks<'s> = SmallVec<[(&'s [u8], Access, Kind); 6]>;

/// What a command does to a key, for the caller's ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Delete,
    /// Changing the key's expiry (marking it stale).
    Expire,
}

/// The type a key must have, if it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Any,
    Set,
    String,
    Hash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check<'a> {
    pub key: Bytes<'a>,
    pub access: Access,
    pub kind: Kind,
}

/// One write into Redis, with absolute keys and times: applied, and
/// replicated, as written here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write<'a> {
    /// `SET key value [PXAT deadline | KEEPTTL]`.
    SetString {
        key: Bytes<'a>,
        value: Bytes<'a>,
        deadline: Option<i64>,
        keep_ttl: bool,
    },
    /// `SADD set member...`.
    SetAdd {
        set: Bytes<'a>,
        members: Members<'a>,
    },
    /// `SREM set member...`.
    SetRem {
        set: Bytes<'a>,
        members: Members<'a>,
    },
    /// `DEL key...`.
    Del { keys: Vec<Bytes<'a>> },
    /// `UNLINK key...`: as `DEL`, the memory freed in the background (a tag
    /// set of a million members is not freed while everyone waits).
    Unlink { keys: Vec<Bytes<'a>> },
    /// `HSET key field value`.
    HashSet {
        key: Bytes<'a>,
        field: Bytes<'a>,
        value: Bytes<'a>,
    },
    /// `HDEL key field`.
    HashDel { key: Bytes<'a>, field: Bytes<'a> },
    /// Marks `key` stale, if it exists: it expires at `until` at the latest
    /// (an earlier expiry is kept), and the stale hash `hash` names it.
    /// Replicated as `PEXPIREAT` and `HSET`.
    MarkStale {
        key: Bytes<'a>,
        hash: Bytes<'a>,
        until: i64,
    },
}

impl Write<'_> {
    /// The keys the write touches, with the access and type it needs.
    fn needs<'s>(&'s self, out: &mut Checks<'s>) {
        match self {
            Write::SetString { key, .. } => out.push((key, Access::Write, Kind::Any)),
            Write::SetAdd { set, .. } | Write::SetRem { set, .. } => {
                out.push((set, Access::Write, Kind::Set))
            }
            Write::Del { keys } | Write::Unlink { keys } => {
                out.extend(keys.iter().map(|k| (k.as_ref(), Access::Delete, Kind::Any)))
            }
            Write::HashSet { key, .. } | Write::HashDel { key, .. } => {
                out.push((key, Access::Write, Kind::Hash))
            }
            Write::MarkStale { key, .. } => out.push((key, Access::Expire, Kind::Any)),
        }
    }

    /// The keys the write changes (`true`: deleted).
    fn touched(&self) -> Vec<(&[u8], bool)> {
        match self {
            Write::SetString { key, .. }
            | Write::HashSet { key, .. }
            | Write::HashDel { key, .. } => vec![(key, false)],
            Write::SetAdd { set, .. } | Write::SetRem { set, .. } => vec![(set, false)],
            Write::Del { keys } | Write::Unlink { keys } => {
                keys.iter().map(|k| (k.as_ref(), true)).collect()
            }
            // Its value stays: a purge in progress still deletes it.
            Write::MarkStale { .. } => Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Keys to check beyond those the writes touch (read, or kept).
    pub extra: Vec<Check<'a>>,
    pub writes: Vec<Write<'a>>,
    /// The writes whose replies add up to the keys a purge deleted.
    pub counted: Vec<usize>,
    /// Replicate the whole plan as one `TAG.APPLY` (its absolute form)
    /// rather than each write: one propagated operation is the cheapest.
    pub as_apply: bool,
    /// A key the command declares for writing in its key specs: the server
    /// checked it against the caller's ACL before the command ran.
    pub declared: Option<&'a [u8]>,
    /// Its keys were found in this node's index (a purge): in a cluster
    /// they may span slots, all served here.
    pub local: bool,
}

impl<'a> Plan<'a> {
    pub fn check(&mut self, key: impl Into<Bytes<'a>>, access: Access, kind: Kind) {
        self.extra.push(Check {
            key: key.into(),
            access,
            kind,
        });
    }

    pub fn write(&mut self, w: Write<'a>) {
        self.writes.push(w);
    }

    /// Every key the plan touches, with the access and type it needs.
    pub fn checks(&self) -> Checks<'_> {
        let mut out = SmallVec::with_capacity(self.writes.len() + self.extra.len());
        out.extend(
            self.extra
                .iter()
                .map(|c| (c.key.as_ref(), c.access, c.kind)),
        );
        for w in &self.writes {
            w.needs(&mut out);
        }
        out
    }

    /// The plan as `key value unix-ms|KEEPTTL|PERSIST numadd set...`, the
    /// arguments of one `TAG.APPLY`, if it was planned as one. `numbers` is
    /// room for the two numbers.
    pub fn apply_form<'s>(
        &'s self,
        numbers: &'s mut [Decimal; 2],
    ) -> Option<SmallVec<[&'s [u8]; 10]>> {
        if !self.as_apply {
            return None;
        }
        let [expiry, count] = numbers;
        let mut head = None;
        let mut adds = 0;
        for w in &self.writes {
            match w {
                Write::SetString {
                    key,
                    value,
                    deadline,
                    keep_ttl,
                } => head = Some((key.as_ref(), value.as_ref(), *deadline, *keep_ttl)),
                Write::SetAdd { .. } => adds += 1,
                Write::SetRem { .. } => {}
                _ => return None,
            }
        }
        let (key, value, deadline, keep_ttl) = head?;
        let mut out = SmallVec::with_capacity(3 + self.writes.len());
        out.push(key);
        out.push(value);
        out.push(match (deadline, keep_ttl) {
            (Some(d), _) => expiry.of(d),
            (None, true) => b"KEEPTTL",
            (None, false) => b"PERSIST",
        });
        out.push(count.of(adds));
        for w in &self.writes {
            if let Write::SetAdd { set, .. } = w {
                out.push(set.as_ref());
            }
        }
        for w in &self.writes {
            if let Write::SetRem { set, .. } = w {
                out.push(set.as_ref());
            }
        }
        Some(out)
    }
}

/// Room to write an integer in decimal without allocating.
#[derive(Default)]
pub struct Decimal([u8; 20]);

impl Decimal {
    pub fn of(&mut self, n: i64) -> &[u8] {
        let mut at = self.0.len();
        let mut v = n.unsigned_abs();
        loop {
            at -= 1;
            self.0[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            at -= 1;
            self.0[at] = b'-';
        }
        &self.0[at..]
    }
}

/// Where the index of a tag lives. On a standalone server: one set per tag,
/// `<prefix><tag>`. In a cluster (`slotted`), one set per tag and slot,
/// `tagcache:idx:{<n>}<tag>`, where `{<n>}` hashes to the slot of the keys
/// it holds, so that it lives, migrates and fails over with them; a
/// client-written `<prefix><tag>` set is still honoured for the members of
/// its own slot.
#[derive(Clone, Copy)]
pub struct Prefix<'a> {
    pub tags: &'a [u8],
    pub slotted: bool,
}

/// The per-slot index sets of a cluster.
pub const SLOT_INDEX: &[u8] = b"tagcache:idx:";

impl<'a> Prefix<'a> {
    /// The client-layout set of a tag: `<prefix><tag>`.
    pub fn set(&self, tag: &[u8]) -> Vec<u8> {
        [self.tags, tag].concat()
    }

    /// The set the module writes `key` into for `tag`.
    pub fn set_for(&self, tag: &[u8], key: &[u8]) -> Vec<u8> {
        if !self.slotted {
            return self.set(tag);
        }
        let n = slot::name_in(slot::slot(key));
        let mut out = Vec::with_capacity(SLOT_INDEX.len() + n.len() + 2 + tag.len());
        out.extend_from_slice(SLOT_INDEX);
        out.push(b'{');
        out.extend_from_slice(n);
        out.push(b'}');
        out.extend_from_slice(tag);
        out
    }

    /// The hash that holds `key`'s stale state: one per database, in a
    /// cluster one per slot (it moves with the slot).
    pub fn stale_hash(&self, key: &[u8]) -> Vec<u8> {
        use super::stale::STALE_HASH;
        if !self.slotted {
            return STALE_HASH.to_vec();
        }
        [STALE_HASH, b"{", slot::name_in(slot::slot(key)), b"}"].concat()
    }

    /// Whether `key` is a stale hash.
    pub fn is_stale_hash(&self, key: &[u8]) -> bool {
        use super::stale::STALE_HASH;
        match key.strip_prefix(STALE_HASH) {
            Some(rest) => rest.is_empty() || (self.slotted && rest.starts_with(b"{")),
            None => false,
        }
    }

    /// Every set that may hold `key` for `tag`: the module's, and in a
    /// cluster a client-written set of the same slot.
    pub fn sets_holding(&self, tag: &[u8], key: &[u8]) -> Vec<Vec<u8>> {
        let mine = self.set_for(tag, key);
        if !self.slotted {
            return vec![mine];
        }
        let legacy = self.set(tag);
        if slot::slot(&legacy) == slot::slot(key) {
            vec![mine, legacy]
        } else {
            vec![mine]
        }
    }

    /// Every set of `tag` that holds members of `scope`.
    pub fn scope_sets(&self, tag: &[u8], scope: Scope) -> Vec<Vec<u8>> {
        match scope {
            Scope::All => vec![self.set(tag)],
            Scope::Slot(s) => {
                let n = slot::name_in(s);
                let mine = [SLOT_INDEX, b"{", n, b"}", tag].concat();
                let legacy = self.set(tag);
                if slot::slot(&legacy) == s {
                    vec![mine, legacy]
                } else {
                    vec![mine]
                }
            }
        }
    }

    /// The tag whose index `key` is, and which of its members it holds.
    pub fn index_of<'k>(&self, key: &'k [u8]) -> Option<(&'k [u8], Scope)> {
        if !self.slotted {
            return key.strip_prefix(self.tags).map(|t| (t, Scope::All));
        }
        if let Some(rest) = key.strip_prefix(SLOT_INDEX) {
            let rest = rest.strip_prefix(b"{")?;
            let close = rest.iter().position(|&b| b == b'}')?;
            let tag = rest.get(close + 1..)?;
            return Some((tag, Scope::Slot(slot::slot(key))));
        }
        key.strip_prefix(self.tags)
            .map(|t| (t, Scope::Slot(slot::slot(key))))
    }

    /// The tag whose index `key` is.
    pub fn tag_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        self.index_of(key).map(|(t, _)| t)
    }
}

/// The absolute form of an expiry, as it is applied and replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub deadline: Option<i64>,
    pub keep_ttl: bool,
}

/// A value to write with its tags (TAG.SET).
pub struct Fill<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub expiry: Expiry,
    /// Distinct tags.
    pub tags: &'a [&'a [u8]],
}

fn one(key: &[u8]) -> Members<'_> {
    smallvec::smallvec![Cow::Borrowed(key)]
}

/// TAG.SET: the value, then the tags that end and the tags that start. A
/// deadline already past deletes the key (as `SET … PXAT <past>` does).
pub fn tag_set<'a>(ix: &Index, db: Db, p: &Prefix, fill: &Fill<'a>, now_ms: i64) -> Plan<'a> {
    let Fill {
        key,
        value,
        expiry,
        tags,
    } = *fill;
    if expiry.deadline.is_some_and(|d| d <= now_ms) {
        let old = ix.tags(db, key);
        let mut plan = Plan::default();
        for t in tags.iter().filter(|t| !old.iter().any(|o| o == *t)) {
            plan.check(p.set_for(t, key), Access::Write, Kind::Set);
        }
        for t in &old {
            for set in p.sets_holding(t, key) {
                plan.write(Write::SetRem {
                    set: set.into(),
                    members: one(key),
                });
            }
        }
        plan.write(Write::Del {
            keys: vec![Cow::Borrowed(key)],
        });
        return plan;
    }
    let mut rem = Vec::new();
    ix.each_tag(db, key, |t| {
        if !tags.contains(&t) {
            rem.extend(p.sets_holding(t, key));
        }
    });
    let add = tags.iter().map(|t| p.set_for(t, key)).collect();
    string_with_sets(key, value, expiry, add, rem)
}

/// `TAG.SET … STALE`: the key is fresh until `fresh_until`, stale after
/// (its expiry, already in the plan, is later). The plan is replicated
/// write by write then (`TAG.APPLY` carries no stale state).
pub fn soft_expiry<'a>(plan: &mut Plan<'a>, p: &Prefix, key: &'a [u8], fresh_until: i64) {
    if !plan
        .writes
        .iter()
        .any(|w| matches!(w, Write::SetString { .. }))
    {
        return;
    }
    plan.as_apply = false;
    plan.write(Write::HashSet {
        key: p.stale_hash(key).into(),
        field: Cow::Borrowed(key),
        value: fresh_until.to_string().into_bytes().into(),
    });
}

/// A string value written with the tag sets it joins (`add`) and leaves
/// (`rem`), by absolute name: what TAG.SET does, and what it replicates as
/// `TAG.APPLY key value unix-ms|KEEPTTL|PERSIST numadd set...`.
pub fn string_with_sets<'a>(
    key: &'a [u8],
    value: &'a [u8],
    expiry: Expiry,
    add: Vec<Vec<u8>>,
    rem: Vec<Vec<u8>>,
) -> Plan<'a> {
    let mut plan = Plan::default();
    plan.writes.reserve(1 + add.len() + rem.len());
    plan.write(Write::SetString {
        key: key.into(),
        value: value.into(),
        deadline: expiry.deadline,
        keep_ttl: expiry.keep_ttl,
    });
    for set in rem {
        plan.write(Write::SetRem {
            set: set.into(),
            members: one(key),
        });
    }
    for set in add {
        plan.write(Write::SetAdd {
            set: set.into(),
            members: one(key),
        });
    }
    plan.as_apply = true;
    plan
}

/// A plain string write of `key` (VER.SET, VER.BUMP): the value replaces
/// whatever the key held, so whatever tags it carried end.
pub fn overwrite<'a>(
    plan: &mut Plan<'a>,
    ix: &Index,
    db: Db,
    p: &Prefix,
    key: Bytes<'a>,
    value: Bytes<'a>,
    expiry: Expiry,
) {
    let tags = ix.tags(db, &key);
    for t in tags {
        for set in p.sets_holding(&t, &key) {
            plan.write(Write::SetRem {
                set: set.into(),
                members: smallvec::smallvec![key.clone()],
            });
        }
    }
    plan.write(Write::SetString {
        key,
        value,
        deadline: expiry.deadline,
        keep_ttl: expiry.keep_ttl,
    });
}

/// TAG.ADD (`add`) or TAG.REM: the tags whose membership changes (their
/// number is the reply). Tagging is a write on the key (a tag makes it
/// deletable by a purge), and every named tag set is checked.
pub fn tag_change<'a>(
    ix: &Index,
    db: Db,
    p: &Prefix,
    key: &'a [u8],
    tags: &[&[u8]],
    add: bool,
) -> (Plan<'a>, i64) {
    let mut plan = Plan::default();
    plan.check(key, Access::Write, Kind::Any);
    let mut changed = 0;
    for t in tags {
        if ix.has(db, key, t) == add {
            plan.check(p.set_for(t, key), Access::Write, Kind::Set);
            continue;
        }
        changed += 1;
        if add {
            plan.write(Write::SetAdd {
                set: p.set_for(t, key).into(),
                members: one(key),
            });
        } else {
            for set in p.sets_holding(t, key) {
                plan.write(Write::SetRem {
                    set: set.into(),
                    members: one(key),
                });
            }
        }
    }
    (plan, changed)
}

/// Pairs of writes that one `SMOVE` can make: a key's removal from a set
/// it is in (`is_in` says yes) and its addition to a set it is not in (says
/// no), each of one member, in the order the plan has them: `(removal,
/// addition)` by index in `writes`. A re-tagged key leaves one set and
/// joins another in one command call rather than two.
pub fn set_moves(
    writes: &[Write<'_>],
    is_in: impl Fn(&[u8], &[u8]) -> Option<bool>,
) -> SmallVec<[(usize, usize); 4]> {
    let mut out = SmallVec::new();
    let mut taken: SmallVec<[usize; 4]> = SmallVec::new();
    for (i, w) in writes.iter().enumerate() {
        let Write::SetRem { set, members } = w else {
            continue;
        };
        let [member] = members.as_slice() else {
            continue;
        };
        if is_in(set, member) != Some(true) {
            continue;
        }
        let partner = writes
            .iter()
            .enumerate()
            .position(|(j, other)| match other {
                Write::SetAdd {
                    set: to,
                    members: m,
                } => {
                    !taken.contains(&j)
                        && matches!(m.as_slice(), [x] if x == member)
                        && is_in(to, member) == Some(false)
                }
                _ => false,
            });
        if let Some(j) = partner {
            taken.push(j);
            out.push((i, j));
        }
    }
    out
}

/// The keys that carry any of `tags`, each once.
pub fn purge_members(ix: &Index, db: Db, tags: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut members: Vec<Vec<u8>> = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        let found = ix.members(db, t);
        if i == 0 {
            members = found;
        } else {
            let mut seen: std::collections::HashSet<Vec<u8>> = members.iter().cloned().collect();
            members.extend(found.into_iter().filter(|m| seen.insert(m.clone())));
        }
    }
    members
}

/// What a purge does to the sets of the tags it purges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagSets {
    /// Every member goes: the sets are deleted outright (TAG.PURGE).
    Delete,
    /// Some members may stay: the deleted ones are taken out (a rule).
    Remove,
}

/// Deletes `members` (the keys that carry `tags`, as `purge_members` found
/// them, possibly narrowed) and takes them out of every other tag set they
/// are in; the sets of `tags` themselves as `sets` says.
pub fn purge<'a>(
    ix: &Index,
    db: Db,
    p: &Prefix,
    tags: &[Vec<u8>],
    members: &'a [Vec<u8>],
    sets: TagSets,
) -> Plan<'a> {
    let mut plan = Plan {
        local: true,
        ..Plan::default()
    };
    let own_sets = index_sets(ix, db, p, tags, members);
    for set in &own_sets {
        plan.check(set.clone(), Access::Delete, Kind::Set);
    }
    // The tag sets go first: their deletion untags their keys in the index
    // in one pass, before the keys themselves go.
    if sets == TagSets::Delete && !own_sets.is_empty() {
        plan.write(Write::Unlink {
            keys: own_sets.iter().map(|s| s.clone().into()).collect(),
        });
    }
    let mut others: BTreeMap<Vec<u8>, Vec<Bytes<'a>>> = BTreeMap::new();
    // A tag set deleted here may itself carry tags: it leaves their sets.
    if sets == TagSets::Delete {
        for set in &own_sets {
            ix.each_tag(db, set, |own| {
                if !tags.iter().any(|x| x.as_slice() == own) {
                    for other in p.sets_holding(own, set) {
                        others
                            .entry(other)
                            .or_default()
                            .push(Cow::Owned(set.clone()));
                    }
                }
            });
        }
    }
    // Grouped by tag (and slot, in a cluster) first: the set names are
    // made once per group, not once per key.
    let mut groups: hashbrown::HashMap<(&[u8], u16), Vec<Bytes<'a>>, foldhash::fast::RandomState> =
        Default::default();
    for m in members {
        let slot = if p.slotted { slot::slot(m) } else { 0 };
        ix.each_tag_ref(db, m, |t| {
            if sets != TagSets::Remove && tags.iter().any(|x| x.as_slice() == t) {
                return;
            }
            groups
                .entry((t, slot))
                .or_default()
                .push(Cow::Borrowed(m.as_slice()));
        });
    }
    for ((tag, _), keys) in groups {
        let Some(first) = keys.first() else { continue };
        let holding = p.sets_holding(tag, first);
        let Some((last, rest)) = holding.split_last() else {
            continue;
        };
        for other in rest {
            others
                .entry(other.clone())
                .or_default()
                .extend(keys.iter().cloned());
        }
        others.entry(last.clone()).or_default().extend(keys);
    }
    // The keys go before their sets' removals: their deletion forgets
    // each in the index in one step, which leaves the removals nothing to
    // look up there.
    for chunk in members.chunks(1024) {
        plan.counted.push(plan.writes.len());
        plan.write(Write::Del {
            keys: chunk.iter().map(|k| Cow::Borrowed(k.as_slice())).collect(),
        });
    }
    for (set, keys) in others {
        plan.write(Write::SetRem {
            set: set.into(),
            members: keys.into(),
        });
    }
    plan
}

/// Marks `keys` stale (soft invalidation): each expires at `until` at the
/// latest and is named in its stale hash. Each reply counts a key that
/// existed.
pub fn mark_stale<'a>(p: &Prefix, keys: &'a [Vec<u8>], until: i64) -> Plan<'a> {
    let mut plan = Plan {
        local: true,
        ..Plan::default()
    };
    for k in keys {
        plan.counted.push(plan.writes.len());
        plan.write(Write::MarkStale {
            key: Cow::Borrowed(k.as_slice()),
            hash: p.stale_hash(k).into(),
            until,
        });
    }
    plan
}

/// The index sets of `tags`: on a standalone server one per tag; in a
/// cluster, those that hold `members` (one per tag and slot, and the
/// client-written sets of the same slots).
pub fn index_sets(
    ix: &Index,
    db: Db,
    p: &Prefix,
    tags: &[Vec<u8>],
    members: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    if !p.slotted {
        return tags.iter().map(|t| p.set(t)).collect();
    }
    let mut out = std::collections::BTreeSet::new();
    for m in members {
        for t in tags {
            if ix.has(db, m, t) {
                out.extend(p.sets_holding(t, m));
            }
        }
    }
    out.into_iter().collect()
}

impl State {
    /// Keeps the index equal to the tag sets after `w` was applied; tells
    /// the lease book, and (`fire`) the rules, which keys it changed.
    /// Returns the waiters it released. `stated`: the plan's own set writes
    /// state every tag the string write ends or keeps (TAG.SET's plan), so
    /// the string write itself leaves the index alone.
    pub fn mirror(&mut self, db: Db, p: &Prefix, w: &Write, stated: bool, fire: bool) -> Vec<Wake> {
        // A sliced purge in progress no longer deletes what this changes
        // (asked before the index forgets the key).
        if !self.purges.jobs.is_empty() {
            for (key, _) in w.touched() {
                self.purges.touched(db, key);
            }
        }
        if !self.ghosts.is_empty() {
            for (key, _) in w.touched() {
                self.ghosts.remove(&(db, key.to_vec()));
            }
        }
        let ix = &mut self.index;
        match w {
            Write::SetString { key, .. } => {
                if !stated {
                    ix.forget_key(db, key);
                }
                if self.stale.clear(db, key) {
                    self.owed.push_back(Owed::Fresh {
                        db,
                        key: key.to_vec(),
                    });
                }
                if let Some((tag, scope)) = p.index_of(key) {
                    ix.drop_tag_in(db, tag, scope);
                }
            }
            Write::SetAdd { set, members } => {
                if let Some(tag) = p.tag_of(set) {
                    for m in members {
                        ix.add(db, m, tag);
                    }
                }
            }
            Write::SetRem { set, members } => {
                if let Some(tag) = p.tag_of(set) {
                    ix.remove_many(db, tag, members);
                }
            }
            Write::Del { keys } | Write::Unlink { keys } => {
                // A cluster's purge deletes a set per slot of the same tag:
                // their members are dropped in one pass per tag.
                let mut slots: BTreeMap<&[u8], Vec<u16>> = BTreeMap::new();
                for k in keys {
                    ix.forget_key(db, k);
                    if self.stale.clear(db, k) {
                        self.owed.push_back(Owed::Fresh {
                            db,
                            key: k.to_vec(),
                        });
                    }
                    match p.index_of(k) {
                        Some((tag, Scope::All)) => ix.forget_tag(db, tag),
                        Some((tag, Scope::Slot(s))) => slots.entry(tag).or_default().push(s),
                        None => {}
                    }
                }
                for (tag, list) in slots {
                    ix.drop_tag_in_slots(db, tag, &list);
                }
            }
            Write::HashSet { key, field, .. } if p.is_stale_hash(key) => {
                self.stale.mark(db, field);
            }
            Write::HashDel { key, field } if p.is_stale_hash(key) => {
                self.stale.clear(db, field);
            }
            Write::HashSet { .. } | Write::HashDel { .. } => {}
            Write::MarkStale { key, .. } => {
                self.stale.mark(db, key);
                // A refresh lease out before the key was marked again is
                // void: the next reader gets a new one at once.
                self.leases.key_changed(db, key);
            }
        }
        let fire = fire && self.has_rules(db);
        if !fire && !self.watching() {
            return Vec::new();
        }
        let mut wakes = Vec::new();
        for (key, gone) in w.touched() {
            wakes.extend(if gone {
                self.key_deleted(db, key)
            } else {
                self.key_written(db, key)
            });
            if fire {
                self.fire_rules(db, key);
            }
        }
        wakes
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    const P: Prefix = Prefix {
        tags: b"tag:",
        slotted: false,
    };

    const C: Prefix = Prefix {
        tags: b"tag:",
        slotted: true,
    };

    #[test]
    fn a_retagged_key_moves_between_sets_it_leaves_and_joins() {
        let rem = |set: &'static [u8]| Write::SetRem {
            set: set.into(),
            members: one(b"k"),
        };
        let add = |set: &'static [u8]| Write::SetAdd {
            set: set.into(),
            members: one(b"k"),
        };
        let writes = vec![
            rem(b"tag:a"),
            rem(b"tag:b"),
            rem(b"tag:gone"),
            add(b"tag:c"),
            add(b"tag:held"),
            add(b"tag:d"),
        ];
        // `tag:gone` does not hold k (nothing to move from); `tag:held`
        // already does (nothing to add): neither is paired.
        let is_in = |set: &[u8], _: &[u8]| match set {
            b"tag:a" | b"tag:b" | b"tag:held" => Some(true),
            b"tag:unknown" => None,
            _ => Some(false),
        };
        assert_eq!(set_moves(&writes, is_in).as_slice(), &[(0, 3), (1, 5)]);
        // Where the index cannot tell, nothing is paired.
        assert!(set_moves(&writes, |_, _| None).is_empty());
        let several = vec![
            Write::SetRem {
                set: Cow::Borrowed(&b"tag:a"[..]),
                members: smallvec::smallvec![Cow::Borrowed(&b"k"[..]), Cow::Borrowed(&b"j"[..])],
            },
            add(b"tag:c"),
        ];
        assert!(set_moves(&several, is_in).is_empty());
    }

    #[test]
    fn a_cluster_keeps_a_set_per_tag_and_slot() {
        let set = C.set_for(b"t", b"product:42");
        assert!(set.starts_with(b"tagcache:idx:{"));
        assert!(set.ends_with(b"}t"));
        assert_eq!(slot::slot(&set), slot::slot(b"product:42"));
        assert_eq!(
            C.index_of(&set),
            Some((&b"t"[..], Scope::Slot(slot::slot(&set))))
        );
        // A client-written set is honoured for its own slot only.
        let legacy = b"tag:{u}x";
        assert_eq!(
            C.index_of(legacy),
            Some((&b"{u}x"[..], Scope::Slot(slot::slot(b"u"))))
        );
        assert_eq!(C.sets_holding(b"{u}x", b"{u}a").len(), 2);
        assert_eq!(C.sets_holding(b"{u}x", b"other").len(), 1);
        assert_eq!(
            C.scope_sets(b"{u}x", Scope::Slot(slot::slot(b"u"))).len(),
            2
        );
        // Standalone: one set per tag, as clients write it.
        assert_eq!(P.set_for(b"t", b"product:42"), b"tag:t".to_vec());
        assert_eq!(P.sets_holding(b"t", b"k"), vec![b"tag:t".to_vec()]);
        assert_eq!(P.index_of(b"tag:t"), Some((&b"t"[..], Scope::All)));
        assert_eq!(P.index_of(b"tagcache:idx:{1}t"), None);
    }

    #[test]
    fn a_cluster_purge_names_each_slot_set_and_spans_slots() {
        let mut ix = Index::default();
        ix.add(0, b"{a}1", b"t");
        ix.add(0, b"{b}1", b"t");
        ix.add(0, b"{b}1", b"u");
        let members = vec![b"{a}1".to_vec(), b"{b}1".to_vec()];
        let plan = purge(&ix, 0, &C, &[b"t".to_vec()], &members, TagSets::Delete);
        assert!(plan.local);
        let Write::Unlink { keys } = &plan.writes[0] else {
            panic!("the sets go first");
        };
        let mut want = vec![C.set_for(b"t", b"{a}1"), C.set_for(b"t", b"{b}1")];
        want.sort();
        assert_eq!(keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>(), want);
        assert!(plan
            .writes
            .iter()
            .any(|w| matches!(w, Write::SetRem { set, .. }
            if set.as_ref() == C.set_for(b"u", b"{b}1").as_slice())));
    }

    fn keep() -> Expiry {
        Expiry {
            deadline: None,
            keep_ttl: false,
        }
    }

    #[test]
    fn tag_set_checks_old_and_new_sets_before_writing() {
        let mut ix = Index::default();
        ix.add(0, b"k", b"old");
        let fill = Fill {
            key: b"k",
            value: b"v",
            expiry: keep(),
            tags: &[b"new"],
        };
        let plan = tag_set(&ix, 0, &P, &fill, 0);
        let mut checked: Vec<&[u8]> = plan.checks().into_iter().map(|c| c.0).collect();
        checked.sort();
        assert_eq!(checked, vec![&b"k"[..], b"tag:new", b"tag:old"]);
        assert_eq!(plan.writes.len(), 3);
        assert!(matches!(&plan.writes[1], Write::SetRem { set, .. } if set.as_ref() == b"tag:old"));
        let mut numbers = Default::default();
        let words = plan.apply_form(&mut numbers).unwrap();
        assert_eq!(
            words.as_slice(),
            [&b"k"[..], b"v", b"PERSIST", b"1", b"tag:new", b"tag:old"]
        );
    }

    #[test]
    fn tag_set_in_the_past_deletes() {
        let mut ix = Index::default();
        ix.add(0, b"k", b"a");
        let e = Expiry {
            deadline: Some(5),
            keep_ttl: false,
        };
        let fill = Fill {
            key: b"k",
            value: b"v",
            expiry: e,
            tags: &[b"b"],
        };
        let plan = tag_set(&ix, 0, &P, &fill, 10);
        assert!(matches!(plan.writes.last(), Some(Write::Del { .. })));
    }

    #[test]
    fn purge_takes_members_out_of_their_other_sets() {
        let mut s = State::default();
        s.index.add(0, b"k1", b"a");
        s.index.add(0, b"k1", b"b");
        s.index.add(0, b"k2", b"a");
        let tags = vec![b"a".to_vec()];
        let members = purge_members(&s.index, 0, &tags);
        assert_eq!(members.len(), 2);
        let plan = purge(&s.index, 0, &P, &tags, &members, TagSets::Delete);
        assert!(plan
            .writes
            .iter()
            .any(|w| matches!(w, Write::SetRem { set, members } if set.as_ref() == b"tag:b" && members.as_slice() == [Cow::Borrowed(&b"k1"[..])])));
        for w in &plan.writes {
            s.mirror(0, &P, w, false, true);
        }
        assert_eq!((s.index.keys(), s.index.tag_count()), (0, 0));
    }

    #[test]
    fn mirror_of_a_tag_set_deleted_untags_its_keys() {
        let mut s = State::default();
        s.index.add(0, b"k", b"a");
        s.mirror(
            0,
            &P,
            &Write::Del {
                keys: vec![Cow::Borrowed(&b"tag:a"[..])],
            },
            false,
            true,
        );
        assert!(!s.index.is_tagged(0, b"k"));
    }
}
