//! The accept loop of `dbslots serve`: HTTP/1.1 connections with a
//! header-read timeout and a cap on how many are open at once.
//!
//! A connection that has sent no complete request head within
//! [`HEADER_READ_TIMEOUT`] (a new one, or an idle keep-alive one) is closed
//! by hyper. When `max_connections` are open, the oldest connection that
//! is not in the middle of a request is closed to make room, so idle
//! sockets, however many, cannot keep a real request from being answered.
//! (axum's own `serve` has neither knob, hence this loop over hyper.)

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::ServiceExt;

/// How long a client may take to send a request's head (also the longest
/// an idle keep-alive connection stays open).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The open connections, oldest first.
#[derive(Default)]
struct Open {
    next_id: u64,
    conns: BTreeMap<u64, Conn>,
}

struct Conn {
    /// Requests being answered on it.
    busy: Arc<AtomicU32>,
    /// Closes it.
    close: Option<oneshot::Sender<()>>,
}

/// Serves `router` on `listener` until `shutdown` completes, with at most
/// `max_connections` connections open.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let busy = Arc::new(AtomicU32::new(0));
        let (close_tx, close_rx) = oneshot::channel();
        let id = {
            let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
            let id = o.next_id;
            o.next_id += 1;
            o.conns.insert(
                id,
                Conn {
                    busy: Arc::clone(&busy),
                    close: Some(close_tx),
                },
            );
            if o.conns.len() > max_connections {
                make_room(&mut o, id);
            }
            id
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let router = router.clone();
            let busy = Arc::clone(&busy);
            busy.fetch_add(1, Ordering::Relaxed);
            async move {
                let response = router.oneshot(request.map(axum::body::Body::new)).await;
                busy.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            tokio::select! {
                r = connection => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                },
                _ = close_rx => tracing::debug!(%peer, "closed an idle connection to make room"),
            }
            open.lock()
                .unwrap_or_else(|e| e.into_inner())
                .conns
                .remove(&id);
        });
    }
    Ok(())
}

/// Closes the oldest connection that answers no request (never `newest`,
/// which has not had a chance to send one).
fn make_room(open: &mut Open, newest: u64) {
    let victim = open
        .conns
        .iter()
        .find(|(id, c)| **id != newest && c.busy.load(Ordering::Relaxed) == 0)
        .map(|(id, _)| *id);
    match victim {
        Some(id) => {
            if let Some(mut c) = open.conns.remove(&id)
                && let Some(close) = c.close.take()
            {
                let _ = close.send(());
            }
        }
        None => tracing::warn!(
            open = open.conns.len(),
            "every connection is answering a request; over the connection cap"
        ),
    }
}
