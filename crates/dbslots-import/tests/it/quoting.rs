//! RFC 4180 files: quotes, delimiters, line breaks inside fields, BOM,
//! CRLF, oversized records; rejections at the right lines.

use dbslots_import::{EnqueueOptions, JobOutcome, ProcessorOptions, Queue};
use mysql_async::prelude::Queryable;

use crate::support::{TestDb, rejections, run_once};

const NOTES: &str = "CREATE TABLE notes (
    id INT NOT NULL PRIMARY KEY,
    body VARCHAR(200) NOT NULL,
    tag VARCHAR(10) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

async fn bodies(db: &TestDb) -> Vec<(i32, String, Option<String>)> {
    let mut conn = db.conn().await;
    let rows = conn
        .query("SELECT id, body, tag FROM notes ORDER BY id")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    rows
}

#[test]
fn quoted_fields_keep_delimiters_quotes_and_line_breaks() {
    let Some(db) = TestDb::create("quote") else {
        return;
    };
    let mut file = b"\xEF\xBB\xBFID,Body,Tag\r\n".to_vec(); // line 1, with a BOM
    file.extend_from_slice(
        concat!(
            "1,\"a, b\",x\r\n",             // 2
            "2,\"say \"\"hi\"\"\",\r\n",    // 3: empty tag is NULL
            "3,\"two\nlines\",y\n",         // 4-5
            "\n",                           // 6: blank, skipped
            "4,\"1\"\",2024-01-01,5\",z\n", // 7: the old importer split this
            "5,\"unterminated,z\n",         // 8: swallows the rest...
            "6,after,z\n",                  // 9
        )
        .as_bytes(),
    );
    let path = db.write("notes.csv", &file);
    // The same rows, `;`-separated and tab-separated.
    let semi = db.write("semi.csv", b"id;body;tag\n10;\"x;y\";t\n11;plain;\n");
    let tabs = db.write("tabs.csv", b"id\tbody\ttag\n20\t\"a\tb\"\tt\n");
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[NOTES]).await;
        let ids = queue
            .enqueue(&[&path], &EnqueueOptions::new("notes"))
            .await
            .unwrap();
        queue
            .enqueue(&[&semi], &EnqueueOptions::new("notes").delimiter(b';'))
            .await
            .unwrap();
        queue
            .enqueue(&[&tabs], &EnqueueOptions::new("notes").delimiter(b'\t'))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new().batch_rows(2)).await;
        assert_eq!(summary.jobs[0].outcome, JobOutcome::CompletedWithErrors);
        assert_eq!(
            (summary.jobs[0].rows_imported, summary.jobs[0].rows_rejected),
            (4, 1)
        );
        assert_eq!(summary.jobs[1].outcome, JobOutcome::Completed);
        assert_eq!(summary.jobs[2].outcome, JobOutcome::Completed);
        let got = bodies(&db).await;
        let expected: Vec<(i32, String, Option<String>)> = vec![
            (1, "a, b".into(), Some("x".into())),
            (2, "say \"hi\"".into(), None),
            (3, "two\nlines".into(), Some("y".into())),
            (4, "1\",2024-01-01,5".into(), Some("z".into())),
            (10, "x;y".into(), Some("t".into())),
            (11, "plain".into(), None),
            (20, "a\tb".into(), Some("t".into())),
        ];
        assert_eq!(got, expected);
        // Record 5 opens a quote that runs to the end of the file: one
        // record starting on line 8, rejected there for its quote.
        let errors = rejections(&db, ids[0]).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 8);
        assert!(
            errors[0]
                .2
                .contains("quote opened on line 8 is never closed"),
            "{errors:?}"
        );
    });
}

#[test]
fn a_stray_quote_never_merges_records_silently() {
    let Some(db) = TestDb::create("stray") else {
        return;
    };
    // Record 2 opens a quote that record 4 appears to close: read leniently,
    // lines 2-4 are one record of the right field count, whose body holds
    // records 3 and 4.
    let path = db.write(
        "stray.csv",
        b"id,body,tag\n1,\"first,a\n2,second,b\n3,\"third\",c\n4,fourth,d\n",
    );
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[NOTES]).await;
        let ids = queue
            .enqueue(&[&path], &EnqueueOptions::new("notes"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert_eq!(summary.jobs[0].outcome, JobOutcome::CompletedWithErrors);
        assert_eq!(
            (summary.jobs[0].rows_imported, summary.jobs[0].rows_rejected),
            (1, 1)
        );
        let ids_in: Vec<i32> = bodies(&db).await.into_iter().map(|r| r.0).collect();
        assert_eq!(ids_in, [4]);
        let errors = rejections(&db, ids[0]).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 2, "{errors:?}");
        assert!(
            errors[0]
                .2
                .contains("closing quote on line 4 is followed by text"),
            "{errors:?}"
        );
    });
}

#[test]
fn a_record_over_the_size_limit_is_rejected_and_the_next_one_read() {
    let Some(db) = TestDb::create("big") else {
        return;
    };
    let mut file = b"id,body,tag\n1,ok,a\n2,\"".to_vec();
    file.extend(std::iter::repeat_n(
        b'x',
        dbslots_import::MAX_RECORD_BYTES + 1,
    ));
    file.extend_from_slice(b"\",b\n3,\"also\nok\",c\n");
    let path = db.write("big.csv", &file);
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[NOTES]).await;
        let ids = queue
            .enqueue(&[&path], &EnqueueOptions::new("notes"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert_eq!(
            (summary.jobs[0].rows_imported, summary.jobs[0].rows_rejected),
            (2, 1)
        );
        let errors = rejections(&db, ids[0]).await;
        assert_eq!(errors[0].0, 3);
        assert!(
            errors[0].2.starts_with("record is over 1024 KiB"),
            "{errors:?}"
        );
        let ids_in: Vec<i32> = bodies(&db).await.into_iter().map(|r| r.0).collect();
        assert_eq!(ids_in, [1, 3]);
    });
}
