//! Workers' output on the spawner's stdout and stderr, prefixed by index.
//!
//! # Implementation Details
//!
//! Each running worker has one reader per pipe with a fixed 4 KiB buffer:
//! complete lines are handed to the [`Console`] as soon as they arrive, a
//! line longer than the buffer is handed over in pieces, and nothing is
//! kept once handed over. A line is one queue entry, so lines of different
//! workers never interleave. Handing over never waits: when the spawner's
//! own output is slow, the console drops and counts lines (see
//! `console.rs`), and the workers' pipes keep flowing.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::console::{Console, Stream};

/// The longest piece of a line kept in memory, per pipe.
pub(crate) const LINE_MAX: usize = 4096;

/// Copies `reader` to `console` line by line until end of file.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    index: u32,
    stream: Stream,
    console: &Console,
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
            console.worker_line(index, stream, &buf[start..=newline]);
            start = newline + 1;
            scan = start;
        }
        buf.copy_within(start..end, 0);
        filled = end - start;
        if filled == buf.len() {
            console.worker_line(index, stream, &buf[..filled]);
            filled = 0;
        }
    }
    if filled > 0 {
        console.worker_line(index, stream, &buf[..filled]);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn captured(input: &[u8]) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (console, writer) =
            Console::start_with(Box::new(io::sink()), Box::new(Capture(out.clone())), None)
                .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            pump(input, 7, Stream::Err, &console).await;
            writer.finish(std::future::pending()).await;
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| format!("err {l}\n")).collect()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
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
