//! A reader that went away (`dbslots status --json | head -1`, a closed
//! terminal, a log collector that restarted): the command ends as it would
//! have, quietly, never with a panic (exit 101).

use std::process::{Command, Stdio};

use crate::support::{broken_pipe, dbslots};

fn run(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("dbslots runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_nobody_reads_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let pool = pool.to_str().unwrap();
    for args in [
        &["status", "--pool", pool, "--capacity", "2"][..],
        &["status", "--json", "--pool", pool],
        &["status", "--check", "--pool", pool],
        &["resize", "--pool", pool, "--capacity", "3"],
        &["man"],
    ] {
        let (code, stderr) = run(dbslots().args(args).stdout(broken_pipe()));
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

#[test]
fn an_error_nobody_can_read_still_ends_with_the_error_status() {
    // The pool's path is a file: `status` fails; its error line has nowhere
    // to go, and the exit status is what tells.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-pool");
    std::fs::write(&file, "x").unwrap();
    let (code, _) = run(dbslots()
        .args(["status", "--pool", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(broken_pipe()));
    assert_eq!(code, Some(1));
    // And exec's own notice (a timeout) the same way, with its own status.
    let busy = crate::support::BusyPool::start(1, 0);
    let (code, _) = run(dbslots()
        .args(["exec", "--pool", &busy.path, "--timeout", "0", "--", "true"])
        .stderr(broken_pipe()));
    assert_eq!(code, Some(75));
}
