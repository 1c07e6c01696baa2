//! Rows go in with `LOAD DATA LOCAL INFILE` only where that stores what
//! `INSERT ... ON DUPLICATE KEY UPDATE` would: new keys into an InnoDB
//! table. Keys already there, or twice in a batch, roll the batch back and
//! the rest of the job is upserted.

use dbslots_import::{EnqueueOptions, ProcessorOptions, Queue, Status};
use mysql_async::prelude::Queryable;

use crate::support::{TestDb, run_once};

/// (id, v, note, body) in id order.
type Row = (u32, String, String, Option<String>);

async fn rows(db: &TestDb, table: &str) -> Vec<Row> {
    let mut conn = db.conn().await;
    let rows = conn
        .query(format!("SELECT id, v, note, body FROM {table} ORDER BY id"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    rows
}

/// A body with the bytes `LOAD DATA` treats specially (tab, LF,
/// backslash, NUL, `\N` inside text, a backslash at the end), multibyte
/// text, or none (an empty field in a nullable column is NULL).
fn body(i: u32) -> Option<String> {
    match i % 6 {
        0 => None,
        1 => Some(format!("tab\there {i}")),
        2 => Some(format!("line\nbreak\r\n{i}")),
        3 => Some(format!("back\\slash \\N \\t {i}")),
        4 => Some(format!("zero\0byte, \"quoted\", Zürich {i}")),
        _ => Some(format!("{i} ends in a backslash\\")),
    }
}

/// A CSV field for `body`: empty for NULL.
fn csv_body(body: &Option<String>) -> String {
    match body {
        None => String::new(),
        Some(text) => format!("\"{}\"", text.replace('"', "\"\"")),
    }
}

fn file(records: &[(u32, String, Option<String>)]) -> Vec<u8> {
    let mut out = String::from("id,v,body\n");
    for (id, v, body) in records {
        out.push_str(&format!("{id},{v},{}\n", csv_body(body)));
    }
    out.into_bytes()
}

#[test]
fn loaded_rows_are_exact_and_keys_already_there_are_upserted() {
    let Some(db) = TestDb::create("load_data") else {
        return;
    };
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE t (
                id INT UNSIGNED NOT NULL PRIMARY KEY,
                v VARCHAR(20) NOT NULL,
                note VARCHAR(20) NOT NULL DEFAULT 'default',
                body TEXT NULL
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"])
            .await;
        let first: Vec<(u32, String, Option<String>)> =
            (1..=1000).map(|i| (i, format!("a{i}"), body(i))).collect();
        let path = db.write("first.csv", &file(&first));
        queue
            .enqueue(&[&path], &EnqueueOptions::new("t"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new().batch_rows(300)).await;
        let report = &summary.jobs[0];
        assert_eq!(report.outcome, dbslots_import::JobOutcome::Completed);
        assert_eq!(
            report.rows_loaded, 1000,
            "new keys into an InnoDB table go in with LOAD DATA"
        );
        let expected: Vec<Row> = first
            .iter()
            .map(|(id, v, body)| (*id, v.clone(), "default".to_owned(), body.clone()))
            .collect();
        assert_eq!(rows(&db, "t").await, expected);

        // A column the file lacks keeps its value on a duplicate key
        // (REPLACE would reset it), and the last of two records with one
        // key wins.
        db.sql(&["UPDATE t SET note = 'kept' WHERE id <= 10"]).await;
        let mut second: Vec<(u32, String, Option<String>)> = (1..=10)
            .map(|i| (i, format!("b{i}"), body(i + 1)))
            .collect();
        second.push((1001, "new".into(), None));
        second.push((1002, "first".into(), None));
        second.push((1002, "second".into(), Some("won".into())));
        let path = db.write("second.csv", &file(&second));
        queue
            .enqueue(&[&path], &EnqueueOptions::new("t"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        let report = &summary.jobs[0];
        assert_eq!(report.outcome, dbslots_import::JobOutcome::Completed);
        assert_eq!((report.rows_imported, report.rows_loaded), (13, 0));
        let mut expected = expected;
        for (id, v, body) in &second[..10] {
            expected[*id as usize - 1] = (*id, v.clone(), "kept".into(), body.clone());
        }
        expected.push((1001, "new".into(), "default".into(), None));
        expected.push((1002, "second".into(), "default".into(), Some("won".into())));
        assert_eq!(rows(&db, "t").await, expected);
        let jobs = queue.jobs(None).await.unwrap();
        assert!(jobs.iter().all(|j| j.status == Status::Completed));
    });
}

#[test]
fn a_batch_with_a_key_already_there_is_rolled_back_and_the_rest_upserted() {
    let Some(db) = TestDb::create("load_data_mid") else {
        return;
    };
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[
            "CREATE TABLE t (
                id INT UNSIGNED NOT NULL PRIMARY KEY,
                v VARCHAR(20) NOT NULL,
                note VARCHAR(20) NOT NULL DEFAULT 'default',
                body TEXT NULL
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "INSERT INTO t (id, v, note) VALUES (450, 'old', 'kept')",
        ])
        .await;
        let records: Vec<(u32, String, Option<String>)> =
            (1..=1000).map(|i| (i, format!("a{i}"), body(i))).collect();
        let path = db.write("readings.csv", &file(&records));
        queue
            .enqueue(&[&path], &EnqueueOptions::new("t"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new().batch_rows(300)).await;
        let report = &summary.jobs[0];
        assert_eq!(report.outcome, dbslots_import::JobOutcome::Completed);
        // The first batch (records 1-300) is loaded; the second holds key
        // 450, so it and everything after it is upserted.
        assert_eq!((report.rows_imported, report.rows_loaded), (1000, 300));
        let expected: Vec<Row> = records
            .iter()
            .map(|(id, v, body)| {
                let note = if *id == 450 { "kept" } else { "default" };
                (*id, v.clone(), note.to_owned(), body.clone())
            })
            .collect();
        assert_eq!(rows(&db, "t").await, expected);
    });
}

#[test]
fn a_table_a_rollback_cannot_undo_is_written_with_insert_statements() {
    let Some(db) = TestDb::create("load_data_myisam") else {
        return;
    };
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE m (
                id INT UNSIGNED NOT NULL PRIMARY KEY,
                v VARCHAR(20) NOT NULL,
                note VARCHAR(20) NOT NULL DEFAULT 'default',
                body TEXT NULL
            ) ENGINE=MyISAM DEFAULT CHARSET=utf8mb4"])
            .await;
        let records: Vec<(u32, String, Option<String>)> =
            (1..=50).map(|i| (i, format!("a{i}"), body(i))).collect();
        let path = db.write("m.csv", &file(&records));
        queue
            .enqueue(&[&path], &EnqueueOptions::new("m"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        let report = &summary.jobs[0];
        assert_eq!((report.rows_imported, report.rows_loaded), (50, 0));
        let expected: Vec<Row> = records
            .iter()
            .map(|(id, v, body)| (*id, v.clone(), "default".to_owned(), body.clone()))
            .collect();
        assert_eq!(rows(&db, "m").await, expected);
    });
}
