//! Many real processes against one pool.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbslots_core::{Error, Pool, PoolOptions};

use crate::support::{Holder, Outcome, holder_exe, pool_dir};

fn mono_secs() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Kills the processes still in it when a test fails half-way.
struct KillOnDrop(Vec<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `n` burst holders holding `hold_ms` each on a pool of `capacity`.
/// With `queue_first`, the test holds every slot until all `n` processes
/// are queued, and returns the moment it let go. Returns (arrived, acquired,
/// released) per process in CLOCK_MONOTONIC seconds, the most holders seen
/// at once from inside the holders, and the release moment.
fn burst(
    n: usize,
    capacity: u32,
    hold_ms: u64,
    queue_first: bool,
) -> (Vec<(f64, f64, f64)>, u32, f64) {
    let (dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(capacity)).expect("create");
    let counter = dir.path().join("counter");
    std::fs::write(&counter, [0u8; 8]).expect("counter file");
    let blockers: Vec<_> = if queue_first {
        (0..capacity)
            .map(|_| pool.blocking_acquire().expect("fill"))
            .collect()
    } else {
        Vec::new()
    };
    let exe = holder_exe();
    let mut children = KillOnDrop(
        (0..n)
            .map(|_| {
                Command::new(&exe)
                    .arg(&addr)
                    .arg("burst")
                    .arg(hold_ms.to_string())
                    .arg(&counter)
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn burst holder")
            })
            .collect(),
    );
    let mut released_at = 0.0;
    if queue_first {
        let deadline = Instant::now() + Duration::from_secs(60);
        while (pool.stats().expect("stats").waiting as usize) < n {
            assert!(Instant::now() < deadline, "the processes never all queued");
            std::thread::sleep(Duration::from_millis(20));
        }
        released_at = mono_secs();
        drop(blockers);
    }
    let mut times = Vec::new();
    for child in children.0.drain(..) {
        let out = child.wait_with_output().expect("holder output");
        assert!(out.status.success(), "holder failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<f64> = text
            .trim()
            .strip_prefix("TIMES ")
            .expect("TIMES line")
            .split(' ')
            .map(|v| v.parse::<u64>().expect("ns") as f64 / 1e9)
            .collect();
        times.push((nums[0], nums[1], nums[2]));
    }
    let bytes = std::fs::read(&counter).expect("counter");
    let max = u32::from_ne_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let now = u32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes"));
    assert_eq!(now, 0, "every holder left");
    (times, max, released_at)
}

#[test]
fn three_hundred_processes_never_exceed_twenty_slots() {
    let _serial = crate::support::timing_sensitive();
    let (times, max, _) = burst(300, 20, 5, false);
    assert_eq!(times.len(), 300, "all finish");
    assert!(max <= 20, "{max} holders at once on 20 slots");
    assert!(
        max >= 2,
        "the pool was never shared ({max} at once): the test saw no contention"
    );
}

#[test]
fn waiters_are_served_close_to_arrival_order() {
    let _serial = crate::support::timing_sensitive();
    // 200 waiting processes, 10 slots, 10 ms holds: the longest wait must
    // stay within 1.5x of what a perfect FIFO queue gives for the very same
    // hold times (all 200 queued when the slots free up).
    let (times, max, t0) = burst(200, 10, 10, true);
    assert!(max <= 10);
    let holds: Vec<f64> = times.iter().map(|t| t.2 - t.1).collect();
    let ideal = dbslots_suite_fifo(&vec![t0; holds.len()], &holds, 10);
    let worst = times.iter().map(|t| t.1 - t0).fold(0.0, f64::max);
    eprintln!("fairness: longest wait {worst:.3}s, perfect FIFO {ideal:.3}s");
    assert!(
        worst <= 1.5 * ideal,
        "longest wait {worst:.3}s, perfect FIFO {ideal:.3}s"
    );
}

/// The perfect-FIFO yardstick (same algorithm as `dbslots_suite::fifo_longest_wait`,
/// repeated here because the core crate cannot depend on the workspace root).
fn dbslots_suite_fifo(arrivals: &[f64], holds: &[f64], capacity: usize) -> f64 {
    let mut order: Vec<usize> = (0..arrivals.len()).collect();
    order.sort_by(|&a, &b| arrivals[a].total_cmp(&arrivals[b]));
    let mut free_at = vec![f64::NEG_INFINITY; capacity];
    let mut longest: f64 = 0.0;
    for i in order {
        let k = (0..capacity)
            .min_by(|&a, &b| free_at[a].total_cmp(&free_at[b]))
            .expect("capacity > 0");
        let start = free_at[k].max(arrivals[i]);
        longest = longest.max(start - arrivals[i]);
        free_at[k] = start + holds[i];
    }
    longest
}

#[test]
fn killed_holders_free_their_slots_at_once() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(3)).expect("create");
    let mut holders: Vec<Holder> = (0..3)
        .map(|_| {
            let mut h = Holder::spawn(&addr, None);
            assert!(matches!(h.outcome(), Outcome::Held(_)));
            h
        })
        .collect();
    assert!(pool.try_acquire().expect("try").is_none(), "pool is full");
    holders.pop().expect("holder").crash();
    holders.pop().expect("holder").crash();
    // No cleanup step: the two slots are free right away.
    let a = pool.try_acquire().expect("try").expect("first freed slot");
    let b = pool.try_acquire().expect("try").expect("second freed slot");
    assert_ne!(a.index(), b.index());
    assert!(pool.try_acquire().expect("try").is_none());
    let stats = pool.stats().expect("stats");
    assert_eq!(stats.active, 3);
}

#[test]
fn a_waiter_gets_the_slot_of_a_killed_holder() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let mut holder = Holder::spawn(&addr, None);
    assert_eq!(holder.outcome(), Outcome::Held(0));
    let waiter = std::thread::spawn(move || pool.blocking_acquire_timeout(Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(100));
    holder.crash();
    let slot = waiter
        .join()
        .expect("waiter thread")
        .expect("slot after crash");
    assert_eq!(slot.index(), 0);
}

#[test]
fn a_waiter_that_dies_is_no_longer_counted() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let _held = pool.blocking_acquire().expect("fill the pool");
    let waiter = Holder::spawn(&addr, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().expect("stats").waiting != 1 {
        assert!(
            Instant::now() < deadline,
            "the waiter never showed as waiting"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = pool.stats().expect("stats");
    assert_eq!(stats.waiters[0].pid, Some(waiter.child.id()));
    waiter.crash();
    assert_eq!(pool.stats().expect("stats").waiting, 0);
}

#[test]
fn a_timeout_returns_in_time_with_the_pool_state() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(2)).expect("create");
    let _a = pool.blocking_acquire().expect("a");
    let _b = pool.blocking_acquire().expect("b");
    let start = Instant::now();
    let err = pool
        .blocking_acquire_timeout(Duration::from_millis(300))
        .expect_err("full pool");
    let waited = start.elapsed();
    match &err {
        Error::Timeout {
            capacity, active, ..
        } => {
            assert_eq!((*capacity, *active), (2, 2));
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(
        waited >= Duration::from_millis(300),
        "gave up early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "gave up far too late: {waited:?}"
    );
    assert_eq!(pool.stats().expect("stats").timeouts, 1);
    // A holder process times out the same way, with exit status 75.
    let mut h = Holder::spawn(&addr, Some(100));
    assert_eq!(h.outcome(), Outcome::TimedOut);
    assert_eq!(h.child.wait().expect("status").code(), Some(75));
}

#[test]
fn a_release_wakes_a_waiting_process() {
    let (_dir, addr) = pool_dir();
    let pool = Pool::open(&addr, PoolOptions::new().capacity(1)).expect("create");
    let held = pool.blocking_acquire().expect("fill");
    let mut waiter = Holder::spawn(&addr, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().expect("stats").waiting != 1 {
        assert!(Instant::now() < deadline, "the waiter never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(held);
    assert_eq!(waiter.outcome(), Outcome::Held(0));
    waiter.release();
    assert!(pool.try_acquire().expect("try").is_some());
}
