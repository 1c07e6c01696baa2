//! Cancelling a waiting acquisition from another thread.
//!
//! # Implementation Details
//!
//! Every wait of the file backend is a `futex` wait with a timeout (see
//! `queue`), so deadlines need no help from outside: they work in forked
//! children, in threads that block every signal, and without any helper
//! thread. Cancellation (a dropped async acquisition) sets a flag and then
//! wakes the waiter's own futex word, whose address the waiter publishes
//! while it sleeps. The waiter publishes the address before it checks the
//! flag, and the canceller sets the flag before it reads the address, so
//! one of the two always sees the other (both sequentially consistent).

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use rustix::thread::futex;

/// Cancels an acquisition from another thread (or from a dropped future).
#[derive(Clone, Debug, Default)]
pub(crate) struct CancelToken(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    /// The futex word the waiter sleeps on, while it sleeps.
    sleeper: AtomicPtr<AtomicU32>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation and wakes the waiter, if it sleeps (an async
    /// acquisition that is dropped).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        let word = self.0.sleeper.load(Ordering::SeqCst);
        if !word.is_null() {
            // SAFETY: the waiter publishes a word of its pool's board mapping
            // and withdraws it before it returns; the pool (and its mapping)
            // outlives the acquisition this token belongs to. A word reused
            // by another waiter meanwhile only gets a spurious wake-up.
            let word = unsafe { &*word };
            word.fetch_add(1, Ordering::SeqCst);
            let _ = futex::wake(word, futex::Flags::empty(), u32::MAX);
        }
    }

    /// True once cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Publishes the futex word the waiter sleeps on (`None` withdraws it).
    pub(crate) fn set_sleeper(&self, word: Option<&AtomicU32>) {
        let p = word.map_or(ptr::null_mut(), |w| w as *const AtomicU32 as *mut AtomicU32);
        self.0.sleeper.store(p, Ordering::SeqCst);
    }
}

/// Blocks every signal in the calling thread, a helper thread of ours: a
/// signal sent to the process (Ctrl-C, a supervisor's SIGTERM) must reach
/// the application's own threads and handlers, never be taken, and acted on
/// by default, in a thread the application does not know about.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn block_process_signals() {
    // SAFETY: sigfillset on a local set, then this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}
