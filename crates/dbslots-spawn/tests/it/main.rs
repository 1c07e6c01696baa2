//! The library API of dbslots-spawn with real processes and pools in
//! temporary directories (the command line is tested in dbslots-cli).

use std::time::Duration;

use dbslots_core::{Pool, PoolOptions};
use dbslots_spawn::{Error, Mode, ProgressDisplay, SpawnOptions, Spawner, StopReason, Template};
use std::num::NonZeroU32;

fn pool(dir: &std::path::Path, capacity: u32) -> Pool {
    Pool::open(dir.join("pool"), PoolOptions::new().capacity(capacity)).unwrap()
}

fn quiet(workers: u32) -> SpawnOptions {
    SpawnOptions::new(workers)
        .progress_display(ProgressDisplay::Quiet)
        .handle_signals(false)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn options_out_of_range_are_rejected_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let template = Template::from_argv(["true"]).unwrap();
    let err = Spawner::new(pool(dir.path(), 1), template.clone(), quiet(0)).unwrap_err();
    assert!(matches!(err, Error::InvalidOptions { .. }), "{err}");
    assert!(err.to_string().contains("SpawnOptions::new"), "{err}");
    assert!(!err.to_string().contains("--"), "no CLI flag: {err}");
    let err = Spawner::new(pool(dir.path(), 1), template, quiet(1).job_id("")).unwrap_err();
    assert!(err.to_string().contains("job id"), "{err}");
}

#[test]
fn only_batches_without_held_slots_run_without_a_pool() {
    let template = Template::from_argv(["true"]).unwrap();
    let err = Spawner::without_pool(template.clone(), quiet(2)).unwrap_err();
    assert!(matches!(err, Error::InvalidOptions { .. }), "{err}");
    let batches = Mode::Batches {
        size: NonZeroU32::new(1).unwrap(),
        delay: Duration::ZERO,
    };
    let held = quiet(2).mode(batches).hold_slot(true);
    assert!(Spawner::without_pool(template.clone(), held).is_err());
    let summary = runtime()
        .block_on(
            Spawner::without_pool(template, quiet(2).mode(batches))
                .unwrap()
                .run(),
        )
        .unwrap();
    assert!(summary.success(), "{summary}");
    assert_eq!((summary.started, summary.capacity), (2, None));
}

#[test]
fn spawner_held_slots_are_counted_exactly_and_all_returned() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path(), 3);
    let template = Template::from_argv(["sh", "-c", "sleep 0.05"]).unwrap();
    let summary = runtime()
        .block_on(
            Spawner::new(pool.clone(), template, quiet(12).hold_slot(true))
                .unwrap()
                .run(),
        )
        .unwrap();
    assert!(summary.success(), "{summary}");
    assert_eq!((summary.started, summary.succeeded), (12, 12));
    assert!(!summary.peak_slots_sampled);
    assert!(
        summary.peak_slots <= 3 && summary.peak_running <= 3,
        "{summary}"
    );
    assert!(summary.p50.is_some() && summary.p95 >= summary.p50);
    assert_eq!(pool.stats().unwrap().active, 0);
}

#[test]
fn a_stopper_terminates_the_workers_and_sets_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let template = Template::from_argv([
        "sh".into(),
        "-c".into(),
        format!("touch {}; sleep 30", marker.display()),
    ])
    .unwrap();
    let spawner = Spawner::new(
        pool(dir.path(), 4),
        template,
        quiet(20).grace(Duration::from_secs(5)),
    )
    .unwrap();
    let stopper = spawner.stopper();
    let summary = runtime().block_on(async move {
        let stop = async {
            while !marker.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!stopper.is_stopped());
            stopper.stop(libc::SIGTERM);
            assert!(stopper.is_stopped(), "a stop asked for is seen at once");
        };
        let (summary, ()) = tokio::join!(spawner.run(), stop);
        summary.unwrap()
    });
    assert_eq!(summary.stop, Some(StopReason::Signal(libc::SIGTERM)));
    assert_eq!(summary.exit_code(), 143);
    assert!(summary.started >= 1 && summary.started <= 4, "{summary}");
    assert_eq!(summary.killed, summary.started, "{summary}");
    assert_eq!(summary.not_started(), 20 - summary.started);
}

#[test]
fn a_worker_holds_its_slot_through_an_empty_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // `cat` must see end of file at once; then each worker records its slot
    // and what its stdin is.
    let script = format!(
        "cat; echo \"${{DBSLOTS_SLOT:-none}} $(readlink /proc/self/fd/0)\" > {}/{{index}}",
        out.display()
    );
    let run = |options: SpawnOptions| {
        let template = Template::from_argv(["sh", "-c", &script]).unwrap();
        let summary = runtime()
            .block_on(
                Spawner::new(pool(dir.path(), 2), template, options)
                    .unwrap()
                    .run(),
            )
            .unwrap();
        assert!(summary.success(), "{summary}");
    };
    let seen = |i: u32| std::fs::read_to_string(out.join(i.to_string())).unwrap();

    run(quiet(6).grace(Duration::from_secs(5)));
    let slots = dir.path().join("pool").join("slots");
    for i in 0..6 {
        let line = seen(i);
        let (slot, stdin) = line.trim().split_once(' ').unwrap();
        let slot: u32 = slot.parse().unwrap();
        assert!(slot < 2, "{line}");
        assert_eq!(stdin, slots.join(slot.to_string()).to_str().unwrap());
    }

    // Workers that take their own slots get /dev/null.
    run(quiet(2).mode(dbslots_spawn::Mode::Batches {
        size: std::num::NonZeroU32::new(2).unwrap(),
        delay: Duration::ZERO,
    }));
    for i in 0..2 {
        assert_eq!(seen(i).trim(), "none /dev/null");
    }
}
