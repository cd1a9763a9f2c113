//! The homeserver side: a small pool of keep-alive HTTP/1.1 connections,
//! bodies streamed both ways, and failures mapped to what a client can act
//! on (502 vs 504).
//!
//! The pool is ours rather than hyper-util's legacy `Client` because of what
//! a held `/sync` long-poll costs: the legacy client boxes every request's
//! future (≈3.4 KB) and every connection task, and keeps TLS state inline in
//! plaintext connections. Here a request in flight is a `SendRequest` and a
//! oneshot receiver inside the gateway's own future, and a connection is one
//! task.
//!
//! A connection goes back to the pool when its response body has been read to
//! the end and hyper has it ready for the next request; a response dropped
//! half-read (the client went away) closes its connection, as HTTP/1 requires.

use std::error::Error as StdError;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::pool::Pool;
use super::roots;

/// What the upstream client needs; `run` takes it from `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `http(s)://host[:port]`, the homeserver.
    pub url: Uri,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    /// Replaces the client's `Host` header when set.
    pub host: Option<String>,
    pub pool_max_idle_per_host: usize,
    pub pool_idle_timeout: Duration,
    /// Extra PEM CA certificates trusted besides the system roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// What the client sends upstream: a client's streamed body, or nothing
/// (readiness probes).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Refused, reset, TLS or protocol failure: 502.
    Unreachable,
    /// No response headers in time: 504.
    Timeout,
}

pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    h1: http1::Builder,
    pool: Arc<Pool>,
    /// `scheme://authority`, what the connector dials.
    origin: Uri,
    /// The `Host` sent when a request has none: the authority, without a
    /// default port.
    default_host: HeaderValue,
    host_override: Option<HeaderValue>,
    response_header_timeout: Duration,
    /// Unix milliseconds of the last response from the upstream, any status.
    last_seen_ms: AtomicU64,
}

impl Upstream {
    pub fn new(cfg: &UpstreamSettings) -> Result<Self, String> {
        let roots = roots::root_store("the homeserver (upstream.url)", cfg.ca_file.as_deref())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);

        let url = &cfg.url;
        let scheme = url.scheme().cloned().expect("validated at load");
        let authority = url.authority().cloned().expect("validated at load");
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("upstream.url: {e}"))?;
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let default_host = match authority.port_u16() {
            Some(port) if port != default_port => HeaderValue::from_str(authority.as_str()),
            _ => HeaderValue::from_str(authority.host()),
        }
        .map_err(|_| "upstream.url: the host is not a valid header value".to_string())?;
        let host_override = cfg
            .host
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| "upstream.host is not a valid header value".to_string())?;
        Ok(Upstream {
            connector,
            h1: http1::Builder::new(),
            pool: Arc::new(Pool::new(cfg.pool_max_idle_per_host, cfg.pool_idle_timeout)),
            origin,
            default_host,
            host_override,
            response_header_timeout: cfg.response_header_timeout,
            last_seen_ms: AtomicU64::new(0),
        })
    }

    /// `[upstream] host`, sent as `Host` instead of the client's.
    pub fn host_override(&self) -> Option<&HeaderValue> {
        self.host_override.as_ref()
    }

    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        match tokio::time::timeout(self.response_header_timeout, self.round_trip(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&*e), "upstream request failed");
                if is_timeout(&*e) {
                    Err(UpstreamError::Timeout)
                } else {
                    Err(UpstreamError::Unreachable)
                }
            }
            Ok(Ok(response)) => {
                self.mark_seen();
                Ok(response)
            }
        }
    }

    /// A cheap request every homeserver answers, for readiness.
    pub async fn probe(&self) -> bool {
        let path = PathAndQuery::from_static("/_matrix/client/versions");
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.uri_mut() = Uri::from(path);
        if let Some(host) = &self.host_override {
            req.headers_mut().insert(http::header::HOST, host.clone());
        }
        let answered = async {
            let response = self.round_trip(req).await.ok()?;
            // Read to the end, so that the connection can serve again.
            let _ = response.into_body().collect().await;
            Some(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), answered).await,
            Ok(Some(()))
        ) && {
            self.mark_seen();
            true
        }
    }

    /// One request, on a pooled connection or a new one. A pooled connection
    /// the homeserver closed before the request went out is retried on the
    /// next; a new connection's failure is final.
    async fn round_trip(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        // HTTP/1.1 to the homeserver: origin-form (RFC 9112 §3.2.1), and a
        // Host header.
        let target = std::mem::take(req.uri_mut()).into_parts().path_and_query;
        *req.uri_mut() = target.map_or_else(|| Uri::from_static("/"), Uri::from);
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.default_host.clone());
        }
        loop {
            let (mut tx, reused) = match self.pool.checkout() {
                Some(tx) => (tx, true),
                None => (self.connect().await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = ResponseBody::new(body, tx, &self.pool);
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!(error = %e.error(), "pooled upstream connection closed; retrying");
                        req = unsent;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, BoxError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = Io::from(connector.call(self.origin.clone()).await?);
        let (tx, conn) = self.h1.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    fn mark_seen(&self) {
        self.last_seen_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// Whether the upstream answered anything within `window`.
    pub fn seen_within(&self, window: Duration) -> bool {
        let last = self.last_seen_ms.load(Ordering::Relaxed);
        last != 0 && unix_ms().saturating_sub(last) <= window.as_millis() as u64
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_timeout(e: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// The upstream's response body, streamed as it arrives. Read to its end,
/// it hands its connection back to the pool.
pub struct ResponseBody {
    inner: Incoming,
    conn: Option<(SendRequest<UpstreamBody>, Arc<Pool>)>,
}

impl ResponseBody {
    fn new(inner: Incoming, tx: SendRequest<UpstreamBody>, pool: &Arc<Pool>) -> Self {
        let mut body = ResponseBody {
            inner,
            conn: Some((tx, pool.clone())),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((tx, pool)) = self.conn.take() {
            pool.checkin(tx);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            // A broken response: its connection is not reused.
            Some(Err(_)) => this.conn = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Read to the end without the final poll (hyper stops at
        // `is_end_stream`): the connection can serve again. Otherwise it
        // still has body bytes coming, and closes when the sender goes.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

/// A connection to the homeserver. A plaintext one does not carry the size
/// of a TLS session.
enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<MaybeHttpsStream<TokioIo<TcpStream>>>),
}

impl From<MaybeHttpsStream<TokioIo<TcpStream>>> for Io {
    fn from(stream: MaybeHttpsStream<TokioIo<TcpStream>>) -> Self {
        match stream {
            MaybeHttpsStream::Http(plain) => Io::Plain(plain),
            tls => Io::Tls(Box::new(tls)),
        }
    }
}

impl Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How the stub homeserver answers each request.
    #[derive(Clone, Copy)]
    enum Answer {
        Length,
        Chunked,
        /// A response, then the connection closed without a word.
        LengthThenClose,
        /// Headers and the start of a body, then nothing more.
        Stall,
    }

    struct Stub {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        /// Connections the stub saw end.
        closed: Arc<AtomicUsize>,
    }

    async fn stub(answer: Answer) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        head.extend_from_slice(&buf[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            let reply: &[u8] = match answer {
                                Answer::Length | Answer::LengthThenClose => {
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                                }
                                Answer::Chunked => {
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                                }
                                Answer::Stall => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok",
                            };
                            stream.write_all(reply).await.unwrap();
                            if let Answer::LengthThenClose = answer {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Stub {
            addr,
            accepted,
            closed,
        }
    }

    fn upstream(addr: std::net::SocketAddr, pool_idle_timeout: Duration) -> Upstream {
        Upstream::new(&UpstreamSettings {
            url: format!("http://{addr}").parse().unwrap(),
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(30),
            host: None,
            pool_max_idle_per_host: 512,
            pool_idle_timeout,
            ca_file: None,
        })
        .unwrap()
    }

    async fn get(up: &Upstream) -> Result<Response<ResponseBody>, UpstreamError> {
        let path = PathAndQuery::from_static("/_matrix/client/v3/sync");
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.uri_mut() = Uri::from(path);
        up.send(req).await
    }

    async fn get_body(up: &Upstream) -> Bytes {
        let response = get(up).await.expect("an answer");
        response.into_body().collect().await.unwrap().to_bytes()
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..100 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn a_connection_serves_request_after_request() {
        for answer in [Answer::Length, Answer::Chunked] {
            let stub = stub(answer).await;
            let up = upstream(stub.addr, Duration::from_secs(90));
            for _ in 0..5 {
                assert_eq!(get_body(&up).await, "ok");
            }
            assert_eq!(stub.accepted.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_each_get_a_connection_and_all_are_pooled() {
        let stub = stub(Answer::Length).await;
        let up = Arc::new(upstream(stub.addr, Duration::from_secs(90)));
        let bodies = (0..8).map(|_| {
            let up = up.clone();
            tokio::spawn(async move { get_body(&up).await })
        });
        for body in bodies {
            assert_eq!(body.await.unwrap(), "ok");
        }
        let opened = stub.accepted.load(Ordering::SeqCst);
        eventually("all connections pooled", || up.pool.idle_count() == opened).await;
        for _ in 0..opened {
            assert_eq!(get_body(&up).await, "ok");
        }
        assert_eq!(stub.accepted.load(Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn a_connection_the_homeserver_closed_is_replaced() {
        let stub = stub(Answer::LengthThenClose).await;
        let up = upstream(stub.addr, Duration::from_secs(90));
        for _ in 0..3 {
            assert_eq!(get_body(&up).await, "ok");
        }
        assert_eq!(stub.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_closes_its_connection() {
        let stub = stub(Answer::Stall).await;
        let up = upstream(stub.addr, Duration::from_secs(90));
        let response = get(&up).await.expect("headers");
        drop(response);
        eventually("the connection is closed", || {
            stub.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(up.pool.idle_count(), 0);
        let _ = get(&up).await.expect("headers");
        assert_eq!(stub.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let stub = stub(Answer::Length).await;
        let up = upstream(stub.addr, Duration::from_secs(1));
        assert_eq!(get_body(&up).await, "ok");
        eventually("the idle connection is closed", || {
            stub.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(get_body(&up).await, "ok");
        assert_eq!(stub.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn requests_go_out_in_origin_form_with_a_host() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let up = upstream(addr, Duration::from_secs(90));
        let response = get(&up).await.expect("an answer");
        assert_eq!(response.status(), 204);
        let head = seen.await.unwrap();
        assert!(
            head.starts_with("GET /_matrix/client/v3/sync HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: {addr}\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let up = upstream(addr, Duration::from_secs(90));
        assert_eq!(get(&up).await.err(), Some(UpstreamError::Unreachable));
        assert!(!up.seen_within(Duration::from_secs(60)));
    }
}
