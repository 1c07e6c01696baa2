//! The file pool under everyday faults: stopped waiters, shrinks, hostile
//! files, full disks, many slots, forks, odd timeouts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbslots_core::{Error, Pool, PoolOptions};

use crate::support::{Holder, Outcome, holder_exe, pool_dir};

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill on a child of this test that is not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

fn wait_for_waiters(pool: &Pool, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.stats().expect("stats").waiting < n {
        assert!(Instant::now() < deadline, "{n} waiters never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_stopped_waiter_delays_nobody_and_keeps_its_place() {
    let _serial = crate::support::timing_sensitive();
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    for stopped_before_release in [Duration::ZERO, Duration::from_millis(200)] {
        let held = pool.blocking_acquire().expect("fill");
        // A queues first (the head), then is stopped; B and C queue behind.
        let mut a = Holder::spawn(&addr, None);
        wait_for_waiters(&pool, 1);
        signal(a.child.id(), libc::SIGSTOP);
        let mut b = Holder::spawn(&addr, None);
        wait_for_waiters(&pool, 2);
        let mut c = Holder::spawn(&addr, None);
        wait_for_waiters(&pool, 3);
        std::thread::sleep(stopped_before_release);
        let freed = Instant::now();
        drop(held);
        assert_eq!(b.outcome(), Outcome::Held(0));
        let delay = freed.elapsed();
        eprintln!(
            "stopped head ({stopped_before_release:?} before the release): the next waiter got the slot after {delay:?}"
        );
        assert!(
            delay < Duration::from_millis(100),
            "a stopped waiter delayed the next one by {delay:?}"
        );
        // A resumes: it kept its place, so it goes before C.
        signal(a.child.id(), libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(50));
        b.release();
        assert_eq!(a.outcome(), Outcome::Held(0));
        a.release();
        assert_eq!(c.outcome(), Outcome::Held(0));
        c.release();
    }
}

#[test]
fn a_shrink_admits_nobody_until_the_holders_fit() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(4)).expect("create");
    let mut holders: Vec<(u32, Holder)> = (0..4)
        .map(|_| {
            let mut h = Holder::spawn(&addr, None);
            match h.outcome() {
                Outcome::Held(s) => (s, h),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    holders.sort_by_key(|(s, _)| *s);
    assert_eq!(pool.resize(2).expect("shrink"), 4);
    let stats = pool.stats().expect("stats");
    assert_eq!(
        (stats.capacity, stats.active),
        (2, 4),
        "every holder counted"
    );
    assert!(
        stats.active > stats.capacity,
        "over capacity while draining"
    );
    // Slots 0 and 1 free up; 2 and 3 are still held: the pool is full.
    let mut high = holders.split_off(2);
    for (_, h) in holders {
        h.release();
    }
    let mut waiter = Holder::spawn(&addr, None);
    wait_for_waiters(&pool, 1);
    assert!(
        pool.try_acquire().expect("try").is_none(),
        "nobody new while 2 of 2 are held"
    );
    std::thread::sleep(Duration::from_millis(300));
    let stats = pool.stats().expect("stats");
    assert_eq!(
        (stats.active, stats.waiting),
        (2, 1),
        "the waiter must still wait"
    );
    // One of the slots above the capacity frees: one holder fits.
    high.remove(0).1.release();
    assert!(matches!(waiter.outcome(), Outcome::Held(s) if s < 2));
    let stats = pool.stats().expect("stats");
    assert_eq!(stats.active, 2);
    assert!(pool.try_acquire().expect("try").is_none());
    high.remove(0).1.release();
    waiter.release();
    // Drained: both slots of the new capacity are usable again.
    let a = pool.try_acquire().expect("try").expect("first");
    let b = pool.try_acquire().expect("try").expect("second");
    assert!(a.index() < 2 && b.index() < 2);
    assert!(pool.try_acquire().expect("try").is_none());
}

/// Everything outside the pool that a planted symlink could point at.
struct Bait {
    dir: tempfile::TempDir,
}

impl Bait {
    fn new() -> Bait {
        let dir = tempfile::tempdir().expect("bait dir");
        std::fs::write(dir.path().join("precious"), b"precious").expect("bait file");
        Bait { dir }
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("precious")
    }

    /// Nothing was created, removed, changed or locked out there.
    fn untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .expect("bait dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            ["precious"],
            "files appeared or vanished outside the pool"
        );
        assert_eq!(std::fs::read(self.file()).expect("bait"), b"precious");
        let mode = std::fs::metadata(self.file())
            .expect("bait")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "mode of the bait changed");
    }
}

#[test]
fn symlinks_at_every_component_are_refused_and_nothing_outside_is_touched() {
    for component in [
        "slots",
        "waiters",
        "state",
        "pool.json",
        "init.lock",
        "slots/0",
    ] {
        let (_dir, addr) = pool_dir();
        let root = Path::new(&addr);
        let pool = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
        let waiter_pool = pool.clone();
        let bait = Bait::new();
        std::fs::set_permissions(bait.file(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let target = if component.contains('/') || !["slots", "waiters"].contains(&component) {
            bait.file()
        } else {
            bait.dir.path().to_path_buf()
        };
        let path = root.join(component);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove dir");
        } else {
            std::fs::remove_file(&path).expect("remove file");
        }
        std::os::unix::fs::symlink(&target, &path).expect("plant symlink");

        // Every way in, through a handle opened before the symlink was
        // planted and through a fresh one: opening, creating, taking,
        // queueing, status, resize. The old handle's directories may be
        // gone (an error is fine); the fresh one must say what is wrong.
        let ops = |p: &Pool| -> Vec<Option<String>> {
            vec![
                p.try_acquire().map(|_| ()).err().map(|e| e.to_string()),
                p.blocking_acquire_timeout(Duration::from_millis(50))
                    .map(|_| ())
                    .err()
                    .map(|e| e.to_string()),
                p.stats().map(|_| ()).err().map(|e| e.to_string()),
                p.resize(3).map(|_| ()).err().map(|e| e.to_string()),
            ]
        };
        let mut errors = vec![
            Pool::open(&addr, PoolOptions::new().capacity(2))
                .err()
                .map(|e| e.to_string()),
        ];
        match Pool::open(&addr, PoolOptions::new()) {
            Ok(fresh) => errors.extend(ops(&fresh)),
            Err(e) => errors.push(Some(e.to_string())),
        }
        let _ = ops(&pool);
        let _ = ops(&waiter_pool);
        let refused: Vec<String> = errors.into_iter().flatten().collect();
        assert!(
            !refused.is_empty(),
            "{component}: nothing noticed the symlink"
        );
        assert!(
            refused
                .iter()
                .all(|e| e.contains("symbolic link") || e.contains("not a directory")),
            "{component}: unclear errors {refused:?}"
        );
        bait.untouched();
    }
}

#[test]
fn fifos_planted_in_place_of_pool_files_are_refused_without_blocking() {
    for component in ["state", "pool.json", "init.lock", "slots/0", "slots/1"] {
        let (_dir, addr) = pool_dir();
        let root = Path::new(&addr);
        drop(Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create"));
        let path = root.join(component);
        let _ = std::fs::remove_file(&path);
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");

        // Opening a FIFO for reading blocks until a writer comes: run every
        // way in on a thread, and fail (not hang) if it does not return.
        let (tx, rx) = std::sync::mpsc::channel();
        let addr2 = addr.clone();
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            match Pool::open(&addr2, PoolOptions::new()) {
                Err(e) => errors.push(e.to_string()),
                Ok(p) => {
                    // Take both slots: one of them is the planted one.
                    let held: Vec<_> = (0..2)
                        .map(|_| p.try_acquire())
                        .filter_map(|r| r.err())
                        .map(|e| e.to_string())
                        .collect();
                    errors.extend(held);
                    errors.extend(p.stats().err().map(|e| e.to_string()));
                }
            }
            let _ = tx.send(errors);
        });
        let errors = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{component}: a FIFO in its place blocked the pool"));
        // init.lock is only opened while a pool is created; the rest on
        // every open or acquisition.
        assert!(
            !errors.is_empty() || component == "init.lock",
            "{component}: nothing noticed the FIFO"
        );
        assert!(
            errors.iter().all(|e| e.contains("not a regular file")),
            "{component}: unclear errors {errors:?}"
        );
    }
}

#[test]
fn a_head_word_past_the_queue_is_repaired_not_followed() {
    use std::os::unix::fs::FileExt;
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let state = std::fs::OpenOptions::new()
        .write(true)
        .open(Path::new(&addr).join("state"))
        .expect("state");
    // docs/protocol.md: the head word is the u32 at offset 64.
    let plant = |head: u32| {
        state
            .write_all_at(&head.to_le_bytes(), 64)
            .expect("write head")
    };
    for head in [4097, 5000, u32::MAX] {
        plant(head);
        // A release wakes the head; a newcomer asks whether anybody queues.
        drop(pool.try_acquire().expect("try").expect("a free slot"));
        plant(head);
        let held = pool
            .blocking_acquire_timeout(Duration::from_secs(5))
            .expect("a free slot, whatever the head word says");
        plant(head);
        let waiter_pool = pool.clone();
        let waiter = std::thread::spawn(move || {
            waiter_pool
                .blocking_acquire_timeout(Duration::from_secs(20))
                .map(drop)
        });
        wait_for_waiters(&pool, 1);
        plant(head);
        drop(held);
        waiter
            .join()
            .expect("waiter thread")
            .unwrap_or_else(|e| panic!("head {head}: the waiter was not served: {e}"));
    }
}

#[test]
fn a_pool_directory_others_could_have_prepared_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    std::fs::create_dir(&pool).expect("dir");
    std::fs::set_permissions(&pool, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = Pool::open(pool.as_path(), PoolOptions::new().capacity(1))
        .expect_err("world-writable directory")
        .to_string();
    assert!(
        err.contains("writable by every user") && err.contains("0777"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&pool).expect("dir").next().is_none(),
        "nothing created"
    );

    if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(&pool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // SAFETY: chown on a path we own; 65534 is "nobody" on Debian.
        let c = std::ffi::CString::new(pool.to_str().expect("utf-8")).expect("path");
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        let err = Pool::open(pool.as_path(), PoolOptions::new().capacity(1))
            .expect_err("foreign-owned directory")
            .to_string();
        assert!(
            err.contains("owned by") && err.contains("65534") && err.contains("0755"),
            "{err}"
        );
        assert!(
            std::fs::read_dir(&pool).expect("dir").next().is_none(),
            "nothing created"
        );
    } else {
        eprintln!("skipping the foreign-owner half: needs root to chown");
    }
}

/// A small tmpfs of its own, unmounted on drop (mounting needs root).
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    /// Mounts a tmpfs of `size` (`mount -o size=`); `None`, saying so,
    /// when not root.
    fn mount(size: &str) -> Option<TinyFs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount a tmpfs of {size}");
        Some(TinyFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        // Lazily (`-l`): when a test fails, a process of it may still have
        // files open there; the mount must not outlive the test all the
        // same.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_filesystem_fails_the_creation_cleanly() {
    let Some(tiny) = TinyFs::mount("128k") else {
        return;
    };
    let mnt = tiny.path();
    let err = Pool::open(mnt.join("pool").as_path(), PoolOptions::new().capacity(4))
        .expect_err("the board does not fit in 128 KiB")
        .to_string();
    assert!(err.contains("filesystem is full"), "{err}");
}

#[test]
fn a_resize_on_a_full_filesystem_fails_cleanly_and_changes_nothing() {
    let Some(tiny) = TinyFs::mount("1m") else {
        return;
    };
    let mnt = tiny.path();
    let path = mnt.join("pool");
    let pool = Pool::open(path.as_path(), PoolOptions::new().capacity(4)).expect("create");
    // Fill what is left: the new pool.json finds no room.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    let err = pool
        .resize(8)
        .expect_err("no room for pool.json")
        .to_string();
    assert!(
        err.contains("No space left on device")
            && err.contains("the filesystem is full (or the quota used up): free some space"),
        "{err}"
    );
    assert_eq!(pool.capacity(), 4, "the board kept the old capacity");
    let leftovers: Vec<String> = std::fs::read_dir(&path)
        .expect("the pool directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let reopened = Pool::open(path.as_path(), PoolOptions::new()).expect("open");
    assert_eq!(reopened.capacity(), 4, "pool.json kept the old capacity");
    // With room again the same resize goes through.
    std::fs::remove_file(&filler).expect("remove the filler");
    assert_eq!(pool.resize(8).expect("resize"), 4);
    assert_eq!(reopened.capacity(), 8);
}

/// A holder process limited to the default soft limit of 1024 open files.
fn spawn_limited(addr: &str, args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new(holder_exe());
    cmd.arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn holder")
}

#[test]
fn more_than_1024_slots_work_under_the_default_open_file_limit() {
    let _serial = crate::support::timing_sensitive();
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1100)).expect("create");
    // Two processes hold 550 slots each: 1100 held at once.
    let mut many: Vec<_> = (0..2)
        .map(|_| {
            let mut c = spawn_limited(&addr, &["many", "550"]);
            let mut out = BufReader::new(c.stdout.take().expect("stdout"));
            let mut line = String::new();
            out.read_line(&mut line).expect("read");
            assert_eq!(line.trim(), "HELD 550", "holder said {line:?}");
            (c, out)
        })
        .collect();
    assert_eq!(pool.stats().expect("stats").active, 1100);
    // A waiter under the same limit probes all 1100 slots, queues, and gets
    // the slots when one holder lets go.
    let mut waiter = spawn_limited(&addr, &["hold", "30000"]);
    let mut wout = BufReader::new(waiter.stdout.take().expect("stdout"));
    wait_for_waiters(&pool, 1);
    let (mut first, _) = many.remove(0);
    writeln!(first.stdin.as_mut().expect("stdin")).expect("release");
    first.wait().expect("reap");
    let mut line = String::new();
    wout.read_line(&mut line).expect("read");
    assert!(line.starts_with("HELD "), "waiter said {line:?}");
    drop(waiter.stdin.take());
    waiter.wait().expect("reap");
    for (mut c, _) in many {
        drop(c.stdin.take());
        c.wait().expect("reap");
    }
}

#[test]
fn a_handle_used_in_a_forked_child_fails_clearly_and_deadlines_work_there() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let held = pool.blocking_acquire().expect("hold the only slot");
    // SAFETY: the child only calls into the pool and _exit; the test
    // harness's other threads are not touched in the child.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = (|| {
            match pool.try_acquire() {
                Err(Error::Forked { .. }) => {}
                _ => return 10,
            }
            // Dropping the inherited guard leaves the parent's slot alone.
            std::mem::drop(unsafe { std::ptr::read(&held) });
            // A handle opened in the child works, deadlines included (no
            // helper thread is needed for them).
            let own = match Pool::open(&addr, PoolOptions::new()) {
                Ok(p) => p,
                Err(_) => return 11,
            };
            let start = Instant::now();
            match own.blocking_acquire_timeout(Duration::from_millis(200)) {
                Err(Error::Timeout { .. }) if start.elapsed() < Duration::from_secs(3) => 0,
                _ => 12,
            }
        })();
        // SAFETY: leaves the forked child without running the parent's
        // destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: {status}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child check failed");
    assert!(
        pool.try_acquire().expect("try").is_none(),
        "the parent still holds its slot"
    );
    assert_eq!(pool.stats().expect("stats").active, 1);
    drop(held);
}

#[test]
fn deadlines_work_in_threads_that_block_every_signal() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let _held = pool.blocking_acquire().expect("fill");
    let p = pool.clone();
    let waited = std::thread::spawn(move || {
        // SAFETY: blocks every signal in this thread only.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        let start = Instant::now();
        let err = p
            .blocking_acquire_timeout(Duration::from_millis(200))
            .expect_err("full");
        assert!(err.is_timeout(), "{err}");
        start.elapsed()
    })
    .join()
    .expect("thread");
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn no_timeout_panics_and_a_zero_timeout_takes_a_crashed_holders_slot() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    drop(
        pool.blocking_acquire_timeout(Duration::MAX)
            .expect("a free slot, no deadline"),
    );
    let mut holder = Holder::spawn(&addr, None);
    assert_eq!(holder.outcome(), Outcome::Held(0));
    let p = pool.clone();
    let waiter =
        std::thread::spawn(move || p.blocking_acquire_timeout(Duration::MAX).map(|s| s.index()));
    wait_for_waiters(&pool, 1);
    holder.release();
    assert_eq!(waiter.join().expect("join").expect("slot"), 0);
    // A holder killed with its board bit set: only a probe finds the slot.
    let holder = Holder::spawn(&addr, None);
    let mut holder = holder;
    assert_eq!(holder.outcome(), Outcome::Held(0));
    holder.crash();
    let slot = pool
        .blocking_acquire_timeout(Duration::ZERO)
        .expect("the crashed holder's slot");
    assert_eq!(slot.index(), 0);
}

/// Eight waiters at the front of the queue that stop (a terminal's Ctrl-Z on
/// a group of workers) or die (a process with eight waiting threads killed)
/// fill the whole part of the queue a look at its front considers. A release
/// must still reach the first waiter behind them that runs: it has no timer
/// of its own (it is beyond the reserve), so nobody else will tell it.
#[test]
fn a_release_reaches_the_waiter_behind_eight_that_stopped_or_died() {
    let _serial = crate::support::timing_sensitive();
    for kill in [false, true] {
        let case = if kill {
            "eight killed"
        } else {
            "eight stopped"
        };
        let (_dir, addr) = pool_dir();
        let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
        let held = pool.blocking_acquire().expect("fill");
        let mut front = Vec::new();
        for n in 1..=8 {
            front.push(Holder::spawn(&addr, None));
            wait_for_waiters(&pool, n);
        }
        let own = Pool::open(&addr, PoolOptions::new()).expect("second handle");
        let waiter = std::thread::spawn(move || {
            let got = own
                .blocking_acquire_timeout(Duration::from_secs(20))
                .map(|s| s.index());
            (got, Instant::now())
        });
        wait_for_waiters(&pool, 9);
        if kill {
            for h in front.drain(..) {
                h.crash();
            }
        } else {
            for h in &front {
                signal(h.child.id(), libc::SIGSTOP);
            }
        }
        // Long enough for all of them to be stale; no `stats()` from here
        // on: it would free the dead waiters' entries and hide the fault.
        std::thread::sleep(Duration::from_millis(200));
        let freed = Instant::now();
        drop(held);
        let (got, served) = waiter.join().expect("waiter thread");
        for h in &front {
            signal(h.child.id(), libc::SIGCONT);
        }
        let delay = served.saturating_duration_since(freed);
        eprintln!("{case}: the ninth waiter got {got:?} {delay:?} after the release");
        assert!(
            matches!(got, Ok(0)) && delay < Duration::from_secs(2),
            "{case}: the free slot did not reach the ninth waiter ({got:?} after {delay:?})"
        );
    }
}

/// A `pool.json` whose capacity is out of range (a crash, a hand edit, a
/// planted file) is a damaged pool file, not a capacity the caller asked
/// for: the error names the file and says what to do.
#[test]
fn a_pool_json_with_an_impossible_capacity_is_named_as_the_problem() {
    for capacity in [0u64, 4097, 1 << 40] {
        let (_dir, addr) = pool_dir();
        drop(Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create"));
        std::fs::write(
            Path::new(&addr).join("pool.json"),
            format!(r#"{{"format": 2, "capacity": {capacity}}}"#),
        )
        .expect("plant pool.json");
        let err = Pool::open(&addr, PoolOptions::new()).expect_err("a damaged pool.json");
        let text = err.to_string();
        assert!(
            matches!(err, Error::Corrupt { .. }) && text.contains("pool.json"),
            "capacity {capacity}: the message does not name the damaged file: {text}"
        );
    }
}

/// An existing directory that is not (yet) a pool, such as an empty one or
/// the leftovers of a creator killed before it made `slots/`, opened
/// without a capacity: the pool does not exist, so say so (and how to
/// create it) rather than report a missing file inside it.
#[test]
fn an_existing_directory_without_a_pool_is_not_found() {
    let (_dir, addr) = pool_dir();
    std::fs::create_dir(&addr).expect("empty directory");
    std::fs::set_permissions(&addr, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let err = Pool::open(&addr, PoolOptions::new()).expect_err("no pool there");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    std::fs::write(Path::new(&addr).join("init.lock"), b"").expect("leftover");
    let err = Pool::open(&addr, PoolOptions::new()).expect_err("no pool there");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

/// The path of `strace`, which these tests use to `why`; `None`, saying
/// so, when it is missing (`cargo xtask test` installs it).
fn strace(why: &str) -> Option<&'static str> {
    let found = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        eprintln!("skipping: needs strace to {why}");
    }
    found
}

/// The number of the system call `pid` is stopped in, if any.
fn syscall_of(pid: u32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// An acquirer that decided to take the drain's way (the capacity it read
/// is below the high-water mark) and is preempted before it gets
/// `init.lock`, while another shrink completes: once it has the lock it must
/// count against the capacity now, not the one it read. Here a shrink from
/// 2 to 1 with one slot held must leave no room; `strace` holds the
/// acquirer at its `flock` of `init.lock` (the first `flock` it makes)
/// while the shrink runs, which a scheduler can do too.
#[test]
fn a_shrink_while_an_acquirer_enters_the_drain_admits_nobody_over_capacity() {
    let Some(strace) = strace("hold the acquirer at the right point") else {
        return;
    };
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(4)).expect("create");
    let mut held: Vec<_> = (0..4)
        .map(|_| pool.try_acquire().expect("try").expect("a free slot"))
        .collect();
    held.sort_by_key(|s| s.index());
    assert_eq!(pool.resize(2).expect("shrink"), 4);
    // Only slot 3, above the new capacity, stays held: the drain admits one.
    let high = held.pop().expect("slot 3");
    assert_eq!(high.index(), 3);
    drop(held);
    let mut tracer = Command::new(strace)
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=flock"])
        .args(["-e", "inject=flock:delay_enter=3000000:when=1"])
        .arg(holder_exe())
        .args([addr.as_str(), "hold", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    let deadline = Instant::now() + Duration::from_secs(20);
    let acquirer = loop {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tracer.id()))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|&p| syscall_of(p) == Some(libc::SYS_flock))
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the acquirer never reached flock"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // The acquirer read capacity 2 and is about to lock init.lock.
    assert_eq!(pool.resize(1).expect("shrink again"), 2);
    let mut line = String::new();
    BufReader::new(tracer.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the acquirer's answer");
    let stats = pool.stats().expect("stats");
    drop(tracer.stdin.take());
    let _ = tracer.wait();
    assert!(
        line.starts_with("TIMEOUT"),
        "acquirer {acquirer} said {:?}: {} holders with capacity {}",
        line.trim(),
        stats.active,
        stats.capacity
    );
    drop(high);
}

/// A resize killed after it replaced `pool.json` but before it changed the
/// board (a SIGKILL, or a power cut before the board's page was written
/// back): `pool.json` is the pool's record, what `PoolOptions::capacity`
/// is checked against and what foreign clients read, so the next open makes
/// the board agree with it instead of admitting by the old capacity.
#[test]
fn a_resize_killed_after_writing_pool_json_is_completed_by_the_next_open() {
    let Some(strace) = strace("kill the resizer at the right point") else {
        return;
    };
    for (from, to) in [(4u32, 2u32), (2, 4)] {
        let (_dir, addr) = pool_dir();
        drop(Pool::open(&addr, PoolOptions::new().capacity(from)).expect("create"));
        // Hold the resizer on its way out of the rename that replaces
        // pool.json, and kill it there.
        let mut tracer = Command::new(strace)
            .args(["-f", "-qq", "-o", "/dev/null"])
            .args(["-e", "trace=rename,renameat,renameat2"])
            .args(["-e", "inject=rename,renameat,renameat2:delay_exit=2000000"])
            .arg(holder_exe())
            .args([addr.as_str(), "resize", &to.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run strace");
        let deadline = Instant::now() + Duration::from_secs(20);
        let resizer = loop {
            let recorded = std::fs::read_to_string(Path::new(&addr).join("pool.json"))
                .unwrap_or_default()
                .contains(&format!("\"capacity\": {to}"));
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tracer.id()))
                    .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().find_map(|p| p.parse().ok())
                && recorded
            {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the resizer never renamed pool.json"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        signal(resizer, libc::SIGKILL);
        let status = tracer.wait().expect("reap strace");
        assert!(!status.success(), "the resizer was not killed: {status}");

        let pool = Pool::open(&addr, PoolOptions::new().capacity(to))
            .expect("pool.json records the new capacity");
        let held: Vec<_> = std::iter::from_fn(|| pool.try_acquire().expect("try"))
            .take(8)
            .collect();
        assert_eq!(
            (pool.capacity(), held.len() as u32),
            (to, to),
            "resize {from} -> {to} killed after pool.json: capacity and slots taken"
        );
    }
}

/// Any process that can write the pool can write the board: counters and
/// the ticket counter at their largest values (planted, or garbage from a
/// damaged file) must not make `stats()` or a waiter panic.
#[test]
fn counters_at_their_limits_on_the_board_panic_nobody() {
    use std::os::unix::fs::FileExt;
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    drop(pool.try_acquire().expect("try").expect("one acquisition"));
    let state = std::fs::OpenOptions::new()
        .write(true)
        .open(Path::new(&addr).join("state"))
        .expect("state");
    // docs/protocol.md: next_ticket at 72, acquisitions at 256, waited at
    // 384, the wait sum at 392, the histogram's buckets from 400.
    for off in [72u64, 256, 384, 392, 400, 408, 416] {
        state
            .write_all_at(&u64::MAX.to_le_bytes(), off)
            .expect("plant");
    }
    let stats = pool.stats().expect("stats");
    assert!(stats.wait_histogram.count > 0);
    let held = pool.blocking_acquire().expect("fill");
    let p = pool.clone();
    let waiter = std::thread::spawn(move || {
        p.blocking_acquire_timeout(Duration::from_secs(10))
            .map(|s| s.index())
    });
    wait_for_waiters(&pool, 1);
    drop(held);
    assert_eq!(
        waiter.join().expect("the waiter panicked").expect("slot"),
        0
    );
    pool.stats().expect("stats after the wait");
}

/// A process that forked a helper (without exec) and later takes a slot,
/// then is killed: the slot is free at once. The helper inherited copies
/// of the descriptors the pool handle kept open then; a lock taken later
/// through one of those (the same open file description) would live on in
/// the helper, for as long as the helper runs.
#[test]
fn a_killed_holder_that_forked_a_helper_before_taking_its_slot_frees_it() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let mut pipe = [0; 2];
    // SAFETY: a fresh pipe.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child only uses the pool, the pipe and libc, then _exits.
    let holder = unsafe { libc::fork() };
    if holder == 0 {
        let code = (|| {
            let Ok(own) = Pool::open(&addr, PoolOptions::new()) else {
                return 10;
            };
            // Take and give back a slot: the handle keeps its descriptor.
            match own.try_acquire() {
                Ok(Some(slot)) => drop(slot),
                _ => return 11,
            }
            // SAFETY: the helper only sleeps until it is killed.
            let helper = unsafe { libc::fork() };
            if helper == 0 {
                loop {
                    // SAFETY: waits for a signal.
                    unsafe { libc::pause() };
                }
            }
            let Ok(Some(slot)) = own.try_acquire() else {
                return 12;
            };
            let report = [helper.to_ne_bytes(), (slot.index() as i32).to_ne_bytes()].concat();
            // SAFETY: writes a local buffer to the pipe.
            unsafe { libc::write(pipe[1], report.as_ptr().cast(), report.len()) };
            loop {
                // SAFETY: waits to be killed, holding the slot.
                unsafe { libc::pause() };
            }
        })();
        // SAFETY: leaves the forked child without the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut report = [0u8; 8];
    // SAFETY: reads into a local buffer.
    let n = unsafe { libc::read(pipe[0], report.as_mut_ptr().cast(), 8) };
    assert_eq!(n, 8, "the holder failed before taking its slot");
    let helper = i32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
    // SAFETY: kills and reaps the holder forked above.
    unsafe {
        libc::kill(holder, libc::SIGKILL);
        libc::waitpid(holder, std::ptr::null_mut(), 0);
    }
    let freed = pool.try_acquire().expect("try");
    // SAFETY: the helper was re-parented to init (or a subreaper), which
    // reaps it; it is ours to kill.
    unsafe { libc::kill(helper, libc::SIGKILL) };
    assert!(
        freed.is_some(),
        "the killed holder's slot stayed held by the helper it had forked"
    );
}

/// The timeout error's "waiting" counts waiters that wait: not the file a
/// SIGKILLed waiter left in `waiters/` (nobody removes it until a `stats()`
/// sweeps), nor entries planted there that are no waiter's file at all.
#[test]
fn a_timeout_counts_live_waiters_only() {
    let (_dir, pool) = pool_dir();
    let p = Pool::open(&pool, PoolOptions::new().capacity(1)).expect("create");
    let _held = p.try_acquire().expect("try").expect("the only slot");
    let mut killed = Holder::spawn(&pool, None);
    wait_for_waiters(&p, 1);
    killed.child.kill().expect("SIGKILL the waiter");
    killed.child.wait().expect("reap the waiter");
    let waiters = Path::new(&pool).join("waiters");
    assert_eq!(
        std::fs::read_dir(&waiters).expect("waiters/").count(),
        1,
        "the killed waiter's file is left"
    );
    let fifo = std::ffi::CString::new(waiters.join("fifo").display().to_string()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(waiters.join("dir")).expect("mkdir");
    std::os::unix::fs::symlink("/dev/zero", waiters.join("zero")).expect("symlink");
    match p.blocking_acquire_timeout(Duration::from_millis(200)) {
        Err(Error::Timeout {
            waiting, active, ..
        }) => assert_eq!((waiting, active), (1, 1), "only this acquirer waits"),
        other => panic!("{other:?}"),
    }
}

/// The board's high-water mark past the largest capacity (planted: anybody
/// who can write the pool can write the board) reads as a shrink draining
/// from slot 4096. Once no slot above the capacity is held the drain ends,
/// as any drain does; it must not stay on for good, sending every
/// acquisition through `init.lock` and a probe of 4096 slot files.
#[test]
fn a_high_water_mark_past_the_board_ends_like_any_drain() {
    use std::os::unix::fs::FileExt;
    let (_dir, pool) = pool_dir();
    let p = Pool::open(&pool, PoolOptions::new().capacity(2)).expect("create");
    let state = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new(&pool).join("state"))
        .expect("state");
    // docs/protocol.md: the high-water mark is the u32 at offset 20.
    state
        .write_all_at(&u32::MAX.to_ne_bytes(), 20)
        .expect("plant");
    drop(p.try_acquire().expect("try").expect("a free slot"));
    let mut word = [0u8; 4];
    state.read_exact_at(&mut word, 20).expect("read");
    assert_eq!(u32::from_ne_bytes(word), 2, "the drain ended");
}

/// A pool on a filesystem mounted read-only (a remount after an I/O error,
/// a container's read-only root): the error says so and what to do, not
/// only the operating system's "Read-only file system".
#[test]
fn a_read_only_filesystem_is_named_with_what_to_do() {
    let Some(tiny) = TinyFs::mount("1m") else {
        return;
    };
    let mnt = tiny.path();
    Pool::open(mnt.join("pool").as_path(), PoolOptions::new().capacity(2)).expect("create");
    let status = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(mnt)
        .status()
        .expect("mount runs");
    assert!(status.success(), "remount read-only");
    for err in [
        Pool::open(mnt.join("pool").as_path(), PoolOptions::new()).expect_err("read-only"),
        Pool::open(mnt.join("new").as_path(), PoolOptions::new().capacity(2))
            .expect_err("read-only"),
    ] {
        let err = err.to_string();
        assert!(
            err.contains("Read-only file system")
                && err.contains("the filesystem is mounted read-only: remount it read-write, or choose a pool directory on a writable filesystem"),
            "{err}"
        );
    }
}

/// A `pool.json` that is not even UTF-8 (a planted binary, a damaged disk)
/// is a damaged pool file like one that is no JSON: named, with what to
/// do, not the bare "stream did not contain valid UTF-8".
#[test]
fn a_pool_json_that_is_not_utf8_is_named_as_the_problem() {
    let (_dir, addr) = pool_dir();
    drop(Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create"));
    std::fs::write(
        Path::new(&addr).join("pool.json"),
        b"{\"format\": 2, \"capacity\": 2, \xff\xfe}",
    )
    .expect("plant pool.json");
    let err = Pool::open(&addr, PoolOptions::new()).expect_err("a damaged pool.json");
    let text = err.to_string();
    assert!(
        matches!(err, Error::Corrupt { .. })
            && text.contains("pool.json")
            && text.contains("remove this one if nothing uses it"),
        "{text}"
    );
}

/// A filesystem out of inodes (or the user's quota of files used up) has
/// no room for a waiter's file in `waiters/`. The acquirer still waits, as
/// a waiter without a queue entry does (it polls): a slot freed before its
/// deadline is its, rather than an error at once.
#[test]
fn a_waiter_without_room_for_its_file_still_waits_for_a_slot() {
    let Some(tiny) = TinyFs::mount("4m,nr_inodes=16") else {
        return;
    };
    let mnt = tiny.path();
    let path = mnt.join("pool").display().to_string();
    let p = Pool::open(&path, PoolOptions::new().capacity(1)).expect("create");
    let mut holder = Holder::spawn(&path, None);
    assert_eq!(holder.outcome(), Outcome::Held(0));
    let mut n = 0;
    while std::fs::File::create(mnt.join(format!("filler{n}"))).is_ok() {
        n += 1;
    }
    assert!(
        std::fs::File::create(mnt.join("pool/waiters/probe")).is_err(),
        "no inode left"
    );
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        holder.release();
    });
    let slot = p
        .blocking_acquire_timeout(Duration::from_secs(10))
        .expect("the slot freed while waiting");
    assert_eq!(slot.index(), 0);
    release.join().expect("released");
}

/// A complete pool (its `pool.json` is there) whose board or slot
/// directory was removed (a cleaner of old files, a hand that took `state`
/// for a cache) is a damaged pool: named, with what to do, not a bare "No
/// such file or directory".
#[test]
fn a_pool_missing_its_board_or_slots_is_named_as_damaged() {
    for missing in ["state", "slots"] {
        let (_dir, addr) = pool_dir();
        drop(Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create"));
        let path = Path::new(&addr).join(missing);
        if missing == "slots" {
            std::fs::remove_dir_all(&path).expect("remove");
        } else {
            std::fs::remove_file(&path).expect("remove");
        }
        for opts in [PoolOptions::new(), PoolOptions::new().capacity(2)] {
            let err = Pool::open(&addr, opts).expect_err("a damaged pool");
            let text = err.to_string();
            assert!(
                matches!(err, Error::Corrupt { .. })
                    && text.contains(&path.display().to_string())
                    && text.contains("missing")
                    && text.contains("remove this one if nothing uses it"),
                "{missing}: {text}"
            );
        }
    }
}
