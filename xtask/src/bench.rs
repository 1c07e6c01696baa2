//! `cargo xtask bench`: the workspace's benchmarks against throwaway
//! servers.

use anyhow::Result;

use crate::child::{self, cargo};
use crate::servers::{self, TestServers};

/// Runs `cargo bench --workspace` with the servers up; `args` (after an
/// optional `--`) go to the benchmark harness (criterion) of every bench
/// target.
pub fn run(args: &[String]) -> Result<()> {
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let scratch = servers::scratch_dir()?;
    child::install_interrupt_handler()?;
    let servers = TestServers::start(scratch)?;
    let mut bench = cargo(&["bench", "--workspace"]);
    if !args.is_empty() {
        // Only the bench targets: the libtest harness of the other targets
        // rejects criterion's options.
        bench.args(["--bench", "*", "--"]).args(args);
    }
    servers.export_to(&mut bench);
    let benched = child::run("`cargo bench --workspace`", bench);
    let stopped = servers.stop();
    benched.and(stopped)
}
