//! Command info (summary, arity, key specs) for COMMAND INFO / COMMAND DOCS
//! and for ACL and cluster routing. Registered through RM_SetCommandInfo,
//! which Redis 7.0 has, rather than the crate's `#[command]` attribute,
//! which needs 7.2.
//!
//! Tags and scopes are declared `NOT_KEY`: a client routes on them in a
//! cluster (`{product:42}` lands on the slot of `tag:{product:42}`), but
//! the ACL check applies to the derived keys, which the module checks itself.

use super::config;
use redis_module::{raw, Context, RedisResult, RedisString};
use std::ffi::{CStr, CString};

const VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
    version: 1,
    sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
    sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
    sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
};

type KeySpecFlags = u64;
type FlagsFn = fn() -> KeySpecFlags;

/// Where a command's keys are.
pub enum Keys {
    None,
    /// One argument at this index.
    At(i32, KeySpecFlags),
    /// From this index to the end.
    Rest(i32, KeySpecFlags),
    /// Arguments at these indexes, each with its flags.
    Each(&'static [(i32, FlagsFn)]),
    /// The key at 1, then `TAGS numtags tag...` (TAG.SET).
    KeyAndTags,
    /// The key at 1, then `ADD n set...` and `REM m set...` (TAG.APPLY).
    Apply,
}

/// A module command's handler: parses, acts, replies.
pub type Handler = fn(&Context, &[RedisString]) -> RedisResult;

/// One command, whole: the single record its registration, its write
/// wrapper (`flags` has `write`) and `COMMAND INFO`/`DOCS` are made from.
pub struct Info {
    pub name: &'static str,
    pub handler: Handler,
    /// Command flags, as `RedisModule_CreateCommand` takes them.
    pub flags: &'static str,
    /// `flags` has `write`: the command runs through `write_command` (a
    /// field, not a search of `flags` on every call).
    pub writes: bool,
    pub summary: &'static str,
    pub complexity: &'static str,
    pub arity: i32,
    pub keys: Keys,
    pub args: Vec<Arg>,
}

impl Info {
    /// Every option word the documented arguments name (`TAGS`, `EX`, …).
    #[cfg(test)]
    pub fn tokens(&self) -> Vec<&'static str> {
        fn walk(args: &[Arg], out: &mut Vec<&'static str>) {
            for a in args {
                if let Some(t) = a.token.and_then(|t| t.to_str().ok()) {
                    out.push(t);
                }
                walk(&a.sub, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.args, &mut out);
        out
    }
}

/// One argument as COMMAND DOCS shows it.
pub struct Arg {
    name: &'static CStr,
    kind: raw::RedisModuleCommandArgType,
    key_spec: i32,
    token: Option<&'static CStr>,
    flags: u32,
    sub: Vec<Arg>,
}

impl Arg {
    fn new(name: &'static CStr, kind: raw::RedisModuleCommandArgType) -> Arg {
        Arg {
            name,
            kind,
            key_spec: -1,
            token: None,
            flags: raw::REDISMODULE_CMD_ARG_NONE,
            sub: Vec::new(),
        }
    }
    pub fn opt(mut self) -> Arg {
        self.flags |= raw::REDISMODULE_CMD_ARG_OPTIONAL;
        self
    }
    pub fn multi(mut self) -> Arg {
        self.flags |= raw::REDISMODULE_CMD_ARG_MULTIPLE;
        self
    }
    pub fn token(mut self, t: &'static CStr) -> Arg {
        self.token = Some(t);
        self
    }
}

pub fn key(name: &'static CStr) -> Arg {
    let mut a = Arg::new(
        name,
        raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY,
    );
    a.key_spec = 0;
    a
}
pub fn string(name: &'static CStr) -> Arg {
    Arg::new(
        name,
        raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING,
    )
}
pub fn int(name: &'static CStr) -> Arg {
    Arg::new(
        name,
        raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
    )
}
pub fn unix(name: &'static CStr) -> Arg {
    Arg::new(
        name,
        raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_UNIX_TIME,
    )
}
pub fn pure(token: &'static CStr) -> Arg {
    Arg::new(
        token,
        raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PURE_TOKEN,
    )
    .token(token)
}
pub fn one_of(name: &'static CStr, sub: Vec<Arg>) -> Arg {
    let mut a = Arg::new(
        name,
        raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_ONEOF,
    );
    a.sub = sub;
    a
}

pub fn expiration(keep: bool) -> Arg {
    let mut v = vec![
        int(c"seconds").token(c"EX"),
        int(c"milliseconds").token(c"PX"),
        unix(c"unix-time-seconds").token(c"EXAT"),
        unix(c"unix-time-milliseconds").token(c"PXAT"),
    ];
    if keep {
        v.push(pure(c"KEEPTTL"));
    }
    one_of(c"expiration", v).opt()
}

/// Lays `args` out as the zero-terminated arrays Redis reads; `arena`
/// keeps every array alive until Redis has copied them.
fn lay_out(
    args: &[Arg],
    specs: i32,
    arena: &mut Vec<Vec<raw::RedisModuleCommandArg>>,
) -> *mut raw::RedisModuleCommandArg {
    let mut out: Vec<raw::RedisModuleCommandArg> = Vec::with_capacity(args.len() + 1);
    for a in args {
        let subargs = if a.sub.is_empty() {
            std::ptr::null_mut()
        } else {
            lay_out(&a.sub, specs, arena)
        };
        // An argument whose key spec is not declared (tags in a cluster)
        // is a plain string.
        let (kind, key_spec) = if a.key_spec >= specs {
            (
                raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING,
                -1,
            )
        } else {
            (a.kind, a.key_spec)
        };
        out.push(raw::RedisModuleCommandArg {
            name: a.name.as_ptr(),
            type_: kind,
            key_spec_index: key_spec,
            token: a.token.map_or(std::ptr::null(), CStr::as_ptr),
            summary: std::ptr::null(),
            since: std::ptr::null(),
            flags: a.flags as i32,
            deprecated_since: std::ptr::null(),
            subargs,
            display_text: std::ptr::null(),
        });
    }
    // SAFETY: the terminator is all zeroes, as Redis reads it.
    out.push(unsafe { std::mem::zeroed() });
    let ptr = out.as_mut_ptr();
    arena.push(out);
    ptr
}

pub fn ro() -> KeySpecFlags {
    raw::REDISMODULE_CMD_KEY_RO as u64
}
pub fn ro_access() -> KeySpecFlags {
    (raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS) as u64
}
pub fn rw_update() -> KeySpecFlags {
    (raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE) as u64
}
pub fn ow_update() -> KeySpecFlags {
    (raw::REDISMODULE_CMD_KEY_OW | raw::REDISMODULE_CMD_KEY_UPDATE) as u64
}
pub fn not_key() -> KeySpecFlags {
    (raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_NOT_KEY) as u64
}

fn spec(
    flags: KeySpecFlags,
    bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1,
    by_keyword: bool,
    fk: raw::RedisModuleCommandKeySpec__bindgen_ty_2,
    by_keynum: bool,
) -> raw::RedisModuleCommandKeySpec {
    raw::RedisModuleCommandKeySpec {
        notes: std::ptr::null(),
        flags,
        begin_search_type: if by_keyword {
            raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_KEYWORD
        } else {
            raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX
        },
        bs,
        find_keys_type: if by_keynum {
            raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_KEYNUM
        } else {
            raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE
        },
        fk,
    }
}

fn at(pos: i32) -> raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
    raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
        index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos },
    }
}

fn range(lastkey: i32) -> raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
    raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
        range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
            lastkey,
            keystep: 1,
            limit: 0,
        },
    }
}

/// The key specs, ending with the all-zero entry Redis expects. Every
/// string they point to is static.
fn specs(keys: &Keys, tags_are_keys: bool) -> Vec<raw::RedisModuleCommandKeySpec> {
    let one = |i: i32, f: KeySpecFlags| spec(f, at(i), false, range(0), false);
    let mut out = match keys {
        Keys::None => vec![],
        Keys::At(i, f) => vec![one(*i, *f)],
        Keys::Rest(i, f) => vec![spec(*f, at(*i), false, range(-1), false)],
        Keys::Each(list) => list.iter().map(|(i, f)| one(*i, f())).collect(),
        Keys::Apply => vec![
            one(1, ow_update()),
            spec(rw_update(), at(5), false, range(-1), false),
        ],
        Keys::KeyAndTags => vec![
            one(1, ow_update()),
            spec(
                not_key(),
                raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
                    keyword: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_2 {
                        keyword: c"TAGS".as_ptr(),
                        startfrom: 3,
                    },
                },
                true,
                raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
                    keynum: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_2 {
                        keynumidx: 0,
                        firstkey: 1,
                        keystep: 1,
                    },
                },
                true,
            ),
        ],
    };
    // In a cluster tags are not keys: declared, even as "not a key", they
    // would make cluster clients route by them (and refuse CROSSSLOT).
    if !tags_are_keys {
        out.retain(|s| s.flags & u64::from(raw::REDISMODULE_CMD_KEY_NOT_KEY) == 0);
    }
    if !out.is_empty() {
        // SAFETY: the terminator is all zeroes, as Redis reads it (a
        // struct of integers, null pointers and unions of the same).
        out.push(unsafe { std::mem::zeroed() });
    }
    out
}

/// Where the server has module ACL categories (Redis >= 7.4, Valkey), the
/// commands join a `tagcache` category beside `read` or `write`, so that
/// `+@tagcache` grants them all. Elsewhere (7.0) this is skipped quietly.
fn set_acl_categories(ctx: &Context, cmd: *mut raw::RedisModuleCommand, info: &Info, own: bool) {
    // SAFETY: reading a function pointer of the module API.
    let Some(set) = (unsafe { raw::RedisModule_SetCommandACLCategories }) else {
        return;
    };
    let writes = info.writes;
    let name = info.name;
    let base = if writes { "write" } else { "read" };
    let cats = if own {
        format!("{base} tagcache")
    } else {
        base.to_string()
    };
    let Ok(cats) = CString::new(cats) else { return };
    // SAFETY: `cmd` is this module's command; `cats` outlives the call.
    if unsafe { set(cmd, cats.as_ptr()) } != raw::REDISMODULE_OK as i32 {
        super::log::notice(ctx, &format!("tagcache: no ACL categories for {name}"));
    }
}

fn add_own_category(ctx: &Context) -> bool {
    // SAFETY: reading a function pointer of the module API, then calling it
    // from init with the module's context and a static name.
    match unsafe { raw::RedisModule_AddACLCategory } {
        // SAFETY: called from init with the module's context; a static name.
        Some(add) => unsafe { add(ctx.ctx, c"tagcache".as_ptr()) == raw::REDISMODULE_OK as i32 },
        None => false,
    }
}

/// Attaches command info to every registered command. Skips quietly on a
/// server without the API (then COMMAND DOCS is just thinner).
pub fn register(ctx: &Context, table: &[Info]) -> Result<(), String> {
    // SAFETY: reading function pointers of the module API.
    let (Some(get), Some(set)) = (unsafe { raw::RedisModule_GetCommand }, unsafe {
        raw::RedisModule_SetCommandInfo
    }) else {
        return Ok(());
    };
    let own_category = add_own_category(ctx);
    for info in table {
        let name = CString::new(info.name).map_err(|e| e.to_string())?;
        // SAFETY: called from init with the module's context; `name` lives.
        let cmd = unsafe { get(ctx.ctx, name.as_ptr()) };
        if cmd.is_null() {
            return Err(format!("command {} is not registered", info.name));
        }
        set_acl_categories(ctx, cmd, info, own_category);
        let summary = CString::new(info.summary).map_err(|e| e.to_string())?;
        let complexity = CString::new(info.complexity).map_err(|e| e.to_string())?;
        let since = CString::new("1.0.0").map_err(|e| e.to_string())?;
        let mut key_specs = specs(
            &info.keys,
            !(config::slotted() && info.name.starts_with("tag.")),
        );
        let has_specs = !key_specs.is_empty();
        let declared = i32::try_from(key_specs.len().saturating_sub(1)).unwrap_or(0);
        let mut arena = Vec::new();
        let args = if info.args.is_empty() {
            std::ptr::null_mut()
        } else {
            lay_out(&info.args, declared, &mut arena)
        };
        let raw_info = raw::RedisModuleCommandInfo {
            version: &VERSION,
            summary: summary.as_ptr(),
            complexity: complexity.as_ptr(),
            since: since.as_ptr(),
            history: std::ptr::null_mut(),
            tips: std::ptr::null(),
            arity: info.arity,
            key_specs: if has_specs {
                key_specs.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            },
            args,
        };
        // SAFETY: `cmd` is this module's registered command; `raw_info` and
        // everything it points to (strings, specs, args) outlive the call,
        // which copies them.
        let status = unsafe { set(cmd, &raw_info) };
        if status != raw::REDISMODULE_OK as i32 {
            return Err(format!("could not set command info for {}", info.name));
        }
    }
    Ok(())
}
