//! The reference design, re-implemented faithfully for side-by-side
//! benchmarks: the PHP `ConnectionPoolManager` of `shared/seeds/000_*.txt`.
//!
//! State is a JSON object `{active, waiting, peak, last_update}` in one file,
//! updated read-modify-write under an exclusive `flock` (open with `c+`,
//! lock, read, decode, modify, rewind, truncate, write, flush, unlock,
//! close). A waiter that finds no room sleeps with exponential backoff
//! (100 ms, 200 ms, 400 ms, 800 ms, then 1 s) and gives up after its
//! timeout. A crashed holder's `active` is never decremented: that is one
//! of the flaws dbslots exists to fix, and it is kept here on purpose.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The JSON state of the reference pool.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Slots taken.
    pub active: u32,
    /// Processes waiting.
    pub waiting: u32,
    /// Most slots taken at once.
    pub peak: u32,
    /// Unix seconds of the last change.
    pub last_update: u64,
}

/// The reference pool: a JSON file under `flock`.
#[derive(Debug, Clone)]
pub struct ReferencePool {
    path: PathBuf,
    max: u32,
}

impl ReferencePool {
    /// A pool of `max` slots whose state lives in `path`.
    pub fn new(path: impl AsRef<Path>, max: u32) -> Self {
        ReferencePool {
            path: path.as_ref().to_path_buf(),
            max,
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> std::io::Result<T> {
        let mut file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let mut state: State = serde_json::from_str(&text).unwrap_or_default();
        let out = f(&mut state);
        state.last_update = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        file.seek(SeekFrom::Start(0))?;
        file.set_len(0)?;
        file.write_all(serde_json::to_string(&state)?.as_bytes())?;
        file.flush()?;
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::Unlock)?;
        Ok(out)
    }

    /// One attempt: takes a slot if there is room; counts the caller as
    /// waiting (once) if not.
    fn attempt(&self, counted_waiting: &mut bool) -> std::io::Result<bool> {
        let max = self.max;
        let was_waiting = *counted_waiting;
        let (got, now_waiting) = self.update(|s| {
            if s.active < max {
                s.active += 1;
                s.peak = s.peak.max(s.active);
                if was_waiting {
                    s.waiting = s.waiting.saturating_sub(1);
                }
                (true, false)
            } else {
                if !was_waiting {
                    s.waiting += 1;
                }
                (false, true)
            }
        })?;
        *counted_waiting = now_waiting;
        Ok(got)
    }

    /// `acquireConnection()`: polls with backoff 100 ms → 1 s until a slot is
    /// free or `timeout` passes.
    pub fn acquire(&self, timeout: Duration) -> std::io::Result<bool> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut waiting = false;
        loop {
            if self.attempt(&mut waiting)? {
                return Ok(true);
            }
            if start.elapsed() >= timeout {
                self.update(|s| s.waiting = s.waiting.saturating_sub(1))?;
                return Ok(false);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// `releaseConnection()`.
    pub fn release(&self) -> std::io::Result<()> {
        self.update(|s| s.active = s.active.saturating_sub(1))
    }

    /// `getStats()`.
    pub fn stats(&self) -> std::io::Result<State> {
        self.update(|s| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slots_and_leaks_a_crashed_holder_like_the_original() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = ReferencePool::new(dir.path().join("pool.lock"), 2);
        assert!(pool.acquire(Duration::ZERO).expect("a"));
        assert!(pool.acquire(Duration::ZERO).expect("b"));
        assert!(!pool.acquire(Duration::ZERO).expect("full"));
        let s = pool.stats().expect("stats");
        assert_eq!((s.active, s.waiting, s.peak), (2, 0, 2));
        pool.release().expect("release");
        // A holder that "crashed" never releases: its slot stays taken.
        assert!(pool.acquire(Duration::ZERO).expect("c"));
        assert!(!pool.acquire(Duration::ZERO).expect("still full"));
    }
}
