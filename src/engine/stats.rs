//! Module-wide counters, reported by TAG.INFO and `INFO tagcache`.

use std::sync::atomic::{AtomicU64, Ordering};

pub static COMMANDS: AtomicU64 = AtomicU64::new(0);
pub static TAG_WRITES: AtomicU64 = AtomicU64::new(0);
pub static PURGES: AtomicU64 = AtomicU64::new(0);
pub static KEYS_PURGED: AtomicU64 = AtomicU64::new(0);
pub static INDEX_CLEANUPS: AtomicU64 = AtomicU64::new(0);
pub static BUMPS: AtomicU64 = AtomicU64::new(0);
pub static RULE_FIRINGS: AtomicU64 = AtomicU64::new(0);
/// Keys a rule left in place because its owner may not delete them.
pub static RULE_KEYS_DENIED: AtomicU64 = AtomicU64::new(0);
pub static EVENTS: AtomicU64 = AtomicU64::new(0);
/// Keys a soft invalidation marked stale.
pub static KEYS_MARKED_STALE: AtomicU64 = AtomicU64::new(0);
/// Stale values `TAG.GETL` served.
pub static STALE_SERVED: AtomicU64 = AtomicU64::new(0);
/// Refresh leases handed out with a stale value.
pub static REFRESH_LEASES: AtomicU64 = AtomicU64::new(0);
/// Times the module state could not be reached (see `engine::with`).
pub static STATE_BUSY: AtomicU64 = AtomicU64::new(0);
pub static LEASES_GRANTED: AtomicU64 = AtomicU64::new(0);
pub static LEASES_REJECTED: AtomicU64 = AtomicU64::new(0);

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
