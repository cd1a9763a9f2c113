//! Accepting connections: the public listener, TLS, and the internal
//! listeners of admin and relay. This layer sits above the pipeline
//! (`gate`): it hands each request to [`Gateway::handle`].
//!
//! The public listener: TCP accept with a connection cap, optional TLS with
//! ALPN, HTTP/1.1 and HTTP/2 on one port, and the per-connection limits that
//! keep one slow or idle client from holding resources.
//!
//! hyper times out slow headers only once it has picked a protocol, and has
//! no idle timeout; each connection therefore runs under a small watchdog
//! that closes it when no request has been in flight for too long.
//!
//! Memory per connection matters here: a client holding a `/sync` long-poll
//! keeps its connection, and everything hyper allocated for it, for minutes.
//! So the protocol is chosen before hyper sees the connection (ALPN, or a
//! peek at the first bytes), which spares hyper-util's version sniffing: it
//! hands its first 24 bytes back to hyper as a separate read, and hyper's
//! read buffer then doubles to 16 KiB for the life of the connection.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

mod framing;
mod internal;
mod tls;

pub use internal::{bind, serve_internal};
pub use tls::tls_acceptor;

use crate::config::ServerConfig;
use crate::gate::{ConnInfo, Gateway};
use crate::proxy::body::ConnActivity;
use framing::MatrixRefusals;

/// Connection limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(cfg: &ServerConfig) -> Self {
        Limits {
            header_read_timeout: cfg.header_read_timeout(),
            idle_timeout: cfg.idle_timeout(),
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
            max_connections: cfg.max_connections,
        }
    }
}

/// Accepts until `shutdown` turns true, then lets open connections finish
/// their requests for at most `drain`. Returns whether every connection
/// closed in time.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> bool {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Each connection task holds a sender; when all are gone, recv() ends.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let protocols = Arc::new(Protocols {
        h1: builder.clone().http1_only(),
        h2: builder.clone().http2_only(),
        sniff: builder,
    });

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let protocols = protocols.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        let open = open_tx.clone();
        // Two task types, so that a plaintext connection's task is not sized
        // for a TLS session it does not have.
        match tls.clone() {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    gateway.metrics.connections.inc();
                    serve_plain(stream, peer, &protocols, &limits, &gateway, shutdown).await;
                    gateway.metrics.connections.dec();
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    gateway.metrics.connections.inc();
                    serve_tls(
                        stream, peer, acceptor, &protocols, &limits, &gateway, shutdown,
                    )
                    .await;
                    gateway.metrics.connections.dec();
                });
            }
        }
    }
    // Closing the listening socket makes the kernel refuse new connections.
    drop(listener);
    drop(open_tx);
    tracing::info!("stopped accepting; draining open connections");
    tokio::time::timeout(drain, open_rx.recv()).await.is_ok()
}

/// One connection builder per way of picking the protocol.
struct Protocols {
    /// HTTP/1 only: no version sniffing, nothing replayed to hyper.
    h1: auto::Builder<TokioExecutor>,
    /// HTTP/2 only (ALPN `h2`, or the HTTP/2 preface seen).
    h2: auto::Builder<TokioExecutor>,
    /// Either, sniffed by hyper-util: when the first bytes did not tell.
    sniff: auto::Builder<TokioExecutor>,
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes a client sent say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstBytes {
    Http1,
    Http2,
    /// A strict prefix of the HTTP/2 preface: not enough to tell.
    Unsure,
    /// Closed before sending anything.
    Nothing,
}

fn classify(first: &[u8]) -> FirstBytes {
    let n = first.len().min(H2_PREFACE.len());
    if first.is_empty() {
        FirstBytes::Nothing
    } else if first[..n] != H2_PREFACE[..n] {
        FirstBytes::Http1
    } else if n == H2_PREFACE.len() {
        FirstBytes::Http2
    } else {
        FirstBytes::Unsure
    }
}

/// Waits for a plaintext client's first bytes and looks at them without
/// consuming them.
async fn peek_protocol(stream: &TcpStream) -> io::Result<FirstBytes> {
    let mut first = [0u8; 24];
    let n = stream.peek(&mut first).await?;
    Ok(classify(&first[..n]))
}

async fn serve_plain(
    stream: TcpStream,
    peer: SocketAddr,
    protocols: &Protocols,
    limits: &Limits,
    gateway: &Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(ConnActivity::new());
    // Until a first byte arrives, the connection is waiting for its first
    // request: the header timeout applies, and shutdown closes it.
    let first = tokio::select! {
        first = tokio::time::timeout(limits.header_read_timeout, peek_protocol(&stream)) => first,
        _ = shutdown.changed() => return,
    };
    let builder = match first {
        Ok(Ok(FirstBytes::Http1)) => &protocols.h1,
        Ok(Ok(FirstBytes::Http2)) => &protocols.h2,
        Ok(Ok(FirstBytes::Unsure)) => &protocols.sniff,
        Ok(Ok(FirstBytes::Nothing)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection failed before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "closing idle connection");
            return;
        }
    };
    run_connection(
        stream,
        peer,
        "http",
        builder,
        limits,
        activity,
        gateway.clone(),
        shutdown,
    )
    .await
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    protocols: &Protocols,
    limits: &Limits,
    gateway: &Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(ConnActivity::new());
    let stream =
        match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
    // ALPN tells; a client that offered none is sniffed.
    let builder = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => &protocols.h2,
        Some(b"http/1.1") => &protocols.h1,
        _ => &protocols.sniff,
    };
    run_connection(
        stream,
        peer,
        "https",
        builder,
        limits,
        activity,
        gateway.clone(),
        shutdown,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn run_connection<I>(
    io: I,
    peer: SocketAddr,
    proto: &'static str,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    activity: Arc<ConnActivity>,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(ConnInfo::new(peer, proto, activity.clone()));
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let gateway = gateway.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(gateway.handle(req, &info).await) }
    });
    let io = MatrixRefusals::new(io, activity.clone());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    // Set when we asked the connection to close; past it, we drop it.
    let mut hard_stop: Option<Instant> = None;
    if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        let wake = match hard_stop {
            Some(at) => at,
            None => idle_deadline(&activity, limits),
        };
        // Polled in order, the connection first: no fairness to keep here,
        // and no random draw on every wake-up.
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake) => {
                if hard_stop.is_some() {
                    tracing::debug!(%peer, "connection did not close in time; dropping it");
                    return;
                }
                if !activity.is_active() && idle_deadline(&activity, limits) <= Instant::now() {
                    tracing::debug!(%peer, "closing idle connection");
                    conn.as_mut().graceful_shutdown();
                    hard_stop = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            changed = shutdown.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// When an idle connection should be closed. Before its first request a
/// connection gets the header timeout, since hyper's own timer starts only
/// after protocol detection.
fn idle_deadline(activity: &ConnActivity, limits: &Limits) -> Instant {
    if activity.is_active() {
        return Instant::now() + limits.idle_timeout;
    }
    let limit = if activity.has_served() {
        limits.idle_timeout
    } else {
        limits.header_read_timeout
    };
    Instant::from_std(activity.idle_since()) + limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_protocol() {
        assert_eq!(classify(b""), FirstBytes::Nothing);
        assert_eq!(
            classify(b"GET /_matrix/client/v3/sync HTTP/1.1\r\n"),
            FirstBytes::Http1
        );
        assert_eq!(classify(b"G"), FirstBytes::Http1);
        // An HTTP/1 method that starts like the preface, then differs.
        assert_eq!(classify(b"PRIVATE / HTTP/1.1\r\n"), FirstBytes::Http1);
        assert_eq!(classify(H2_PREFACE), FirstBytes::Http2);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"),
            FirstBytes::Http2
        );
        assert_eq!(classify(b"PRI * HTTP/2"), FirstBytes::Unsure);
        assert_eq!(classify(b"P"), FirstBytes::Unsure);
    }
}
