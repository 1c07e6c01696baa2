//! Integration tests of the slot pool with real processes.

mod api;
mod chaos;
mod faults;
mod model;
mod procs;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_auth;
#[cfg(feature = "redis")]
mod redis_cluster;
#[cfg(feature = "redis")]
mod redis_faults;
#[cfg(feature = "redis")]
mod redis_races;
mod support;
