//! A growable array in fixed pages: it never moves what it holds, so it
//! grows by one page at a time rather than by copying everything into an
//! array twice the size (a million index entries are 32 MB, copied in one
//! step of the server, and half of the new array stays empty until it
//! fills). Its spare room is at most one page. Plain Rust.

/// Entries per page.
const PAGE: usize = 1024;

pub struct Slab<T> {
    pages: Vec<Box<[Option<T>]>>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// How many entries were pushed (empty ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, i: usize) -> Option<&Option<T>> {
        if i >= self.len {
            return None;
        }
        self.pages.get(i / PAGE).and_then(|p| p.get(i % PAGE))
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Option<T>> {
        if i >= self.len {
            return None;
        }
        self.pages
            .get_mut(i / PAGE)
            .and_then(|p| p.get_mut(i % PAGE))
    }

    pub fn push(&mut self, v: Option<T>) {
        // Every page full (the count of pages is len / PAGE rounded up).
        if self.len / PAGE == self.pages.len() {
            self.pages.push((0..PAGE).map(|_| None).collect());
        }
        let i = self.len;
        self.len += 1;
        if let Some(slot) = self.get_mut(i) {
            *slot = v;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Option<T>> {
        self.pages.iter().flat_map(|p| p.iter()).take(self.len)
    }

    /// Every entry, in order, emptying the slab.
    pub fn drain(&mut self) -> impl Iterator<Item = Option<T>> {
        let len = std::mem::take(&mut self.len);
        std::mem::take(&mut self.pages)
            .into_iter()
            .flat_map(|p| p.into_vec())
            .take(len)
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_their_place_across_pages() {
        let mut s = Slab::default();
        for i in 0..3000u32 {
            s.push((i % 3 != 0).then_some(i));
        }
        assert_eq!(s.len(), 3000);
        assert_eq!(s.get(1024), Some(&Some(1024)));
        assert_eq!((s.get(2997), s.get(2999)), (Some(&None), Some(&Some(2999))));
        assert_eq!(s.get(3000), None);
        *s.get_mut(1501).unwrap() = None;
        assert_eq!(s.iter().flatten().count(), 1999);
        assert_eq!(s.pages.len(), 3);
        let all: Vec<Option<u32>> = s.drain().collect();
        assert_eq!(all.len(), 3000);
        assert_eq!((s.len(), s.pages.len(), s.get(0)), (0, 0, None));
    }
}
