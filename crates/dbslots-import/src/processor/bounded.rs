//! Calls on the processor's connection that cannot wait forever.
//!
//! # Implementation Details
//!
//! `mysql_async` has no read timeout, and a TCP connection that stops
//! passing bytes without being closed (a failover that moved the server's
//! address, a host rebooting, a firewall that dropped the connection's
//! state) never fails by itself: a statement sent into it waits forever.
//! So every call the processor makes on its connection, a batch's whole
//! transaction counting as one, runs under [`call`]:
//!
//! * It gets the batch bound ([`Bounds::call`], from
//!   `ProcessorOptions::batch_timeout`, three times `stale_after` by
//!   default). A call without an answer by then fails as an I/O error
//!   (`TimedOut`), which is what a lost connection looks like
//!   ([`crate::link::is_connection_problem`]), so the processor's one path
//!   for lost connections takes over: close it (the abandoned call left
//!   the driver's connection marked broken, so nothing more is sent on
//!   it), open a new one, read the job's row and go on from its
//!   checkpoint. Whatever the abandoned transaction did is rolled back, or,
//!   had its `COMMIT` already reached the server, committed with its
//!   checkpoint: either way the row says which records are in.
//! * Statements outside a job (setting up a new connection, creating the
//!   tables, putting back stale jobs, claiming) get the queue's statement
//!   timeout instead ([`Bounds::statement`], `Queue::statement_timeout`,
//!   never longer than the batch bound), so that a processor whose
//!   connection went dead between jobs finds out sooner. A claim cut off
//!   there is a lost connection like any other, retried over a new one.
//!   Only adding columns to queue tables of an older version keeps the
//!   batch bound (it may copy a table), with the server's
//!   `lock_wait_timeout` at half the statement timeout so that it does not
//!   hold up others' statements on the table waiting for their locks.
//! * The server is given half the bound for the session's timeouts when a
//!   connection is opened (`queue::end_sessions_left_waiting`), so it ends
//!   the session of the abandoned connection, and rolls back its
//!   transaction and its locks, within the bound of its last word from the
//!   client: the retry does not wait behind its own rows for long. Half,
//!   because a session cut off in the middle of a `LOAD DATA LOCAL` stream
//!   waits for two of them (measured on MariaDB 10.11: a session frozen
//!   mid-stream with timeouts of 6 s ended after 12 s), one waiting for its
//!   next command for one. While the processor waits for its reader
//!   instead of the server, it pings the connection every quarter of the
//!   bound (half the session's timeout), which keeps the session alive and
//!   finds a dead connection between batches too.
//! * While a call waits, the heartbeat task sees it ([`Beats::call`]) and
//!   stops vouching for the job once it has waited for the bound.
//! * A stop request gives a call in progress at most [`STOP_GRACE`] more
//!   (never more than its bound): a batch that answers in that time is
//!   committed as before, one that does not is abandoned like a lost
//!   connection, and the processor puts the job back over a new
//!   connection if one opens within [`RELEASE_WITHIN`].

use std::future::Future;
use std::io;
use std::time::Duration;

use super::heartbeat::Beats;
use crate::stop::Stopper;

/// How much longer a call in progress gets once a stop is requested.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long putting a job back after a stop may take over a new connection
/// (connecting included) when the old one was given up.
pub(crate) const RELEASE_WITHIN: Duration = Duration::from_secs(5);

/// The bounds of a processor's calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// How long one call on a job (a batch's transaction, a statement) may
    /// wait for the server.
    pub call: Duration,
    /// How long a statement outside a job (setting up a new connection,
    /// creating the tables, putting back stale jobs, claiming) may wait:
    /// the queue's statement timeout, never longer than `call`.
    pub statement: Duration,
}

impl Bounds {
    /// The server's timeouts for the processor's sessions: half the call
    /// bound in whole seconds (rounded down, at least 1), so that even a
    /// session cut off mid-stream, which waits for two of them, ends
    /// within the bound.
    pub fn session_secs(&self) -> u64 {
        (self.call.as_secs() / 2).max(1)
    }

    /// How often an idle connection is pinged while the processor waits
    /// for its reader: twice per session timeout.
    pub fn ping_every(&self) -> Duration {
        Duration::from_secs(self.session_secs()) / 2
    }
}

/// Runs `call`, one call on the processor's connection: an I/O error
/// (`TimedOut`, the connection taken for lost) when it has no answer within
/// `bound`, or within [`STOP_GRACE`] of a stop request. `beats`, when given,
/// shows the heartbeat that the call is waiting; `setting`, when given,
/// names the option that allows a slower call, for the message.
///
/// A call cut off here leaves its connection unusable: close it.
pub(crate) async fn call<T>(
    what: &str,
    bound: Duration,
    setting: Option<&str>,
    stop: &Stopper,
    beats: Option<&Beats>,
    call: impl Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, mysql_async::Error> {
    let _outstanding = beats.map(Beats::call);
    let call = tokio::time::timeout(bound, call);
    let mut call = std::pin::pin!(call);
    let answered = tokio::select! {
        biased;
        answered = &mut call => answered,
        () = stop.stopped() => match tokio::time::timeout(STOP_GRACE, &mut call).await {
            Ok(answered) => answered,
            Err(_) => return Err(no_answer(format!(
                "{what}: no answer from the server within {STOP_GRACE:?} of the stop request; the connection is given up"
            ))),
        },
    };
    answered.unwrap_or_else(|_| {
        let longer = setting.map_or_else(String::new, |setting| {
            format!(", or the call needs more than {setting}")
        });
        Err(no_answer(format!(
            "{what}: no answer from the server within {bound:?}; the connection is taken for lost (the network dropped it, the server failed over or is overloaded{longer})"
        )))
    })
}

fn no_answer(message: String) -> mysql_async::Error {
    io::Error::new(io::ErrorKind::TimedOut, message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn the_server_waits_half_the_bound_and_idle_connections_are_pinged_twice_as_often() {
        let bounds = |secs| Bounds {
            call: Duration::from_secs(secs),
            statement: Duration::from_secs(secs),
        };
        assert_eq!(bounds(180).session_secs(), 90);
        assert_eq!(bounds(180).ping_every(), Duration::from_secs(45));
        assert_eq!(bounds(18).session_secs(), 9);
        assert_eq!(bounds(7).session_secs(), 3);
        assert_eq!(bounds(1).session_secs(), 1);
        assert_eq!(bounds(1).ping_every(), Duration::from_millis(500));
    }

    #[test]
    fn a_call_without_an_answer_is_a_lost_connection_at_the_bound() {
        runtime().block_on(async {
            let stop = Stopper::new();
            let beats = Beats::new();
            let started = tokio::time::Instant::now();
            let e = call(
                "committing a batch",
                Duration::from_secs(18),
                Some("ProcessorOptions::batch_timeout"),
                &stop,
                Some(&beats),
                std::future::pending::<Result<(), mysql_async::Error>>(),
            )
            .await
            .unwrap_err();
            assert_eq!(started.elapsed(), Duration::from_secs(18));
            assert!(crate::link::is_connection_problem(&e), "{e}");
            assert!(e.to_string().contains("committing a batch"), "{e}");
            assert!(
                e.to_string()
                    .contains("more than ProcessorOptions::batch_timeout"),
                "{e}"
            );
        });
    }

    #[test]
    fn a_stop_gives_a_call_in_progress_the_grace_then_gives_it_up() {
        runtime().block_on(async {
            let stop = Stopper::new();
            let started = tokio::time::Instant::now();
            let stopper = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                stopper.stop();
            });
            let e = call(
                "committing a batch",
                Duration::from_secs(180),
                None,
                &stop,
                None,
                std::future::pending::<Result<(), mysql_async::Error>>(),
            )
            .await
            .unwrap_err();
            assert_eq!(started.elapsed(), Duration::from_secs(3) + STOP_GRACE);
            assert!(crate::link::is_connection_problem(&e), "{e}");
            // A call that answers within the grace is not cut off.
            let answered = call(
                "finishing",
                Duration::from_secs(180),
                None,
                &stop,
                None,
                async {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    Ok(7)
                },
            )
            .await
            .unwrap();
            assert_eq!(answered, 7);
        });
    }
}
