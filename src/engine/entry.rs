//! The parts of an index entry that most keys keep inside the entry: a
//! short name and a few tag ids. Finding a key by name then reads its
//! entry alone, not the entry and two allocations elsewhere in memory (a
//! cache miss each, on every lookup of a large index), and the allocations'
//! own bytes are saved. Plain Rust.

use std::ops::Deref;

/// Name bytes kept inside the entry (cache keys are mostly shorter).
const SHORT_NAME: usize = 22;
/// Tag ids kept inside the entry.
const FEW_TAGS: usize = 4;

/// A key's name.
pub enum Name {
    Short { len: u8, bytes: [u8; SHORT_NAME] },
    Long(Box<[u8]>),
}

impl Name {
    pub fn new(name: &[u8]) -> Name {
        let mut bytes = [0u8; SHORT_NAME];
        match (bytes.get_mut(..name.len()), u8::try_from(name.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(name);
                Name::Short { len, bytes }
            }
            _ => Name::Long(name.into()),
        }
    }
}

impl Deref for Name {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Name::Short { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Name::Long(b) => b,
        }
    }
}

/// The ids of the tags a key carries.
pub enum Tags {
    Few { len: u8, ids: [u32; FEW_TAGS] },
    Many(Box<[u32]>),
}

impl Default for Tags {
    fn default() -> Tags {
        Tags::Few {
            len: 0,
            ids: [0; FEW_TAGS],
        }
    }
}

impl Tags {
    pub fn collect(ids: impl Iterator<Item = u32>) -> Tags {
        let mut few = [0u32; FEW_TAGS];
        let mut n = 0usize;
        let mut many: Vec<u32> = Vec::new();
        for id in ids {
            match few.get_mut(n) {
                Some(slot) if many.is_empty() => {
                    *slot = id;
                    n += 1;
                }
                _ => {
                    if many.is_empty() {
                        many.extend_from_slice(&few);
                    }
                    many.push(id);
                }
            }
        }
        match (many.is_empty(), u8::try_from(n)) {
            (true, Ok(len)) => Tags::Few { len, ids: few },
            _ => Tags::Many(many.into_boxed_slice()),
        }
    }

    /// These ids and `id`.
    pub fn with(&self, id: u32) -> Tags {
        Tags::collect(self.iter().copied().chain([id]))
    }

    /// These ids but `id`.
    pub fn without(&self, id: u32) -> Tags {
        Tags::collect(self.iter().copied().filter(|&t| t != id))
    }
}

impl Deref for Tags {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match self {
            Tags::Few { len, ids } => ids.get(..usize::from(*len)).unwrap_or_default(),
            Tags::Many(b) => b,
        }
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_holds_a_short_name_and_four_tags_in_48_bytes() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
        assert_eq!(std::mem::size_of::<Tags>(), 24);
        assert_eq!(std::mem::size_of::<Option<(Name, Tags)>>(), 48);
    }

    #[test]
    fn names_of_every_length_read_back() {
        for len in [0, 1, 21, 22, 23, 255, 256, 1000] {
            let name: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let n = Name::new(&name);
            assert_eq!(&*n, name.as_slice(), "length {len}");
            assert_eq!(matches!(n, Name::Short { .. }), len <= SHORT_NAME);
        }
        assert_eq!(&*Name::new(b"a\0b\r\n\xff"), b"a\0b\r\n\xff");
    }

    #[test]
    fn tags_grow_past_the_few_and_shrink_back() {
        let mut t = Tags::default();
        assert!(t.is_empty());
        for id in 1..=6 {
            t = t.with(id * 10);
        }
        assert_eq!(&*t, &[10, 20, 30, 40, 50, 60]);
        assert!(matches!(t, Tags::Many(_)));
        t = t.without(20).without(50);
        assert_eq!(&*t, &[10, 30, 40, 60]);
        assert!(matches!(t, Tags::Few { .. }));
        t = t.without(99);
        assert_eq!(&*t, &[10, 30, 40, 60]);
        for id in [10, 30, 40, 60] {
            t = t.without(id);
        }
        assert!(t.is_empty() && t.iter().next().is_none());
        assert_eq!(
            &*Tags::collect([7, 8, 9, 10, 11].into_iter()),
            &[7, 8, 9, 10, 11]
        );
    }
}
