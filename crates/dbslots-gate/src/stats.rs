//! A gate's counters, and how other processes see them.
//!
//! # Implementation Details
//!
//! Counters are atomics in the gate's memory. A publisher task takes them
//! as one JSON document, [`GateReport`], every half second. The gates of a
//! `redis://` pool post it into the pool's Redis, so that every host sees
//! every gate (see `posting`). The gates of a file pool write it to
//! `NAME.json` in the pool's gate directory (see [`gates_dir`]) while
//! anything changed
//! (write to a temporary file, then rename, so a reader never sees half a
//! document). Next to it the gate holds an exclusive `flock` on `NAME.lock`
//! for as long as it lives: a reader that can take that lock knows the gate
//! is gone (SIGKILL leaves the files, never a live-looking gate), the same
//! rule as for holders and waiters of a file pool.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbslots_core::{Pool, PoolAddr, WAIT_BUCKETS_US, WaitHistogram};
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, flock};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::posting::{self, Posting};

/// Where the gates of a file pool publish their counters: `gates/` inside
/// the pool's directory, as `NAME.json` next to a `NAME.lock` the gate
/// holds while it lives. The gates of a `redis://` pool post their counters
/// into the pool's Redis instead, for every host to see (read them with
/// [`read_gates`]): for such a pool this is an error.
pub fn gates_dir(pool: &PoolAddr) -> Result<PathBuf, Error> {
    match pool {
        PoolAddr::Dir(dir) => Ok(dir.join("gates")),
        PoolAddr::Redis(_) => Err(Error::InvalidEndpoint {
            endpoint: pool.to_string(),
            reason: "the gates of a Redis pool publish into the pool's Redis, not a directory; read them with read_gates".into(),
        }),
        _ => Err(Error::InvalidEndpoint {
            endpoint: pool.to_string(),
            reason: "this kind of pool has no gate directory".into(),
        }),
    }
}

/// `s` with everything but ASCII letters, digits, `.`, `-` and `_` replaced
/// by `_`, and without a leading dot.
pub(crate) fn file_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// One gate's counters as other processes read them (`dbslots status`,
/// `serve`, `watch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GateReport {
    /// The gate's name (`--name`, by default its first listen address).
    pub name: String,
    /// The gate's process id.
    pub pid: u32,
    /// The gate's host: `DBSLOTS_HOST`, else the kernel's host name (the
    /// rule of [`dbslots_core::env::host_name`]); empty in reports of
    /// gates older than this field.
    #[serde(default)]
    pub host: String,
    /// The addresses it accepts clients on.
    pub listen: Vec<String>,
    /// The server it relays to.
    pub upstream: String,
    /// The pool (redacted address) and its capacity.
    pub pool: String,
    /// The pool's capacity when the gate last looked.
    pub capacity: u32,
    /// When the gate started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// When these figures were taken, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// Whether the gate is draining (stopped accepting after SIGTERM).
    pub draining: bool,
    /// Client connections accepted.
    pub accepted: u64,
    /// Clients that got a slot (and were relayed, or refused because the
    /// server could not be reached).
    pub admitted: u64,
    /// Clients waiting for a slot right now.
    pub queued: u64,
    /// Relayed connections open right now (each holds a slot).
    pub active: u64,
    /// Clients refused because no slot came within the queue timeout.
    pub queue_timeouts: u64,
    /// Clients that hung up while they waited.
    pub abandoned: u64,
    /// Clients refused because the server could not be reached.
    pub upstream_failures: u64,
    /// Clients refused for another reason: the gate stopped before their
    /// slot came, or the pool failed. With the other counters every
    /// accepted client is counted once: `accepted = admitted +
    /// queue_timeouts + abandoned + refused + queued`.
    #[serde(default)]
    pub refused: u64,
    /// Relayed connections closed because their slot's lease was lost
    /// (`redis://` pools: the gate was cut off from Redis or paused).
    #[serde(default)]
    pub leases_lost: u64,
    /// Connections closed by `--idle-timeout`.
    pub idle_closes: u64,
    /// Bytes relayed from clients to the server.
    pub bytes_from_clients: u64,
    /// Bytes relayed from the server to clients.
    pub bytes_to_clients: u64,
    /// How long admitted clients waited for their slot.
    pub wait_histogram: WaitHistogram,
}

/// The live counters of a gate.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub admitted: AtomicU64,
    pub queued: AtomicU64,
    pub active: AtomicU64,
    pub queue_timeouts: AtomicU64,
    pub abandoned: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub refused: AtomicU64,
    pub leases_lost: AtomicU64,
    pub idle_closes: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    wait_buckets: [AtomicU64; WAIT_BUCKETS_US.len() + 1],
    wait_sum_us: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn drop_one(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

impl Counters {
    /// Records one admitted client's wait (the pools' buckets, so the
    /// histograms line up).
    pub(crate) fn record_wait(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.wait_buckets[WaitHistogram::bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.wait_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn histogram(&self) -> WaitHistogram {
        WaitHistogram::from_counts(
            self.wait_buckets
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            self.wait_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// What a report says about the gate itself (fixed at start).
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub name: String,
    pub host: String,
    pub listen: Vec<String>,
    pub upstream: String,
    pub pool: String,
    pub started_unix_ms: u64,
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Counters {
    pub(crate) fn report(&self, id: &Identity, capacity: u32, draining: bool) -> GateReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GateReport {
            name: id.name.clone(),
            pid: std::process::id(),
            host: id.host.clone(),
            listen: id.listen.clone(),
            upstream: id.upstream.clone(),
            pool: id.pool.clone(),
            capacity,
            started_unix_ms: id.started_unix_ms,
            updated_unix_ms: now_unix_ms(),
            draining,
            accepted: get(&self.accepted),
            admitted: get(&self.admitted),
            queued: get(&self.queued),
            active: get(&self.active),
            queue_timeouts: get(&self.queue_timeouts),
            abandoned: get(&self.abandoned),
            upstream_failures: get(&self.upstream_failures),
            refused: get(&self.refused),
            leases_lost: get(&self.leases_lost),
            idle_closes: get(&self.idle_closes),
            bytes_from_clients: get(&self.bytes_from_clients),
            bytes_to_clients: get(&self.bytes_to_clients),
            wait_histogram: self.histogram(),
        }
    }
}

/// Where a running gate publishes its counters.
pub(crate) enum Publication {
    /// Files in a directory (a file pool, or `GateOptions::stats_dir`).
    Files(FilePublication),
    /// Reports in the gate's Redis pool.
    Redis(Posting),
}

/// Why a gate cannot publish under its name, naming the gate that holds
/// it where its report says who that is (the same words for both kinds of
/// pool).
pub(crate) fn name_taken(holder: Option<&GateReport>) -> String {
    let advice = "give this one another name (GateOptions::name)";
    match holder {
        Some(h) => format!(
            "another running gate publishes under this name: pid {} on host {}, listening on {}, started {} s ago; {advice}, or stop that one",
            h.pid,
            h.host,
            h.listen.join(" "),
            now_unix_ms().saturating_sub(h.started_unix_ms) / 1000,
        ),
        None => format!("another running gate publishes under this name; {advice}"),
    }
}

/// The files a running gate publishes; removed on drop.
///
/// Everything goes through a descriptor of the directory opened without
/// following a symlink, and each file is opened `O_NOFOLLOW | O_NONBLOCK`
/// and must be a regular file: anyone who can write the directory could
/// plant a symlink (to make the gate write or delete elsewhere) or a FIFO
/// (to hang it), as inside a pool's own directory.
pub(crate) struct FilePublication {
    dir: OwnedFd,
    name: String,
    _lock: File,
}

impl FilePublication {
    /// Creates `dir` if needed and takes `NAME.lock`; an error when another
    /// live gate publishes under the same name.
    pub(crate) fn claim(dir: &Path, name: &str) -> Result<FilePublication, Error> {
        let io_err = |what: &str, path: &Path, e: io::Error| Error::Publish {
            path: path.to_path_buf(),
            reason: format!("{what}: {e}"),
        };
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o2770)
            .create(dir)
            .map_err(|e| io_err("cannot create the directory", dir, e))?;
        let dir_fd = open_dir(dir).map_err(|e| io_err("cannot open the directory", dir, e))?;
        let lock_name = format!("{name}.lock");
        let lock = open_file_in(&dir_fd, &lock_name, true)
            .map_err(|e| io_err("cannot open the lock file", &dir.join(&lock_name), e))?;
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            // The holder's report, if it has written one yet.
            let holder = read_report(&dir_fd, &format!("{name}.json"));
            return Err(Error::Publish {
                path: dir.join(lock_name),
                reason: name_taken(holder.as_ref()),
            });
        }
        Ok(FilePublication {
            dir: dir_fd,
            name: name.to_string(),
            _lock: lock,
        })
    }

    /// Writes `report` atomically (temporary file, then rename).
    pub(crate) fn write(&self, report: &GateReport) -> io::Result<()> {
        let tmp = format!(".{}.json.tmp", self.name);
        let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
        // One write: serde writes token by token, a syscall each unbuffered.
        let mut doc = serde_json::to_vec(report)?;
        doc.push(b'\n');
        open_file_in(&self.dir, &tmp, true)?.write_all(&doc)?;
        rustix::fs::renameat(
            &self.dir,
            tmp.as_str(),
            &self.dir,
            format!("{}.json", self.name),
        )?;
        Ok(())
    }
}

impl Drop for FilePublication {
    fn drop(&mut self) {
        for suffix in ["json", "lock"] {
            let file = format!("{}.{suffix}", self.name);
            let _ = rustix::fs::unlinkat(&self.dir, file.as_str(), AtFlags::empty());
        }
    }
}

/// Opens the directory `dir`, not following a symlink in its last component.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        // O_NOFOLLOW on a symlink to a directory gives ENOTDIR.
        Errno::NOTDIR | Errno::LOOP => io::Error::other(
            "it is not a directory (a symbolic link or a file is in its place); remove it, or give the real directory",
        ),
        e => e.into(),
    })
}

/// Opens the regular file `name` in `dir` (creating it with `create`),
/// never following a symlink and never blocking on a FIFO.
fn open_file_in(dir: &OwnedFd, name: &str, create: bool) -> io::Result<File> {
    let mut flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    flags |= if create {
        OFlags::RDWR | OFlags::CREATE
    } else {
        OFlags::RDONLY
    };
    let file = File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::from_raw_mode(0o660),
    )?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(
            "it is not a regular file (a FIFO, device or socket is in its place); remove it",
        ));
    }
    Ok(file)
}

/// The most a gate's report file may hold; a real one is about 1 KiB.
const REPORT_MAX_BYTES: u64 = 64 * 1024;

/// The report `name` in `dir`, if it is a regular file (not a symlink)
/// holding a valid report no larger than [`REPORT_MAX_BYTES`].
fn read_report(dir: &OwnedFd, name: &str) -> Option<GateReport> {
    use std::io::Read;
    let file = open_file_in(dir, name, false).ok()?;
    let mut doc = Vec::new();
    file.take(REPORT_MAX_BYTES + 1).read_to_end(&mut doc).ok()?;
    if doc.len() as u64 > REPORT_MAX_BYTES {
        return None;
    }
    serde_json::from_slice(&doc).ok()
}

/// The live gates of `pool`, by name.
///
/// For a `redis://` pool: every live gate of the pool, on every host, read
/// from the pool's Redis in one round trip (reports of gates that were
/// killed lapse within 5 s, and are deleted on the way). This blocks the
/// calling thread: async code calls it through `spawn_blocking`.
///
/// For a file pool: the gates publishing in its [`gates_dir`]. Reads only:
/// files of gates that died are skipped, not removed.
///
/// ```no_run
/// use dbslots_core::{Pool, PoolOptions};
///
/// let pool = Pool::open("redis://redis.internal:6379/0?pool=orders", PoolOptions::new())?;
/// for gate in dbslots_gate::read_gates(&pool)? {
///     println!("{} on {} (pid {}): {} active", gate.name, gate.host, gate.pid, gate.active);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_gates(pool: &Pool) -> Result<Vec<GateReport>, Error> {
    match pool.addr() {
        PoolAddr::Redis(_) => posting::read(pool),
        addr => read_gates_in(&gates_dir(addr)?),
    }
}

/// The live gates publishing in `dir`, by name.
pub fn read_gates_in(dir: &Path) -> Result<Vec<GateReport>, Error> {
    let unreadable = |e: io::Error| Error::Publish {
        path: dir.to_path_buf(),
        reason: format!("cannot list the gates: {e}"),
    };
    let dir_fd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unreadable(e)),
    };
    let entries = rustix::fs::Dir::read_from(&dir_fd).map_err(|e| unreadable(e.into()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(file_name) = entry.file_name().to_str() else {
            continue;
        };
        let Some(name) = file_name.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let Ok(lock) = open_file_in(&dir_fd, &format!("{name}.lock"), false) else {
            continue;
        };
        if flock(&lock, FlockOperation::NonBlockingLockShared).is_ok() {
            // Nobody holds it: the gate is gone.
            continue;
        }
        if let Some(report) = read_report(&dir_fd, file_name) {
            out.push(report);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            name: "g1".into(),
            host: "h1".into(),
            listen: vec!["127.0.0.1:1".into()],
            upstream: "127.0.0.1:2".into(),
            pool: "/p".into(),
            started_unix_ms: 1,
        }
    }

    #[test]
    fn a_live_gate_is_read_back_and_a_dead_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let c = Counters::default();
        bump(&c.accepted);
        c.record_wait(Duration::from_millis(3));
        c.record_wait(Duration::from_secs(700));
        let publication = FilePublication::claim(dir.path(), "g1").unwrap();
        publication.write(&c.report(&identity(), 9, false)).unwrap();
        let gates = read_gates_in(dir.path()).unwrap();
        assert_eq!(gates.len(), 1);
        assert_eq!(gates[0].accepted, 1);
        assert_eq!(gates[0].capacity, 9);
        assert_eq!(gates[0].host, "h1");
        assert_eq!(gates[0].wait_histogram.count, 2);
        assert_eq!(gates[0].wait_histogram.counts[3], 1);
        assert_eq!(gates[0].wait_histogram.counts[10], 1);
        assert!(
            FilePublication::claim(dir.path(), "g1").is_err(),
            "two live gates under one name"
        );
        // A gate that died without cleaning up: files there, lock free.
        let stale = dir.path().join("g0.json");
        std::fs::copy(dir.path().join("g1.json"), &stale).unwrap();
        File::create(dir.path().join("g0.lock")).unwrap();
        assert_eq!(read_gates_in(dir.path()).unwrap().len(), 1);
        drop(publication);
        assert!(read_gates_in(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn planted_report_files_are_skipped_without_hanging_or_filling_memory() {
        let dir = tempfile::tempdir().unwrap();
        let c = Counters::default();
        let publication = FilePublication::claim(dir.path(), "g1").unwrap();
        publication.write(&c.report(&identity(), 9, false)).unwrap();
        // Each planted name has a held lock, so it looks like a live gate.
        let mut held = Vec::new();
        for name in ["zero", "fifo", "link", "huge"] {
            let lock = File::create(dir.path().join(format!("{name}.lock"))).unwrap();
            flock(&lock, FlockOperation::NonBlockingLockExclusive).unwrap();
            held.push(lock);
        }
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.json")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo.json"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // A symlink to a valid report elsewhere is not followed either.
        std::os::unix::fs::symlink(dir.path().join("g1.json"), dir.path().join("link.json"))
            .unwrap();
        // A FIFO in place of a lock file.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifolock.lock"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::copy(dir.path().join("g1.json"), dir.path().join("fifolock.json")).unwrap();
        // A valid report padded past the limit.
        let mut huge = serde_json::to_vec(&c.report(&identity(), 9, false)).unwrap();
        huge.extend(std::iter::repeat_n(b' ', REPORT_MAX_BYTES as usize));
        std::fs::write(dir.path().join("huge.json"), huge).unwrap();

        let gates = read_gates_in(dir.path()).unwrap();
        assert_eq!(gates.len(), 1, "only the real gate: {gates:?}");
        assert_eq!(gates[0].name, "g1");

        // A name clash under a planted name reads the holder the same way.
        let err = FilePublication::claim(dir.path(), "zero").err().unwrap();
        assert!(
            err.to_string()
                .contains("another running gate publishes under this name"),
            "{err}"
        );
    }

    #[test]
    fn a_gates_directory_planted_as_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let gates = dir.path().join("gates");
        std::os::unix::fs::symlink(&elsewhere, &gates).unwrap();
        let err = FilePublication::claim(&gates, "g1").err().unwrap();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert!(read_gates_in(&gates).is_err());
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "nothing written through the link"
        );
    }

    #[test]
    fn a_report_of_a_gate_without_a_host_field_still_reads() {
        let c = Counters::default();
        let mut doc = serde_json::to_value(c.report(&identity(), 1, false)).unwrap();
        assert_eq!(doc["host"], "h1");
        doc.as_object_mut().unwrap().remove("host");
        let old: GateReport = serde_json::from_value(doc).unwrap();
        assert_eq!(old.host, "");
    }

    #[test]
    fn names_become_safe_file_names() {
        assert_eq!(file_safe("127.0.0.1:3307"), "127.0.0.1_3307");
        assert_eq!(file_safe("unix:/run/x.sock"), "unix__run_x.sock");
        assert_eq!(file_safe("../x"), "_.._x");
    }
}
