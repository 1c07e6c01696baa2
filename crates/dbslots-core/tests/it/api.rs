//! The pool's contract as one process sees it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use dbslots_core::{Error, Pool, PoolOptions};

use crate::support::pool_dir;

#[test]
fn capacity_is_recorded_and_a_mismatch_names_both_numbers() {
    let (_dir, addr) = pool_dir();
    Pool::open(&addr, PoolOptions::new().capacity(5)).expect("create");
    let reopened = Pool::open(&addr, PoolOptions::new()).expect("open as it is");
    assert_eq!(reopened.capacity(), 5);
    Pool::open(&addr, PoolOptions::new().capacity(5)).expect("same capacity is fine");
    let err = Pool::open(&addr, PoolOptions::new().capacity(7)).unwrap_err();
    assert!(matches!(
        err,
        Error::CapacityMismatch {
            recorded: 5,
            requested: 7,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains('5') && msg.contains('7') && msg.contains("resize"),
        "{msg}"
    );
}

#[test]
fn open_takes_a_string_a_path_or_an_address() {
    use dbslots_core::PoolAddr;
    use std::path::{Path, PathBuf};
    let (_dir, addr) = pool_dir();
    let created = Pool::open(addr.as_str(), PoolOptions::new().capacity(2)).expect("&str");
    let path = PathBuf::from(&addr);
    let handles = [
        Pool::open(addr.clone(), PoolOptions::new()).expect("String"),
        Pool::open(Path::new(&addr), PoolOptions::new()).expect("&Path"),
        Pool::open(&path, PoolOptions::new()).expect("&PathBuf"),
        Pool::open(path.clone(), PoolOptions::new()).expect("PathBuf"),
        Pool::open(PoolAddr::Dir(path.clone()), PoolOptions::new()).expect("PoolAddr"),
        Pool::open(format!("file:{addr}"), PoolOptions::new()).expect("file: URL"),
    ];
    for handle in &handles {
        assert_eq!(handle.addr(), created.addr(), "one pool, whatever the form");
    }
    let _held = handles[0].try_acquire().expect("try").expect("a slot");
    let _other = handles[5]
        .try_acquire()
        .expect("try")
        .expect("another slot");
    assert!(created.try_acquire().expect("try").is_none(), "both held");
    let err = Pool::open("ftp://u:pw@h/x", PoolOptions::new()).unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    assert!(!err.to_string().contains("pw"), "{err}");
}

#[test]
fn a_missing_pool_needs_a_capacity() {
    let (_dir, addr) = pool_dir();
    let err = Pool::open(&addr, PoolOptions::new()).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    // Library terms: the CLI names its own flag (see its `advice` module).
    assert!(err.to_string().contains("PoolOptions::capacity"), "{err}");
    assert!(!err.to_string().contains("--"), "{err}");
    assert!(
        !std::path::Path::new(&addr).exists(),
        "nothing is created without a capacity"
    );
}

#[test]
fn invalid_capacities_are_refused() {
    let (_dir, addr) = pool_dir();
    for cap in [0, dbslots_core::MAX_CAPACITY + 1] {
        let err = Pool::open(&addr, PoolOptions::new().capacity(cap)).unwrap_err();
        assert!(matches!(err, Error::InvalidCapacity { .. }), "{err}");
    }
}

#[test]
fn unusable_locations_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = PoolOptions::new().capacity(2);

    let missing_parent = dir.path().join("no/such/parent/pool");
    let err = Pool::open(missing_parent.as_path(), opts.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("parent directory") && err.contains("does not exist"),
        "{err}"
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let err = Pool::open(file.as_path(), opts.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a directory"), "{err}");

    let target = dir.path().join("real");
    std::fs::create_dir(&target).expect("dir");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let err = Pool::open(link.as_path(), opts.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert!(
        std::fs::read_dir(&target).expect("read").next().is_none(),
        "nothing written through the link"
    );
}

#[test]
fn symlinks_planted_inside_a_pool_are_not_followed() {
    let (dir, addr) = pool_dir();
    Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    let slot = std::path::Path::new(&addr).join("slots/0");
    std::fs::remove_file(&slot).expect("remove slot file");
    std::os::unix::fs::symlink(&victim, &slot).expect("plant symlink");
    let pool = Pool::open(&addr, PoolOptions::new()).expect("open");
    let err = pool.try_acquire().unwrap_err().to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
}

#[test]
fn pool_files_keep_other_users_out() {
    let (_dir, addr) = pool_dir();
    let old = unsafe { libc::umask(0) };
    let created = Pool::open(&addr, PoolOptions::new().capacity(2));
    unsafe { libc::umask(old) };
    created.expect("create");
    let root = std::path::Path::new(&addr);
    assert_eq!(
        std::fs::metadata(root).expect("dir").permissions().mode() & 0o7777,
        0o700
    );
    for f in ["state", "pool.json", "slots/0", "slots/1"] {
        let mode = std::fs::metadata(root.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }
}

#[test]
fn a_pool_for_a_group_is_shared_with_the_group() {
    let (_dir, addr) = pool_dir();
    let gid = unsafe { libc::getegid() };
    Pool::open(&addr, PoolOptions::new().capacity(1).group(gid)).expect("create");
    let root = std::path::Path::new(&addr);
    let meta = std::fs::metadata(root).expect("dir");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o2770);
    assert_eq!(meta.gid(), gid);
    let mode = std::fs::metadata(root.join("slots/0"))
        .expect("slot")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
}

#[test]
fn guards_release_on_drop_and_stats_show_holders() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(3)).expect("create");
    let a = pool.try_acquire().expect("try").expect("a");
    let b = pool.blocking_acquire().expect("b");
    let c = pool
        .blocking_acquire_timeout(Duration::from_secs(1))
        .expect("c");
    assert!(pool.try_acquire().expect("try").is_none());
    let stats = pool.stats().expect("stats");
    assert_eq!((stats.capacity, stats.active, stats.peak), (3, 3, 3));
    let mut slots: Vec<u32> = stats.holders.iter().map(|h| h.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![0, 1, 2]);
    assert!(
        stats
            .holders
            .iter()
            .all(|h| h.pid == Some(std::process::id()) && h.since_unix_ms.is_some())
    );
    drop(b);
    c.release();
    let stats = pool.stats().expect("stats");
    assert_eq!(stats.active, 1);
    assert_eq!(stats.holders[0].slot, a.index());
    assert_eq!(stats.acquisitions, 3);
    assert_eq!(stats.peak, 3, "the peak is kept");
}

#[test]
fn resizing_is_explicit_and_takes_effect_for_everyone() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let other = Pool::open(&addr, PoolOptions::new()).expect("second handle");
    let _a = pool.blocking_acquire().expect("a");
    assert!(other.try_acquire().expect("try").is_none());
    assert_eq!(pool.resize(3).expect("grow"), 1);
    let _b = other
        .try_acquire()
        .expect("try")
        .expect("room after growing");
    assert_eq!(
        Pool::open(&addr, PoolOptions::new().capacity(3))
            .expect("new capacity recorded")
            .capacity(),
        3
    );
    other.resize(1).expect("shrink");
    assert!(
        pool.try_acquire().expect("try").is_none(),
        "no new holder beyond the new capacity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_acquire_waits_and_times_out() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let held = pool.acquire().await.expect("first");
    let err = pool
        .acquire_timeout(Duration::from_millis(50))
        .await
        .expect_err("full");
    assert!(err.is_timeout(), "{err}");
    let p2 = pool.clone();
    let waiter = tokio::spawn(async move { p2.acquire().await.map(|s| s.index()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(held);
    assert_eq!(waiter.await.expect("join").expect("slot"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_pending_async_acquire_never_leaks_a_slot() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    for round in 0..50u64 {
        let held = pool.acquire().await.expect("hold");
        let p2 = pool.clone();
        let pending = tokio::spawn(async move {
            // Cancelled by the timeout below, at varying points.
            let _ = tokio::time::timeout(Duration::from_micros(round * 40), p2.acquire()).await;
        });
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_micros(round * 40)).await;
        }
        drop(held);
        pending.await.expect("join");
        // Whatever the race, the slot comes back.
        let again = pool
            .acquire_timeout(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("round {round}: slot leaked: {e}"));
        drop(again);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = pool.stats().expect("stats");
        if stats.active == 0 && stats.waiting == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn newcomers_queue_behind_waiters() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let held = pool.blocking_acquire().expect("fill");
    let p2 = pool.clone();
    let waiter = std::thread::spawn(move || {
        p2.blocking_acquire_timeout(Duration::from_secs(10))
            .map(|s| {
                std::thread::sleep(Duration::from_millis(50));
                s.index()
            })
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.stats().expect("stats").waiting == 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    // The waiter queued first: a release goes to it, not to a newcomer.
    drop(held);
    assert!(pool.try_acquire().expect("try").is_none());
    assert_eq!(waiter.join().expect("join").expect("waiter got it"), 0);
}

#[test]
fn a_child_given_the_lock_as_stdin_shares_the_slot() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let slot = pool.blocking_acquire().expect("slot");
    let fd = slot
        .lock_fd_for_child()
        .expect("dup")
        .expect("a file slot has a lock fd");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        // The child's stdin is the slot file: empty, so reading it ends at once.
        .arg("test -z \"$(cat)\" && exec sleep 30")
        .stdin(std::process::Stdio::from(fd))
        .spawn()
        .expect("spawn");
    slot.set_holder_pid(child.id());
    let other = Pool::open(&addr, PoolOptions::new()).expect("second handle");
    assert!(other.try_acquire().expect("try").is_none());
    assert_eq!(
        other.stats().expect("stats").holders[0].pid,
        Some(child.id())
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
    drop(slot);
    assert!(other.try_acquire().expect("try").is_some());
}

#[test]
fn release_unless_inherited_leaves_the_slot_with_a_child_that_kept_the_lock() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let other = Pool::open(&addr, PoolOptions::new()).expect("second handle");

    // A child that still has the lock: the slot stays held, by the child.
    let slot = pool.blocking_acquire().expect("slot");
    let fd = slot.lock_fd_for_child().expect("dup").expect("a lock fd");
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .stdin(std::process::Stdio::from(fd))
        .spawn()
        .expect("spawn");
    slot.set_holder_pid(child.id());
    slot.release_unless_inherited();
    assert!(
        other.try_acquire().expect("try").is_none(),
        "the child's copy of the lock keeps the slot held"
    );
    assert_eq!(other.stats().expect("stats").active, 1);
    child.kill().expect("kill");
    child.wait().expect("reap");
    let taken = other
        .try_acquire()
        .expect("try")
        .expect("free once the child is gone");
    drop(taken);

    // Nobody else has a copy: released at once, and a waiter is woken.
    let slot = pool.blocking_acquire().expect("slot");
    let waiter = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let pool = Pool::open(&addr, PoolOptions::new()).expect("open");
            pool.blocking_acquire_timeout(Duration::from_secs(10))
                .map(|s| s.index())
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.stats().expect("stats").waiting == 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    slot.release_unless_inherited();
    assert_eq!(waiter.join().expect("join").expect("waiter got it"), 0);
}
