//! The worker command line and the environment every worker sees.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::{Error, Result};

// The names live in `dbslots_core::env` (one place for every `DBSLOTS_*`
// name); these are the spawner's names for them.
/// The job id given to the spawner ([`dbslots_core::env::JOB_ID`]).
pub use dbslots_core::env::JOB_ID as ENV_JOB_ID;
/// The pool's address ([`dbslots_core::env::POOL`]).
pub use dbslots_core::env::POOL as ENV_POOL;
/// The slot number taken for this worker ([`dbslots_core::env::SLOT`]).
pub use dbslots_core::env::SLOT as ENV_SLOT;
/// How many workers the spawner starts in all ([`dbslots_core::env::WORKER_COUNT`]).
pub use dbslots_core::env::WORKER_COUNT as ENV_WORKER_COUNT;
/// The worker's 0-based index, `0..count` ([`dbslots_core::env::WORKER_INDEX`]).
pub use dbslots_core::env::WORKER_INDEX as ENV_WORKER_INDEX;

const INDEX: &[u8] = b"{index}";
const COUNT: &[u8] = b"{count}";

/// A worker's command line: a program and its arguments, in which every
/// `{index}` becomes the worker's 0-based index and every `{count}` the
/// number of workers. The program itself is taken as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    program: OsString,
    args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Arg {
    text: OsString,
    /// Whether `text` holds a placeholder (so most arguments are copied).
    templated: bool,
}

impl Template {
    /// A template from a program and its arguments.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCommand`] when the program is empty or any word holds
    /// a NUL byte (no process can be given one).
    pub fn new<I, S>(program: impl Into<OsString>, args: I) -> Result<Template>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let program = program.into();
        if program.is_empty() {
            return Err(Error::InvalidCommand {
                problem: "the program name is empty".into(),
            });
        }
        let args: Vec<Arg> = args
            .into_iter()
            .map(|a| {
                let text = a.into();
                let bytes = text.as_bytes();
                let templated = contains(bytes, INDEX) || contains(bytes, COUNT);
                Arg { text, templated }
            })
            .collect();
        for word in std::iter::once(&program).chain(args.iter().map(|a| &a.text)) {
            if word.as_bytes().contains(&0) {
                return Err(Error::InvalidCommand {
                    problem: format!("{:?} contains a NUL byte", word),
                });
            }
        }
        Ok(Template { program, args })
    }

    /// A template from a whole command line (`argv[0]` is the program).
    ///
    /// # Errors
    ///
    /// As [`Template::new`], and when `argv` is empty.
    pub fn from_argv<I, S>(argv: I) -> Result<Template>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut it = argv.into_iter();
        let program = it.next().ok_or_else(|| Error::InvalidCommand {
            problem: "no command given".into(),
        })?;
        Template::new(program, it)
    }

    /// The program.
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// The arguments of worker `index` of `count`.
    pub fn args(&self, index: u32, count: u32) -> Vec<OsString> {
        self.args
            .iter()
            .map(|a| {
                if a.templated {
                    substitute(&a.text, index, count)
                } else {
                    a.text.clone()
                }
            })
            .collect()
    }

    /// Worker `index`'s command line as a shell would read it (words with
    /// special characters single-quoted), on one line: tabs, newlines and
    /// other control characters are written as `\t`, `\n`, `\xHH`, and the
    /// password of a URL-like word as `***`. Used for the joblog's `Command`
    /// column and in messages.
    pub fn display(&self, index: u32, count: u32) -> String {
        let words: Vec<String> = std::iter::once(self.program.clone())
            .chain(self.args(index, count))
            .map(|w| String::from_utf8_lossy(w.as_bytes()).into_owned())
            .collect();
        // Secrets in options (`--password=`, `-p…`, `MYSQL_PWD=`) and URLs.
        let words = dbslots_core::redact_command(&words);
        let mut line = String::new();
        for word in words {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&quote(OsStr::new(&word)));
        }
        line
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn substitute(text: &OsStr, index: u32, count: u32) -> OsString {
    let bytes = text.as_bytes();
    let index = index.to_string();
    let count = count.to_string();
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(INDEX) {
            out.extend_from_slice(index.as_bytes());
            i += INDEX.len();
        } else if bytes[i..].starts_with(COUNT) {
            out.extend_from_slice(count.as_bytes());
            i += COUNT.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Quotes a word for a POSIX shell and keeps it on one printable line.
fn quote(word: &OsStr) -> String {
    let text = dbslots_core::redact(&String::from_utf8_lossy(word.as_bytes()));
    let plain = !text.is_empty()
        && text.chars().all(|c| {
            c.is_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ',' | ':' | '=' | '+' | '@' | '%')
        });
    let mut out = String::with_capacity(text.len() + 2);
    if !plain {
        out.push('\'');
    }
    for c in text.chars() {
        match c {
            '\'' => out.push_str("'\\''"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    if !plain {
        out.push('\'');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_placeholders_in_arguments_only() {
        let t = Template::from_argv([
            "w{index}",
            "--shard={index}/{count}",
            "{x}",
            "{index}{index}",
        ])
        .unwrap();
        assert_eq!(t.program(), "w{index}");
        assert_eq!(
            t.args(7, 10),
            vec![OsString::from("--shard=7/10"), "{x}".into(), "77".into()]
        );
    }

    #[test]
    fn rejects_empty_commands_and_nul_bytes() {
        assert!(Template::from_argv(Vec::<OsString>::new()).is_err());
        assert!(Template::new("", ["a"]).is_err());
        assert!(Template::new("sh", ["a\0b"]).is_err());
    }

    #[test]
    fn displays_one_shell_line() {
        let t = Template::from_argv(["sh", "-c", "echo 'hi'\tthere\n", "{index}"]).unwrap();
        assert_eq!(t.display(3, 5), r#"sh -c 'echo '\''hi'\''\tthere\n' 3"#);
        assert_eq!(
            Template::from_argv(["a", ""]).unwrap().display(0, 1),
            "a ''"
        );
        let t = Template::from_argv(["w", "--url=mysql://app:secret@db/x"]).unwrap();
        assert_eq!(t.display(0, 1), "w '--url=mysql://app:***@db/x'");
        let t = Template::from_argv([
            "mysql",
            "--password=secret",
            "-psecret",
            "--password",
            "secret",
            "-e",
            "SELECT {index}",
        ])
        .unwrap();
        assert_eq!(
            t.display(2, 3),
            "mysql '--password=***' '-p***' --password '***' -e 'SELECT 2'"
        );
    }

    #[test]
    fn a_password_option_hides_its_value_in_the_next_word_too() {
        // `--db-password=x` was hidden but `--db-password x` (how most
        // option parsers also take it) went to the joblog as it was.
        let t = Template::from_argv([
            "php",
            "worker.php",
            "--db-password",
            "hunter2",
            "--redis-pass",
            "hunter3",
            "--db-password=hunter4",
            "--shard",
            "{index}",
        ])
        .unwrap();
        let line = t.display(1, 2);
        assert!(!line.contains("hunter"), "{line}");
        assert_eq!(
            line,
            "php worker.php --db-password '***' --redis-pass '***' '--db-password=***' --shard 1"
        );
    }
}
