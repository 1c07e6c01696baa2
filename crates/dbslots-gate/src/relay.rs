//! Relaying bytes both ways, unchanged, and knowing who spoke last.
//!
//! The relay is tokio's `copy_bidirectional` (one task per connection, a
//! buffer per direction, no copy between tasks) over streams that note each
//! read: how many bytes moved (the gate's counters) and, when an idle
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

/// Bytes of each direction's buffer.
const BUFFER: usize = 8 * 1024;

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

    fn now_ms(&self) -> u64 {
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
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Relays until both sides are done (or one fails).
pub(crate) async fn copy_both(
    client: &mut Tracked<'_>,
    server: &mut Tracked<'_>,
) -> io::Result<()> {
    tokio::io::copy_bidirectional_with_sizes(client, server, BUFFER, BUFFER)
        .await
        .map(|_| ())
}

/// Resolves when the connection has been idle for `idle` with the server
/// having moved last, at a moment when `someone_waits()`.
pub(crate) async fn idle_expired(
    activity: &Activity,
    clock: &Clock,
    idle: Duration,
    demand: &tokio::sync::Notify,
    someone_waits: impl Fn() -> bool,
) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let (at, server_last) = activity.last();
        let due = at + idle_ms;
        let now = clock.now_ms();
        if now < due || !server_last {
            // Not idle long enough, or a query is running (the client spoke
            // last): look again when it could be due.
            let wait = if server_last { due - now } else { idle_ms };
            tokio::time::sleep(Duration::from_millis(wait) + TICK).await;
            continue;
        }
        if someone_waits() {
            return;
        }
        // Idle, but nobody needs the slot: wait for a client to queue (or
        // for others in the pool, looked at once a second).
        let notified = demand.notified();
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
