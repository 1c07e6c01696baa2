//! The slot-file descriptors of one pool handle.
//!
//! # Implementation Details
//!
//! A held slot needs its descriptor open (the lock lives on its open file
//! description). Probing a slot is cheaper with an open descriptor (one
//! `flock`, about 1 µs) than without (open + `flock` + close, about 4 µs),
//! so descriptors of slots this handle probed are kept too, but at most
//! [`CACHE_MAX`] of them: a pool of thousands of slots must work under the
//! default limit of 1024 open files.
//!
//! A cached descriptor is used by one thread at a time: the map entry says
//! whether it is held, and `flock` on a description that already holds the
//! lock would succeed again, so a held entry is never tried a second time.
//! Two handles (or two processes) use different descriptions, which the
//! kernel keeps apart.
//!
//! A cached descriptor opened before this process last forked is not
//! locked again, but closed and opened anew: the child may still have a
//! copy of its description, and a lock taken through it would stay held
//! by that copy after this process dies.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::fs::{self as rfs, FlockOperation};
use rustix::io::Errno;

use super::errno_io;
use super::layout::Dirs;
use crate::error::{Error, Result};

/// Descriptors of slots not held through this handle that are kept open.
pub(super) const CACHE_MAX: usize = 128;

struct SlotFd {
    fd: OwnedFd,
    held: bool,
    /// `fork::forks()` when the descriptor was opened.
    forks: u64,
}

/// Descriptors of held slots, and a bounded cache of others.
#[derive(Default)]
pub(super) struct SlotFds {
    map: Mutex<Map>,
}

#[derive(Default)]
struct Map {
    fds: HashMap<u32, SlotFd>,
    /// Entries not held.
    cached: usize,
}

impl Map {
    fn remove(&mut self, slot: &u32) -> Option<SlotFd> {
        let e = self.fds.remove(slot)?;
        if !e.held {
            self.cached -= 1;
        }
        Some(e)
    }

    fn insert(&mut self, slot: u32, e: SlotFd) {
        if !e.held {
            self.cached += 1;
        }
        if let Some(old) = self.fds.insert(slot, e)
            && !old.held
        {
            self.cached -= 1;
        }
    }

    fn get(&self, slot: &u32) -> Option<&SlotFd> {
        self.fds.get(slot)
    }
}

/// What a try on one slot found.
pub(super) enum Try {
    Taken,
    Busy,
}

impl SlotFds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tries to lock `slot` exclusively without waiting.
    pub(super) fn try_lock(&self, dirs: &Dirs, slot: u32) -> Result<Try> {
        let mut map = self.lock();
        let forks = super::fork::forks();
        let (fd, forks) = match map.remove(&slot) {
            Some(e) if e.held => {
                map.insert(slot, e);
                return Ok(Try::Busy);
            }
            // A child forked since it was opened may still have a copy: a
            // lock taken through it would outlive this process there.
            Some(e) if e.forks == forks => (e.fd, e.forks),
            _ => {
                drop(map);
                let fd = dirs.open_slot(slot)?;
                map = self.lock();
                if map.get(&slot).is_some_and(|e| e.held) {
                    return Ok(Try::Busy);
                }
                (fd, forks)
            }
        };
        match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                map.insert(
                    slot,
                    SlotFd {
                        fd,
                        held: true,
                        forks,
                    },
                );
                Ok(Try::Taken)
            }
            Err(Errno::WOULDBLOCK) => {
                Self::keep(&mut map, slot, fd, forks);
                Ok(Try::Busy)
            }
            Err(e) => Err(Error::io("locking", dirs.slot_path(slot), errno_io(e))),
        }
    }

    /// True when `slot` is held through this handle.
    pub(super) fn held(&self, slot: u32) -> bool {
        self.lock().get(&slot).is_some_and(|e| e.held)
    }

    /// Unlocks `slot` (held through this handle).
    pub(super) fn unlock(&self, slot: u32) -> std::result::Result<(), Errno> {
        let mut map = self.lock();
        let Some(e) = map.remove(&slot) else {
            return Ok(());
        };
        let res = rfs::flock(&e.fd, FlockOperation::Unlock);
        Self::keep(&mut map, slot, e.fd, e.forks);
        res
    }

    /// Forgets `slot`'s descriptor without unlocking it (a forked child
    /// shares the parent's description: unlocking would free the parent's
    /// slot). Closing our copy leaves the lock with the parent's copy.
    pub(super) fn forget(&self, slot: u32) {
        self.lock().remove(&slot);
    }

    /// The descriptor that carries `slot`'s lock, while held.
    pub(super) fn raw(&self, slot: u32) -> Option<RawFd> {
        self.lock()
            .get(&slot)
            .filter(|e| e.held)
            .map(|e| e.fd.as_fd().as_raw_fd())
    }

    fn keep(map: &mut Map, slot: u32, fd: OwnedFd, forks: u64) {
        let e = SlotFd {
            fd,
            held: false,
            forks,
        };
        if map.cached < CACHE_MAX {
            map.insert(slot, e);
        } else if let Some(victim) = map.fds.iter().find(|(_, e)| !e.held).map(|(s, _)| *s) {
            // Replace an arbitrary cached one: the newest is the likeliest
            // to be tried again (a holder releasing and re-acquiring).
            map.remove(&victim);
            map.insert(slot, e);
        }
    }
}
