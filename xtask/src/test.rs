//! `cargo xtask test`: everything CI checks, in order, failing fast.

use std::time::Instant;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::child::{self, cargo};
use crate::packages;
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
            println!("xtask test: PASSED (fmt, clippy, docs, tests) in {seconds} s");
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
    // Users pick single crates, so dbslots-core must also build cleanly
    // with the features they choose (the workspace build unifies them).
    for features in [
        &["--all-targets"][..],
        &["--lib", "--no-default-features"][..],
    ] {
        let mut args = vec!["clippy", "-p", "dbslots-core"];
        args.extend_from_slice(features);
        args.extend_from_slice(&["--", "-D", "warnings"]);
        child::run(&format!("`cargo {}`", args.join(" ")), cargo(&args))?;
    }
    // The API docs users read: every intra-doc link must resolve.
    let mut doc = cargo(&["doc", "--workspace", "--no-deps", "--all-features"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    child::run(
        "`RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --all-features`",
        doc,
    )?;
    // The multi-process tests drive example programs (dbslots-core's
    // `holder`), and `cargo test --all-targets` builds examples only as test
    // harnesses: build the real programs first.
    child::run(
        "`cargo build --workspace --examples`",
        cargo(&["build", "--workspace", "--examples"]),
    )?;
    // `--all-targets` leaves doctests out: the examples in the crates' docs
    // and the README (through the root package) are compiled and run here.
    child::run(
        "`cargo test --workspace --doc`",
        cargo(&["test", "--workspace", "--doc"]),
    )?;
    ensure_chromium()?;
    let servers = TestServers::start(scratch)?;
    let mut test = cargo(&["test", "--workspace", "--all-targets"]);
    test.args(args);
    servers.export_to(&mut test);
    let tested = child::run("`cargo test --workspace --all-targets`", test);
    let stopped = servers.stop().context("tests done, but cleaning up failed");
    tested.and(stopped)
}

// Step "ensure chromium": the dashboard test of `dbslots serve` loads the
// page in Debian's headless Chromium, the `dbslots watch` test drives
// the view in tmux, the alert rules test runs promtool, and the gate tests
// drive PHP PDO and the mariadb client; they fail under
// DBSLOTS_TEST_REQUIRE_SERVERS=1 when their program is missing, so this
// step installs what is missing first.

/// What the browser, terminal, alert rules, gate and fault tests need: a file, and the
/// Debian package that provides it (a font, so that the screenshot shows
/// text).
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/tmux", "tmux"),
    // `dbslots man`'s test renders the page with `man -l`.
    ("/usr/bin/man", "man-db"),
    // tests/foreign.rs runs the PHP and Python clients of docs/protocol.md.
    ("/usr/bin/php", "php-cli"),
    ("/usr/bin/python3", "python3"),
    ("/usr/bin/promtool", "prometheus"),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
    // The gate's tests drive real clients: PHP PDO (pcntl is built into
    // Debian's php-cli), the mariadb client, and openssl for TLS certificates
    // (the Redis TLS tests make theirs with it too).
    ("/usr/share/doc/php-cli/copyright", "php-cli"),
    ("/usr/share/doc/php-mysql/copyright", "php-mysql"),
    ("/usr/bin/mariadb", "mariadb-client"),
    ("/usr/bin/openssl", "openssl"),
    // The core's fault tests hold a process at one system call (a resize
    // killed between its two writes, an acquirer racing a shrink).
    ("/usr/bin/strace", "strace"),
];

/// Installs the missing [`TEST_PROGRAMS`] with apt-get as root, saying so;
/// fails with the command to run when not root.
fn ensure_chromium() -> Result<()> {
    packages::ensure(
        TEST_PROGRAMS,
        "the browser, terminal, alert rules, gate and fault tests",
    )
}
