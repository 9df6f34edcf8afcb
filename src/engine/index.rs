//! The tag index, both ways, for every database: which keys carry a tag
//! (the members of the tag's set `<prefix><tag>`) and which tags a key
//! carries. It mirrors the tag sets exactly: every change to a tag set,
//! whoever makes it, is applied here as it happens, so a module command
//! never reads a stale answer, and a purge finds its keys without a call
//! into Redis. Plain Rust, no Redis calls.
//!
//! A key's name is stored once (an `Rc` shared by both directions); tag
//! names are interned per database and referenced by a `u32`.

use std::collections::HashMap as StdMap;

/// Maps keyed by client bytes: randomly seeded, so their layout cannot be
/// predicted from outside, and several times cheaper than SipHash.
type HashMap<K, V> = StdMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::rc::Rc;

pub type Db = i32;
type TagId = u32;
type Name = Rc<[u8]>;

struct Tag {
    name: Box<[u8]>,
    members: HashSet<Name>,
}

/// The tag ids of one key. Most keys carry one or two tags: those are kept
/// inline, with no allocation of their own.
enum Ids {
    Inline([TagId; 2], u8),
    Heap(Box<[TagId]>),
}

impl Ids {
    fn one(id: TagId) -> Ids {
        Ids::Inline([id, 0], 1)
    }

    fn as_slice(&self) -> &[TagId] {
        match self {
            Ids::Inline(ids, n) => ids.get(..usize::from(*n)).unwrap_or_default(),
            Ids::Heap(ids) => ids,
        }
    }

    fn contains(&self, id: TagId) -> bool {
        self.as_slice().contains(&id)
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn push(&mut self, id: TagId) {
        let next = match &*self {
            Ids::Inline([a, _], 1) => Ids::Inline([*a, id], 2),
            Ids::Inline(_, 0) => Ids::one(id),
            other => Ids::Heap(other.as_slice().iter().copied().chain([id]).collect()),
        };
        *self = next;
    }

    /// Whether `id` was there.
    fn remove(&mut self, id: TagId) -> bool {
        if !self.contains(id) {
            return false;
        }
        let rest: Vec<TagId> = self
            .as_slice()
            .iter()
            .copied()
            .filter(|&i| i != id)
            .collect();
        *self = match rest.as_slice() {
            [] => Ids::Inline([0, 0], 0),
            [a] => Ids::one(*a),
            [a, b] => Ids::Inline([*a, *b], 2),
            _ => Ids::Heap(rest.into_boxed_slice()),
        };
        true
    }
}

/// Slots of `tags` are indexed only by ids that `intern` handed out and
/// that still name a live tag (a tag is freed when its last member goes,
/// and every key's id list drops it at the same moment), so the lookups
/// below cannot miss.
#[derive(Default)]
struct DbIndex {
    keys: HashMap<Name, Ids>,
    ids: HashMap<Box<[u8]>, TagId>,
    tags: Vec<Option<Tag>>,
    free: Vec<TagId>,
}

impl DbIndex {
    fn tag(&self, id: TagId) -> Option<&Tag> {
        self.tags.get(id as usize).and_then(Option::as_ref)
    }

    fn tag_mut(&mut self, id: TagId) -> Option<&mut Tag> {
        self.tags.get_mut(id as usize).and_then(Option::as_mut)
    }

    fn intern(&mut self, name: &[u8]) -> TagId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let tag = Tag {
            name: name.into(),
            members: HashSet::default(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.tags.get_mut(id as usize) {
                    *slot = Some(tag);
                }
                id
            }
            None => {
                self.tags.push(Some(tag));
                // 2^32 live tags in one database would need hundreds of GB.
                TagId::try_from(self.tags.len() - 1).unwrap_or(TagId::MAX)
            }
        };
        self.ids.insert(name.into(), id);
        id
    }

    /// Frees the tag once no key carries it.
    fn release_if_empty(&mut self, id: TagId) {
        if self.tag(id).is_some_and(|t| t.members.is_empty()) {
            if let Some(t) = self.tags.get_mut(id as usize).and_then(Option::take) {
                self.ids.remove(&t.name);
                self.free.push(id);
            }
        }
    }

    fn add(&mut self, key: &[u8], tag: &[u8]) -> bool {
        let id = self.intern(tag);
        let name: Name = match self.keys.get_mut(key) {
            Some(ids) if ids.contains(id) => return false,
            Some(ids) => {
                ids.push(id);
                match self.keys.get_key_value(key) {
                    Some((k, _)) => k.clone(),
                    None => Rc::from(key),
                }
            }
            None => {
                let name: Name = Rc::from(key);
                self.keys.insert(name.clone(), Ids::one(id));
                name
            }
        };
        if let Some(t) = self.tag_mut(id) {
            t.members.insert(name);
        }
        true
    }

    fn remove(&mut self, key: &[u8], tag: &[u8]) -> bool {
        let Some(&id) = self.ids.get(tag) else {
            return false;
        };
        let Some(ids) = self.keys.get_mut(key) else {
            return false;
        };
        if !ids.remove(id) {
            return false;
        }
        if ids.is_empty() {
            self.keys.remove(key);
        }
        if let Some(t) = self.tag_mut(id) {
            t.members.remove(key);
        }
        self.release_if_empty(id);
        true
    }

    fn remove_key(&mut self, key: &[u8]) -> Vec<Vec<u8>> {
        let Some(ids) = self.keys.remove(key) else {
            return Vec::new();
        };
        let mut names = Vec::with_capacity(ids.as_slice().len());
        for &id in ids.as_slice() {
            if let Some(t) = self.tag_mut(id) {
                t.members.remove(key);
                names.push(t.name.to_vec());
            }
            self.release_if_empty(id);
        }
        self.shrink();
        names
    }

    /// Untags every key of `tag`; with `collect`, returns them.
    fn drop_tag(&mut self, tag: &[u8], collect: bool) -> Vec<Vec<u8>> {
        let Some(id) = self.ids.remove(tag) else {
            return Vec::new();
        };
        let Some(t) = self.tags.get_mut(id as usize).and_then(Option::take) else {
            return Vec::new();
        };
        self.free.push(id);
        let mut keys = Vec::with_capacity(if collect { t.members.len() } else { 0 });
        for k in t.members {
            let emptied = match self.keys.get_mut(&k) {
                Some(ids) => {
                    ids.remove(id);
                    ids.is_empty()
                }
                None => false,
            };
            if emptied {
                self.keys.remove(&k);
            }
            if collect {
                keys.push(k.to_vec());
            }
        }
        self.shrink();
        keys
    }

    /// Gives memory back once most entries are gone, so the index stays
    /// proportional to the live tagged keys rather than to their peak.
    fn shrink(&mut self) {
        if self.keys.capacity() > 64 && self.keys.len() * 4 < self.keys.capacity() {
            self.keys.shrink_to(self.keys.len() * 2);
        }
        if self.ids.capacity() > 64 && self.ids.len() * 4 < self.ids.capacity() {
            self.ids.shrink_to(self.ids.len() * 2);
        }
    }
}

/// The index of every database of the server.
#[derive(Default)]
pub struct Index {
    dbs: HashMap<Db, DbIndex>,
    /// Counts changes, so that a command can tell whether the index moved
    /// while it checked its keys (opening a key can expire it).
    changes: u64,
}

impl Index {
    pub fn changes(&self) -> u64 {
        self.changes
    }

    fn db_mut(&mut self, db: Db) -> &mut DbIndex {
        self.dbs.entry(db).or_default()
    }

    /// An emptied database keeps nothing, not even table capacity.
    fn tidy(&mut self, db: Db) {
        if self.dbs.get(&db).is_some_and(|d| d.keys.is_empty()) {
            self.dbs.remove(&db);
        }
    }

    /// The tags `key` carries.
    pub fn tags(&self, db: Db, key: &[u8]) -> Vec<Vec<u8>> {
        let Some(d) = self.dbs.get(&db) else {
            return Vec::new();
        };
        d.keys
            .get(key)
            .map(|ids| {
                ids.as_slice()
                    .iter()
                    .filter_map(|&id| d.tag(id).map(|t| t.name.to_vec()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Calls `f` with each tag `key` carries, without copying the names.
    pub fn each_tag(&self, db: Db, key: &[u8], mut f: impl FnMut(&[u8])) {
        if let Some(d) = self.dbs.get(&db) {
            for &id in d.keys.get(key).map(Ids::as_slice).unwrap_or_default() {
                if let Some(t) = d.tag(id) {
                    f(&t.name);
                }
            }
        }
    }

    pub fn is_tagged(&self, db: Db, key: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|d| d.keys.contains_key(key))
    }

    pub fn has(&self, db: Db, key: &[u8], tag: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|d| {
            d.ids
                .get(tag)
                .and_then(|&id| d.tag(id))
                .is_some_and(|t| t.members.contains(key))
        })
    }

    /// Whether some key carries `tag`.
    pub fn has_members(&self, db: Db, tag: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|d| d.ids.contains_key(tag))
    }

    /// The keys that carry `tag`.
    pub fn members(&self, db: Db, tag: &[u8]) -> Vec<Vec<u8>> {
        self.dbs
            .get(&db)
            .and_then(|d| d.ids.get(tag).and_then(|&id| d.tag(id)))
            .map(|t| t.members.iter().map(|k| k.to_vec()).collect())
            .unwrap_or_default()
    }

    /// Tags `key` with `tag`; whether it was new.
    pub fn add(&mut self, db: Db, key: &[u8], tag: &[u8]) -> bool {
        self.changes += 1;
        self.db_mut(db).add(key, tag)
    }

    /// Untags; whether the key carried the tag.
    pub fn remove(&mut self, db: Db, key: &[u8], tag: &[u8]) -> bool {
        self.changes += 1;
        let Some(d) = self.dbs.get_mut(&db) else {
            return false;
        };
        let removed = d.remove(key, tag);
        self.tidy(db);
        removed
    }

    /// The key is gone or was replaced: it carries nothing now. Returns the
    /// tags it carried.
    pub fn remove_key(&mut self, db: Db, key: &[u8]) -> Vec<Vec<u8>> {
        self.changes += 1;
        let Some(d) = self.dbs.get_mut(&db) else {
            return Vec::new();
        };
        let tags = d.remove_key(key);
        self.tidy(db);
        tags
    }

    /// The tag's set is gone: no key carries the tag. Returns its keys.
    pub fn drop_tag(&mut self, db: Db, tag: &[u8]) -> Vec<Vec<u8>> {
        self.changes += 1;
        let Some(d) = self.dbs.get_mut(&db) else {
            return Vec::new();
        };
        let keys = d.drop_tag(tag, true);
        self.tidy(db);
        keys
    }

    /// As `drop_tag`, when nobody needs the keys.
    pub fn forget_tag(&mut self, db: Db, tag: &[u8]) {
        self.changes += 1;
        if let Some(d) = self.dbs.get_mut(&db) {
            d.drop_tag(tag, false);
            self.tidy(db);
        }
    }

    /// Makes the tag's members exactly `members` (its set was rewritten).
    pub fn set_members(&mut self, db: Db, tag: &[u8], members: &[Vec<u8>]) {
        self.drop_tag(db, tag);
        for m in members {
            self.add(db, m, tag);
        }
    }

    /// `from` was renamed to `to`: `to`'s old tags end, `from`'s move over.
    /// Returns (tags moved, tags `to` lost).
    pub fn rename(&mut self, db: Db, from: &[u8], to: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let lost = self.remove_key(db, to);
        let moved = self.remove_key(db, from);
        for t in &moved {
            self.add(db, to, t);
        }
        (moved, lost)
    }

    /// `FLUSHDB` (one database) or `FLUSHALL` (`None`).
    pub fn flush(&mut self, db: Option<Db>) {
        self.changes += 1;
        match db {
            Some(db) => drop(self.dbs.remove(&db)),
            None => self.dbs.clear(),
        }
    }

    pub fn swap(&mut self, a: Db, b: Db) {
        self.changes += 1;
        swap_dbs(&mut self.dbs, a, b);
    }

    /// Number of tagged keys, across databases.
    pub fn keys(&self) -> usize {
        self.dbs.values().map(|d| d.keys.len()).sum()
    }

    /// Number of tags that some key carries, across databases.
    pub fn tag_count(&self) -> usize {
        self.dbs.values().map(|d| d.ids.len()).sum()
    }
}

/// `SWAPDB` for any per-database state: what was under `a` goes under `b`
/// and back.
pub fn swap_dbs<V, S: std::hash::BuildHasher>(map: &mut StdMap<Db, V, S>, a: Db, b: Db) {
    let va = map.remove(&a);
    let vb = map.remove(&b);
    if let Some(v) = va {
        map.insert(b, v);
    }
    if let Some(v) = vb {
        map.insert(a, v);
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        v.sort();
        v
    }

    fn v(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|t| t.as_bytes().to_vec()).collect()
    }

    #[test]
    fn both_directions_agree() {
        let mut ix = Index::default();
        assert!(ix.add(0, b"k1", b"a"));
        assert!(!ix.add(0, b"k1", b"a"));
        ix.add(0, b"k1", b"b");
        ix.add(0, b"k2", b"a");
        assert_eq!(sorted(ix.members(0, b"a")), v(&["k1", "k2"]));
        assert_eq!(sorted(ix.tags(0, b"k1")), v(&["a", "b"]));
        assert_eq!((ix.keys(), ix.tag_count()), (2, 2));
        assert!(ix.remove(0, b"k1", b"b"));
        assert_eq!(ix.tag_count(), 1, "a tag nobody carries is forgotten");
        assert_eq!(sorted(ix.remove_key(0, b"k1")), v(&["a"]));
        assert_eq!(ix.members(0, b"a"), v(&["k2"]));
        assert!(ix.tags(1, b"k2").is_empty(), "databases are apart");
    }

    #[test]
    fn dropping_a_tag_untags_its_keys() {
        let mut ix = Index::default();
        ix.add(0, b"k1", b"a");
        ix.add(0, b"k1", b"b");
        ix.add(0, b"k2", b"a");
        assert_eq!(sorted(ix.drop_tag(0, b"a")), v(&["k1", "k2"]));
        assert_eq!(ix.tags(0, b"k1"), v(&["b"]));
        assert!(!ix.is_tagged(0, b"k2"));
        ix.add(0, b"k3", b"a");
        assert_eq!(
            ix.members(0, b"a"),
            v(&["k3"]),
            "a freed id is reused cleanly"
        );
    }

    #[test]
    fn rename_moves_tags_and_ends_the_targets() {
        let mut ix = Index::default();
        ix.add(0, b"from", b"a");
        ix.add(0, b"to", b"b");
        let (moved, lost) = ix.rename(0, b"from", b"to");
        assert_eq!((moved, lost), (v(&["a"]), v(&["b"])));
        assert_eq!(ix.tags(0, b"to"), v(&["a"]));
        assert!(ix.members(0, b"b").is_empty());
        assert!(!ix.is_tagged(0, b"from"));
    }

    #[test]
    fn set_members_replaces() {
        let mut ix = Index::default();
        ix.add(0, b"x", b"t");
        ix.set_members(0, b"t", &v(&["y", "z"]));
        assert_eq!(sorted(ix.members(0, b"t")), v(&["y", "z"]));
        assert!(!ix.is_tagged(0, b"x"));
    }

    #[test]
    fn memory_follows_live_keys() {
        let mut ix = Index::default();
        for i in 0..5000 {
            ix.add(0, format!("k{i}").as_bytes(), b"t");
        }
        for i in 0..5000 {
            ix.remove_key(0, format!("k{i}").as_bytes());
        }
        assert!(ix.dbs.is_empty(), "an emptied database keeps nothing");
        ix.add(0, b"x", b"c");
        ix.flush(Some(0));
        assert_eq!((ix.keys(), ix.tag_count()), (0, 0));
    }

    #[test]
    fn many_tags_spill_and_come_back() {
        let mut ix = Index::default();
        for t in ["a", "b", "c", "d"] {
            ix.add(0, b"k", t.as_bytes());
        }
        assert_eq!(sorted(ix.tags(0, b"k")), v(&["a", "b", "c", "d"]));
        for t in ["c", "a", "d"] {
            assert!(ix.remove(0, b"k", t.as_bytes()));
        }
        assert_eq!(ix.tags(0, b"k"), v(&["b"]));
        assert!(ix.remove(0, b"k", b"b"));
        assert!(!ix.is_tagged(0, b"k"));
    }

    #[test]
    fn swap() {
        let mut ix = Index::default();
        ix.add(0, b"k", b"a");
        ix.swap(0, 1);
        assert!(ix.is_tagged(1, b"k") && !ix.is_tagged(0, b"k"));
    }
}
