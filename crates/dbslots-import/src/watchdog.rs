//! The statement bound of a queue operation.
//!
//! # Implementation Details
//!
//! An operation of [`crate::Queue`] runs its statements on one connection:
//! a few for most, one per file and then some for enqueueing (20,000 files
//! are 20,000 `INSERT`s). `mysql_async` has no read timeout, so each
//! operation runs under a [`Watchdog`] that gives it up when the server has
//! not answered for the bound: not the operation as a whole, which over a
//! slow link takes as long as its round trips add up to, but each
//! statement. The operation says when an answer came
//! ([`Watchdog::answered`]), which gives the next statement the bound from
//! then on; a statement that may rightly take longer (a table migration)
//! is given its own time first ([`Watchdog::allow`]).
//!
//! The watchdog is told of answers rather than wrapping each statement in
//! a timeout so that the queue's statements stay plain `mysql_async` calls,
//! the same ones the processor runs under its own bounds.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

// Tokio's clock, which tests can pause and move.
use tokio::time::Instant;

/// Gives an operation up once its server has not answered for a while.
#[derive(Debug)]
pub(crate) struct Watchdog {
    started: Instant,
    bound: Duration,
    /// When the operation is given up, in microseconds from `started`.
    deadline_us: AtomicU64,
    /// How long the statement now running may take, in microseconds.
    allowed_us: AtomicU64,
}

impl Watchdog {
    /// A watchdog that gives each statement `bound`, from now.
    pub fn new(bound: Duration) -> Watchdog {
        let watchdog = Watchdog {
            started: Instant::now(),
            bound,
            deadline_us: AtomicU64::new(0),
            allowed_us: AtomicU64::new(0),
        };
        watchdog.allow(bound);
        watchdog
    }

    /// How long each statement gets unless allowed otherwise.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// The server answered: the next statement gets the bound from now.
    pub fn answered(&self) {
        self.allow(self.bound);
    }

    /// The next answer may take `time` from now (a statement that rightly
    /// takes longer than the bound, or is known to be quick).
    pub fn allow(&self, time: Duration) {
        let now = self.started.elapsed().as_micros();
        let deadline = now.saturating_add(time.as_micros());
        self.deadline_us.store(
            u64::try_from(deadline).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        self.allowed_us.store(
            u64::try_from(time.as_micros()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Runs `operation` until it ends or an answer is overdue; then `Err`
    /// with how long that answer was allowed.
    pub async fn guard<F: Future>(&self, operation: F) -> Result<F::Output, Duration> {
        let mut operation = pin!(operation);
        let mut timer = pin!(tokio::time::sleep_until(self.deadline()));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = operation.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            // Only the operation moves the deadline, and only while it is
            // polled: set the timer to where it is now, earlier or later.
            let deadline = self.deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Duration::from_micros(
                    self.allowed_us.load(Ordering::SeqCst),
                ))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    fn deadline(&self) -> Instant {
        let us = self.deadline_us.load(Ordering::SeqCst);
        // A deadline past what an Instant holds: a century is as good.
        self.started
            .checked_add(Duration::from_micros(us))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// `statements` statements that each take `each`, telling the watchdog.
    async fn statements(watchdog: &Watchdog, statements: u32, each: Duration) -> u32 {
        for _ in 0..statements {
            tokio::time::sleep(each).await;
            watchdog.answered();
        }
        statements
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_longer_than_the_bound_passes_while_each_statement_answers_within_it() {
        let watchdog = Watchdog::new(SEC);
        let started = Instant::now();
        let done = watchdog
            .guard(statements(&watchdog, 100, SEC * 9 / 10))
            .await;
        assert_eq!(done, Ok(100));
        assert_eq!(started.elapsed(), SEC * 90);
    }

    #[tokio::test(start_paused = true)]
    async fn a_statement_without_an_answer_for_the_bound_gives_the_operation_up() {
        let watchdog = Watchdog::new(SEC);
        let started = Instant::now();
        let stuck = async {
            statements(&watchdog, 3, SEC / 2).await;
            std::future::pending::<()>().await;
        };
        assert_eq!(watchdog.guard(stuck).await, Err(SEC));
        // Three answers half a second apart, then the bound.
        assert_eq!(started.elapsed(), SEC * 5 / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_statement_allowed_longer_gets_its_time_and_the_next_one_the_bound() {
        let watchdog = Watchdog::new(SEC);
        let long = async {
            watchdog.allow(SEC * 60);
            tokio::time::sleep(SEC * 59).await;
            watchdog.answered();
            tokio::time::sleep(SEC * 2).await;
        };
        let started = Instant::now();
        assert_eq!(watchdog.guard(long).await, Err(SEC));
        assert_eq!(started.elapsed(), SEC * 60);

        // An answer after a longer allowance: the next statement gets the
        // bound from that answer, not what was left of the allowance.
        let watchdog = Watchdog::new(SEC);
        let shorter = async {
            watchdog.allow(SEC * 180);
            tokio::time::sleep(SEC * 61).await;
            watchdog.answered();
            std::future::pending::<()>().await;
        };
        let started = Instant::now();
        assert_eq!(watchdog.guard(shorter).await, Err(SEC));
        assert_eq!(started.elapsed(), SEC * 62);

        let watchdog = Watchdog::new(SEC);
        let never = async {
            watchdog.allow(SEC * 60);
            std::future::pending::<()>().await;
        };
        assert_eq!(watchdog.guard(never).await, Err(SEC * 60));
    }
}
