//! A TCP proxy that a test can freeze: a network black hole on loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

/// Forwards connections from a port of 127.0.0.1 to `target` until
/// [`FreezableProxy::freeze`]: from then on bytes simply stop, in both
/// directions and on connections made later, while every socket stays open
/// (no RST, no FIN), like a cable cut or a partition. Dropping the value
/// closes everything.
#[derive(Debug)]
pub struct FreezableProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
    replies_frozen: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
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
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let frozen = Arc::new(AtomicBool::new(false));
        let replies_frozen = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let (f, r, c) = (
            Arc::clone(&frozen),
            Arc::clone(&replies_frozen),
            Arc::clone(&closed),
        );
        thread::Builder::new()
            .name("freezable-proxy".into())
            .spawn(move || accept_loop(&listener, target, &f, &r, &c))?;
        Ok(Self {
            port,
            frozen,
            replies_frozen,
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

fn accept_loop(
    listener: &TcpListener,
    target: SocketAddr,
    frozen: &Arc<AtomicBool>,
    replies_frozen: &Arc<AtomicBool>,
    closed: &Arc<AtomicBool>,
) {
    let mut held = Vec::new();
    while !closed.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
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
                        let (f, r, c) = (
                            Arc::clone(frozen),
                            Arc::clone(replies_frozen),
                            Arc::clone(closed),
                        );
                        let _ = thread::Builder::new()
                            .name("freezable-proxy-pump".into())
                            .spawn(move || pump(from, to, &f, replies.then_some(&*r), &c));
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
/// While `dropping` is set, reads and drops what it read.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    frozen: &AtomicBool,
    dropping: Option<&AtomicBool>,
    closed: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 16 * 1024];
    while !closed.load(Ordering::SeqCst) {
        if frozen.load(Ordering::SeqCst) {
            thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if frozen.load(Ordering::SeqCst)
                    || dropping.is_some_and(|d| d.load(Ordering::SeqCst))
                {
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
