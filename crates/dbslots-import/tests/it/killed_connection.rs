//! The server kills the processor's connection mid-job.

use std::sync::Mutex;

use dbslots_import::{
    JobOutcome, Observer, ProcessorOptions, Progress, Queue, RunOptions, Status, Stopper,
};
use mysql_async::prelude::Queryable;

use crate::support::{TestDb, enqueue_readings, readings};

/// Kills the processor's connection from an admin connection after the
/// given batches, while the processor waits in the callback.
struct Killer<'a> {
    db: &'a TestDb,
    after_batches: [u64; 2],
    batches: Mutex<u64>,
    killed: Mutex<Vec<u32>>,
}

impl Observer for Killer<'_> {
    fn batch_committed(&self, _progress: &Progress) {
        let batch = {
            let mut n = self.batches.lock().unwrap();
            *n += 1;
            *n
        };
        if !self.after_batches.contains(&batch) {
            return;
        }
        let id = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let mut admin = self.db.admin().await;
                let ids: Vec<u32> = admin
                    .exec(
                        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                        (&self.db.name,),
                    )
                    .await
                    .unwrap();
                assert_eq!(ids.len(), 1, "exactly the processor's connection: {ids:?}");
                admin.query_drop(format!("KILL CONNECTION {}", ids[0])).await.unwrap();
                admin.disconnect().await.unwrap();
                ids[0]
            })
        });
        self.killed.lock().unwrap().push(id);
    }
}

#[test]
fn a_job_survives_the_server_killing_its_connection() {
    let Some(db) = TestDb::create("kill") else {
        return;
    };
    let (csv, good, sum, bad) = readings(4_000, 400);
    let path = db.write("readings.csv", &csv);
    let queue = Queue::new(&db.url, None).unwrap();
    let killer = Killer {
        db: &db,
        after_batches: [1, 5],
        batches: Mutex::new(0),
        killed: Mutex::new(Vec::new()),
    };
    db.block_on(async {
        enqueue_readings(&db, &queue, &path).await;
        let summary = queue
            .processor(ProcessorOptions::new().batch_rows(250))
            .run(&RunOptions::new().once(true), &Stopper::new(), &killer)
            .await
            .unwrap();
        assert_eq!(summary.jobs.len(), 1);
        let report = &summary.jobs[0];
        assert_eq!(report.outcome, JobOutcome::CompletedWithErrors);
        assert_eq!(report.reconnects, 2, "{report:?}");
        let killed = killer.killed.lock().unwrap().clone();
        assert_eq!(killed.len(), 2);
        assert_ne!(killed[0], killed[1], "the second kill hit a new connection");

        let job = &queue.jobs(None).await.unwrap()[0];
        assert_eq!(job.status, Status::CompletedWithErrors);
        assert_eq!(job.attempts, 1);
        assert_eq!(
            (job.rows_imported, job.rows_rejected),
            (good, bad.len() as u64)
        );
        assert_eq!(db.number("SELECT COUNT(*) FROM meter_readings").await, good);
        assert_eq!(
            db.number("SELECT CAST(SUM(kwh) * 1000 AS UNSIGNED) FROM meter_readings")
                .await,
            sum
        );
        let mut conn = db.conn().await;
        let lines: Vec<u64> = conn
            .query("SELECT line_no FROM import_errors ORDER BY line_no")
            .await
            .unwrap();
        assert_eq!(lines, bad);
        conn.disconnect().await.unwrap();
    });
}
