//! The libraries' advice in the command line's words.
//!
//! Library errors say what to do in library terms (`PoolOptions::capacity`,
//! `SpawnOptions::joblog`, ...), which mean nothing to someone at a shell;
//! every message the binary prints goes through [`in_cli_terms`], which
//! names the flag (or command) that does the same.

/// Library terms and the command line's words for them, longest first
/// where one contains another.
const TERMS: &[(&str, &str)] = &[
    // dbslots-core
    ("PoolOptions::capacity", "--capacity"),
    ("PoolOptions::group_name", "--group"),
    ("Pool::resize", "`dbslots resize --pool P --capacity N`"),
    (
        "use another pool directory",
        "point --pool at another directory",
    ),
    (
        "use the real directory as the pool directory",
        "point --pool at the real directory",
    ),
    ("as the pool directory", "for --pool"),
    ("or another pool directory", "or another --pool"),
    ("give a pool address or set", "pass --pool DIR or set"),
    // dbslots-spawn
    ("SpawnOptions::new", "--workers N"),
    ("SpawnOptions::joblog", "--joblog"),
    ("SpawnOptions::hold_slot", "--hold-slot"),
    ("Output::LogDir", "--log-dir"),
    // dbslots-mysql
    (
        "(or kill_idle)",
        "(or `dbslots connections --kill-idle --max-idle SECONDS`)",
    ),
    ("(kill_idle)", "(`dbslots connections --kill-idle`)"),
    (
        "that sleep too long with kill_idle",
        "with `dbslots connections --kill-idle --max-idle SECONDS --user NAME`",
    ),
    ("warn_percent", "--warn"),
    ("crit_percent", "--crit"),
    // dbslots-import
    (
        "acquire another InstanceLock path",
        "pass another --lock-file",
    ),
    ("use an InstanceLock path", "pass a --lock-file"),
    ("ProcessorOptions::source_dir", "--source-dir"),
    ("ProcessorOptions::batch_timeout", "--batch-timeout"),
    ("ProcessorOptions::reconnect_for", "--reconnect-for"),
    ("RunOptions::max_time", "--max-time"),
    ("Queue::statement_timeout", "--statement-timeout"),
    ("EnqueueOptions::no_key", "--no-key"),
    ("EnqueueOptions::time_zone", "--time-zone"),
    ("EnqueueOptions::delimiter", "--delimiter"),
    ("EnqueueOptions::new(table)", "--table"),
    // dbslots-gate
    ("another name (GateOptions::name)", "another --name"),
    ("listen address (GateOptions::new)", "--listen address"),
];

/// `message` with every library term replaced by its flag.
pub fn in_cli_terms(message: &str) -> String {
    TERMS.iter().fold(message.to_string(), |m, (library, cli)| {
        m.replace(library, cli)
    })
}

/// An error and its causes on one line, as anyhow's `{:#}` writes them,
/// but without a cause whose text the line holds already: the libraries'
/// errors name their source in their own message (to say what to do after
/// it), and `{:#}` would then repeat it at the end.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{error_line, in_cli_terms};

    #[test]
    fn a_cause_the_message_names_already_is_not_repeated() {
        let e = anyhow::Error::new(dbslots_spawn::Error::Keeper {
            source: std::io::Error::other("no memory"),
        });
        let line = error_line(&e);
        assert!(
            line.starts_with(
                "cannot start the process that stops the workers if the spawner dies: no memory; "
            ),
            "{line}"
        );
        assert_eq!(line.matches("no memory").count(), 1, "{line}");
        let e = anyhow::Error::new(std::io::Error::other("denied")).context("opening /x");
        assert_eq!(error_line(&e), "opening /x: denied");
    }

    #[test]
    fn library_advice_names_the_flags() {
        let e = dbslots_core::Error::NotFound { pool: "/p".into() };
        let text = in_cli_terms(&e.to_string());
        assert!(text.contains("(--capacity)"), "{text}");
        assert!(!text.contains("PoolOptions"), "{text}");
        let e = dbslots_core::Error::CapacityMismatch {
            pool: "/p".into(),
            recorded: 3,
            requested: 4,
        };
        let text = in_cli_terms(&e.to_string());
        assert!(
            text.contains("without --capacity") && text.contains("`dbslots resize"),
            "{text}"
        );
    }

    #[test]
    fn giving_up_on_an_outage_names_the_flag_that_waits_longer() {
        let e = dbslots_import::Error::Outage {
            url: "mysql://app:***@db:3306/energy".into(),
            waited: std::time::Duration::from_secs(2),
            last: "cannot connect: error 2003: Connection refused (os error 111)".into(),
            limit: dbslots_import::OutageLimit::ReconnectWindow,
        };
        let text = in_cli_terms(&e.to_string());
        assert!(text.contains("wait longer with --reconnect-for"), "{text}");
        assert!(!text.contains("ProcessorOptions"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        let e = dbslots_import::Error::Outage {
            url: "mysql://app:***@db:3306/energy".into(),
            waited: std::time::Duration::from_secs(2),
            last: "cannot connect: error 2003: Connection refused (os error 111)".into(),
            limit: dbslots_import::OutageLimit::MaxTime,
        };
        let text = in_cli_terms(&e.to_string());
        assert!(text.contains("more time with --max-time"), "{text}");
        assert!(!text.contains("RunOptions"), "{text}");
    }

    #[test]
    fn every_library_term_is_still_used_by_a_library() {
        // A term no library writes any more is a mapping that silently
        // stopped working: keep the table in step with the messages.
        let sources: String = [
            include_str!("../../dbslots-core/src/error.rs"),
            include_str!("../../dbslots-core/src/file/layout.rs"),
            include_str!("../../dbslots-core/src/addr.rs"),
            include_str!("../../dbslots-spawn/src/options.rs"),
            include_str!("../../dbslots-spawn/src/error.rs"),
            include_str!("../../dbslots-spawn/src/spawner/start.rs"),
            include_str!("../../dbslots-mysql/src/error.rs"),
            include_str!("../../dbslots-mysql/src/check.rs"),
            include_str!("../../dbslots-import/src/error.rs"),
            include_str!("../../dbslots-import/src/table.rs"),
            include_str!("../../dbslots-import/src/value.rs"),
            include_str!("../../dbslots-import/src/processor/mod.rs"),
            include_str!("../../dbslots-gate/src/error.rs"),
            include_str!("../../dbslots-gate/src/stats.rs"),
            include_str!("../../dbslots-gate/src/posting.rs"),
        ]
        .concat();
        for (library, _) in super::TERMS {
            assert!(sources.contains(library), "no library says {library:?}");
        }
    }
}
