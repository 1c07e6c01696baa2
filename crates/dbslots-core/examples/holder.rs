//! A process that takes a slot and reports what it saw: the multi-process
//! tests and benchmarks drive it, and it shows the API in a few lines.
//!
//! ```text
//! holder POOL hold [TIMEOUT_MS]     acquire, print "HELD <slot>"; then per stdin line:
//!                                   "check" prints "OK" or "LOST", anything else or EOF releases
//! holder POOL burst HOLD_MS COUNTER acquire, count holders in COUNTER (8-byte shared file),
//!                                   hold, release, print "TIMES <arrived> <acquired> <released>"
//!                                   (CLOCK_MONOTONIC nanoseconds)
//! holder POOL many N                acquire N slots, print "HELD N"; release all at EOF/a line
//! holder POOL resize N              change the capacity to N, print "RESIZED <old>"
//! holder POOL chaos I SHARED ROUNDS ROUNDS times: acquire, set flag I in SHARED, check that
//!                                   no more flags are set than SHARED's "allowed" word, hold a
//!                                   few ms, clear the flag, release; print "DONE"
//! ```
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dbslots_core::{Error, Pool, PoolOptions};

fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: holder POOL hold [TIMEOUT_MS] | holder POOL burst HOLD_MS COUNTER");
        std::process::exit(2);
    }
    let pool = match Pool::open(&args[1], PoolOptions::new()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("holder: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout().lock();
    match args[2].as_str() {
        "hold" => {
            let acquired = match args.get(3).and_then(|t| t.parse::<u64>().ok()) {
                Some(ms) => pool.blocking_acquire_timeout(Duration::from_millis(ms)),
                None => pool.blocking_acquire(),
            };
            match acquired {
                Ok(slot) => {
                    writeln!(out, "HELD {}", slot.index()).ok();
                    out.flush().ok();
                    let mut line = String::new();
                    while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0
                        && line.trim() == "check"
                    {
                        match slot.check() {
                            Ok(()) => writeln!(out, "OK").ok(),
                            Err(e) => writeln!(out, "LOST {e}").ok(),
                        };
                        out.flush().ok();
                        line.clear();
                    }
                    drop(slot);
                    writeln!(out, "RELEASED").ok();
                }
                Err(e @ Error::Timeout { .. }) => {
                    writeln!(out, "TIMEOUT {e}").ok();
                    std::process::exit(75);
                }
                Err(e) => {
                    eprintln!("holder: {e}");
                    std::process::exit(1);
                }
            }
        }
        "burst" => {
            let hold = Duration::from_millis(args[3].parse().expect("HOLD_MS is a number"));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&args[4])
                .expect("COUNTER file exists");
            let map = memmap2::MmapRaw::map_raw(&file).expect("COUNTER maps");
            // SAFETY: the counter file is 8 bytes, page-aligned mapping.
            let (now, max) = unsafe {
                let p = map.as_mut_ptr() as *const AtomicU32;
                (&*p, &*p.add(1))
            };
            let arrived = mono_ns();
            let slot = pool.blocking_acquire().expect("acquire");
            let acquired = mono_ns();
            let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(inside, Ordering::SeqCst);
            std::thread::sleep(hold);
            now.fetch_sub(1, Ordering::SeqCst);
            let released = mono_ns();
            drop(slot);
            writeln!(out, "TIMES {arrived} {acquired} {released}").ok();
        }
        "many" => {
            let n: u32 = args[3].parse().expect("N is a number");
            let slots: Vec<_> = (0..n)
                .map(|_| pool.blocking_acquire().expect("acquire one of many"))
                .collect();
            writeln!(out, "HELD {}", slots.len()).ok();
            out.flush().ok();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).ok();
            drop(slots);
            writeln!(out, "RELEASED").ok();
        }
        "chaos" => chaos(&pool, &args[3..]),
        "resize" => {
            let n: u32 = args[3].parse().expect("N is a number");
            match pool.resize(n) {
                Ok(old) => writeln!(out, "RESIZED {old}").ok(),
                Err(e) => {
                    eprintln!("holder: {e}");
                    std::process::exit(1);
                }
            };
        }
        other => {
            eprintln!("holder: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

/// One chaos participant (see `tests/it/chaos.rs`). SHARED holds u32 words:
/// 0 = holders allowed now, 1 = violations, 2 = most holders seen, 4.. =
/// one flag per participant (1 while it holds a slot).
fn chaos(pool: &Pool, args: &[String]) {
    let index: usize = args[0].parse().expect("I");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args[1])
        .expect("SHARED exists");
    let rounds: u32 = args[2].parse().expect("ROUNDS");
    let map = memmap2::MmapRaw::map_raw(&file).expect("SHARED maps");
    let words = map.len() / 4;
    // SAFETY: the shared file is a whole number of u32 words, page-aligned.
    let word = |i: usize| unsafe { &*(map.as_mut_ptr() as *const AtomicU32).add(i) };
    let mut seed = mono_ns() ^ (std::process::id() as u64) << 32;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..rounds {
        let slot = match pool.blocking_acquire_timeout(Duration::from_secs(40)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("holder {index}: {e}");
                std::process::exit(3);
            }
        };
        word(4 + index).store(1, Ordering::SeqCst);
        let inside: u32 = (4..words).map(|i| word(i).load(Ordering::SeqCst)).sum();
        let allowed = word(0).load(Ordering::SeqCst);
        word(2).fetch_max(inside, Ordering::SeqCst);
        if inside > allowed {
            word(1).fetch_add(1, Ordering::SeqCst);
            eprintln!("holder {index}: {inside} holders inside with {allowed} allowed");
        }
        std::thread::sleep(Duration::from_millis(2 + rand(15)));
        word(4 + index).store(0, Ordering::SeqCst);
        drop(slot);
        std::thread::sleep(Duration::from_millis(rand(10)));
    }
    println!("DONE");
}
