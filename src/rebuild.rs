//! Rebuilds the reverse index from the tag sets after a dataset is loaded
//! (RDB, AOF, or a full sync from a master). On a master, members whose key
//! did not survive the load are then removed from their sets.

use crate::config;
use crate::index::Db;
use crate::store::{self, with_index, Mode};
use redis_module::Context;
use std::time::Duration;

/// Escapes glob characters so the prefix matches literally in SCAN MATCH.
pub fn glob_literal(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'*');
    out
}

fn databases(ctx: &Context) -> Db {
    let reply = store::call(ctx, Mode::Local, "CONFIG", &[b"GET", b"databases"]);
    reply
        .ok()
        .and_then(|r| r.into_bytes_list().get(1).cloned())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(16)
}

/// Calls `f(set_key)` for every set under the tag prefix in the selected db.
fn each_tag_set(ctx: &Context, mut f: impl FnMut(&[u8])) {
    let pattern = glob_literal(&config::tag_prefix());
    let mut cursor = b"0".to_vec();
    loop {
        let args: [&[u8]; 7] = [
            &cursor, b"MATCH", &pattern, b"COUNT", b"1000", b"TYPE", b"set",
        ];
        let Ok(store::Reply::Array(mut parts)) = store::call(ctx, Mode::Local, "SCAN", &args)
        else {
            return;
        };
        let keys = parts
            .pop()
            .map(store::Reply::into_bytes_list)
            .unwrap_or_default();
        let next = match parts.pop() {
            Some(store::Reply::Bytes(c)) => c,
            _ => return,
        };
        keys.iter().for_each(|k| f(k));
        if next == b"0" {
            return;
        }
        cursor = next;
    }
}

pub fn rebuild(ctx: &Context) {
    with_index(|ix| ix.flush(None));
    let prefix = config::tag_prefix();
    let home = store::selected_db(ctx);
    let mut stale: Vec<(Db, Vec<u8>, Vec<u8>)> = Vec::new();
    for db in 0..databases(ctx) {
        store::select_db(ctx, db);
        crate::link::reload(ctx);
        let mut sets = Vec::new();
        each_tag_set(ctx, |k| sets.push(k.to_vec()));
        for set in sets {
            let tag = set.get(prefix.len()..).unwrap_or_default().to_vec();
            for member in store::smembers(ctx, &set).unwrap_or_default() {
                if store::exists(ctx, &member) {
                    with_index(|ix| ix.add(db, &member, &[&tag]));
                } else {
                    stale.push((db, set.clone(), member));
                }
            }
        }
    }
    store::select_db(ctx, home);
    if !stale.is_empty() && store::may_write(ctx) {
        ctx.create_timer(Duration::ZERO, drop_stale, stale);
    }
}

fn drop_stale(ctx: &Context, stale: Vec<(Db, Vec<u8>, Vec<u8>)>) {
    if !store::may_write(ctx) {
        return;
    }
    for (db, set, member) in stale {
        store::select_db(ctx, db);
        let _ = store::call(ctx, Mode::Replicated, "SREM", &[&set, &member]);
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    #[test]
    fn glob_escaping() {
        assert_eq!(super::glob_literal(b"tag:"), b"tag:*".to_vec());
        assert_eq!(super::glob_literal(b"a*[b]"), b"a\\*\\[b\\]*".to_vec());
    }
}
