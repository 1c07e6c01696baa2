//! One processor per lock file.
//!
//! # Implementation Details
//!
//! The lock is an exclusive `flock` (through `fd-lock`) on an open file
//! description of the lock file, so it belongs to this process: the kernel
//! frees it when the process ends, SIGKILL included, and no stale lock file
//! ever needs cleaning up. The holder writes its pid into the file so that a
//! second processor can name it. A file that holds anything but a pid (a
//! data file given as the lock file by mistake) is refused and left as it
//! is, never emptied.
//!
//! `fd-lock`'s guard borrows its lock, which an owned handle cannot keep. The
//! guard is therefore forgotten once the lock is taken: the `flock` stays
//! until the descriptor is closed, which is exactly when [`InstanceLock`] is
//! dropped (or the process ends). The file is opened with `O_NOFOLLOW` and
//! mode 0600, so a planted symlink cannot redirect it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Proof that this process is the only processor using a lock file.
///
/// Dropping it frees the lock; so does the end of the process, however it
/// ends.
#[derive(Debug)]
pub struct InstanceLock {
    path: PathBuf,
    lock: fd_lock::RwLock<File>,
}

impl InstanceLock {
    /// Takes the lock on `path` (creating the file) without waiting, and
    /// writes this process's pid into it.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] with the holder's pid when another process
    /// (or another `InstanceLock` in this one) holds it; [`Error::LockFile`]
    /// when the file cannot be opened or written.
    pub fn acquire(path: &Path) -> Result<InstanceLock> {
        let lock_error = |source: io::Error| Error::LockFile {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| lock_error(explain_symlink(path, e)))?;
        let mut lock = fd_lock::RwLock::new(file);
        let taken = match lock.try_write() {
            Ok(mut guard) => {
                let pid = std::process::id();
                let written = check_is_a_lock_file(&mut guard)
                    .and_then(|()| guard.set_len(0))
                    .and_then(|()| guard.seek(SeekFrom::Start(0)))
                    .and_then(|_| writeln!(*guard, "{pid}"))
                    .and_then(|()| guard.sync_data());
                // See the module documentation: the lock lives as long as the
                // descriptor in `lock`, not as long as the guard.
                std::mem::forget(guard);
                Ok(written)
            }
            Err(e) => Err(e),
        };
        match taken {
            Ok(Ok(())) => {
                tracing::debug!(path = %path.display(), pid = std::process::id(), "lock file taken");
                Ok(InstanceLock {
                    path: path.to_path_buf(),
                    lock,
                })
            }
            // Dropping `lock` closes the descriptor, which frees the lock.
            Ok(Err(e)) => Err(lock_error(e)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Error::AlreadyRunning {
                path: path.to_path_buf(),
                pid: read_pid(path),
            }),
            Err(e) => Err(lock_error(e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Still locked here: empty the file so that it names nobody, then
        // the descriptor closes and the kernel frees the lock.
        if let Ok(guard) = self.lock.try_write() {
            let _ = guard.set_len(0);
        }
    }
}

/// The most a lock file holds: a pid and a line break.
const MAX_LOCK_FILE_BYTES: u64 = 32;

/// Checks, before the file is emptied, that it is a lock file: a regular
/// file that is empty (its last holder let go) or holds a pid (its last
/// holder was killed). Anything else (a data file given by mistake, say)
/// is left as it is.
fn check_is_a_lock_file(file: &mut File) -> io::Result<()> {
    let not_a_lock_file = |what: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it is not a lock file: {what} (a file given by mistake?), so it was left as it is"
            ),
        ))
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return not_a_lock_file("it is not a regular file");
    }
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    (&mut *file)
        .take(MAX_LOCK_FILE_BYTES + 1)
        .read_to_end(&mut text)?;
    let a_pid = text.iter().all(|b| b.is_ascii_digit() || *b == b'\n');
    if meta.len() > MAX_LOCK_FILE_BYTES || !a_pid {
        return not_a_lock_file("it holds something other than a processor's pid");
    }
    Ok(())
}

/// `O_NOFOLLOW` refuses a symlink with `ELOOP`, "too many levels of
/// symbolic links": for a lock file that is one symlink, say so.
fn explain_symlink(path: &Path, e: io::Error) -> io::Error {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if e.raw_os_error() == Some(libc::ELOOP) && is_link {
        io::Error::new(
            e.kind(),
            "it is a symbolic link, and a lock file is never opened through one (it could point the processor's writes at another file): remove it",
        )
    } else {
        e
    }
}

/// The pid a holder wrote into `path`, if it is there yet.
fn read_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The lock file used when none is given: one per database on this host, in
/// the user's private runtime directory (never a predictable name in a
/// world-writable directory).
///
/// `DIR/import-DATABASE-HASH.lock`, where DIR is the parent of
/// [`dbslots_core::default_pool_dir`] and HASH identifies the server and
/// database of `url`, so processors of different queues do not exclude each
/// other.
///
/// # Errors
///
/// [`Error::InvalidUrl`] for a URL that cannot be parsed; [`Error::Pool`]
/// when no private directory can be found or created.
pub fn default_lock_path(url: &str) -> Result<PathBuf> {
    let server = dbslots_mysql::ServerUrl::parse(url).map_err(|e| Error::InvalidUrl {
        url: dbslots_core::redact(url),
        reason: match e {
            dbslots_mysql::Error::InvalidUrl { reason, .. } => reason,
            other => other.to_string(),
        },
    })?;
    let opts = server.opts();
    let db = opts.db_name().unwrap_or("");
    let key = match opts.socket() {
        Some(socket) => format!("{socket}/{db}"),
        None => format!("{}:{}/{db}", opts.ip_or_hostname(), opts.tcp_port()),
    };
    let pool_dir = dbslots_core::default_pool_dir()?;
    let dir = pool_dir.parent().unwrap_or(&pool_dir);
    let name: String = db
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    Ok(dir.join(format!("import-{name}-{:016x}.lock", fnv1a(key.as_bytes()))))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_first_holder_and_drop_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("import.lock");
        let first = InstanceLock::acquire(&path).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
        match InstanceLock::acquire(&path) {
            Err(Error::AlreadyRunning { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        drop(first);
        assert_eq!(read_pid(&path), None);
        let again = InstanceLock::acquire(&path).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn leaves_a_file_that_is_no_lock_file_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        match InstanceLock::acquire(&path) {
            Err(e @ Error::LockFile { .. }) => {
                assert!(e.to_string().contains("not a lock file"), "{e}")
            }
            other => panic!("expected LockFile, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a,b\n1,2\n");
        // What a killed holder leaves behind is taken over.
        std::fs::write(&path, "12345\n").unwrap();
        let lock = InstanceLock::acquire(&path).unwrap();
        assert_eq!(read_pid(&path), Some(std::process::id()));
        drop(lock);
    }

    #[test]
    fn refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("import.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        match InstanceLock::acquire(&link) {
            Err(e @ Error::LockFile { .. }) => {
                assert!(e.to_string().contains("is a symbolic link"), "{e}")
            }
            other => panic!("expected LockFile, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn default_path_differs_per_database() {
        let a = default_lock_path("mysql://u:p@db1:3306/readings").unwrap();
        let b = default_lock_path("mysql://u:p@db1:3306/other").unwrap();
        let c = default_lock_path("mysql://u:secret@db1:3306/readings").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, c);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("import-readings-"), "{name}");
    }
}
