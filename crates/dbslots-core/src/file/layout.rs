//! The pool directory: making it, checking it, and opening what is in it
//! without ever following a symbolic link.
//!
//! # Implementation Details
//!
//! * The pool directory is opened once (`O_DIRECTORY | O_NOFOLLOW`), then
//!   checked through that descriptor (`fstat`): it must belong to this user
//!   or to root and must not be writable by others. A directory this call
//!   created gets its mode and group through the same descriptor
//!   (`fchmod`/`fchown`), so a directory swapped in by somebody else between
//!   `mkdir` and the change is never touched.
//! * Every other file is opened relative to a directory descriptor, one
//!   path component at a time, with `O_NOFOLLOW` (`slots/` and `waiters/`
//!   are themselves opened as descriptors): a symlink at any component is
//!   refused with an error naming it, never followed. Listings (`Dir` on a
//!   descriptor) and removals (`unlinkat`) stay inside the same directories.
//! * `pool.json` is replaced atomically (a temporary name created with
//!   `O_EXCL | O_NOFOLLOW`, then `renameat`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::board::{self, Board};
use super::errno_io;
use crate::error::{Error, Result};

pub(super) const META: &str = "pool.json";
/// The most `pool.json` may hold.
const META_MAX_BYTES: u64 = 64 * 1024;
pub(super) const INIT_LOCK: &str = "init.lock";
pub(super) const STATE: &str = "state";
pub(super) const SLOTS: &str = "slots";
pub(super) const WAITERS: &str = "waiters";

/// What `pool.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Meta {
    pub format: u32,
    pub capacity: u32,
    #[serde(default)]
    pub created_unix: u64,
    #[serde(default)]
    pub group: Option<u32>,
}

/// The open directories of a pool.
pub(super) struct Dirs {
    /// The pool directory as given (for messages).
    pub path: PathBuf,
    pub root: OwnedFd,
    pub slots: OwnedFd,
    pub waiters: OwnedFd,
    /// Mode of the files this process creates (0600, or 0660 for a group).
    pub file_mode: Mode,
}

pub(super) fn location(path: &Path, reason: impl Into<String>) -> Error {
    Error::Location {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn dir_mode(group: Option<u32>) -> Mode {
    Mode::from_raw_mode(if group.is_some() { 0o2770 } else { 0o700 })
}

/// Opens the pool directory `path` (creating it when `create`), checks who
/// owns it, and returns its descriptor, whether this call created it, and
/// the group its files are shared with.
pub(super) fn open_root(
    path: &Path,
    create: bool,
    group: Option<u32>,
) -> Result<(OwnedFd, bool, Option<u32>)> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let mut created = false;
    let fd = loop {
        match rfs::open(path, flags, Mode::empty()) {
            Ok(fd) => break fd,
            Err(Errno::NOENT) if create && !created => {
                check_parent(path)?;
                match rfs::mkdir(path, dir_mode(group)) {
                    Ok(()) => created = true,
                    Err(Errno::EXIST) => {}
                    Err(Errno::NOENT) => return Err(missing_parent(path)),
                    Err(e) => return Err(Error::io("creating", path, errno_io(e))),
                }
            }
            Err(Errno::NOENT) => {
                check_parent(path)?;
                return Err(Error::NotFound {
                    pool: path.display().to_string(),
                });
            }
            Err(Errno::LOOP) => {
                return Err(location(
                    path,
                    "it is a symbolic link, and dbslots does not follow symlinks for pool files; use the real directory as the pool directory",
                ));
            }
            Err(Errno::NOTDIR) => {
                // O_DIRECTORY | O_NOFOLLOW on a symlink says ENOTDIR too.
                let link =
                    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
                return Err(location(
                    path,
                    if link {
                        "it is a symbolic link, and dbslots does not follow symlinks for pool files; use the real directory as the pool directory"
                    } else {
                        "it exists and is not a directory; choose a directory path as the pool directory"
                    },
                ));
            }
            Err(e) => return Err(Error::io("opening", path, errno_io(e))),
        }
    };
    let st = rfs::fstat(&fd).map_err(|e| Error::io("inspecting", path, errno_io(e)))?;
    check_owner(path, st.st_uid, st.st_mode)?;
    if created {
        // mkdir honours the umask; set exactly the mode we mean, through the
        // descriptor (the path may have been swapped meanwhile).
        let mode = dir_mode(group);
        if let Some(gid) = group {
            rfs::fchown(&fd, None, Some(rfs::Gid::from_raw(gid)))
                .map_err(|e| Error::io("changing the group of", path, errno_io(e)))?;
        }
        rfs::fchmod(&fd, mode).map_err(|e| Error::io("setting the mode of", path, errno_io(e)))?;
        return Ok((fd, true, group));
    }
    let shared = group.or_else(|| (st.st_mode & 0o070 != 0).then_some(st.st_gid));
    Ok((fd, false, shared))
}

fn missing_parent(path: &Path) -> Error {
    let parent = parent_of(path);
    location(
        path,
        format!(
            "its parent directory {} does not exist; create it first or choose another location",
            parent.display()
        ),
    )
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn check_parent(path: &Path) -> Result<()> {
    let parent = parent_of(path);
    match std::fs::metadata(&parent) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(location(
            path,
            format!("{} is not a directory", parent.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing_parent(path)),
        Err(e) => Err(Error::io("inspecting", &parent, e)),
    }
}

/// Refuses a pool directory that somebody else could have prepared: owned
/// by another non-root user, or writable by everybody.
fn check_owner(path: &Path, uid: u32, mode: u32) -> Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if uid != me && uid != 0 {
        return Err(location(
            path,
            format!(
                "it is owned by {} (mode {:04o}), not by you ({}) or root; a pool directory must belong to its users or to root, so use your own directory or ask its owner",
                user_name(uid),
                mode & 0o7777,
                user_name(me),
            ),
        ));
    }
    if mode & 0o002 != 0 {
        return Err(location(
            path,
            format!(
                "it is writable by every user (owner {}, mode {:04o}), so anybody could plant files in it; use a directory only its users can write (chmod o-w), or another pool directory",
                user_name(uid),
                mode & 0o7777,
            ),
        ));
    }
    Ok(())
}

/// "name (uid N)", or "uid N" when `/etc/passwd` does not know it.
fn user_name(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| {
        t.lines().find_map(|line| {
            let mut parts = line.split(':');
            let name = parts.next()?;
            (parts.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
    });
    match name {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Opens the entry `name` (one path component) of the directory `dirfd`
/// without following a symlink. With `CREATE`, a file that does not exist
/// yet is created exclusively and given exactly `mode`, whatever the umask.
///
/// Unless `DIRECTORY` is asked for, the entry must be a regular file: it is
/// opened `O_NONBLOCK` (no effect on a regular file's reads, writes or
/// locks) so that a FIFO or device planted in its place is refused instead
/// of blocking the opener until somebody writes to it.
pub(super) fn open_in(
    dirfd: impl AsFd,
    dir: &Path,
    name: &str,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd> {
    debug_assert!(!name.contains('/'), "{name} is one component");
    let dirfd = dirfd.as_fd();
    let path = || dir.join(name);
    let want_file = !flags.contains(OFlags::DIRECTORY);
    let mut base = (flags - OFlags::CREATE - OFlags::EXCL) | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if want_file {
        base |= OFlags::NONBLOCK;
    }
    let regular = |fd: OwnedFd| -> Result<OwnedFd> {
        if !want_file {
            return Ok(fd);
        }
        let stat = rfs::fstat(&fd).map_err(|e| Error::io("inspecting", path(), errno_io(e)))?;
        if rfs::FileType::from_raw_mode(stat.st_mode) == rfs::FileType::RegularFile {
            Ok(fd)
        } else {
            Err(location(
                &path(),
                "it is not a regular file (a FIFO, device or socket was put in its place); remove it",
            ))
        }
    };
    let fail = |e: Errno| match e {
        Errno::LOOP => location(
            &path(),
            "it is a symbolic link; dbslots refuses to follow symlinks inside a pool, remove it",
        ),
        Errno::NOTDIR if flags.contains(OFlags::DIRECTORY) => location(
            &path(),
            "it is not a directory (a symbolic link or a file was put in its place); remove it",
        ),
        e => Error::io("opening", path(), errno_io(e)),
    };
    if !flags.contains(OFlags::EXCL) {
        match rfs::openat(dirfd, name, base, Mode::empty()) {
            Ok(fd) => return regular(fd),
            Err(Errno::NOENT) if flags.contains(OFlags::CREATE) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    match rfs::openat(dirfd, name, base | OFlags::CREATE | OFlags::EXCL, mode) {
        Ok(fd) => {
            let _ = rfs::fchmod(&fd, mode);
            Ok(fd)
        }
        // Somebody else created it in between.
        Err(Errno::EXIST) if !flags.contains(OFlags::EXCL) => {
            regular(rfs::openat(dirfd, name, base, Mode::empty()).map_err(fail)?)
        }
        Err(e) => Err(fail(e)),
    }
}

/// Makes (if needed) and opens the subdirectory `name`.
fn subdir(
    root: &OwnedFd,
    dir: &Path,
    name: &str,
    group: Option<u32>,
    create: bool,
) -> Result<OwnedFd> {
    let mode = dir_mode(group);
    if create {
        match rfs::mkdirat(root, name, mode) {
            Ok(()) => {
                let fd = open_in(
                    root,
                    dir,
                    name,
                    OFlags::DIRECTORY | OFlags::RDONLY,
                    Mode::empty(),
                )?;
                rfs::fchmod(&fd, mode)
                    .map_err(|e| Error::io("setting the mode of", dir.join(name), errno_io(e)))?;
                return Ok(fd);
            }
            Err(Errno::EXIST) => {}
            Err(e) => return Err(Error::io("creating", dir.join(name), errno_io(e))),
        }
    }
    open_in(
        root,
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY,
        Mode::empty(),
    )
}

impl Dirs {
    /// Opens `slots/` and `waiters/` of an existing (or just created) pool.
    pub(super) fn open(
        path: &Path,
        root: OwnedFd,
        group: Option<u32>,
        create: bool,
    ) -> Result<Dirs> {
        let slots = subdir(&root, path, SLOTS, group, create)?;
        let waiters = subdir(&root, path, WAITERS, group, create)?;
        Ok(Dirs {
            path: path.to_path_buf(),
            root,
            slots,
            waiters,
            file_mode: Mode::from_raw_mode(if group.is_some() { 0o660 } else { 0o600 }),
        })
    }

    /// Opens `name` in the pool directory.
    pub(super) fn open_root_file(&self, name: &str, flags: OFlags) -> Result<OwnedFd> {
        open_in(&self.root, &self.path, name, flags, self.file_mode)
    }

    /// Opens (creating if needed) the file of `slot`.
    pub(super) fn open_slot(&self, slot: u32) -> Result<OwnedFd> {
        open_in(
            &self.slots,
            &self.path.join(SLOTS),
            &slot.to_string(),
            OFlags::CREATE | OFlags::RDONLY,
            self.file_mode,
        )
    }

    /// The path of `slot`'s file, for messages.
    pub(super) fn slot_path(&self, slot: u32) -> PathBuf {
        self.path.join(SLOTS).join(slot.to_string())
    }

    /// The names in `waiters/`.
    pub(super) fn waiter_names(&self) -> Result<Vec<String>> {
        let path = self.path.join(WAITERS);
        let dir = rfs::Dir::read_from(&self.waiters)
            .map_err(|e| Error::io("listing", &path, errno_io(e)))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| Error::io("listing", &path, errno_io(e)))?;
            if let Ok(name) = entry.file_name().to_str()
                && name != "."
                && name != ".."
            {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    /// Reads `pool.json`; `None` when the pool has none yet.
    pub(super) fn read_meta(&self) -> Result<Option<Meta>> {
        let path = self.path.join(META);
        let fd = match rfs::openat(
            &self.root,
            META,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => {
                return Err(location(&path, "it is a symbolic link; remove it"));
            }
            Err(e) => return Err(Error::io("opening", path, errno_io(e))),
        };
        let file = File::from(fd);
        if !file
            .metadata()
            .map_err(|e| Error::io("inspecting", &path, e))?
            .is_file()
        {
            return Err(location(
                &path,
                "it is not a regular file (a FIFO, device or socket was put in its place); remove it",
            ));
        }
        // A real pool.json is a few hundred bytes; never read a planted
        // giant whole.
        // Bytes, not a String: text that is not UTF-8 is a damaged
        // pool.json like any other, which the parser names.
        let mut text = Vec::new();
        file.take(META_MAX_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| Error::io("reading", &path, e))?;
        if text.len() as u64 > META_MAX_BYTES {
            return Err(Error::Corrupt {
                path,
                detail: format!(
                    "pool.json is larger than {META_MAX_BYTES} bytes; a pool's is a few hundred"
                ),
            });
        }
        let meta: Meta = serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
            path: path.clone(),
            detail: format!("pool.json: {e}"),
        })?;
        if meta.format != board::FORMAT {
            return Err(Error::Corrupt {
                path,
                detail: format!("format {}, this build reads {}", meta.format, board::FORMAT),
            });
        }
        if super::check_capacity(meta.capacity as u64).is_err() {
            return Err(Error::Corrupt {
                path,
                detail: format!(
                    "pool.json records capacity {}, outside 1 to {}",
                    meta.capacity,
                    board::MAX_CAPACITY
                ),
            });
        }
        Ok(Some(meta))
    }

    /// Replaces `pool.json` atomically.
    pub(super) fn write_meta(&self, meta: &Meta) -> Result<()> {
        let tmp = format!("{META}.{}.tmp", std::process::id());
        let _ = rfs::unlinkat(&self.root, tmp.as_str(), rfs::AtFlags::empty());
        let fd = self.open_root_file(&tmp, OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY)?;
        let mut file = File::from(fd);
        let text = serde_json::to_string_pretty(meta)
            .map_err(|e| Error::io("encoding", self.path.join(META), e));
        let written = text.and_then(|text| {
            file.write_all(text.as_bytes())
                .and_then(|_| file.write_all(b"\n"))
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::io("writing", self.path.join(&tmp), e))
        });
        let renamed = written.and_then(|()| {
            rfs::renameat(&self.root, tmp.as_str(), &self.root, META)
                .map_err(|e| Error::io("renaming", self.path.join(META), errno_io(e)))
        });
        if renamed.is_err() {
            // A full disk, say: leave no half-written file behind.
            let _ = rfs::unlinkat(&self.root, tmp.as_str(), rfs::AtFlags::empty());
        }
        renamed
    }

    /// Writes the files of a new pool: slot files, a fully allocated board,
    /// and `pool.json` last (its presence says the pool is complete).
    pub(super) fn create(&self, capacity: u32, group: Option<u32>) -> Result<()> {
        for slot in 0..capacity {
            self.open_slot(slot)?;
        }
        // A creator that died half-way may have left a state file: start over.
        let state = self.open_root_file(STATE, OFlags::CREATE | OFlags::RDWR | OFlags::TRUNC)?;
        Board::initialise(&File::from(state), &self.path.join(STATE), capacity)?;
        let meta = Meta {
            format: board::FORMAT,
            capacity,
            created_unix: super::now_unix_ns() / 1_000_000_000,
            group,
        };
        self.write_meta(&meta)
    }
}
