//! The reverse index: for each tagged key, the tags it carries. Plain Rust,
//! no Redis calls. The forward direction (tag -> keys) lives in Redis sets so
//! that any client can read it; this side answers "which sets hold this key"
//! when the key is re-tagged, deleted, expires or is renamed.
//!
//! Tag names are interned per database and referenced by a `u32`, so a key
//! with two tags costs one map entry, its name and eight bytes of ids.

use std::collections::HashMap;

pub type Db = i32;
type TagId = u32;

/// Interned tag names. Indexing `names`/`refs` by a `TagId` cannot go out of
/// bounds: ids are only ever made by `acquire`, which pushes both vectors in
/// step (or reuses a freed slot), and never reach clients or the keyspace.
/// Ids are `u32` to keep four bytes per tag of a key; 2^32 distinct live tags
/// in one database would need hundreds of GB for their names and sets.
#[derive(Default)]
struct TagTable {
    ids: HashMap<Box<[u8]>, TagId>,
    names: Vec<Box<[u8]>>,
    refs: Vec<u32>,
    free: Vec<TagId>,
}

impl TagTable {
    fn acquire(&mut self, name: &[u8]) -> TagId {
        if let Some(&id) = self.ids.get(name) {
            self.refs[id as usize] += 1;
            return id;
        }
        let boxed: Box<[u8]> = name.into();
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = boxed.clone();
                self.refs[id as usize] = 1;
                id
            }
            None => {
                self.names.push(boxed.clone());
                self.refs.push(1);
                (self.names.len() - 1) as TagId
            }
        };
        self.ids.insert(boxed, id);
        id
    }

    fn release(&mut self, id: TagId) {
        let i = id as usize;
        self.refs[i] -= 1;
        if self.refs[i] == 0 {
            let name = std::mem::take(&mut self.names[i]);
            self.ids.remove(&name);
            self.free.push(id);
        }
    }

    fn name(&self, id: TagId) -> &[u8] {
        &self.names[id as usize]
    }

    fn id(&self, name: &[u8]) -> Option<TagId> {
        self.ids.get(name).copied()
    }

    fn live(&self) -> usize {
        self.ids.len()
    }
}

#[derive(Default)]
struct DbIndex {
    keys: HashMap<Box<[u8]>, Box<[TagId]>>,
    tags: TagTable,
}

impl DbIndex {
    fn names(&self, ids: &[TagId]) -> Vec<Vec<u8>> {
        ids.iter().map(|&id| self.tags.name(id).to_vec()).collect()
    }

    /// Forgets the key; returns the tags it carried other than `except`.
    fn remove_except(&mut self, key: &[u8], except: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let Some(ids) = self.keys.remove(key) else {
            return Vec::new();
        };
        let mut kept = Vec::new();
        for &id in ids.iter() {
            let name = self.tags.name(id);
            if !except.iter().any(|e| e.as_slice() == name) {
                kept.push(name.to_vec());
            }
            self.tags.release(id);
        }
        self.shrink();
        kept
    }

    fn remove(&mut self, key: &[u8]) -> Vec<Vec<u8>> {
        self.remove_except(key, &[])
    }

    /// Gives memory back once most entries are gone, so the index stays
    /// proportional to the live tagged keys rather than to their peak.
    fn shrink(&mut self) {
        if self.keys.capacity() > 64 && self.keys.len() * 4 < self.keys.capacity() {
            self.keys.shrink_to(self.keys.len() * 2);
        }
        let t = &mut self.tags;
        if t.ids.capacity() > 64 && t.ids.len() * 4 < t.ids.capacity() {
            t.ids.shrink_to(t.ids.len() * 2);
        }
    }

    fn store(&mut self, key: &[u8], ids: Vec<TagId>) {
        if ids.is_empty() {
            self.keys.remove(key);
        } else {
            self.keys.insert(key.into(), ids.into_boxed_slice());
        }
    }
}

/// `SWAPDB` for any per-database state: what was under `a` goes under `b`
/// and back.
pub fn swap_dbs<V>(map: &mut HashMap<Db, V>, a: Db, b: Db) {
    let va = map.remove(&a);
    let vb = map.remove(&b);
    if let Some(v) = va {
        map.insert(b, v);
    }
    if let Some(v) = vb {
        map.insert(a, v);
    }
}

/// Reverse index for every database of the server.
#[derive(Default)]
pub struct Index {
    dbs: HashMap<Db, DbIndex>,
}

impl Index {
    /// Tags the key carries, in the order they were added.
    pub fn tags(&self, db: Db, key: &[u8]) -> Vec<Vec<u8>> {
        self.dbs
            .get(&db)
            .and_then(|d| d.keys.get(key).map(|ids| d.names(ids)))
            .unwrap_or_default()
    }

    pub fn has_tag(&self, db: Db, key: &[u8], tag: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|d| {
            d.tags
                .id(tag)
                .is_some_and(|id| d.keys.get(key).is_some_and(|ids| ids.contains(&id)))
        })
    }

    pub fn contains(&self, db: Db, key: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|d| d.keys.contains_key(key))
    }

    /// Makes the key's tags exactly `tags`; returns the tags it had before.
    pub fn replace(&mut self, db: Db, key: &[u8], tags: &[&[u8]]) -> Vec<Vec<u8>> {
        let d = self.dbs.entry(db).or_default();
        let old = d.remove(key);
        let ids = tags.iter().map(|t| d.tags.acquire(t)).collect();
        d.store(key, ids);
        old
    }

    /// Adds tags to the key; returns how many it did not carry before.
    pub fn add(&mut self, db: Db, key: &[u8], tags: &[&[u8]]) -> usize {
        let d = self.dbs.entry(db).or_default();
        let mut ids: Vec<TagId> = d.keys.get(key).map(|b| b.to_vec()).unwrap_or_default();
        let mut added = 0;
        for t in tags {
            if d.tags.id(t).is_some_and(|id| ids.contains(&id)) {
                continue;
            }
            ids.push(d.tags.acquire(t));
            added += 1;
        }
        d.store(key, ids);
        added
    }

    /// Removes tags from the key; returns how many it carried.
    pub fn remove_tags(&mut self, db: Db, key: &[u8], tags: &[&[u8]]) -> usize {
        let Some(d) = self.dbs.get_mut(&db) else {
            return 0;
        };
        let Some(current) = d.keys.get(key) else {
            return 0;
        };
        let mut keep = Vec::with_capacity(current.len());
        let mut gone = Vec::new();
        for &id in current.iter() {
            if tags.contains(&d.tags.name(id)) {
                gone.push(id);
            } else {
                keep.push(id);
            }
        }
        gone.iter().for_each(|&id| d.tags.release(id));
        d.store(key, keep);
        gone.len()
    }

    /// Forgets the key; returns the tags it carried.
    pub fn remove_key(&mut self, db: Db, key: &[u8]) -> Vec<Vec<u8>> {
        self.remove_key_except(db, key, &[])
    }

    /// Forgets the key; returns the tags it carried other than `except`
    /// (a purge needs only those, and most keys carry no others).
    pub fn remove_key_except(&mut self, db: Db, key: &[u8], except: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let Some(d) = self.dbs.get_mut(&db) else {
            return Vec::new();
        };
        let others = d.remove_except(key, except);
        if d.keys.is_empty() {
            // An empty database keeps nothing: not even table capacity.
            self.dbs.remove(&db);
        }
        others
    }

    /// Moves the entry of `from` to `to` (dropping whatever `to` had);
    /// returns (tags moved, tags `to` had before).
    pub fn rename(&mut self, db: Db, from: &[u8], to: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let Some(d) = self.dbs.get_mut(&db) else {
            return (Vec::new(), Vec::new());
        };
        let overwritten = d.remove(to);
        match d.keys.remove(from) {
            Some(ids) => {
                let names = d.names(&ids);
                d.keys.insert(to.into(), ids);
                (names, overwritten)
            }
            None => (Vec::new(), overwritten),
        }
    }

    /// `FLUSHDB` (one database) or `FLUSHALL` (`None`).
    pub fn flush(&mut self, db: Option<Db>) {
        match db {
            Some(db) => {
                self.dbs.remove(&db);
            }
            None => self.dbs.clear(),
        }
    }

    pub fn swap(&mut self, a: Db, b: Db) {
        swap_dbs(&mut self.dbs, a, b);
    }

    /// Keys that carry `tag` (a scan: used only when a tag set is evicted).
    pub fn keys_with_tag(&self, db: Db, tag: &[u8]) -> Vec<Vec<u8>> {
        let Some(d) = self.dbs.get(&db) else {
            return Vec::new();
        };
        let Some(id) = d.tags.id(tag) else {
            return Vec::new();
        };
        d.keys
            .iter()
            .filter(|(_, ids)| ids.contains(&id))
            .map(|(k, _)| k.to_vec())
            .collect()
    }

    /// Number of tagged keys, across databases.
    pub fn keys(&self) -> usize {
        self.dbs.values().map(|d| d.keys.len()).sum()
    }

    /// Number of distinct tags referenced, across databases.
    pub fn tag_count(&self) -> usize {
        self.dbs.values().map(|d| d.tags.live()).sum()
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    fn v(tags: &[&str]) -> Vec<Vec<u8>> {
        tags.iter().map(|t| t.as_bytes().to_vec()).collect()
    }

    #[test]
    fn replace_returns_old_tags() {
        let mut ix = Index::default();
        assert!(ix.replace(0, b"k", &[b"a", b"b"]).is_empty());
        assert_eq!(ix.replace(0, b"k", &[b"b", b"c"]), v(&["a", "b"]));
        assert_eq!(ix.tags(0, b"k"), v(&["b", "c"]));
        assert!(ix.has_tag(0, b"k", b"c") && !ix.has_tag(0, b"k", b"a"));
        assert!(!ix.has_tag(1, b"k", b"c") && !ix.has_tag(0, b"zz", b"c"));
        assert_eq!(ix.tag_count(), 2);
        assert!(ix.tags(1, b"k").is_empty());
    }

    #[test]
    fn add_and_remove_count_changes() {
        let mut ix = Index::default();
        assert_eq!(ix.add(0, b"k", &[b"a", b"b"]), 2);
        assert_eq!(ix.add(0, b"k", &[b"b", b"c"]), 1);
        assert_eq!(ix.remove_tags(0, b"k", &[b"a", b"zz"]), 1);
        assert_eq!(ix.tags(0, b"k"), v(&["b", "c"]));
        assert_eq!(ix.remove_tags(0, b"k", &[b"b", b"c"]), 2);
        assert!(!ix.contains(0, b"k"));
        assert_eq!(ix.keys(), 0);
        assert_eq!(ix.tag_count(), 0, "interned names are released");
    }

    #[test]
    fn ids_are_reused_after_release() {
        let mut ix = Index::default();
        ix.replace(0, b"k1", &[b"a"]);
        ix.remove_key(0, b"k1");
        ix.replace(0, b"k2", &[b"b"]);
        ix.replace(0, b"k3", &[b"b", b"a"]);
        assert_eq!(ix.tags(0, b"k3"), v(&["b", "a"]));
        assert_eq!(ix.tags(0, b"k2"), v(&["b"]));
    }

    #[test]
    fn rename_moves_and_drops_target() {
        let mut ix = Index::default();
        ix.replace(0, b"a", &[b"x"]);
        ix.replace(0, b"b", &[b"y"]);
        let (moved, dropped) = ix.rename(0, b"a", b"b");
        assert_eq!(moved, v(&["x"]));
        assert_eq!(dropped, v(&["y"]));
        assert!(!ix.contains(0, b"a"));
        assert_eq!(ix.tags(0, b"b"), v(&["x"]));
        assert_eq!(ix.tag_count(), 1);
    }

    #[test]
    fn keys_with_tag_and_shrink() {
        let mut ix = Index::default();
        for i in 0..5000 {
            ix.replace(0, format!("k{i}").as_bytes(), &[b"a", b"b"]);
        }
        ix.replace(0, b"only", &[b"c"]);
        assert_eq!(ix.keys_with_tag(0, b"c"), vec![b"only".to_vec()]);
        assert_eq!(ix.keys_with_tag(0, b"a").len(), 5000);
        for i in 0..5000 {
            ix.remove_key(0, format!("k{i}").as_bytes());
        }
        let capacity = ix.dbs.get(&0).map(|d| d.keys.capacity());
        assert!(
            capacity.is_some_and(|c| (1..128).contains(&c)),
            "{capacity:?}"
        );
        assert_eq!(ix.tag_count(), 1);
        ix.remove_key(0, b"only");
        assert!(ix.dbs.is_empty(), "an emptied database keeps nothing");
        ix.replace(0, b"x", &[b"c"]);
        ix.replace(0, b"y", &[b"c"]);
        ix.remove_key_except(0, b"x", &[]);
        ix.remove_key_except(0, b"y", &[]);
        assert!(ix.dbs.is_empty());
    }

    #[test]
    fn remove_except() {
        let mut ix = Index::default();
        ix.replace(0, b"k", &[b"a", b"b", b"c"]);
        assert_eq!(
            ix.remove_key_except(0, b"k", &[b"b".to_vec()]),
            v(&["a", "c"])
        );
        assert_eq!(ix.keys(), 0);
        assert_eq!(ix.tag_count(), 0);
        assert!(ix.remove_key_except(0, b"k", &[]).is_empty());
    }

    #[test]
    fn flush_and_swap() {
        let mut ix = Index::default();
        ix.replace(0, b"a", &[b"x"]);
        ix.replace(1, b"b", &[b"y"]);
        ix.swap(0, 1);
        assert_eq!(ix.tags(0, b"b"), v(&["y"]));
        assert_eq!(ix.tags(1, b"a"), v(&["x"]));
        ix.swap(1, 5);
        assert_eq!(ix.tags(5, b"a"), v(&["x"]));
        ix.flush(Some(0));
        assert_eq!(ix.keys(), 1);
        ix.flush(None);
        assert_eq!(ix.keys(), 0);
    }
}
