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
//! The write is conditional on the holder like every other one, and the
//! commit of a batch locks the job's row only at its very end, so the
//! heartbeat is not held up behind a slow insert.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::link::{Connection, Connector};
use crate::queue;

/// When the job's own connection last wrote a heartbeat, shared with the
/// heartbeat task.
#[derive(Debug, Clone)]
pub(crate) struct Beats {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Beats {
    pub fn new() -> Beats {
        Beats {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Notes a heartbeat written now.
    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn since_last(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
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
        beats: Beats,
    ) -> Heartbeat {
        let (stop, mut stopped) = watch::channel(false);
        let interval = (stale_after / 3).max(Duration::from_millis(100));
        let task = tokio::spawn(async move {
            let mut conn: Option<Connection> = None;
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(interval) => {}
                }
                if beats.since_last() < interval {
                    if let Some(c) = conn.take() {
                        close_quickly(c).await;
                    }
                    continue;
                }
                if conn.is_none() {
                    let connect = tokio::time::timeout(interval, connector.connect());
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => break,
                        result = connect => match result {
                            Ok(Ok(c)) => conn = Some(c),
                            Ok(Err(failure)) => {
                                tracing::warn!(job = id, error = %failure.message, "cannot open a connection for the heartbeat of a slow batch");
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
                match queue::heartbeat(c, id, &holder).await {
                    Ok(true) => {
                        tracing::debug!(job = id, "heartbeat written while a batch is slow");
                        beats.beat();
                    }
                    Ok(false) => {
                        // The job is no longer ours; the processor learns
                        // it at its next write.
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(job = id, error = %e, "writing a heartbeat failed");
                        if let Some(c) = conn.take() {
                            close_quickly(c).await;
                        }
                    }
                }
            }
            if let Some(c) = conn.take() {
                close_quickly(c).await;
            }
        });
        Heartbeat { stop, task }
    }

    /// Ends the task and waits until its connection is closed.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Closes a connection that may be dead without waiting on it for long.
pub(crate) async fn close_quickly(conn: Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
}
