//! Tests of dbslots-mysql against real servers: the shared test server from
//! `cargo xtask test` (skipped with a message under a bare `cargo test`)
//! and private servers for tests that need their own limits.

mod bounds;
mod cancelled;
mod dropped;
mod from_env;
mod idle;
mod max_connections;
mod reconnect;
mod support;
mod tls;
mod user_limit;
