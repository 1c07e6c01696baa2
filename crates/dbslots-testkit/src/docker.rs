//! The container backend: servers run as `docker` containers that publish
//! their port on 127.0.0.1.

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::process::{describe, free_port, run_captured};

/// Whether a container engine answers (`docker info` succeeds). Asked once
/// per process.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("docker")
            .arg("info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A running container that we remove when asked to.
#[derive(Debug)]
pub(crate) struct Container {
    pub(crate) id: String,
}

impl Container {
    /// Runs `image` detached with `env`, publishing `container_port` on a
    /// free 127.0.0.1 port (retried when the port was taken meanwhile), and
    /// passes `args` after the image name. Returns the container and the
    /// host port.
    pub(crate) fn run(
        image: &str,
        container_port: u16,
        env: &[&str],
        args: &[String],
    ) -> Result<(Self, u16)> {
        Self::run_with_volumes(image, container_port, env, &[], args)
    }

    /// [`Container::run`] with `volumes` as `--volume` values
    /// (`HOST:CONTAINER[:ro]`).
    pub(crate) fn run_with_volumes(
        image: &str,
        container_port: u16,
        env: &[&str],
        volumes: &[String],
        args: &[String],
    ) -> Result<(Self, u16)> {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let name = format!(
                "dbslots-testkit-{}-{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            );
            let mut command = Command::new("docker");
            command.args(["run", "--detach", "--label", "dbslots-testkit=1", "--name"]);
            command.arg(&name);
            command
                .arg("--publish")
                .arg(format!("127.0.0.1:{port}:{container_port}"));
            for var in env {
                command.arg("--env").arg(var);
            }
            for volume in volumes {
                command.arg("--volume").arg(volume);
            }
            command.arg(image).args(args);
            match run_captured(&mut command) {
                Ok(out) => {
                    let id = out.trim().to_owned();
                    return Ok((Self { id }, port));
                }
                Err(e) => {
                    // A failed `run` may still have created the container.
                    let _ = run_captured(Command::new("docker").args(["rm", "--force", &name]));
                    let text = format!("{e:#}");
                    if text.contains("already allocated") || text.contains("address already in use")
                    {
                        last_error = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last_error.expect("the loop ran at least once and only continues after an error"))
    }

    /// Runs `program args` inside the container; returns its stdout.
    pub(crate) fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut command = Command::new("docker");
        command.args(["exec", &self.id, program]).args(args);
        run_captured(&mut command)
    }

    /// Whether the container is still running.
    pub(crate) fn running(&self) -> bool {
        run_captured(Command::new("docker").args([
            "inspect",
            "--format",
            "{{.State.Running}}",
            &self.id,
        ]))
        .is_ok_and(|out| out.trim() == "true")
    }

    /// The last lines of the container's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let mut command = Command::new("docker");
        command.args(["logs", "--tail", "30", &self.id]);
        let shown = describe(&command);
        match command.output() {
            Ok(out) => format!(
                "{shown}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("(cannot run {shown}: {e})"),
        }
    }

    /// Restarts the container in place (same port mapping).
    pub(crate) fn restart(&self) -> Result<()> {
        run_captured(Command::new("docker").args(["restart", "--time", "10", &self.id])).map(drop)
    }

    /// Removes the container, stopping it first.
    pub(crate) fn remove(self) -> Result<()> {
        remove(&self.id)
    }

    /// Leaves the container running; returns its id.
    pub(crate) fn release(self) -> String {
        self.id
    }
}

/// Removes container `id`, stopping it first; a missing container is fine.
pub(crate) fn remove(id: &str) -> Result<()> {
    match run_captured(Command::new("docker").args(["rm", "--force", id])) {
        Ok(_) => Ok(()),
        Err(e) if format!("{e:#}").contains("No such container") => Ok(()),
        Err(e) => Err(e).context("cannot remove the container"),
    }
}
