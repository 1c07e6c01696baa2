//! The file backend: a pool is a directory on one host.
//!
//! # Implementation Details
//!
//! Directory layout (see `docs/protocol.md` for the byte-level contract):
//!
//! ```text
//! pool.json      capacity and format, written once by the creator (rename)
//! init.lock      flock'ed exclusively while creating or resizing, and by
//!                acquirers while a shrink drains
//! state          the board (see `board`), mapped shared by every process
//! slots/0 ..     one empty file per slot: a slot is held iff its file is
//!                flock'ed LOCK_EX
//! waiters/       one file per queued acquirer, flock'ed while it waits
//! ```
//!
//! One job per module: `layout` (the directory, opened without following
//! any symlink), `board` (the shared mapping), `fds` (this handle's slot
//! descriptors, bounded), `queue` (waiting), `cancel`, `fork`, `stats`.
//!
//! Invariants:
//!
//! * **The kernel's `flock` is the only truth** for "slot i is held". Locks
//!   belong to open file descriptions and die with the last descriptor, so
//!   a holder killed by SIGKILL frees its slot at once; nothing on disk
//!   needs cleaning up. Board bits and records are hints that acquirers and
//!   `stats()` repair.
//! * **At most `capacity` holders, also while a shrink drains.** Slots
//!   `0..high_water` may be held; `high_water` > `capacity` only after a
//!   shrink, until the slots above the capacity are free. Normally the
//!   locks on `slots/0..capacity` bound the holders by themselves. While a
//!   shrink drains they do not, so an acquirer then takes `init.lock`
//!   (without waiting), counts every held slot below `high_water` and takes
//!   one only if fewer than `capacity` are held. An acquirer on the normal
//!   path re-reads the capacity after taking a lock and goes the draining
//!   way if a shrink came in between (resize stores `high_water` before the
//!   capacity, so that re-read cannot miss it).
//! * **No polling for a normal release.** A releaser unlocks, then wakes the
//!   head waiter's futex word (see `queue`); with nobody queued that is one
//!   load of the `head` word. Only slots freed without a wake-up (a killed
//!   holder, a foreign client) wait for the head's periodic probe
//!   (`crash_check`, 5 ms by default).
//! * **Newcomers queue behind waiters**: while `head` names a waiter that
//!   runs, the fast path does not take free slots.
//! * **A stopped waiter stalls nobody**: see `queue` (passing over).
//! * **A handle belongs to the process that opened it**: used in a forked
//!   child it fails with [`Error::Forked`] and never unlocks the parent's
//!   slots (see `fork`).

mod board;
pub(crate) mod cancel;
mod fds;
mod fork;
mod layout;
mod queue;
mod stats;

use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, FlockOperation, OFlags};
use rustix::io::Errno;
use rustix::thread::futex;

use board::Board;
pub use board::MAX_CAPACITY;
use cancel::CancelToken;
use fds::{SlotFds, Try};
use layout::{Dirs, INIT_LOCK, STATE};

use crate::error::{Error, Result};

/// How long [`FilePool::release_unless_inherited`] looks again at a lock
/// still held, in case the holder is a child starting this very moment (a
/// spawner that releases one worker's slot while it starts the next): its
/// exec closes the copy within microseconds. Measured in spawns of 300
/// short workers on 10 slots: 25 to 76 releases found the lock so held;
/// one or two looks 20 µs apart found each free again.
const STARTING_CHILD_COPY: Duration = Duration::from_millis(2);

/// How a file pool is opened.
#[derive(Clone, Debug)]
pub(crate) struct FileOptions {
    pub capacity: Option<u32>,
    pub group: Option<u32>,
    pub crash_check: Duration,
}

/// An open file pool (one per `Pool` handle).
pub(crate) struct FilePool {
    name: String,
    dirs: Dirs,
    board: Board,
    fds: SlotFds,
    /// Where this handle starts looking, to spread processes over slots.
    start: u32,
    pid: u32,
    fork_generation: u64,
    crash_check: Duration,
    waiter_seq: AtomicU32,
}

impl std::fmt::Debug for FilePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePool")
            .field("dir", &self.dirs.path)
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn check_capacity(capacity: u64) -> Result<()> {
    if capacity == 0 || capacity > MAX_CAPACITY as u64 {
        return Err(Error::InvalidCapacity {
            requested: capacity,
            max: MAX_CAPACITY,
        });
    }
    Ok(())
}

/// A part of a complete pool (one with `pool.json`) that is not there (a
/// cleaner of old files, a hand that took `state` for a cache): a damaged
/// pool, named as such; other errors as they are.
fn missing_part(e: Error) -> Error {
    match e {
        Error::Io { path, source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::Corrupt {
                path,
                detail: "it is missing, though pool.json says the pool is complete".into(),
            }
        }
        e => e,
    }
}

/// Releases a lock this process took only for a moment (a probe, init.lock).
///
/// Explicitly, not by closing the descriptor: a thread of this process that
/// forks in the meantime gives the child a copy of every descriptor until
/// the child's `exec`, and a lock released by closing would stay held by
/// that copy. `LOCK_UN` releases it for every copy at once.
fn unlock(fd: impl std::os::fd::AsFd) {
    let _ = rfs::flock(fd, FlockOperation::Unlock);
}

impl FilePool {
    /// Opens (and, with a capacity, creates) the pool in `dir`.
    pub(crate) fn open(dir: &Path, opts: &FileOptions) -> Result<FilePool> {
        if let Some(c) = opts.capacity {
            check_capacity(c as u64)?;
        }
        let name = dir.display().to_string();
        let (root, created, group) = layout::open_root(dir, opts.capacity.is_some(), opts.group)?;
        let has_meta = rfs::accessat(
            &root,
            layout::META,
            rfs::Access::EXISTS,
            rfs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok();
        let dirs = match Dirs::open(
            dir,
            root,
            group,
            created || (!has_meta && opts.capacity.is_some()),
        ) {
            // A directory that is no pool (yet): empty, or left by a
            // creator killed before it made `slots/`.
            Err(Error::Io { source, .. })
                if !has_meta
                    && opts.capacity.is_none()
                    && source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(Error::NotFound { pool: name });
            }
            Err(e) if has_meta => return Err(missing_part(e)),
            dirs => dirs?,
        };

        // `pool.json` is written last at creation and replaced atomically by
        // a resize: once it exists the pool is complete, and opening needs
        // no lock (a process stopped while holding `init.lock` must not keep
        // others from opening the pool). Only a creation takes the lock.
        let mut recorded = dirs.read_meta()?.map(|m| m.capacity);
        let mut init = None;
        if recorded.is_none() {
            let fd = dirs.open_root_file(INIT_LOCK, OFlags::CREATE | OFlags::RDWR)?;
            rfs::flock(&fd, FlockOperation::LockExclusive)
                .map_err(|e| Error::io("locking", dir.join(INIT_LOCK), errno_io(e)))?;
            init = Some(fd);
            recorded = dirs.read_meta()?.map(|m| m.capacity);
        }
        let result = (|| {
            match (recorded, opts.capacity) {
                (Some(rec), Some(req)) if rec != req => {
                    return Err(Error::CapacityMismatch {
                        pool: name.clone(),
                        recorded: rec,
                        requested: req,
                    });
                }
                (Some(_), _) => {}
                (None, None) => return Err(Error::NotFound { pool: name.clone() }),
                (None, Some(cap)) => {
                    tracing::info!(pool = %name, capacity = cap, "creating slot pool");
                    dirs.create(cap, group)?;
                }
            }
            let state = dirs
                .open_root_file(STATE, OFlags::RDWR)
                .map_err(missing_part)?;
            Board::open(&std::fs::File::from(state), &dir.join(STATE))
        })();
        if let Some(fd) = init {
            unlock(&fd);
        }
        let board = result?;

        let pid = std::process::id();
        let pool = FilePool {
            name,
            dirs,
            board,
            fds: SlotFds::default(),
            start: pid.wrapping_mul(2_654_435_761),
            pid,
            fork_generation: fork::generation(),
            crash_check: opts.crash_check,
            waiter_seq: AtomicU32::new(0),
        };
        if recorded.is_some_and(|c| c != pool.board.capacity().load(Ordering::SeqCst)) {
            pool.complete_resize()?;
        }
        Ok(pool)
    }

    /// Makes the board's capacity agree with `pool.json`, the pool's record,
    /// when a resize was interrupted after replacing `pool.json` but before
    /// it changed the board (killed in between, or a power cut before the
    /// board's page was written back). Skipped while somebody holds
    /// `init.lock`: a running resize changes the board itself.
    fn complete_resize(&self) -> Result<()> {
        let Some(init) = self.try_lock_init()? else {
            return Ok(());
        };
        let result = (|| {
            let Some(meta) = self.dirs.read_meta()? else {
                return Ok(());
            };
            let board = self.board.capacity().load(Ordering::SeqCst);
            if board != meta.capacity {
                tracing::warn!(pool = %self.name, recorded = meta.capacity, board, "completing an interrupted resize: the board now follows pool.json");
                self.set_board_capacity(board.min(MAX_CAPACITY), meta.capacity);
            }
            Ok(())
        })();
        unlock(&init);
        result?;
        self.wake_head();
        Ok(())
    }

    /// `init.lock`, locked exclusively, unless somebody holds it (`None`).
    fn try_lock_init(&self) -> Result<Option<OwnedFd>> {
        let init = self
            .dirs
            .open_root_file(INIT_LOCK, OFlags::CREATE | OFlags::RDWR)?;
        match rfs::flock(&init, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(init)),
            Err(Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::io(
                "locking",
                self.dirs.path.join(INIT_LOCK),
                errno_io(e),
            )),
        }
    }

    /// Stores a new capacity on the board (under `init.lock`), `old` being
    /// the one in effect until now.
    fn set_board_capacity(&self, old: u32, capacity: u32) {
        // The high-water mark first: an acquirer that sees the smaller
        // capacity also sees that slots above it may still be held.
        let hw = self.board.high_water().load(Ordering::SeqCst).max(old);
        let hw = if capacity >= hw { capacity } else { hw };
        self.board.high_water().store(hw, Ordering::SeqCst);
        self.board.capacity().store(capacity, Ordering::SeqCst);
    }

    /// The pool's directory, as given.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.board
            .capacity()
            .load(Ordering::SeqCst)
            .min(MAX_CAPACITY)
    }

    /// Slots that may be held: `0..high_water` (above the capacity while a
    /// shrink drains).
    fn high_water(&self, capacity: u32) -> u32 {
        self.board
            .high_water()
            .load(Ordering::SeqCst)
            .clamp(capacity, MAX_CAPACITY)
    }

    /// Fails when this handle is used in a forked child (see `fork`).
    fn check_fork(&self) -> Result<()> {
        if fork::generation() != self.fork_generation {
            return Err(Error::Forked {
                pool: self.name.clone(),
                opened_by: self.pid,
                used_by: std::process::id(),
            });
        }
        Ok(())
    }

    /// Records `slot` as taken by this process.
    fn taken(&self, slot: u32, capacity: u32) {
        let record = self.board.record(slot);
        record.since_ns.store(now_unix_ns(), Ordering::Relaxed);
        record.pid.store(self.pid, Ordering::Release);
        let active = self.board.occupy(slot, capacity);
        self.board
            .peak()
            .fetch_max(active as u64, Ordering::Relaxed);
        self.board.acquisitions().fetch_add(1, Ordering::Relaxed);
    }

    /// One pass over the slots. Phase one tries the slots whose occupancy
    /// bit is clear; with `probe_stale`, phase two also tries the slots whose
    /// bit is set, which finds the slots of killed holders and of foreign
    /// clients that released without clearing anything.
    fn claim(&self, probe_stale: bool) -> Result<Option<u32>> {
        let capacity = self.capacity();
        if capacity == 0 {
            return Ok(None);
        }
        if self.high_water(capacity) > capacity {
            return self.claim_draining();
        }
        let words = capacity.div_ceil(64) as usize;
        let first = (self.start as usize) % words;
        for phase in 0..2 {
            if phase == 1 && !probe_stale {
                break;
            }
            for k in 0..words {
                let w = (first + k) % words;
                let valid = if w == words - 1 && !capacity.is_multiple_of(64) {
                    (1u64 << (capacity % 64)) - 1
                } else {
                    u64::MAX
                };
                let board = self.board.bitmap_word(w).load(Ordering::Acquire);
                let mut candidates = if phase == 0 { !board } else { board } & valid;
                while candidates != 0 {
                    let b = candidates.trailing_zeros();
                    candidates &= candidates - 1;
                    let slot = w as u32 * 64 + b;
                    if let Try::Taken = self.fds.try_lock(&self.dirs, slot)? {
                        // A shrink may have come between reading the
                        // capacity and taking the lock: then this slot is
                        // only ours if the drain's count allows it.
                        let now = self.capacity();
                        if slot >= now || self.high_water(now) > now {
                            let _ = self.fds.unlock(slot);
                            return self.claim_draining();
                        }
                        self.taken(slot, capacity);
                        return Ok(Some(slot));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Claims a slot while a shrink drains (or when a shrink came between
    /// reading the capacity and taking a lock): under `init.lock` (never waited
    /// for: a stopped holder of it must not stall anyone for long, the head
    /// retries on its next tick), counts every held slot below `high_water`
    /// and takes one below the capacity only if fewer than `capacity` are
    /// held. Ends the drain when no slot above the capacity is held.
    ///
    /// The capacity is read under `init.lock`: one read before it may be
    /// older than a shrink that completed meanwhile (resizes hold the lock).
    fn claim_draining(&self) -> Result<Option<u32>> {
        let Some(init) = self.try_lock_init()? else {
            return Ok(None);
        };
        let result = (|| {
            let capacity = self.capacity();
            if capacity == 0 {
                return Ok(None);
            }
            // The word as stored: a drain that ends replaces exactly it,
            // also when it is past the board (planted), where reading it
            // clamps it.
            let stored = self.board.high_water().load(Ordering::SeqCst);
            let hw = stored.clamp(capacity, MAX_CAPACITY);
            let mut held = 0;
            let mut above = 0;
            let mut candidate = None;
            for slot in 0..hw {
                match self.fds.try_lock(&self.dirs, slot)? {
                    Try::Busy => {
                        held += 1;
                        if slot >= capacity {
                            above += 1;
                        }
                    }
                    Try::Taken => {
                        if self.board.occupied(slot) {
                            self.board.vacate(slot);
                        }
                        if slot < capacity && candidate.is_none() {
                            candidate = Some(slot);
                        } else {
                            let _ = self.fds.unlock(slot);
                        }
                    }
                }
            }
            if above == 0 {
                let _ = self.board.high_water().compare_exchange(
                    stored,
                    capacity,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                tracing::info!(pool = %self.name, capacity, "shrink drained");
            }
            match candidate {
                Some(slot) if held < capacity => {
                    self.taken(slot, capacity);
                    Ok(Some(slot))
                }
                Some(slot) => {
                    let _ = self.fds.unlock(slot);
                    Ok(None)
                }
                None => Ok(None),
            }
        })();
        unlock(&init);
        result
    }

    /// Takes a free slot without waiting, unless others queue for one.
    pub(crate) fn try_acquire(&self) -> Result<Option<u32>> {
        self.check_fork()?;
        if self.queue_busy() {
            return Ok(None);
        }
        self.claim(true)
    }

    /// The fast path of a waiting acquisition: a slot that looks free, unless
    /// others queue.
    pub(crate) fn try_acquire_fast(&self) -> Result<Option<u32>> {
        self.check_fork()?;
        if self.board.head().load(Ordering::SeqCst) != 0 {
            return Ok(None);
        }
        self.claim(false)
    }

    /// Queues for a slot until `deadline` or cancellation. Looks at the
    /// slots at least once, including those of crashed holders, even when
    /// the deadline has passed already.
    pub(crate) fn acquire_slow(
        &self,
        deadline: Option<Instant>,
        cancel: &CancelToken,
    ) -> Result<u32> {
        self.check_fork()?;
        let started = Instant::now();
        let result = match self.enqueue() {
            Ok(Some(place)) => self.wait_in_queue(&place, deadline, cancel, started),
            Ok(None) => {
                tracing::warn!(pool = %self.name, "the waiters' table is full; polling for a slot");
                self.wait_polling(deadline, cancel, started)
            }
            // No room for a waiter's file (no inode left, the quota of
            // files used up): waiting needs none, only queueing does.
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                tracing::warn!(pool = %self.name, error = %source, "no room for a waiter's file; polling for a slot, out of the queue");
                self.wait_polling(deadline, cancel, started)
            }
            Err(e) => return Err(e),
        };
        match &result {
            Ok(_) => self.board.record_wait(started.elapsed().as_nanos() as u64),
            Err(Error::Timeout { .. }) => {
                self.board.timeouts().fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }

    fn stop(
        &self,
        deadline: Option<Instant>,
        cancel: &CancelToken,
        started: Instant,
        now: Instant,
    ) -> Option<Error> {
        if cancel.is_cancelled() {
            return Some(Error::cancelled(&self.name));
        }
        if deadline.is_some_and(|d| now >= d) {
            return Some(self.timeout_error(started.elapsed()));
        }
        None
    }

    fn wait_in_queue(
        &self,
        place: &queue::Place<'_>,
        deadline: Option<Instant>,
        cancel: &CancelToken,
        started: Instant,
    ) -> Result<u32> {
        let e = self.board.entry(place.entry);
        cancel.set_sleeper(Some(&e.wake));
        struct Withdraw<'a>(&'a CancelToken);
        impl Drop for Withdraw<'_> {
            fn drop(&mut self) {
                self.0.set_sleeper(None);
            }
        }
        let _withdraw = Withdraw(cancel);
        let head_tick = self.crash_check.min(queue::HEAD_TICK);
        let mut last_probe: Option<Instant> = None;
        loop {
            let seen = e.wake.load(Ordering::SeqCst);
            e.beat_ns.store(queue::mono_ns(), Ordering::SeqCst);
            e.flags.fetch_and(!queue::SKIPPED, Ordering::SeqCst);
            let probe = last_probe.is_none_or(|t| t.elapsed() >= self.crash_check);
            // The head named on the board claims at once (a release woke it);
            // looking at the queue comes after.
            let named = self.board.head().load(Ordering::SeqCst) == place.entry + 1;
            if named {
                if probe {
                    last_probe = Some(Instant::now());
                }
                if let Some(slot) = self.claim(probe)? {
                    return Ok(slot);
                }
            }
            let pos = self.refresh(Some(place.entry)).unwrap_or(usize::MAX);
            if pos < queue::WINDOW_LEN {
                e.flags.fetch_or(queue::WINDOW, Ordering::SeqCst);
            } else {
                e.flags.fetch_and(!queue::WINDOW, Ordering::SeqCst);
            }
            if pos == 0 && !named {
                if probe {
                    last_probe = Some(Instant::now());
                }
                if let Some(slot) = self.claim(probe)? {
                    return Ok(slot);
                }
            }
            let now = Instant::now();
            if let Some(err) = self.stop(deadline, cancel, started, now) {
                return Err(err);
            }
            let tick = match pos {
                0 => Some(head_tick),
                p if p < queue::WINDOW_LEN => Some(queue::WATCH_TICK),
                p if p < queue::FRONT => Some(queue::RESERVE_TICK),
                _ => None,
            };
            let left = deadline.map(|d| d.saturating_duration_since(now));
            let wait = match (tick, left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ts = wait.map(|w| rustix::time::Timespec {
                tv_sec: w.as_secs().min(i64::MAX as u64) as _,
                tv_nsec: w.subsec_nanos() as _,
            });
            match futex::wait(&e.wake, futex::Flags::empty(), seen, ts.as_ref()) {
                Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::TIMEDOUT) => {}
                Err(err) => {
                    return Err(Error::io(
                        "waiting on",
                        self.dirs.path.join(STATE),
                        errno_io(err),
                    ));
                }
            }
        }
    }

    /// Waiting without a queue entry (the board's table is full, or no
    /// room for a waiter's file): polls.
    fn wait_polling(
        &self,
        deadline: Option<Instant>,
        cancel: &CancelToken,
        started: Instant,
    ) -> Result<u32> {
        loop {
            if let Some(slot) = self.claim(true)? {
                return Ok(slot);
            }
            let now = Instant::now();
            if let Some(err) = self.stop(deadline, cancel, started, now) {
                return Err(err);
            }
            let mut nap = Duration::from_millis(2);
            if let Some(d) = deadline {
                nap = nap.min(d.saturating_duration_since(now));
            }
            std::thread::sleep(nap);
        }
    }

    fn timeout_error(&self, waited: Duration) -> Error {
        let capacity = self.capacity();
        Error::Timeout {
            pool: self.name.clone(),
            waited,
            capacity,
            active: self.board.occupancy_all(),
            waiting: self.count_waiters().unwrap_or(1),
        }
    }

    /// Releases `slot`, held through this handle.
    pub(crate) fn release(&self, slot: u32) {
        if self.check_fork().is_err() {
            // The description is shared with the parent, which still holds
            // the slot: only forget our copy.
            self.fds.forget(slot);
            return;
        }
        let record = self.board.record(slot);
        record.pid.store(0, Ordering::Relaxed);
        record.since_ns.store(0, Ordering::Relaxed);
        self.board.vacate(slot);
        if let Err(e) = self.fds.unlock(slot) {
            tracing::error!(pool = %self.name, slot, error = %e, "cannot unlock slot");
        }
        self.wake_head();
    }

    /// Releases `slot` but for the copies of its descriptor that other
    /// processes inherited: closes this handle's copy without unlocking,
    /// then looks whether any copy still holds the lock. If none does, the
    /// slot is released as by [`FilePool::release`] (the head waiter is
    /// woken); if one does, it stays held, by that process, until the last
    /// copy closes, and then goes like a killed holder's (the head's probe
    /// finds it, see the module doc).
    ///
    /// A child this process starts meanwhile holds a copy until its `exec`,
    /// so a lock still held is looked at again for up to
    /// [`STARTING_CHILD_COPY`] before the slot is left to its inheritor; an
    /// exec slower than that leaves the slot to the head's probe.
    pub(crate) fn release_unless_inherited(&self, slot: u32) {
        // Ours is closed in any case; a forked handle closes only its copy.
        self.fds.forget(slot);
        if self.check_fork().is_err() {
            return;
        }
        // A process started this very moment may hold a copy for a few
        // microseconds more: the kernel lets a `vfork` parent go on before
        // the child's exec closes the descriptors it got (close-on-exec or
        // not), and fork + exec children hold them until their exec. Taken
        // for an inheritor, the slot would wake nobody and wait for the
        // head's probe; so look again, briefly, before concluding.
        let mut outcome = self.fds.try_lock(&self.dirs, slot);
        let deadline = Instant::now() + STARTING_CHILD_COPY;
        while matches!(outcome, Ok(Try::Busy)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(20));
            outcome = self.fds.try_lock(&self.dirs, slot);
        }
        match outcome {
            // Nobody else had it: it was ours alone. Release it properly.
            Ok(Try::Taken) => self.release(slot),
            Ok(Try::Busy) => {
                tracing::debug!(pool = %self.name, slot, "slot released by this process; a process that inherited its lock still holds it");
            }
            Err(e) => {
                tracing::error!(pool = %self.name, slot, error = %e, "cannot tell whether the slot is still held after releasing it");
            }
        }
    }

    /// Records `pid` as the holder of `slot` (a child that inherited it).
    pub(crate) fn set_holder_pid(&self, slot: u32, pid: u32) {
        self.board.record(slot).pid.store(pid, Ordering::Release);
    }

    /// The open file description that carries `slot`'s lock.
    pub(crate) fn slot_raw_fd(&self, slot: u32) -> Option<RawFd> {
        self.fds.raw(slot)
    }

    /// Changes the capacity. After a shrink, holders of slots at or above
    /// the new capacity keep them until they release, and nobody new is
    /// admitted while `capacity` or more slots are held (see `claim`).
    pub(crate) fn resize(&self, capacity: u32) -> Result<u32> {
        self.check_fork()?;
        check_capacity(capacity as u64)?;
        let init = self
            .dirs
            .open_root_file(INIT_LOCK, OFlags::CREATE | OFlags::RDWR)?;
        rfs::flock(&init, FlockOperation::LockExclusive)
            .map_err(|e| Error::io("locking", self.dirs.path.join(INIT_LOCK), errno_io(e)))?;
        let result = (|| {
            let mut meta = self.dirs.read_meta()?.ok_or_else(|| Error::NotFound {
                pool: self.name.clone(),
            })?;
            let old = meta.capacity;
            for slot in old..capacity {
                self.dirs.open_slot(slot)?;
            }
            meta.capacity = capacity;
            self.dirs.write_meta(&meta)?;
            // Slots up to the larger of the two capacities may be held,
            // should the board still show another one (see
            // `complete_resize`).
            let in_effect = self.board.capacity().load(Ordering::SeqCst);
            self.set_board_capacity(old.max(in_effect.min(MAX_CAPACITY)), capacity);
            Ok(old)
        })();
        unlock(&init);
        let old = result?;
        tracing::info!(pool = %self.name, old, new = capacity, "resized slot pool");
        self.wake_head();
        Ok(old)
    }
}
