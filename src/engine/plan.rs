//! Plans: everything a command will write, and every key it must be allowed
//! to touch, computed before anything is written. The server checks all the
//! `checks` (type, ACL, slot), then applies the `writes` in order and
//! mirrors each into the index; nothing it could have checked can fail half
//! way.

use super::index::{Db, Index};
use super::{State, Wake};
use std::collections::BTreeMap;

/// What a command does to a key, for the caller's ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Delete,
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
pub struct Check {
    pub key: Vec<u8>,
    pub access: Access,
    pub kind: Kind,
}

/// One write into Redis, with absolute keys and times: applied, and
/// replicated, as written here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// `SET key value [PXAT deadline | KEEPTTL]`.
    SetString {
        key: Vec<u8>,
        value: Vec<u8>,
        deadline: Option<i64>,
        keep_ttl: bool,
    },
    /// `SADD set member...`.
    SetAdd { set: Vec<u8>, members: Vec<Vec<u8>> },
    /// `SREM set member...`.
    SetRem { set: Vec<u8>, members: Vec<Vec<u8>> },
    /// `DEL key...`.
    Del { keys: Vec<Vec<u8>> },
    /// `HSET key field value`.
    HashSet {
        key: Vec<u8>,
        field: Vec<u8>,
        value: Vec<u8>,
    },
    /// `HDEL key field`.
    HashDel { key: Vec<u8>, field: Vec<u8> },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub checks: Vec<Check>,
    pub writes: Vec<Write>,
    /// The writes whose replies add up to the keys a purge deleted.
    pub counted: Vec<usize>,
    /// Replicate the whole plan as one `TAG.APPLY` (its absolute form)
    /// rather than each write: one propagated operation is the cheapest.
    pub as_apply: bool,
}

impl Plan {
    pub fn check(&mut self, key: &[u8], access: Access, kind: Kind) {
        self.checks.push(Check {
            key: key.to_vec(),
            access,
            kind,
        });
    }

    pub fn write(&mut self, w: Write) {
        self.writes.push(w);
    }

    /// The keys the plan touches, for the cluster slot check.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.checks.iter().map(|c| c.key.as_slice())
    }
}

/// Names of tag sets: `<prefix><tag>`.
pub struct Prefix<'a>(pub &'a [u8]);

impl Prefix<'_> {
    pub fn set(&self, tag: &[u8]) -> Vec<u8> {
        [self.0, tag].concat()
    }

    /// The tag whose set `key` is, if it is under the prefix.
    pub fn tag_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        key.strip_prefix(self.0)
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

/// TAG.SET: the value, then the tags that end and the tags that start. A
/// deadline already past deletes the key (as `SET … PXAT <past>` does).
pub fn tag_set(ix: &Index, db: Db, p: &Prefix, fill: &Fill, now_ms: i64) -> Plan {
    let Fill {
        key,
        value,
        expiry,
        tags,
    } = *fill;
    let old = ix.tags(db, key);
    let expired = expiry.deadline.is_some_and(|d| d <= now_ms);
    if expired {
        let mut plan = Plan::default();
        plan.check(key, Access::Write, Kind::Any);
        for t in old.iter().map(|t| t.as_slice()).chain(tags.iter().copied()) {
            plan.check(&p.set(t), Access::Write, Kind::Set);
        }
        for t in &old {
            plan.write(Write::SetRem {
                set: p.set(t),
                members: vec![key.to_vec()],
            });
        }
        plan.write(Write::Del {
            keys: vec![key.to_vec()],
        });
        return plan;
    }
    let rem = old
        .iter()
        .filter(|t| !tags.contains(&t.as_slice()))
        .map(|t| p.set(t))
        .collect();
    let add = tags.iter().map(|t| p.set(t)).collect();
    let mut plan = string_with_sets(key, value, expiry, add, rem);
    // The key's tag sets that stay are checked too: it is written.
    for t in old.iter().filter(|t| tags.contains(&t.as_slice())) {
        plan.check(&p.set(t), Access::Write, Kind::Set);
    }
    plan
}

/// A string value written with the tag sets it joins (`add`) and leaves
/// (`rem`), by absolute name: what TAG.SET does, and what it replicates as
/// `TAG.APPLY key value PXAT ms|KEEPTTL|PERSIST ADD n set... REM m set...`.
pub fn string_with_sets(
    key: &[u8],
    value: &[u8],
    expiry: Expiry,
    add: Vec<Vec<u8>>,
    rem: Vec<Vec<u8>>,
) -> Plan {
    let mut plan = Plan::default();
    plan.check(key, Access::Write, Kind::Any);
    for set in add.iter().chain(&rem) {
        plan.check(set, Access::Write, Kind::Set);
    }
    plan.write(Write::SetString {
        key: key.to_vec(),
        value: value.to_vec(),
        deadline: expiry.deadline,
        keep_ttl: expiry.keep_ttl,
    });
    for set in rem {
        plan.write(Write::SetRem {
            set,
            members: vec![key.to_vec()],
        });
    }
    for set in add {
        plan.write(Write::SetAdd {
            set,
            members: vec![key.to_vec()],
        });
    }
    plan.as_apply = true;
    plan
}

impl Plan {
    /// The plan as one `TAG.APPLY key value PXAT ms|KEEPTTL|PERSIST ADD n
    /// set... REM m set...` (command name first), if it was planned as one.
    pub fn apply_form(&self) -> Option<Vec<std::borrow::Cow<'_, [u8]>>> {
        use std::borrow::Cow::{Borrowed, Owned};
        if !self.as_apply {
            return None;
        }
        let mut out = vec![Borrowed(&b"TAG.APPLY"[..])];
        let (mut add, mut rem) = (Vec::new(), Vec::new());
        for w in &self.writes {
            match w {
                Write::SetString {
                    key,
                    value,
                    deadline,
                    keep_ttl,
                } => {
                    out.push(Borrowed(key.as_slice()));
                    out.push(Borrowed(value.as_slice()));
                    match (deadline, keep_ttl) {
                        (Some(d), _) => {
                            out.push(Borrowed(&b"PXAT"[..]));
                            out.push(Owned(d.to_string().into_bytes()));
                        }
                        (None, true) => out.push(Borrowed(&b"KEEPTTL"[..])),
                        (None, false) => out.push(Borrowed(&b"PERSIST"[..])),
                    }
                }
                Write::SetAdd { set, .. } => add.push(Borrowed(set.as_slice())),
                Write::SetRem { set, .. } => rem.push(Borrowed(set.as_slice())),
                _ => return None,
            }
        }
        out.push(Borrowed(&b"ADD"[..]));
        out.push(Owned(add.len().to_string().into_bytes()));
        out.extend(add);
        out.push(Borrowed(&b"REM"[..]));
        out.push(Owned(rem.len().to_string().into_bytes()));
        out.extend(rem);
        Some(out)
    }
}

/// A plain string write of `key` (VER.SET, VER.BUMP): the value replaces
/// whatever the key held, so whatever tags it carried end.
pub fn overwrite(
    plan: &mut Plan,
    ix: &Index,
    db: Db,
    p: &Prefix,
    key: &[u8],
    value: &[u8],
    expiry: Expiry,
) {
    plan.check(key, Access::Write, Kind::Any);
    plan.write(Write::SetString {
        key: key.to_vec(),
        value: value.to_vec(),
        deadline: expiry.deadline,
        keep_ttl: expiry.keep_ttl,
    });
    for t in ix.tags(db, key) {
        let set = p.set(&t);
        plan.check(&set, Access::Write, Kind::Set);
        plan.write(Write::SetRem {
            set,
            members: vec![key.to_vec()],
        });
    }
}

/// TAG.ADD: the tags the key does not carry yet (their number is the reply).
pub fn tag_add(ix: &Index, db: Db, p: &Prefix, key: &[u8], tags: &[&[u8]]) -> (Plan, i64) {
    let mut plan = Plan::default();
    // A tag makes the key deletable by a purge: tagging is a write.
    plan.check(key, Access::Write, Kind::Any);
    let mut added = 0;
    for t in tags {
        plan.check(&p.set(t), Access::Write, Kind::Set);
        if !ix.has(db, key, t) {
            added += 1;
            plan.write(Write::SetAdd {
                set: p.set(t),
                members: vec![key.to_vec()],
            });
        }
    }
    (plan, added)
}

/// TAG.REM: the tags the key carries (their number is the reply).
pub fn tag_rem(ix: &Index, db: Db, p: &Prefix, key: &[u8], tags: &[&[u8]]) -> (Plan, i64) {
    let mut plan = Plan::default();
    plan.check(key, Access::Write, Kind::Any);
    let mut removed = 0;
    for t in tags {
        plan.check(&p.set(t), Access::Write, Kind::Set);
        if ix.has(db, key, t) {
            removed += 1;
            plan.write(Write::SetRem {
                set: p.set(t),
                members: vec![key.to_vec()],
            });
        }
    }
    (plan, removed)
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

/// Deletes `members` (the keys that carry `tags`, as `purge_members` found
/// them, possibly narrowed) and takes them out of every other tag set they
/// are in. `whole`: every member of the tags goes, so their sets are
/// deleted outright; otherwise the members are taken out of them.
pub fn purge(
    ix: &Index,
    db: Db,
    p: &Prefix,
    tags: &[Vec<u8>],
    members: &[Vec<u8>],
    whole: bool,
) -> Plan {
    let mut plan = Plan::default();
    for t in tags {
        plan.check(&p.set(t), Access::Delete, Kind::Set);
    }
    let mut others: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for m in members {
        plan.check(m, Access::Delete, Kind::Any);
        for t in ix.tags(db, m) {
            if whole && tags.contains(&t) {
                continue;
            }
            others.entry(t).or_default().push(m.clone());
        }
    }
    for (t, keys) in others {
        let set = p.set(&t);
        if !tags.contains(&t) {
            plan.check(&set, Access::Write, Kind::Set);
        }
        plan.write(Write::SetRem { set, members: keys });
    }
    for chunk in members.chunks(1024) {
        plan.counted.push(plan.writes.len());
        plan.write(Write::Del {
            keys: chunk.to_vec(),
        });
    }
    if whole && !tags.is_empty() {
        plan.write(Write::Del {
            keys: tags.iter().map(|t| p.set(t)).collect(),
        });
    }
    plan
}

impl Write {
    /// The keys the write changes (`true`: deleted).
    fn touched(&self) -> Vec<(&[u8], bool)> {
        match self {
            Write::SetString { key, .. }
            | Write::HashSet { key, .. }
            | Write::HashDel { key, .. } => vec![(key.as_slice(), false)],
            Write::SetAdd { set, .. } | Write::SetRem { set, .. } => vec![(set.as_slice(), false)],
            Write::Del { keys } => keys.iter().map(|k| (k.as_slice(), true)).collect(),
        }
    }
}

impl State {
    /// Keeps the index equal to the tag sets after `w` was applied; tells
    /// the lease book, and (`fire`) the rules, which keys it changed.
    /// Returns the waiters it released. `stated`: the plan's own set writes
    /// state every tag the string write ends or keeps (TAG.SET's plan), so
    /// the string write itself leaves the index alone.
    pub fn mirror(
        &mut self,
        db: Db,
        p: &Prefix,
        w: &Write,
        stated: bool,
        fire: bool,
    ) -> Vec<Wake> {
        let ix = &mut self.index;
        match w {
            Write::SetString { key, .. } => {
                if !stated {
                    ix.remove_key(db, key);
                }
                if let Some(tag) = p.tag_of(key) {
                    ix.drop_tag(db, tag);
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
                    for m in members {
                        ix.remove(db, m, tag);
                    }
                }
            }
            Write::Del { keys } => {
                for k in keys {
                    ix.remove_key(db, k);
                    if let Some(tag) = p.tag_of(k) {
                        ix.drop_tag(db, tag);
                    }
                }
            }
            Write::HashSet { .. } | Write::HashDel { .. } => {}
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

    const P: Prefix = Prefix(b"tag:");

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
        let mut checked: Vec<&[u8]> = plan.keys().collect();
        checked.sort();
        assert_eq!(checked, vec![&b"k"[..], b"tag:new", b"tag:old"]);
        assert_eq!(plan.writes.len(), 3);
        assert!(matches!(&plan.writes[1], Write::SetRem { set, .. } if set == b"tag:old"));
        let repl = plan.apply_form().unwrap();
        let words: Vec<&[u8]> = repl.iter().map(|w| w.as_ref()).collect();
        assert_eq!(
            words,
            vec![
                &b"TAG.APPLY"[..],
                b"k",
                b"v",
                b"PERSIST",
                b"ADD",
                b"1",
                b"tag:new",
                b"REM",
                b"1",
                b"tag:old"
            ]
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
        let plan = purge(&s.index, 0, &P, &tags, &members, true);
        assert!(plan
            .writes
            .iter()
            .any(|w| matches!(w, Write::SetRem { set, members } if set == b"tag:b" && members == &vec![b"k1".to_vec()])));
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
                keys: vec![b"tag:a".to_vec()],
            },
            false,
            true,
        );
        assert!(!s.index.is_tagged(0, b"k"));
    }
}
