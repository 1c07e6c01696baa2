//! What `status`, `serve` and `watch` show: a snapshot read from the locks.
//!
//! # Implementation Details
//!
//! Every slot below the high-water mark is probed with `LOCK_SH | LOCK_NB`
//! (a probe never takes a slot from anybody: a shared lock conflicts with
//! the holder's exclusive one), so holders above the capacity during a
//! shrink's drain are counted too. A slot whose board bit is set but that
//! nobody locks belonged to a killed holder: its bit and record are
//! cleared. Waiter files nobody locks belonged to dead waiters and are
//! removed; so are the queue entries of dead waiters.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::fs::{self as rfs, FlockOperation, OFlags};
use rustix::io::Errno;

use super::layout::{WAITERS, open_in};
use super::{FilePool, errno_io, unlock};
use crate::error::{Error, Result};
use crate::stats::{Holder, PoolStats, WAIT_BUCKETS_US, WaitHistogram, Waiter};

impl FilePool {
    /// Live waiters (dbslots' and foreign ones); removes the files of
    /// waiters that died.
    fn live_waiters(&self) -> Result<Vec<Waiter>> {
        let wdir = self.dirs.path.join(WAITERS);
        let mut out = Vec::new();
        for name in self.dirs.waiter_names()? {
            let Ok(fd) = open_in(
                &self.dirs.waiters,
                &wdir,
                &name,
                OFlags::RDONLY,
                self.dirs.file_mode,
            ) else {
                continue;
            };
            let file = File::from(fd);
            let locked = rfs::flock(&file, FlockOperation::NonBlockingLockShared).is_err();
            if !locked {
                unlock(&file);
            }
            if name.starts_with('.') {
                // Still being created, or its creator died before renaming
                // it; only the latter leaves it unlocked for long.
                let old = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(10));
                if !locked && old {
                    let _ = rfs::unlinkat(&self.dirs.waiters, name.as_str(), rfs::AtFlags::empty());
                }
                continue;
            }
            if !locked {
                // Nobody holds it: its waiter is gone.
                let _ = rfs::unlinkat(&self.dirs.waiters, name.as_str(), rfs::AtFlags::empty());
                continue;
            }
            let mut text = String::new();
            let _ = (&file).take(256).read_to_string(&mut text);
            let mut it = text.split_whitespace();
            let pid = it.next().and_then(|p| p.parse().ok());
            let since = it
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .map(|ns| ns / 1_000_000);
            out.push(Waiter {
                pid,
                host: None,
                since_unix_ms: since,
            });
        }
        out.sort_by_key(|w| w.since_unix_ms);
        Ok(out)
    }

    /// Waiters that wait now: what `stats()` lists, not every name in
    /// `waiters/` (a SIGKILLed waiter leaves its file behind, and anybody
    /// who can write the pool can plant entries there).
    pub(super) fn count_waiters(&self) -> Result<u32> {
        Ok(self.live_waiters()?.len() as u32)
    }

    /// A snapshot from the locks themselves; repairs stale board entries.
    pub(crate) fn stats(&self) -> Result<PoolStats> {
        self.check_fork()?;
        let capacity = self.capacity();
        let high_water = self.high_water(capacity);
        let mut holders = Vec::new();
        for slot in 0..high_water {
            let record = self.board.record(slot);
            let held = if self.fds.held(slot) {
                true
            } else {
                let fd = self.dirs.open_slot(slot)?;
                match rfs::flock(&fd, FlockOperation::NonBlockingLockShared) {
                    Ok(()) => {
                        if self.board.occupied(slot)
                            && rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok()
                        {
                            // A holder died without clearing its entry.
                            record.pid.store(0, Ordering::Relaxed);
                            record.since_ns.store(0, Ordering::Relaxed);
                            self.board.vacate(slot);
                        }
                        unlock(&fd);
                        false
                    }
                    Err(Errno::WOULDBLOCK) => true,
                    Err(e) => {
                        return Err(Error::io("probing", self.dirs.slot_path(slot), errno_io(e)));
                    }
                }
            };
            if held {
                let pid = record.pid.load(Ordering::Acquire);
                let since = record.since_ns.load(Ordering::Relaxed);
                holders.push(Holder {
                    slot,
                    pid: (pid != 0).then_some(pid),
                    host: None,
                    since_unix_ms: (pid != 0 && since != 0).then_some(since / 1_000_000),
                });
            }
        }
        // Only dead waiters' entries are freed here; the queue itself is
        // left to the waiters (a probe that made the head miss a slot costs
        // it one tick at most).
        self.reap_dead_entries();
        let waiters = self.live_waiters()?;
        let acquisitions = self.board.acquisitions().load(Ordering::Relaxed);
        let waited = self.board.waited().load(Ordering::Relaxed);
        let mut counts: Vec<u64> = (0..=WAIT_BUCKETS_US.len())
            .map(|i| self.board.wait_bucket(i).load(Ordering::Relaxed))
            .collect();
        counts[0] = counts[0].saturating_add(acquisitions.saturating_sub(waited));
        let wait_histogram = WaitHistogram::from_counts(
            counts,
            self.board.wait_sum_ns().load(Ordering::Relaxed) as f64 / 1e9,
        );
        Ok(PoolStats {
            pool: self.name.clone(),
            backend: "file".into(),
            capacity,
            active: holders.len() as u32,
            waiting: waiters.len() as u32,
            peak: self.board.peak().load(Ordering::Relaxed),
            acquisitions,
            timeouts: self.board.timeouts().load(Ordering::Relaxed),
            holders,
            waiters,
            wait_histogram,
        })
    }
}
