//! Version arithmetic for VER.*: a new version is above the token, above
//! every version this process handed out, and at least the clock in
//! microseconds, so a token that was deleted, expired, flushed or restored
//! from an older snapshot never brings an old version back.

use super::error::{Error, Result};

/// The next version for a scope whose token holds `current` (`None` when
/// the token is gone). Past the largest integer there is no next version:
/// an error, never a repeat.
pub fn next(current: Option<i64>, high_water: i64, now_us: i64) -> Result<i64> {
    let floor = current
        .unwrap_or(0)
        .max(high_water)
        .checked_add(1)
        .ok_or(Error::Overflow)?;
    Ok(floor.max(now_us))
}

/// The key holding `key`'s value under `version`: `v<N>:<key>`.
pub fn value_key(version: i64, key: &[u8]) -> Vec<u8> {
    [format!("v{version}:").as_bytes(), key].concat()
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_never_repeat() {
        assert_eq!(next(None, 0, 1000), Ok(1000));
        assert_eq!(next(Some(5000), 0, 1000), Ok(5001));
        assert_eq!(
            next(None, 7000, 1000),
            Ok(7001),
            "a lost token restarts above"
        );
        assert_eq!(next(Some(i64::MAX), 0, 0), Err(Error::Overflow));
        assert_eq!(next(None, i64::MAX, 0), Err(Error::Overflow));
    }

    #[test]
    fn value_keys() {
        assert_eq!(value_key(12, b"k"), b"v12:k".to_vec());
    }
}
