//! The environment a process started by `dbslots spawn` or `dbslots exec`
//! (or by [`Slot::lock_fd_for_child`](crate::Slot::lock_fd_for_child) and
//! [`Slot::child_env`](crate::Slot::child_env) in an embedder) sees: every
//! `DBSLOTS_*` name in one place.

use crate::addr::PoolAddr;
use crate::error::{Error, Result};

/// The pool's address, as [`Pool::open`](crate::Pool::open) and
/// `dbslots --pool` take it. Also the default of every `--pool` flag.
pub const POOL: &str = "DBSLOTS_POOL";

/// The slot number the parent holds for this process (`dbslots exec`, or
/// `dbslots spawn` when it took a slot for the worker); unset otherwise. A
/// process that sees it must not take another slot from [`POOL`] for the
/// same connection: use the one it has ([`inherited_slot`]).
pub const SLOT: &str = "DBSLOTS_SLOT";

/// A worker's 0-based index, `0..count` (`dbslots spawn`).
pub const WORKER_INDEX: &str = "DBSLOTS_WORKER_INDEX";

/// How many workers the spawner starts in all (`dbslots spawn`).
pub const WORKER_COUNT: &str = "DBSLOTS_WORKER_COUNT";

/// The job id given to the spawner; unset when none was given.
pub const JOB_ID: &str = "DBSLOTS_JOB_ID";

/// The host name a Redis pool records for this process's slots and waits
/// (`PoolStats` holders' and waiters' `host`); the kernel's host name when
/// unset or empty. Set it where several containers share one host name.
pub const HOST: &str = "DBSLOTS_HOST";

/// The host name a Redis pool records for this process (slot holders,
/// waiters, and the observers' reports such as `dbslots gate`'s): [`HOST`]
/// when set and not empty, else the kernel's host name, else `localhost`.
/// A name with whitespace is not used (it would break the records).
///
/// ```
/// let host = dbslots_core::env::host_name();
/// assert!(!host.is_empty() && !host.contains(char::is_whitespace));
/// ```
pub fn host_name() -> String {
    std::env::var(HOST)
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".into())
}

/// A slot this process holds through its parent, as [`SLOT`] and [`POOL`]
/// describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InheritedSlot {
    /// The pool the slot belongs to.
    pub pool: PoolAddr,
    /// The slot's number.
    pub index: u32,
}

/// The slot this process holds through its parent: `Some` when [`SLOT`] is
/// set, `None` when it is not (the process must take its own slot).
///
/// # Errors
///
/// [`Error::InvalidAddress`] when [`SLOT`] is not a number, or [`POOL`] is
/// missing or not an address: the environment was not set by dbslots.
pub fn inherited_slot() -> Result<Option<InheritedSlot>> {
    let Some(slot) = std::env::var_os(SLOT) else {
        return Ok(None);
    };
    let bad = |reason: String| Error::InvalidAddress {
        address: std::env::var(POOL)
            .map(|p| crate::redact(&p))
            .unwrap_or_default(),
        reason,
    };
    let index = slot
        .to_str()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            bad(format!(
                "{SLOT}={slot:?} is not a slot number; unset it, or let dbslots set it"
            ))
        })?;
    let pool = std::env::var(POOL).map_err(|_| {
        bad(format!(
            "{SLOT} is set but {POOL} is not; set both (dbslots spawn and exec do), or neither"
        ))
    })?;
    Ok(Some(InheritedSlot {
        pool: PoolAddr::parse(&pool)?,
        index,
    }))
}
