//! Purge, bump and rule events: one JSON document per operation.

use serde_json::json;

pub enum Op {
    Purge,
    /// A soft invalidation (`TAG.INVALIDATE … SOFT`).
    Stale,
    Bump,
    Link,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Purge => "purge",
            Op::Stale => "stale",
            Op::Bump => "bump",
            Op::Link => "link",
        }
    }
}

pub struct Event<'a> {
    pub op: Op,
    pub tags: &'a [Vec<u8>],
    pub scopes: &'a [Vec<u8>],
    pub keys: i64,
    pub source: Option<&'a [u8]>,
    /// An `ALL` selection (keys that carry every tag).
    pub all: bool,
    /// A soft invalidation's grace.
    pub grace_ms: Option<i64>,
}

fn lossy(items: &[Vec<u8>]) -> Vec<String> {
    items
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

/// The JSON payload, as subscribers receive it.
pub fn payload(ev: &Event, ts: i64) -> String {
    let mut doc = json!({
        "op": ev.op.name(),
        "tags": lossy(ev.tags),
        "scopes": lossy(ev.scopes),
        "keys": ev.keys,
        "source": ev.source.map(|s| String::from_utf8_lossy(s).into_owned()),
        "ts": ts,
    });
    if let Some(map) = doc.as_object_mut() {
        if ev.all {
            map.insert("match".into(), json!("all"));
        }
        if let Some(g) = ev.grace_ms {
            map.insert("grace_ms".into(), json!(g));
        }
    }
    doc.to_string()
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape() {
        let tags = vec![b"a".to_vec(), b"\xffb".to_vec()];
        let ev = Event {
            op: Op::Purge,
            tags: &tags,
            scopes: &[],
            keys: 3,
            source: None,
            all: false,
            grace_ms: None,
        };
        let v: serde_json::Value = serde_json::from_str(&payload(&ev, 7)).unwrap();
        assert_eq!(v["op"], "purge");
        assert_eq!(v["tags"][0], "a");
        assert_eq!(v["keys"], 3);
        assert!(v["source"].is_null());
        assert_eq!(v["ts"], 7);
        assert_eq!(v["scopes"].as_array().map(Vec::len), Some(0));
    }
}
