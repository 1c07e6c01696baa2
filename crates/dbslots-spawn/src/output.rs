//! Workers' output on the spawner's stdout and stderr, prefixed by index.
//!
//! # Implementation Details
//!
//! Each running worker has one reader per pipe with a fixed 4 KiB buffer:
//! complete lines are written out as soon as they arrive, a line longer
//! than the buffer is written in pieces, and nothing is kept once written.
//! A line is one `write_all` under the stream's lock, so lines of different
//! workers never interleave. Writing blocks when the spawner's own output
//! is slow, which in turn blocks the workers' pipes: back-pressure, not
//! memory.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::ProgressBar;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest piece of a line kept in memory, per pipe.
pub(crate) const LINE_MAX: usize = 4096;

/// Which of the spawner's streams a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Out,
    Err,
}

/// Where prefixed lines go.
#[derive(Clone, Default)]
pub(crate) struct Sink {
    bar: Option<ProgressBar>,
    /// Set once writing to stdout (0) or stderr (1) failed, e.g. a closed
    /// pipe: further lines are read and dropped.
    broken: Arc<[AtomicBool; 2]>,
    /// Tests read the lines here instead.
    #[cfg(test)]
    capture: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
}

impl Sink {
    pub(crate) fn new(bar: Option<ProgressBar>) -> Sink {
        Sink {
            bar,
            ..Sink::default()
        }
    }

    /// Writes `[index] ` + `bytes` (+ a newline when missing).
    pub(crate) fn line(&self, index: u32, stream: Stream, bytes: &[u8]) {
        let which = stream as usize;
        if self.broken[which].load(Ordering::Relaxed) {
            return;
        }
        let mut line = Vec::with_capacity(bytes.len() + 16);
        let _ = write!(line, "[{index}] ");
        line.extend_from_slice(bytes);
        if !bytes.ends_with(b"\n") {
            line.push(b'\n');
        }
        #[cfg(test)]
        if let Some(capture) = &self.capture {
            let tag: &[u8] = if stream == Stream::Out {
                b"out "
            } else {
                b"err "
            };
            let mut c = capture.lock().unwrap();
            c.extend_from_slice(tag);
            c.extend_from_slice(&line);
            return;
        }
        let write = || match stream {
            Stream::Out => {
                let mut out = io::stdout().lock();
                out.write_all(&line).and_then(|_| out.flush())
            }
            Stream::Err => io::stderr().lock().write_all(&line),
        };
        let written = match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        };
        if let Err(e) = written
            && !self.broken[which].swap(true, Ordering::Relaxed)
        {
            tracing::warn!(stream = ?stream, error = %e, "cannot write workers' output; dropping it from now on");
        }
    }
}

/// Copies `reader` to `sink` line by line until end of file.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    index: u32,
    stream: Stream,
    sink: &Sink,
) {
    let mut buf = vec![0u8; LINE_MAX];
    let mut filled = 0;
    loop {
        let n = match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(worker = index, error = %e, "cannot read worker output");
                break;
            }
        };
        let end = filled + n;
        let mut start = 0;
        let mut scan = filled;
        while let Some(pos) = buf[scan..end].iter().position(|b| *b == b'\n') {
            let newline = scan + pos;
            sink.line(index, stream, &buf[start..=newline]);
            start = newline + 1;
            scan = start;
        }
        buf.copy_within(start..end, 0);
        filled = end - start;
        if filled == buf.len() {
            sink.line(index, stream, &buf[..filled]);
            filled = 0;
        }
    }
    if filled > 0 {
        sink.line(index, stream, &buf[..filled]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(input: &[u8]) -> String {
        let capture = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink {
            capture: Some(capture.clone()),
            ..Sink::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(pump(input, 7, Stream::Err, &sink));
        String::from_utf8(capture.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn prefixes_every_line_and_ends_the_last() {
        assert_eq!(captured(b"a\n\nb"), "err [7] a\nerr [7] \nerr [7] b\n");
        assert_eq!(captured(b""), "");
    }

    #[test]
    fn splits_lines_longer_than_the_buffer() {
        let long = vec![b'x'; LINE_MAX + 10];
        let out = captured(&long);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), "err [7] ".len() + LINE_MAX);
        assert_eq!(lines[1], "err [7] xxxxxxxxxx");
    }
}
