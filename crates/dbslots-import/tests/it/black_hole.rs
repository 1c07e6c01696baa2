//! The processor's connection becomes a black hole in the middle of a batch:
//! bytes stop, the socket stays open, while new connections get through (a
//! failover, a database host rebooting). The processor connects through a
//! [`FreezableProxy`] the test freezes while the server runs a batch's
//! `LOAD DATA`, so the server is left holding the batch's open transaction
//! and the locks on its rows.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dbslots_import::{
    EnqueueOptions, JobOutcome, Observer, Processor, ProcessorOptions, Progress, Queue, RunOptions,
    Status, Stopper,
};
use dbslots_testkit::FreezableProxy;
use mysql_async::prelude::Queryable;

use crate::support::{
    KillLeftovers, METER_READINGS, TestDb, proxy_for, readings, run_once, through,
};

/// The processors' `stale_after` here.
const STALE_AFTER: Duration = Duration::from_secs(2);
/// The bound on a batch that follows from it (three times `stale_after`).
const BATCH_BOUND: Duration = Duration::from_secs(6);
/// Records in the file, and per batch: ten batches.
const RECORDS: u64 = 200_000;
const BATCH_ROWS: usize = 20_000;

/// Notes when each batch was committed.
#[derive(Default)]
struct Commits {
    at: Mutex<Vec<(Instant, u64)>>,
}

impl Commits {
    fn first_after(&self, t: Instant) -> Option<Duration> {
        let at = self.at.lock().unwrap();
        at.iter()
            .find(|(when, _)| *when > t)
            .map(|(when, _)| *when - t)
    }

    fn rows(&self) -> u64 {
        self.at.lock().unwrap().last().map_or(0, |(_, rows)| *rows)
    }
}

impl Observer for Commits {
    fn batch_committed(&self, progress: &Progress) {
        self.at
            .lock()
            .unwrap()
            .push((Instant::now(), progress.rows_imported));
    }
}

/// Once the first batch is in, waits (watching from the admin account,
/// which does not go through the proxy) until the server runs the `LOAD
/// DATA` of a batch, then freezes every connection open through the proxy.
/// Returns when it froze.
async fn freeze_mid_batch(db: &TestDb, proxy: &FreezableProxy, commits: &Commits) -> Instant {
    let mut admin = db.admin().await;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no batch was caught in its LOAD DATA within 60 s (rows committed: {})",
            commits.rows()
        );
        assert!(
            commits.rows() < RECORDS,
            "the import finished before a batch was caught in its LOAD DATA"
        );
        if commits.rows() > 0 {
            // The processlist is live (INNODB_TRX is a cache refreshed at
            // most every 0.1 s, longer than a batch's transaction here).
            let loading: Option<u64> = admin
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE DB = ? AND COMMAND = 'Query' AND INFO LIKE 'LOAD DATA%'",
                    (&db.name,),
                )
                .await
                .unwrap();
            if loading.unwrap_or(0) > 0 {
                proxy.freeze_open_connections();
                let at = Instant::now();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let held: Vec<(u64, u64)> = admin
                    .exec(
                        "SELECT t.trx_mysql_thread_id, t.trx_rows_modified FROM information_schema.INNODB_TRX t \
                         JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id WHERE p.DB = ?",
                        (&db.name,),
                    )
                    .await
                    .unwrap();
                eprintln!(
                    "froze {} connections in a batch's LOAD DATA after {} rows; the server's transactions of them (thread, rows): {held:?}",
                    proxy.connections(),
                    commits.rows()
                );
                admin.disconnect().await.unwrap();
                return at;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The rows are all there, once each: as many as good records, each
/// record's distinct kWh, their sum; the job's own counters agree.
async fn assert_imported_exactly_once(db: &TestDb, queue: &Queue, good: u64, sum: u64) {
    assert_eq!(db.number("SELECT COUNT(*) FROM meter_readings").await, good);
    assert_eq!(
        db.number("SELECT COUNT(DISTINCT kwh) FROM meter_readings")
            .await,
        good
    );
    assert_eq!(
        db.number("SELECT CAST(SUM(kwh) * 1000 AS UNSIGNED) FROM meter_readings")
            .await,
        sum
    );
    let job = &queue.jobs(None).await.unwrap()[0];
    assert_eq!(job.status, Status::Completed, "{job:?}");
    assert_eq!((job.rows_imported, job.rows_rejected), (good, 0), "{job:?}");
}

/// Connections of the scratch database the server still has (the admin's
/// own left out).
async fn sessions(db: &TestDb) -> u64 {
    let mut admin = db.admin().await;
    let n: Option<u64> = admin
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
            (&db.name,),
        )
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    n.unwrap_or(0)
}

/// A database with one queued file of readings, reached through a proxy
/// the test can turn into a black hole.
struct Hole {
    db: TestDb,
    proxy: FreezableProxy,
    queue: Queue,
    path: std::path::PathBuf,
    good: u64,
    sum: u64,
    _leftovers: KillLeftovers,
}

impl Hole {
    fn new(name: &str) -> Option<Hole> {
        let db = TestDb::create(name)?;
        let _leftovers = KillLeftovers::of(&db);
        let (csv, good, sum, _) = readings(RECORDS, 0);
        let path = db.write("readings.csv", &csv);
        let proxy = proxy_for(&db);
        let queue = Queue::new(&through(&db.url, &proxy), None).unwrap();
        Some(Hole {
            db,
            proxy,
            queue,
            path,
            good,
            sum,
            _leftovers,
        })
    }

    /// Creates the table, queues the file, and gives the processor that
    /// will import it as `holder`.
    async fn processor(&self, holder: &str) -> Processor {
        self.db.sql(&[METER_READINGS]).await;
        self.queue
            .enqueue(&[&self.path], &EnqueueOptions::new("meter_readings"))
            .await
            .unwrap();
        self.queue.processor(
            ProcessorOptions::new()
                .batch_rows(BATCH_ROWS)
                .stale_after(STALE_AFTER)
                .holder(holder),
        )
    }
}

#[test]
fn a_batch_whose_connection_turns_into_a_black_hole_is_redone_on_a_new_one() {
    let Some(hole) = Hole::new("hole") else {
        return;
    };
    let Hole {
        db, proxy, queue, ..
    } = &hole;
    let (good, sum) = (hole.good, hole.sum);
    let commits = Commits::default();
    db.block_on(async {
        let processor = hole.processor("through-the-proxy").await;
        let stop = Stopper::new();
        let once = RunOptions::new().once(true);
        let run = processor.run(&once, &stop, &commits);
        let watch = async {
            let frozen = freeze_mid_batch(db, proxy, &commits).await;
            let rows = commits.rows();
            (frozen, rows)
        };
        let mut run = std::pin::pin!(run);
        let (frozen, rows_at_freeze) = tokio::select! {
            biased;
            watched = watch => watched,
            summary = &mut run => panic!("the run ended before the freeze: {summary:?}"),
        };
        let bound = Duration::from_secs(60);
        let summary = match tokio::time::timeout(bound, &mut run).await {
            Ok(summary) => summary.expect("the processor runs"),
            Err(_) => {
                let jobs = queue.jobs(None).await.unwrap();
                panic!(
                    "the import did not finish within {bound:?} of the freeze: {} rows committed at the freeze, {} since; job: {:?}",
                    rows_at_freeze,
                    commits.rows(),
                    jobs.first()
                );
            }
        };
        let finished = frozen.elapsed();
        let recovered = commits
            .first_after(frozen)
            .expect("a batch was committed after the freeze");
        eprintln!(
            "freeze -> first batch committed on a new connection: {recovered:?}; freeze -> job done: {finished:?} (bound {BATCH_BOUND:?})"
        );
        assert!(
            recovered < BATCH_BOUND + Duration::from_secs(15),
            "recovered {recovered:?} after the freeze"
        );
        assert_eq!(summary.jobs.len(), 1, "{summary:?}");
        let report = &summary.jobs[0];
        assert_eq!(report.outcome, JobOutcome::Completed, "{report:?}");
        assert!(report.reconnects >= 1, "{report:?}");
        assert_imported_exactly_once(db, queue, good, sum).await;
        // The processor itself recovered: nobody took the job over.
        let job = &queue.jobs(None).await.unwrap()[0];
        assert_eq!(
            (job.attempts, job.holder.as_deref()),
            (1, Some("through-the-proxy"))
        );
        // The server ended the frozen connection's session (rolling back
        // its transaction) by itself.
        let deadline = Instant::now() + BATCH_BOUND + Duration::from_secs(10);
        while sessions(db).await > 0 {
            assert!(
                Instant::now() < deadline,
                "the frozen connection's session is still on the server {:?} after the freeze",
                frozen.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[test]
fn a_stop_during_a_batch_in_a_black_hole_returns_in_bounded_time() {
    let Some(hole) = Hole::new("hole_stop") else {
        return;
    };
    let Hole { db, proxy, .. } = &hole;
    let (good, sum) = (hole.good, hole.sum);
    let commits = Commits::default();
    db.block_on(async {
        let processor = hole.processor("stopped-in-the-hole").await;
        let stop = Stopper::new();
        let once = RunOptions::new().once(true);
        let run = processor.run(&once, &stop, &commits);
        let mut run = std::pin::pin!(run);
        tokio::select! {
            biased;
            _ = freeze_mid_batch(db, proxy, &commits) => {}
            summary = &mut run => panic!("the run ended before the freeze: {summary:?}"),
        }
        // A SIGTERM a moment later, while the batch hangs.
        let stopped = tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => { stop.stop(); Instant::now() }
            summary = &mut run => panic!("the run ended while frozen, before the stop: {summary:?}"),
        };
        // The documented bound after a stop request is 30 s.
        let bound = Duration::from_secs(30);
        let summary = match tokio::time::timeout(bound, &mut run).await {
            Ok(summary) => summary.expect("the processor runs"),
            Err(_) => panic!("the run did not return within {bound:?} of the stop"),
        };
        eprintln!("stop -> run returned: {:?}", stopped.elapsed());
        assert_eq!(summary.jobs.len(), 1, "{summary:?}");
        assert!(
            matches!(
                summary.jobs[0].outcome,
                JobOutcome::Released | JobOutcome::Interrupted
            ),
            "{summary:?}"
        );
        // Another processor, straight to the server, finishes the job (at
        // once when it was put back, after `stale_after` otherwise).
        let direct = Queue::new(&db.url, None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let summary = run_once(
                &direct,
                ProcessorOptions::new()
                    .batch_rows(BATCH_ROWS)
                    .stale_after(STALE_AFTER)
                    .holder("the-next-one"),
            )
            .await;
            if summary.jobs.iter().any(|r| r.outcome == JobOutcome::Completed) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the job was not finished by another processor within 60 s: {:?}",
                direct.jobs(None).await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_imported_exactly_once(db, &direct, good, sum).await;
    });
}
