//! A job whose processor could not heartbeat because the server was down
//! (restarted, crashed) is left to it while it reconnects: the time the
//! server was down does not count towards `stale_after`.

use std::time::{Duration, Instant};

use dbslots_import::{
    EnqueueOptions, JobOutcome, NoObserver, ProcessorOptions, Queue, RunOptions, Status, Stopper,
};
use dbslots_testkit::MysqlOptions;
use mysql_async::prelude::Queryable;

use crate::support::{METER_READINGS, readings};

/// The server's `Uptime`, in seconds.
async fn uptime(conn: &mut mysql_async::Conn) -> u64 {
    let row: Option<(String, String)> = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Uptime'")
        .await
        .unwrap();
    row.unwrap().1.parse().unwrap()
}

#[test]
fn a_job_whose_heartbeat_stopped_before_the_server_started_waits_stale_after_of_uptime() {
    // A server of its own: its uptime starts now, as after a restart.
    let Some(server) = dbslots_testkit::private_mysql(MysqlOptions::default()) else {
        return;
    };
    let url = server.user_url();
    let dir = tempfile::tempdir().unwrap();
    let (csv, good, ..) = readings(100, 0);
    let path = dir.path().join("readings.csv");
    std::fs::write(&path, csv).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let queue = Queue::new(&url, None).unwrap();
        let mut conn = mysql_async::Conn::from_url(&url).await.unwrap();
        conn.query_drop(METER_READINGS).await.unwrap();
        queue
            .enqueue(&[&path], &EnqueueOptions::new("meter_readings"))
            .await
            .unwrap();
        // Claimed by a processor whose last heartbeat came an hour ago,
        // before the server went down; it is reconnecting now.
        conn.query_drop(
            "UPDATE import_jobs SET status = 'processing', attempts = 1, holder = 'before-the-restart', \
             started_at = UTC_TIMESTAMP(6) - INTERVAL 1 HOUR, heartbeat_at = UTC_TIMESTAMP(6) - INTERVAL 1 HOUR",
        )
        .await
        .unwrap();
        let up = uptime(&mut conn).await;
        let stale_after = Duration::from_secs(up + 60);
        let once = RunOptions::new().once(true);

        // Another processor does not take it while the server has been up
        // for less than stale_after.
        let summary = queue
            .processor(ProcessorOptions::new().stale_after(stale_after))
            .run(&once, &Stopper::new(), &NoObserver)
            .await
            .unwrap();
        eprintln!("server up {up} s, stale_after {stale_after:?}: {summary:?}");
        assert_eq!(summary.recovered, 0, "{summary:?}");
        assert!(summary.jobs.is_empty(), "{summary:?}");
        let job = &queue.jobs(None).await.unwrap()[0];
        assert_eq!(job.status, Status::Processing);
        assert_eq!(job.holder.as_deref(), Some("before-the-restart"));

        // Once the server has been up for stale_after without a word from
        // the holder, the job is taken over as before.
        let stale_after = Duration::from_secs(2);
        let deadline = Instant::now() + Duration::from_secs(30);
        while uptime(&mut conn).await < 2 {
            assert!(Instant::now() < deadline, "the server's uptime stands still");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let summary = queue
            .processor(ProcessorOptions::new().stale_after(stale_after))
            .run(&once, &Stopper::new(), &NoObserver)
            .await
            .unwrap();
        assert_eq!(summary.recovered, 1, "{summary:?}");
        assert_eq!(summary.jobs.len(), 1, "{summary:?}");
        assert_eq!(summary.jobs[0].outcome, JobOutcome::Completed);
        let rows: Option<u64> = conn
            .query_first("SELECT COUNT(*) FROM meter_readings")
            .await
            .unwrap();
        assert_eq!(rows, Some(good));
        conn.disconnect().await.unwrap();
    });
}
