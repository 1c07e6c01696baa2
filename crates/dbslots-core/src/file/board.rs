//! The board: a small memory-mapped file (`state`) that every process of a
//! pool maps shared.
//!
//! # Implementation Details
//!
//! The board never decides who holds a slot: the `flock` on the slot's file
//! does. The board carries what the locks cannot:
//!
//! * the waiters' queue (see `queue`): a ticket counter, one entry per
//!   queued acquirer with its own futex word, and the `head` word that
//!   tells a releaser whom to wake (0 when nobody queues, so a release costs
//!   no system call then);
//! * an occupancy bitmap, so that an acquirer tries the slots that look free
//!   first instead of probing every slot file;
//! * one record per slot (holder pid, since when), for stats;
//! * monotonic counters (acquisitions, timeouts, peak, wait histogram).
//!
//! A holder killed between taking a slot's lock and clearing its bit leaves a
//! stale bit and record. They are harmless: the lock is gone, the next
//! acquirer that probes the slot takes it over, and `stats()` repairs them.
//! Every field is an atomic at a fixed offset, so foreign clients (PHP,
//! Python) can read them; `docs/protocol.md` lists the offsets.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;

use crate::error::{Error, Result};
use crate::stats::{WAIT_BUCKETS_US, WaitHistogram};

/// File magic at offset 0.
pub(crate) const MAGIC: [u8; 8] = *b"DBSLOTS\0";
/// Layout version at offset 8.
pub(crate) const FORMAT: u32 = 2;
/// Slots a board has room for; also the largest capacity.
pub const MAX_CAPACITY: u32 = 4096;

const OFF_MAGIC: usize = 0;
const OFF_FORMAT: usize = 8;
const OFF_CAPACITY: usize = 12;
const OFF_MAX_SLOTS: usize = 16;
const OFF_HIGH_WATER: usize = 20;
const OFF_HEAD: usize = 64;
const OFF_NEXT_TICKET: usize = 72;
const OFF_PEAK: usize = 192;
const OFF_ACQUISITIONS: usize = 256;
const OFF_TIMEOUTS: usize = 320;
const OFF_WAITED: usize = 384;
const OFF_WAIT_SUM_NS: usize = 392;
const OFF_WAIT_BUCKETS: usize = 400;
const OFF_BITMAP: usize = 1024;
const BITMAP_WORDS: usize = MAX_CAPACITY as usize / 64;
const OFF_QUEUE_BITMAP: usize = 1536;
const OFF_RECORDS: usize = 4096;
const RECORD_SIZE: usize = 64;
const OFF_ENTRIES: usize = OFF_RECORDS + RECORD_SIZE * MAX_CAPACITY as usize;
const ENTRY_SIZE: usize = 64;
/// Queue entries a board has room for (waiters queued at once).
pub(crate) const QUEUE_LEN: u32 = 4096;
/// Size of the `state` file.
pub(crate) const BOARD_LEN: usize = OFF_ENTRIES + ENTRY_SIZE * QUEUE_LEN as usize;

/// One slot's record: who holds it since when (advisory; the lock is truth).
#[repr(C)]
pub(crate) struct Record {
    /// Holder's pid, 0 when released.
    pub pid: AtomicU32,
    _pad: AtomicU32,
    /// Wall-clock time of acquisition, nanoseconds since the Unix epoch.
    pub since_ns: AtomicU64,
}

/// One queued acquirer (see `queue` for the protocol).
#[repr(C)]
pub(crate) struct Entry {
    /// Place in the queue (smaller is earlier); 0 while the entry is free.
    pub ticket: AtomicU64,
    /// Wall-clock time the waiter queued, nanoseconds since the Unix epoch.
    pub since_ns: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds when the waiter last ran (or was woken
    /// into the watch window).
    pub beat_ns: AtomicU64,
    /// The waiter's pid (in its own pid namespace).
    pub pid: AtomicU32,
    /// The waiter's futex word: bumped and woken to wake this waiter.
    pub wake: AtomicU32,
    /// `queue::SKIPPED` | `queue::WINDOW`.
    pub flags: AtomicU32,
    /// The per-process sequence number in the waiter's file name.
    pub seq: AtomicU32,
    /// Inode of the waiter's pid namespace (0 unknown): its pid means
    /// something in `/proc` only to processes of the same namespace.
    pub pid_ns: AtomicU64,
}

/// The mapped board of one pool.
pub(crate) struct Board {
    map: MmapRaw,
}

// SAFETY: the mapping is only ever accessed through atomics.
unsafe impl Send for Board {}
unsafe impl Sync for Board {}

impl Board {
    /// Writes a fresh board into `file` (which must be empty). The file is
    /// fully allocated first: a page of a sparse shared mapping that cannot
    /// be backed when it is first written (a full tmpfs) kills the writer
    /// with SIGBUS, so a full filesystem must fail here, cleanly.
    pub(crate) fn initialise(file: &File, path: &Path, capacity: u32) -> Result<()> {
        match rustix::fs::fallocate(
            file,
            rustix::fs::FallocateFlags::empty(),
            0,
            BOARD_LEN as u64,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOSPC) | Err(rustix::io::Errno::DQUOT) => {
                return Err(Error::Location {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the filesystem is full: the pool's board needs {} KiB; free some space or choose a pool directory on another filesystem",
                        BOARD_LEN / 1024
                    ),
                });
            }
            // Filesystems without fallocate: size it and write every page.
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
                use std::io::Write;
                file.set_len(0).map_err(|e| Error::io("sizing", path, e))?;
                (&*file)
                    .write_all(&vec![0u8; BOARD_LEN])
                    .and_then(|_| file.sync_all())
                    .map_err(|e| Error::io("writing", path, e))?;
            }
            Err(e) => {
                return Err(Error::io(
                    "allocating",
                    path,
                    std::io::Error::from_raw_os_error(e.raw_os_error()),
                ));
            }
        }
        file.set_len(BOARD_LEN as u64)
            .map_err(|e| Error::io("sizing", path, e))?;
        let board = Board::map_unchecked(file, path)?;
        board.u32_at(OFF_FORMAT).store(FORMAT, Ordering::Relaxed);
        board
            .u32_at(OFF_CAPACITY)
            .store(capacity, Ordering::Relaxed);
        board
            .u32_at(OFF_MAX_SLOTS)
            .store(MAX_CAPACITY, Ordering::Relaxed);
        board
            .u32_at(OFF_HIGH_WATER)
            .store(capacity, Ordering::Relaxed);
        // The magic goes in last, so a half-written board is never taken for
        // a good one.
        let magic = u64::from_ne_bytes(MAGIC);
        board.u64_at(OFF_MAGIC).store(magic, Ordering::Release);
        board
            .map
            .flush()
            .map_err(|e| Error::io("writing", path, e))?;
        Ok(())
    }

    /// Maps an existing board and checks its header.
    pub(crate) fn open(file: &File, path: &Path) -> Result<Board> {
        let len = file
            .metadata()
            .map_err(|e| Error::io("inspecting", path, e))?
            .len();
        if len != BOARD_LEN as u64 {
            return Err(Error::Corrupt {
                path: path.into(),
                detail: format!("state file is {len} bytes, expected {BOARD_LEN}"),
            });
        }
        let board = Board::map_unchecked(file, path)?;
        let magic = board
            .u64_at(OFF_MAGIC)
            .load(Ordering::Acquire)
            .to_ne_bytes();
        if magic != MAGIC {
            return Err(Error::Corrupt {
                path: path.into(),
                detail: "bad magic".into(),
            });
        }
        let format = board.u32_at(OFF_FORMAT).load(Ordering::Relaxed);
        if format != FORMAT {
            return Err(Error::Corrupt {
                path: path.into(),
                detail: format!("layout version {format}, this build reads {FORMAT}"),
            });
        }
        let max = board.u32_at(OFF_MAX_SLOTS).load(Ordering::Relaxed);
        if max != MAX_CAPACITY {
            return Err(Error::Corrupt {
                path: path.into(),
                detail: format!("room for {max} slots, expected {MAX_CAPACITY}"),
            });
        }
        Ok(board)
    }

    fn map_unchecked(file: &File, path: &Path) -> Result<Board> {
        let map = MmapRaw::map_raw(file).map_err(|e| Error::io("mapping", path, e))?;
        if map.len() < BOARD_LEN {
            return Err(Error::Corrupt {
                path: path.into(),
                detail: "state file too short".into(),
            });
        }
        Ok(Board { map })
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= BOARD_LEN);
        // SAFETY: in bounds (checked at map time), aligned (page-aligned map,
        // aligned offsets), and the mapping lives as long as `self`.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= BOARD_LEN);
        // SAFETY: as in `u32_at`.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    /// The pool's capacity (changes only by an explicit resize).
    pub(crate) fn capacity(&self) -> &AtomicU32 {
        self.u32_at(OFF_CAPACITY)
    }

    /// Slots `0..high_water` may be held: the largest capacity since the
    /// last shrink finished draining (never below the capacity).
    pub(crate) fn high_water(&self) -> &AtomicU32 {
        self.u32_at(OFF_HIGH_WATER)
    }

    /// 1 + the queue entry of the head waiter (the one a release wakes);
    /// 0 when nobody queues.
    pub(crate) fn head(&self) -> &AtomicU32 {
        self.u32_at(OFF_HEAD)
    }

    /// The last ticket handed out.
    pub(crate) fn next_ticket(&self) -> &AtomicU64 {
        self.u64_at(OFF_NEXT_TICKET)
    }

    /// Queue-entry word `w` (entries `64*w .. 64*w+63` in use).
    pub(crate) fn queue_word(&self, w: usize) -> &AtomicU64 {
        debug_assert!(w < QUEUE_LEN as usize / 64);
        self.u64_at(OFF_QUEUE_BITMAP + 8 * w)
    }

    /// Queue entry `i`.
    pub(crate) fn entry(&self, i: u32) -> &Entry {
        debug_assert!(i < QUEUE_LEN);
        let off = OFF_ENTRIES + ENTRY_SIZE * i as usize;
        // SAFETY: as in `u32_at`; `Entry` is 48 bytes of atomics, 8-aligned.
        unsafe { &*(self.map.as_ptr().add(off) as *const Entry) }
    }

    /// Most slots seen held at once.
    pub(crate) fn peak(&self) -> &AtomicU64 {
        self.u64_at(OFF_PEAK)
    }

    /// Successful acquisitions since the pool was created.
    pub(crate) fn acquisitions(&self) -> &AtomicU64 {
        self.u64_at(OFF_ACQUISITIONS)
    }

    /// Acquisitions that gave up at their deadline.
    pub(crate) fn timeouts(&self) -> &AtomicU64 {
        self.u64_at(OFF_TIMEOUTS)
    }

    /// Acquisitions that had to queue.
    pub(crate) fn waited(&self) -> &AtomicU64 {
        self.u64_at(OFF_WAITED)
    }

    /// Sum of the queued acquisitions' waits, in nanoseconds.
    pub(crate) fn wait_sum_ns(&self) -> &AtomicU64 {
        self.u64_at(OFF_WAIT_SUM_NS)
    }

    /// Histogram bucket `i` of queued waits (`WAIT_BUCKETS_US.len()` + 1 buckets).
    pub(crate) fn wait_bucket(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i <= WAIT_BUCKETS_US.len());
        self.u64_at(OFF_WAIT_BUCKETS + 8 * i)
    }

    /// Records a queued wait of `ns` nanoseconds.
    pub(crate) fn record_wait(&self, ns: u64) {
        self.wait_bucket(WaitHistogram::bucket_of(ns / 1_000))
            .fetch_add(1, Ordering::Relaxed);
        self.waited().fetch_add(1, Ordering::Relaxed);
        self.wait_sum_ns().fetch_add(ns, Ordering::Relaxed);
    }

    /// Occupancy word `w` (slots `64*w .. 64*w+63`).
    pub(crate) fn bitmap_word(&self, w: usize) -> &AtomicU64 {
        debug_assert!(w < BITMAP_WORDS);
        self.u64_at(OFF_BITMAP + 8 * w)
    }

    /// True when the occupancy bit of `slot` is set.
    pub(crate) fn occupied(&self, slot: u32) -> bool {
        let (w, b) = (slot as usize / 64, slot % 64);
        self.bitmap_word(w).load(Ordering::Relaxed) & (1 << b) != 0
    }

    /// Sets the occupancy bit of `slot` and returns how many bits are set
    /// among the first `capacity` slots afterwards.
    pub(crate) fn occupy(&self, slot: u32, capacity: u32) -> u32 {
        let (w, b) = (slot as usize / 64, slot % 64);
        self.bitmap_word(w).fetch_or(1 << b, Ordering::AcqRel);
        self.occupancy(capacity)
    }

    /// Clears the occupancy bit of `slot`.
    pub(crate) fn vacate(&self, slot: u32) {
        let (w, b) = (slot as usize / 64, slot % 64);
        self.bitmap_word(w).fetch_and(!(1 << b), Ordering::AcqRel);
    }

    /// Number of occupancy bits set among all slots.
    pub(crate) fn occupancy_all(&self) -> u32 {
        (0..BITMAP_WORDS)
            .map(|w| self.bitmap_word(w).load(Ordering::Acquire).count_ones())
            .sum()
    }

    /// Number of occupancy bits set among the first `capacity` slots.
    pub(crate) fn occupancy(&self, capacity: u32) -> u32 {
        let words = (capacity as usize).div_ceil(64);
        (0..words)
            .map(|w| {
                let mut v = self.bitmap_word(w).load(Ordering::Acquire);
                let last = w == words - 1 && !capacity.is_multiple_of(64);
                if last {
                    v &= (1u64 << (capacity % 64)) - 1;
                }
                v.count_ones()
            })
            .sum()
    }

    /// The record of `slot`.
    pub(crate) fn record(&self, slot: u32) -> &Record {
        debug_assert!(slot < MAX_CAPACITY);
        let off = OFF_RECORDS + RECORD_SIZE * slot as usize;
        // SAFETY: as in `u32_at`; `Record` is 16 bytes of atomics, 8-aligned.
        unsafe { &*(self.map.as_ptr().add(off) as *const Record) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Foreign clients (docs/protocol.md) hard-code these offsets: changing
    /// one is a format change and needs a new `FORMAT`.
    #[test]
    fn layout_matches_the_documented_protocol() {
        assert_eq!(
            (OFF_MAGIC, OFF_FORMAT, OFF_CAPACITY, OFF_MAX_SLOTS),
            (0, 8, 12, 16)
        );
        assert_eq!((OFF_HIGH_WATER, OFF_HEAD, OFF_NEXT_TICKET), (20, 64, 72));
        assert_eq!((OFF_PEAK, OFF_ACQUISITIONS, OFF_TIMEOUTS), (192, 256, 320));
        assert_eq!(
            (OFF_WAITED, OFF_WAIT_SUM_NS, OFF_WAIT_BUCKETS),
            (384, 392, 400)
        );
        assert!(OFF_WAIT_BUCKETS + 8 * (WAIT_BUCKETS_US.len() + 1) <= OFF_BITMAP);
        assert_eq!((OFF_BITMAP, OFF_RECORDS, RECORD_SIZE), (1024, 4096, 64));
        assert_eq!(OFF_BITMAP + 8 * BITMAP_WORDS, 1536);
        assert_eq!(
            (OFF_QUEUE_BITMAP, OFF_ENTRIES, ENTRY_SIZE),
            (1536, 266_240, 64)
        );
        assert_eq!(OFF_QUEUE_BITMAP + QUEUE_LEN as usize / 8, 2048);
        assert_eq!(BOARD_LEN, 4096 + 64 * 4096 + 64 * 4096);
        assert_eq!(std::mem::size_of::<Record>(), 16);
        assert_eq!(std::mem::size_of::<Entry>(), 48);
    }

    fn rw(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open")
    }

    #[test]
    fn a_foreign_board_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        std::fs::write(&path, vec![0u8; BOARD_LEN]).expect("write");
        let file = rw(&path);
        let err = Board::open(&file, &path)
            .err()
            .expect("zeroes are not a board");
        assert!(err.to_string().contains("bad magic"), "{err}");
        std::fs::write(&path, b"{}").expect("write");
        let file = rw(&path);
        let err = Board::open(&file, &path).err().expect("too short");
        assert!(err.to_string().contains("bytes"), "{err}");
    }

    #[test]
    fn occupancy_counts_only_slots_within_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        Board::initialise(&file, &path, 70).expect("init");
        let board = Board::open(&file, &path).expect("open");
        assert_eq!(board.occupy(3, 70), 1);
        assert_eq!(board.occupy(65, 70), 2);
        board.bitmap_word(1).fetch_or(1 << 20, Ordering::Relaxed); // slot 84, beyond capacity
        assert_eq!(board.occupancy(70), 2);
        board.vacate(3);
        assert_eq!(board.occupancy(70), 1);
        board.record_wait(50_000); // 50 µs
        assert_eq!(board.wait_bucket(1).load(Ordering::Relaxed), 1);
        assert_eq!(board.waited().load(Ordering::Relaxed), 1);
    }
}
