//! Command info (summary, arity, key specs) for COMMAND INFO / COMMAND DOCS
//! and for ACL and cluster routing. Registered through RM_SetCommandInfo,
//! which Redis 7.0 has, rather than the crate's `#[command]` attribute,
//! which needs 7.2.
//!
//! Tags and scopes are declared `NOT_KEY`: a client routes on them in a
//! cluster (`{product:42}` lands on the slot of `tag:{product:42}`), but
//! the ACL check applies to the derived keys, which the module checks itself.

use redis_module::commands::{BeginSearch, FindKeys, KeySpec, KeySpecFlags};
use redis_module::{raw, Context};
use std::ffi::CString;

const VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
    version: 1,
    sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
    sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
    sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
};

type FlagsFn = fn() -> KeySpecFlags;

/// Where a command's keys are.
enum Keys {
    None,
    /// One argument at this index.
    At(i32, KeySpecFlags),
    /// From this index to the end.
    Rest(i32, KeySpecFlags),
    /// Arguments at these indexes, each with its flags.
    Each(&'static [(i32, FlagsFn)]),
    /// The key at 1, then `TAGS numtags tag...` (TAG.SET).
    KeyAndTags,
}

struct Info {
    name: &'static str,
    summary: &'static str,
    complexity: &'static str,
    arity: i32,
    keys: Keys,
}

fn ro() -> KeySpecFlags {
    KeySpecFlags::READ_ONLY
}
fn ro_access() -> KeySpecFlags {
    KeySpecFlags::READ_ONLY | KeySpecFlags::ACCESS
}
fn ow_update() -> KeySpecFlags {
    KeySpecFlags::OVERWRITE | KeySpecFlags::UPDATE
}
fn not_key() -> KeySpecFlags {
    KeySpecFlags::READ_ONLY | KeySpecFlags::NOT_KEY
}

fn table() -> Vec<Info> {
    vec![
        Info {
            name: "tag.set",
            summary: "Sets the string value of a key and makes its tags exactly the given ones",
            complexity: "O(N) where N is the number of tags given and removed",
            arity: -6,
            keys: Keys::KeyAndTags,
        },
        Info {
            name: "tag.add",
            summary: "Adds tags to an existing key of any type",
            complexity: "O(N) where N is the number of tags",
            arity: -3,
            keys: Keys::At(1, ro()),
        },
        Info {
            name: "tag.rem",
            summary: "Removes tags from a key",
            complexity: "O(N) where N is the number of tags",
            arity: -3,
            keys: Keys::At(1, ro()),
        },
        Info {
            name: "tag.purge",
            summary: "Deletes every key that carries any of the tags, and the tags' index",
            complexity: "O(N) where N is the number of keys deleted",
            arity: -2,
            keys: Keys::Rest(1, not_key()),
        },
        Info {
            name: "tag.members",
            summary: "Returns the keys that carry a tag",
            complexity: "O(N) where N is the number of keys carrying the tag",
            arity: 2,
            keys: Keys::At(1, not_key()),
        },
        Info {
            name: "tag.card",
            summary: "Returns the number of keys that carry a tag",
            complexity: "O(N) where N is the number of keys carrying the tag",
            arity: 2,
            keys: Keys::At(1, not_key()),
        },
        Info {
            name: "tag.tags",
            summary: "Returns the tags a key carries",
            complexity: "O(N) where N is the number of tags of the key",
            arity: 2,
            keys: Keys::At(1, ro()),
        },
        Info {
            name: "tag.info",
            summary: "Returns the module's counters and settings",
            complexity: "O(1)",
            arity: 1,
            keys: Keys::None,
        },
        Info {
            name: "ver.get",
            summary: "Returns the value of a key under its scope's current version",
            complexity: "O(1)",
            arity: 3,
            keys: Keys::Each(&[(1, not_key), (2, not_key)]),
        },
        Info {
            name: "ver.set",
            summary: "Sets the value of a key under its scope's current version",
            complexity: "O(1)",
            arity: -4,
            keys: Keys::Each(&[(1, not_key), (2, not_key)]),
        },
        Info {
            name: "ver.bump",
            summary: "Invalidates every value under the scopes by moving to a new version",
            complexity: "O(1) for each scope",
            arity: -2,
            keys: Keys::Rest(1, not_key()),
        },
        Info {
            name: "ver.current",
            summary: "Returns the current version of a scope",
            complexity: "O(1)",
            arity: 2,
            keys: Keys::At(1, not_key()),
        },
        Info {
            name: "tag.link",
            summary: "Adds a rule: a change to a key under source-prefix purges the matching tag",
            complexity: "O(L) where L is the length of the prefix",
            arity: 3,
            keys: Keys::None,
        },
        Info {
            name: "tag.unlink",
            summary: "Removes the rule for a source prefix",
            complexity: "O(L) where L is the length of the prefix",
            arity: 2,
            keys: Keys::None,
        },
        Info {
            name: "tag.links",
            summary: "Lists the rules",
            complexity: "O(N) where N is the number of rules",
            arity: 1,
            keys: Keys::None,
        },
        Info {
            name: "tag.getl",
            summary: "Reads a key, handing out a lease to fill it on a miss",
            complexity: "O(1)",
            arity: -2,
            keys: Keys::At(1, ro_access()),
        },
    ]
}

fn specs(keys: &Keys) -> Vec<KeySpec> {
    let one = |i: i32, f: KeySpecFlags| {
        KeySpec::new(
            None,
            f,
            BeginSearch::new_index(i),
            FindKeys::new_range(0, 1, 0),
        )
    };
    match keys {
        Keys::None => vec![],
        Keys::At(i, f) => vec![one(*i, KeySpecFlags::from_bits_truncate(f.bits()))],
        Keys::Rest(i, f) => vec![KeySpec::new(
            None,
            KeySpecFlags::from_bits_truncate(f.bits()),
            BeginSearch::new_index(*i),
            FindKeys::new_range(-1, 1, 0),
        )],
        Keys::Each(list) => list.iter().map(|(i, f)| one(*i, f())).collect(),
        Keys::KeyAndTags => vec![
            one(1, ow_update()),
            KeySpec::new(
                Some(
                    "tags: routed on in a cluster; their index keys are checked by the module"
                        .into(),
                ),
                not_key(),
                BeginSearch::new_keyword("TAGS".into(), 3),
                FindKeys::new_keys_num(0, 1, 1),
            ),
        ],
    }
}

/// Attaches command info to every registered command. Skips quietly on a
/// server without the API (then COMMAND DOCS is just thinner).
pub fn register(ctx: &Context) -> Result<(), String> {
    let (Some(get), Some(set)) = (unsafe { raw::RedisModule_GetCommand }, unsafe {
        raw::RedisModule_SetCommandInfo
    }) else {
        return Ok(());
    };
    for info in table() {
        let name = CString::new(info.name).map_err(|e| e.to_string())?;
        let cmd = unsafe { get(ctx.ctx, name.as_ptr()) };
        if cmd.is_null() {
            continue; // not part of this build
        }
        let summary = CString::new(info.summary).map_err(|e| e.to_string())?;
        let complexity = CString::new(info.complexity).map_err(|e| e.to_string())?;
        let since = CString::new("1.0.0").map_err(|e| e.to_string())?;
        let spec_list = specs(&info.keys);
        let has_specs = !spec_list.is_empty();
        let mut key_specs = redis_module::commands::get_redis_key_spec(spec_list);
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
            args: std::ptr::null_mut(),
        };
        let status = unsafe { set(cmd, &raw_info) };
        for ks in &key_specs {
            if !ks.notes.is_null() {
                drop(unsafe { CString::from_raw(ks.notes as *mut std::os::raw::c_char) });
            }
            if ks.begin_search_type
                == raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_KEYWORD
            {
                let kw = unsafe { ks.bs.keyword.keyword };
                if !kw.is_null() {
                    drop(unsafe { CString::from_raw(kw as *mut std::os::raw::c_char) });
                }
            }
        }
        if status != raw::REDISMODULE_OK as i32 {
            return Err(format!("could not set command info for {}", info.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_lowercase() {
        let t = super::table();
        let mut names: Vec<_> = t.iter().map(|i| i.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), t.len());
        assert!(t.iter().all(|i| i.name == i.name.to_lowercase()));
    }
}
