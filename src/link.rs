//! TAG.LINK rules: a write to, deletion or expiry of `source-prefix + rest`
//! purges the tag `tag-prefix + rest`, whoever made the change.
//!
//! Rules are kept in the hash `tagcache:links` of the database they apply
//! to, so they persist and replicate with the data; the in-memory trie is
//! reloaded whenever that hash changes (on a replica too, through the
//! replicated write) and after a load.
//!
//! A rule's purge never fires further rules and never deletes the key whose
//! change fired it, so rules cannot loop, whatever their prefixes.

use crate::config;
use crate::error::{Error, Result};
use crate::events::{self, Event, Op};
use crate::index::Db;
use crate::rules::Rules;
use crate::stats;
use crate::store::{self, argv, Access, Caller, Mode, OwnWrites};
use redis_module::{Context, RedisResult, RedisString, RedisValue};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

pub const LINKS_KEY: &[u8] = b"tagcache:links";

type Firing = (Db, Vec<u8>, Vec<Vec<u8>>);

thread_local! {
    static RULES: RefCell<HashMap<Db, Rules>> = RefCell::new(HashMap::new());
    static FIRING: Cell<bool> = const { Cell::new(false) };
    static PENDING: RefCell<Vec<Firing>> = const { RefCell::new(Vec::new()) };
}

fn read_rules(ctx: &Context) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(reply) = store::call(ctx, Mode::Local, "HGETALL", &[LINKS_KEY]) else {
        return Vec::new();
    };
    let flat = reply.into_bytes_list();
    flat.chunks_exact(2)
        .filter_map(|p| match p {
            [field, value] => Some((field.clone(), value.clone())),
            _ => None,
        })
        .collect()
}

/// Reloads the rules of the selected database from its hash.
pub fn reload(ctx: &Context) {
    let db = store::selected_db(ctx);
    let rules = Rules::from_pairs(read_rules(ctx));
    RULES.with(|r| {
        let mut r = r.borrow_mut();
        if rules.is_empty() {
            r.remove(&db);
        } else {
            r.insert(db, rules);
        }
    });
}

pub fn forget(db: Option<Db>) {
    RULES.with(|r| match db {
        Some(db) => drop(r.borrow_mut().remove(&db)),
        None => r.borrow_mut().clear(),
    });
}

pub fn swap(a: Db, b: Db) {
    RULES.with(|r| crate::index::swap_dbs(&mut r.borrow_mut(), a, b));
}

/// Events that change a key's value or existence (not its TTL alone).
fn is_change(event: &str) -> bool {
    !matches!(event, "expire" | "persist" | "new" | "keymiss" | "loaded")
}

pub fn any_rules() -> bool {
    RULES.with(|r| !r.borrow().is_empty())
}

pub fn has_rules(db: Db) -> bool {
    RULES.with(|r| r.borrow().contains_key(&db))
}

/// `writes`: the server may write on its own (a master, not loading).
pub fn on_keyspace_event(ctx: &Context, event: &str, key: &[u8], db: Db, writes: bool) {
    if key == LINKS_KEY {
        reload(ctx);
        return;
    }
    if FIRING.with(Cell::get) || !is_change(event) || !writes {
        return;
    }
    let tags = RULES.with(|r| r.borrow().get(&db).map(|rules| rules.tags_for(key)));
    let Some(tags) = tags.filter(|t| !t.is_empty()) else {
        return;
    };
    let firing = (db, key.to_vec(), tags);
    if OwnWrites::active() {
        // Inside a module command: fire once it has finished its own writes.
        PENDING.with(|p| p.borrow_mut().push(firing));
    } else {
        crate::notify::run_after(ctx, move |ctx| fire(ctx, firing));
    }
}

/// Fires the rules that the calling command's own writes triggered.
pub fn drain(ctx: &Context) {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    for firing in pending {
        fire(ctx, firing);
    }
}

fn fire(ctx: &Context, (db, source, tags): Firing) {
    if !store::may_write(ctx) {
        return;
    }
    FIRING.with(|f| f.set(true));
    let home = store::selected_db(ctx);
    store::select_db(ctx, db);
    match crate::commands::tag::purge(ctx, &tags, None, Some(&source)) {
        Ok(n) => {
            stats::bump(&stats::RULE_FIRINGS);
            events::emit(
                ctx,
                &Event {
                    op: Op::Link,
                    tags: &tags,
                    scopes: &[],
                    keys: n,
                    source: Some(&source),
                },
            );
        }
        Err(e) => ctx.log_warning(&format!("tagcache: rule purge failed: {e}")),
    }
    store::select_db(ctx, home);
    FIRING.with(|f| f.set(false));
}

pub fn tag_link(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let [source, tag_prefix] = argv.as_slice() else {
        return Err(Error::WrongArity("tag.link").into());
    };
    if source.is_empty() {
        return Err(Error::Invalid("source-prefix must not be empty".into()).into());
    }
    if source.starts_with(&config::tag_prefix()) || config::tag_prefix().starts_with(source) {
        return Err(
            Error::Invalid("source-prefix must not cover the tag index keys".into()).into(),
        );
    }
    check_links_key(ctx)?;
    store::call(
        ctx,
        Mode::Replicated,
        "HSET",
        &[LINKS_KEY, source, tag_prefix],
    )?;
    reload(ctx);
    Ok(RedisValue::SimpleStringStatic("OK"))
}

pub fn tag_unlink(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    let argv = argv(&args);
    let [source] = argv.as_slice() else {
        return Err(Error::WrongArity("tag.unlink").into());
    };
    check_links_key(ctx)?;
    let removed = store::call(ctx, Mode::Replicated, "HDEL", &[LINKS_KEY, source])?.int();
    reload(ctx);
    Ok(RedisValue::Integer(removed))
}

pub fn tag_links(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    stats::bump(&stats::COMMANDS);
    if args.len() != 1 {
        return Err(Error::WrongArity("tag.links").into());
    }
    Caller::of(ctx).check(ctx, LINKS_KEY, Access::Read)?;
    if !matches!(
        store::key_type(ctx, LINKS_KEY),
        redis_module::KeyType::Empty | redis_module::KeyType::Hash
    ) {
        return Err(Error::WrongType.into());
    }
    let mut rules = read_rules(ctx);
    rules.sort();
    Ok(RedisValue::Array(
        rules
            .into_iter()
            .map(|(s, t)| {
                RedisValue::Array(vec![
                    RedisValue::StringBuffer(s),
                    RedisValue::StringBuffer(t),
                ])
            })
            .collect(),
    ))
}

fn check_links_key(ctx: &Context) -> Result<()> {
    Caller::of(ctx).check(ctx, LINKS_KEY, Access::Write)?;
    match store::key_type(ctx, LINKS_KEY) {
        redis_module::KeyType::Empty | redis_module::KeyType::Hash => Ok(()),
        _ => Err(Error::WrongType),
    }
}
