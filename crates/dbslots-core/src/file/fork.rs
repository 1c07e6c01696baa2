//! Noticing that a pool handle is used in a forked child.
//!
//! # Implementation Details
//!
//! A forked child shares every open file description with its parent, so
//! the child's "free" slot descriptors are the parent's: a `flock` through
//! them succeeds where the parent already holds the lock, and unlocking
//! releases the parent's slot. A handle therefore remembers the fork
//! generation it was opened in; a `pthread_atfork` child handler bumps the
//! generation in every forked child (an atomic add: async-signal-safe), so
//! the check on every call is one relaxed load instead of a `getpid`
//! system call.
//!
//! The parent counts its forks too: a child that does not `exec` keeps
//! copies of the slot descriptors the parent's handles had open, so the
//! parent takes no new lock through a descriptor opened before a fork (see
//! `fds`): a lock there would outlive the parent in the child.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Forks this process has made (counted in the parent).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn in_parent() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// How many times this process has forked since its first pool handle: a
/// descriptor opened before a fork has a copy in the child (until its
/// `exec`), and a lock taken through it later would live on in that copy.
pub(super) fn forks() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// The current fork generation (registers the handler on first use).
pub(super) fn generation() -> u64 {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers handlers that only do an atomic add.
        let rc = unsafe { libc::pthread_atfork(None, Some(in_parent), Some(in_child)) };
        if rc != 0 {
            tracing::warn!(
                error = rc,
                "cannot register a fork handler; a pool handle used in a forked child goes unnoticed"
            );
        }
    });
    GENERATION.load(Ordering::Relaxed)
}
