//! Running cargo as a child that a Ctrl-C or SIGTERM stops in order.
//!
//! # Implementation Details
//!
//! The signal handler only sets [`INTERRUPTED`]; the main thread notices it
//! between steps and while it polls a child, so that cleanup (stopping the
//! servers, deleting directories) runs in one place: the `Drop` of the
//! values that own them. Children run in their own process group, so a
//! Ctrl-C at the terminal reaches xtask alone; xtask then sends SIGINT to
//! the child's whole group (cargo, rustc, test binaries), waits for it, and
//! only then stops the servers the tests were using. A child also gets
//! SIGTERM if xtask dies unexpectedly.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Set once SIGINT, SIGTERM or SIGHUP arrived.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How long an interrupted child gets to exit before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(10);

/// The error of a task stopped by a signal (exit code 130).
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The error of a task that has already printed its failure; carries the
/// exit code.
#[derive(Debug)]
pub struct Reported(pub u8);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed (exit code {})", self.0)
    }
}

impl std::error::Error for Reported {}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP. Call once, before
/// starting anything that needs cleaning up.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("xtask: still stopping servers, please wait");
        } else {
            eprintln!("xtask: interrupted, stopping...");
        }
    })
    .context("cannot install the signal handler")
}

/// Whether a signal arrived. A step that failed meanwhile most likely
/// failed because of it (a child in our process group got SIGINT too).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with [`Interrupted`] once a signal arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Interrupted.into())
    } else {
        Ok(())
    }
}

/// A `cargo` command run from the workspace root (the cargo that runs
/// xtask, if known).
pub fn cargo(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(crate::workspace_root());
    command
}

/// Runs `command` to completion; `what` names it in messages.
///
/// # Errors
///
/// [`Interrupted`] when a signal arrived meanwhile (the child has then been
/// stopped); an error naming `what` when it fails.
pub fn run(what: &str, mut command: Command) -> Result<()> {
    check_interrupted()?;
    // Every step says what it starts: a first build takes minutes, and
    // silence meanwhile looks like a hang.
    eprintln!("xtask: {what}");
    command.process_group(0);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl is async-signal-safe and nothing is allocated.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    loop {
        if let Some(status) = child.try_wait()? {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err(Interrupted.into());
            }
            if status.success() {
                return Ok(());
            }
            bail!("{what} failed ({status})");
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            stop(&mut child);
            return Err(Interrupted.into());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGINT to the child's process group, as a terminal would, and
/// SIGKILL to what is left after [`CHILD_GRACE`]; reaps the child.
fn stop(child: &mut Child) {
    let group = -(child.id() as libc::pid_t);
    // SAFETY: plain system calls on a process group we created.
    unsafe { libc::kill(group, libc::SIGINT) };
    let deadline = Instant::now() + CHILD_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Also ends grandchildren that outlived cargo.
    unsafe { libc::kill(group, libc::SIGKILL) };
    let _ = child.wait();
}
