//! The heartbeat of a job in hand, on its own timer.
//!
//! # Implementation Details
//!
//! Every committed batch is a heartbeat, written by the processor's own
//! connection. This task looks every third of `stale_after` at when that
//! happened last; when a whole interval has passed without one (a slow
//! batch, a slow disk, a lock wait), it writes the heartbeat itself from a
//! second connection, opened then (with a pool, holding a second slot,
//! waited for at most one interval) and closed again as soon as the
//! processor's batches beat on their own. So a processor holds the second
//! connection only while it is slow, and never while it is idle.
//!
//! It vouches only for a processor that can still get an answer: once a
//! call on the job's connection (a batch's transaction, or any other
//! statement) has been waiting for the server for the processor's batch
//! bound, it writes nothing more until that call is over. The processor
//! gives such a call up at that bound and goes on over a new connection;
//! should it not, its job goes stale and another processor takes it over,
//! instead of a heartbeat from fresh connections keeping a job alive that
//! nobody works on.
//!
//! The write is conditional on the holder like every other one, and the
//! commit of a batch locks the job's row only at its very end, so the
//! heartbeat is not held up behind a slow insert. Each write (and opening
//! its connection) may take one interval; the task closes a connection that
//! does not answer in that time and tries a new one at the next tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::link::{Connection, Connector, is_connection_problem};
use crate::queue;

use super::bounded::Bounds;

/// When the job's own connection last wrote a heartbeat, and since when a
/// call on it has been waiting, shared with the heartbeat task.
#[derive(Debug, Clone)]
pub(crate) struct Beats {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
    /// 0 when no call is outstanding; otherwise when it started, in
    /// milliseconds since `origin`, plus one.
    call_since: Arc<AtomicU64>,
}

impl Beats {
    pub fn new() -> Beats {
        Beats {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            call_since: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Notes a heartbeat written now.
    pub fn beat(&self) {
        self.last_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    fn since_last(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }

    /// Notes that a call on the job's connection starts now; it is over
    /// when the guard is dropped (also when the call is abandoned).
    pub fn call(&self) -> Outstanding<'_> {
        self.call_since.store(self.now_ms() + 1, Ordering::Relaxed);
        Outstanding(self)
    }

    /// How long the outstanding call has waited, if there is one.
    fn outstanding_for(&self) -> Option<Duration> {
        match self.call_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(
                self.now_ms().saturating_sub(since - 1),
            )),
        }
    }
}

/// A call on the job's connection in progress (see [`Beats::call`]).
pub(crate) struct Outstanding<'a>(&'a Beats);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.call_since.store(0, Ordering::Relaxed);
    }
}

/// What the heartbeat task does at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tick {
    /// The job's commits beat within the interval: nothing to write, and
    /// no second connection needed.
    Quiet,
    /// No commit for an interval, and the processor is not stuck: write
    /// the heartbeat for it.
    Vouch,
    /// A call on the job's connection has waited for the batch bound:
    /// write nothing, so that the job goes stale unless the processor
    /// recovers.
    Withhold,
}

fn tick(beats: &Beats, interval: Duration, bound: Duration) -> Tick {
    decide(beats.since_last(), beats.outstanding_for(), interval, bound)
}

fn decide(
    since_beat: Duration,
    outstanding: Option<Duration>,
    interval: Duration,
    bound: Duration,
) -> Tick {
    if outstanding.is_some_and(|waited| waited >= bound) {
        Tick::Withhold
    } else if since_beat < interval {
        Tick::Quiet
    } else {
        Tick::Vouch
    }
}

/// The running heartbeat task of one job; [`Heartbeat::stop`] ends it
/// (closing its connection, if it has one).
pub(crate) struct Heartbeat {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Starts the task for job `id` held by `holder`.
    pub fn start(
        connector: Arc<Connector>,
        id: u64,
        holder: String,
        stale_after: Duration,
        bounds: Bounds,
        beats: Beats,
    ) -> Heartbeat {
        let (stop, mut stopped) = watch::channel(false);
        let interval = (stale_after / 3).max(Duration::from_millis(100));
        // The connection idles for an interval between two writes; its
        // statements commit at once, so a session the server keeps after
        // the connection was given up holds no lock, only a connection.
        let session_secs = bounds
            .session_secs()
            .max((interval * 2).as_secs_f64().ceil() as u64);
        let task = tokio::spawn(async move {
            let mut conn: Option<Connection> = None;
            let mut withheld = false;
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(interval) => {}
                }
                match tick(&beats, interval, bounds.call) {
                    Tick::Quiet => {
                        withheld = false;
                        if let Some(c) = conn.take() {
                            c.close_quickly().await;
                        }
                        continue;
                    }
                    Tick::Withhold => {
                        if !withheld {
                            withheld = true;
                            tracing::warn!(
                                job = id,
                                bound = ?bounds.call,
                                "the job's connection has had no answer for the batch bound: no heartbeat for it until it answers, so that the job goes stale unless this processor recovers"
                            );
                        }
                        if let Some(c) = conn.take() {
                            c.close_quickly().await;
                        }
                        continue;
                    }
                    Tick::Vouch => withheld = false,
                }
                if conn.is_none() {
                    let connect = tokio::time::timeout(interval, async {
                        let mut c = connector.connect().await.map_err(|f| f.brief)?;
                        match queue::end_sessions_left_waiting(&mut c, session_secs).await {
                            Ok(()) => Ok(c),
                            Err(e) if is_connection_problem(&e) => {
                                c.close_quickly().await;
                                Err(e.to_string())
                            }
                            Err(e) => {
                                tracing::debug!(job = id, error = %e, "the server refused the session's timeouts; the heartbeat goes on without them");
                                Ok(c)
                            }
                        }
                    });
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => break,
                        result = connect => match result {
                            Ok(Ok(c)) => conn = Some(c),
                            Ok(Err(message)) => {
                                tracing::warn!(job = id, error = %message, "cannot open a connection for the heartbeat of a slow batch");
                                continue;
                            }
                            Err(_) => {
                                tracing::warn!(job = id, waited = ?interval, "no connection for the heartbeat of a slow batch in time");
                                continue;
                            }
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let write = tokio::time::timeout(interval, queue::heartbeat(c, id, &holder));
                let written = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    written = write => written,
                };
                match written {
                    Ok(Ok(true)) => {
                        tracing::debug!(job = id, "heartbeat written while a batch is slow");
                        beats.beat();
                    }
                    Ok(Ok(false)) => {
                        // The job is no longer ours; the processor learns
                        // it at its next write.
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(job = id, error = %e, "writing a heartbeat failed");
                        if let Some(c) = conn.take() {
                            c.close_quickly().await;
                        }
                    }
                    Err(_) => {
                        tracing::warn!(job = id, waited = ?interval, "no answer to a heartbeat; trying a new connection at the next one");
                        if let Some(c) = conn.take() {
                            c.close_quickly().await;
                        }
                    }
                }
            }
            if let Some(c) = conn.take() {
                c.close_quickly().await;
            }
        });
        Heartbeat { stop, task }
    }

    /// Ends the task and waits until its connection is closed (at most
    /// [`CLOSE_WITHIN`](crate::link::CLOSE_WITHIN)).
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn vouches_for_a_slow_call_until_the_bound_then_withholds() {
        let (interval, bound) = (S(2), S(18));
        // Batches commit on their own: nothing to write.
        assert_eq!(decide(S(1), None, interval, bound), Tick::Quiet);
        assert_eq!(decide(S(1), Some(S(1)), interval, bound), Tick::Quiet);
        // No commit for an interval: a slow batch, or the reader, or a
        // reconnect; the processor is alive.
        assert_eq!(decide(S(2), Some(S(5)), interval, bound), Tick::Vouch);
        assert_eq!(decide(S(30), None, interval, bound), Tick::Vouch);
        assert_eq!(decide(S(17), Some(S(17)), interval, bound), Tick::Vouch);
        // A call without an answer for the bound: no more heartbeats.
        assert_eq!(decide(S(18), Some(S(18)), interval, bound), Tick::Withhold);
        assert_eq!(decide(S(1), Some(S(80)), interval, bound), Tick::Withhold);
    }

    #[test]
    fn a_call_is_outstanding_until_its_guard_goes() {
        let beats = Beats::new();
        assert_eq!(beats.outstanding_for(), None);
        let call = beats.call();
        assert!(beats.outstanding_for().is_some());
        drop(call);
        assert_eq!(beats.outstanding_for(), None);
    }
}
