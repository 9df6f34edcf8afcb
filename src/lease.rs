//! Leases for TAG.GETL / TAG.SET … LEASE.

use crate::error::{Error, Result};
use crate::index::Db;
use redis_module::Context;

/// Consumes a lease token for a fill of `key` with `tags`. `Ok(false)` when
/// the lease was invalidated since it was issued.
pub fn redeem(_ctx: &Context, _db: Db, _key: &[u8], _token: &[u8], _tags: &[&[u8]]) -> Result<bool> {
    Err(Error::Lease("no lease was issued with this token"))
}

/// The key was written or deleted: outstanding leases on it are void.
pub fn key_written(_ctx: &Context, _db: Db, _key: &[u8]) {}

/// The tags were purged: leases that name them are void.
pub fn tags_purged(_tags: &[Vec<u8>]) {}

/// The keyspace was flushed, swapped or reloaded: every lease is void.
pub fn flushed() {}
