//! A table of mixed types and a generated hostile file: every bad value is
//! rejected with its record's first line and its column, every good one is
//! stored exactly.

use dbslots_import::{EnqueueOptions, JobOutcome, ProcessorOptions, Queue};
use mysql_async::prelude::Queryable;

use crate::support::{TestDb, rejections, run_once};

const MIXED: &str = "CREATE TABLE mixed (
    id BIGINT UNSIGNED NOT NULL,
    small TINYINT NOT NULL,
    counter INT UNSIGNED NOT NULL,
    amount DECIMAL(10,2) NOT NULL,
    name VARCHAR(10) CHARACTER SET utf8mb4 NOT NULL,
    colour ENUM('red','green','blue') NOT NULL,
    day DATE NOT NULL,
    at DATETIME(3) NOT NULL,
    seen TIMESTAMP NULL DEFAULT NULL,
    doc JSON NOT NULL,
    note TEXT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// One generated record: its text (possibly several lines) and, when it is
/// bad, the column to blame (`""` for the record as a whole).
struct Record {
    text: String,
    bad: Option<&'static str>,
}

/// Record `i`: a defect chosen by `i % 19`, good otherwise.
fn record(i: u64) -> Record {
    let good = |note: &str| {
        format!(
            "{i},{},{},{}.{:02},ä€𝄞-{},{},2024-{:02}-{:02},2024-06-01 12:00:{:02}.{:03},2024-06-01T10:00:00Z,\"{{\"\"i\"\":{i}}}\",{note}",
            (i % 256) as i64 - 128,
            i * 1000,
            i,
            i % 100,
            i % 1000,
            ["red", "GREEN", "blue"][(i % 3) as usize],
            1 + i % 12,
            1 + i % 28,
            i % 60,
            i % 1000
        )
    };
    let replace = |field: usize, value: &str| {
        let mut parts: Vec<String> = good("n").split(',').map(str::to_owned).collect();
        parts[field] = value.to_owned();
        parts.join(",")
    };
    let (text, bad) = match i % 19 {
        1 => (replace(1, "128"), Some("small")),
        2 => (replace(2, "-1"), Some("counter")),
        3 => (replace(3, "1.005"), Some("amount")),
        4 => (replace(4, "ääääääääääé"), Some("name")),
        5 => (replace(5, "purple"), Some("colour")),
        6 => (replace(6, "2023-02-29"), Some("day")),
        7 => (replace(7, "2024-06-01 12:00:00.1234"), Some("at")),
        8 => (replace(8, "1969-12-31 23:59:59"), Some("seen")),
        9 => (replace(9, "{not json}"), Some("doc")),
        10 => (good(""), None),
        11 => (format!("{i},1,2"), Some("")),
        12 => (good("\"a note\nover, three\r\nlines\""), None),
        13 => (replace(1, ""), Some("small")),
        14 => (good("\\N"), None),
        15 => (replace(3, "99999999.99"), None),
        16 => (replace(3, "100000000"), Some("amount")),
        17 => (replace(2, "4294967295"), None),
        _ => (good("plain"), None),
    };
    Record { text, bad }
}

#[test]
fn every_value_is_checked_by_its_column_and_rejections_name_line_and_column() {
    let Some(db) = TestDb::create("mixed") else {
        return;
    };
    let n = 3_000u64;
    let mut file = String::from("id,Small,counter,amount,name,colour,day,at,seen,doc,note\r\n");
    let mut line = 2u64;
    let mut expected_bad: Vec<(u64, Option<String>)> = Vec::new();
    let mut good = Vec::new();
    for i in 1..=n {
        let r = record(i);
        match r.bad {
            Some("") => expected_bad.push((line, None)),
            Some(column) => expected_bad.push((line, Some(column.to_owned()))),
            None => good.push(i),
        }
        line += r.text.matches('\n').count() as u64 + 1;
        file.push_str(&r.text);
        file.push_str("\r\n");
    }
    // Invalid UTF-8 in a text field, after everything else.
    file.push_str(&format!("{},0,0,0,", n + 1));
    let mut bytes = file.into_bytes();
    bytes.extend_from_slice(b"bad\xff,red,2024-01-01,2024-01-01 00:00:00,,{},\r\n");
    expected_bad.push((line, Some("name".into())));
    let path = db.write("mixed.csv", &bytes);

    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&[MIXED]).await;
        let ids = queue
            .enqueue(&[&path], &EnqueueOptions::new("mixed"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new().batch_rows(97)).await;
        let report = &summary.jobs[0];
        assert_eq!(report.outcome, JobOutcome::CompletedWithErrors);
        assert_eq!(
            (report.rows_imported, report.rows_rejected),
            (good.len() as u64, expected_bad.len() as u64)
        );
        // Every key is new: the values below went in through LOAD DATA.
        assert_eq!(report.rows_loaded, good.len() as u64);
        assert_eq!(
            db.number("SELECT COUNT(*) FROM mixed").await,
            good.len() as u64
        );
        assert_eq!(
            db.number("SELECT CAST(SUM(id) AS UNSIGNED) FROM mixed").await,
            good.iter().sum::<u64>()
        );
        let got: Vec<(u64, Option<String>)> = rejections(&db, ids[0])
            .await
            .into_iter()
            .map(|(line, column, _)| (line, column))
            .collect();
        assert_eq!(got, expected_bad);

        let reasons = rejections(&db, ids[0]).await;
        let reason = |line: u64| {
            reasons
                .iter()
                .find(|r| r.0 == line)
                .map(|r| r.2.clone())
                .unwrap()
        };
        let line_of = |column: &str| expected_bad.iter().find(|b| b.1.as_deref() == Some(column)).unwrap().0;
        assert!(reason(line_of("small")).contains("out of range (-128 to 127)"), "{}", reason(line_of("small")));
        assert!(reason(line_of("amount")).contains("would round"), "{}", reason(line_of("amount")));
        assert!(reason(line_of("name")).contains("11 characters long; the column holds at most 10"));
        assert!(reason(line_of("seen")).contains("TIMESTAMP range"));
        assert!(reason(line_of("doc")).contains("not valid JSON"));
        assert!(reason(expected_bad.iter().find(|b| b.1.is_none()).unwrap().0).contains("expected 11"));

        let mut conn = db.conn().await;
        conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
        // Record 12: a multi-line quoted note; 15 and 17: the largest values.
        type Row = (i64, u64, String, String, String, String, String, String, String, Option<String>);
        let rows: Vec<Row> = conn
            .query(
                "SELECT small, counter, CAST(amount AS CHAR), name, CAST(colour AS CHAR), CAST(day AS CHAR), \
                 CAST(at AS CHAR), CAST(seen AS CHAR), CAST(doc AS CHAR), note FROM mixed WHERE id IN (12, 15, 17, 10, 14) ORDER BY id",
            )
            .await
            .unwrap();
        assert_eq!(rows[0].9, None, "record 10: an empty field in a nullable column is NULL");
        assert_eq!(rows[1].9.as_deref(), Some("a note\nover, three\r\nlines"));
        assert_eq!(rows[1].3, "ä€𝄞-12");
        assert_eq!(rows[0].4, "green", "stored in the column's spelling");
        assert_eq!(rows[1].6, "2024-06-01 12:00:12.012");
        assert_eq!(rows[1].7, "2024-06-01 10:00:00");
        assert_eq!(rows[2].9, None, "record 14: \\N is NULL");
        assert_eq!(rows[3].2, "99999999.99");
        assert_eq!(rows[4].1, 4_294_967_295);
        conn.disconnect().await.unwrap();
    });
}

#[test]
fn fixed_width_columns_get_exactly_what_the_file_says_or_a_rejection() {
    let Some(db) = TestDb::create("fixed") else {
        return;
    };
    // CHAR drops trailing spaces and BINARY pads with zero bytes: such
    // values would not read back as written, so they are rejected.
    let path = db.write(
        "fixed.csv",
        b"id,code,tag\n1,ab,abcd\n2,ab  ,abcd\n3,ab,ab\n4, ab,wxyz\n",
    );
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        db.sql(&["CREATE TABLE fixed (
                id INT NOT NULL PRIMARY KEY,
                code CHAR(6) NOT NULL,
                tag BINARY(4) NOT NULL
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"])
            .await;
        let ids = queue
            .enqueue(&[&path], &EnqueueOptions::new("fixed"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert_eq!(summary.jobs[0].outcome, JobOutcome::CompletedWithErrors);
        let errors = rejections(&db, ids[0]).await;
        let blamed: Vec<(u64, Option<String>)> =
            errors.iter().map(|e| (e.0, e.1.clone())).collect();
        assert_eq!(
            blamed,
            [(3, Some("code".into())), (4, Some("tag".into()))],
            "{errors:?}"
        );
        let mut conn = db.conn().await;
        let rows: Vec<(i32, String, Vec<u8>)> = conn
            .query("SELECT id, code, tag FROM fixed ORDER BY id")
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        assert_eq!(
            rows,
            [
                (1, "ab".into(), b"abcd".to_vec()),
                (4, " ab".into(), b"wxyz".to_vec())
            ]
        );
    });
}
