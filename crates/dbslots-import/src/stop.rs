//! Asking a processor to stop.

use std::sync::Arc;

use tokio::sync::watch;

/// Asks a running processor to stop after its current batch. Cheap to clone;
/// every clone stops the same processors.
///
/// The batch being committed gets at most 10 s more: one that has no
/// answer by then (its connection lost without a word) is given up, which
/// the server rolls back, and the job is put back over a new connection if
/// one opens within 5 s (else it goes back once its heartbeat is stale).
/// A processor waiting for its file between batches puts the job back at
/// once. So [`Processor::run`](crate::Processor::run) returns within 30 s
/// of the stop whatever the server or the network does.
#[derive(Debug, Clone)]
pub struct Stopper {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Stopper {
    fn default() -> Self {
        Stopper {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl Stopper {
    /// A signal that has not been given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the signal.
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the signal was given.
    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }

    /// Waits until the signal is given.
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_signal_wakes_waiters() {
        let stop = Stopper::new();
        assert!(!stop.is_stopped());
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move { stop.stopped().await })
        };
        stop.stop();
        waiter.await.unwrap();
        assert!(stop.is_stopped());
        // Already given: returns at once.
        stop.stopped().await;
    }
}
