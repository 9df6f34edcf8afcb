//! Redis Cluster: `TAG.PURGE`, `TAG.CARD` and `TAG.MEMBERS` answer for the
//! whole cluster. The master that receives one asks every other master over
//! the cluster bus, does its own part, and replies once all have answered
//! (its caller blocked inside the server meanwhile), or with an error when
//! `cluster-timeout-ms` runs out first. Rules made on one master are sent
//! to the others. Messages are handled from a timer, as any other work the
//! server did not start with a command.

use super::apply;
use super::blocked;
use super::config;
use super::events::{Event, Op};
use super::keys::{self, Caller};
use super::purge::{self, Here, Wait};
use crate::engine::cluster::{decode, encode, kind, Gather, Gathered, How, PurgeAsk};
use crate::engine::error::Error;
use crate::engine::purge::{ReplyTo, Request};
use crate::engine::{self, Wake};
use redis_module::{raw, Context, RedisResult, RedisValue};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::raw::{c_char, c_uchar};
use std::time::Duration;

const NODE_ID_LEN: usize = raw::REDISMODULE_NODE_ID_LEN as usize;

/// A message from another master, kept until the timer handles it.
struct Inbound {
    from: Vec<u8>,
    kind: u8,
    fields: Vec<Vec<u8>>,
}

/// A message waiting for a link: node, kind, bytes, tries so far.
type Pending = (Vec<u8>, u8, Vec<u8>, u64);
/// Purges asked of this master, by (node, gather id): the answer once given.
type Seen = std::collections::HashMap<(Vec<u8>, u64), Option<Vec<Vec<u8>>>>;

thread_local! {
    static INBOX: RefCell<VecDeque<Inbound>> = const { RefCell::new(VecDeque::new()) };
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static RESEND: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// Purges asked of this master (node, gather id), and their answers
    /// once given: a request that arrives again is not purged again.
    static SEEN: RefCell<Seen> = RefCell::new(Seen::new());
    static RESEND_ARMED: Cell<bool> = const { Cell::new(false) };
}

const MIGRATING: &str = "a slot of a master is being migrated: purge again when it is done";

/// Whether a slot of this master is being migrated or imported (its line
/// of `CLUSTER NODES` names it `[slot->-node]` or `[slot-<-node]`): keys
/// and their index sets are then on two nodes, and a purge would miss some.
pub fn migrating(ctx: &Context) -> bool {
    let Ok(keys::Reply::Bytes(text)) = keys::call(ctx, keys::Mode::Local, "CLUSTER", &[b"NODES"])
    else {
        return false;
    };
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(2)
                .is_some_and(|f| f.split(',').any(|x| x == "myself"))
        })
        .any(|l| l.contains("->-") || l.contains("-<-"))
}

/// A sliced purge whose count was already given: its end tells no one.
fn silence(reply_to: &ReplyTo) {
    super::update(|s| {
        for j in &mut s.purges.jobs {
            if j.req.reply_to == *reply_to {
                j.req.reply_to = ReplyTo::Nobody;
            }
        }
    });
}

/// Listens for the module's messages (a cluster only).
pub fn register(ctx: &Context) {
    if !config::slotted() {
        return;
    }
    // Gather ids start apart at every start, so that an answer to a call
    // made before a restart is not taken for one made after.
    let seed = u64::try_from(keys::now_ms()).unwrap_or(0) << 16;
    super::update(|s| s.gathers.seed(seed));
    // SAFETY: called from init with the module's context; `on_message`
    // matches the receiver signature.
    unsafe {
        if let Some(f) = raw::RedisModule_RegisterClusterMessageReceiver {
            for k in kind::PURGE..=kind::LINK {
                f(ctx.ctx, k, Some(on_message));
            }
        }
    }
}

unsafe extern "C" fn on_message(
    ctx: *mut raw::RedisModuleCtx,
    sender: *const c_char,
    kind: u8,
    payload: *const c_uchar,
    len: u32,
) {
    if sender.is_null() || (payload.is_null() && len > 0) {
        return;
    }
    // SAFETY: Redis passes the sender's 40-byte node id and `len` bytes of
    // payload, valid for the duration of the callback.
    let (from, payload) = unsafe {
        (
            std::slice::from_raw_parts(sender.cast::<u8>(), NODE_ID_LEN).to_vec(),
            match len {
                0 => &[][..],
                n => std::slice::from_raw_parts(payload, n as usize),
            },
        )
    };
    let Some(fields) = decode(payload) else {
        return;
    };
    INBOX.with_borrow_mut(|q| q.push_back(Inbound { from, kind, fields }));
    if !ARMED.with(|a| a.replace(true)) {
        Context::new(ctx).create_timer(Duration::ZERO, on_inbox, ());
    }
}

fn on_inbox(ctx: &Context, (): ()) {
    ARMED.with(|a| a.set(false));
    // Bounded: messages that arrive meanwhile wait for the next turn.
    for _ in 0..INBOX.with_borrow(VecDeque::len) {
        let Some(m) = INBOX.with_borrow_mut(VecDeque::pop_front) else {
            break;
        };
        handle(ctx, m);
    }
}

fn handle(ctx: &Context, m: Inbound) {
    let f = &m.fields;
    let id = f
        .first()
        .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok());
    // Asked as a master by a node whose view of the cluster is behind (a
    // replica just attached, or one just demoted), or while one of its
    // slots moves: no answer it could give is whole, so it says so, and
    // the call is to be made again.
    let refusal = if !keys::may_write(ctx) {
        Some(Error::TryAgain(
            "a replica was asked as a master while the cluster changes",
        ))
    } else if m.kind == kind::PURGE && migrating(ctx) {
        Some(Error::TryAgain(MIGRATING))
    } else {
        None
    };
    if let (Some(why), true) = (
        refusal,
        matches!(m.kind, kind::PURGE | kind::CARD | kind::MEMBERS),
    ) {
        let back = match m.kind {
            kind::PURGE => kind::PURGED,
            kind::CARD => kind::COUNTED,
            _ => kind::LISTED,
        };
        let fields = [
            f.first().cloned().unwrap_or_default(),
            b"err".to_vec(),
            why.to_string().into_bytes(),
        ];
        send(ctx, &m.from, back, &fields);
        return;
    }
    match (m.kind, id) {
        (kind::PURGE, Some(id)) => {
            // A request sent again (its answer may have been lost): the
            // purge runs once; a finished one answers again.
            if id != 0 {
                let key = (m.from.clone(), id);
                match SEEN.with_borrow(|seen| seen.get(&key).cloned()) {
                    Some(Some(fields)) => {
                        send(ctx, &m.from, kind::PURGED, &fields);
                        return;
                    }
                    Some(None) => return,
                    None => SEEN.with_borrow_mut(|seen| {
                        if seen.len() >= SEEN_MAX {
                            seen.clear();
                        }
                        seen.insert(key, None);
                    }),
                }
            }
            let Some(ask) = PurgeAsk::from_fields(f) else {
                return;
            };
            let is_async = ask.how == How::Async;
            let caller = ask.user.as_deref().map(Caller::named);
            // A rule's purge: nobody awaits its count, and its deletions
            // fire no further rules.
            let (rule_source, reply_to) = match ask.how {
                How::Rule(source) => (Some(source), ReplyTo::Nobody),
                _ => (None, ReplyTo::Remote(m.from.clone(), id)),
            };
            let req = Request {
                db: keys::selected_db(ctx),
                tags: ask.tags,
                user: ask.user,
                rule_source,
                reply_to: reply_to.clone(),
                publish: false,
            };
            let here = purge::here(ctx, req, caller.as_ref(), Wait::Detached);
            if reply_to == ReplyTo::Nobody {
                return;
            }
            match here {
                Ok(Here::Done { deleted, carried }) => {
                    let n = if is_async { carried } else { deleted };
                    answer(ctx, &reply_to, Ok(Gathered::Count(n)));
                }
                Ok(Here::Sliced { carried }) if is_async => {
                    // The count goes now; the purge's own end tells no one.
                    silence(&reply_to);
                    answer(ctx, &reply_to, Ok(Gathered::Count(carried)));
                }
                Ok(Here::Sliced { .. }) => {}
                Err(e) => answer(ctx, &reply_to, Err(e.to_string())),
            }
        }
        (kind::CARD | kind::MEMBERS, Some(id)) => {
            let [_, user, tag] = f.as_slice() else {
                return;
            };
            let caller = (!user.is_empty()).then(|| Caller::named(user));
            let found = apply::visible_members(ctx, tag, caller.as_ref());
            let reply: Vec<Vec<u8>> = match (found, m.kind) {
                (Ok(members), kind::CARD) => vec![b"ok".to_vec(), members.len().to_string().into()],
                (Ok(members), _) => std::iter::once(b"ok".to_vec()).chain(members).collect(),
                (Err(e), _) => vec![b"err".to_vec(), e.to_string().into_bytes()],
            };
            let back = if m.kind == kind::CARD {
                kind::COUNTED
            } else {
                kind::LISTED
            };
            let mut fields = vec![id.to_string().into_bytes()];
            fields.extend(reply);
            send(ctx, &m.from, back, &fields);
        }
        (kind::PURGED | kind::COUNTED | kind::LISTED, Some(id)) => {
            let got = match f.get(1..).unwrap_or_default() {
                [status, rest @ ..] if status.as_slice() == b"ok" => Ok(match m.kind {
                    kind::LISTED => Gathered::Members(rest.to_vec()),
                    _ => Gathered::Count(
                        rest.first()
                            .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
                            .unwrap_or(0),
                    ),
                }),
                [_, error, ..] => Err(String::from_utf8_lossy(error).into_owned()),
                _ => return,
            };
            let purge = m.kind == kind::PURGED;
            let done = engine::with(|s| s.gathers.answer(id, Some(&m.from), got, purge))
                .ok()
                .flatten();
            if let Some(g) = done {
                finish(ctx, g);
            }
        }
        (kind::LINK, _) => {
            if let [source, tag_prefix, owner] = f.as_slice() {
                let rule =
                    (!tag_prefix.is_empty()).then_some((tag_prefix.as_slice(), owner.as_slice()));
                if let Err(e) = super::rules::store_here(ctx, source, rule) {
                    super::log::warning(ctx, &format!("tagcache: a rule from another master: {e}"));
                }
            }
        }
        _ => {}
    }
}

/// The ids of the other masters (not those known to have failed: their
/// replicas take over, and answer as masters).
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
        let me = raw::RedisModule_GetMyClusterID
            .map(|f| f())
            .filter(|p| !p.is_null())
            .map(|p| std::slice::from_raw_parts(p.cast::<u8>(), NODE_ID_LEN).to_vec());
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

fn send<B: AsRef<[u8]>>(ctx: &Context, node: &[u8], kind: u8, fields: &[B]) {
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
const SEEN_MAX: usize = 10_000;
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
fn ask<B: AsRef<[u8]>>(ctx: &Context, id: u64, others: &[Vec<u8>], kind: u8, fields: &[B]) {
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
fn ask_all<B: AsRef<[u8]>>(ctx: &Context, kind: u8, fields: &[B]) -> Vec<Vec<u8>> {
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
fn finish(ctx: &Context, g: Gather) {
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
        apply::purged(
            ctx,
            &Event {
                op: Op::Purge,
                tags: &g.tags,
                scopes: &[],
                keys: n,
                source: None,
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

fn arm_timeout(ctx: &Context, id: u64) {
    let ms = u64::try_from(config::cluster_timeout_ms()).unwrap_or(5000);
    ctx.create_timer(Duration::from_millis(ms), on_timeout, id);
}

fn user_field(caller: Option<&Caller>) -> Vec<u8> {
    caller.and_then(Caller::name).unwrap_or_default()
}

/// `TAG.PURGE` in a cluster: this master's keys and every other master's.
pub fn purge(
    ctx: &Context,
    req: Request,
    caller: Option<&Caller>,
    can_wait: bool,
    is_async: bool,
) -> RedisResult {
    let others = other_masters(ctx);
    if others.is_empty() {
        return purge::alone(ctx, req, caller, can_wait, is_async);
    }
    let tags = req.tags.clone();
    if !can_wait {
        return Err(Error::Invalid(
            "a purge of a cluster waits for the other masters: not inside MULTI or a script".into(),
        )
        .into());
    }
    if migrating(ctx) {
        return Err(Error::TryAgain(MIGRATING).into());
    }
    let Some(client) = blocked::block_for_purge(ctx) else {
        return Err(Error::Internal("cannot wait for the other masters".into()).into());
    };
    let id = engine::with(|s| {
        s.gathers.open(
            Some(client),
            tags.clone(),
            others.clone(),
            Gathered::Count(0),
            true,
        )
    })
    .unwrap_or(0);
    // This master's part first: a call it refuses (NOPERM, WRONGTYPE)
    // is sent nowhere else.
    let reply_to = ReplyTo::Gather(id);
    let user = req.user.clone();
    let local_req = Request {
        reply_to: reply_to.clone(),
        publish: false,
        ..req
    };
    let local = match purge::here(ctx, local_req, caller, Wait::Detached) {
        Ok(Here::Done { deleted, carried }) => Some(if is_async { carried } else { deleted }),
        Ok(Here::Sliced { carried }) if is_async => {
            silence(&reply_to);
            Some(carried)
        }
        Ok(Here::Sliced { .. }) => None,
        Err(e) => {
            super::update(|s| {
                if let Some(g) = s.gathers.open.get_mut(&id) {
                    g.waiting.clear();
                }
            });
            answer(ctx, &reply_to, Err(e.to_string()));
            return Ok(RedisValue::NoReply);
        }
    };
    let fields = PurgeAsk {
        id,
        user,
        how: if is_async { How::Async } else { How::Wait },
        tags,
    }
    .to_fields();
    ask(ctx, id, &others, kind::PURGE, &fields);
    arm_timeout(ctx, id);
    if let Some(n) = local {
        answer(ctx, &reply_to, Ok(Gathered::Count(n)));
    }
    Ok(RedisValue::NoReply)
}

/// What a cluster-wide read gathers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Card,
    Members,
}

/// `TAG.CARD` / `TAG.MEMBERS` in a cluster: every master's keys.
pub fn read(ctx: &Context, tag: &[u8], what: Read) -> RedisResult {
    // A replica holds its master's keys: it would count them twice.
    if !keys::may_write(ctx) {
        return Err(Error::Invalid(
            "in a cluster this is answered by a master, for every master".into(),
        )
        .into());
    }
    let caller = Caller::of(ctx);
    let mine = apply::visible_members(ctx, tag, caller.as_ref())?;
    let others = other_masters(ctx);
    let can_wait = !ctx.get_flags().intersects(
        redis_module::ContextFlags::MULTI
            | redis_module::ContextFlags::LUA
            | redis_module::ContextFlags::DENY_BLOCKING,
    );
    if others.is_empty() || !can_wait {
        if !others.is_empty() {
            return Err(Error::Invalid(
                "a read of a cluster waits for the other masters: not inside MULTI or a script"
                    .into(),
            )
            .into());
        }
        return Ok(match what {
            Read::Card => RedisValue::Integer(i64::try_from(mine.len()).unwrap_or(i64::MAX)),
            Read::Members => {
                RedisValue::Array(mine.into_iter().map(RedisValue::StringBuffer).collect())
            }
        });
    }
    let Some(client) = blocked::block_for_purge(ctx) else {
        return Err(Error::Internal("cannot wait for the other masters".into()).into());
    };
    let (sum, kind) = match what {
        Read::Card => (Gathered::Count(0), kind::CARD),
        Read::Members => (Gathered::Members(Vec::new()), kind::MEMBERS),
    };
    let id = engine::with(|s| {
        s.gathers
            .open(Some(client), vec![tag.to_vec()], others.clone(), sum, false)
    })
    .unwrap_or(0);
    let fields = [
        id.to_string().into_bytes(),
        user_field(caller.as_ref()),
        tag.to_vec(),
    ];
    ask(ctx, id, &others, kind, &fields);
    arm_timeout(ctx, id);
    let got = match what {
        Read::Card => Gathered::Count(i64::try_from(mine.len()).unwrap_or(i64::MAX)),
        Read::Members => Gathered::Members(mine),
    };
    let done = engine::with(|s| s.gathers.answer(id, None, Ok(got), false))
        .ok()
        .flatten();
    if let Some(g) = done {
        finish(ctx, g);
    }
    Ok(RedisValue::NoReply)
}

/// A rule made (`Some`) or removed here: the other masters make it too.
pub fn share_rule(ctx: &Context, source: &[u8], rule: Option<(&[u8], &[u8])>) {
    if !config::slotted() {
        return;
    }
    let (tag_prefix, owner) = rule.unwrap_or((b"", b""));
    ask_all(ctx, kind::LINK, &[source, tag_prefix, owner]);
}

/// A rule fired here: the other masters purge the tag too, with the rule
/// owner's permissions. Nobody waits for their counts (gather 0 is none).
pub fn purge_elsewhere(ctx: &Context, req: &Request) {
    let Some(source) = req.rule_source.clone().filter(|_| config::slotted()) else {
        return;
    };
    let fields = PurgeAsk {
        id: 0,
        user: req.user.clone(),
        how: How::Rule(source),
        tags: req.tags.clone(),
    }
    .to_fields();
    ask_all(ctx, kind::PURGE, &fields);
}
