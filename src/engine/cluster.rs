//! A cluster-wide command: the master that receives `TAG.PURGE`,
//! `TAG.CARD` or `TAG.MEMBERS` answers for every master. It asks the others
//! over the cluster bus, does its own part, and gathers the answers here
//! while its caller waits; the answer goes out when every master has
//! answered, or an error when `cluster-timeout-ms` runs out first.
//! Also the messages' wire form. Plain Rust, no Redis calls.

use super::Client;
use std::collections::HashMap;

/// Message types on the cluster bus (one byte each).
pub mod kind {
    /// A `PurgeAsk`: purge these tags here, reply `PURGED`.
    pub const PURGE: u8 = 1;
    /// `id count|error`.
    pub const PURGED: u8 = 2;
    /// `id user tag`: count the tag's keys here, reply `COUNTED`.
    pub const CARD: u8 = 3;
    pub const COUNTED: u8 = 4;
    /// `id user tag`: list the tag's keys here, reply `LISTED`.
    pub const MEMBERS: u8 = 5;
    pub const LISTED: u8 = 6;
    /// `source-prefix rule|""`: a rule made (as the rules hash stores it)
    /// or removed (empty) on another master.
    pub const LINK: u8 = 7;
}

/// Fields as a message: each a 4-byte little-endian length, then bytes.
pub fn encode<B: AsRef<[u8]>>(fields: &[B]) -> Vec<u8> {
    let len: usize = fields.iter().map(|f| 4 + f.as_ref().len()).sum();
    let mut out = Vec::with_capacity(len);
    for f in fields {
        let f = f.as_ref();
        out.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(f.get(..u32::MAX as usize).unwrap_or(f));
    }
    out
}

/// The fields of a message; `None` if it is not well formed.
pub fn decode(mut msg: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !msg.is_empty() {
        let (len, rest) = msg.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let field = rest.get(..len)?;
        out.push(field.to_vec());
        msg = rest.get(len..)?;
    }
    Some(out)
}

/// How another master is asked to purge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    /// Its count is awaited.
    Wait,
    /// `ASYNC`: the count of keys that carried the tags is awaited; the
    /// purge carries on after.
    Async,
    /// A rule fired by a change of this key: nobody awaits a count.
    Rule(Vec<u8>),
}

/// A `PURGE` message: one master's request to another, as the fields
/// `id user how [source] match soft tag...` (`how` is `wait`, `async` or
/// `rule`, the last followed by the rule's source key; an empty user is
/// the server; `match` is `any` or `all`; `soft` is empty, or the grace
/// and the time the keys expire by, as `grace:until`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeAsk {
    pub id: u64,
    pub user: Option<Vec<u8>>,
    pub how: How,
    pub all: bool,
    pub soft: Option<super::purge::Soft>,
    pub tags: Vec<Vec<u8>>,
}

impl PurgeAsk {
    /// The request `req` as asked of another master for gather `id`.
    pub fn of(id: u64, req: &super::purge::Request, how: How) -> PurgeAsk {
        PurgeAsk {
            id,
            user: req.user.clone(),
            how,
            all: req.all,
            soft: req.soft,
            tags: req.tags.clone(),
        }
    }

    pub fn to_fields(&self) -> Vec<Vec<u8>> {
        let mut out = vec![
            self.id.to_string().into_bytes(),
            self.user.clone().unwrap_or_default(),
        ];
        match &self.how {
            How::Wait => out.push(b"wait".to_vec()),
            How::Async => out.push(b"async".to_vec()),
            How::Rule(source) => {
                out.push(b"rule".to_vec());
                out.push(source.clone());
            }
        }
        out.push(if self.all {
            b"all".to_vec()
        } else {
            b"any".to_vec()
        });
        out.push(match self.soft {
            Some(s) => format!("{}:{}", s.grace_ms, s.until).into_bytes(),
            None => Vec::new(),
        });
        out.extend(self.tags.iter().cloned());
        out
    }

    /// `None` if the fields are not such a request.
    pub fn from_fields(f: &[Vec<u8>]) -> Option<PurgeAsk> {
        let (id, rest) = f.split_first()?;
        let id = std::str::from_utf8(id).ok()?.parse().ok()?;
        let (user, rest) = rest.split_first()?;
        let (how, rest) = rest.split_first()?;
        let (how, tags) = match how.as_slice() {
            b"wait" => (How::Wait, rest),
            b"async" => (How::Async, rest),
            b"rule" => {
                let (source, tags) = rest.split_first()?;
                (How::Rule(source.clone()), tags)
            }
            _ => return None,
        };
        let (all, tags) = match tags.split_first()? {
            (m, rest) if m.as_slice() == b"all" => (true, rest),
            (m, rest) if m.as_slice() == b"any" => (false, rest),
            _ => return None,
        };
        let (soft, tags) = tags.split_first()?;
        let soft = match soft.as_slice() {
            b"" => None,
            s => {
                let (g, u) = std::str::from_utf8(s).ok()?.split_once(':')?;
                Some(super::purge::Soft {
                    grace_ms: g.parse().ok()?,
                    until: u.parse().ok()?,
                })
            }
        };
        if tags.is_empty() {
            return None;
        }
        Some(PurgeAsk {
            id,
            user: (!user.is_empty()).then(|| user.clone()),
            how,
            all,
            soft,
            tags: tags.to_vec(),
        })
    }
}

/// What the gathered answers add up to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gathered {
    Count(i64),
    Members(Vec<Vec<u8>>),
}

/// One cluster-wide command in progress on the master that received it.
#[derive(Debug)]
pub struct Gather {
    /// The caller, blocked until the answer (`None`: it left, or `ASYNC`
    /// already replied).
    pub client: Option<Client>,
    pub tags: Vec<Vec<u8>>,
    /// Masters asked, counting this one.
    pub masters: usize,
    /// Masters yet to answer (node ids), and whether this one has.
    pub waiting: Vec<Vec<u8>>,
    pub local_done: bool,
    pub sum: Gathered,
    /// The first error a master answered.
    pub error: Option<String>,
    /// A purge: one event when it ends.
    pub purge: bool,
    /// The purge's selection was `ALL`, and its grace if soft (its event
    /// says so).
    pub all: bool,
    pub grace_ms: Option<i64>,
    /// A rule's purge: the key whose change fired it (its event is a
    /// `link` event).
    pub source: Option<Vec<u8>>,
    /// The request as sent (kind, bytes): sent again to masters that have
    /// not answered, since the cluster bus may lose a message.
    pub request: Option<(u8, Vec<u8>)>,
}

impl Gather {
    pub fn done(&self) -> bool {
        self.local_done && self.waiting.is_empty()
    }

    fn add(&mut self, answer: Result<Gathered, String>) {
        match (answer, &mut self.sum) {
            (Ok(Gathered::Count(n)), Gathered::Count(sum)) => *sum = sum.saturating_add(n),
            (Ok(Gathered::Members(m)), Gathered::Members(all)) => all.extend(m),
            (Ok(_), _) => {}
            (Err(e), _) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

#[derive(Default)]
pub struct Gathers {
    last_id: u64,
    pub open: HashMap<u64, Gather>,
}

impl Gathers {
    /// Ids start after `seed`.
    pub fn seed(&mut self, seed: u64) {
        self.last_id = self.last_id.max(seed);
    }

    /// Opens a gather waiting for `others` and this master. Returns its id.
    pub fn open(
        &mut self,
        client: Option<Client>,
        tags: Vec<Vec<u8>>,
        others: Vec<Vec<u8>>,
        sum: Gathered,
        purge: bool,
    ) -> u64 {
        self.last_id += 1;
        self.open.insert(
            self.last_id,
            Gather {
                client,
                tags,
                masters: others.len() + 1,
                waiting: others,
                local_done: false,
                sum,
                error: None,
                purge,
                all: false,
                grace_ms: None,
                source: None,
                request: None,
            },
        );
        self.last_id
    }

    /// A cluster-wide purge of `req` (its count, and its one event: a
    /// rule's `link` event when `req` is a rule's).
    pub fn open_purge(
        &mut self,
        client: Option<Client>,
        req: &super::purge::Request,
        others: Vec<Vec<u8>>,
    ) -> u64 {
        let id = self.open(client, req.tags.clone(), others, Gathered::Count(0), true);
        if let Some(g) = self.open.get_mut(&id) {
            g.all = req.all;
            g.grace_ms = req.soft.map(|s| s.grace_ms);
            g.source = req.rule_source.clone();
        }
        id
    }

    /// An answer: from `node`, or this master's own (`None`). Returns the
    /// gather if that was the last answer it waited for.
    pub fn answer(
        &mut self,
        id: u64,
        node: Option<&[u8]>,
        answer: Result<Gathered, String>,
        purge: bool,
    ) -> Option<Gather> {
        let g = self.open.get_mut(&id)?;
        // An answer of another kind is not for this gather.
        let fits = matches!(
            (&answer, &g.sum),
            (Ok(Gathered::Count(_)), Gathered::Count(_))
                | (Ok(Gathered::Members(_)), Gathered::Members(_))
                | (Err(_), _)
        );
        if !fits || (node.is_some() && g.purge != purge) {
            return None;
        }
        match node {
            None if !g.local_done => g.local_done = true,
            Some(n) => {
                let before = g.waiting.len();
                g.waiting.retain(|w| w.as_slice() != n);
                if g.waiting.len() == before {
                    return None;
                }
            }
            None => return None,
        }
        g.add(answer);
        if g.done() {
            return self.open.remove(&id);
        }
        None
    }

    /// Time is up: the gather ends now, if it has not.
    pub fn expire(&mut self, id: u64) -> Option<Gather> {
        self.open.remove(&id)
    }

    /// The caller left: the gather goes on without it. `Some(purge)` if
    /// it was waiting on one.
    pub fn forget_client(&mut self, client: Client) -> Option<bool> {
        let mut found = None;
        for g in self.open.values_mut() {
            if g.client == Some(client) {
                g.client = None;
                found = Some(g.purge);
            }
        }
        found
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let fields: Vec<&[u8]> = vec![b"1", b"", b"tag\0\r\n\xff"];
        assert_eq!(
            decode(&encode(&fields)).unwrap(),
            fields.iter().map(|f| f.to_vec()).collect::<Vec<_>>()
        );
        assert_eq!(decode(b"").unwrap(), Vec::<Vec<u8>>::new());
        assert!(decode(b"\x05\0\0\0ab").is_none());
        assert!(decode(b"\x01\0").is_none());
    }

    #[test]
    fn gather_ends_with_the_last_answer() {
        let mut g = Gathers::default();
        let id = g.open(
            Some(7),
            vec![],
            vec![b"a".to_vec(), b"b".to_vec()],
            Gathered::Count(0),
            true,
        );
        assert!(g
            .answer(id, Some(b"a"), Ok(Gathered::Count(2)), true)
            .is_none());
        // A repeated or unknown answer, or one of another kind, counts nothing.
        assert!(g
            .answer(id, Some(b"a"), Ok(Gathered::Count(2)), true)
            .is_none());
        assert!(g
            .answer(id, Some(b"z"), Ok(Gathered::Count(2)), true)
            .is_none());
        assert!(g
            .answer(id, Some(b"b"), Ok(Gathered::Count(9)), false)
            .is_none());
        assert!(g
            .answer(id, Some(b"b"), Ok(Gathered::Members(vec![])), true)
            .is_none());
        assert!(g.answer(id, None, Ok(Gathered::Count(1)), true).is_none());
        let done = g.answer(id, Some(b"b"), Err("ERR x".into()), true).unwrap();
        assert_eq!(done.sum, Gathered::Count(3));
        assert_eq!(done.error.as_deref(), Some("ERR x"));
        assert!(g.open.is_empty());
    }

    #[test]
    fn expired_gather_ignores_late_answers() {
        let mut g = Gathers::default();
        let id = g.open(
            None,
            vec![],
            vec![b"a".to_vec()],
            Gathered::Members(vec![]),
            false,
        );
        let late = g.expire(id).unwrap();
        assert_eq!(late.waiting, vec![b"a".to_vec()]);
        assert!(g
            .answer(id, Some(b"a"), Ok(Gathered::Members(vec![])), false)
            .is_none());
    }

    #[test]
    fn purge_requests_survive_the_bus() {
        let asks = [
            PurgeAsk {
                id: 7,
                user: Some(b"alice".to_vec()),
                how: How::Wait,
                all: true,
                soft: Some(crate::engine::purge::Soft {
                    grace_ms: 5,
                    until: 1_700_000_000_005,
                }),
                tags: vec![b"t".to_vec(), b"".to_vec()],
            },
            PurgeAsk {
                id: 0,
                user: None,
                how: How::Rule(b"user:1\0".to_vec()),
                all: false,
                soft: None,
                tags: vec![b"u:1".to_vec()],
            },
            PurgeAsk {
                id: u64::MAX,
                user: None,
                how: How::Async,
                all: false,
                soft: None,
                tags: vec![b"async".to_vec()],
            },
        ];
        for ask in asks {
            let wire = encode(&ask.to_fields());
            let back = decode(&wire).and_then(|f| PurgeAsk::from_fields(&f));
            assert_eq!(back, Some(ask));
        }
        let bad: [&[&[u8]]; 6] = [
            &[b"x", b"", b"wait", b"any", b"", b"t"],
            &[b"1", b"", b"later", b"any", b"", b"t"],
            &[b"1", b"", b"rule"],
            &[b"1", b""],
            &[b"1", b"", b"wait", b"some", b"", b"t"],
            &[b"1", b"", b"wait", b"any", b"5", b"t"],
        ];
        for f in bad {
            let f: Vec<Vec<u8>> = f.iter().map(|b| b.to_vec()).collect();
            assert_eq!(PurgeAsk::from_fields(&f), None);
        }
    }
}
