//! The cluster bus as the module uses it: messages to other masters (sent
//! again until a link takes them), the cluster-wide commands this master
//! gathers answers for (`engine::cluster::Gathers`: their timeouts, and
//! their end), and what a master knows of the cluster (the other masters,
//! slots on the move). Inbound messages are handled by `cluster`.

use super::blocked;
use super::config;
use super::events::{self, Event, Op};
use crate::engine::cluster::{encode, kind, Gather, Gathered};
use crate::engine::purge::ReplyTo;
use crate::engine::{self, Wake};
use redis_module::{raw, Context};
use std::cell::{Cell, RefCell};
use std::time::Duration;

pub const NODE_ID_LEN: usize = raw::REDISMODULE_NODE_ID_LEN as usize;

/// A message waiting for a link: node, kind, bytes, tries so far.
type Pending = (Vec<u8>, u8, Vec<u8>, u64);
/// Purges asked of this master, by (node, gather id): the answer once given.
pub type Seen = std::collections::HashMap<(Vec<u8>, u64), Option<Vec<Vec<u8>>>>;
pub const SEEN_MAX: usize = 10_000;

thread_local! {
    static RESEND: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static RESEND_ARMED: Cell<bool> = const { Cell::new(false) };
    /// Purges asked of this master (node, gather id), and their answers
    /// once given: a request that arrives again is not purged again.
    pub static SEEN: RefCell<Seen> = RefCell::new(Seen::new());
}

pub const MIGRATING: &str = "a slot of a master is being migrated: purge again when it is done";

/// Whether a slot of this master is being migrated or imported (its line
/// of `CLUSTER NODES` names it `[slot->-node]` or `[slot-<-node]`): keys
/// and their index sets are then on two nodes, and a purge would miss some.
pub fn migrating(ctx: &Context) -> bool {
    super::moves::any_moving(ctx)
}

/// A sliced purge whose count was already given: its end tells no one.
pub fn silence(reply_to: &ReplyTo) {
    super::update(|s| {
        for j in &mut s.purges.jobs {
            if j.req.reply_to == *reply_to {
                j.req.reply_to = ReplyTo::Nobody;
            }
        }
    });
}

/// The ids of the other masters (not those known to have failed: their
/// replicas take over, and answer as masters).
/// This node's id.
pub fn my_id() -> Option<Vec<u8>> {
    // SAFETY: a module API call without arguments; the id it returns is
    // NODE_ID_LEN bytes, alive as long as the node.
    unsafe {
        raw::RedisModule_GetMyClusterID
            .map(|f| f())
            .filter(|p| !p.is_null())
            .map(|p| std::slice::from_raw_parts(p.cast::<u8>(), NODE_ID_LEN).to_vec())
    }
}

pub fn other_masters(ctx: &Context) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // SAFETY: module API calls with the running context; the list is read
    // within its length (ids of NODE_ID_LEN bytes each) and freed here.
    unsafe {
        let (Some(list), Some(info), Some(free)) = (
            raw::RedisModule_GetClusterNodesList,
            raw::RedisModule_GetClusterNodeInfo,
            raw::RedisModule_FreeClusterNodesList,
        ) else {
            return out;
        };
        let me = my_id();
        let mut n = 0usize;
        let ids = list(ctx.ctx, &mut n);
        if ids.is_null() {
            return out;
        }
        for i in 0..n {
            let id = *ids.add(i);
            if id.is_null() {
                continue;
            }
            // The list's ids are not NUL-terminated; the calls that take
            // an id measure it with strlen.
            let id = std::slice::from_raw_parts(id.cast::<u8>(), NODE_ID_LEN).to_vec();
            if me.as_ref() == Some(&id) {
                continue;
            }
            let cid = terminated(&id);
            let mut flags = 0;
            let ok = info(
                ctx.ctx,
                cid.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut flags,
            );
            let flags = flags as u32;
            if ok == raw::REDISMODULE_OK as i32
                && flags & raw::REDISMODULE_NODE_MASTER != 0
                && flags & (raw::REDISMODULE_NODE_MYSELF | raw::REDISMODULE_NODE_FAIL) == 0
            {
                out.push(id);
            }
        }
        free(ids);
    }
    out
}

pub fn send<B: AsRef<[u8]>>(ctx: &Context, node: &[u8], kind: u8, fields: &[B]) {
    let msg = encode(fields);
    if u32::try_from(msg.len()).is_err() || node.len() != NODE_ID_LEN {
        super::log::warning(ctx, "tagcache: a cluster message too large to send");
        return;
    }
    if !send_now(ctx, node, kind, &msg) {
        // No link to that node at this moment (it is being made or made
        // again): the message waits for one, for as long as a caller would.
        RESEND.with_borrow_mut(|q| q.push((node.to_vec(), kind, msg, 0)));
        arm_resend(ctx);
    }
}

fn send_now(ctx: &Context, node: &[u8], kind: u8, msg: &[u8]) -> bool {
    let Ok(len) = u32::try_from(msg.len()) else {
        return false;
    };
    let id = terminated(node);
    // SAFETY: `id` is a NUL-terminated 40-byte node id, as the call reads
    // it; `msg` is `len` live bytes.
    unsafe {
        raw::RedisModule_SendClusterMessage.is_some_and(|f| {
            f(ctx.ctx, id.as_ptr().cast(), kind, msg.as_ptr().cast(), len)
                == raw::REDISMODULE_OK as i32
        })
    }
}

const RESEND_MS: u64 = 50;

/// How often a master that has not answered is asked again.
const NUDGE_MS: u64 = 250;

/// Sends a gather's request again to the masters that have not answered,
/// until they all have or its time is up.
fn nudge(ctx: &Context, id: u64) {
    let again = engine::with(|s| {
        s.gathers
            .open
            .get(&id)
            .and_then(|g| g.request.clone().map(|r| (r, g.waiting.clone())))
    })
    .ok()
    .flatten();
    let Some(((kind, msg), waiting)) = again else {
        return;
    };
    for node in &waiting {
        send_now(ctx, node, kind, &msg);
    }
    ctx.create_timer(Duration::from_millis(NUDGE_MS), nudge, id);
}

/// Sends a gather's request to the other masters, and again to those that
/// do not answer.
pub fn ask<B: AsRef<[u8]>>(ctx: &Context, id: u64, others: &[Vec<u8>], kind: u8, fields: &[B]) {
    for node in others {
        send(ctx, node, kind, fields);
    }
    let msg = encode(fields);
    super::update(|s| {
        if let Some(g) = s.gathers.open.get_mut(&id) {
            g.request = Some((kind, msg));
        }
    });
    ctx.create_timer(Duration::from_millis(NUDGE_MS), nudge, id);
}

fn arm_resend(ctx: &Context) {
    if !RESEND_ARMED.with(|a| a.replace(true)) {
        ctx.create_timer(Duration::from_millis(RESEND_MS), on_resend, ());
    }
}

fn on_resend(ctx: &Context, (): ()) {
    RESEND_ARMED.with(|a| a.set(false));
    let tries = u64::try_from(config::cluster_timeout_ms()).unwrap_or(5000) / RESEND_MS + 1;
    let waiting = RESEND.with_borrow_mut(std::mem::take);
    let mut left = Vec::new();
    for (node, kind, msg, n) in waiting {
        if !send_now(ctx, &node, kind, &msg) && n + 1 < tries {
            left.push((node, kind, msg, n + 1));
        }
    }
    if !left.is_empty() {
        RESEND.with_borrow_mut(|q| q.extend(left));
        arm_resend(ctx);
    }
}

/// A node id as the module API reads one: NUL-terminated.
fn terminated(id: &[u8]) -> [u8; NODE_ID_LEN + 1] {
    let mut out = [0u8; NODE_ID_LEN + 1];
    if let Some(dst) = out.get_mut(..id.len().min(NODE_ID_LEN)) {
        dst.copy_from_slice(id.get(..dst.len()).unwrap_or_default());
    }
    out
}

/// Sends `fields` to every other master; returns their ids.
pub fn ask_all<B: AsRef<[u8]>>(ctx: &Context, kind: u8, fields: &[B]) -> Vec<Vec<u8>> {
    let others = other_masters(ctx);
    for node in &others {
        send(ctx, node, kind, fields);
    }
    others
}

/// A purge's part on this master is done: its count goes to the gather it
/// belongs to, here or on the master that asked.
pub fn answer(ctx: &Context, reply_to: &ReplyTo, got: Result<Gathered, String>) {
    match reply_to {
        ReplyTo::Caller | ReplyTo::Nobody => {}
        ReplyTo::Gather(id) => {
            let done = engine::with(|s| s.gathers.answer(*id, None, got, true))
                .ok()
                .flatten();
            if let Some(g) = done {
                finish(ctx, g);
            }
        }
        ReplyTo::Remote(node, id) => {
            let fields: Vec<Vec<u8>> = match got {
                Ok(Gathered::Count(n)) => vec![b"ok".to_vec(), n.to_string().into_bytes()],
                Ok(Gathered::Members(m)) => std::iter::once(b"ok".to_vec()).chain(m).collect(),
                Err(e) => vec![b"err".to_vec(), e.into_bytes()],
            };
            let mut all = vec![id.to_string().into_bytes()];
            all.extend(fields);
            SEEN.with_borrow_mut(|seen| {
                if let Some(slot) = seen.get_mut(&(node.clone(), *id)) {
                    *slot = Some(all.clone());
                }
            });
            send(ctx, node, kind::PURGED, &all);
        }
    }
}

/// Every master answered (or time ran out): the caller gets the total, and
/// a purge publishes its one event.
pub fn finish(ctx: &Context, g: Gather) {
    let error = g.error.clone().or_else(|| {
        let silent = g.waiting.len() + usize::from(!g.local_done);
        (silent > 0).then(|| {
            format!(
                "ERR {silent} of {} masters did not answer within cluster-timeout-ms ({})",
                g.masters,
                config::cluster_timeout_ms()
            )
        })
    });
    if g.purge {
        let Gathered::Count(n) = g.sum else { return };
        events::purged(
            ctx,
            &Event {
                op: match (&g.source, g.grace_ms) {
                    (Some(_), _) => Op::Link,
                    (None, Some(_)) => Op::Stale,
                    (None, None) => Op::Purge,
                },
                tags: &g.tags,
                scopes: &[],
                keys: n,
                source: g.source.as_deref(),
                all: g.all,
                grace_ms: g.grace_ms,
            },
        );
    }
    let Some(client) = g.client else {
        return;
    };
    let wake = match (error, g.sum) {
        (Some(error), _) => Wake::Failed { client, error },
        (None, Gathered::Count(deleted)) => Wake::Purged { client, deleted },
        (None, Gathered::Members(members)) => Wake::Members { client, members },
    };
    blocked::wake(ctx, vec![wake]);
}

fn on_timeout(ctx: &Context, id: u64) {
    if let Some(g) = engine::with(|s| s.gathers.expire(id)).ok().flatten() {
        finish(ctx, g);
    }
}

pub fn arm_timeout(ctx: &Context, id: u64) {
    let ms = u64::try_from(config::cluster_timeout_ms()).unwrap_or(5000);
    ctx.create_timer(Duration::from_millis(ms), on_timeout, id);
}
