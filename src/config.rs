//! Module settings: each is a load argument `name value` and a runtime
//! `CONFIG GET/SET tagcache.<name>`. Defaults and bounds live here.

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

/// Every setting name, as accepted at load time.
pub const NAMES: [&str; 6] = [
    "tag-prefix",
    "ver-prefix",
    "events-channel",
    "events-stream",
    "events-stream-maxlen",
    "lease-ttl",
];

/// A string setting, optionally refusing the empty string.
pub struct Text {
    value: Mutex<String>,
    required: bool,
}

impl Text {
    const fn new(required: bool) -> Text {
        Text {
            value: Mutex::new(String::new()),
            required,
        }
    }

    pub fn get(&self) -> String {
        self.value.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl ConfigurationValue<RedisString> for Text {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        RedisString::create(None, Text::get(self))
    }

    fn set(&self, _ctx: &ConfigurationContext, val: RedisString) -> Result<(), RedisError> {
        let s = val
            .try_as_str()
            .map_err(|_| RedisError::Str("value must be valid UTF-8"))?;
        if self.required && s.is_empty() {
            return Err(RedisError::Str("value must not be empty"));
        }
        let mut v = self
            .value
            .lock()
            .map_err(|_| RedisError::Str("setting unavailable"))?;
        *v = s.to_string();
        Ok(())
    }
}

pub static TAG_PREFIX: Text = Text::new(true);
pub static VER_PREFIX: Text = Text::new(true);
pub static EVENTS_CHANNEL: Text = Text::new(false);
pub static EVENTS_STREAM: Text = Text::new(false);
pub static STREAM_MAXLEN: AtomicI64 = AtomicI64::new(STREAM_MAXLEN_DEFAULT);
pub static LEASE_TTL: AtomicI64 = AtomicI64::new(LEASE_TTL_DEFAULT);

pub fn tag_prefix() -> Vec<u8> {
    TAG_PREFIX.get().into_bytes()
}

pub fn ver_prefix() -> Vec<u8> {
    VER_PREFIX.get().into_bytes()
}

pub fn stream_maxlen() -> i64 {
    STREAM_MAXLEN.load(Ordering::Relaxed)
}

pub fn lease_ttl() -> i64 {
    LEASE_TTL.load(Ordering::Relaxed)
}

/// Checks the load arguments: `name value` pairs of known names. The
/// values themselves are checked when the settings are applied.
pub fn check_load_args(args: &[&[u8]]) -> Result<(), String> {
    let mut it = args.chunks(2);
    for pair in &mut it {
        let name = String::from_utf8_lossy(pair[0]);
        if !NAMES.contains(&name.as_ref()) {
            return Err(format!(
                "unknown argument '{name}' (known: {})",
                NAMES.join(", ")
            ));
        }
        if pair.len() < 2 {
            return Err(format!("argument '{name}' needs a value"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_args() {
        assert!(check_load_args(&[]).is_ok());
        assert!(check_load_args(&[b"tag-prefix", b"t_"]).is_ok());
        assert!(check_load_args(&[b"tag-prefix"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(check_load_args(&[b"bogus", b"1"])
            .unwrap_err()
            .contains("unknown"));
        assert!(check_load_args(&[b"lease-ttl", b"5", b"x"]).is_err());
    }
}
