//! Good and bad lines of every kind in one file; files that cannot be
//! imported at all.

use std::collections::BTreeMap;

use dbslots_import::{
    JobOutcome, NoObserver, ProcessorOptions, Queue, RunOptions, Status, StopSignal,
};
use mysql_async::prelude::Queryable;

use crate::support::TestDb;

#[test]
fn every_bad_line_is_rejected_with_its_number_and_every_good_one_imported() {
    let Some(db) = TestDb::create("bad") else {
        return;
    };
    let long_line = format!("m-006,2024-01-01 00:00:00,{}", "1".repeat(70_000));
    let mut file: Vec<u8> = Vec::new();
    for line in [
        b"meter_id,reading_at,kwh".as_slice(),    // 1 header
        b"m-001,2024-01-01 00:00:00,1.5",         // 2 good
        b"m-001,2024-01-01 00:15:00",             // 3 two columns
        b"m-002,2024-01-01T00:00:00Z,0",          // 4 good, ISO 8601
        b"m-002,2024-01-01 00:15:00,12.25,extra", // 5 four columns
        b"m-003,2024-02-30 00:00:00,1",           // 6 no such date
        b"m-003,01/02/2024 10:00,1",              // 7 not a timestamp
        b"m-004,2024-01-01 00:00:00,-3.2",        // 8 negative
        b"m-004,2024-01-01 00:15:00,abc",         // 9 not a number
        b"m-0123456789012345678901234567890,2024-01-01 00:00:00,1", // 10 33 chars
        b"m-\xff\xfe5,2024-01-01 00:00:00,1",     // 11 invalid UTF-8
        b"",                                      // 12 blank: skipped
        b"\"m,\"\"q\"\"\",2024-01-01T08:30:00,7", // 13 good, quoted
        "m-é,2024-01-01 00:00:00,0.000001".as_bytes(), // 14 good, UTF-8
        b"m-001,2024-01-01 00:00:00,2.5\r",       // 15 good, CRLF, same key as 2
        long_line.as_bytes(),                     // 16 too long
    ] {
        file.extend_from_slice(line);
        file.push(b'\n');
    }
    file.extend_from_slice(b"m-005,2024-01-01 00:00:00,1"); // 17 good, no line break
    let path = db.write("mixed.csv", &file);

    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        let ids = queue.enqueue(&[&path]).await.unwrap();
        let summary = queue
            .processor(ProcessorOptions::new().batch_rows(4))
            .run(
                &RunOptions::new().once(true),
                &StopSignal::new(),
                &NoObserver,
            )
            .await
            .unwrap();
        assert_eq!(summary.jobs.len(), 1);
        let report = &summary.jobs[0];
        assert_eq!(report.id, ids[0]);
        assert_eq!(report.outcome, JobOutcome::CompletedWithErrors);
        assert_eq!((report.rows_imported, report.rows_rejected), (6, 9));

        let jobs = queue.jobs(None).await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].status, Status::CompletedWithErrors);
        assert_eq!((jobs[0].rows_imported, jobs[0].rows_rejected), (6, 9));
        assert_eq!(jobs[0].attempts, 1);
        assert_eq!(jobs[0].source, path.to_str().unwrap());

        let mut conn = db.conn().await;
        let readings: Vec<(String, String, String)> = conn
            .query(
                "SELECT meter_id, DATE_FORMAT(reading_at, '%Y-%m-%d %H:%i:%s'), CAST(kwh AS CHAR) \
                 FROM meter_readings ORDER BY meter_id, reading_at",
            )
            .await
            .unwrap();
        let expected = [
            ("m,\"q\"", "2024-01-01 08:30:00", "7.000000"),
            ("m-001", "2024-01-01 00:00:00", "2.500000"),
            ("m-002", "2024-01-01 00:00:00", "0.000000"),
            ("m-005", "2024-01-01 00:00:00", "1.000000"),
            ("m-é", "2024-01-01 00:00:00", "0.000001"),
        ];
        let readings: Vec<(&str, &str, &str)> = readings
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        assert_eq!(readings, expected);

        let errors: Vec<(u64, String, String)> = conn
            .query("SELECT line_no, reason, raw_line FROM import_errors ORDER BY line_no")
            .await
            .unwrap();
        let by_line: BTreeMap<u64, (String, String)> = errors
            .into_iter()
            .map(|(l, r, raw)| (l, (r, raw)))
            .collect();
        assert_eq!(
            by_line.keys().copied().collect::<Vec<_>>(),
            [3, 5, 6, 7, 8, 9, 10, 11, 16]
        );
        let reason = |line: u64| by_line[&line].0.as_str();
        let raw = |line: u64| by_line[&line].1.as_str();
        assert_eq!(
            reason(3),
            "wrong column count: expected 3 (meter_id,reading_at,kwh), found 2"
        );
        assert_eq!(raw(3), "m-001,2024-01-01 00:15:00");
        assert!(reason(5).ends_with("found 4"), "{}", reason(5));
        assert!(reason(6).contains("not a valid date"), "{}", reason(6));
        assert!(reason(7).contains("is not a timestamp"), "{}", reason(7));
        assert!(reason(8).contains("negative"), "{}", reason(8));
        assert!(
            reason(9).contains("not a non-negative decimal"),
            "{}",
            reason(9)
        );
        assert!(reason(10).contains("33 characters"), "{}", reason(10));
        assert!(reason(11).contains("invalid UTF-8"), "{}", reason(11));
        assert_eq!(raw(11), "m-\u{FFFD}\u{FFFD}5,2024-01-01 00:00:00,1");
        assert!(
            reason(16).starts_with("line is 70026 bytes long"),
            "{}",
            reason(16)
        );
        assert!(
            reason(16).ends_with("(raw line cut to 4096 bytes)"),
            "{}",
            reason(16)
        );
        assert_eq!(raw(16).len(), 4096);
        assert!(long_line.starts_with(raw(16)));
        conn.disconnect().await.unwrap();
    });
}

#[test]
fn files_that_cannot_be_imported_fail_their_jobs_with_a_clear_error() {
    let Some(db) = TestDb::create("unimp") else {
        return;
    };
    let empty = db.write("empty.csv", b"");
    let header_only = db.write("header.csv", b"meter_id,reading_at,kwh\n");
    let wrong_header = db.write("wrong.csv", b"meter,time,value\nm,2024-01-01 00:00:00,1\n");
    let missing = db.dir.path().join("missing.csv");
    let directory = db.dir.path().join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let good = db.write(
        "good.csv",
        b"meter_id,reading_at,kwh\nm,2024-01-01 00:00:00,1\n",
    );

    let queue = Queue::new(&db.url, None).unwrap();
    db.block_on(async {
        let files = [
            &empty,
            &header_only,
            &wrong_header,
            &missing,
            &directory,
            &good,
        ];
        let ids = queue.enqueue(&files).await.unwrap();
        let summary = queue
            .processor(ProcessorOptions::new())
            .run(
                &RunOptions::new().once(true),
                &StopSignal::new(),
                &NoObserver,
            )
            .await
            .unwrap();
        assert_eq!(summary.jobs.len(), files.len());
        let jobs = queue.jobs(None).await.unwrap();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
        let expect_failed = |i: usize, needle: &str| {
            let job = &jobs[i];
            assert_eq!(job.status, Status::Failed, "{job:?}");
            let error = job.last_error.as_deref().unwrap_or_default();
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
            assert!(matches!(&summary.jobs[i].outcome, JobOutcome::Failed(e) if e == error));
        };
        expect_failed(0, "is empty");
        expect_failed(1, "has a header but no data lines");
        expect_failed(
            2,
            "wrong header: expected `meter_id,reading_at,kwh`, found `meter,time,value`",
        );
        expect_failed(3, "does not exist");
        expect_failed(4, "is not a regular file");
        assert_eq!(jobs[5].status, Status::Completed);
        assert_eq!(db.number("SELECT COUNT(*) FROM meter_readings").await, 1);
        assert_eq!(db.number("SELECT COUNT(*) FROM import_errors").await, 0);
    });
}
