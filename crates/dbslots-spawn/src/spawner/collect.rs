//! The collector: turns `Finished` records into the joblog, the progress
//! lines and the tallies of the summary.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dbslots_core::Pool;
use tokio::sync::mpsc;

use super::{Ctx, Finished, Tally};
use crate::joblog::{Entry, Joblog};
use crate::options::Mode;
use crate::summary::{Durations, signal_name};

/// How often the pool is sampled for `peak_slots` when workers take their
/// own slots.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Failed workers reported one line each; further failures are only counted
/// (summary, joblog), so that 1000 failures do not flood the terminal.
const FAILURE_LINES: u32 = 10;

impl Ctx {
    /// Receives every `Finished` record until all workers are done.
    pub(super) async fn collect(
        &self,
        mut done: mpsc::UnboundedReceiver<Finished>,
        mut joblog: Option<Joblog>,
        started_at: Instant,
    ) -> Tally {
        let sample = !self.options.takes_slots();
        let every = if sample {
            SAMPLE_EVERY
        } else {
            self.options.progress_interval
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_line = started_at;
        let mut durations = Durations::default();
        let (mut succeeded, mut failed, mut killed, mut sampled_peak) = (0, 0, 0, 0);
        let n = self.options.workers;
        loop {
            tokio::select! {
                finished = done.recv() => {
                    let Some(f) = finished else { break };
                    durations.push(f.runtime);
                    let command = self.template.display(f.index, n);
                    if f.signal != 0 {
                        killed += 1;
                    } else if f.exitval == 0 {
                        succeeded += 1;
                    } else {
                        failed += 1;
                    }
                    if f.signal != 0 || f.exitval != 0 {
                        let failures = self.counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
                        let how = if f.signal != 0 {
                            format!("was killed by {}", signal_name(f.signal))
                        } else {
                            format!("exited with status {}", f.exitval)
                        };
                        if failures <= FAILURE_LINES {
                            self.reporter.line(&format!("worker {} {how}: {command}", f.index));
                        }
                        if failures == FAILURE_LINES {
                            self.reporter.line("further failures are only counted (see the summary and the joblog)");
                        }
                    }
                    if let Some(log) = &mut joblog {
                        log.record(&Entry {
                            index: f.index,
                            start_unix: f.start_unix,
                            runtime: f.runtime,
                            exitval: f.exitval,
                            signal: f.signal,
                            command: &command,
                        });
                    }
                    self.counters.finished.fetch_add(1, Ordering::Relaxed);
                            }
                _ = tick.tick() => {
                    if sample
                        && let Some(Ok(stats)) = self.pool.as_ref().map(Pool::stats)
                    {
                        sampled_peak = sampled_peak.max(stats.active);
                    }
                    if self.options.mode == Mode::Adaptive
                        && last_line.elapsed() >= self.options.progress_interval
                    {
                        last_line = Instant::now();
                        self.reporter.periodic(&self.counters.snapshot());
                    }
                }
            }
        }
        let (p, max) = durations.percentiles(&[50.0, 95.0]);
        Tally {
            succeeded,
            failed,
            killed,
            p50: p[0],
            p95: p[1],
            max,
            sampled_peak,
        }
    }
}
