//! Progress on stderr: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use dbslots_core::PoolStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::options::Progress;

/// A snapshot of the counters shown.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub finished: u32,
    pub failed: u32,
    pub running: u32,
    pub slots: u32,
    pub waiting_for_slot: bool,
}

/// Reports progress as chosen by [`Progress`].
pub(crate) struct Reporter {
    bar: Option<ProgressBar>,
    lines: bool,
    workers: u32,
    capacity: u32,
}

impl Reporter {
    pub(crate) fn new(progress: Progress, workers: u32, capacity: u32) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let (bar, lines) = match progress {
            Progress::Auto => (terminal, !terminal),
            Progress::Bar => (true, false),
            Progress::Lines => (false, true),
            Progress::Quiet => (false, false),
        };
        let bar = bar.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(workers.into()), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {pos}/{len} finished, {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Reporter {
            bar,
            lines,
            workers,
            capacity,
        }
    }

    /// The bar, for writing output around it.
    pub(crate) fn bar(&self) -> Option<ProgressBar> {
        self.bar.clone()
    }

    /// Whether plain lines are printed.
    pub(crate) fn lines(&self) -> bool {
        self.lines
    }

    /// Updates the bar.
    pub(crate) fn update(&self, c: &Counts) {
        if let Some(bar) = &self.bar {
            bar.set_position(c.finished.into());
            bar.set_message(format!(
                "{} running, {} failed, slots {}/{}{}",
                c.running,
                c.failed,
                c.slots,
                self.capacity,
                if c.waiting_for_slot {
                    ", waiting for a slot"
                } else {
                    ""
                }
            ));
        }
    }

    /// Prints one line (above the bar, or on its own).
    pub(crate) fn line(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.println(format!("dbslots spawn: {text}"));
        } else if self.lines {
            eprintln!("dbslots spawn: {text}");
        }
    }

    /// The periodic line of adaptive mode.
    pub(crate) fn periodic(&self, c: &Counts) {
        if self.lines {
            self.line(&format!(
                "finished {}/{} ({} failed), {} running, slots {}/{}",
                c.finished, self.workers, c.failed, c.running, c.slots, self.capacity
            ));
        }
    }

    /// The line after starting a batch.
    pub(crate) fn batch(
        &self,
        number: u32,
        batches: u32,
        first: u32,
        last: u32,
        stats: Result<PoolStats, dbslots_core::Error>,
    ) {
        let pool = match stats {
            Ok(s) => format!(
                "pool {}: active {}/{}, waiting {}, peak {}",
                s.pool, s.active, s.capacity, s.waiting, s.peak
            ),
            Err(e) => format!("pool stats unavailable: {e}"),
        };
        self.line(&format!(
            "batch {number}/{batches}: started workers {first}-{last} ({}); {pool}",
            last - first + 1
        ));
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
