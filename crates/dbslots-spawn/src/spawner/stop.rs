//! Stopping: the phases (`Running → Terminate → Kill`, only forward), the
//! [`Stopper`] of embedders, the signals the spawner obeys, and the signal
//! each phase sends to a worker's process group.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use super::Ctx;
use crate::group;
use crate::summary::signal_name;

/// The stop phase; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    Running,
    Terminate,
    Kill,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct StopState {
    pub(super) phase: Phase,
    pub(super) signal: Option<i32>,
}

/// Stops a running [`Spawner`](crate::Spawner) from anywhere (another task or thread).
#[derive(Debug, Clone)]
pub struct Stopper {
    pub(super) tx: Arc<watch::Sender<StopState>>,
}

impl Stopper {
    /// The first call starts an orderly stop: nothing new starts, every
    /// running worker's process group gets SIGTERM, and SIGKILL after the
    /// grace period. Any further call sends SIGKILL at once. `signal` is
    /// the signal being obeyed; it decides the exit status (128 + signal).
    pub fn stop(&self, signal: i32) {
        self.tx.send_modify(|s| {
            if s.phase == Phase::Running {
                s.phase = Phase::Terminate;
                s.signal = Some(signal);
            } else {
                s.phase = Phase::Kill;
            }
        });
    }

    /// Whether a stop was asked for (by [`Stopper::stop`] or a signal).
    pub fn is_stopped(&self) -> bool {
        self.tx.borrow().phase != Phase::Running
    }
}

impl Ctx {
    /// Obeys signals and the grace period; never returns.
    pub(super) async fn watch_stop(&self, signals: &mut Option<Signals>) -> Infallible {
        let stopper = Stopper {
            tx: self.stop.clone(),
        };
        let mut rx = self.stop.subscribe();
        let mut announced = Phase::Running;
        let mut kill_at: Option<tokio::time::Instant> = None;
        loop {
            let state = *rx.borrow_and_update();
            if state.phase > announced {
                let running = self.counters.running.load(Ordering::Relaxed);
                match state.phase {
                    Phase::Terminate => {
                        let why = state.signal.map(signal_name).unwrap_or_default();
                        self.reporter.line(&format!(
                            "{why} received: starting no new workers; sending SIGTERM to {running} running workers, SIGKILL in {:.1} s (again to kill now)",
                            self.options.grace.as_secs_f64()
                        ));
                        tracing::warn!(signal = ?state.signal, running, "stopping workers");
                        // A grace past what an Instant holds: no SIGKILL
                        // but the one a second signal asks for.
                        kill_at = tokio::time::Instant::now().checked_add(self.options.grace);
                    }
                    Phase::Kill => {
                        self.reporter
                            .line(&format!("sending SIGKILL to {running} running workers"));
                        tracing::warn!(running, "killing workers");
                        kill_at = None;
                    }
                    Phase::Running => {}
                }
                announced = state.phase;
            }
            let grace_over = async {
                match kill_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next_signal = async {
                match signals {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                sig = next_signal => stopper.stop(sig),
                changed = rx.changed() => if changed.is_err() {
                    std::future::pending::<()>().await;
                },
                _ = grace_over => {
                    kill_at = None;
                    self.stop.send_modify(|s| s.phase = Phase::Kill);
                }
            }
        }
    }
}

/// Sends the signal of `phase` to the worker's process group (the worker
/// and every process it started that stayed in its group); SIGTERM is
/// followed by SIGCONT.
pub(super) fn signal_phase(pgid: libc::pid_t, phase: Phase, index: u32) {
    let sig = match phase {
        Phase::Running => return,
        Phase::Terminate => libc::SIGTERM,
        Phase::Kill => libc::SIGKILL,
    };
    let reached = group::signal(pgid, sig);
    if sig == libc::SIGTERM {
        // A stopped process (SIGSTOP, or SIGTTIN for reading the terminal)
        // would hold SIGTERM pending until the grace period's SIGKILL: wake
        // it to take it, as systemd and shells' `kill` do.
        group::signal(pgid, libc::SIGCONT);
    }
    tracing::debug!(
        worker = index,
        pgid,
        signal = sig,
        reached,
        "signalled the worker's group"
    );
}

/// SIGINT, SIGTERM and SIGHUP as one stream; a signal this process
/// inherited as ignored (`nohup`, `cmd &` in a script) stays ignored and is
/// not obeyed, as by any other program started so (and by `exec`).
pub(super) struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
    hup: Option<Signal>,
}

impl Signals {
    pub(super) fn new() -> io::Result<Signals> {
        let obeyed = |sig: libc::c_int, kind: SignalKind| -> io::Result<Option<Signal>> {
            if ignored(sig)? {
                tracing::debug!(signal = sig, "ignored by the caller: left ignored");
                return Ok(None);
            }
            signal(kind).map(Some)
        };
        Ok(Signals {
            int: obeyed(libc::SIGINT, SignalKind::interrupt())?,
            term: obeyed(libc::SIGTERM, SignalKind::terminate())?,
            hup: obeyed(libc::SIGHUP, SignalKind::hangup())?,
        })
    }

    pub(super) async fn recv(&mut self) -> i32 {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.int) => libc::SIGINT,
            () = next(&mut self.term) => libc::SIGTERM,
            () = next(&mut self.hup) => libc::SIGHUP,
        }
    }
}

/// Whether `sig` is ignored in this process (inherited so: nothing here
/// ignores a signal).
fn ignored(sig: libc::c_int) -> io::Result<bool> {
    // SAFETY: reads the current disposition into a zeroed struct; changes
    // nothing.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(old.sa_sigaction == libc::SIG_IGN)
    }
}
