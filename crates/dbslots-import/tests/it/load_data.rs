//! Rows go in with `LOAD DATA LOCAL INFILE` only where that stores what
//! `INSERT ... ON DUPLICATE KEY UPDATE` would: new keys into an InnoDB
//! table. Keys already there, or twice in a batch, roll the batch back and
//! the rest of the job is upserted.

use dbslots_import::{EnqueueOptions, JobReport, ProcessorOptions, Queue, Status};
use mysql_async::prelude::Queryable;

use crate::support::{TestDb, run_once};

/// (id, v, note, body) in id order.
type Row = (u32, String, String, Option<String>);

/// (id, v, body): one CSV record.
type Record = (u32, String, Option<String>);

/// `CREATE TABLE name` with the columns the tests use (a `note` the files
/// lack, with a default) in `engine`.
fn create_table(name: &str, engine: &str) -> String {
    format!(
        "CREATE TABLE {name} (
            id INT UNSIGNED NOT NULL PRIMARY KEY,
            v VARCHAR(20) NOT NULL,
            note VARCHAR(20) NOT NULL DEFAULT 'default',
            body TEXT NULL
        ) ENGINE={engine} DEFAULT CHARSET=utf8mb4"
    )
}

/// Records `ids`, with `v` = `aID` and every kind of body.
fn records(ids: std::ops::RangeInclusive<u32>) -> Vec<Record> {
    ids.map(|i| (i, format!("a{i}"), body(i))).collect()
}

/// The rows `records` become, with `note(id)` in the column the file lacks.
fn rows_of(records: &[Record], note: impl Fn(u32) -> &'static str) -> Vec<Row> {
    records
        .iter()
        .map(|(id, v, body)| (*id, v.clone(), note(*id).to_owned(), body.clone()))
        .collect()
}

/// Writes `records` to `file_name`, imports it into `table` with `options`
/// in one run, and returns the job's report.
async fn import(
    db: &TestDb,
    queue: &Queue,
    table: &str,
    file_name: &str,
    records: &[Record],
    options: ProcessorOptions,
) -> JobReport {
    let path = db.write(file_name, &file(records));
    queue
        .enqueue(&[&path], &EnqueueOptions::new(table))
        .await
        .unwrap();
    let mut summary = run_once(queue, options).await;
    summary.jobs.remove(0)
}

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

fn file(records: &[Record]) -> Vec<u8> {
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
        db.sql(&[&create_table("t", "InnoDB")]).await;
        let first = records(1..=1000);
        let options = ProcessorOptions::new().batch_rows(300);
        let report = import(&db, &queue, "t", "first.csv", &first, options).await;
        assert_eq!(report.outcome, dbslots_import::JobOutcome::Completed);
        assert_eq!(
            report.rows_loaded, 1000,
            "new keys into an InnoDB table go in with LOAD DATA"
        );
        let expected = rows_of(&first, |_| "default");
        assert_eq!(rows(&db, "t").await, expected);

        // A column the file lacks keeps its value on a duplicate key
        // (REPLACE would reset it), and the last of two records with one
        // key wins.
        db.sql(&["UPDATE t SET note = 'kept' WHERE id <= 10"]).await;
        let mut second: Vec<Record> = (1..=10)
            .map(|i| (i, format!("b{i}"), body(i + 1)))
            .collect();
        second.push((1001, "new".into(), None));
        second.push((1002, "first".into(), None));
        second.push((1002, "second".into(), Some("won".into())));
        let report = import(
            &db,
            &queue,
            "t",
            "second.csv",
            &second,
            ProcessorOptions::new(),
        )
        .await;
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
            &create_table("t", "InnoDB"),
            "INSERT INTO t (id, v, note) VALUES (450, 'old', 'kept')",
        ])
        .await;
        let records = records(1..=1000);
        let options = ProcessorOptions::new().batch_rows(300);
        let report = import(&db, &queue, "t", "readings.csv", &records, options).await;
        assert_eq!(report.outcome, dbslots_import::JobOutcome::Completed);
        // The first batch (records 1-300) is loaded; the second holds key
        // 450, so it and everything after it is upserted.
        assert_eq!((report.rows_imported, report.rows_loaded), (1000, 300));
        let expected = rows_of(&records, |id| if id == 450 { "kept" } else { "default" });
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
        db.sql(&[&create_table("m", "MyISAM")]).await;
        let records = records(1..=50);
        let report = import(&db, &queue, "m", "m.csv", &records, ProcessorOptions::new()).await;
        assert_eq!((report.rows_imported, report.rows_loaded), (50, 0));
        assert_eq!(rows(&db, "m").await, rows_of(&records, |_| "default"));
    });
}
