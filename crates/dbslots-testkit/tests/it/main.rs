//! Tests of the throwaway servers themselves. They start real servers and
//! skip (with a `SKIPPED` line) only under a bare `cargo test` on a machine
//! without server programs.

mod mysql;
mod redis;
mod redis_cluster;
