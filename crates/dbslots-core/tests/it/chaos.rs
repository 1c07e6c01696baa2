//! Chaos: a hundred processes take, hold and release slots while others are
//! SIGKILLed, SIGSTOPped and SIGCONTed at random and the pool is resized up
//! and down. Checked from inside the holders (never more holders than the
//! capacity in force) and from outside (no free slot left unused while a
//! running waiter waits; every surviving process finishes).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};

use crate::support::{holder_exe, pool_dir};

const PROCESSES: usize = 100;
const ROUNDS: u32 = 6;
/// A slot may stay free while a running waiter waits this long at most
/// (the liveness bound is 100 ms; the rest is the sampler's own latency
/// on a loaded 2-core machine).
const STALL_BOUND: Duration = Duration::from_millis(250);
/// The whole test, processes included, must end within this.
const TEST_BOUND: Duration = Duration::from_secs(55);

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Shared {
    map: memmap2::MmapRaw,
    _file: std::fs::File,
}

impl Shared {
    fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.map.len() / 4);
        // SAFETY: in bounds, aligned, lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr() as *const AtomicU32).add(i) }
    }
}

fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: signals a child of this test that is not yet reaped.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

#[test]
fn a_hundred_processes_under_kills_stops_and_resizes() {
    let _serial = crate::support::timing_sensitive();
    let started = Instant::now();
    let (dir, addr) = pool_dir();
    let mut capacity = 8u32;
    let pool = Pool::open(&addr, PoolOptions::new().capacity(capacity)).expect("create");
    let path = dir.path().join("shared");
    std::fs::write(&path, vec![0u8; 4 * (4 + PROCESSES)]).expect("shared file");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("shared");
    let shared = Shared {
        map: memmap2::MmapRaw::map_raw(&file).expect("map"),
        _file: file,
    };
    shared.word(0).store(capacity, Ordering::SeqCst);

    let mut children: Vec<Option<Child>> = (0..PROCESSES)
        .map(|i| {
            Some(
                Command::new(holder_exe())
                    .arg(&addr)
                    .args(["chaos", &i.to_string()])
                    .arg(&path)
                    .arg(ROUNDS.to_string())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawn chaos holder"),
            )
        })
        .collect();
    let pids: Vec<u32> = children
        .iter()
        .map(|c| c.as_ref().expect("child").id())
        .collect();
    let stopped = Arc::new(Mutex::new(HashSet::<u32>::new()));
    let mut killed = HashSet::new();

    // The sampler: a slot free while a running waiter waits, for how long?
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let pool = pool.clone();
        let stopped = Arc::clone(&stopped);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut since: Option<Instant> = None;
            let mut worst = Duration::ZERO;
            while !done.load(Ordering::SeqCst) {
                let s = pool.stats().expect("stats");
                let running_waiters = {
                    let stopped = stopped.lock().expect("lock");
                    s.waiters
                        .iter()
                        .filter(|w| w.pid.is_some_and(|p| !stopped.contains(&p)))
                        .count()
                };
                if s.active < s.capacity && running_waiters > 0 {
                    let t = *since.get_or_insert_with(Instant::now);
                    worst = worst.max(t.elapsed());
                } else {
                    since = None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            worst
        })
    };

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64);
    let mut resizes = 0;
    let mut last_resize = Instant::now();
    let chaos_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < chaos_until {
        std::thread::sleep(Duration::from_millis(15));
        let i = rng.below(PROCESSES as u64) as usize;
        let pid = pids[i];
        if killed.contains(&i) {
            continue;
        }
        match rng.below(10) {
            0 if killed.len() < 15 => {
                // Stop it first so it cannot change its flag, clear the flag,
                // then kill: the holders never count a dead process.
                kill(pid, libc::SIGSTOP);
                shared.word(4 + i).store(0, Ordering::SeqCst);
                kill(pid, libc::SIGKILL);
                if let Some(mut c) = children[i].take() {
                    let _ = c.wait();
                }
                stopped.lock().expect("lock").remove(&pid);
                killed.insert(i);
            }
            1..=4 => {
                kill(pid, libc::SIGSTOP);
                stopped.lock().expect("lock").insert(pid);
            }
            _ => {
                if stopped.lock().expect("lock").remove(&pid) {
                    kill(pid, libc::SIGCONT);
                }
            }
        }
        if last_resize.elapsed() > Duration::from_millis(400) {
            last_resize = Instant::now();
            // After a shrink, the allowed count comes down only once the
            // holders fit: slots above the new capacity are kept until
            // released.
            let s = pool.stats().expect("stats");
            if s.active <= s.capacity {
                shared.word(0).store(capacity, Ordering::SeqCst);
            }
            let new = 4 + rng.below(13) as u32;
            if new > capacity {
                shared.word(0).fetch_max(new, Ordering::SeqCst);
            }
            pool.resize(new).expect("resize");
            capacity = new;
            resizes += 1;
        }
    }
    // Let everybody run to the end.
    for pid in stopped.lock().expect("lock").drain() {
        kill(pid, libc::SIGCONT);
    }
    let mut finished = 0;
    for (i, c) in children.iter_mut().enumerate() {
        let Some(mut c) = c.take() else { continue };
        let left = TEST_BOUND.saturating_sub(started.elapsed());
        let deadline = Instant::now() + left;
        let status = loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("process {i} did not finish in time: it never got its slots");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "process {i} failed: {status}");
        finished += 1;
    }
    done.store(true, Ordering::SeqCst);
    let worst_stall = sampler.join().expect("sampler");
    let violations = shared.word(1).load(Ordering::SeqCst);
    let most = shared.word(2).load(Ordering::SeqCst);
    eprintln!(
        "chaos: {finished} finished, {} killed, {resizes} resizes, most holders at once {most}, longest free-slot stall with a running waiter {worst_stall:?}, {:?} in all",
        killed.len(),
        started.elapsed()
    );
    assert_eq!(
        violations, 0,
        "holders saw more holders than the capacity in force"
    );
    assert_eq!(finished + killed.len(), PROCESSES);
    assert!(
        worst_stall < STALL_BOUND,
        "a free slot stayed unused for {worst_stall:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
