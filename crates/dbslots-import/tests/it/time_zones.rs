//! Offsets are converted to the job's time zone; local times that a clock
//! change skips or repeats are rejected for TIMESTAMP columns.

use dbslots_import::{EnqueueOptions, ProcessorOptions, Queue};
use mysql_async::prelude::Queryable;

use crate::support::{TestDb, rejections, run_once};

const EVENTS: &str = "CREATE TABLE events (
    id INT NOT NULL PRIMARY KEY,
    wall DATETIME(3) NULL,
    at TIMESTAMP(3) NULL DEFAULT NULL
) ENGINE=InnoDB";

/// Loads Europe/Berlin into the server's time zone tables unless it is
/// there (the admin account may write `mysql.*`); `false` when that is not
/// possible here.
async fn ensure_berlin(db: &TestDb) -> bool {
    let mut admin = db.admin().await;
    let known: Option<u64> = admin
        .query_first("SELECT COUNT(*) FROM mysql.time_zone_name WHERE Name = 'Europe/Berlin'")
        .await
        .unwrap();
    if known == Some(0) {
        let sql = std::process::Command::new("mariadb-tzinfo-to-sql")
            .args(["/usr/share/zoneinfo/Europe/Berlin", "Europe/Berlin"])
            .output();
        let Some(sql) = sql.ok().filter(|o| o.status.success()) else {
            eprintln!("SKIPPED part: mariadb-tzinfo-to-sql is not available");
            return false;
        };
        let sql = String::from_utf8(sql.stdout).unwrap();
        // A concurrent test may have loaded it meanwhile: a duplicate name
        // is fine.
        let _ = admin.query_drop(format!("USE mysql; {sql}")).await;
    }
    admin.disconnect().await.unwrap();
    true
}

#[test]
fn offsets_convert_and_clock_changes_are_not_guessed() {
    let Some(db) = TestDb::create("tz") else {
        return;
    };
    let file = concat!(
        "id,wall,at\n",
        "1,2024-07-01T10:00:00Z,2024-07-01T10:00:00.5Z\n", // 2
        "2,2024-07-01 12:00:00,2024-07-01 12:00:00\n",     // 3: local
        "3,2024-01-01T00:00:00+05:30,2024-01-01T00:00:00+05:30\n", // 4
        "4,2024-03-31 02:30:00,\n",                        // 5: wall clock kept
        "5,,2024-03-31 02:30:00\n",                        // 6: skipped hour
        "6,,2024-10-27 02:30:00\n",                        // 7: repeated hour
        "7,,2024-10-27T00:30:00Z\n",                       // 8: lands in it
        "8,,2024-10-27T02:30:00Z\n",                       // 9: after it
    );
    let path = db.write("events.csv", file.as_bytes());
    let utc = db.write(
        "utc.csv",
        b"id,wall,at\n100,2024-10-27T00:30:00+02:00,2024-10-27 02:30:00\n",
    );
    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        if !ensure_berlin(&db).await {
            return;
        }
        db.sql(&[EVENTS]).await;
        let ids = queue
            .enqueue(
                &[&path],
                &EnqueueOptions::new("events").time_zone("Europe/Berlin"),
            )
            .await
            .unwrap();
        queue
            .enqueue(&[&utc], &EnqueueOptions::new("events"))
            .await
            .unwrap();
        let summary = run_once(&queue, ProcessorOptions::new()).await;
        assert_eq!(
            (summary.jobs[0].rows_imported, summary.jobs[0].rows_rejected),
            (5, 3)
        );
        assert_eq!(summary.jobs[1].rows_imported, 1);
        let errors = rejections(&db, ids[0]).await;
        let lines: Vec<(u64, Option<String>)> = errors.iter().map(|e| (e.0, e.1.clone())).collect();
        assert_eq!(
            lines,
            [
                (6, Some("at".into())),
                (7, Some("at".into())),
                (8, Some("at".into()))
            ]
        );
        assert!(
            errors[0]
                .2
                .contains("does not exist in time zone Europe/Berlin"),
            "{errors:?}"
        );
        assert!(errors[1].2.contains("ambiguous"), "{errors:?}");
        assert!(errors[2].2.contains("repeats"), "{errors:?}");

        let mut conn = db.conn().await;
        conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
        let rows: Vec<(i32, Option<String>, Option<String>)> = conn
            .query("SELECT id, CAST(wall AS CHAR), CAST(at AS CHAR) FROM events ORDER BY id")
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            rows,
            [
                // DATETIME holds Berlin's wall clock; TIMESTAMP the instant
                // (shown in UTC).
                (
                    1,
                    s("2024-07-01 12:00:00.000"),
                    s("2024-07-01 10:00:00.500")
                ),
                (
                    2,
                    s("2024-07-01 12:00:00.000"),
                    s("2024-07-01 10:00:00.000")
                ),
                (
                    3,
                    s("2023-12-31 19:30:00.000"),
                    s("2023-12-31 18:30:00.000")
                ),
                (4, s("2024-03-31 02:30:00.000"), None),
                (8, None, s("2024-10-27 02:30:00.000")),
                // A UTC job: the offset converted, local times as UTC.
                (
                    100,
                    s("2024-10-26 22:30:00.000"),
                    s("2024-10-27 02:30:00.000")
                ),
            ]
        );
    });
}
