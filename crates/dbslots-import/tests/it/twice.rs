//! The same file imported twice leaves the same rows.

use dbslots_import::{EnqueueOptions, ProcessorOptions, Queue, Status};

use crate::support::{METER_READINGS, TestDb, readings, rejections, run_once};

#[test]
fn importing_a_file_twice_leaves_exactly_one_row_per_reading() {
    let Some(db) = TestDb::create("twice") else {
        return;
    };
    let (csv, good, sum, bad) = readings(5_000, 250);
    let path = db.write("readings.csv", &csv);
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[METER_READINGS]).await;
        for round in 1..=2 {
            queue
                .enqueue(&[&path], &EnqueueOptions::new("meter_readings"))
                .await
                .unwrap();
            let summary = run_once(&queue, ProcessorOptions::new().batch_rows(300)).await;
            assert_eq!(summary.jobs.len(), 1, "round {round}");
            assert_eq!(db.number("SELECT COUNT(*) FROM meter_readings").await, good);
            assert_eq!(
                db.number("SELECT CAST(SUM(kwh) * 1000 AS UNSIGNED) FROM meter_readings")
                    .await,
                sum
            );
        }
        let jobs = queue.jobs(None).await.unwrap();
        assert_eq!(jobs.len(), 2);
        for job in &jobs {
            assert_eq!(job.status, Status::CompletedWithErrors);
            assert_eq!(
                (job.rows_imported, job.rows_rejected),
                (good, bad.len() as u64)
            );
            assert_eq!(
                db.number(&format!(
                    "SELECT COUNT(*) FROM import_errors WHERE job_id = {}",
                    job.id
                ))
                .await,
                bad.len() as u64
            );
        }
    });
}

#[test]
fn a_key_with_a_nullable_column_refuses_null_rather_than_duplicate_the_row() {
    let Some(db) = TestDb::create("nullkey") else {
        return;
    };
    // The file's only key is UNIQUE(email), and email may be NULL: two NULLs
    // never collide, so a row without an email would be added again by
    // every import of the file.
    let path = db.write("users.csv", b"email,name\n,bob\nann@example.com,ann\n");
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE users (
                id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                email VARCHAR(100) NULL UNIQUE,
                name VARCHAR(100) NOT NULL
            ) ENGINE=InnoDB"])
            .await;
        for round in 1..=2 {
            let ids = queue
                .enqueue(&[&path], &EnqueueOptions::new("users"))
                .await
                .unwrap();
            let summary = run_once(&queue, ProcessorOptions::new()).await;
            assert_eq!(
                (summary.jobs[0].rows_imported, summary.jobs[0].rows_rejected),
                (1, 1),
                "round {round}"
            );
            assert_eq!(
                db.number("SELECT COUNT(*) FROM users").await,
                1,
                "round {round}"
            );
            let errors = rejections(&db, ids[0]).await;
            assert_eq!(errors[0].0, 2, "{errors:?}");
            assert!(
                errors[0].2.contains("NULL in a column of the key email"),
                "{errors:?}"
            );
        }
    });
    // With a NOT NULL key next to it, that key is used and NULL is fine.
    let Some(db) = TestDb::create("nullkey2") else {
        return;
    };
    let path = db.write(
        "users.csv",
        b"id,email,name\n1,,bob\n2,ann@example.com,ann\n",
    );
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE users (
                id INT NOT NULL PRIMARY KEY,
                email VARCHAR(100) NULL UNIQUE,
                name VARCHAR(100) NOT NULL
            ) ENGINE=InnoDB"])
            .await;
        for _ in 1..=2 {
            queue
                .enqueue(&[&path], &EnqueueOptions::new("users"))
                .await
                .unwrap();
            let summary = run_once(&queue, ProcessorOptions::new()).await;
            assert_eq!(
                (summary.jobs[0].rows_imported, summary.jobs[0].rows_rejected),
                (2, 0)
            );
        }
        assert_eq!(db.number("SELECT COUNT(*) FROM users").await, 2);
        assert_eq!(
            db.number("SELECT COUNT(*) FROM users WHERE email IS NULL")
                .await,
            1
        );
    });
}
