//! The queue's statements on a connection that turns into a black hole: the
//! server is made to hold a statement (an administrator's table lock), the
//! proxy in between freezes the connections open at that moment, and the
//! lock is let go, so the server answers into a socket that passes nothing
//! and stays open (a frozen server, a failover, a dropped network path look
//! the same to the client). The queue gives such a statement up at its
//! statement timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbslots_import::{
    EnqueueOptions, Error, JobOutcome, NoObserver, ProcessorOptions, Queue, RunOptions, Status,
    Stopper,
};
use dbslots_testkit::FreezableProxy;
use mysql_async::prelude::Queryable;
use tokio::sync::Notify;

use crate::support::{
    KillLeftovers, METER_READINGS, TestDb, enqueue_readings, proxy_for, readings, through,
};

/// The queue's statement timeout in these tests.
const TIMEOUT: Duration = Duration::from_secs(3);

/// How long a test waits for what should take [`TIMEOUT`]; the old code
/// waited forever (or, for a processor, its 180 s batch bound).
const GUARD: Duration = Duration::from_secs(60);

/// Runs `op` (from its first poll) while an administrator holds both
/// queue tables locked, freezes the proxy's open connections once a
/// statement of the ordinary account waits for the lock, then lets the
/// lock go: the answer is lost. Returns what `op` returned and how long it
/// took.
async fn lost_in_a_black_hole<F: Future>(
    db: &TestDb,
    proxy: &FreezableProxy,
    op: F,
) -> (F::Output, Duration) {
    let mut holder = db.admin().await;
    holder
        .query_drop("LOCK TABLES import_jobs WRITE, import_errors WRITE")
        .await
        .unwrap();
    let mut watcher = db.admin().await;
    let user = mysql_async::Opts::from_url(&db.url)
        .unwrap()
        .user()
        .expect("the test URL names a user")
        .to_owned();
    let started = Instant::now();
    let mut op = std::pin::pin!(op);
    let freeze = async {
        loop {
            assert!(
                started.elapsed() < GUARD,
                "the operation never waited for the lock"
            );
            let waiting: Option<String> = watcher
                .exec_first(
                    "SELECT INFO FROM information_schema.PROCESSLIST \
                     WHERE DB = ? AND USER = ? AND STATE LIKE 'Waiting for table%'",
                    (&db.name, &user),
                )
                .await
                .unwrap();
            if let Some(statement) = waiting {
                proxy.freeze_open_connections();
                // Let the statement run; its answer goes nowhere.
                holder.query_drop("UNLOCK TABLES").await.unwrap();
                let head: String = statement.chars().take(60).collect();
                eprintln!(
                    "froze the connection while the server held `{head}...` ({:?} in)",
                    started.elapsed()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        biased;
        () = freeze => {}
        _ = &mut op => panic!("the operation ended before its statement waited for the lock"),
    }
    let Ok(out) = tokio::time::timeout(GUARD, &mut op).await else {
        panic!(
            "no end {GUARD:?} after the freeze: the operation waits for an answer that cannot come"
        );
    };
    let took = started.elapsed();
    holder.disconnect().await.unwrap();
    watcher.disconnect().await.unwrap();
    (out, took)
}

/// A queue with the statement timeout [`TIMEOUT`], reaching `db` through a
/// proxy the test can freeze; connections left behind are killed when the
/// first value drops.
fn queue_through_a_proxy(db: &TestDb) -> (KillLeftovers, FreezableProxy, Queue) {
    let leftovers = KillLeftovers::of(db);
    let proxy = proxy_for(db);
    let queue = Queue::new(&through(&db.url, &proxy), None)
        .unwrap()
        .statement_timeout(TIMEOUT);
    (leftovers, proxy, queue)
}

/// A NoAnswer for `what` after [`TIMEOUT`], within `took` that is bounded.
fn assert_no_answer<T: std::fmt::Debug>(
    result: dbslots_import::Result<T>,
    took: Duration,
    what: &str,
) {
    eprintln!("{what}: gave up after {took:?} (statement timeout {TIMEOUT:?})");
    let e = result.expect_err("a statement without an answer fails its operation");
    let message = e.to_string();
    assert!(
        matches!(&e, Error::NoAnswer { what: w, waited, .. } if *w == what && *waited == TIMEOUT),
        "{e:?}"
    );
    assert!(
        message.starts_with(&format!("{what} got no answer from mysql://"))
            && message.contains("within 3s")
            && message.contains("check the server"),
        "{message}"
    );
    assert!(!message.contains("dbslots-test-pw"), "{message}");
    // The bound, plus at most 5 s for closing, plus a noisy machine.
    assert!(took >= TIMEOUT, "gave up early: {took:?}");
    assert!(took < TIMEOUT + Duration::from_secs(10), "{took:?}");
}

#[test]
fn queue_operations_give_up_at_the_statement_timeout_when_their_connection_turns_into_a_black_hole()
{
    let Some(db) = TestDb::create("no_answer") else {
        return;
    };
    let (_leftovers, proxy, queue) = queue_through_a_proxy(&db);
    let (csv, ..) = readings(10, 0);
    let path = db.write("readings.csv", &csv);
    let options = EnqueueOptions::new("meter_readings");
    let files = &[&path];
    db.block_on(async {
        db.sql(&[METER_READINGS]).await;
        // While the way is clear, the timeout changes nothing (and the
        // tables exist now).
        queue.enqueue(&[&path], &options).await.unwrap();
        assert_eq!(queue.counts().await.unwrap(), [(Status::Pending, 1)]);

        let (result, took) = lost_in_a_black_hole(&db, &proxy, queue.jobs(None)).await;
        assert_no_answer(result, took, "listing jobs");
        let (result, took) = lost_in_a_black_hole(&db, &proxy, queue.counts()).await;
        assert_no_answer(result, took, "counting jobs");
        let (result, took) = lost_in_a_black_hole(&db, &proxy, queue.create_tables()).await;
        assert_no_answer(result, took, "creating the import tables");
        let (result, took) =
            lost_in_a_black_hole(&db, &proxy, queue.enqueue(files, &options)).await;
        assert_no_answer(result, took, "enqueueing files");

        // New connections pass: the queue works again, and the frozen
        // enqueue added nothing.
        assert_eq!(queue.counts().await.unwrap(), [(Status::Pending, 1)]);
    });
}

#[test]
fn an_enqueue_longer_than_the_statement_timeout_passes_while_each_statement_is_answered() {
    let Some(db) = TestDb::create("slow_link") else {
        return;
    };
    let (_leftovers, proxy, queue) = queue_through_a_proxy(&db);
    let (csv, ..) = readings(10, 0);
    let path = db.write("readings.csv", &csv);
    // One INSERT per file, each round trip at least 5 ms: well over the
    // 3 s statement timeout in all.
    let files = vec![&path; 1_000];
    db.block_on(async {
        db.sql(&[METER_READINGS]).await;
        proxy.delay_replies(Duration::from_millis(5));
        let started = Instant::now();
        let ids = queue
            .enqueue(&files, &EnqueueOptions::new("meter_readings"))
            .await
            .expect("each statement is answered within the timeout");
        let took = started.elapsed();
        eprintln!(
            "enqueued {} files over a 5 ms link in {took:?} (statement timeout {TIMEOUT:?})",
            files.len()
        );
        assert!(
            took > TIMEOUT,
            "the operation as a whole outlasted the timeout: {took:?}"
        );
        assert_eq!(ids.len(), files.len());
        proxy.delay_replies(Duration::ZERO);
        assert_eq!(queue.counts().await.unwrap(), [(Status::Pending, 1_000)]);
    });
}

#[test]
fn a_processor_gives_up_a_statement_before_a_job_at_the_statement_timeout_and_goes_on() {
    let Some(db) = TestDb::create("no_answer_claim") else {
        return;
    };
    let (_leftovers, proxy, queue) = queue_through_a_proxy(&db);
    let (csv, good, ..) = readings(1_000, 0);
    let path = db.write("readings.csv", &csv);
    db.block_on(async {
        enqueue_readings(&db, &queue, &path).await;
        // A daemon with the default options: its batch bound is 180 s.
        let processor = queue.processor(ProcessorOptions::new().holder("held-up"));
        let stop = Stopper::new();
        // It starts once the tables are locked.
        let go = Arc::new(Notify::new());
        let daemon = {
            let (go, stop) = (go.clone(), stop.clone());
            let run = RunOptions::new().sleep(Duration::from_millis(200));
            tokio::spawn(async move {
                go.notified().await;
                processor.run(&run, &stop, &NoObserver).await
            })
        };
        // Its first statement on the queue's tables (creating them,
        // putting back stale jobs or claiming) is the one lost. The
        // administrator watches (an ordinary account's statement would
        // count as the one held up).
        let completed = async {
            go.notify_one();
            let mut admin = db.admin().await;
            loop {
                assert!(!daemon.is_finished(), "the daemon ended");
                let completed: Option<u64> = admin
                    .query_first("SELECT COUNT(*) FROM import_jobs WHERE status = 'completed'")
                    .await
                    .unwrap();
                if completed.unwrap_or(0) > 0 {
                    admin.disconnect().await.unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let ((), took) = lost_in_a_black_hole(&db, &proxy, completed).await;
        eprintln!("lock taken -> job completed over a new connection: {took:?}");
        assert!(took < TIMEOUT + Duration::from_secs(15), "{took:?}");
        stop.stop();
        let summary = tokio::time::timeout(Duration::from_secs(30), daemon)
            .await
            .expect("a stopped daemon returns")
            .expect("the daemon's task ends normally")
            .expect("the daemon runs");
        assert_eq!(summary.jobs.len(), 1, "{summary:?}");
        assert_eq!(summary.jobs[0].outcome, JobOutcome::Completed);
        assert_eq!(db.number("SELECT COUNT(*) FROM meter_readings").await, good);
    });
}
