//! The same file imported twice leaves the same rows.

use dbslots_import::{EnqueueOptions, ProcessorOptions, Queue, Status};

use crate::support::{METER_READINGS, TestDb, readings, run_once};

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
