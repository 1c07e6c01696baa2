//! Two processors with their own lock files share one queue.

use std::collections::BTreeSet;

use dbslots_import::{
    EnqueueOptions, InstanceLock, JobOutcome, NoObserver, ProcessorOptions, Queue, RunOptions,
    Status, Stopper,
};

use crate::support::{METER_READINGS, TestDb, readings};

#[test]
fn two_processors_on_one_queue_do_every_job_exactly_once() {
    let Some(db) = TestDb::create("two") else {
        return;
    };
    let (csv, good, _, bad) = readings(3_000, 100);
    let files: Vec<_> = (0..8)
        .map(|i| {
            // Each file its own readings: shift the meter ids.
            let text = String::from_utf8(csv.clone())
                .unwrap()
                .replace("meter-", &format!("f{i}-meter-"));
            db.write(&format!("part-{i}.csv"), text.as_bytes())
        })
        .collect();
    let queue = Queue::new(&db.url, None).unwrap();
    let locks = [db.dir.path().join("a.lock"), db.dir.path().join("b.lock")];
    db.block_on(async {
        db.sql(&[METER_READINGS]).await;
        let ids: BTreeSet<u64> = queue
            .enqueue(&files, &EnqueueOptions::new("meter_readings"))
            .await
            .unwrap()
            .into_iter()
            .collect();
        let run = |name: &'static str, lock: std::path::PathBuf| {
            let processor = queue.processor(ProcessorOptions::new().batch_rows(200).holder(name));
            async move {
                let _lock = InstanceLock::acquire(&lock).unwrap();
                processor
                    .run(&RunOptions::new().once(true), &Stopper::new(), &NoObserver)
                    .await
                    .unwrap()
            }
        };
        let (a, b) = tokio::join!(
            tokio::spawn(run("proc-a", locks[0].clone())),
            tokio::spawn(run("proc-b", locks[1].clone()))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let done_a: BTreeSet<u64> = a.jobs.iter().map(|r| r.id).collect();
        let done_b: BTreeSet<u64> = b.jobs.iter().map(|r| r.id).collect();
        assert!(
            done_a.is_disjoint(&done_b),
            "{done_a:?} and {done_b:?} overlap"
        );
        assert_eq!(&done_a | &done_b, ids);
        assert_eq!(a.jobs.len() + b.jobs.len(), ids.len());
        for report in a.jobs.iter().chain(&b.jobs) {
            assert_eq!(
                report.outcome,
                JobOutcome::CompletedWithErrors,
                "{report:?}"
            );
        }
        for job in queue.jobs(None).await.unwrap() {
            assert_eq!(job.status, Status::CompletedWithErrors);
            assert_eq!(job.attempts, 1, "{job:?}");
            assert_eq!(
                (job.rows_imported, job.rows_rejected),
                (good, bad.len() as u64)
            );
            let holder = job.holder.as_deref().unwrap();
            let expected = if done_a.contains(&job.id) {
                "proc-a"
            } else {
                "proc-b"
            };
            assert_eq!(holder, expected);
        }
        assert_eq!(
            db.number("SELECT COUNT(*) FROM meter_readings").await,
            8 * good
        );
        assert_eq!(
            db.number("SELECT COUNT(*) FROM import_errors").await,
            8 * bad.len() as u64
        );
    });
}
