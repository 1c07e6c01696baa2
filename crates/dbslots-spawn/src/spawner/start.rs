//! The starter: walks the worker indices in the order of the mode, takes a
//! slot for each worker that needs one, and starts it (the hand-over of the
//! slot as stdin, `posix_spawn` wherever no death signal needs std's
//! `pre_exec` hook).

use std::ffi::{OsStr, OsString};
use std::io;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dbslots_core::{Pool, Slot};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::process::{self, Stdin, WorkerProcess};
use super::stop::Phase;
use super::{Ctx, Finished, Flow};
use crate::keeper::Keeper;
use crate::options::{Mode, Output};
use crate::summary::StopReason;
use crate::template::{ENV_JOB_ID, ENV_POOL, ENV_SLOT, ENV_WORKER_COUNT, ENV_WORKER_INDEX};

impl Ctx {
    /// Starts every worker in the order of the mode; returns why it stopped
    /// early, unless it was told to.
    pub(super) async fn start_all(
        self: &Arc<Self>,
        done: mpsc::UnboundedSender<Finished>,
    ) -> Option<StopReason> {
        let n = self.options.workers;
        match self.options.mode {
            Mode::Adaptive => {
                for index in 0..n {
                    match self.start_one(index, &done).await {
                        Flow::Next => {}
                        Flow::Stopped => return None,
                        Flow::Failed(reason) => return Some(reason),
                    }
                }
            }
            Mode::Batches { size, delay } => {
                let size = size.get();
                let batches = n.div_ceil(size);
                let mut stop = self.stop.subscribe();
                for batch in 0..batches {
                    if batch > 0 {
                        tokio::select! {
                            biased;
                            _ = stop.wait_for(|s| s.phase != Phase::Running) => return None,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    let first = batch * size;
                    let last = (first + size).min(n) - 1;
                    for index in first..=last {
                        match self.start_one(index, &done).await {
                            Flow::Next => {}
                            Flow::Stopped => return None,
                            Flow::Failed(reason) => return Some(reason),
                        }
                    }
                    tracing::info!(batch = batch + 1, batches, first, last, "batch started");
                    if self.reporter.shows_batches() {
                        self.reporter.batch(
                            batch + 1,
                            batches,
                            first,
                            last,
                            self.pool.as_ref().map(Pool::stats),
                        );
                    }
                }
            }
        }
        None
    }

    /// Takes a slot if needed, then starts worker `index`.
    async fn start_one(
        self: &Arc<Self>,
        index: u32,
        done: &mpsc::UnboundedSender<Finished>,
    ) -> Flow {
        if self.stopping() {
            return Flow::Stopped;
        }
        // A spawner that takes slots always has a pool (`Spawner::new`).
        let slot = if let Some(pool) = self.pool.as_ref().filter(|_| self.options.takes_slots()) {
            let mut stop = self.stop.subscribe();
            self.counters.waiting.store(true, Ordering::Relaxed);
            let acquired = tokio::select! {
                biased;
                _ = stop.wait_for(|s| s.phase != Phase::Running) => return Flow::Stopped,
                r = pool.acquire() => r,
            };
            self.counters.waiting.store(false, Ordering::Relaxed);
            match acquired {
                Ok(slot) => Some(slot),
                Err(e) => {
                    tracing::error!(pool = %self.pool_addr, worker = index, error = %e, "cannot take a slot; starting no further workers");
                    let message = e.to_string();
                    self.reporter
                        .line(&format!("cannot take a slot for worker {index}: {message}"));
                    return Flow::Failed(StopReason::Pool { message });
                }
            }
        } else {
            None
        };
        if self.stopping() {
            return Flow::Stopped;
        }
        match self.spawn_worker(index, slot.as_ref()) {
            Ok(child) => {
                self.supervise(child, index, slot, done.clone());
                // Let the supervisors reap the workers that exited meanwhile
                // and give their slots back. Without this, a free slot makes
                // `acquire` ready at once, the starter never yields,
                // and nobody is reaped until the pool is full: slots held by
                // zombies, and every further start on the slow path of the
                // pool (a waiter file, a thread, a futex wake-up).
                tokio::task::yield_now().await;
                Flow::Next
            }
            Err(reason) => {
                tracing::error!(worker = index, error = %reason, "cannot start worker; starting no further workers");
                self.reporter.line(&reason.to_string());
                Flow::Failed(reason)
            }
        }
    }

    /// Builds and starts worker `index`'s process; a script without a
    /// `#!` line runs with /bin/sh, as from a shell.
    fn spawn_worker(&self, index: u32, slot: Option<&Slot>) -> Result<WorkerProcess, StopReason> {
        let n = self.options.workers;
        let program = self.template.program();
        let args = self.template.args(index, n);
        let started = match self.spawn_as(index, slot, program, &args) {
            Err((e, _)) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                match crate::script::without_interpreter(program) {
                    Some(script) => {
                        let mut sh_args = vec![script.into_os_string()];
                        sh_args.extend(args);
                        self.spawn_as(index, slot, OsStr::new("/bin/sh"), &sh_args)
                    }
                    None => Err((e, Step::Spawning)),
                }
            }
            started => started,
        };
        started.map_err(|(e, step)| self.start_failed(index, e, &step))
    }

    /// Why worker `index` could not start, with what to do about it.
    fn start_failed(&self, index: u32, e: io::Error, step: &Step) -> StopReason {
        let n = self.options.workers;
        let (what, exit_code, hint) = match step {
            // Not the program's fault: no 127, no PATH to check.
            Step::LogFile(what) => (
                what.as_str(),
                126,
                "check that the directory given as Output::LogDir exists and is writable",
            ),
            Step::HandingOver => ("handing over the slot", 126, "check the pool"),
            Step::Spawning => {
                let (exit_code, hint) = program_hint(&e);
                ("spawning", exit_code, hint)
            }
        };
        StopReason::StartFailed {
            index,
            message: format!(
                "cannot start worker {index} ({}): {what}: {e}; {hint}",
                self.template.display(index, n)
            ),
            exit_code,
        }
    }

    /// Starts worker `index` as `program args`; on failure, the error and
    /// what was being done.
    fn spawn_as(
        &self,
        index: u32,
        slot: Option<&Slot>,
        program: &OsStr,
        args: &[OsString],
    ) -> Result<WorkerProcess, (io::Error, Step)> {
        let n = self.options.workers;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env(ENV_WORKER_INDEX, index.to_string())
            .env(ENV_WORKER_COUNT, n.to_string())
            .env_remove(ENV_SLOT)
            .process_group(0)
            .kill_on_drop(false);
        // With its credentials, so the worker can open the pool.
        match &self.pool {
            Some(pool) => cmd.env(ENV_POOL, pool.addr().to_unredacted_string()),
            None => cmd.env_remove(ENV_POOL),
        };
        match &self.options.job_id {
            Some(id) => cmd.env(ENV_JOB_ID, id),
            None => cmd.env_remove(ENV_JOB_ID),
        };
        match &self.options.output {
            Output::Prefixed => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Output::LogDir(dir) => {
                let path = dir.join(format!("{index}.log"));
                let file = std::fs::File::create(&path)
                    .map_err(|e| (e, Step::LogFile(format!("creating {}", path.display()))))?;
                let copy = file
                    .try_clone()
                    .map_err(|e| (e, Step::LogFile(format!("duplicating {}", path.display()))))?;
                cmd.stdout(file).stderr(copy);
            }
        }
        // The slot goes to the worker as its stdin: a duplicate of the
        // locked descriptor (the same open file description, so the same
        // lock) of an empty read-only file, which reads as end of file like
        // /dev/null. The worker then holds the slot for its whole life, even
        // if the spawner dies. No `pre_exec` hook is needed for that, so the
        // worker can start with posix_spawn (vfork) rather than fork + exec;
        // the parent's copy closes once the worker started. The spawner's own guard stays
        // with the supervisor until the worker is reaped: dropping it would
        // unlock the shared description and free the slot under the worker.
        let handed_over = match slot {
            Some(slot) => {
                cmd.envs(slot.child_env());
                slot.lock_fd_for_child()
                    .map_err(|e| (io::Error::other(e.to_string()), Step::HandingOver))?
            }
            None => None,
        };
        let death_signal = match (slot, &handed_over) {
            // The worker holds its slot itself: if the spawner dies, the
            // slot stays held until the worker exits. Nothing to do.
            (Some(_), Some(_)) => None,
            // A lease (Redis pool) cannot be inherited: it lives only while
            // the spawner renews it. Unless told to let workers outlive it
            // (`hold_slot`), a worker must not outlive its slot.
            (Some(_), None) if self.options.hold_slot => None,
            (Some(_), None) => Some(libc::SIGKILL),
            // Workers take their own slots (batches): no orphans.
            (None, _) => Some(libc::SIGTERM),
        };
        // Prefixed output goes through pipes to this process: if it dies,
        // a worker's next line would kill the worker with SIGPIPE. Workers
        // start with SIGPIPE ignored instead (their writes then fail with
        // EPIPE), so that they can run to their end. std resets SIGPIPE to
        // its default in children and needs a `pre_exec` hook (fork + exec)
        // to do otherwise, so these workers are started by `posix_spawn`
        // called in `process.rs` (see there why). Workers with a death
        // signal need the hook anyway; workers with --log-dir keep std's own
        // posix_spawn.
        let ignore_sigpipe = matches!(self.options.output, Output::Prefixed);
        // A worker killed by the kernel with the spawner may have started
        // processes of its own: it registers its group with the keeper,
        // which kills the group if the spawner dies (`keeper.rs`).
        let registration = match death_signal {
            Some(libc::SIGKILL) => self.keeper.as_ref().map(Keeper::registration),
            _ => None,
        };
        if ignore_sigpipe && death_signal.is_none() && process::available() {
            let std = cmd.as_std();
            let stdin = match handed_over {
                Some(fd) => Stdin::Fd(fd),
                None => Stdin::Null,
            };
            return process::spawn_sigpipe_ignored(
                std.get_program(),
                std.get_args(),
                std.get_envs(),
                stdin,
            )
            .map(WorkerProcess::Spawned)
            .map_err(|e| (e, Step::Spawning));
        }
        match handed_over {
            Some(fd) => cmd.stdin(Stdio::from(fd)),
            None => cmd.stdin(Stdio::null()),
        };
        if death_signal.is_some() || ignore_sigpipe {
            // SAFETY: getpid is async-signal-safe and is called here, in the
            // parent.
            let parent = unsafe { libc::getpid() };
            // SAFETY: the closure runs between fork and exec and only makes
            // async-signal-safe calls (signal, prctl, getppid, _exit, and
            // getpgrp and write to register); it allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    if ignore_sigpipe && libc::signal(libc::SIGPIPE, libc::SIG_IGN) == libc::SIG_ERR
                    {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(sig) = death_signal {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        // The spawner died before prctl: do not run orphaned.
                        if libc::getppid() != parent {
                            libc::_exit(128 + sig);
                        }
                    }
                    // Registered before the program runs, so before it can
                    // start anything; a worker the keeper cannot watch
                    // does not start.
                    if let Some(r) = &registration {
                        r.send()?;
                    }
                    Ok(())
                });
            }
        }
        let spawned = cmd.spawn();
        if let (Err(_), Some(keeper), Some(r)) = (&spawned, &self.keeper, registration) {
            keeper.failed(r);
        }
        spawned
            .map(WorkerProcess::Std)
            .map_err(|e| (e, Step::Spawning))
    }
}

/// What a failed start was doing: only a failure to start the program
/// itself is the program's (127 when it is not found, as from a shell).
enum Step {
    /// Creating or duplicating the worker's log file (what, with its path).
    LogFile(String),
    /// Duplicating the slot's lock for the worker.
    HandingOver,
    /// Starting the program.
    Spawning,
}

/// The exit status and the advice for a program that could not be
/// started.
fn program_hint(e: &io::Error) -> (u8, &'static str) {
    match e.kind() {
        io::ErrorKind::NotFound => (127, "check the command and PATH"),
        io::ErrorKind::PermissionDenied => (126, "make the program executable"),
        _ => match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => (
                126,
                "too many open files: raise the limit (ulimit -n) or use Output::LogDir, which needs no pipes",
            ),
            Some(libc::EAGAIN) => (
                126,
                "the process limit is reached: raise it (ulimit -u) or start fewer workers at once",
            ),
            _ => (126, "check the command and the system's limits"),
        },
    }
}
