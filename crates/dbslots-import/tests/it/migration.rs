//! Queue tables of an older version: the columns they lack are added, and
//! an `ALTER TABLE` held up by another session's use of the table gives up
//! with the server's lock wait error instead of holding up everyone else.

use std::time::{Duration, Instant};

use dbslots_import::{Error, NoObserver, ProcessorOptions, Queue, RunOptions, Stopper};
use mysql_async::prelude::Queryable;

use crate::support::{KillLeftovers, TestDb, enqueue_readings, readings};

/// The queue's statement timeout here; migrations wait for locks half of
/// it (rounded up to whole seconds): 2 s.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Makes the queue tables look like an older version's: without two of
/// the columns added since (ones whose default the enqueued job has).
async fn downgrade(db: &TestDb) {
    db.sql(&["ALTER TABLE import_jobs DROP COLUMN no_key, DROP COLUMN delimiter"])
        .await;
}

async fn columns(db: &TestDb) -> u64 {
    db.number(
        "SELECT COUNT(*) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'import_jobs' \
           AND COLUMN_NAME IN ('no_key', 'delimiter')",
    )
    .await
}

/// Sessions of the test's database running an `ALTER TABLE`: waiting for
/// the metadata lock, each holds up every later statement on the table.
async fn alters_waiting(db: &TestDb, admin: &mut mysql_async::Conn) -> u64 {
    let n: Option<u64> = admin
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND INFO LIKE 'ALTER TABLE import_jobs%'",
            (&db.name,),
        )
        .await
        .unwrap();
    n.unwrap_or(0)
}

#[test]
fn columns_missing_from_older_tables_are_added_and_a_table_in_use_is_not_waited_for() {
    let Some(db) = TestDb::create("migration") else {
        return;
    };
    let _leftovers = KillLeftovers::of(&db);
    let queue = Queue::new(&db.url, None)
        .unwrap()
        .statement_timeout(TIMEOUT);
    let (csv, good, ..) = readings(100, 0);
    let path = db.write("readings.csv", &csv);
    db.block_on(async {
        enqueue_readings(&db, &queue, &path).await;
        downgrade(&db).await;
        assert_eq!(columns(&db).await, 0);

        // Another session reads the table in an open transaction: it holds
        // the table's metadata lock, which an ALTER must wait for.
        let mut reader = db.admin().await;
        reader.query_drop("START TRANSACTION").await.unwrap();
        reader
            .query_drop("SELECT COUNT(*) FROM import_jobs")
            .await
            .unwrap();

        // An operation gives up with the server's error, not by leaving
        // its ALTER waiting on the server.
        let started = Instant::now();
        let e = queue.create_tables().await.unwrap_err();
        let took = started.elapsed();
        eprintln!("Queue::create_tables gave up on the table's lock after {took:?}: {e}");
        assert!(
            matches!(&e, Error::Query { source: mysql_async::Error::Server(s), .. } if s.code == 1205),
            "{e:?}"
        );
        assert!(e.to_string().contains("creating the import tables"), "{e}");
        assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(15), "{took:?}");

        // A processor takes the lock wait for a passing problem and tries
        // again, each ALTER ending on the server after 2 s: they do not
        // pile up there, holding up everyone else.
        let processor = queue.processor(ProcessorOptions::new());
        let run = tokio::spawn(async move {
            let (once, stop) = (RunOptions::new().once(true), Stopper::new());
            processor.run(&once, &stop, &NoObserver).await
        });
        let mut admin = db.admin().await;
        let mut most = 0;
        let watch_until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < watch_until {
            most = most.max(alters_waiting(&db, &mut admin).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("ALTERs waiting at once while the table was in use: at most {most}");
        assert!(most <= 1, "{most} ALTERs waiting at once");
        assert!(!run.is_finished(), "the processor gave up: {:?}", run.await);

        reader.query_drop("COMMIT").await.unwrap();
        reader.disconnect().await.unwrap();
        let started = Instant::now();
        let summary = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the processor goes on once the table is free")
            .unwrap()
            .unwrap();
        eprintln!("table free -> job done: {:?}", started.elapsed());
        assert_eq!(summary.jobs.len(), 1);
        assert_eq!(columns(&db).await, 2);
        assert_eq!(db.number("SELECT COUNT(*) FROM meter_readings").await, good);
        assert_eq!(alters_waiting(&db, &mut admin).await, 0);
        admin.disconnect().await.unwrap();
    });
}

#[test]
fn a_statement_timeout_too_long_for_any_clock_migrates_older_tables() {
    let Some(db) = TestDb::create("migration_max") else {
        return;
    };
    // `dbslots import enqueue --statement-timeout 1e30` asks for this.
    let queue = Queue::new(&db.url, None)
        .unwrap()
        .statement_timeout(Duration::MAX);
    let (csv, ..) = readings(10, 0);
    let path = db.write("readings.csv", &csv);
    db.block_on(async {
        enqueue_readings(&db, &queue, &path).await;
        downgrade(&db).await;
        let migrate = tokio::spawn(async move { queue.create_tables().await });
        let done = tokio::time::timeout(Duration::from_secs(60), migrate)
            .await
            .expect("the migration ends");
        assert!(
            matches!(done, Ok(Ok(()))),
            "adding the columns with the longest statement timeout: {done:?}"
        );
        assert_eq!(columns(&db).await, 2);
    });
}
