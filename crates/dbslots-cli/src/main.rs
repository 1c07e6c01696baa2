//! `dbslots`: keep fleets of worker processes under a MySQL server's
//! connection limits.
//!
//! A thin binary: every subcommand parses its flags and calls into the
//! library crates, which carry the logic.

// The doc comments of the flags are clap's --help text, where `[INDEX]` and
// `[DATABASE]` mean what they say; rustdoc would read them as links.
#![allow(rustdoc::broken_intra_doc_links)]

mod advice;
mod argv;
mod common;
mod connections;
mod docs;
mod exec;
mod gate;
mod import;
mod output;
#[cfg(test)]
mod readings;
mod serve;
mod spawn;
mod status;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keep fleets of worker processes under a MySQL server's connection limits.
#[derive(Debug, Parser)]
#[command(name = "dbslots", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait for a slot, run a command holding it, release it when it ends
    Exec(exec::ExecArgs),
    /// Start N workers from one command, each as soon as a slot is free
    Spawn(spawn::SpawnArgs),
    /// Import CSV files of meter readings through a job queue in the database
    Import(import::ImportArgs),
    /// Show a pool's capacity, holders, waiters and counters
    Status(status::StatusArgs),
    /// Change a pool's capacity
    Resize(status::ResizeArgs),
    /// Show a MySQL server's connection limits, usage and connections, or kill idle ones
    Connections(connections::ConnectionsArgs),
    /// Serve pool stats, Prometheus metrics and a live dashboard over HTTP
    Serve(serve::ServeArgs),
    /// Show a pool live in the terminal
    Watch(watch::WatchArgs),
    /// Relay MySQL clients to a server, each holding a slot of the pool
    Gate(gate::GateArgs),
    Completions(docs::CompletionsArgs),
    Man(docs::ManArgs),
}

/// Prints a command-line error and exits: with 3 (UNKNOWN) under --check,
/// since monitoring systems read 1 and 2 as WARNING and CRITICAL; as clap
/// does otherwise.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let informational = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if !informational && std::env::args_os().any(|a| a == "--check") {
        let _ = e.print();
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        let first = first.strip_prefix("error: ").unwrap_or(first);
        let _ = output::stdout(format!(
            "UNKNOWN: invalid command line: {first} (see dbslots help)\n"
        ));
        std::process::exit(3);
    }
    e.exit()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    // The gate is a service: its start, drains and idle closes are news.
    let level = if matches!(cli.command, Command::Gate(_)) {
        "info"
    } else {
        "warn"
    };
    let _log = common::init_tracing(level, matches!(cli.command, Command::Spawn(_)));
    // The arguments are parsed (copied): other users need not see the
    // passwords in them for as long as dbslots runs.
    argv::hide_passwords();
    let result = match cli.command {
        Command::Exec(a) => exec::run(a),
        Command::Spawn(a) => spawn::run(a),
        Command::Import(a) => import::run(a),
        Command::Status(a) => status::run(a),
        Command::Resize(a) => status::run_resize(a),
        Command::Connections(a) => connections::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Watch(a) => watch::run(a),
        Command::Gate(a) => gate::run(a),
        Command::Completions(a) => docs::run_completions(a),
        Command::Man(a) => docs::run_man(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::stderr_line(format_args!(
                "dbslots: {}",
                advice::in_cli_terms(&advice::error_line(&e))
            ));
            ExitCode::FAILURE
        }
    }
}
