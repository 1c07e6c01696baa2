//! `Connector::from_env`: a worker uses the slot its parent holds for it,
//! and never waits for a second one from the same pool.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dbslots_testkit::shared_mysql;

use crate::support::pool;

/// The `worker` example, built next to this test binary.
fn worker_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let worker = dir.join("examples").join("worker");
    assert!(
        worker.exists(),
        "{} is missing: run `cargo build -p dbslots-mysql --examples` first (cargo xtask test does)",
        worker.display()
    );
    worker
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("the worker runs");
    let text = format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn a_worker_connects_through_the_slot_its_parent_holds_even_in_a_full_pool() {
    let Some(shared) = shared_mysql() else {
        return;
    };
    let (_dir, pool) = pool(1);
    let slot = pool.try_acquire().expect("try").expect("the only slot");
    let worker = || {
        let mut cmd = Command::new(worker_exe());
        cmd.arg(&shared.user_url)
            .env_remove(dbslots_core::env::SLOT)
            .env_remove(dbslots_core::env::POOL);
        cmd
    };

    // Handed the slot (as spawn and exec hand it): connects at once.
    let (out, text) = run(worker().envs(slot.child_env()));
    assert!(out.status.success(), "{text}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.split_whitespace().next(), Some("0"), "{text}");

    // Only the pool: it must take its own slot, and the pool is full.
    let (out, text) = run(worker().env(dbslots_core::env::POOL, pool.addr().to_string()));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("timed out"), "{text}");

    // Nothing: says what to do.
    let (out, text) = run(&mut worker());
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("DBSLOTS_SLOT")
            && text.contains("DBSLOTS_POOL")
            && text.contains("dbslots spawn"),
        "{text}"
    );
    // The parent's slot was never released by the worker.
    assert!(pool.try_acquire().expect("try").is_none());
    drop(slot);
    assert!(pool.try_acquire().expect("try").is_some());
}
