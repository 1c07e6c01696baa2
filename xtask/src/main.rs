//! `cargo xtask`: the development tasks of the dbslots workspace.
//!
//! One binary, one subcommand per task, one module per task; without an
//! argument it prints the list. Tasks that need databases start throwaway
//! servers with `dbslots-testkit` and always stop them again, also on
//! Ctrl-C or SIGTERM (see [`child`]).

mod bench;
mod bench_gate;
mod child;
mod db;
mod demo;
mod packages;
mod servers;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;

/// Every task with its arguments and a one-line description.
const TASKS: &[(&str, &str)] = &[
    (
        "test [-- CARGO-TEST-ARGS]",
        "fmt check, clippy -D warnings, then cargo test --workspace --all-targets against throwaway MySQL and Redis",
    ),
    (
        "bench [CRITERION-ARGS]",
        "cargo bench --workspace against throwaway MySQL and Redis",
    ),
    (
        "bench-gate [--rounds N] [--seconds S] [--connects N]",
        "`dbslots gate` vs HAProxy (maxconn) vs direct against a throwaway MySQL: sysbench point selects and PHP PDO connect+query+close, with ratios, CPU per query and memory per idle connection (installs sysbench, haproxy, php-cli as root when missing)",
    ),
    (
        "demo [--batches | --no-throttle | --all] [--php] [--runs N]",
        "the main job: 1000 workers via `dbslots spawn` against a throwaway MySQL with max_connections=151, and the same workers unthrottled as the yardstick; reports refused connections, rows, wall time and where the time goes (--php: PHP PDO workers, all modes)",
    ),
    (
        "db up [--max-connections N]",
        "start a MySQL and a Redis for manual use and print their URLs",
    ),
    (
        "db down",
        "stop the servers of `db up` and delete their data",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str);
    let rest = args.get(1..).unwrap_or_default();
    let result = match task {
        None | Some("help" | "-h" | "--help") => {
            print_tasks();
            return ExitCode::SUCCESS;
        }
        Some("test") => test::run(rest),
        Some("bench") => bench::run(rest),
        Some("bench-gate") => bench_gate::run(rest),
        Some("db") => db::run(rest),
        Some("demo") => demo::run(rest),
        // Further tasks (such as `demo`) get an arm and a module here.
        Some(other) => Err(anyhow!(
            "unknown task `{other}`: run `cargo xtask` for the list"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<child::Reported>() => {
            let child::Reported(code) = e.downcast().expect("checked by is");
            ExitCode::from(code)
        }
        Err(e) if e.is::<child::Interrupted>() || child::interrupted() => {
            eprintln!("xtask: interrupted; servers stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_tasks() {
    println!("Usage: cargo xtask TASK\n\nTasks:");
    let width = TASKS.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, what) in TASKS {
        println!("  {name:width$}  {what}");
    }
}

/// The workspace root (the parent of this package).
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one directory below the workspace root")
}

/// Cargo's target directory.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}
