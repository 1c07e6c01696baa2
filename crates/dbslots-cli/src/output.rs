//! Writing to stdout and stderr without `println!`'s panic when nobody
//! reads any more (`dbslots status --json | head -1`, a closed terminal,
//! a log collector that restarted).
//!
//! A broken stdout means the reader has what it wanted: the output ends
//! quietly, as `cat` and ripgrep end. A broken stderr cannot be told about
//! anything: the line is dropped and the command goes on (a service such
//! as `import run` must not die of its log).

use std::fmt::Display;
use std::io::{ErrorKind, Write};

/// Writes `text` to stdout as it is, and flushes it. A reader that went
/// away is no error.
///
/// # Errors
///
/// Any other failure to write (a full disk under a redirect).
pub fn stdout(text: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_ref()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Writes one line to stderr; a failure to write is ignored.
pub fn stderr_line(text: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
