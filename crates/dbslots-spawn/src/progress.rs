//! Progress on stderr: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;

use dbslots_core::PoolStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::console::Console;
use crate::options::ProgressDisplay;

/// A snapshot of the counters shown.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub finished: u32,
    pub failed: u32,
    pub running: u32,
    pub slots: u32,
    pub waiting_for_slot: bool,
}

/// Reports progress as chosen by [`ProgressDisplay`]. Every method only queues
/// text for the console thread (see `console.rs`): none writes or blocks.
pub(crate) struct Reporter {
    console: Console,
    bar: bool,
    lines: bool,
    workers: u32,
    capacity: Option<u32>,
}

/// Whether to draw a bar and whether to print lines.
pub(crate) fn choose(progress: ProgressDisplay) -> (bool, bool) {
    let terminal = std::io::stderr().is_terminal();
    match progress {
        ProgressDisplay::Auto => (terminal, !terminal),
        ProgressDisplay::Bar => (true, false),
        ProgressDisplay::Lines => (false, true),
        ProgressDisplay::Quiet => (false, false),
    }
}

/// A bar for `workers` workers on stderr, drawn only by the console thread
/// (no steady tick: that would be a second thread writing to stderr).
pub(crate) fn new_bar(workers: u32) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(workers.into()), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} finished, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The bar's position and message for `c`.
pub(crate) fn bar_status(c: &Counts, capacity: Option<u32>) -> (u64, String) {
    (
        c.finished.into(),
        format!(
            "{} running, {} failed{}{}",
            c.running,
            c.failed,
            slots(c, capacity),
            if c.waiting_for_slot {
                ", waiting for a slot"
            } else {
                ""
            }
        ),
    )
}

/// `, slots N/CAPACITY`, or nothing without a pool.
fn slots(c: &Counts, capacity: Option<u32>) -> String {
    capacity.map_or_else(String::new, |cap| format!(", slots {}/{cap}", c.slots))
}

impl Reporter {
    pub(crate) fn new(
        console: Console,
        bar: bool,
        lines: bool,
        workers: u32,
        capacity: Option<u32>,
    ) -> Reporter {
        Reporter {
            console,
            bar,
            lines,
            workers,
            capacity,
        }
    }

    /// Whether anything is shown per batch.
    pub(crate) fn shows_batches(&self) -> bool {
        self.lines || self.bar
    }

    /// Prints one line (above the bar, or on its own).
    pub(crate) fn line(&self, text: &str) {
        if self.bar || self.lines {
            self.console.own_line(&format!("dbslots spawn: {text}"));
        }
    }

    /// The periodic line of adaptive mode.
    pub(crate) fn periodic(&self, c: &Counts) {
        if self.lines {
            self.line(&format!(
                "finished {}/{} ({} failed), {} running{}",
                c.finished,
                self.workers,
                c.failed,
                c.running,
                slots(c, self.capacity)
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
        stats: Option<Result<PoolStats, dbslots_core::Error>>,
    ) {
        let pool = match stats {
            Some(Ok(s)) => format!(
                "; pool {}: active {}/{}, waiting {}, peak {}",
                s.pool, s.active, s.capacity, s.waiting, s.peak
            ),
            Some(Err(e)) => format!("; pool stats unavailable: {e}"),
            None => String::new(),
        };
        self.line(&format!(
            "batch {number}/{batches}: started workers {first}-{last} ({}){pool}",
            last - first + 1
        ));
    }
}
