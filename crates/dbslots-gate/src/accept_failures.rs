//! What the accept loop does when `accept(2)` fails.
//!
//! Most failures concern one client that went away before the gate took it
//! (`ECONNABORTED`, or a network error Linux passes on from the new socket,
//! see accept(2)): the next accept is fine, so the loop goes on at once and
//! says nothing above debug.
//!
//! Running out of descriptors or kernel memory (`EMFILE`, `ENFILE`,
//! `ENOBUFS`, `ENOMEM`) is different: the client stays in the listen
//! backlog, the socket stays readable, and the next accept fails the same
//! way until a connection closes. The loop pauses between tries so it does
//! not spin, and the warning is written once per [`WARN_EVERY`] with the
//! number of failures since, not fifty times a second. Clients in the
//! backlog are not lost: they are accepted, in order, as descriptors free
//! up. Any other error is treated the same way, so an unforeseen lasting
//! one cannot spin the loop either.

use std::io;
use std::time::{Duration, Instant};

use rustix::io::Errno;

/// Pause after a failure that would repeat at once.
pub(crate) const PAUSE: Duration = Duration::from_millis(20);

/// At most one warning per this long while failures go on.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// The accept loop's memory of its recent failures.
#[derive(Debug, Default)]
pub(crate) struct AcceptFailures {
    last_warning: Option<Instant>,
    /// Lasting failures since the last warning.
    unreported: u64,
}

/// What to do about one failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    /// Wait this long before accepting again.
    pub(crate) pause: Option<Duration>,
    /// Write a warning covering this many failures (this one included).
    pub(crate) warn: Option<u64>,
    /// The failure is the process or the system running out of
    /// descriptors: the warning should say how to raise the limit.
    pub(crate) out_of_files: bool,
}

impl AcceptFailures {
    /// Records a failed accept at `now` and says what to do.
    pub(crate) fn record(&mut self, error: &io::Error, now: Instant) -> Response {
        let code = Errno::from_io_error(error);
        if code.is_some_and(one_client_only) {
            return Response {
                pause: None,
                warn: None,
                out_of_files: false,
            };
        }
        self.unreported += 1;
        let due = self
            .last_warning
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        let warn = due.then(|| {
            self.last_warning = Some(now);
            std::mem::take(&mut self.unreported)
        });
        Response {
            pause: Some(PAUSE),
            warn,
            out_of_files: matches!(code, Some(Errno::MFILE | Errno::NFILE)),
        }
    }
}

/// Errors that belong to one client only (accept(2), "Error handling": the
/// pending network errors Linux passes on, to be treated like `EAGAIN`).
fn one_client_only(code: Errno) -> bool {
    matches!(
        code,
        Errno::CONNABORTED
            | Errno::PROTO
            | Errno::PERM
            | Errno::NETDOWN
            | Errno::NOPROTOOPT
            | Errno::HOSTDOWN
            | Errno::NONET
            | Errno::HOSTUNREACH
            | Errno::OPNOTSUPP
            | Errno::NETUNREACH
            | Errno::INTR
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: Errno) -> io::Error {
        io::Error::from_raw_os_error(code.raw_os_error())
    }

    #[test]
    fn a_client_that_left_costs_no_pause_and_no_warning() {
        let mut f = AcceptFailures::default();
        let now = Instant::now();
        for _ in 0..100 {
            let r = f.record(&os(Errno::CONNABORTED), now);
            assert_eq!(r.pause, None);
            assert_eq!(r.warn, None);
        }
        // And it does not count towards the next warning.
        let r = f.record(&os(Errno::MFILE), now);
        assert_eq!(r.warn, Some(1));
    }

    #[test]
    fn running_out_of_files_pauses_and_warns_once_per_interval_with_a_count() {
        let mut f = AcceptFailures::default();
        let start = Instant::now();
        let first = f.record(&os(Errno::MFILE), start);
        assert_eq!(first.pause, Some(PAUSE));
        assert_eq!(first.warn, Some(1));
        assert!(first.out_of_files);
        // Fifty a second for just under the interval: all silent.
        let mut at = start;
        let mut silent = 0;
        while at + PAUSE < start + WARN_EVERY {
            at += PAUSE;
            let r = f.record(&os(Errno::MFILE), at);
            assert_eq!(r.pause, Some(PAUSE));
            assert_eq!(r.warn, None);
            silent += 1;
        }
        // The first one past the interval reports them all.
        let r = f.record(&os(Errno::NFILE), start + WARN_EVERY);
        assert_eq!(r.warn, Some(silent + 1));
        assert!(r.out_of_files);
    }

    #[test]
    fn an_unforeseen_error_pauses_too_so_the_loop_cannot_spin() {
        let mut f = AcceptFailures::default();
        let r = f.record(&io::Error::other("something new"), Instant::now());
        assert_eq!(r.pause, Some(PAUSE));
        assert_eq!(r.warn, Some(1));
        assert!(!r.out_of_files);
    }
}
