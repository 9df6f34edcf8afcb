//! The command table: one record per command — its name, handler, flags,
//! arity, key specs and documentation — from which the module registers
//! its commands, wraps the ones that write, and answers `COMMAND INFO` and
//! `COMMAND DOCS`. Adding a command is adding a record here.

use super::{info, lease, link, tag, version};
use crate::server::cmdinfo::{
    expiration, int, key, not_key, one_of, pure, ro, ro_access, rw_update, string, unix, Info, Keys,
};
use std::sync::OnceLock;

/// Every command of the module, built once.
pub fn table() -> &'static [Info] {
    static TABLE: OnceLock<Vec<Info>> = OnceLock::new();
    TABLE.get_or_init(build)
}

fn build() -> Vec<Info> {
    vec![
        Info {
            name: "tag.set",
            handler: tag::tag_set,
            flags: "write deny-oom",
            writes: true,
            summary: "Sets the string value of a key and makes its tags exactly the given ones",
            complexity: "O(N) where N is the number of tags given and removed",
            arity: -6,
            keys: Keys::KeyAndTags,
            args: vec![
                key(c"key"),
                string(c"value"),
                expiration(true),
                int(c"stale-milliseconds").token(c"STALE").opt(),
                one_of(c"condition", vec![pure(c"NX"), pure(c"XX")]).opt(),
                string(c"token").token(c"LEASE").opt(),
                int(c"numtags").token(c"TAGS"),
                string(c"tag").multi(),
            ],
        },
        Info {
            name: "tag.apply",
            handler: tag::tag_apply,
            flags: "write deny-oom",
            writes: true,
            summary: "Writes a string value, adds the key to the first numadd sets and removes it from the others, by absolute name (the form TAG.SET replicates as)",
            complexity: "O(N) where N is the number of sets",
            arity: -5,
            keys: Keys::Apply,
            args: vec![
                key(c"key"),
                string(c"value"),
                one_of(
                    c"expiration",
                    vec![unix(c"unix-time-milliseconds"), pure(c"KEEPTTL"), pure(c"PERSIST")],
                ),
                int(c"numadd"),
                key(c"set").opt().multi(),
            ],
        },
        Info {
            name: "tag.add",
            handler: tag::tag_add,
            flags: "write deny-oom",
            writes: true,
            summary: "Adds tags to an existing key of any type",
            complexity: "O(N) where N is the number of tags",
            arity: -3,
            keys: Keys::At(1, rw_update()),
            args: vec![key(c"key"), string(c"tag").multi()],
        },
        Info {
            name: "tag.rem",
            handler: tag::tag_rem,
            flags: "write",
            writes: true,
            summary: "Removes tags from a key",
            complexity: "O(N) where N is the number of tags",
            arity: -3,
            keys: Keys::At(1, rw_update()),
            args: vec![key(c"key"), string(c"tag").multi()],
        },
        Info {
            name: "tag.purge",
            handler: tag::tag_purge,
            flags: "write",
            writes: true,
            summary: "Deletes every key that carries any of the tags, and the tags' index",
            complexity: "O(N) where N is the number of keys deleted",
            arity: -2,
            keys: Keys::Rest(1, not_key()),
            args: vec![string(c"tag").multi(), pure(c"ASYNC").opt()],
        },
        Info {
            name: "tag.invalidate",
            handler: tag::tag_invalidate,
            flags: "write",
            writes: true,
            summary: "Deletes, or marks stale, every key that carries any (or all) of the tags",
            complexity: "O(N) where N is the number of keys selected",
            arity: -4,
            keys: Keys::None,
            args: vec![
                pure(c"ALL").opt(),
                int(c"grace-ms").token(c"SOFT").opt(),
                pure(c"ASYNC").opt(),
                int(c"numtags").token(c"TAGS"),
                string(c"tag").multi(),
            ],
        },
        Info {
            name: "tag.members",
            handler: tag::tag_members,
            flags: "readonly",
            writes: false,
            summary: "Returns the keys that carry a tag",
            complexity: "O(N) where N is the number of keys carrying the tag",
            arity: 2,
            keys: Keys::At(1, not_key()),
            args: vec![string(c"tag")],
        },
        Info {
            name: "tag.card",
            handler: tag::tag_card,
            flags: "readonly",
            writes: false,
            summary: "Returns the number of keys that carry a tag",
            complexity: "O(N) where N is the number of keys carrying the tag",
            arity: 2,
            keys: Keys::At(1, not_key()),
            args: vec![string(c"tag")],
        },
        Info {
            name: "tag.tags",
            handler: tag::tag_tags,
            flags: "readonly fast",
            writes: false,
            summary: "Returns the tags a key carries",
            complexity: "O(N) where N is the number of tags of the key",
            arity: 2,
            keys: Keys::At(1, ro()),
            args: vec![key(c"key")],
        },
        Info {
            name: "tag.info",
            handler: info::tag_info,
            flags: "readonly fast",
            writes: false,
            summary: "Returns the module's counters and settings",
            complexity: "O(1)",
            arity: 1,
            keys: Keys::None,
            args: vec![],
        },
        Info {
            name: "tag.tryagain",
            handler: tag::tag_tryagain,
            flags: "write fast",
            writes: true,
            summary: "Replies TRYAGAIN and changes nothing: what a write of a tagged key becomes while its tag set has left ahead of it with a slot moving by MIGRATE",
            complexity: "O(1)",
            arity: 3,
            keys: Keys::Each(&[(1, ro), (2, ro)]),
            args: vec![key(c"key"), key(c"away")],
        },
        Info {
            name: "ver.get",
            handler: version::ver_get,
            flags: "readonly fast",
            writes: false,
            summary: "Returns the value of a key under its scope's current version",
            complexity: "O(1)",
            arity: 3,
            keys: Keys::Each(&[(1, not_key), (2, not_key)]),
            args: vec![string(c"scope"), string(c"key")],
        },
        Info {
            name: "ver.set",
            handler: version::ver_set,
            flags: "write deny-oom",
            writes: true,
            summary: "Sets the value of a key under its scope's current version",
            complexity: "O(1)",
            arity: -4,
            keys: Keys::Each(&[(1, not_key), (2, not_key)]),
            args: vec![
                string(c"scope"),
                string(c"key"),
                string(c"value"),
                expiration(false),
            ],
        },
        Info {
            name: "ver.bump",
            handler: version::ver_bump,
            flags: "write deny-oom fast",
            writes: true,
            summary: "Invalidates every value under the scopes by moving to a new version",
            complexity: "O(1) for each scope",
            arity: -2,
            keys: Keys::Rest(1, not_key()),
            args: vec![string(c"scope").multi()],
        },
        Info {
            name: "ver.current",
            handler: version::ver_current,
            flags: "readonly fast",
            writes: false,
            summary: "Returns the current version of a scope",
            complexity: "O(1)",
            arity: 2,
            keys: Keys::At(1, not_key()),
            args: vec![string(c"scope")],
        },
        Info {
            name: "tag.link",
            handler: link::tag_link,
            flags: "write deny-oom",
            writes: true,
            summary: "Adds a rule: a change to a key under source-prefix purges the matching tag",
            complexity: "O(L) where L is the length of the prefix",
            arity: -3,
            keys: Keys::None,
            args: vec![
                string(c"source-prefix"),
                string(c"tag-prefix"),
                int(c"grace-ms").token(c"SOFT").opt(),
            ],
        },
        Info {
            name: "tag.unlink",
            handler: link::tag_unlink,
            flags: "write",
            writes: true,
            summary: "Removes the rule for a source prefix",
            complexity: "O(L) where L is the length of the prefix",
            arity: 2,
            keys: Keys::None,
            args: vec![string(c"source-prefix")],
        },
        Info {
            name: "tag.links",
            handler: link::tag_links,
            flags: "readonly",
            writes: false,
            summary: "Lists the rules",
            complexity: "O(N) where N is the number of rules",
            arity: 1,
            keys: Keys::None,
            args: vec![],
        },
        Info {
            name: "tag.getl",
            handler: lease::tag_getl,
            flags: "write deny-oom",
            writes: true,
            summary: "Reads a key, handing out a lease to fill it on a miss",
            complexity: "O(1)",
            arity: -2,
            keys: Keys::At(1, ro_access()),
            args: vec![
                key(c"key"),
                int(c"milliseconds").token(c"TTL").opt(),
                int(c"timeout").token(c"WAIT").opt(),
            ],
        },
    ]
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::super::args;

    #[test]
    fn a_command_writes_exactly_when_its_flags_say_write() {
        for i in super::table() {
            assert_eq!(
                i.writes,
                i.flags.split(' ').any(|f| f == "write"),
                "{}",
                i.name
            );
        }
    }

    #[test]
    fn names_are_unique_and_lowercase() {
        let t = super::table();
        let mut names: Vec<_> = t.iter().map(|i| i.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), t.len());
        assert!(t.iter().all(|i| i.name == i.name.to_lowercase()));
    }

    /// Each parser's option words, each shown accepted by the parser in a
    /// call that uses it: every one must be a documented argument of its
    /// command, so that `COMMAND DOCS` never hides an option.
    #[test]
    fn every_option_word_a_parser_accepts_is_documented() {
        type Accepts = fn(&[u8]) -> bool;
        let tag_set: Accepts = |w| {
            let call: Vec<&[u8]> = match w.to_ascii_uppercase().as_slice() {
                b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                    vec![b"k", b"v", w, b"10", b"TAGS", b"1", b"t"]
                }
                b"STALE" => vec![b"k", b"v", b"EX", b"10", w, b"5", b"TAGS", b"1", b"t"],
                b"LEASE" => vec![b"k", b"v", w, b"tok", b"TAGS", b"1", b"t"],
                b"TAGS" => vec![b"k", b"v", w, b"1", b"t"],
                _ => vec![b"k", b"v", w, b"TAGS", b"1", b"t"],
            };
            args::parse_tag_set(&call).is_ok()
        };
        let invalidate: Accepts = |w| {
            let call: Vec<&[u8]> = match w.to_ascii_uppercase().as_slice() {
                b"SOFT" => vec![w, b"5", b"TAGS", b"1", b"t"],
                b"TAGS" => vec![w, b"1", b"t"],
                _ => vec![w, b"TAGS", b"1", b"t"],
            };
            args::parse_invalidate(&call).is_ok()
        };
        let purge: Accepts = |w| args::parse_purge(&[b"t", w]).is_ok_and(|a| a.is_async);
        let getl: Accepts = |w| args::parse_getl(&[b"k", w, b"5"]).is_ok();
        let ver_set: Accepts = |w| args::parse_ver_set(&[b"s", b"k", b"v", w, b"5"]).is_ok();
        let apply: Accepts = |w| args::parse_apply(&[b"k", b"v", w, b"0"]).is_ok();
        let link: Accepts = |w| w.eq_ignore_ascii_case(b"SOFT") && args::parse_grace(b"5").is_ok();
        let cases: [(&str, Accepts, &[&str]); 7] = [
            (
                "tag.set",
                tag_set,
                &[
                    "EX", "PX", "EXAT", "PXAT", "KEEPTTL", "STALE", "NX", "XX", "LEASE", "TAGS",
                ],
            ),
            (
                "tag.invalidate",
                invalidate,
                &["ALL", "SOFT", "ASYNC", "TAGS"],
            ),
            ("tag.purge", purge, &["ASYNC"]),
            ("tag.getl", getl, &["TTL", "WAIT"]),
            ("ver.set", ver_set, &["EX", "PX", "EXAT", "PXAT"]),
            ("tag.apply", apply, &["KEEPTTL", "PERSIST"]),
            ("tag.link", link, &["SOFT"]),
        ];
        for (name, accepts, words) in cases {
            let info = super::table().iter().find(|i| i.name == name).unwrap();
            let documented = info.tokens();
            for w in words {
                assert!(accepts(w.as_bytes()), "{name} does not accept {w}");
                assert!(
                    accepts(w.to_lowercase().as_bytes()),
                    "{name}: {w} in any case"
                );
                assert!(documented.contains(w), "{name}: {w} is not in COMMAND DOCS");
            }
            assert!(!accepts(b"BOGUS"), "{name} accepts any word");
        }
    }
}
