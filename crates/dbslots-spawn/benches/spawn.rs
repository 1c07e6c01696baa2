//! 1000 workers, 150 slots, each worker holding its slot for 50 ms:
//! adaptive mode against the reference's fixed batches (150 every 2 s), in
//! the same run, against the ideal.
//!
//! The ideal is the longer of 1000 × 50 ms / 150 (the work itself) and the
//! time this machine needs to start and reap 1000 such processes with no
//! limit at all (measured here, each round). Goals: adaptive within 1.2× the
//! ideal and at least 5× faster than batches. Adaptive mode is measured with
//! and without `hold_slot`, which on a directory pool run the same code
//! (each worker gets its slot as stdin and is started with posix_spawn).
//!
//! A plain harness (`harness = false`): one figure per mode per round, the
//! median over rounds (`DBSLOTS_BENCH_ROUNDS`, default 3; batches run once,
//! as their time is mostly fixed delays). Options given by `cargo bench`
//! or criterion-style filters are ignored.

use std::num::NonZeroU32;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbslots_core::{Pool, PoolOptions};
use dbslots_spawn::{Mode, Output, ProgressDisplay, SpawnOptions, Spawner, Template};

const WORKERS: u32 = 1000;
const CAPACITY: u32 = 150;
const HOLD: &str = "0.05";
const HOLD_SECS: f64 = 0.05;

/// Starts every worker at once with std and reaps them all.
fn unlimited() -> Duration {
    let started = Instant::now();
    let mut children: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new("sleep")
                .arg(HOLD)
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep starts")
        })
        .collect();
    for child in &mut children {
        child.wait().expect("sleep is reaped");
    }
    started.elapsed()
}

fn spawner(dir: &std::path::Path, options: SpawnOptions) -> Duration {
    let pool = Pool::open(dir.join("pool"), PoolOptions::new().capacity(CAPACITY))
        .expect("a pool in a temporary directory");
    let template = Template::from_argv(["sleep", HOLD]).expect("a valid command");
    let options = options
        .output(Output::Prefixed)
        .progress_display(ProgressDisplay::Quiet)
        .handle_signals(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let summary = runtime
        .block_on(
            Spawner::new(pool, template, options)
                .expect("valid options")
                .run(),
        )
        .expect("the spawner runs");
    let took = started.elapsed();
    assert!(summary.success(), "{summary}");
    assert!(summary.peak_slots <= CAPACITY, "{summary}");
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("DBSLOTS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut free, mut adaptive, mut held) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        free.push(unlimited());
        adaptive.push(spawner(dir.path(), SpawnOptions::new(WORKERS)));
        held.push(spawner(
            dir.path(),
            SpawnOptions::new(WORKERS).hold_slot(true),
        ));
    }
    let batches = spawner(
        dir.path(),
        SpawnOptions::new(WORKERS).mode(Mode::Batches {
            size: NonZeroU32::new(150).expect("150 is not 0"),
            delay: Duration::from_secs(2),
        }),
    );
    let (free, adaptive, held) = (median(free), median(adaptive), median(held));
    let work = WORKERS as f64 * HOLD_SECS / CAPACITY as f64;
    let ideal = work.max(free.as_secs_f64());
    let line = |name: &str, d: Duration| {
        println!(
            "spawn/{name:<28} {:>8.3} s   {:>5.2}× ideal",
            d.as_secs_f64(),
            d.as_secs_f64() / ideal
        )
    };
    println!(
        "spawn: {WORKERS} workers × {} ms on {CAPACITY} slots; {rounds} rounds (medians), batches once",
        HOLD_SECS * 1000.0
    );
    println!(
        "spawn/ideal                        {ideal:>8.3} s   (work bound {work:.3} s, start-and-reap bound {:.3} s)",
        free.as_secs_f64()
    );
    line("unlimited (std, no slots)", free);
    line("adaptive", adaptive);
    line("adaptive --hold-slot", held);
    line("batches 150 / 2 s", batches);
    let worst = adaptive.max(held).as_secs_f64();
    println!(
        "spawn/goals: adaptive {:.2}× ideal (goal ≤ 1.2×): {}; batches / adaptive {:.1}× (goal ≥ 5×): {}",
        worst / ideal,
        if worst <= 1.2 * ideal {
            "met"
        } else {
            "MISSED"
        },
        batches.as_secs_f64() / worst,
        if batches.as_secs_f64() >= 5.0 * worst {
            "met"
        } else {
            "MISSED"
        }
    );
}
