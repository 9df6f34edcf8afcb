//! Rule matching for TAG.LINK: a byte trie over source prefixes, so that
//! finding the rules for a key costs O(length of the key), whatever the
//! number of rules. Plain Rust; unit-tested without a server.

#[derive(Default, Clone)]
struct Node {
    /// Children sorted by byte, for binary search.
    children: Vec<(u8, u32)>,
    /// Tag prefix of the rule whose source prefix ends here.
    tag_prefix: Option<Vec<u8>>,
}

/// Node ids index `nodes` only: they are made by `insert` as the node is
/// pushed, and nodes are never removed, so the indexing cannot fail.
#[derive(Default, Clone)]
pub struct Rules {
    nodes: Vec<Node>,
    count: usize,
}

impl Rules {
    pub fn from_pairs<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(pairs: I) -> Rules {
        let mut r = Rules::default();
        for (src, tag) in pairs {
            r.insert(&src, tag);
        }
        r
    }

    fn insert(&mut self, src: &[u8], tag_prefix: Vec<u8>) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0usize;
        for &b in src {
            let children = &self.nodes[at].children;
            at = match children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at].children.insert(i, (b, id as u32));
                    id
                }
            };
        }
        if self.nodes[at].tag_prefix.replace(tag_prefix).is_none() {
            self.count += 1;
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The tags that a change to `key` purges: for each rule whose source
    /// prefix starts the key, its tag prefix followed by the rest of the key.
    pub fn tags_for(&self, key: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let Some(mut node) = self.nodes.first() else {
            return out;
        };
        for (i, &b) in key.iter().enumerate() {
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(c) => node = &self.nodes[node.children[c].1 as usize],
                Err(_) => return out,
            }
            if let Some(tp) = &node.tag_prefix {
                out.push([tp.as_slice(), &key[i + 1..]].concat());
            }
        }
        out
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    fn rules(pairs: &[(&str, &str)]) -> Rules {
        Rules::from_pairs(
            pairs
                .iter()
                .map(|(a, b)| (a.as_bytes().to_vec(), b.as_bytes().to_vec())),
        )
    }

    #[test]
    fn matches_every_prefix_rule() {
        let r = rules(&[("user:", "u:"), ("user:1", "one:"), ("order:", "o:")]);
        assert_eq!(r.len(), 3);
        assert_eq!(r.tags_for(b"user:42"), vec![b"u:42".to_vec()]);
        assert_eq!(
            r.tags_for(b"user:12"),
            vec![b"u:12".to_vec(), b"one:2".to_vec()]
        );
        assert_eq!(r.tags_for(b"order:"), vec![b"o:".to_vec()]);
        assert!(r.tags_for(b"use").is_empty());
        assert!(r.tags_for(b"other").is_empty());
    }

    #[test]
    fn empty_and_replaced() {
        assert!(Rules::default().tags_for(b"x").is_empty());
        let r = rules(&[("a", "x"), ("a", "y")]);
        assert_eq!(r.len(), 1);
        assert_eq!(r.tags_for(b"ab"), vec![b"yb".to_vec()]);
    }

    #[test]
    fn binary_prefixes() {
        let r = Rules::from_pairs([(vec![0u8, 255], vec![1u8])]);
        assert_eq!(r.tags_for(&[0, 255, 7]), vec![vec![1u8, 7]]);
    }
}
