//! Waiting out a server that cannot be reached.
//!
//! # Implementation Details
//!
//! An [`Outage`] is a run of failed tries to get a working connection:
//! connects that failed in a way another try may fix, and connections lost
//! before a job was claimed. It starts at the first failure and ends when
//! the processor gets somewhere (a claim answered, or mid-job a connection
//! opened). After each failure it says how long to wait before the next
//! try, from 0.1 s doubling to at most [`MAX_DELAY`], or, once the outage
//! has lasted its window, to give up. The last wait is cut short so that
//! the last try comes at the end of the window, not before it.
//!
//! The waiting itself (stop-aware, one log line per failure) is the
//! processor's; this module only keeps the count and the clock, so it is
//! tested without one.

use std::time::{Duration, Instant};

/// The wait after the first failure.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// The longest wait between two tries.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(5);

/// Failed tries in a row, and when to give up.
#[derive(Debug)]
pub(crate) struct Outage {
    /// How long it may last; `None` for as long as it takes.
    window: Option<Duration>,
    /// The first failure, while the outage lasts.
    since: Option<Instant>,
    failures: u32,
    delay: Duration,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again after this long.
    RetryIn(Duration),
    /// The outage has lasted its window (this long): give up.
    GiveUp(Duration),
}

impl Outage {
    /// No outage yet, one of at most `window` when it comes.
    pub fn new(window: Option<Duration>) -> Outage {
        Outage {
            window,
            since: None,
            failures: 0,
            delay: FIRST_DELAY,
        }
    }

    /// The server answered: the next failure starts a new outage.
    pub fn end(&mut self) {
        *self = Outage::new(self.window);
    }

    /// Notes a failure at `now`.
    pub fn failed(&mut self, now: Instant) -> Next {
        let since = *self.since.get_or_insert(now);
        self.failures += 1;
        let lasted = now.saturating_duration_since(since);
        let delay = self.delay;
        self.delay = (delay * 2).min(MAX_DELAY);
        match self.window {
            Some(window) if lasted >= window => Next::GiveUp(lasted),
            Some(window) => Next::RetryIn(delay.min(window - lasted)),
            None => Next::RetryIn(delay),
        }
    }

    /// Failures so far in this outage.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long the outage has lasted at `now` (zero when there is none).
    pub fn lasted(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// The waits an outage asks for when each try fails at once.
    fn waits(outage: &mut Outage, start: Instant, tries: usize) -> Vec<Next> {
        let mut now = start;
        (0..tries)
            .map(|_| {
                let next = outage.failed(now);
                if let Next::RetryIn(d) = next {
                    now += d;
                }
                next
            })
            .collect()
    }

    #[test]
    fn without_a_window_it_backs_off_to_five_seconds_and_never_gives_up() {
        let mut outage = Outage::new(None);
        let t = Instant::now();
        let waits = waits(&mut outage, t, 10);
        let expected: Vec<Next> = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
            .into_iter()
            .map(|ms| Next::RetryIn(MS(ms)))
            .collect();
        assert_eq!(waits, expected);
        assert_eq!(outage.failures(), 10);
        // A day later it still waits five seconds.
        let later = t + Duration::from_secs(86_400);
        assert_eq!(outage.failed(later), Next::RetryIn(MAX_DELAY));
        assert_eq!(outage.lasted(later), Duration::from_secs(86_400));
    }

    #[test]
    fn the_last_try_comes_at_the_end_of_the_window_then_it_gives_up() {
        let mut outage = Outage::new(Some(Duration::from_secs(2)));
        let t = Instant::now();
        // Tries at 0, 0.1, 0.3, 0.7, 1.5 and, cut short, 2.0 s.
        let waits = waits(&mut outage, t, 6);
        let expected: Vec<Next> = [100, 200, 400, 800, 500]
            .into_iter()
            .map(|ms| Next::RetryIn(MS(ms)))
            .chain([Next::GiveUp(Duration::from_secs(2))])
            .collect();
        assert_eq!(waits, expected);
        // No window at all: the first failure gives up.
        let mut outage = Outage::new(Some(Duration::ZERO));
        assert_eq!(outage.failed(t), Next::GiveUp(Duration::ZERO));
    }

    #[test]
    fn an_answer_ends_the_outage() {
        let mut outage = Outage::new(Some(Duration::from_secs(2)));
        let t = Instant::now();
        outage.failed(t);
        outage.failed(t + MS(1900));
        outage.end();
        assert_eq!(outage.lasted(t + MS(3000)), Duration::ZERO);
        // A new outage, with the whole window and the short first wait.
        assert_eq!(outage.failed(t + MS(3000)), Next::RetryIn(MS(100)));
        assert_eq!(outage.failures(), 1);
    }
}
