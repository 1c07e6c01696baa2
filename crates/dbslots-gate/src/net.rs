//! TCP and unix sockets behind one type each, so the relay does not care
//! which kind a client or the server came through.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::endpoint::Endpoint;

/// Backlog of the listening sockets: a burst of clients must not overflow
/// the accept queue (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 8192;

/// A bound listening socket.
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The path is removed again when the listener is dropped.
    Unix(UnixListener, UnixPath),
}

/// Removes a unix socket file this gate created, on drop: only while the
/// path still names that socket (same device and inode), never a file
/// somebody put there since.
pub(crate) struct UnixPath {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl UnixPath {
    fn new(path: PathBuf) -> UnixPath {
        let id = file_id(&path);
        UnixPath { path, id }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for UnixPath {
    fn drop(&mut self) {
        if self.id.is_some() && file_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Listener {
    /// Binds `endpoint`. A stale unix socket file (nobody accepting on it) is
    /// replaced; a live one is an error.
    pub(crate) async fn bind(endpoint: &Endpoint) -> io::Result<Listener> {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let mut last = None;
                for a in tokio::net::lookup_host(addr.as_str()).await? {
                    let socket = if a.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.set_reuseaddr(true)?;
                    match socket.bind(a).and_then(|()| socket.listen(BACKLOG)) {
                        Ok(l) => return Ok(Listener::Tcp(l)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the host resolves to no address")
                }))
            }
            Endpoint::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    // Only a socket is ours to replace: a file or a symlink
                    // at the path is somebody's mistake, not a stale gate.
                    if !meta.file_type().is_socket() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "something other than a socket is at this path; remove it or listen elsewhere",
                        ));
                    }
                    // Only a refusal proves nobody listens: a live listener
                    // whose accept queue is full answers EAGAIN, and one we
                    // may not connect to EACCES; neither is ours to unlink.
                    match UnixStream::connect(path).await {
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            std::fs::remove_file(path)?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Ok(_) => {
                            return Err(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                "another process accepts connections on this socket",
                            ));
                        }
                        Err(e) => {
                            return Err(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                format!(
                                    "a socket is at this path and it may be live (connecting to it: {e}); remove it if nothing listens there"
                                ),
                            ));
                        }
                    }
                }
                let std = std::os::unix::net::UnixListener::bind(path)?;
                std.set_nonblocking(true)?;
                // std binds with a backlog of 128; listen again with ours.
                rustix::net::listen(&std, BACKLOG as i32)?;
                Ok(Listener::Unix(
                    UnixListener::from_std(std)?,
                    UnixPath::new(path.clone()),
                ))
            }
        }
    }

    /// The address actually bound (with the port the kernel chose for `:0`).
    pub(crate) fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            Listener::Tcp(l) => Ok(Endpoint::from(l.local_addr()?)),
            Listener::Unix(_, p) => Ok(Endpoint::Unix(p.path.clone())),
        }
    }

    /// Whether a client waits in the listen backlog, not accepted yet; a
    /// look that never waits and leaves the runtime's readiness as it is.
    pub(crate) fn has_pending(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        use std::os::fd::AsFd;
        let fd = match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&Timespec::default())) {
            Ok(_) => fds[0].revents().contains(PollFlags::IN),
            Err(_) => false,
        }
    }

    /// Accepts one client, with a printable peer address.
    pub(crate) async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l, p) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), format!("unix:{}", p.path.display())))
            }
        }
    }
}

/// Connects to `endpoint` within `timeout`.
pub(crate) async fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
    let attempt = async {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

/// A connected socket of either kind.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connected socket registered with no runtime: how a connection moves
/// from the thread that accepted it to the relay thread that serves it.
pub(crate) enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl StdStream {
    /// Registers the socket with the runtime this is called on.
    pub(crate) fn register(self) -> io::Result<Stream> {
        match self {
            StdStream::Tcp(s) => Ok(Stream::Tcp(TcpStream::from_std(s)?)),
            StdStream::Unix(s) => Ok(Stream::Unix(UnixStream::from_std(s)?)),
        }
    }
}

impl Stream {
    /// Deregisters the socket from this runtime (it stays non-blocking).
    pub(crate) fn into_std(self) -> io::Result<StdStream> {
        match self {
            Stream::Tcp(s) => Ok(StdStream::Tcp(s.into_std()?)),
            Stream::Unix(s) => Ok(StdStream::Unix(s.into_std()?)),
        }
    }

    /// Waits until the socket is readable (data, end of stream or an error).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// Whether the peer has hung up (closed its side, or reset), bytes of
    /// its still unread or not; a look that never waits and leaves the
    /// runtime's readiness as it is.
    pub(crate) fn peer_hung_up(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        use std::os::fd::AsFd;
        let fd = match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
        match poll(&mut fds, Some(&Timespec::default())) {
            Ok(_) => fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => false,
        }
    }

    /// Looks at pending bytes without taking them; `WouldBlock` when none.
    pub(crate) fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::net::{RecvFlags, recv};
        use tokio::io::Interest;
        let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        match self {
            Stream::Tcp(s) => s.try_io(Interest::READABLE, || {
                recv(s, &mut *buf, flags)
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            }),
            Stream::Unix(s) => s.try_io(Interest::READABLE, || {
                recv(s, &mut *buf, flags)
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_unix_listen_path_holding_a_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "precious").unwrap();
        let err = runtime()
            .block_on(Listener::bind(&Endpoint::Unix(notes.clone())))
            .err()
            .unwrap();
        assert!(err.to_string().contains("other than a socket"), "{err}");
        assert_eq!(std::fs::read(&notes).unwrap(), b"precious");
    }

    /// A gate so busy that its accept queue is full (a burst of clients,
    /// or a gate out of descriptors) refuses new connections with EAGAIN,
    /// not ECONNREFUSED: its socket is live, and a second gate started on
    /// the same path must not unlink it and take the clients over.
    #[test]
    fn a_live_unix_socket_with_a_full_accept_queue_is_not_taken_over() {
        use std::os::unix::fs::MetadataExt;
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        rustix::net::listen(&live, 1).unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        // Fill its accept queue (nobody accepts).
        let mut queued = Vec::new();
        for _ in 0..64 {
            let s = rustix::net::socket_with(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                rustix::net::SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            let addr = rustix::net::SocketAddrUnix::new(&path).unwrap();
            match rustix::net::connect(&s, &addr) {
                Ok(()) => queued.push(s),
                Err(_) => break,
            }
        }
        let result = rt.block_on(Listener::bind(&Endpoint::Unix(path.clone())));
        assert!(
            result.is_err(),
            "a second listener took over the path of a live one"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        drop(live);
    }

    #[test]
    fn a_unix_socket_is_removed_on_drop_only_while_it_is_still_ours() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.sock");
        // A stale socket (nobody accepts) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = rt
            .block_on(Listener::bind(&Endpoint::Unix(path.clone())))
            .unwrap();
        drop(listener);
        assert!(!path.exists(), "our socket is removed");

        // Somebody replaced it while we ran: theirs stays.
        let listener = rt
            .block_on(Listener::bind(&Endpoint::Unix(path.clone())))
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "theirs").unwrap();
        drop(listener);
        assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
    }
}
