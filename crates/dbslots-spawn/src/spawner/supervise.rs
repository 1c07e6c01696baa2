//! One supervisor task per worker: waits for it, relays the stop phases to
//! its process group, keeps its slot until the group is empty, streams its
//! output, and reports a `Finished` record.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dbslots_core::Slot;
use tokio::sync::{mpsc, oneshot};

use super::process::WorkerProcess;
use super::stop::{Phase, signal_phase};
use super::{Ctx, Finished};
use crate::console::Stream;
use crate::group;
use crate::output::pump;

/// How long a worker's output is still read after the worker exited (its
/// children may hold the pipes open); after that the pipes are closed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How soon after a worker's exit its group is checked again when
/// processes it started still run; the pause doubles up to
/// [`LINGER_POLL_MAX`]. Only workers that leave processes behind pay this.
const LINGER_POLL_FIRST: Duration = Duration::from_millis(10);
const LINGER_POLL_MAX: Duration = Duration::from_millis(200);

/// How often a worker's supervisor looks whether its slot's lease (Redis
/// pool) was lost; the look is local (no network).
const LEASE_POLL: Duration = Duration::from_millis(20);

impl Ctx {
    /// Hands a started worker to its supervisor task.
    pub(super) fn supervise(
        self: &Arc<Self>,
        mut child: WorkerProcess,
        index: u32,
        slot: Option<Slot>,
        done: mpsc::UnboundedSender<Finished>,
    ) {
        let started = Instant::now();
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // A child that is not reaped has an id.
        let pid = child.id().unwrap_or(0);
        let c = &self.counters;
        c.started.fetch_add(1, Ordering::Relaxed);
        let running = c.running.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_running.fetch_max(running, Ordering::Relaxed);
        let slot_index = slot.as_ref().map(Slot::index);
        if let Some(slot) = &slot {
            // The worker holds the slot (or, for a lease, uses it): status
            // shows the worker, not the spawner.
            slot.set_holder_pid(pid);
            let held = c.slots.fetch_add(1, Ordering::Relaxed) + 1;
            c.peak_slots.fetch_max(held, Ordering::Relaxed);
        }
        tracing::debug!(worker = index, pid, slot = ?slot_index, "worker started");
        let pgid = libc::pid_t::try_from(pid).unwrap_or(0);
        self.running.insert(pgid, index);
        // A worker that stopped before it was noted here had its SIGCHLD
        // come too early to be reported: look now.
        self.report_stopped_workers();

        let ctx = self.clone();
        let (stdout, stderr) = child.take_output();
        tokio::spawn(async move {
            let (exited_tx, exited_rx) = oneshot::channel::<()>();
            let mut stop = ctx.stop.subscribe();
            // A lease (Redis pool) can be lost while the worker runs: then
            // the worker is stopped (SIGTERM, SIGKILL half the lease's
            // safety margin later) before the server can give the slot to
            // anyone else, unless `hold_slot` lets it run on.
            let lease_grace = match &slot {
                Some(_) if !ctx.options.hold_slot => ctx
                    .pool
                    .as_ref()
                    .and_then(dbslots_core::Pool::lease_margin)
                    .map(|m| m / 2),
                _ => None,
            };
            let waiter = async {
                let mut sent = Phase::Running;
                let mut lease = LeaseWatch {
                    grace: lease_grace,
                    kill_at: None,
                };
                let status = loop {
                    let wanted = stop.borrow_and_update().phase;
                    if wanted > sent {
                        signal_phase(pgid, wanted, index);
                        sent = wanted;
                    }
                    tokio::select! {
                        status = child.wait() => break status,
                        changed = stop.changed() => if changed.is_err() {
                            break child.wait().await;
                        },
                        () = tokio::time::sleep(LEASE_POLL), if lease.watching(sent) => {
                            lease.check(slot.as_ref(), pgid, index, &mut sent);
                        }
                    }
                };
                ctx.running.remove(pgid);
                let runtime = started.elapsed();
                // The worker is reaped; processes it started may still use
                // its slot. Keep the slot (and relay the stop phases to
                // them, and stop them if the lease is lost) until none of
                // its group is left.
                if slot.is_some() {
                    let mut pause = LINGER_POLL_FIRST;
                    let mut announced = false;
                    while group::alive(pgid) {
                        if !announced {
                            announced = true;
                            tracing::debug!(
                                worker = index,
                                pid,
                                "the worker exited but processes of its group still run; keeping its slot until they end"
                            );
                        }
                        let wanted = stop.borrow_and_update().phase;
                        if wanted > sent {
                            signal_phase(pgid, wanted, index);
                            sent = wanted;
                        }
                        let mut nap = pause;
                        if lease.watching(sent) {
                            lease.check(slot.as_ref(), pgid, index, &mut sent);
                            nap = nap.min(LEASE_POLL);
                        }
                        tokio::select! {
                            () = tokio::time::sleep(nap) => {}
                            _ = stop.changed() => {}
                        }
                        pause = (pause * 2).min(LINGER_POLL_MAX);
                    }
                }
                // Reaped, and nothing of its group left: only now may the
                // slot go to the next worker.
                if let Some(keeper) = &ctx.keeper {
                    keeper.forget(pgid);
                }
                if let Some(slot) = slot {
                    // Not unlocked under a process that left the group
                    // (a daemon) but kept the worker's stdin, the lock's
                    // descriptor: it holds the slot until it closes it.
                    slot.release_unless_inherited();
                    ctx.counters.slots.fetch_sub(1, Ordering::Relaxed);
                }
                ctx.counters.running.fetch_sub(1, Ordering::Relaxed);
                let _ = exited_tx.send(());
                (status, runtime)
            };
            let readers = async {
                let out = async {
                    if let Some(r) = stdout {
                        pump(r, index, Stream::Out, &ctx.console).await;
                    }
                };
                let err = async {
                    if let Some(r) = stderr {
                        pump(r, index, Stream::Err, &ctx.console).await;
                    }
                };
                let both = async { tokio::join!(out, err) };
                tokio::select! {
                    _ = both => {}
                    _ = async {
                        let _ = exited_rx.await;
                        tokio::time::sleep(DRAIN_AFTER_EXIT).await;
                    } => {
                        tracing::debug!(worker = index, "output still open after the worker exited; no longer read");
                    }
                }
            };
            let ((status, runtime), ()) = tokio::join!(waiter, readers);
            let (exitval, signal) = match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => (code, 0),
                    (None, Some(sig)) => (0, sig),
                    (None, None) => (-1, 0),
                },
                Err(e) => {
                    tracing::error!(worker = index, pid, error = %e, "cannot read the worker's exit status");
                    (-1, 0)
                }
            };
            tracing::debug!(
                worker = index,
                pid,
                exitval,
                signal,
                runtime_s = runtime.as_secs_f64(),
                "worker finished"
            );
            let _ = done.send(Finished {
                index,
                start_unix,
                runtime,
                exitval,
                signal,
            });
        });
    }
}

/// Stops a worker's group when its slot's lease is lost: SIGTERM, then
/// SIGKILL `grace` later (half the lease's safety margin), before the
/// server can give the slot to anyone else. Also while the worker's
/// leftovers still run after it exited: they use the slot as much as it
/// did.
struct LeaseWatch {
    /// `None` when there is nothing to watch (a lock, or `hold_slot`).
    grace: Option<Duration>,
    /// When to send SIGKILL, once the lease is lost.
    kill_at: Option<Instant>,
}

impl LeaseWatch {
    /// Whether the lease still needs looking at.
    fn watching(&self, sent: Phase) -> bool {
        self.grace.is_some() && sent < Phase::Kill
    }

    /// Looks at the lease (locally: no network) and signals the group as
    /// due; `sent` is the phase the group was last signalled.
    fn check(&mut self, slot: Option<&Slot>, pgid: libc::pid_t, index: u32, sent: &mut Phase) {
        let Some(grace) = self.grace else { return };
        match self.kill_at {
            None if slot.is_some_and(|s| s.wait_lost(Duration::ZERO)) => {
                tracing::error!(
                    worker = index,
                    pgid,
                    "the worker's slot lease was lost; stopping its process group (SIGTERM, then SIGKILL in {grace:?})"
                );
                if *sent < Phase::Terminate {
                    signal_phase(pgid, Phase::Terminate, index);
                    *sent = Phase::Terminate;
                }
                self.kill_at = Some(Instant::now() + grace);
            }
            Some(at) if Instant::now() >= at => {
                signal_phase(pgid, Phase::Kill, index);
                *sent = Phase::Kill;
            }
            _ => {}
        }
    }
}
