//! Which file a job is about, so that a changed file is never mixed with
//! the rows of the one that was enqueued.
//!
//! # Implementation Details
//!
//! [`FileIdentity`] is taken at enqueue: device, inode, size, modification
//! time (nanoseconds) and an XXH3-128 hash of the first and last
//! [`EDGE_BYTES`] of the content. A reader checks it before its first batch
//! and on every resume; on a resume it also re-hashes the content up to the
//! checkpoint and compares it with the hash the last batch committed (see
//! [`crate::record`]), so an edit of the same size with the modification
//! time put back is caught as well. While reading, the open file's size and
//! modification time are checked before every batch and at the end of the
//! file, which must come at the size recorded.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use xxhash_rust::xxh3::Xxh3Default as Xxh3;

/// Bytes hashed at each end of the file.
pub(crate) const EDGE_BYTES: u64 = 64 * 1024;

/// A file as it was when it was enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub edges_hash: u128,
}

impl FileIdentity {
    /// The identity of an open file.
    pub fn of(file: &File) -> io::Result<FileIdentity> {
        let meta = file.metadata()?;
        let size = meta.len();
        let mut hash = Xxh3::new();
        let mut buf = vec![0u8; EDGE_BYTES as usize];
        let head = read_at(file, &mut buf, 0)?;
        hash.update(&buf[..head]);
        if size > EDGE_BYTES {
            let start = size.saturating_sub(EDGE_BYTES).max(EDGE_BYTES);
            let tail = read_at(file, &mut buf, start)?;
            hash.update(&buf[..tail]);
        }
        Ok(FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size,
            mtime_ns: mtime_ns(&meta),
            edges_hash: hash.digest128(),
        })
    }

    /// What differs between `self` (recorded) and `now`, in words; `None`
    /// when they are the same file with the same content at both ends.
    pub fn difference(&self, now: &FileIdentity) -> Option<String> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            return Some(format!(
                "it was replaced by another file (device {} inode {} was enqueued, device {} inode {} is there now)",
                self.dev, self.ino, now.dev, now.ino
            ));
        }
        if self.size != now.size {
            return Some(format!(
                "its size changed from {} to {} bytes",
                self.size, now.size
            ));
        }
        if self.mtime_ns != now.mtime_ns {
            return Some(format!(
                "it was modified after it was enqueued (modification time {} then, {} now)",
                format_ns(self.mtime_ns),
                format_ns(now.mtime_ns)
            ));
        }
        if self.edges_hash != now.edges_hash {
            return Some(format!(
                "the content of its first or last {} KiB changed (same size and modification time)",
                EDGE_BYTES / 1024
            ));
        }
        None
    }

    /// Whether size and modification time of `file` still match.
    pub fn still_matches(&self, file: &File) -> io::Result<Option<String>> {
        let meta = file.metadata()?;
        if meta.len() != self.size {
            return Ok(Some(format!(
                "its size changed from {} to {} bytes while it was being read",
                self.size,
                meta.len()
            )));
        }
        if mtime_ns(&meta) != self.mtime_ns {
            return Ok(Some("it was modified while it was being read".into()));
        }
        Ok(None)
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

fn format_ns(ns: i64) -> String {
    let seconds = ns.div_euclid(1_000_000_000);
    match jiff::Timestamp::from_second(seconds) {
        Ok(t) => format!(
            "{} UTC + {} ns",
            t.strftime("%Y-%m-%d %H:%M:%S"),
            ns.rem_euclid(1_000_000_000)
        ),
        Err(_) => format!("{ns} ns"),
    }
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A 128-bit hash as 32 hexadecimal digits (how the job row stores it).
pub(crate) fn hex(hash: u128) -> String {
    format!("{hash:032x}")
}

/// The inverse of [`hex`].
pub(crate) fn parse_hex(text: &str) -> Option<u128> {
    u128::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn says_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        let mut data = vec![b'a'; 200_000];
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let then = FileIdentity::of(&file).unwrap();
        assert_eq!(then.difference(&FileIdentity::of(&file).unwrap()), None);
        let modified = file.metadata().unwrap().modified().unwrap();
        // Same size, an edit at the end, the modification time put back.
        data[199_999] = b'b';
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let now = FileIdentity::of(&File::open(&path).unwrap()).unwrap();
        assert!(then.difference(&now).unwrap().contains("last 64 KiB"));
        std::fs::write(&path, b"short").unwrap();
        let now = FileIdentity::of(&File::open(&path).unwrap()).unwrap();
        assert!(
            then.difference(&now)
                .unwrap()
                .contains("size changed from 200000 to 5")
        );
        assert_eq!(parse_hex(&hex(then.edges_hash)), Some(then.edges_hash));
    }
}
