//! Redis Cluster: `TAG.PURGE`, `TAG.CARD` and `TAG.MEMBERS` answer for the
//! whole cluster. The master that receives one asks every other master over
//! the cluster bus, does its own part, and replies once all have answered
//! (its caller blocked inside the server meanwhile), or with an error when
//! `cluster-timeout-ms` runs out first. Rules made on one master are sent
//! to the others. Messages are handled from a timer, as any other work the
//! server did not start with a command.

use super::acl::Caller;
use super::apply;
use super::blocked;
use super::config;
use super::keys;
use super::purge::{self, Here, Wait};
use crate::engine::cluster::{decode, kind, Gathered, How, PurgeAsk};
use crate::engine::error::Error;
use crate::engine::purge::{ReplyTo, Request};
use crate::engine::{self, Wake};
use redis_module::{raw, Context, RedisResult, RedisValue};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::raw::{c_char, c_uchar};
use std::time::Duration;

use super::bus::{
    answer, arm_timeout, ask, ask_all, finish, migrating, other_masters, send, silence, MIGRATING,
    NODE_ID_LEN, SEEN, SEEN_MAX,
};

/// A message from another master, kept until the timer handles it.
struct Inbound {
    from: Vec<u8>,
    kind: u8,
    fields: Vec<Vec<u8>>,
}

thread_local! {
    static INBOX: RefCell<VecDeque<Inbound>> = const { RefCell::new(VecDeque::new()) };
    static ARMED: Cell<bool> = const { Cell::new(false) };
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
            // A rule's purge: its deletions fire no further rules (and a
            // gather id of 0 awaits no count).
            let reply_to = match (&ask.how, id) {
                (How::Rule(_), 0) => ReplyTo::Nobody,
                _ => ReplyTo::Remote(m.from.clone(), id),
            };
            let rule_source = match ask.how {
                How::Rule(source) => Some(source),
                _ => None,
            };
            let req = Request {
                db: keys::selected_db(ctx),
                tags: ask.tags,
                all: ask.all,
                soft: ask.soft,
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
                Ok(Here::Done { deleted, .. }) => {
                    let n = deleted;
                    answer(ctx, &reply_to, Ok(Gathered::Count(n)));
                }
                Ok(Here::Sliced { carried, .. }) if is_async => {
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
            if let [source, value] = f.as_slice() {
                let value = (!value.is_empty()).then(|| value.clone());
                if let Err(e) = super::rules::store_here(ctx, source, value) {
                    super::log::warning(ctx, &format!("tagcache: a rule from another master: {e}"));
                }
            }
        }
        _ => {}
    }
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
    let id = match engine::with(|s| s.gathers.open_purge(Some(client), &req, others.clone())) {
        Ok(id) => id,
        Err(e) => {
            blocked::wake(
                ctx,
                vec![Wake::Failed {
                    client,
                    error: e.to_string(),
                }],
            );
            return Ok(RedisValue::NoReply);
        }
    };
    let how = if is_async { How::Async } else { How::Wait };
    let fields = PurgeAsk::of(id, &req, how).to_fields();
    // This master's part first: a call it refuses (NOPERM, WRONGTYPE)
    // is sent nowhere else.
    let reply_to = ReplyTo::Gather(id);
    let local_req = Request {
        reply_to: reply_to.clone(),
        publish: false,
        ..req
    };
    let local = match purge::here(ctx, local_req, caller, Wait::Detached) {
        Ok(Here::Done { deleted, .. }) => Some(deleted),
        Ok(Here::Sliced { carried, .. }) if is_async => {
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
pub fn share_rule(ctx: &Context, source: &[u8], value: Option<&[u8]>) {
    if !config::slotted() {
        return;
    }
    ask_all(ctx, kind::LINK, &[source, value.unwrap_or_default()]);
}
