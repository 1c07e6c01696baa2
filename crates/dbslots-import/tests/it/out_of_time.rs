//! A run's max time comes while the server is out of reach in the middle
//! of a job: the job in hand is finished once the server is back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbslots_import::{
    JobOutcome, Observer, ProcessorOptions, Progress, Queue, RunEnd, RunOptions, Stopper,
};
use dbslots_testkit::FreezableProxy;

use crate::support::{KillLeftovers, TestDb, enqueue_readings, proxy_for, readings, through};

/// How long the server stays away.
const AWAY: Duration = Duration::from_secs(4);

/// Takes the server away (drops the only way to it) at the first batch,
/// and brings it back at the same address [`AWAY`] later.
struct TakeAway {
    proxy: Mutex<Option<FreezableProxy>>,
    target: SocketAddr,
    back: Arc<Mutex<Option<FreezableProxy>>>,
    at: Mutex<Option<Instant>>,
}

impl Observer for TakeAway {
    fn batch_committed(&self, _progress: &Progress) {
        let Some(proxy) = self.proxy.lock().unwrap().take() else {
            return;
        };
        let port = proxy.port();
        drop(proxy);
        *self.at.lock().unwrap() = Some(Instant::now());
        let (target, back) = (self.target, self.back.clone());
        std::thread::spawn(move || {
            std::thread::sleep(AWAY);
            let proxy = FreezableProxy::start_on(port, target).expect("the way back");
            *back.lock().unwrap() = Some(proxy);
        });
    }
}

#[test]
fn a_daemon_whose_max_time_comes_during_an_outage_mid_job_finishes_the_job() {
    let Some(db) = TestDb::create("out_of_time") else {
        return;
    };
    let _leftovers = KillLeftovers::of(&db);
    let proxy = proxy_for(&db);
    let queue = Queue::new(&through(&db.url, &proxy), None).unwrap();
    let opts = mysql_async::Opts::from_url(&db.url).unwrap();
    let (csv, good, ..) = readings(4_000, 0);
    let path = db.write("readings.csv", &csv);
    let observer = TakeAway {
        proxy: Mutex::new(Some(proxy)),
        target: SocketAddr::from(([127, 0, 0, 1], opts.tcp_port())),
        back: Arc::new(Mutex::new(None)),
        at: Mutex::new(None),
    };
    let max_time = Duration::from_secs(2);
    db.block_on(async {
        enqueue_readings(&db, &queue, &path).await;
        // A daemon (no --once): its max time passes while the server is
        // away, in the middle of its job.
        let processor = queue.processor(ProcessorOptions::new().batch_rows(250));
        let options = RunOptions::new().max_time(Some(max_time));
        let stop = Stopper::new();
        let started = Instant::now();
        let run = processor.run(&options, &stop, &observer);
        let summary = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the run ends once the job is done")
            .expect("the job in hand is finished, max time or not");
        let took = started.elapsed();
        let gone_at = observer.at.lock().unwrap().expect("a batch was committed");
        eprintln!(
            "server gone {:?} into the run for {AWAY:?}; the run ended after {took:?} (max time {max_time:?})",
            gone_at - started
        );
        assert_eq!(summary.end, RunEnd::MaxTime, "{summary:?}");
        assert_eq!(summary.jobs.len(), 1, "{summary:?}");
        assert_eq!(summary.jobs[0].outcome, JobOutcome::Completed);
        assert!(summary.jobs[0].reconnects >= 1, "{summary:?}");
        assert!(took >= AWAY, "{took:?}");
        assert_eq!(db.number("SELECT COUNT(*) FROM meter_readings").await, good);
    });
}
