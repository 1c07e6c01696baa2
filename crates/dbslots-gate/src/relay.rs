//! Relaying bytes both ways, unchanged, and knowing who spoke last.
//!
//! One task per connection relays both directions. A read lands in the
//! thread's one scratch buffer and is written on in the same poll, so a
//! connection that keeps up owns no buffer at all (an idle relayed
//! connection costs its task and sockets, not 2 x 8 KiB); only bytes the
//! receiver cannot take yet are copied aside until it can. Streams note
//! each read: how many bytes moved (the gate's counters) and, when an idle
//! timeout is set, which side moved last and when, on a coarse clock (a
//! gate-wide tick every 50 ms) so a read costs two relaxed atomic writes,
//! not a clock call.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::Stream;
use crate::stats::Counters;

/// Bytes of a thread's scratch buffer: the most one read takes.
const BUFFER: usize = 64 * 1024;

/// Milliseconds since the gate started, advanced by a ticker task.
#[derive(Debug)]
pub(crate) struct Clock {
    start: Instant,
    ms: AtomicU64,
}

/// How often the coarse clock ticks.
pub(crate) const TICK: Duration = Duration::from_millis(50);

impl Clock {
    pub(crate) fn new() -> Arc<Clock> {
        Arc::new(Clock {
            start: Instant::now(),
            ms: AtomicU64::new(0),
        })
    }

    pub(crate) fn tick(&self) {
        self.ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }
}

/// Who moved last on a connection, and when: `(ms << 1) | from_server`.
#[derive(Debug)]
pub(crate) struct Activity(AtomicU64);

impl Activity {
    pub(crate) fn new(clock: &Clock) -> Activity {
        // A fresh connection counts as "the server spoke" (it greets first).
        Activity(AtomicU64::new(clock.now_ms() << 1 | 1))
    }

    /// Milliseconds on the gate's clock, and whether the server moved last.
    pub(crate) fn last(&self) -> (u64, bool) {
        let v = self.0.load(Ordering::Relaxed);
        (v >> 1, v & 1 == 1)
    }
}

/// A stream that counts what is read from it.
pub(crate) struct Tracked<'a> {
    pub(crate) inner: Stream,
    /// Where the bytes read from this stream are added.
    bytes: &'a AtomicU64,
    /// Set when this is the server's side.
    from_server: bool,
    activity: Option<(&'a Activity, &'a Clock)>,
}

/// Which end of a relayed connection a stream is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Side {
    /// The client's socket: what is read from it goes to the server.
    Client,
    /// The server's socket: what is read from it goes to the client.
    Server,
}

impl<'a> Tracked<'a> {
    pub(crate) fn new(
        inner: Stream,
        side: Side,
        counters: &'a Counters,
        activity: Option<(&'a Activity, &'a Clock)>,
    ) -> Self {
        Tracked {
            inner,
            bytes: match side {
                Side::Client => &counters.bytes_from_clients,
                Side::Server => &counters.bytes_to_clients,
            },
            from_server: side == Side::Server,
            activity,
        }
    }
}

impl AsyncRead for Tracked<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            me.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if let Some((a, clock)) = me.activity {
                a.0.store(
                    clock.now_ms() << 1 | u64::from(me.from_server),
                    Ordering::Relaxed,
                );
            }
        }
        r
    }
}

impl AsyncWrite for Tracked<'_> {
    /// Notes a write that must wait (the receiver is not reading: a client
    /// that pauses in the middle of a result, a server slow to take a
    /// load) as the connection being busy, so that it is not idle while
    /// bytes are on their way; and the write that then goes through to the
    /// client as the server having moved (what it sent reached the client).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let Some((a, clock)) = me.activity {
            // Writing to the client carries what the server sent.
            let to_client = !me.from_server;
            match &r {
                Poll::Pending => a.0.store(clock.now_ms() << 1, Ordering::Relaxed),
                Poll::Ready(Ok(n)) if *n > 0 && to_client => {
                    a.0.store(clock.now_ms() << 1 | 1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How long what a side said before it went away may take to reach the
/// other side (see [`copy_both`]).
const LAST_WORDS: Duration = Duration::from_secs(2);

/// Why a direction of a relayed connection ended early.
enum Failure {
    /// Reading the sending side failed (it reset, say).
    Read(io::Error),
    /// The receiving side could not take what was sent: it is gone.
    Write(io::Error),
}

/// Relays until both directions are done (or one fails): what one side
/// sends, the other gets unchanged; one side's end of stream becomes a
/// shutdown of the other's writing half, and the other direction goes on.
///
/// A side that can no longer take bytes (a server that answered with an
/// error and closed while the client was still sending, such as MySQL's
/// "packet bigger than max_allowed_packet") may still have said something
/// before it went: that is passed on to the other side, for up to
/// [`LAST_WORDS`], before the relay ends with the error, as the other side
/// would have read it without the gate.
pub(crate) async fn copy_both(
    client: &mut Tracked<'_>,
    server: &mut Tracked<'_>,
) -> io::Result<()> {
    let mut up = Direction::default();
    let mut down = Direction::default();
    let first = std::future::poll_fn(|cx| {
        let up_done = match up.poll(cx, client, server) {
            Poll::Ready(Err(f)) => return Poll::Ready(Err((f, Side::Server))),
            p => p.is_ready(),
        };
        let down_done = match down.poll(cx, server, client) {
            Poll::Ready(Err(f)) => return Poll::Ready(Err((f, Side::Client))),
            p => p.is_ready(),
        };
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    let (error, gone) = match first {
        Ok(()) => return Ok(()),
        Err((Failure::Read(e), _)) => return Err(e),
        Err((Failure::Write(e), gone)) => (e, gone),
    };
    // `gone` could not take what the other side sent; what it sent before
    // it went is still read, and passed on.
    let last_words = std::future::poll_fn(|cx| match gone {
        Side::Server => down.poll(cx, server, client),
        Side::Client => up.poll(cx, client, server),
    });
    let _ = tokio::time::timeout(LAST_WORDS, last_words).await;
    Err(error)
}

thread_local! {
    /// Where every relayed read of this thread lands. A read is written on
    /// at once, in the same poll, so one buffer serves every connection of
    /// the thread; only what the receiver cannot take yet is copied aside.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; BUFFER].into_boxed_slice());
}

/// One direction of a relayed connection.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written (the receiver was full); empty, and
    /// without an allocation, while the connection keeps up.
    backlog: Vec<u8>,
    /// How much of `backlog` is written.
    written: usize,
    /// End of stream read and passed on.
    done: bool,
}

impl Direction {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Tracked<'_>,
        to: &mut Tracked<'_>,
    ) -> Poll<Result<(), Failure>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.written < self.backlog.len() {
                let n = ready(Pin::new(&mut *to).poll_write(cx, &self.backlog[self.written..]))
                    .map_err(Failure::Write)?;
                let Some(n) = n else { return Poll::Pending };
                if n == 0 {
                    return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                }
                self.written += n;
            }
            if !self.backlog.is_empty() {
                // Caught up: give the memory back.
                self.backlog = Vec::new();
                self.written = 0;
            }
            let step = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut *from).poll_read(cx, &mut buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Read(e))),
                    Poll::Ready(Ok(())) => {}
                }
                let read = buf.filled().len();
                if read == 0 {
                    return Poll::Ready(Ok(None));
                }
                let written = match Pin::new(&mut *to).poll_write(cx, &scratch[..read]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Write(e))),
                    Poll::Pending => 0,
                };
                Poll::Ready(Ok(Some(scratch[written..read].to_vec())))
            });
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(f)) => return Poll::Ready(Err(f)),
                Poll::Ready(Ok(None)) => {
                    // End of stream: pass it on, and this direction is done.
                    if ready(Pin::new(&mut *to).poll_shutdown(cx))
                        .map_err(Failure::Write)?
                        .is_none()
                    {
                        return Poll::Pending;
                    }
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(Some(rest))) => self.backlog = rest,
            }
        }
    }
}

/// `Poll<io::Result<T>>` as `io::Result<Option<T>>` (`None`: pending).
fn ready<T>(p: Poll<io::Result<T>>) -> io::Result<Option<T>> {
    match p {
        Poll::Ready(r) => r.map(Some),
        Poll::Pending => Ok(None),
    }
}

/// Resolves when the connection has been idle for `idle` with the server
/// having moved last, at a moment when `may_close()` (a client waits for
/// whom no other connection is closing, see `idle_claims`).
pub(crate) async fn idle_expired(
    activity: &Activity,
    clock: &Clock,
    idle: Duration,
    demand: &tokio::sync::Notify,
    may_close: impl Fn() -> bool,
) {
    // `Duration::MAX` and anything past u64 milliseconds: never due.
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let (at, server_last) = activity.last();
        let due = at.saturating_add(idle_ms);
        let now = clock.now_ms();
        if now < due || !server_last {
            // Not idle long enough, or a query is running (the client spoke
            // last): look again when it could be due.
            let wait = if server_last { due - now } else { idle_ms };
            tokio::time::sleep(Duration::from_millis(wait) + TICK).await;
            continue;
        }
        // Registered before the look: `notify_waiters` wakes only the
        // waits that exist when it is called, so a client that queues
        // right after the look must find this one registered already.
        let notified = demand.notified();
        if may_close() {
            return;
        }
        // Idle, but nobody needs the slot (or others close for those who
        // do): wait for a client to queue, or look again in a second (the
        // pool's waiters are read once a second, claims lapse).
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that queues right after a due connection looked and found
    /// nobody waiting wakes it: `notify_waiters` reaches only the waits
    /// registered when it is called, so the wait must be registered before
    /// the look, not after it (else the waiter waits up to a second more).
    #[tokio::test]
    async fn a_client_queueing_just_after_the_look_is_not_missed() {
        let clock = Clock::new();
        let activity = Activity::new(&clock);
        // Idle (the server spoke last, at 0) for 10 s of the gate's clock.
        clock.ms.store(10_000, Ordering::Relaxed);
        let demand = tokio::sync::Notify::new();
        let looks = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        idle_expired(&activity, &clock, Duration::from_secs(1), &demand, || {
            if looks.fetch_add(1, Ordering::Relaxed) == 0 {
                // Nobody waits at the look; a client queues right after.
                demand.notify_waiters();
                false
            } else {
                true
            }
        })
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "the queueing client was missed: closed after {took:?}"
        );
    }
}
