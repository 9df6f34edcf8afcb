//! Rule matching for TAG.LINK: a byte trie over source prefixes, so that
//! finding the rules for a key costs O(length of the key), whatever the
//! number of rules. Plain Rust; unit-tested without a server.

#[derive(Default, Clone)]
struct Node {
    /// Children sorted by byte, for binary search.
    children: Vec<(u8, u32)>,
    /// The rule whose source prefix ends here.
    rule: Option<Rule>,
}

/// A rule: its tag prefix, the user whose permissions its purges have
/// (`None` for a rule written without one, which acts for the server), and
/// for a `SOFT` rule the grace of its soft invalidations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub tag_prefix: Vec<u8>,
    pub owner: Option<Vec<u8>>,
    pub grace_ms: Option<i64>,
}

/// What a change of a key fires: a tag, whose rule's owner, and the grace
/// if the rule is soft.
pub type Fired = (Vec<u8>, Option<Vec<u8>>, Option<i64>);

/// How a rule is kept in the `tagcache:links` hash: the field is the source
/// prefix; the value is the owner's name (then, for a `SOFT` rule, a space
/// and the grace in milliseconds), a NUL, then the tag prefix. (ACL user
/// names cannot hold a NUL or a space; a value without a NUL is a rule with
/// no owner.)
impl Rule {
    /// The owner of a rule nobody vouches for (one a client wrote into the
    /// hash): no user has this name (ACL user names cannot hold a space),
    /// so its purges may delete nothing. Stored as written, so that a
    /// reload, a replica or a failover read the same.
    pub const NOBODY: &'static [u8] = b"(no owner)";

    pub fn encode(&self) -> Vec<u8> {
        let grace = self
            .grace_ms
            .map(|g| format!(" {g}").into_bytes())
            .unwrap_or_default();
        match (&self.owner, self.grace_ms) {
            (Some(o), _) => [o.as_slice(), &grace, b"\0", &self.tag_prefix].concat(),
            (None, Some(_)) => [&grace[..], b"\0", &self.tag_prefix].concat(),
            (None, None) => self.tag_prefix.clone(),
        }
    }

    pub fn decode(value: &[u8]) -> Rule {
        let Some(i) = value.iter().position(|&b| b == 0) else {
            return Rule {
                tag_prefix: value.to_vec(),
                owner: None,
                grace_ms: None,
            };
        };
        let head = value.get(..i).unwrap_or_default();
        let tag_prefix = value.get(i + 1..).unwrap_or_default().to_vec();
        // The grace follows the last space, if what follows is a grace.
        let split = head.iter().rposition(|&b| b == b' ').and_then(|s| {
            let g: i64 = std::str::from_utf8(head.get(s + 1..)?).ok()?.parse().ok()?;
            (g > 0).then_some((s, g))
        });
        let (owner, grace_ms) = match split {
            Some((s, g)) => (head.get(..s).unwrap_or_default(), Some(g)),
            None => (head, None),
        };
        Rule {
            owner: (!owner.is_empty() || grace_ms.is_none()).then(|| owner.to_vec()),
            tag_prefix,
            grace_ms,
        }
    }
}

/// Node ids index `nodes` only: they are made by `insert` as the node is
/// pushed, and nodes are never removed, so the indexing cannot fail.
#[derive(Default, Clone)]
pub struct Rules {
    nodes: Vec<Node>,
    count: usize,
}

impl Rules {
    /// From the `tagcache:links` hash: (source prefix, encoded rule) pairs.
    #[cfg(test)]
    pub fn from_pairs<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(pairs: I) -> Rules {
        Rules::from_rules(pairs.into_iter().map(|(src, v)| (src, Rule::decode(&v))))
    }

    pub fn from_rules<I: IntoIterator<Item = (Vec<u8>, Rule)>>(rules: I) -> Rules {
        let mut r = Rules::default();
        for (src, rule) in rules {
            r.insert(&src, rule);
        }
        r
    }

    fn insert(&mut self, src: &[u8], rule: Rule) {
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
        if self.nodes[at].rule.replace(rule).is_none() {
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

    /// What a change to `key` purges: for each rule whose source prefix
    /// starts the key, its tag prefix followed by the rest of the key, and
    /// the rule's owner.
    pub fn fired_by(&self, key: &[u8]) -> Vec<Fired> {
        let mut out = Vec::new();
        let Some(mut node) = self.nodes.first() else {
            return out;
        };
        for (i, &b) in key.iter().enumerate() {
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(c) => node = &self.nodes[node.children[c].1 as usize],
                Err(_) => return out,
            }
            if let Some(rule) = &node.rule {
                let rest = key.get(i + 1..).unwrap_or_default();
                out.push((
                    [rule.tag_prefix.as_slice(), rest].concat(),
                    rule.owner.clone(),
                    rule.grace_ms,
                ));
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

    impl Rules {
        fn tags_for(&self, key: &[u8]) -> Vec<Vec<u8>> {
            self.fired_by(key).into_iter().map(|(t, _, _)| t).collect()
        }
    }

    #[test]
    fn owners_round_trip() {
        let r = Rule {
            tag_prefix: b"t\0x".to_vec(),
            owner: Some(b"alice".to_vec()),
            grace_ms: None,
        };
        assert_eq!(Rule::decode(&r.encode()), r);
        assert_eq!(Rule::decode(b"plain").owner, None);
        let rules = Rules::from_pairs([(b"s:".to_vec(), r.encode())]);
        assert_eq!(
            rules.fired_by(b"s:1"),
            vec![(b"t\0x1".to_vec(), Some(b"alice".to_vec()), None)]
        );
        for r in [
            Rule {
                tag_prefix: b"p:".to_vec(),
                owner: Some(b"bob".to_vec()),
                grace_ms: Some(5000),
            },
            Rule {
                tag_prefix: b"p: 5".to_vec(),
                owner: Some(Rule::NOBODY.to_vec()),
                grace_ms: Some(1),
            },
            Rule {
                tag_prefix: b"p:".to_vec(),
                owner: Some(Rule::NOBODY.to_vec()),
                grace_ms: None,
            },
            Rule {
                tag_prefix: b"p:".to_vec(),
                owner: None,
                grace_ms: Some(7),
            },
        ] {
            assert_eq!(Rule::decode(&r.encode()), r);
        }
    }

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
