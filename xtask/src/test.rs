//! `cargo xtask test`: everything CI checks, in order, failing fast.

use std::time::Instant;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::child::{self, cargo};
use crate::servers::{self, TestServers};

/// Runs the checks and prints a one-line verdict; `args` (after an optional
/// `--`) go to `cargo test`.
pub fn run(args: &[String]) -> Result<()> {
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let scratch = servers::scratch_dir()?;
    child::install_interrupt_handler()?;
    let started = Instant::now();
    let result = steps(args, scratch);
    let seconds = started.elapsed().as_secs();
    // The verdict is the last line, after the error.
    let code = match result {
        Ok(()) => {
            println!("xtask test: PASSED (fmt, clippy, tests) in {seconds} s");
            return Ok(());
        }
        Err(e) if e.is::<child::Interrupted>() || child::interrupted() => {
            eprintln!("xtask: interrupted; servers stopped");
            println!("xtask test: INTERRUPTED after {seconds} s");
            130
        }
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            println!("xtask test: FAILED after {seconds} s");
            1
        }
    };
    Err(child::Reported(code).into())
}

fn steps(args: &[String], scratch: TempDir) -> Result<()> {
    child::run(
        "`cargo fmt --all --check` (run `cargo fmt --all`)",
        cargo(&["fmt", "--all", "--check"]),
    )?;
    child::run(
        "`cargo clippy --workspace --all-targets -- -D warnings`",
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let servers = TestServers::start(scratch)?;
    let mut test = cargo(&["test", "--workspace", "--all-targets"]);
    test.args(args);
    servers.export_to(&mut test);
    let tested = child::run("`cargo test --workspace --all-targets`", test);
    let stopped = servers.stop().context("tests done, but cleaning up failed");
    tested.and(stopped)
}
