//! The tag index, both ways, for every database: which keys carry a tag
//! (the members of the tag's set `<prefix><tag>`) and which tags a key
//! carries. It mirrors the tag sets exactly: every change to a tag set,
//! whoever makes it, is applied here as it happens, so a module command
//! never reads a stale answer, and a purge finds its keys without a call
//! into Redis. Plain Rust, no Redis calls.
//!
//! Memory is what a big cache pays per tagged key, so names are stored
//! once: a key's name and tag ids live in a slot of a slab, found by name
//! through a table of slot numbers; a tag's members are slot numbers
//! (4 bytes each); tag names are interned per database.

use super::entry::{Name, Tags};
use super::slab::Slab;
use hashbrown::HashTable;
use std::collections::HashMap as StdMap;
use std::hash::BuildHasher;

/// Maps keyed by client bytes: randomly seeded, so their layout cannot be
/// predicted from outside, and several times cheaper than SipHash.
type Hasher = foldhash::fast::RandomState;
type HashMap<K, V> = StdMap<K, V, Hasher>;
type HashSet<K> = std::collections::HashSet<K, Hasher>;

pub type Db = i32;

/// Which members of a tag one index set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every member (a standalone server's one set per tag).
    All,
    /// The members in one cluster slot (a cluster's sets, one per slot).
    Slot(u16),
}

impl Scope {
    pub fn holds(&self, key: &[u8]) -> bool {
        match self {
            Scope::All => true,
            Scope::Slot(s) => super::slot::slot(key) == *s,
        }
    }
}
type TagId = u32;
type KeyId = u32;

struct Tag {
    name: Box<[u8]>,
    members: HashSet<KeyId>,
}

struct Key {
    name: Name,
    tags: Tags,
}

/// Slots of `keys` and `tags` are indexed only by ids this index handed
/// out and still refers to (an id is freed at the moment its last reference
/// goes), so the lookups below find them; they still go through `get`.
#[derive(Default)]
struct DbIndex {
    by_name: HashTable<KeyId>,
    keys: Slab<Key>,
    free_keys: Vec<KeyId>,
    tag_ids: HashMap<Box<[u8]>, TagId>,
    tags: Vec<Option<Tag>>,
    free_tags: Vec<TagId>,
    live_keys: usize,
    hasher: Hasher,
    /// No compaction now: a sliced purge is emptying the slab, and
    /// renumbering it in one step would hold the server longer than a slice
    /// (the slab goes at once if the database ends with no tagged key).
    hold: bool,
    /// Purges listing ids of this database: while any does, an id keeps
    /// naming its key (`tombs`), is not handed to another key, and nothing
    /// is renumbered.
    pins: u32,
    tombs: HashMap<KeyId, Name>,
    held_free: Vec<KeyId>,
    /// Tells this database's index from one made after a flush.
    generation: u64,
}

fn slot_id(n: usize) -> u32 {
    // 2^32 live keys or tags in one database would need hundreds of GB.
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl DbIndex {
    fn key(&self, id: KeyId) -> Option<&Key> {
        self.keys.get(id as usize).and_then(Option::as_ref)
    }

    fn tag(&self, id: TagId) -> Option<&Tag> {
        self.tags.get(id as usize).and_then(Option::as_ref)
    }

    fn tag_mut(&mut self, id: TagId) -> Option<&mut Tag> {
        self.tags.get_mut(id as usize).and_then(Option::as_mut)
    }

    fn find(&self, name: &[u8]) -> Option<KeyId> {
        self.find_hashed(self.hasher.hash_one(name), name)
    }

    fn find_hashed(&self, hash: u64, name: &[u8]) -> Option<KeyId> {
        let keys = &self.keys;
        self.by_name
            .find(hash, |&id| {
                keys.get(id as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|k| &*k.name == name)
            })
            .copied()
    }

    fn key_tags(&self, name: &[u8]) -> &[TagId] {
        self.find(name)
            .and_then(|id| self.key(id))
            .map_or(&[], |k| &k.tags)
    }

    /// The slot of `name`, made if it has none (one lookup either way:
    /// most names a slot's read or a new key's write brings are new).
    fn slot(&mut self, name: &[u8]) -> KeyId {
        let hash = self.hasher.hash_one(name);
        let (keys, hasher) = (&self.keys, &self.hasher);
        let entry = self.by_name.entry(
            hash,
            |&id| {
                keys.get(id as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|k| &*k.name == name)
            },
            |&other| {
                keys.get(other as usize)
                    .and_then(Option::as_ref)
                    .map_or(0, |k| hasher.hash_one(&*k.name))
            },
        );
        let vacant = match entry {
            hashbrown::hash_table::Entry::Occupied(found) => return *found.get(),
            hashbrown::hash_table::Entry::Vacant(vacant) => vacant,
        };
        let key = Key {
            name: Name::new(name),
            tags: Tags::default(),
        };
        let id = match self.free_keys.pop() {
            Some(id) => {
                if let Some(slot) = self.keys.get_mut(id as usize) {
                    *slot = Some(key);
                }
                id
            }
            None => {
                self.keys.push(Some(key));
                slot_id(self.keys.len() - 1)
            }
        };
        vacant.insert(id);
        self.live_keys += 1;
        id
    }

    /// Frees the slot of a key that carries no tag any more.
    fn release_key(&mut self, id: KeyId) {
        let Some(hash) = self.key(id).map(|k| self.hasher.hash_one(&*k.name)) else {
            return;
        };
        self.release_key_hashed(id, hash);
    }

    /// As `release_key`, the hash of its name known.
    fn release_key_hashed(&mut self, id: KeyId, hash: u64) {
        let Some(key) = self.keys.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        if let Ok(entry) = self.by_name.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        if self.pins > 0 {
            // A purge still lists this id: it keeps naming this key.
            self.tombs.insert(id, key.name);
            self.held_free.push(id);
        } else {
            self.free_keys.push(id);
        }
        self.live_keys = self.live_keys.saturating_sub(1);
    }

    /// The name of the key `id` stands for (a key released while pinned
    /// keeps its name until unpinned).
    fn name_of(&self, id: KeyId) -> Option<&[u8]> {
        match self.key(id) {
            Some(k) => Some(&k.name),
            None => self.tombs.get(&id).map(|n| &**n),
        }
    }

    fn intern(&mut self, name: &[u8]) -> TagId {
        if let Some(&id) = self.tag_ids.get(name) {
            return id;
        }
        let tag = Tag {
            name: name.into(),
            members: HashSet::default(),
        };
        let id = match self.free_tags.pop() {
            Some(id) => {
                if let Some(slot) = self.tags.get_mut(id as usize) {
                    *slot = Some(tag);
                }
                id
            }
            None => {
                self.tags.push(Some(tag));
                slot_id(self.tags.len() - 1)
            }
        };
        self.tag_ids.insert(name.into(), id);
        id
    }

    /// Frees the tag once no key carries it.
    fn release_tag_if_empty(&mut self, id: TagId) {
        if self.tag(id).is_some_and(|t| t.members.is_empty()) {
            if let Some(t) = self.tags.get_mut(id as usize).and_then(Option::take) {
                self.tag_ids.remove(&t.name);
                self.free_tags.push(id);
            }
        }
    }

    fn set_key_tags(&mut self, id: KeyId, tags: Tags) {
        let empty = tags.is_empty();
        if let Some(k) = self.keys.get_mut(id as usize).and_then(Option::as_mut) {
            k.tags = tags;
        }
        if empty {
            self.release_key(id);
        }
    }

    fn add(&mut self, key: &[u8], tag: &[u8]) -> bool {
        let tid = self.intern(tag);
        self.add_tid(key, tid)
    }

    fn add_tid(&mut self, key: &[u8], tid: TagId) -> bool {
        let kid = self.slot(key);
        let Some(k) = self.key(kid) else {
            return false;
        };
        if k.tags.contains(&tid) {
            return false;
        }
        let tags = k.tags.with(tid);
        self.set_key_tags(kid, tags);
        if let Some(t) = self.tag_mut(tid) {
            t.members.insert(kid);
        }
        true
    }

    fn remove(&mut self, key: &[u8], tag: &[u8]) -> bool {
        let Some(&tid) = self.tag_ids.get(tag) else {
            return false;
        };
        let removed = self.remove_tid(key, tid);
        self.release_tag_if_empty(tid);
        removed
    }

    /// Untags `key` of the tag `tid` (which stays interned: the caller
    /// releases it once it is done with it).
    fn remove_tid(&mut self, key: &[u8], tid: TagId) -> bool {
        let hash = self.hasher.hash_one(key);
        let Some(kid) = self.find_hashed(hash, key) else {
            return false;
        };
        let Some(k) = self.keys.get_mut(kid as usize).and_then(Option::as_mut) else {
            return false;
        };
        if !k.tags.contains(&tid) {
            return false;
        }
        if k.tags.len() == 1 {
            self.release_key_hashed(kid, hash);
        } else {
            k.tags = k.tags.without(tid);
        }
        if let Some(t) = self.tag_mut(tid) {
            t.members.remove(&kid);
        }
        true
    }

    /// Forgets the key; with `collect`, returns the tags it carried.
    fn remove_key(&mut self, key: &[u8], collect: bool) -> Vec<Vec<u8>> {
        let hash = self.hasher.hash_one(key);
        let Some(kid) = self.find_hashed(hash, key) else {
            return Vec::new();
        };
        let tags = match self.keys.get_mut(kid as usize).and_then(Option::as_mut) {
            Some(k) => std::mem::take(&mut k.tags),
            None => Tags::default(),
        };
        self.release_key_hashed(kid, hash);
        let mut names = Vec::with_capacity(if collect { tags.len() } else { 0 });
        for &tid in tags.iter() {
            if let Some(t) = self.tag_mut(tid) {
                t.members.remove(&kid);
                if collect {
                    names.push(t.name.to_vec());
                }
            }
            self.release_tag_if_empty(tid);
        }
        self.shrink();
        names
    }

    /// Forgets every key whose name `gone` holds, in one pass over the
    /// slab: each key is found by its id, not looked up by a copy of its
    /// name, and the tables are tidied once at the end (a slot leaving
    /// takes tens of thousands of keys at a time).
    fn forget_where(&mut self, gone: impl Fn(&[u8]) -> bool) {
        let ids: Vec<KeyId> = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.as_ref().is_some_and(|k| gone(&k.name)))
            .map(|(i, _)| slot_id(i))
            .collect();
        let mut touched: Vec<TagId> = Vec::new();
        for kid in ids {
            let Some(k) = self.keys.get_mut(kid as usize).and_then(Option::as_mut) else {
                continue;
            };
            let tags = std::mem::take(&mut k.tags);
            let hash = self.hasher.hash_one(&*k.name);
            for &tid in tags.iter() {
                if let Some(t) = self.tag_mut(tid) {
                    t.members.remove(&kid);
                    if t.members.is_empty() {
                        touched.push(tid);
                    }
                }
            }
            self.release_key_hashed(kid, hash);
        }
        for tid in touched {
            self.release_tag_if_empty(tid);
        }
        self.shrink();
    }

    /// Untags every key of `tag`; with `collect`, returns them.
    fn drop_tag(&mut self, tag: &[u8], collect: bool) -> Vec<Vec<u8>> {
        let Some(tid) = self.tag_ids.remove(tag) else {
            return Vec::new();
        };
        let Some(t) = self.tags.get_mut(tid as usize).and_then(Option::take) else {
            return Vec::new();
        };
        self.free_tags.push(tid);
        let mut keys = Vec::with_capacity(if collect { t.members.len() } else { 0 });
        for kid in t.members {
            let Some(k) = self.key(kid) else {
                continue;
            };
            if collect {
                keys.push(k.name.to_vec());
            }
            let tags = k.tags.without(tid);
            self.set_key_tags(kid, tags);
        }
        self.shrink();
        keys
    }

    /// Gives memory back once most entries are gone, so the index stays
    /// proportional to the live tagged keys rather than to their peak.
    fn shrink(&mut self) {
        if self.keys.len() > 64
            && self.live_keys * 4 < self.keys.len()
            && !self.hold
            && self.pins == 0
        {
            self.compact();
        }
        if self.tag_ids.capacity() > 64 && self.tag_ids.len() * 4 < self.tag_ids.capacity() {
            self.tag_ids.shrink_to(self.tag_ids.len() * 2);
        }
    }

    /// Renumbers the live keys into a slab of their size (amortized: it runs
    /// once three quarters of the slots have emptied).
    fn compact(&mut self) {
        let mut old = std::mem::take(&mut self.keys);
        let mut renumber = vec![KeyId::MAX; old.len()];
        let mut keys = Slab::default();
        for (slot, new_id) in old.drain().zip(renumber.iter_mut()) {
            if let Some(k) = slot {
                *new_id = slot_id(keys.len());
                keys.push(Some(k));
            }
        }
        self.keys = keys;
        self.free_keys = Vec::new();
        let mut by_name = HashTable::with_capacity(self.live_keys);
        for (i, k) in self.keys.iter().enumerate() {
            if let Some(k) = k {
                let (keys, hasher) = (&self.keys, &self.hasher);
                by_name.insert_unique(self.hasher.hash_one(&*k.name), slot_id(i), |&other| {
                    keys.get(other as usize)
                        .and_then(Option::as_ref)
                        .map_or(0, |k| hasher.hash_one(&*k.name))
                });
            }
        }
        self.by_name = by_name;
        for t in self.tags.iter_mut().flatten() {
            t.members = t
                .members
                .iter()
                .filter_map(|&old| renumber.get(old as usize).copied())
                .filter(|&id| id != KeyId::MAX)
                .collect();
        }
    }

    fn names(&self, members: &HashSet<KeyId>) -> Vec<Vec<u8>> {
        members
            .iter()
            .filter_map(|&id| self.key(id).map(|k| k.name.to_vec()))
            .collect()
    }
}

/// The index of every database of the server.
#[derive(Default)]
pub struct Index {
    dbs: HashMap<Db, DbIndex>,
    /// Counts changes, so that a command can tell whether the index moved
    /// while it checked its keys (opening a key can expire it).
    changes: u64,
    /// Compaction held back (`hold_compaction`).
    holding: bool,
}

impl Index {
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Holds compaction back while sliced purges run (`true`), or lets it
    /// happen again.
    pub fn hold_compaction(&mut self, hold: bool) {
        self.holding = hold;
        for d in self.dbs.values_mut() {
            d.hold = hold;
            if !hold {
                d.shrink();
            }
        }
    }

    fn db_mut(&mut self, db: Db) -> &mut DbIndex {
        let hold = self.holding;
        self.dbs.entry(db).or_insert_with(|| {
            static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            DbIndex {
                hold,
                generation: MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                ..DbIndex::default()
            }
        })
    }

    /// Pins `db` for a purge that lists its ids: each keeps naming its key
    /// until `unpin` with the token returned.
    pub fn pin(&mut self, db: Db) -> u64 {
        let d = self.db_mut(db);
        d.pins += 1;
        d.generation
    }

    /// Ends a pin (none if the database was flushed since: its index, and
    /// its pins, went with it).
    pub fn unpin(&mut self, db: Db, token: u64) {
        if let Some(d) = self.dbs.get_mut(&db).filter(|d| d.generation == token) {
            d.pins = d.pins.saturating_sub(1);
            if d.pins == 0 {
                let held = std::mem::take(&mut d.held_free);
                d.free_keys.extend(held);
                d.tombs = HashMap::default();
                d.shrink();
            }
        }
        self.tidy(db);
    }

    /// The name the id stands for in `db`.
    pub fn name_of(&self, db: Db, id: u32) -> Option<&[u8]> {
        self.dbs.get(&db)?.name_of(id)
    }

    /// The ids of the keys that carry any of `tags` (`all`: every one of
    /// them), each once: a purge's selection, without a name copied.
    pub fn member_ids(&self, db: Db, tags: &[Vec<u8>], all: bool) -> Vec<u32> {
        let Some(d) = self.dbs.get(&db) else {
            return Vec::new();
        };
        let ids: Vec<Option<TagId>> = tags
            .iter()
            .map(|t| d.tag_ids.get(t.as_slice()).copied())
            .collect();
        if all {
            let (Some(Some(first)), false) = (ids.first(), ids.iter().any(Option::is_none)) else {
                return Vec::new();
            };
            let want: Vec<TagId> = ids.iter().flatten().copied().collect();
            return d
                .tag(*first)
                .map(|t| {
                    t.members
                        .iter()
                        .copied()
                        .filter(|&k| {
                            d.key(k)
                                .is_some_and(|k| want.iter().all(|w| k.tags.contains(w)))
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        let mut seen = vec![0u64; d.keys.len() / 64 + 1];
        let mut out = Vec::new();
        for t in ids.iter().flatten().filter_map(|&t| d.tag(t)) {
            out.reserve(t.members.len());
            for &k in &t.members {
                if let Some(w) = seen.get_mut(k as usize / 64) {
                    let b = 1u64 << (k % 64);
                    if *w & b == 0 {
                        *w |= b;
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    /// An emptied database keeps nothing, not even table capacity.
    fn tidy(&mut self, db: Db) {
        if self
            .dbs
            .get(&db)
            .is_some_and(|d| d.live_keys == 0 && d.pins == 0)
        {
            self.dbs.remove(&db);
        }
    }

    /// The tags `key` carries.
    pub fn tags(&self, db: Db, key: &[u8]) -> Vec<Vec<u8>> {
        let Some(d) = self.dbs.get(&db) else {
            return Vec::new();
        };
        d.key_tags(key)
            .iter()
            .filter_map(|&id| d.tag(id).map(|t| t.name.to_vec()))
            .collect()
    }

    /// Calls `f` with each tag `key` carries, without copying the names.
    pub fn each_tag(&self, db: Db, key: &[u8], mut f: impl FnMut(&[u8])) {
        if let Some(d) = self.dbs.get(&db) {
            for &id in d.key_tags(key) {
                if let Some(t) = d.tag(id) {
                    f(&t.name);
                }
            }
        }
    }

    /// As `each_tag`, the names borrowed from the index for as long as it is.
    pub fn each_tag_ref<'i>(&'i self, db: Db, key: &[u8], mut f: impl FnMut(&'i [u8])) {
        if let Some(d) = self.dbs.get(&db) {
            for &id in d.key_tags(key) {
                if let Some(t) = d.tag(id) {
                    f(&t.name);
                }
            }
        }
    }

    pub fn is_tagged(&self, db: Db, key: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|d| d.find(key).is_some())
    }

    pub fn has(&self, db: Db, key: &[u8], tag: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|d| {
            d.tag_ids
                .get(tag)
                .is_some_and(|tid| d.key_tags(key).contains(tid))
        })
    }

    /// Whether some key carries `tag`.
    pub fn has_members(&self, db: Db, tag: &[u8]) -> bool {
        self.dbs
            .get(&db)
            .is_some_and(|d| d.tag_ids.contains_key(tag))
    }

    /// The keys that carry `tag`.
    pub fn members(&self, db: Db, tag: &[u8]) -> Vec<Vec<u8>> {
        self.dbs
            .get(&db)
            .and_then(|d| {
                d.tag_ids
                    .get(tag)
                    .and_then(|&id| d.tag(id))
                    .map(|t| d.names(&t.members))
            })
            .unwrap_or_default()
    }

    /// At least the number of distinct keys that carry any of `tags` (the
    /// sum of the tags' sizes), without visiting them.
    pub fn member_count_bound(&self, db: Db, tags: &[Vec<u8>]) -> usize {
        let Some(d) = self.dbs.get(&db) else {
            return 0;
        };
        tags.iter()
            .filter_map(|t| d.tag_ids.get(t.as_slice()).and_then(|&id| d.tag(id)))
            .map(|t| t.members.len())
            .sum()
    }

    /// Tags `key` with `tag`; whether it was new.
    pub fn add(&mut self, db: Db, key: &[u8], tag: &[u8]) -> bool {
        self.changes += 1;
        self.db_mut(db).add(key, tag)
    }

    /// Tags each of `keys` with `tag` (its set holds them: a set read whole).
    pub fn add_many<K: AsRef<[u8]>>(&mut self, db: Db, tag: &[u8], keys: &[K]) {
        if keys.is_empty() {
            return;
        }
        self.changes += 1;
        let d = self.db_mut(db);
        let tid = d.intern(tag);
        for k in keys {
            d.add_tid(k.as_ref(), tid);
        }
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

    /// Untags each of `keys` of `tag` (its set lost them).
    pub fn remove_many<K: AsRef<[u8]>>(&mut self, db: Db, tag: &[u8], keys: &[K]) {
        self.changes += 1;
        let Some(d) = self.dbs.get_mut(&db) else {
            return;
        };
        let Some(&tid) = d.tag_ids.get(tag) else {
            return;
        };
        for k in keys {
            d.remove_tid(k.as_ref(), tid);
        }
        d.release_tag_if_empty(tid);
        d.shrink();
        self.tidy(db);
    }

    /// The key is gone or was replaced: it carries nothing now. Returns the
    /// tags it carried.
    pub fn remove_key(&mut self, db: Db, key: &[u8]) -> Vec<Vec<u8>> {
        self.changes += 1;
        let Some(d) = self.dbs.get_mut(&db) else {
            return Vec::new();
        };
        let tags = d.remove_key(key, true);
        self.tidy(db);
        tags
    }

    /// As `remove_key`, when nobody needs the tags.
    pub fn forget_key(&mut self, db: Db, key: &[u8]) {
        self.changes += 1;
        if let Some(d) = self.dbs.get_mut(&db) {
            d.remove_key(key, false);
            self.tidy(db);
        }
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

    /// The set of `tag` that holds the members of `scope` is gone: they no
    /// longer carry the tag. Returns them in a cluster's scope (`All` just
    /// forgets them, as `forget_tag`).
    pub fn drop_tag_in(&mut self, db: Db, tag: &[u8], scope: Scope) -> Vec<Vec<u8>> {
        let Scope::Slot(s) = scope else {
            self.forget_tag(db, tag);
            return Vec::new();
        };
        self.drop_tag_in_slots(db, tag, &[s])
    }

    /// As `drop_tag_in`, for the sets of several slots in one pass.
    pub fn drop_tag_in_slots(&mut self, db: Db, tag: &[u8], slots: &[u16]) -> Vec<Vec<u8>> {
        let mut chosen = [0u64; 16384 / 64];
        for &s in slots {
            if let Some(w) = chosen.get_mut(usize::from(s / 64)) {
                *w |= 1 << (s % 64);
            }
        }
        let mut gone = self.members(db, tag);
        gone.retain(|m| {
            let s = super::slot::slot(m);
            chosen
                .get(usize::from(s / 64))
                .is_some_and(|w| w & (1 << (s % 64)) != 0)
        });
        for m in &gone {
            self.remove(db, m, tag);
        }
        gone
    }

    /// Makes the members of `tag` within `scope` exactly `members` (those
    /// of other scopes are left out). Returns the keys that were members
    /// and are no more.
    pub fn set_members_in(
        &mut self,
        db: Db,
        tag: &[u8],
        scope: Scope,
        members: &[Vec<u8>],
    ) -> Vec<Vec<u8>> {
        if scope == Scope::All {
            self.set_members(db, tag, members);
            return Vec::new();
        }
        let mut before = self.members(db, tag);
        before.retain(|m| scope.holds(m));
        for m in &before {
            self.remove(db, m, tag);
        }
        for m in members {
            if scope.holds(m) {
                self.add(db, m, tag);
            }
        }
        before.retain(|m| !self.has(db, m, tag));
        before
    }

    /// Forgets every key of `db` in one of `slots` (they left this node).
    pub fn forget_slots(&mut self, db: Db, slots: &super::moves::SlotSet) {
        self.changes += 1;
        if let Some(d) = self.dbs.get_mut(&db) {
            d.forget_where(|k| slots.holds(k));
            self.tidy(db);
        }
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
        self.dbs.values().map(|d| d.live_keys).sum()
    }

    /// Number of tags that some key carries, across databases.
    pub fn tag_count(&self) -> usize {
        self.dbs.values().map(|d| d.tag_ids.len()).sum()
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
    fn member_count_bound_is_never_below_the_distinct_count() {
        let mut ix = Index::default();
        ix.add(0, b"k1", b"a");
        ix.add(0, b"k1", b"b");
        ix.add(0, b"k2", b"b");
        let both = v(&["a", "b"]);
        assert_eq!(ix.member_count_bound(0, &both), 3);
        assert_eq!(crate::engine::plan::purge_members(&ix, 0, &both).len(), 2);
        assert_eq!(ix.member_count_bound(0, &v(&["b"])), 2);
        assert_eq!(ix.member_count_bound(0, &v(&["none"])), 0);
        assert_eq!(ix.member_count_bound(1, &both), 0);
    }

    #[test]
    fn a_slot_scope_touches_only_its_own_keys() {
        use crate::engine::slot::slot;
        let mut ix = Index::default();
        for k in ["{a}1", "{a}2", "{b}1"] {
            ix.add(0, k.as_bytes(), b"t");
        }
        let a = Scope::Slot(slot(b"a"));
        assert_eq!(sorted(ix.drop_tag_in(0, b"t", a)), v(&["{a}1", "{a}2"]));
        assert_eq!(ix.members(0, b"t"), v(&["{b}1"]));
        // Reread: members of other slots named in the set are left out.
        let gone = ix.set_members_in(0, b"t", a, &v(&["{a}2", "{b}9"]));
        assert!(gone.is_empty());
        assert_eq!(sorted(ix.members(0, b"t")), v(&["{a}2", "{b}1"]));
        let gone = ix.set_members_in(0, b"t", a, &[]);
        assert_eq!(gone, v(&["{a}2"]));
        assert_eq!(ix.members(0, b"t"), v(&["{b}1"]));
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
    fn compaction_keeps_every_live_key() {
        let mut ix = Index::default();
        for i in 0..1000 {
            ix.add(
                0,
                format!("k{i}").as_bytes(),
                if i % 2 == 0 { b"even" } else { b"odd" },
            );
        }
        for i in 0..1000 {
            if i % 10 != 0 {
                ix.remove_key(0, format!("k{i}").as_bytes());
            }
        }
        assert_eq!(ix.keys(), 100);
        assert!(
            ix.dbs.get(&0).is_some_and(|d| d.keys.len() < 1000),
            "compacted"
        );
        assert_eq!(ix.members(0, b"even").len(), 100);
        assert!(ix.members(0, b"odd").is_empty());
        assert_eq!(ix.tags(0, b"k990"), v(&["even"]));
        ix.add(0, b"new", b"odd");
        assert_eq!(ix.members(0, b"odd"), v(&["new"]));
    }

    #[test]
    fn swap() {
        let mut ix = Index::default();
        ix.add(0, b"k", b"a");
        ix.swap(0, 1);
        assert!(ix.is_tagged(1, b"k") && !ix.is_tagged(0, b"k"));
    }

    #[test]
    fn forgetting_slots_keeps_the_other_slots_keys_and_tags() {
        let mut ix = Index::default();
        let names: Vec<String> = (0..2000).map(|i| format!("k{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            ix.add(0, n.as_bytes(), b"all");
            ix.add(0, n.as_bytes(), if i % 2 == 0 { b"even" } else { b"odd" });
        }
        let pin = ix.pin(0);
        let ids = ix.member_ids(0, &[b"all".to_vec()], false);
        let mut slots = super::super::moves::SlotSet::default();
        let leaving: Vec<&String> = names
            .iter()
            .filter(|n| super::super::slot::slot(n.as_bytes()) < 8192)
            .collect();
        for n in &leaving {
            slots.add(super::super::slot::slot(n.as_bytes()));
        }
        let before = ix.changes();
        ix.forget_slots(0, &slots);
        assert!(ix.changes() > before);
        let stay = names.len() - leaving.len();
        assert!(stay > 0 && !leaving.is_empty());
        assert_eq!(ix.keys(), stay);
        assert_eq!(ix.members(0, b"all").len(), stay);
        for (i, n) in names.iter().enumerate() {
            let kept = super::super::slot::slot(n.as_bytes()) >= 8192;
            assert_eq!(ix.is_tagged(0, n.as_bytes()), kept, "{n}");
            if kept {
                let other = if i % 2 == 0 { "even" } else { "odd" };
                assert_eq!(ix.tags(0, n.as_bytes()), v(&["all", other]));
            }
        }
        // A purge listing ids still reads every name it was handed.
        let listed: Vec<&[u8]> = ids.iter().filter_map(|&id| ix.name_of(0, id)).collect();
        assert_eq!(listed.len(), names.len());
        ix.unpin(0, pin);
        // Every slot gone: the tags go with their last key.
        slots.add_range(0, 16383);
        ix.forget_slots(0, &slots);
        assert_eq!(ix.keys(), 0);
        assert!(ix.members(0, b"even").is_empty() && ix.members(0, b"all").is_empty());
        ix.add(0, b"k1", b"odd");
        assert_eq!(ix.members(0, b"odd"), v(&["k1"]));
    }
}
