//! The mechanically checkable lines of ARCHITECTURE.md, checked: a change
//! that breaks one fails here, before review.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The code of a source file without its unit tests (`#[cfg(test)]` to the
/// end, the convention of this workspace) and without comment lines.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn offenders(dir: &str, bad: impl Fn(&str) -> Option<String>) -> Vec<String> {
    rust_files(&root().join(dir))
        .iter()
        .flat_map(|path| {
            let code = code_of(path);
            code.lines()
                .enumerate()
                .filter_map(|(i, line)| {
                    bad(line)
                        .map(|why| format!("{}:{}: {why}: {}", path.display(), i + 1, line.trim()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_core_crate_knows_nothing_about_mysql_or_starting_processes() {
    let manifest = std::fs::read_to_string(root().join("crates/dbslots-core/Cargo.toml"))
        .expect("the core manifest");
    assert!(
        !manifest.to_lowercase().contains("mysql"),
        "dbslots-core must not depend on a MySQL crate:\n{manifest}"
    );
    let found = offenders("crates/dbslots-core/src", |line| {
        if line.contains("mysql_async") || line.contains("use mysql") {
            Some("MySQL in the core crate".into())
        } else if line.contains("process::Command") || line.contains("tokio::process") {
            Some("starting processes in the core crate (hand a slot over with Slot::lock_fd_for_child)".into())
        } else {
            None
        }
    });
    assert!(
        found.is_empty(),
        "ARCHITECTURE.md says the core crate knows nothing about MySQL or processes:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_cli_crate_holds_no_sql() {
    const SQL: &[&str] = &[
        "SELECT ",
        "INSERT ",
        "UPDATE ",
        "DELETE ",
        "CREATE ",
        "ALTER ",
        "DROP ",
        "KILL ",
        "SHOW ",
        "FLUSH ",
        "GRANT ",
        "REPLACE INTO",
        "START TRANSACTION",
    ];
    let found = offenders("crates/dbslots-cli/src", |line| {
        // Only inside string literals: a quote, then the statement word.
        SQL.iter()
            .find(|kw| line.contains(&format!("\"{kw}")))
            .map(|kw| {
                format!(
                    "SQL ({}) in the binary; move it to a library crate",
                    kw.trim()
                )
            })
    });
    assert!(
        found.is_empty(),
        "ARCHITECTURE.md says the binary holds no logic a library user would need:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_library_crate_requires_docs_on_public_items() {
    let crates: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.join("src/lib.rs").exists())
        .collect();
    assert!(crates.len() >= 6, "found only {crates:?}");
    for krate in crates.iter().chain([&root()]) {
        let lib = std::fs::read_to_string(krate.join("src/lib.rs")).expect("lib.rs");
        assert!(
            lib.contains("#![deny(missing_docs)]"),
            "{}/src/lib.rs lacks #![deny(missing_docs)] (clippy -D warnings then fails on any undocumented public item)",
            krate.display()
        );
    }
}

#[test]
fn no_library_message_names_a_flag_of_the_binary() {
    // What a command-line redaction looks for, not advice.
    const REDACTED: &[&str] = &["password", "passwd", "pass", "db-password"];
    let mut found = Vec::new();
    for krate in ["core", "mysql", "spawn", "import", "gate"] {
        found.extend(offenders(&format!("crates/dbslots-{krate}/src"), |line| {
            line.match_indices("--")
                .map(|(i, _)| {
                    line[i + 2..]
                        .split(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                        .next()
                        .unwrap_or_default()
                })
                .find(|flag| flag.starts_with(|c: char| c.is_ascii_lowercase()) && !REDACTED.contains(flag))
                .map(|flag| {
                    format!(
                        "--{flag} in a library: name the library's option, and map it in crates/dbslots-cli/src/advice.rs"
                    )
                })
        }));
    }
    assert!(
        found.is_empty(),
        "ARCHITECTURE.md says no library message names a flag of the binary:\n{}",
        found.join("\n")
    );
}
