//! The file backend: a pool is a directory on one host.
//!
//! # Implementation Details
//!
//! Directory layout (see `docs/protocol.md` for the byte-level contract):
//!
//! ```text
//! pool.json      capacity and format, written once by the creator (rename)
//! init.lock      flock'ed exclusively while creating or resizing
//! state          the board (see `board`), mapped shared by every process
//! gate           the waiters' queue: flock'ed exclusively by the head waiter
//! slots/0 ..     one empty file per slot: a slot is held iff its file is
//!                flock'ed LOCK_EX
//! waiters/       one file per queued acquirer, flock'ed while it waits
//! ```
//!
//! Invariants:
//!
//! * The kernel's `flock` is the only source of truth for "slot i is held".
//!   Locks belong to open file descriptions and die with the last descriptor,
//!   so a holder killed by SIGKILL frees its slot at once; nothing on disk
//!   needs cleaning up.
//! * An acquirer that finds no free slot queues on `gate` with a blocking
//!   `flock`. Since Linux 5.0 the kernel keeps blocked `flock` requests in a
//!   chain and wakes them in arrival order, so the queue is FIFO and a waiter
//!   that dies leaves it without a trace.
//! * Only the head of the queue (the gate's holder) watches the slots. It
//!   publishes itself in the board's `head` word and sleeps on the board's
//!   `release_seq` futex; a releaser that sees `head != 0` bumps the word and
//!   wakes it. Release → head running is one futex wake-up (about 10 µs).
//!   Slots freed without a wake-up (a killed holder, a foreign client) are
//!   found by the head's periodic probe (`crash_check`, 5 ms by default).
//! * While somebody queues (`head != 0`), newcomers do not take free slots
//!   on the fast path; they queue behind, which keeps the order fair.
//! * Within one process, the slot file descriptors are shared by all threads
//!   of a `Pool` handle; a handle-local bitmap keeps two threads from
//!   "acquiring" the same slot through the same open file description
//!   (`flock` on an description that already holds the lock succeeds).

mod board;
pub(crate) mod interrupt;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::thread::futex;

pub use board::MAX_CAPACITY;
use board::{BOARD_LEN, Board, WAIT_BUCKETS_US};
use interrupt::{CancelToken, Interruptible};

use crate::error::{Error, Result};
use crate::stats::{Holder, PoolStats, WaitHistogram, Waiter};

const META: &str = "pool.json";
const INIT_LOCK: &str = "init.lock";
const STATE: &str = "state";
const GATE: &str = "gate";
const SLOTS: &str = "slots";
const WAITERS: &str = "waiters";

/// What `pool.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    capacity: u32,
    #[serde(default)]
    created_unix: u64,
    #[serde(default)]
    group: Option<u32>,
}

/// How a file pool is opened.
#[derive(Clone, Debug)]
pub(crate) struct FileOptions {
    pub capacity: Option<u32>,
    pub group: Option<u32>,
    pub crash_check: Duration,
}

/// An open file pool (one per `Pool` handle).
pub(crate) struct FilePool {
    dir: PathBuf,
    name: String,
    dirfd: OwnedFd,
    board: Board,
    slot_fds: Box<[OnceLock<OwnedFd>]>,
    /// Slots held through this handle (bit per slot).
    local: Box<[AtomicU64]>,
    /// Where this handle starts looking, to spread processes over slots.
    start: u32,
    pid: u32,
    file_mode: Mode,
    crash_check: Duration,
    waiter_seq: AtomicU32,
}

impl std::fmt::Debug for FilePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePool")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn location(path: &Path, reason: impl Into<String>) -> Error {
    Error::Location {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Makes sure `path` is a real directory we may use, creating it when asked.
fn prepare_dir(path: &Path, create: bool, group: Option<u32>) -> Result<bool> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(location(
            path,
            "it is a symbolic link, and dbslots does not follow symlinks for pool files; point --pool at the real directory",
        )),
        Ok(meta) if !meta.is_dir() => Err(location(
            path,
            "it exists and is not a directory; choose a directory path for --pool",
        )),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match std::fs::metadata(&parent) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(location(
                        path,
                        format!("{} is not a directory", parent.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(location(
                        path,
                        format!(
                            "its parent directory {} does not exist; create it first or choose another location",
                            parent.display()
                        ),
                    ));
                }
                Err(e) => return Err(Error::io("inspecting", &parent, e)),
            }
            if !create {
                return Ok(false);
            }
            let mode = if group.is_some() { 0o2770 } else { 0o700 };
            match rfs::mkdir(path, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::io("creating", path, errno_io(e))),
            }
            // mkdir honours the umask; set the mode we mean.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
            if let Some(gid) = group {
                rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))
                    .map_err(|e| Error::io("changing the group of", path, errno_io(e)))?;
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
            }
            Ok(true)
        }
        Err(e) => Err(Error::io("inspecting", path, e)),
    }
}

impl FilePool {
    /// Opens (and, with a capacity, creates) the pool in `dir`.
    pub(crate) fn open(dir: &Path, opts: &FileOptions) -> Result<FilePool> {
        if let Some(c) = opts.capacity {
            check_capacity(c as u64)?;
        }
        let name = dir.display().to_string();
        let created = prepare_dir(dir, opts.capacity.is_some(), opts.group)?;
        let dirfd = match rfs::open(
            dir,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(Error::NotFound { pool: name }),
            Err(Errno::LOOP) => {
                return Err(location(
                    dir,
                    "it is a symbolic link; point --pool at the real directory",
                ));
            }
            Err(e) => return Err(Error::io("opening", dir, errno_io(e))),
        };
        let dir_meta = std::fs::metadata(dir).map_err(|e| Error::io("inspecting", dir, e))?;
        let group = opts
            .group
            .or_else(|| (dir_meta.mode() & 0o070 != 0).then_some(dir_meta.gid()));
        let file_mode = Mode::from_raw_mode(if group.is_some() { 0o660 } else { 0o600 });

        let init = open_at(
            &dirfd,
            dir,
            INIT_LOCK,
            OFlags::CREATE | OFlags::RDWR,
            file_mode,
        )?;
        rfs::flock(&init, FlockOperation::LockExclusive)
            .map_err(|e| Error::io("locking", dir.join(INIT_LOCK), errno_io(e)))?;

        let meta_path = dir.join(META);
        let recorded = read_meta(&dirfd, &meta_path)?.map(|m| m.capacity);
        let board = match (recorded, opts.capacity) {
            (Some(rec), Some(req)) if rec != req => {
                return Err(Error::CapacityMismatch {
                    pool: name,
                    recorded: rec,
                    requested: req,
                });
            }
            (Some(_), _) => {
                let state = open_at(&dirfd, dir, STATE, OFlags::RDWR, file_mode)?;
                Board::open(&File::from(state), &dir.join(STATE))?
            }
            (None, None) => return Err(Error::NotFound { pool: name }),
            (None, Some(cap)) => {
                tracing::info!(pool = %name, capacity = cap, "creating slot pool");
                create_layout(&dirfd, dir, cap, group, file_mode)?;
                let state = open_at(&dirfd, dir, STATE, OFlags::RDWR, file_mode)?;
                Board::open(&File::from(state), &dir.join(STATE))?
            }
        };
        let _ = created;
        unlock(&init);
        drop(init);

        let pid = std::process::id();
        Ok(FilePool {
            dir: dir.to_path_buf(),
            name,
            dirfd,
            board,
            slot_fds: (0..MAX_CAPACITY).map(|_| OnceLock::new()).collect(),
            local: (0..MAX_CAPACITY / 64).map(|_| AtomicU64::new(0)).collect(),
            start: pid.wrapping_mul(2_654_435_761),
            pid,
            file_mode,
            crash_check: opts.crash_check,
            waiter_seq: AtomicU32::new(0),
        })
    }

    /// The pool's directory, as given.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.board
            .capacity()
            .load(Ordering::Relaxed)
            .min(MAX_CAPACITY)
    }

    fn slot_fd(&self, slot: u32) -> Result<BorrowedFd<'_>> {
        let cell = &self.slot_fds[slot as usize];
        if let Some(fd) = cell.get() {
            return Ok(fd.as_fd());
        }
        let fd = self.open_slot_file(slot)?;
        Ok(cell.get_or_init(|| fd).as_fd())
    }

    fn open_slot_file(&self, slot: u32) -> Result<OwnedFd> {
        let rel = format!("{SLOTS}/{slot}");
        open_at(
            &self.dirfd,
            &self.dir,
            &rel,
            OFlags::CREATE | OFlags::RDONLY,
            self.file_mode,
        )
    }

    fn local_claim(&self, slot: u32) -> bool {
        let bit = 1u64 << (slot % 64);
        self.local[slot as usize / 64].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    fn local_unclaim(&self, slot: u32) {
        let bit = 1u64 << (slot % 64);
        self.local[slot as usize / 64].fetch_and(!bit, Ordering::AcqRel);
    }

    fn locally_held(&self, slot: u32) -> bool {
        self.local[slot as usize / 64].load(Ordering::Acquire) & (1 << (slot % 64)) != 0
    }

    /// Tries to lock `slot`; on success records the holder.
    fn try_take(&self, slot: u32, capacity: u32) -> Result<bool> {
        if !self.local_claim(slot) {
            return Ok(false);
        }
        let fd = match self.slot_fd(slot) {
            Ok(fd) => fd,
            Err(e) => {
                self.local_unclaim(slot);
                return Err(e);
            }
        };
        match rfs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let record = self.board.record(slot);
                record.since_ns.store(now_unix_ns(), Ordering::Relaxed);
                record.pid.store(self.pid, Ordering::Release);
                let active = self.board.occupy(slot, capacity);
                self.board
                    .peak()
                    .fetch_max(active as u64, Ordering::Relaxed);
                self.board.acquisitions().fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(Errno::WOULDBLOCK) => {
                self.local_unclaim(slot);
                Ok(false)
            }
            Err(e) => {
                self.local_unclaim(slot);
                Err(Error::io(
                    "locking",
                    self.dir.join(SLOTS).join(slot.to_string()),
                    errno_io(e),
                ))
            }
        }
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
                let local = self.local[w].load(Ordering::Acquire);
                let mut candidates = if phase == 0 { !board } else { board } & !local & valid;
                while candidates != 0 {
                    let b = candidates.trailing_zeros();
                    candidates &= candidates - 1;
                    let slot = w as u32 * 64 + b;
                    if self.try_take(slot, capacity)? {
                        return Ok(Some(slot));
                    }
                }
            }
        }
        Ok(None)
    }

    /// True when somebody queues (the gate is held). Repairs a `head` word
    /// left behind by a killed head.
    fn queue_busy(&self) -> Result<bool> {
        let head = self.board.head().load(Ordering::SeqCst);
        if head == 0 {
            return Ok(false);
        }
        let gate = open_at(&self.dirfd, &self.dir, GATE, OFlags::RDONLY, self.file_mode)?;
        match rfs::flock(&gate, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let _ =
                    self.board
                        .head()
                        .compare_exchange(head, 0, Ordering::SeqCst, Ordering::SeqCst);
                unlock(&gate);
                Ok(false)
            }
            Err(Errno::WOULDBLOCK) => Ok(true),
            Err(e) => Err(Error::io("locking", self.dir.join(GATE), errno_io(e))),
        }
    }

    /// Takes a free slot without waiting, unless others queue for one.
    pub(crate) fn try_acquire(&self) -> Result<Option<u32>> {
        if self.queue_busy()? {
            return Ok(None);
        }
        self.claim(true)
    }

    /// The fast path of a waiting acquisition: a slot that looks free, unless
    /// others queue.
    pub(crate) fn try_acquire_fast(&self) -> Result<Option<u32>> {
        if self.board.head().load(Ordering::SeqCst) != 0 {
            return Ok(None);
        }
        self.claim(false)
    }

    /// Queues for a slot until `deadline` or cancellation.
    pub(crate) fn acquire_slow(
        &self,
        deadline: Option<Instant>,
        cancel: &CancelToken,
    ) -> Result<u32> {
        let started = Instant::now();
        let registration = self.register_waiter()?;
        let result = self.queue_and_claim(deadline, cancel, started);
        drop(registration);
        match &result {
            Ok(_) => self.board.record_wait(started.elapsed().as_nanos() as u64),
            Err(Error::Timeout { .. }) => {
                self.board.timeouts().fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }

    fn queue_and_claim(
        &self,
        deadline: Option<Instant>,
        cancel: &CancelToken,
        started: Instant,
    ) -> Result<u32> {
        let gate_path = || self.dir.join(GATE);
        let gate = open_at(&self.dirfd, &self.dir, GATE, OFlags::RDONLY, self.file_mode)?;
        let _interruptible = Interruptible::register(deadline, cancel);
        let stop = |now: Instant| -> Option<Error> {
            if cancel.is_cancelled() {
                return Some(Error::Cancelled {
                    pool: self.name.clone(),
                });
            }
            if deadline.is_some_and(|d| now >= d) {
                return Some(self.timeout_error(started.elapsed()));
            }
            None
        };
        // Queue on the gate: the kernel keeps blocked flock requests in
        // arrival order.
        loop {
            if let Some(e) = stop(Instant::now()) {
                return Err(e);
            }
            match rfs::flock(&gate, FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::io("locking", gate_path(), errno_io(e))),
            }
        }
        // Head of the queue: watch the slots.
        self.board.head().store(self.pid.max(1), Ordering::SeqCst);
        let mut probe_stale = true;
        let result = loop {
            let seq = self.board.release_seq().load(Ordering::SeqCst);
            match self.claim(probe_stale) {
                Ok(Some(slot)) => break Ok(slot),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            let now = Instant::now();
            if let Some(e) = stop(now) {
                break Err(e);
            }
            let mut wait = self.crash_check;
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            let ts = rustix::time::Timespec {
                tv_sec: wait.as_secs() as _,
                tv_nsec: wait.subsec_nanos() as _,
            };
            match futex::wait(
                self.board.release_seq(),
                futex::Flags::empty(),
                seq,
                Some(&ts),
            ) {
                Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => probe_stale = false,
                Err(Errno::TIMEDOUT) => probe_stale = true,
                Err(e) => break Err(Error::io("waiting on", self.dir.join(STATE), errno_io(e))),
            }
        };
        self.board.head().store(0, Ordering::SeqCst);
        // Releases the gate to the next waiter.
        unlock(&gate);
        result
    }

    fn timeout_error(&self, waited: Duration) -> Error {
        let capacity = self.capacity();
        Error::Timeout {
            pool: self.name.clone(),
            waited,
            capacity,
            active: self.board.occupancy(capacity),
            waiting: self.count_waiters().unwrap_or(1),
        }
    }

    /// Releases `slot`, held through this handle.
    pub(crate) fn release(&self, slot: u32) {
        let record = self.board.record(slot);
        record.pid.store(0, Ordering::Relaxed);
        record.since_ns.store(0, Ordering::Relaxed);
        self.board.vacate(slot);
        if let Some(fd) = self.slot_fds[slot as usize].get()
            && let Err(e) = rfs::flock(fd, FlockOperation::Unlock)
        {
            tracing::error!(pool = %self.name, slot, error = %e, "cannot unlock slot");
        }
        self.local_unclaim(slot);
        self.wake_head();
    }

    fn wake_head(&self) {
        if self.board.head().load(Ordering::SeqCst) != 0 {
            self.board.release_seq().fetch_add(1, Ordering::SeqCst);
            let _ = futex::wake(
                self.board.release_seq(),
                futex::Flags::empty(),
                i32::MAX as u32,
            );
        }
    }

    /// Records `pid` as the holder of `slot` (a child that inherited it).
    pub(crate) fn set_holder_pid(&self, slot: u32, pid: u32) {
        self.board.record(slot).pid.store(pid, Ordering::Release);
    }

    /// The holder-pid word of `slot`'s record, for a child to claim between
    /// `fork` and `exec` (the shared mapping is inherited).
    pub(crate) fn holder_pid_word(&self, slot: u32) -> &AtomicU32 {
        &self.board.record(slot).pid
    }

    /// The open file description that carries `slot`'s lock.
    pub(crate) fn slot_raw_fd(&self, slot: u32) -> Option<std::os::fd::RawFd> {
        self.slot_fds[slot as usize].get().map(|fd| fd.as_raw_fd())
    }

    fn register_waiter(&self) -> Result<WaiterFile<'_>> {
        let n = self.waiter_seq.fetch_add(1, Ordering::Relaxed);
        let since = now_unix_ns();
        let name = format!("{}-{}-{}", self.pid, n, since);
        // Created under a hidden name and renamed once locked, so that a
        // concurrent `stats()` never mistakes a new waiter for a dead one.
        let tmp = format!("{WAITERS}/.{name}");
        let rel = format!("{WAITERS}/{name}");
        let fd = open_at(
            &self.dirfd,
            &self.dir,
            &tmp,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
            self.file_mode,
        )?;
        rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| Error::io("locking", self.dir.join(&tmp), errno_io(e)))?;
        let mut file = File::from(fd);
        let _ = writeln!(file, "{} {}", self.pid, since);
        rfs::renameat(&self.dirfd, tmp.as_str(), &self.dirfd, rel.as_str())
            .map_err(|e| Error::io("renaming", self.dir.join(&tmp), errno_io(e)))?;
        Ok(WaiterFile {
            dirfd: &self.dirfd,
            rel,
            _file: file,
        })
    }

    fn waiter_entries(&self) -> Result<Vec<String>> {
        let path = self.dir.join(WAITERS);
        let mut names = Vec::new();
        let rd = match std::fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(Error::io("listing", path, e)),
        };
        for entry in rd.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    /// Live waiters; removes the files of waiters that died.
    fn live_waiters(&self) -> Result<Vec<Waiter>> {
        let mut out = Vec::new();
        for name in self.waiter_entries()? {
            let rel = format!("{WAITERS}/{name}");
            let Ok(fd) = open_at(&self.dirfd, &self.dir, &rel, OFlags::RDONLY, self.file_mode)
            else {
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
                    let _ = rfs::unlinkat(&self.dirfd, rel.as_str(), rfs::AtFlags::empty());
                }
                continue;
            }
            if !locked {
                // Nobody holds it: its waiter is gone.
                let _ = rfs::unlinkat(&self.dirfd, rel.as_str(), rfs::AtFlags::empty());
                continue;
            }
            let mut text = String::new();
            let _ = (&file).read_to_string(&mut text);
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

    fn count_waiters(&self) -> Result<u32> {
        Ok(self
            .waiter_entries()?
            .iter()
            .filter(|n| !n.starts_with('.'))
            .count() as u32)
    }

    /// A snapshot from the locks themselves; repairs stale board entries.
    pub(crate) fn stats(&self) -> Result<PoolStats> {
        let capacity = self.capacity();
        let mut holders = Vec::new();
        let mut probed_free = false;
        for slot in 0..capacity {
            let record = self.board.record(slot);
            let held = if self.locally_held(slot) {
                true
            } else {
                let fd = self.open_slot_file(slot)?;
                match rfs::flock(&fd, FlockOperation::NonBlockingLockShared) {
                    Ok(()) => {
                        probed_free = true;
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
                        return Err(Error::io(
                            "probing",
                            self.dir.join(SLOTS).join(slot.to_string()),
                            errno_io(e),
                        ));
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
        if probed_free {
            // A probe may have made an acquirer miss a slot for a moment.
            self.wake_head();
        }
        let waiters = self.live_waiters()?;
        let acquisitions = self.board.acquisitions().load(Ordering::Relaxed);
        let waited = self.board.waited().load(Ordering::Relaxed);
        let mut counts: Vec<u64> = (0..=WAIT_BUCKETS_US.len())
            .map(|i| self.board.wait_bucket(i).load(Ordering::Relaxed))
            .collect();
        counts[0] += acquisitions.saturating_sub(waited);
        let wait_histogram = WaitHistogram {
            bounds_seconds: WAIT_BUCKETS_US.iter().map(|us| *us as f64 / 1e6).collect(),
            count: counts.iter().sum(),
            counts,
            sum_seconds: self.board.wait_sum_ns().load(Ordering::Relaxed) as f64 / 1e9,
        };
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

    /// Changes the capacity. Holders of slots at or above a smaller capacity
    /// keep them until they release; no new holder gets one.
    pub(crate) fn resize(&self, capacity: u32) -> Result<u32> {
        check_capacity(capacity as u64)?;
        let init = open_at(
            &self.dirfd,
            &self.dir,
            INIT_LOCK,
            OFlags::CREATE | OFlags::RDWR,
            self.file_mode,
        )?;
        rfs::flock(&init, FlockOperation::LockExclusive)
            .map_err(|e| Error::io("locking", self.dir.join(INIT_LOCK), errno_io(e)))?;
        let meta_path = self.dir.join(META);
        let mut meta = read_meta(&self.dirfd, &meta_path)?.ok_or_else(|| Error::NotFound {
            pool: self.name.clone(),
        })?;
        let old = meta.capacity;
        for slot in old..capacity {
            self.open_slot_file(slot)?;
        }
        meta.capacity = capacity;
        write_meta(&self.dirfd, &self.dir, &meta, self.file_mode)?;
        self.board.capacity().store(capacity, Ordering::SeqCst);
        unlock(&init);
        tracing::info!(pool = %self.name, old, new = capacity, "resized slot pool");
        self.wake_head();
        Ok(old)
    }
}

/// Releases a lock this process took only for a moment (a probe, the gate).
///
/// Explicitly, not by closing the descriptor: a thread of this process that
/// forks in the meantime gives the child a copy of every descriptor until
/// the child's `exec`, and a lock released by closing would stay held by
/// that copy. `LOCK_UN` releases it for every copy at once.
fn unlock(fd: impl AsFd) {
    let _ = rfs::flock(fd, FlockOperation::Unlock);
}

/// A waiter's registration; unregisters on drop.
struct WaiterFile<'a> {
    dirfd: &'a OwnedFd,
    rel: String,
    _file: File,
}

impl Drop for WaiterFile<'_> {
    fn drop(&mut self) {
        let _ = rfs::unlinkat(self.dirfd, self.rel.as_str(), rfs::AtFlags::empty());
    }
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

/// Opens `rel` under the pool directory without following symlinks. With
/// `CREATE`, a file that does not exist yet is created exclusively and given
/// exactly the pool's mode, whatever the umask.
fn open_at(dirfd: &OwnedFd, dir: &Path, rel: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
    let path = || dir.join(rel);
    let base = (flags - OFlags::CREATE - OFlags::EXCL) | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fail = |e: Errno| match e {
        Errno::LOOP => location(
            &path(),
            "it is a symbolic link; dbslots refuses to follow symlinks inside a pool, remove it",
        ),
        e => Error::io("opening", path(), errno_io(e)),
    };
    if !flags.contains(OFlags::EXCL) {
        match rfs::openat(dirfd, rel, base, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if flags.contains(OFlags::CREATE) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    match rfs::openat(dirfd, rel, base | OFlags::CREATE | OFlags::EXCL, mode) {
        Ok(fd) => {
            let _ = rfs::fchmod(&fd, mode);
            Ok(fd)
        }
        // Somebody else created it in between.
        Err(Errno::EXIST) if !flags.contains(OFlags::EXCL) => {
            rfs::openat(dirfd, rel, base, Mode::empty()).map_err(fail)
        }
        Err(e) => Err(fail(e)),
    }
}

fn read_meta(dirfd: &OwnedFd, path: &Path) -> Result<Option<Meta>> {
    let fd = match rfs::openat(
        dirfd,
        META,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(location(path, "it is a symbolic link; remove it")),
        Err(e) => return Err(Error::io("opening", path, errno_io(e))),
    };
    let mut text = String::new();
    File::from(fd)
        .read_to_string(&mut text)
        .map_err(|e| Error::io("reading", path, e))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
        path: path.into(),
        detail: format!("pool.json: {e}"),
    })?;
    if meta.format != board::FORMAT {
        return Err(Error::Corrupt {
            path: path.into(),
            detail: format!("format {}, this build reads {}", meta.format, board::FORMAT),
        });
    }
    check_capacity(meta.capacity as u64)?;
    Ok(Some(meta))
}

fn write_meta(dirfd: &OwnedFd, dir: &Path, meta: &Meta, mode: Mode) -> Result<()> {
    let tmp = format!("{META}.{}.tmp", std::process::id());
    let _ = rfs::unlinkat(dirfd, tmp.as_str(), rfs::AtFlags::empty());
    let fd = open_at(
        dirfd,
        dir,
        &tmp,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
        mode,
    )?;
    let mut file = File::from(fd);
    let text =
        serde_json::to_string_pretty(meta).map_err(|e| Error::io("encoding", dir.join(META), e))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.write_all(b"\n"))
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io("writing", dir.join(&tmp), e))?;
    rfs::renameat(dirfd, tmp.as_str(), dirfd, META)
        .map_err(|e| Error::io("renaming", dir.join(META), errno_io(e)))
}

fn create_layout(
    dirfd: &OwnedFd,
    dir: &Path,
    capacity: u32,
    group: Option<u32>,
    mode: Mode,
) -> Result<()> {
    let dir_mode = Mode::from_raw_mode(if group.is_some() { 0o2770 } else { 0o700 });
    for sub in [SLOTS, WAITERS] {
        match rfs::mkdirat(dirfd, sub, dir_mode) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(Error::io("creating", dir.join(sub), errno_io(e))),
        }
        let fd = open_at(dirfd, dir, sub, OFlags::DIRECTORY | OFlags::RDONLY, mode)?;
        let _ = rfs::fchmod(&fd, dir_mode);
    }
    for slot in 0..capacity {
        open_at(
            dirfd,
            dir,
            &format!("{SLOTS}/{slot}"),
            OFlags::CREATE | OFlags::RDONLY,
            mode,
        )?;
    }
    open_at(dirfd, dir, GATE, OFlags::CREATE | OFlags::RDONLY, mode)?;
    // A creator that died half-way may have left a state file: start over.
    let state = open_at(
        dirfd,
        dir,
        STATE,
        OFlags::CREATE | OFlags::RDWR | OFlags::TRUNC,
        mode,
    )?;
    let state = File::from(state);
    Board::initialise(&state, &dir.join(STATE), capacity)?;
    debug_assert_eq!(
        state.metadata().map(|m| m.len()).unwrap_or(0),
        BOARD_LEN as u64
    );
    let meta = Meta {
        format: board::FORMAT,
        capacity,
        created_unix: now_unix_ns() / 1_000_000_000,
        group,
    };
    write_meta(dirfd, dir, &meta, mode)
}
