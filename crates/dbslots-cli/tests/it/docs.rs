//! `dbslots completions` and `dbslots man`: the scripts the shells load and
//! the page `man` renders, checked with the real programs.

use std::process::{Command, Stdio};

use crate::support::dbslots;

fn stdout_of(args: &[&str]) -> String {
    let out = dbslots().args(args).output().expect("dbslots runs");
    assert!(out.status.success(), "dbslots {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn the_bash_completion_parses_and_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let script = dir.path().join("dbslots.bash");
    std::fs::write(&script, stdout_of(&["completions", "bash"])).expect("write the script");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(syntax.status.success(), "bash -n: {syntax:?}");
    // What bash does on <TAB>: call the registered function with the words.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
             $(complete -p dbslots | sed -E 's/.*-F ([^ ]+).*/\\1/') dbslots '{}' '{}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1,
            line.len(),
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = Command::new("bash")
            .args(["-c", &program])
            .stdin(Stdio::null())
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let subcommands = complete("dbslots sp");
    assert_eq!(subcommands.trim(), "spawn", "{subcommands}");
    let flags = complete("dbslots exec --cap");
    assert!(flags.lines().any(|l| l == "--capacity"), "{flags}");
}

#[test]
fn zsh_and_fish_scripts_are_generated_for_dbslots() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef dbslots"), "{zsh}");
    assert!(zsh.contains("--capacity"), "zsh knows the flags");
    let fish = stdout_of(&["completions", "fish"]);
    assert!(fish.contains("complete -c dbslots"), "{fish}");
    assert!(fish.contains("capacity"), "fish knows the flags");
    for (shell, script) in [("zsh", &zsh), ("fish", &fish)] {
        // Checked by the shell itself where it is installed.
        let Ok(mut child) = Command::new(shell)
            .arg("-n")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            eprintln!("SKIPPED the {shell} syntax check: no {shell}");
            continue;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write the script");
        let out = child.wait_with_output().expect("the shell ends");
        assert!(out.status.success(), "{shell} -n: {out:?}");
    }
    let bad = dbslots()
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bash"),
        "{bad:?}"
    );
}

#[test]
fn the_man_page_renders_without_warnings_and_covers_every_subcommand() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let page = dir.path().join("dbslots.1");
    std::fs::write(&page, stdout_of(&["man"])).expect("write the page");
    let out = Command::new("man")
        .args(["--warnings", "-l", "-P", "cat"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .output()
        .expect("man runs (cargo xtask test installs man-db)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "man -l: {out:?}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "exec",
        "spawn",
        "import",
        "status",
        "resize",
        "connections",
        "serve",
        "watch",
        "gate",
        "completions",
    ] {
        assert!(
            text.contains(&format!("dbslots-{sub}")),
            "no section for {sub}:\n{text}"
        );
    }
    assert!(
        text.contains("--capacity") && text.contains("--timeout"),
        "{text}"
    );
}
