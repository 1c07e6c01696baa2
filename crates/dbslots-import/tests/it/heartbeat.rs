//! A batch slower than `stale_after` does not make its job look dead.

use std::time::Duration;

use dbslots_import::{EnqueueOptions, JobOutcome, ProcessorOptions, Queue};
use mysql_async::prelude::Queryable;

use crate::support::{TestDb, run_once};

#[test]
fn a_slow_batch_keeps_its_job_alive() {
    let Some(db) = TestDb::create("beat") else {
        return;
    };
    let path = db.write("slow.csv", b"id,v\n1,a\n2,b\n");
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE slow (id INT PRIMARY KEY, v VARCHAR(5)) ENGINE=InnoDB"])
            .await;
        queue
            .enqueue(&[&path], &EnqueueOptions::new("slow"))
            .await
            .unwrap();
        // Hold the row the batch needs, so its insert waits on the lock.
        let mut blocker = db.conn().await;
        blocker.query_drop("START TRANSACTION").await.unwrap();
        blocker
            .query_drop("INSERT INTO slow VALUES (1, 'held')")
            .await
            .unwrap();
        // The batch waits about 5 s: more than `stale_after`, well under
        // the batch bound (which would take the connection for lost).
        let options = || {
            ProcessorOptions::new()
                .stale_after(Duration::from_secs(2))
                .batch_timeout(Duration::from_secs(30))
        };
        let worker = {
            let queue = queue.clone();
            tokio::spawn(async move { run_once(&queue, options().holder("slow-one")).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Another processor with the same --stale-after finds nothing stale.
        let other = run_once(&queue, options().holder("rescuer")).await;
        assert_eq!((other.recovered, other.jobs.len()), (0, 0));
        assert!(
            db.number(
                "SELECT TIMESTAMPDIFF(SECOND, heartbeat_at, UTC_TIMESTAMP(6)) FROM import_jobs"
            )
            .await
                < 2
        );
        blocker.query_drop("ROLLBACK").await.unwrap();
        blocker.disconnect().await.unwrap();
        let summary = tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("the slow processor finishes")
            .unwrap();
        assert_eq!(summary.jobs[0].outcome, JobOutcome::Completed);
        let job = &queue.jobs(None).await.unwrap()[0];
        assert_eq!((job.attempts, job.holder.as_deref()), (1, Some("slow-one")));
        assert_eq!(db.number("SELECT COUNT(*) FROM slow").await, 2);
    });
}
