//! One stub server for every peer of the gateway, on `127.0.0.1:0`.
//!
//! [`stub`] serves any async handler and streams bodies both ways; the
//! streaming tests use it directly. [`Stub`] is built on it for everything
//! else: it reads each request whole, records it, and answers what the
//! test's handler returns, with switches a test flips while it runs (down,
//! slow). As a homeserver ([`Stub::homeserver`]) it answers the gateway's
//! readiness probe itself and records only client requests; as an identity
//! provider ([`Stub::start`], [`introspection_stub`](super::introspection_stub))
//! it records everything.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{full, TestBody};

/// Serves `handler` on a loopback port, HTTP/1.1, bodies streamed.
pub async fn stub<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

pub fn json_response(status: u16, body: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// A homeserver that answers every request with 200 and `{"ok":true}`.
pub async fn ok_stub() -> SocketAddr {
    Stub::homeserver(|_| Reply::json(200, r#"{"ok":true}"#))
        .await
        .addr
}

/// What a [`Stub`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The request target as received: path and query.
    pub uri: Uri,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The body as a form.
    pub fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The gateway's readiness probe (`run::serve` sends it every
    /// `probe_interval_s`), not a client's request.
    fn is_probe(&self) -> bool {
        self.method == Method::GET && self.path == "/_matrix/client/versions"
    }
}

/// What a [`Stub`] answers: JSON unless told otherwise.
pub struct Reply {
    status: StatusCode,
    body: String,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            body: body.into(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// A further response header.
    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// Answers only after `delay`, as a long-poll does.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

impl From<(StatusCode, String)> for Reply {
    fn from((status, body): (StatusCode, String)) -> Reply {
        Reply::json(status.as_u16(), body)
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A recording stub: see the module documentation.
pub struct Stub {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port`
    pub url: String,
    state: Arc<StubState>,
}

struct StubState {
    handler: Box<Handler>,
    /// Answers the gateway's readiness probe without recording it.
    homeserver: bool,
    requests: Mutex<Vec<Recorded>>,
    /// Requests recorded so far; waiters learn of each one.
    calls: watch::Sender<usize>,
    down: AtomicBool,
    delay_ms: AtomicU64,
}

impl Stub {
    /// A stub that records every request, as an identity provider.
    pub async fn start<R: Into<Reply>>(
        handler: impl Fn(&Recorded) -> R + Send + Sync + 'static,
    ) -> Stub {
        Stub::with(false, handler).await
    }

    /// A stub homeserver: the gateway's readiness probe is answered (at
    /// once, 200) and not recorded; every other request goes to `handler`.
    pub async fn homeserver<R: Into<Reply>>(
        handler: impl Fn(&Recorded) -> R + Send + Sync + 'static,
    ) -> Stub {
        Stub::with(true, handler).await
    }

    async fn with<R: Into<Reply>>(
        homeserver: bool,
        handler: impl Fn(&Recorded) -> R + Send + Sync + 'static,
    ) -> Stub {
        let state = Arc::new(StubState {
            handler: Box::new(move |r| handler(r).into()),
            homeserver,
            requests: Mutex::new(Vec::new()),
            calls: watch::Sender::new(0),
            down: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
        });
        let shared = state.clone();
        let addr = stub(move |req| answer(shared.clone(), req)).await;
        Stub {
            addr,
            url: format!("http://{addr}"),
            state,
        }
    }

    /// How many requests were recorded.
    pub fn calls(&self) -> usize {
        *self.state.calls.borrow()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Returns once `n` requests have been recorded: the request a test is
    /// waiting for has arrived (and is being answered, slowly if so told).
    pub async fn wait_calls(&self, n: usize) {
        let mut calls = self.state.calls.subscribe();
        let arrived = tokio::time::timeout(Duration::from_secs(10), calls.wait_for(|c| *c >= n));
        if arrived.await.is_err() {
            panic!("the stub received {} requests, expected {n}", self.calls());
        }
    }

    /// While down the stub answers 500.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Every answer from now on waits `delay` first.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

async fn answer(state: Arc<StubState>, req: Request<Incoming>) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        path: parts.uri.path().to_string(),
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    if state.homeserver && recorded.is_probe() {
        return json_response(200, r#"{"versions":["v1.11","v1.12"]}"#);
    }
    state.requests.lock().unwrap().push(recorded.clone());
    state.calls.send_modify(|c| *c += 1);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let reply = if state.down.load(Ordering::SeqCst) {
        Reply::json(500, "{}")
    } else {
        (state.handler)(&recorded)
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::builder()
        .status(reply.status)
        .header("content-type", "application/json");
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    response.body(full(reply.body)).unwrap()
}
