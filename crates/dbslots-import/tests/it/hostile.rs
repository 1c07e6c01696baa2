//! Hostile files and tables: every record is imported or rejected, each
//! rejection kept, and what the importer accepts is what the file says.

use dbslots_import::{EnqueueOptions, JobOutcome, ProcessorOptions, Queue};
use mysql_async::prelude::Queryable;

use crate::support::{TestDb, rejections, run_once};

#[test]
fn every_rejection_of_a_file_with_lone_cr_line_breaks_is_kept() {
    let Some(db) = TestDb::create("lone_cr") else {
        return;
    };
    // A classic Mac file (records ended by CR alone) with three bad
    // records, and a stray CR that splits a record of an LF file in two.
    let mac = db.write("mac.csv", b"id,n\r1,x\r2,10\r3,y\r4,z\r");
    let stray = db.write("stray.csv", b"id,n\n1,1\n2\r,2\n3,3\n");
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE nums (id INT NOT NULL PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB"])
            .await;
        let ids = queue
            .enqueue(&[&mac, &stray], &EnqueueOptions::new("nums"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert_eq!(
            (summary.jobs[0].rows_imported, summary.jobs[0].rows_rejected),
            (1, 3)
        );
        let lines: Vec<u64> = rejections(&db, ids[0]).await.iter().map(|r| r.0).collect();
        assert_eq!(lines, [2, 4, 5], "one rejection per bad record");
        assert_eq!(
            (summary.jobs[1].rows_imported, summary.jobs[1].rows_rejected),
            (2, 2)
        );
        let lines: Vec<u64> = rejections(&db, ids[1]).await.iter().map(|r| r.0).collect();
        assert_eq!(lines, [3, 4], "both halves of the split record");
    });
}

#[test]
fn an_offset_the_enqueue_accepts_is_a_time_zone_the_processor_can_set() {
    let Some(db) = TestDb::create("offset_zone") else {
        return;
    };
    let path = db.write(
        "events.csv",
        b"id,at\n1,2024-07-01T10:00:00Z\n2,2024-07-01 12:00:00\n",
    );
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE events (id INT NOT NULL PRIMARY KEY, at TIMESTAMP NULL DEFAULT NULL) ENGINE=InnoDB"])
            .await;
        for zone in ["+0100", "+01"] {
            queue
                .enqueue(&[&path], &EnqueueOptions::new("events").time_zone(zone))
                .await
                .unwrap();
        }
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        for report in &summary.jobs {
            assert_eq!(report.outcome, JobOutcome::Completed, "{report:?}");
        }
        let mut conn = db.conn().await;
        conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
        let rows: Vec<(i32, String)> = conn
            .query("SELECT id, CAST(at AS CHAR) FROM events ORDER BY id")
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        assert_eq!(
            rows,
            [
                (1, "2024-07-01 10:00:00".to_owned()),
                (2, "2024-07-01 11:00:00".to_owned())
            ]
        );
    });
}

#[test]
fn enum_and_set_members_of_a_case_sensitive_collation_are_matched_exactly() {
    let Some(db) = TestDb::create("cs_enum") else {
        return;
    };
    // The server refuses 'A' for ENUM('a','B') under latin1_general_cs (and
    // under the binary character set); the importer must not store 'a'.
    let path = db.write("cs.csv", b"id,e,s,b\n1,a,B,x\n2,A,B,x\n3,a,b,x\n4,a,B,X\n");
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE cs (
                id INT NOT NULL PRIMARY KEY,
                e ENUM('a','B') CHARACTER SET latin1 COLLATE latin1_general_cs NOT NULL,
                s SET('a','B') CHARACTER SET latin1 COLLATE latin1_general_cs NOT NULL,
                b ENUM('x') CHARACTER SET binary NOT NULL
            ) ENGINE=InnoDB"])
            .await;
        let ids = queue
            .enqueue(&[&path], &EnqueueOptions::new("cs"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert_eq!(summary.jobs[0].outcome, JobOutcome::CompletedWithErrors);
        let blamed: Vec<(u64, Option<String>)> = rejections(&db, ids[0])
            .await
            .into_iter()
            .map(|r| (r.0, r.1))
            .collect();
        assert_eq!(
            blamed,
            [
                (3, Some("e".into())),
                (4, Some("s".into())),
                (5, Some("b".into()))
            ]
        );
        let mut conn = db.conn().await;
        let rows: Vec<(i32, String, String)> = conn
            .query("SELECT id, CAST(e AS CHAR), CAST(s AS CHAR) FROM cs ORDER BY id")
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        assert_eq!(rows, [(1, "a".to_owned(), "B".to_owned())]);
    });
}

#[test]
fn invalid_json_in_a_mariadb_json_column_with_a_space_in_its_name_is_a_rejection() {
    let Some(db) = TestDb::create("json_space") else {
        return;
    };
    let path = db.write(
        "docs.csv",
        b"id,my doc\n1,\"{\"\"a\"\":1}\"\n2,{not json}\n3,[]\n",
    );
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        let mut conn = db.conn().await;
        let version: String = conn.query_first("SELECT VERSION()").await.unwrap().unwrap();
        conn.disconnect().await.unwrap();
        if !version.contains("MariaDB") {
            eprintln!("SKIPPED: MySQL's JSON is a type of its own");
            return;
        }
        db.sql(&[
            "CREATE TABLE docs (id INT NOT NULL PRIMARY KEY, `my doc` JSON NOT NULL) ENGINE=InnoDB",
        ])
        .await;
        let ids = queue
            .enqueue(&[&path], &EnqueueOptions::new("docs"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        let report = &summary.jobs[0];
        assert_eq!(
            report.outcome,
            JobOutcome::CompletedWithErrors,
            "{report:?}"
        );
        assert_eq!((report.rows_imported, report.rows_rejected), (2, 1));
        let errors = rejections(&db, ids[0]).await;
        assert_eq!(errors[0].0, 3);
        assert!(errors[0].2.contains("not valid JSON"), "{errors:?}");
    });
}

#[test]
fn a_batch_redone_after_an_aborted_transaction_appends_no_row_twice_to_a_myisam_table() {
    let Some(db) = TestDb::create("myisam_redo") else {
        return;
    };
    let path = db.write("log.csv", b"id,v\n1,a\n2,b\n3,c\n");
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        // A table without a key that a rollback cannot undo, and a batch
        // whose transaction is aborted (as by a deadlock) after two of its
        // rows went in: the processor redoes the batch from the checkpoint.
        db.sql(&[
            "CREATE TABLE log (id INT NOT NULL, v VARCHAR(5) NOT NULL) ENGINE=MyISAM",
            "CREATE TABLE once (n INT) ENGINE=MyISAM",
            "INSERT INTO once VALUES (1)",
            "CREATE TRIGGER log_abort AFTER INSERT ON log FOR EACH ROW \
             IF NEW.id = 3 AND (SELECT COUNT(*) FROM once) > 0 THEN \
               DELETE FROM once; \
               SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found'; \
             END IF",
        ])
        .await;
        let refused = queue
            .enqueue(&[&path], &EnqueueOptions::new("log").no_key(true))
            .await
            .expect_err("a table without key that a rollback cannot undo is refused");
        let refused = refused.to_string();
        assert!(
            refused.contains("MyISAM") && refused.contains("add a primary or unique key"),
            "{refused}"
        );
        // A job enqueued while the table was InnoDB fails before any row.
        db.sql(&["ALTER TABLE log ENGINE=InnoDB"]).await;
        queue
            .enqueue(&[&path], &EnqueueOptions::new("log").no_key(true))
            .await
            .unwrap();
        db.sql(&["ALTER TABLE log ENGINE=MyISAM"]).await;
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert!(
            matches!(&summary.jobs[0].outcome, JobOutcome::Failed(e) if e.contains("MyISAM")),
            "{:?}",
            summary.jobs
        );
        assert_eq!(db.number("SELECT COUNT(*) FROM log").await, 0);
    });
}

#[test]
fn a_blank_line_of_a_one_column_file_is_a_record_of_one_empty_field() {
    let Some(db) = TestDb::create("blank_one_column") else {
        return;
    };
    // PostgreSQL's COPY ... CSV writes a NULL of a one-column table as an
    // empty line; LOAD DATA reads such a line as a row too.
    let notes = db.write("notes.csv", b"note\r\nfirst\r\n\r\nthird\r\n");
    let counts = db.write("counts.csv", b"n\n1\n\n3\n");
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[
            "CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20) NULL) ENGINE=InnoDB",
            "CREATE TABLE counts (n INT NOT NULL) ENGINE=InnoDB",
        ])
        .await;
        let append = |table| EnqueueOptions::new(table).no_key(true);
        queue.enqueue(&[&notes], &append("notes")).await.unwrap();
        let ids = queue.enqueue(&[&counts], &append("counts")).await.unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert_eq!(
            (summary.jobs[0].rows_imported, summary.jobs[0].rows_rejected),
            (3, 0),
            "{:?}",
            summary.jobs[0]
        );
        assert_eq!(
            (summary.jobs[1].rows_imported, summary.jobs[1].rows_rejected),
            (2, 1),
            "{:?}",
            summary.jobs[1]
        );
        let lines: Vec<u64> = rejections(&db, ids[0]).await.iter().map(|r| r.0).collect();
        assert_eq!(lines, [3], "the blank line, named as such");
        let mut conn = db.conn().await;
        let rows: Vec<Option<String>> = conn
            .query("SELECT note FROM notes ORDER BY id")
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        assert_eq!(rows, [Some("first".to_owned()), None, Some("third".to_owned())]);
    });
}
