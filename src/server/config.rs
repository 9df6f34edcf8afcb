//! Module settings: each is a load argument `name value` and a runtime
//! `CONFIG GET/SET tagcache.<name>`. Defaults and bounds live here.

use crate::engine::plan::Prefix;
use redis_module::configuration::ConfigurationContext;
use redis_module::{ConfigurationValue, RedisError, RedisString};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

pub const TAG_PREFIX_DEFAULT: &str = "tag:";
pub const VER_PREFIX_DEFAULT: &str = "ver:";
pub const EVENTS_CHANNEL_DEFAULT: &str = "tagcache:events";
pub const EVENTS_STREAM_DEFAULT: &str = "";
pub const STREAM_MAXLEN_DEFAULT: i64 = 10_000;
pub const STREAM_MAXLEN_MIN: i64 = 1;
pub const STREAM_MAXLEN_MAX: i64 = 1_000_000_000;
pub const LEASE_TTL_DEFAULT: i64 = 10_000;
pub const LEASE_TTL_MIN: i64 = 1;
pub const LEASE_TTL_MAX: i64 = 86_400_000;
pub const PURGE_ATOMIC_MAX_DEFAULT: i64 = 10_000;
pub const PURGE_ATOMIC_MAX_MIN: i64 = 0;
pub const PURGE_ATOMIC_MAX_MAX: i64 = 100_000_000;
pub const PURGE_SLICE_US_DEFAULT: i64 = 1000;
pub const PURGE_SLICE_US_MIN: i64 = 100;
pub const PURGE_SLICE_US_MAX: i64 = 100_000;
pub const CLUSTER_TIMEOUT_MS_DEFAULT: i64 = 5000;
pub const CLUSTER_TIMEOUT_MS_MIN: i64 = 10;
pub const CLUSTER_TIMEOUT_MS_MAX: i64 = 3_600_000;

/// Every setting name, as accepted at load time.
pub const NAMES: [&str; 9] = [
    "tag-prefix",
    "ver-prefix",
    "events-channel",
    "events-stream",
    "events-stream-maxlen",
    "lease-ttl",
    "purge-atomic-max",
    "purge-slice-us",
    "cluster-timeout-ms",
];

/// A string setting, optionally refusing the empty string.
pub struct Text {
    value: Mutex<String>,
    required: bool,
    /// Fixed once the module has loaded (`freeze`).
    load_time: bool,
}

impl Text {
    const fn new(required: bool, load_time: bool) -> Text {
        Text {
            value: Mutex::new(String::new()),
            required,
            load_time,
        }
    }

    fn store(&self, v: String) {
        if let Ok(mut guard) = self.value.lock() {
            *guard = v;
        }
    }

    pub fn get(&self) -> String {
        self.value.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl ConfigurationValue<RedisString> for Text {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        RedisString::create_from_slice(std::ptr::null_mut(), Text::get(self).as_bytes())
    }

    fn set(&self, _ctx: &ConfigurationContext, val: RedisString) -> Result<(), RedisError> {
        let s = val
            .try_as_str()
            .map_err(|_| RedisError::Str("value must be valid UTF-8"))?;
        check_text(s).map_err(RedisError::Str)?;
        if self.required && s.is_empty() {
            return Err(RedisError::Str("value must not be empty"));
        }
        // A load-time setting: what is replicated and written to the AOF
        // names absolute keys built with it. Re-applying the value in force
        // (as tools that write back a whole configuration do) changes
        // nothing.
        if self.load_time && PREFIXES.get().is_some() {
            return if s == Text::get(self) {
                Ok(())
            } else {
                Err(RedisError::Str("can't set immutable config"))
            };
        }
        self.store(s.to_string());
        Ok(())
    }
}

/// A string setting's value reaches C strings (the crate's config getter,
/// log lines): no NUL.
fn check_text(s: &str) -> Result<(), &'static str> {
    if s.contains('\0') {
        Err("value must not contain NUL bytes")
    } else {
        Ok(())
    }
}

pub static TAG_PREFIX: Text = Text::new(true, true);
pub static VER_PREFIX: Text = Text::new(true, true);
pub static EVENTS_CHANNEL: Text = Text::new(false, false);
pub static EVENTS_STREAM: Text = Text::new(false, false);
pub static STREAM_MAXLEN: AtomicI64 = AtomicI64::new(STREAM_MAXLEN_DEFAULT);
pub static LEASE_TTL: AtomicI64 = AtomicI64::new(LEASE_TTL_DEFAULT);
pub static PURGE_ATOMIC_MAX: AtomicI64 = AtomicI64::new(PURGE_ATOMIC_MAX_DEFAULT);
pub static PURGE_SLICE_US: AtomicI64 = AtomicI64::new(PURGE_SLICE_US_DEFAULT);
pub static CLUSTER_TIMEOUT_MS: AtomicI64 = AtomicI64::new(CLUSTER_TIMEOUT_MS_DEFAULT);

/// Purges of more keys than this run in slices (0: always).
pub fn purge_atomic_max() -> i64 {
    PURGE_ATOMIC_MAX.load(Ordering::Relaxed)
}

/// How long one slice of a purge may hold the server, in microseconds.
pub fn purge_slice_us() -> i64 {
    PURGE_SLICE_US.load(Ordering::Relaxed)
}

pub fn cluster_timeout_ms() -> i64 {
    CLUSTER_TIMEOUT_MS.load(Ordering::Relaxed)
}

/// The prefixes, fixed once the load arguments are applied: they are
/// load-time settings, and every keyspace notification asks for the tag
/// prefix.
/// (tag prefix, version prefix).
type Prefixes = (Box<[u8]>, Box<[u8]>);

static PREFIXES: std::sync::OnceLock<Prefixes> = std::sync::OnceLock::new();

fn prefixes() -> &'static Prefixes {
    PREFIXES.get_or_init(|| {
        (
            TAG_PREFIX.get().into_bytes().into(),
            VER_PREFIX.get().into_bytes().into(),
        )
    })
}

pub fn tag_prefix() -> &'static [u8] {
    &prefixes().0
}

pub fn ver_prefix() -> &'static [u8] {
    &prefixes().1
}

/// Whether the server runs in a cluster: fixed at load (`cluster-enabled`
/// cannot change while it runs).
static SLOTTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_slotted(on: bool) {
    SLOTTED.store(on, Ordering::Relaxed);
}

pub fn slotted() -> bool {
    SLOTTED.load(Ordering::Relaxed)
}

/// Where the index lives: see `Prefix`.
pub fn layout() -> Prefix<'static> {
    Prefix {
        tags: tag_prefix(),
        slotted: slotted(),
    }
}

pub fn stream_maxlen() -> i64 {
    STREAM_MAXLEN.load(Ordering::Relaxed)
}

pub fn lease_ttl() -> i64 {
    LEASE_TTL.load(Ordering::Relaxed)
}

/// A load argument, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadArg {
    Text(&'static str, String),
    Int(&'static str, i64),
}

fn check_int(name: &str, value: &str, min: i64, max: i64) -> Result<i64, String> {
    let n: i64 = value
        .parse()
        .map_err(|_| format!("argument '{name}' must be an integer, got '{value}'"))?;
    if n < min || n > max {
        return Err(format!(
            "argument '{name}' must be between {min} and {max}, got {n}"
        ));
    }
    Ok(n)
}

/// Parses the load arguments: `name value` pairs of known names, each
/// value checked as `CONFIG SET` would check it.
pub fn parse_load_args(args: &[&[u8]]) -> Result<Vec<LoadArg>, String> {
    let mut out = Vec::new();
    for pair in args.chunks(2) {
        let Some(first) = pair.first() else { break };
        let name = String::from_utf8_lossy(first).into_owned();
        let Some(&known) = NAMES.iter().find(|n| **n == name) else {
            return Err(format!(
                "unknown argument '{name}' (known: {})",
                NAMES.join(", ")
            ));
        };
        let Some(raw) = pair.get(1) else {
            return Err(format!("argument '{name}' needs a value"));
        };
        let value = std::str::from_utf8(raw)
            .map_err(|_| format!("argument '{name}' must be valid UTF-8"))?
            .to_string();
        check_text(&value).map_err(|why| format!("argument '{name}': {why}"))?;
        out.push(match known {
            "events-stream-maxlen" => LoadArg::Int(
                known,
                check_int(known, &value, STREAM_MAXLEN_MIN, STREAM_MAXLEN_MAX)?,
            ),
            "lease-ttl" => LoadArg::Int(
                known,
                check_int(known, &value, LEASE_TTL_MIN, LEASE_TTL_MAX)?,
            ),
            "purge-atomic-max" => LoadArg::Int(
                known,
                check_int(known, &value, PURGE_ATOMIC_MAX_MIN, PURGE_ATOMIC_MAX_MAX)?,
            ),
            "purge-slice-us" => LoadArg::Int(
                known,
                check_int(known, &value, PURGE_SLICE_US_MIN, PURGE_SLICE_US_MAX)?,
            ),
            "cluster-timeout-ms" => LoadArg::Int(
                known,
                check_int(
                    known,
                    &value,
                    CLUSTER_TIMEOUT_MS_MIN,
                    CLUSTER_TIMEOUT_MS_MAX,
                )?,
            ),
            "tag-prefix" | "ver-prefix" if value.is_empty() => {
                return Err(format!("argument '{name}' must not be empty"));
            }
            _ => LoadArg::Text(known, value),
        });
    }
    Ok(out)
}

/// The module's own key names, and what a versioned value's name begins
/// with (`v<N>:`).
const OWN_NAMES: &str = "tagcache:";

/// Whether `p` and some name under `q` (or the other way round) could be
/// one key.
fn overlaps(p: &str, q: &str) -> bool {
    p.starts_with(q) || q.starts_with(p)
}

/// Whether a key under `p` could be a versioned value `v<N>:…`, or a
/// versioned value's name begin with `p`.
fn overlaps_versions(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let after = rest.get(digits..).unwrap_or_default();
    after.is_empty() || (digits > 0 && after.starts_with(':'))
}

/// No key name may serve two purposes: the two prefixes, the module's own
/// names and the versioned values must not overlap in either direction.
pub fn check_prefixes(tag: &str, ver: &str) -> Result<(), String> {
    if overlaps(tag, ver) {
        return Err(format!(
            "tag-prefix '{tag}' and ver-prefix '{ver}' overlap: one key would be both"
        ));
    }
    for (name, p) in [("tag-prefix", tag), ("ver-prefix", ver)] {
        if overlaps(p, OWN_NAMES) {
            return Err(format!(
                "{name} '{p}' overlaps the module's own keys ({OWN_NAMES}...)"
            ));
        }
        if overlaps_versions(p) {
            return Err(format!(
                "{name} '{p}' overlaps the versioned values (v<N>:...)"
            ));
        }
    }
    Ok(())
}

/// Checks the prefixes in force (load arguments and configuration file
/// alike), then fixes them for the life of the module.
pub fn freeze() -> Result<(), String> {
    check_prefixes(&TAG_PREFIX.get(), &VER_PREFIX.get())?;
    prefixes();
    Ok(())
}

/// Applies checked load arguments over the registered defaults.
pub fn apply(args: Vec<LoadArg>) {
    for a in args {
        match a {
            LoadArg::Int("events-stream-maxlen", n) => STREAM_MAXLEN.store(n, Ordering::Relaxed),
            LoadArg::Int("purge-atomic-max", n) => PURGE_ATOMIC_MAX.store(n, Ordering::Relaxed),
            LoadArg::Int("purge-slice-us", n) => PURGE_SLICE_US.store(n, Ordering::Relaxed),
            LoadArg::Int("cluster-timeout-ms", n) => CLUSTER_TIMEOUT_MS.store(n, Ordering::Relaxed),
            LoadArg::Int(_, n) => LEASE_TTL.store(n, Ordering::Relaxed),
            LoadArg::Text(name, v) => {
                let target = match name {
                    "tag-prefix" => &TAG_PREFIX,
                    "ver-prefix" => &VER_PREFIX,
                    "events-channel" => &EVENTS_CHANNEL,
                    _ => &EVENTS_STREAM,
                };
                target.store(v);
            }
        }
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_args() {
        assert_eq!(parse_load_args(&[]), Ok(vec![]));
        assert_eq!(
            parse_load_args(&[b"tag-prefix", b"t_", b"lease-ttl", b"5"]),
            Ok(vec![
                LoadArg::Text("tag-prefix", "t_".into()),
                LoadArg::Int("lease-ttl", 5)
            ])
        );
        let err = |a: &[&[u8]]| parse_load_args(a).unwrap_err();
        assert!(err(&[b"tag-prefix"]).contains("'tag-prefix' needs a value"));
        assert!(err(&[b"bogus", b"1"]).contains("unknown argument 'bogus'"));
        assert!(err(&[b"lease-ttl", b"5", b"x"]).contains("'x'"));
        assert!(err(&[b"lease-ttl", b"soon"]).contains("'lease-ttl' must be an integer"));
        assert!(err(&[b"events-stream-maxlen", b"0"]).contains("between"));
        assert!(err(&[b"tag-prefix", b""]).contains("must not be empty"));
        assert_eq!(
            parse_load_args(&[b"events-stream", b""]),
            Ok(vec![LoadArg::Text("events-stream", String::new())])
        );
        assert!(err(&[b"events-channel", b"a\0b"]).contains("NUL"));
    }

    #[test]
    fn prefixes_that_name_one_key_twice_are_refused() {
        let ok = |t: &str, v: &str| check_prefixes(t, v).is_ok();
        assert!(ok("tag:", "ver:"));
        assert!(ok("t_", "vv:"));
        assert!(ok("va:", "v:"));
        for (t, v) in [
            ("ver:", "ver:"),
            ("ver:", "ver:x"),
            ("v", "ver:"),
            ("tagcache:", "ver:"),
            ("tagcache:x", "ver:"),
            ("tagcache", "ver:"),
            ("t", "ver:"),
            ("tag:", "tagcache:links"),
            ("v1:", "ver:"),
            ("v12:x", "ver:"),
            ("v1", "ver:"),
            ("tag:", "v"),
        ] {
            assert!(!ok(t, v), "{t} / {v}");
        }
    }
}
