//! A run's max time comes while the server is out of reach.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dbslots_import::{
    Error, Observer, OutageLimit, ProcessorOptions, Progress, Queue, RunOptions, Stopper,
};
use dbslots_testkit::FreezableProxy;

use crate::support::{KillLeftovers, TestDb, enqueue_readings, proxy_for, readings, through};

/// Takes the server away (drops the only way to it) at the first batch.
struct TakeAway {
    proxy: Mutex<Option<FreezableProxy>>,
    at: Mutex<Option<Instant>>,
}

impl Observer for TakeAway {
    fn batch_committed(&self, _progress: &Progress) {
        if self.proxy.lock().unwrap().take().is_some() {
            *self.at.lock().unwrap() = Some(Instant::now());
        }
    }
}

#[test]
fn a_daemon_whose_max_time_comes_mid_job_during_an_outage_fails_with_an_outage() {
    let Some(db) = TestDb::create("out_of_time") else {
        return;
    };
    let _leftovers = KillLeftovers::of(&db);
    let proxy = proxy_for(&db);
    let queue = Queue::new(&through(&db.url, &proxy), None).unwrap();
    let (csv, ..) = readings(4_000, 0);
    let path = db.write("readings.csv", &csv);
    let observer = TakeAway {
        proxy: Mutex::new(Some(proxy)),
        at: Mutex::new(None),
    };
    let max_time = Duration::from_secs(3);
    db.block_on(async {
        enqueue_readings(&db, &queue, &path).await;
        // A daemon (no --once): without a window it would wait for the
        // server for ever; its max time ends the wait.
        let processor = queue.processor(ProcessorOptions::new().batch_rows(250));
        let options = RunOptions::new().max_time(Some(max_time));
        let stop = Stopper::new();
        let started = Instant::now();
        let run = processor.run(&options, &stop, &observer);
        let result = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the run ends when its max time comes, server or not");
        let took = started.elapsed();
        let gone_at = observer.at.lock().unwrap().expect("a batch was committed");
        eprintln!(
            "server gone {:?} into the run; the run ended after {took:?} (max time {max_time:?})",
            gone_at - started
        );
        let e = result.expect_err("a run that lost its server mid-job does not end as done");
        assert!(
            matches!(
                &e,
                Error::Outage {
                    limit: OutageLimit::MaxTime,
                    ..
                }
            ),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(message.contains("max_time"), "{message}");
        assert!(!message.contains("dbslots-test-pw"), "{message}");
        assert!(took >= max_time, "{took:?}");
        assert!(took < max_time + Duration::from_secs(10), "{took:?}");
    });
}
