//! A crash-safe counting semaphore of "connection slots" that any number of
//! processes share through a directory.
//!
//! A key design decision made in this crate is that **the kernel, not a
//! counter, decides who holds a slot**: slot `i` is held exactly while some
//! open file description holds an exclusive `flock` on `slots/i` in the pool
//! directory. A holder killed with SIGKILL therefore frees its slot at once,
//! with no cleanup step and no stale count, and any process that can open the
//! directory (in any container on the host) takes part, including PHP or
//! Python workers with their own `flock` (see `docs/protocol.md`).
//!
//! Waiting is built around that: an acquirer that finds no free slot takes a
//! ticket in a shared memory-mapped board and sleeps on its own futex word
//! there; a release wakes the head of the queue directly, so a freed slot
//! reaches the next waiter in one futex wake-up instead of a polling
//! interval. A waiter that is not running (stopped, frozen) is passed over
//! within tens of milliseconds and keeps its place for when it resumes.
//!
//! ```no_run
//! use dbslots_core::{Pool, PoolOptions};
//! use std::time::Duration;
//!
//! # async fn work() -> dbslots_core::Result<()> {
//! let pool = Pool::open("/run/myapp/db-slots", PoolOptions::new().capacity(150))?;
//! let slot = pool.acquire_timeout(Duration::from_secs(30)).await?;
//! // ... connect to MySQL, work, disconnect ...
//! drop(slot);
//! # Ok(())
//! # }
//! ```
//!
//! Threads without an async runtime use the blocking forms,
//! [`Pool::blocking_acquire`] and [`Pool::blocking_acquire_timeout`].
#![deny(missing_docs)]

mod addr;
mod check;
pub mod env;
mod error;
mod file;
mod pool;
#[cfg(feature = "redis")]
mod redis;
mod stats;

pub use addr::{
    IntoPoolAddr, PoolAddr, RedisAddr, default_pool_dir, redact, redact_command,
    redact_command_word, redact_text, url_secret_ranges, url_secrets,
};
pub use check::{
    CheckResult, CheckStatus, PerfData, PoolCheck, Problem, format_seconds, judge,
    percent_threshold,
};
pub use error::{Error, Result};
pub use file::MAX_CAPACITY;
pub use pool::{Pool, PoolOptions, Slot};
pub use stats::{Holder, PoolStats, WAIT_BUCKETS_US, WaitHistogram, Waiter};
