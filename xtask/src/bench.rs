//! `cargo xtask bench`: the workspace's benchmarks against throwaway
//! servers.

use anyhow::Result;

use crate::child::{self, cargo};
use crate::servers::{self, TestServers};

/// Runs `cargo bench --workspace -- ARGS` with the servers up; `args`
/// (after an optional `--`) go to the benchmark harness (criterion).
pub fn run(args: &[String]) -> Result<()> {
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let scratch = servers::scratch_dir()?;
    child::install_interrupt_handler()?;
    let servers = TestServers::start(scratch)?;
    let mut bench = cargo(&["bench", "--workspace"]);
    if !args.is_empty() {
        bench.arg("--").args(args);
    }
    servers.export_to(&mut bench);
    let benched = child::run("`cargo bench --workspace`", bench);
    let stopped = servers.stop();
    benched.and(stopped)
}
