//! Files that do not fit their table are refused at enqueue; files that
//! change after it fail their job saying what changed; files outside the
//! source directories are never read.

use std::sync::atomic::{AtomicBool, Ordering};

use dbslots_import::{
    EnqueueOptions, Error, JobOutcome, Observer, ProcessorOptions, Progress, Queue, RunOptions,
    Status, StopSignal,
};

use crate::support::{TestDb, run_once};

const ITEMS: &str = "CREATE TABLE items (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    sku VARCHAR(20) NOT NULL,
    qty INT NOT NULL,
    label VARCHAR(20) NOT NULL DEFAULT 'none',
    UNIQUE KEY items_sku (sku)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

const LOG: &str = "CREATE TABLE log (msg VARCHAR(20) NOT NULL) ENGINE=InnoDB";

fn refusal(e: Error) -> String {
    match e {
        Error::Source { .. } | Error::Options(_) => e.to_string(),
        other => panic!("not a refusal: {other}"),
    }
}

#[test]
fn enqueue_refuses_a_file_that_does_not_fit_its_table_naming_why() {
    let Some(db) = TestDb::create("refuse") else {
        return;
    };
    let good = db.write("good.csv", b"SKU,qty\na,1\n");
    let unknown = db.write("unknown.csv", b"sku,qty,colour\na,1,red\n");
    let missing = db.write("missing.csv", b"sku,label\na,x\n");
    let empty = db.write("empty.csv", b"");
    let log = db.write("log.csv", b"msg\nhello\n");
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[ITEMS, LOG]).await;
        let items = EnqueueOptions::new("items");
        let e = refusal(queue.enqueue(&[&good, &unknown], &items).await.unwrap_err());
        assert!(
            e.contains("header field 3 (\"colour\") is not a column of table `items`"),
            "{e}"
        );
        let e = refusal(queue.enqueue(&[&missing], &items).await.unwrap_err());
        assert!(
            e.contains("column `qty` is NOT NULL without a default"),
            "{e}"
        );
        let e = refusal(queue.enqueue(&[&empty], &items).await.unwrap_err());
        assert!(e.contains("is empty"), "{e}");
        let e = refusal(
            queue
                .enqueue(&[&db.dir.path().join("nowhere.csv")], &items)
                .await
                .unwrap_err(),
        );
        assert!(e.contains("does not exist"), "{e}");
        let e = refusal(
            queue
                .enqueue(&[&good], &EnqueueOptions::new("nope"))
                .await
                .unwrap_err(),
        );
        assert!(e.contains("table `nope` does not exist"), "{e}");
        let e = refusal(
            queue
                .enqueue(&[&good], &items.clone().time_zone("Mars/Base"))
                .await
                .unwrap_err(),
        );
        assert!(e.contains("unknown time zone"), "{e}");
        let e = refusal(
            queue
                .enqueue(&[&log], &EnqueueOptions::new("log"))
                .await
                .unwrap_err(),
        );
        assert!(
            e.contains("no primary key or unique key") && e.contains("--no-key"),
            "{e}"
        );
        // Nothing of the refused calls was enqueued, not even `good` of the
        // first one.
        assert!(queue.jobs(None).await.unwrap().is_empty());

        // The unique key on `sku` makes `items` idempotent although the
        // primary key is not in the file; `label` takes its default.
        queue.enqueue(&[&good], &items).await.unwrap();
        queue.enqueue(&[&good], &items).await.unwrap();
        // Without a key, as documented, a second enqueue appends again.
        let no_key = EnqueueOptions::new("log").no_key(true);
        queue.enqueue(&[&log], &no_key).await.unwrap();
        queue.enqueue(&[&log], &no_key).await.unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert!(
            summary
                .jobs
                .iter()
                .all(|j| j.outcome == JobOutcome::Completed)
        );
        assert_eq!(
            db.number("SELECT COUNT(*) FROM items WHERE label = 'none'")
                .await,
            1
        );
        assert_eq!(db.number("SELECT COUNT(*) FROM log").await, 2);
    });
}

/// Stops the processor after its first batch.
struct StopAfterFirst(StopSignal, AtomicBool);

impl Observer for StopAfterFirst {
    fn batch_committed(&self, _: &Progress) {
        if !self.1.swap(true, Ordering::SeqCst) {
            self.0.stop();
        }
    }
}

#[test]
fn a_file_changed_after_enqueue_fails_its_job_saying_what_changed() {
    let Some(db) = TestDb::create("changed") else {
        return;
    };
    let csv = |n: u64| {
        let mut s = String::from("sku,qty\n");
        for i in 0..n {
            s.push_str(&format!("s{i:08},{}\n", i % 1000));
        }
        s.into_bytes()
    };
    let grown = db.write("grown.csv", &csv(10));
    let replaced = db.write("replaced.csv", &csv(10));
    let deleted = db.write("deleted.csv", &csv(10));
    let edited = db.write("edited.csv", &csv(20_000)); // 278 KB
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[ITEMS]).await;
        let ids = queue
            .enqueue(
                &[&grown, &replaced, &deleted, &edited],
                &EnqueueOptions::new("items"),
            )
            .await
            .unwrap();
        std::fs::write(&grown, [csv(10), b"extra,1\n".to_vec()].concat()).unwrap();
        let other = db.write("other.csv", &csv(10));
        std::fs::rename(&other, &replaced).unwrap();
        std::fs::remove_file(&deleted).unwrap();
        // `edited` is imported partly: the processor stops after a batch.
        let stop = StopSignal::new();
        let observer = StopAfterFirst(stop.clone(), AtomicBool::new(false));
        let summary = queue
            .processor(ProcessorOptions::new().batch_rows(5_000))
            .run(&RunOptions::new().once(true), &stop, &observer)
            .await
            .unwrap();
        let outcomes: Vec<&JobOutcome> = summary.jobs.iter().map(|j| &j.outcome).collect();
        assert!(
            matches!(
                outcomes[..],
                [
                    JobOutcome::Failed(_),
                    JobOutcome::Failed(_),
                    JobOutcome::Failed(_),
                    JobOutcome::Released
                ]
            ),
            "{outcomes:?}"
        );
        assert_eq!(db.number("SELECT COUNT(*) FROM items").await, 5_000);

        // An edit of the same size in the middle (outside the first and
        // last 64 KiB), the modification time put back.
        let modified = std::fs::metadata(&edited).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&edited).unwrap();
        let at = 67_000; // committed, and not in the first or last 64 KiB
        bytes[at] = if bytes[at] == b'7' { b'8' } else { b'7' };
        std::fs::write(&edited, &bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&edited)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert!(matches!(summary.jobs[0].outcome, JobOutcome::Failed(_)));

        let jobs = queue.jobs(None).await.unwrap();
        let error = |id: u64| {
            let job = jobs.iter().find(|j| j.id == id).unwrap();
            assert_eq!(job.status, Status::Failed);
            job.last_error.clone().unwrap()
        };
        assert!(
            error(ids[0]).contains("its size changed from 128 to 136 bytes"),
            "{}",
            error(ids[0])
        );
        assert!(
            error(ids[1]).contains("it was replaced by another file"),
            "{}",
            error(ids[1])
        );
        assert!(
            error(ids[2]).contains("does not exist"),
            "{}",
            error(ids[2])
        );
        assert!(
            error(ids[3]).contains(
                "its content up to the checkpoint (line 5001, byte 69458) is not what was imported"
            ),
            "{}",
            error(ids[3])
        );
        // The rows of the first batch stay; nothing of the edited file went
        // in.
        assert_eq!(db.number("SELECT COUNT(*) FROM items").await, 5_000);
    });
}

#[test]
fn a_file_outside_the_source_dirs_is_refused_without_being_read() {
    let Some(db) = TestDb::create("srcdir") else {
        return;
    };
    let allowed = db.dir.path().join("incoming");
    std::fs::create_dir(&allowed).unwrap();
    let secret = db.write("secret.csv", b"sku,qty\nTOP-SECRET-LINE,1\n");
    let inside = allowed.join("inside.csv");
    std::fs::write(&inside, b"sku,qty\nok,1\n").unwrap();
    let escape = allowed.join("escape.csv");
    std::os::unix::fs::symlink(&secret, &escape).unwrap();
    let alias = allowed.join("alias.csv");
    std::os::unix::fs::symlink(&inside, &alias).unwrap();
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[ITEMS]).await;
        let ids = queue
            .enqueue(&[&escape, &alias, &secret], &EnqueueOptions::new("items"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new().source_dir(&allowed)).await;
        let jobs = queue.jobs(None).await.unwrap();
        for (i, id) in [ids[0], ids[2]].into_iter().enumerate() {
            let job = jobs.iter().find(|j| j.id == id).unwrap();
            assert_eq!(job.status, Status::Failed, "{job:?}");
            let error = job.last_error.as_deref().unwrap();
            assert!(
                error.contains("outside the processor's source directories"),
                "{error}"
            );
            assert!(!error.contains("TOP-SECRET"), "{error}");
            assert!(matches!(
                &summary.jobs[[0, 2][i]].outcome,
                JobOutcome::Failed(_)
            ));
        }
        assert_eq!(summary.jobs[1].outcome, JobOutcome::Completed);
        assert_eq!(db.number("SELECT COUNT(*) FROM items").await, 1);
        assert_eq!(
            db.number("SELECT COUNT(*) FROM items WHERE sku = 'ok'")
                .await,
            1
        );
    });
}
