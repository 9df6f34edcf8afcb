//! tagcache: cache invalidation inside Redis. The command table and the
//! module's start-up; everything else lives in three layers:
//! `commands` (parse, call the engine, reply) over `engine` (plain Rust:
//! the state and the plans) and `server` (everything that talks to Redis).

#![deny(clippy::undocumented_unsafe_blocks)]

mod commands;
mod engine;
mod server;

use redis_module::configuration::ConfigurationFlags;
use redis_module::{redis_module, Context, RedisString, Status};
use server::config;

// Unit tests run without a server, so they cannot use the server's allocator.
#[cfg(not(test))]
type Alloc = redis_module::alloc::RedisAlloc;
#[cfg(not(test))]
const ALLOC: Alloc = redis_module::alloc::RedisAlloc;
#[cfg(test)]
type Alloc = std::alloc::System;
#[cfg(test)]
const ALLOC: Alloc = std::alloc::System;

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    server::init(ctx, args, commands::table())
}

redis_module! {
    name: "tagcache",
    version: 10000,
    allocator: (Alloc, ALLOC),
    data_types: [],
    init: init,
    commands: [],
    configurations: [
        i64: [
            ["events-stream-maxlen", &config::STREAM_MAXLEN, config::STREAM_MAXLEN_DEFAULT, config::STREAM_MAXLEN_MIN, config::STREAM_MAXLEN_MAX, ConfigurationFlags::DEFAULT, None],
            ["lease-ttl", &config::LEASE_TTL, config::LEASE_TTL_DEFAULT, config::LEASE_TTL_MIN, config::LEASE_TTL_MAX, ConfigurationFlags::DEFAULT, None],
            ["purge-atomic-max", &config::PURGE_ATOMIC_MAX, config::PURGE_ATOMIC_MAX_DEFAULT, config::PURGE_ATOMIC_MAX_MIN, config::PURGE_ATOMIC_MAX_MAX, ConfigurationFlags::DEFAULT, None],
            ["purge-slice-us", &config::PURGE_SLICE_US, config::PURGE_SLICE_US_DEFAULT, config::PURGE_SLICE_US_MIN, config::PURGE_SLICE_US_MAX, ConfigurationFlags::DEFAULT, None],
            ["cluster-timeout-ms", &config::CLUSTER_TIMEOUT_MS, config::CLUSTER_TIMEOUT_MS_DEFAULT, config::CLUSTER_TIMEOUT_MS_MIN, config::CLUSTER_TIMEOUT_MS_MAX, ConfigurationFlags::DEFAULT, None],
        ],
        string: [
            ["tag-prefix", &config::TAG_PREFIX, config::TAG_PREFIX_DEFAULT, ConfigurationFlags::DEFAULT, None],
            ["ver-prefix", &config::VER_PREFIX, config::VER_PREFIX_DEFAULT, ConfigurationFlags::DEFAULT, None],
            ["events-channel", &config::EVENTS_CHANNEL, config::EVENTS_CHANNEL_DEFAULT, ConfigurationFlags::DEFAULT, None],
            ["events-stream", &config::EVENTS_STREAM, config::EVENTS_STREAM_DEFAULT, ConfigurationFlags::DEFAULT, None],
        ],
        bool: [],
        enum: [],
        module_args_as_configuration: false,
    ]
}
