//! A TCP proxy that a test can freeze: a network black hole on loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

/// Forwards connections from a port of 127.0.0.1 to `target` until
/// [`FreezableProxy::freeze`]: from then on bytes simply stop, in both
/// directions and on connections made later, while every socket stays open
/// (no RST, no FIN), like a cable cut or a partition; or, with
/// [`FreezableProxy::freeze_open_connections`], only on the connections
/// open at that moment, like a failover that leaves clients talking to the
/// old host. Dropping the value closes everything, the listening socket
/// too (within 10 ms).
#[derive(Debug)]
pub struct FreezableProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
    /// Connections numbered below this are frozen (they are numbered from
    /// 1 as they are accepted).
    frozen_below: Arc<AtomicU64>,
    /// Replies are dropped: [`FreezableProxy::freeze_replies`].
    replies_frozen: Arc<AtomicBool>,
    /// Microseconds each reply waits: [`FreezableProxy::delay_replies`].
    reply_delay_us: Arc<AtomicU64>,
    /// The number the next accepted connection gets.
    next: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

/// What a pump reads to know whether its connection passes bytes.
struct Gate {
    frozen: Arc<AtomicBool>,
    frozen_below: Arc<AtomicU64>,
    number: u64,
    /// Set on the server-to-client direction: [`FreezableProxy::freeze_replies`].
    replies_frozen: Option<Arc<AtomicBool>>,
    /// Set on the server-to-client direction: [`FreezableProxy::delay_replies`].
    reply_delay_us: Option<Arc<AtomicU64>>,
}

impl Gate {
    fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst) || self.number < self.frozen_below.load(Ordering::SeqCst)
    }

    /// Whether what was read must be dropped rather than passed on.
    fn drops(&self) -> bool {
        self.is_frozen()
            || self
                .replies_frozen
                .as_ref()
                .is_some_and(|r| r.load(Ordering::SeqCst))
    }

    /// How long what was read waits before it is passed on.
    fn delay(&self) -> Duration {
        self.reply_delay_us.as_ref().map_or(Duration::ZERO, |d| {
            Duration::from_micros(d.load(Ordering::SeqCst))
        })
    }
}

const POLL: Duration = Duration::from_millis(10);

impl FreezableProxy {
    /// Starts forwarding to `target`.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the proxy")?;
        Self::serve(listener, target)
    }

    /// Starts forwarding to `target` from `port` of 127.0.0.1, so that a
    /// test can take a server away (drop the proxy: connects are refused)
    /// and bring it back at the same address (start another one). Waits up
    /// to 2 s for a proxy dropped just before to let go of the port.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound (something else listens there).
    pub fn start_on(port: u16, target: SocketAddr) -> Result<Self> {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => break listener,
                Err(e)
                    if e.kind() == ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
                {
                    thread::sleep(POLL);
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot bind the proxy to port {port}"));
                }
            }
        };
        Self::serve(listener, target)
    }

    fn serve(listener: TcpListener, target: SocketAddr) -> Result<Self> {
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let frozen = Arc::new(AtomicBool::new(false));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let replies_frozen = Arc::new(AtomicBool::new(false));
        let reply_delay_us = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(1));
        let closed = Arc::new(AtomicBool::new(false));
        let state = Shared {
            frozen: Arc::clone(&frozen),
            frozen_below: Arc::clone(&frozen_below),
            replies_frozen: Arc::clone(&replies_frozen),
            reply_delay_us: Arc::clone(&reply_delay_us),
            next: Arc::clone(&next),
            closed: Arc::clone(&closed),
        };
        thread::Builder::new()
            .name("freezable-proxy".into())
            .spawn(move || accept_loop(&listener, target, &state))?;
        Ok(Self {
            port,
            frozen,
            frozen_below,
            replies_frozen,
            reply_delay_us,
            next,
            closed,
        })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops every byte from now on; sockets stay open.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Drops every byte from the server from now on, while the client's
    /// still reach it: each request is carried out and its reply is lost,
    /// as when a connection breaks between the two.
    pub fn freeze_replies(&self) {
        self.replies_frozen.store(true, Ordering::SeqCst);
    }

    /// Holds each reply from the server for `delay` before passing it on,
    /// from now on and on every connection: a slow link, where each round
    /// trip takes at least `delay`.
    pub fn delay_replies(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.reply_delay_us.store(us, Ordering::SeqCst);
    }

    /// Stops every byte, from now on and for good, on the connections open
    /// now (sockets stay open), while connections made later pass: the
    /// old path to the server is a black hole, a new connect reaches it.
    /// [`FreezableProxy::thaw`] does not revive them.
    pub fn freeze_open_connections(&self) {
        let next = self.next.load(Ordering::SeqCst);
        self.frozen_below.fetch_max(next, Ordering::SeqCst);
    }

    /// How many connections the proxy has accepted so far.
    pub fn connections(&self) -> u64 {
        self.next.load(Ordering::SeqCst) - 1
    }

    /// Lets bytes pass again (the network healed): connections made from
    /// now on work; bytes dropped while frozen stay lost, so a client whose
    /// call timed out reconnects, and sockets accepted while frozen stay
    /// dead.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
        self.replies_frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// What the accepting thread shares with the proxy's handle.
struct Shared {
    frozen: Arc<AtomicBool>,
    frozen_below: Arc<AtomicU64>,
    replies_frozen: Arc<AtomicBool>,
    reply_delay_us: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, state: &Shared) {
    let Shared {
        frozen,
        frozen_below,
        replies_frozen,
        reply_delay_us,
        next,
        closed,
    } = state;
    let mut held = Vec::new();
    while !closed.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let number = next.fetch_add(1, Ordering::SeqCst);
                if frozen.load(Ordering::SeqCst) {
                    // The kernel completed the handshake; nothing more will
                    // ever pass. Keep the socket open until the proxy goes.
                    held.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to, replies) in [
                    (client.try_clone(), server.try_clone(), false),
                    (server.try_clone(), client.try_clone(), true),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let gate = Gate {
                            frozen: Arc::clone(frozen),
                            frozen_below: Arc::clone(frozen_below),
                            number,
                            replies_frozen: replies.then(|| Arc::clone(replies_frozen)),
                            reply_delay_us: replies.then(|| Arc::clone(reply_delay_us)),
                        };
                        let c = Arc::clone(closed);
                        let _ = thread::Builder::new()
                            .name("freezable-proxy-pump".into())
                            .spawn(move || pump(from, to, &gate, &c));
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Copies `from` to `to` until closed; while frozen, reads nothing and
/// writes nothing (bytes in flight when the freeze comes are dropped).
/// While replies are frozen, the server's bytes are read and dropped.
fn pump(mut from: TcpStream, mut to: TcpStream, gate: &Gate, closed: &AtomicBool) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 16 * 1024];
    while !closed.load(Ordering::SeqCst) {
        if gate.is_frozen() {
            thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                let delay = gate.delay();
                if !delay.is_zero() {
                    thread::sleep(delay);
                }
                if gate.drops() {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
