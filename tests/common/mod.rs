//! Shared test harness: the real `scopegate` binary on ephemeral ports, in
//! front of in-process stub upstreams, driven by plain hyper clients.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub const FULL_TOKEN: &str = "syt_full_access_token_for_tests";
pub const DEVICE_ONLY_TOKEN: &str = "device_only_token_for_tests";

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body fed chunk by chunk from a channel, so a test controls its pace.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx).boxed())
}

/// Starts a stub upstream serving `handler` on a loopback port.
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

/// A stub that answers every request with 200 and a small JSON body.
pub async fn ok_stub() -> SocketAddr {
    stub(|_req| async { json_response(200, r#"{"ok":true}"#) }).await
}

pub fn json_response(status: u16, body: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

pub fn free_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The config every test starts from; the builder's extras are appended to
/// their sections, `rest` to the end.
pub fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    b: &GateBuilder,
) -> String {
    let (server_extra, upstream_extra, log_extra, auth_extra, rest) = (
        &b.server_extra,
        &b.upstream_extra,
        &b.log_extra,
        &b.auth_extra,
        &b.rest,
    );
    format!(
        r#"[server]
listen = "{listen}"
header_read_timeout_ms = 1000
{server_extra}

[upstream]
url = "http://{upstream}"
probe_interval_s = 1
{upstream_extra}

[admin]
listen = "{admin}"

[log]
level = "debug"
{log_extra}

[auth]
server_name = "example.org"
{auth_extra}

[[auth.static]]
token_sha256 = "{full}"
user_id = "@alice:example.org"
scopes = ["urn:matrix:client:api:*"]

[[auth.static]]
token_sha256 = "{device}"
user_id = "@bob:example.org"
scopes = ["urn:matrix:client:device:ABC"]
{rest}
"#,
        full = sha256_hex(FULL_TOKEN),
        device = sha256_hex(DEVICE_ONLY_TOKEN),
    )
}

/// The real binary, with its stdout (the logs) captured to a file.
pub struct Gate {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct GateBuilder {
    pub server_extra: String,
    pub upstream_extra: String,
    pub log_extra: String,
    pub auth_extra: String,
    pub rest: String,
    pub files: Vec<(String, Vec<u8>)>,
}

impl GateBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn log(mut self, s: &str) -> Self {
        self.log_extra.push_str(s);
        self.log_extra.push('\n');
        self
    }
    pub fn rest(mut self, s: &str) -> Self {
        self.rest.push_str(s);
        self.rest.push('\n');
        self
    }
    /// Keys of the `[auth]` table itself (`issuer = …`).
    pub fn auth(mut self, s: &str) -> Self {
        self.auth_extra.push_str(s);
        self.auth_extra.push('\n');
        self
    }
    pub fn server(mut self, s: &str) -> Self {
        self.server_extra.push_str(s);
        self.server_extra.push('\n');
        self
    }
    pub fn upstream(mut self, s: &str) -> Self {
        self.upstream_extra.push_str(s);
        self.upstream_extra.push('\n');
        self
    }
    pub fn file(mut self, name: &str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), content.into()));
        self
    }

    pub async fn start(self, upstream: SocketAddr) -> Gate {
        let mut dir = tempfile::tempdir().unwrap();
        for (name, content) in &self.files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        // A free port can be taken by someone else before the gateway binds
        // it: start again on new ports then.
        for _ in 0..5 {
            let (addr, admin) = (free_port(), free_port());
            let cfg = config(addr, admin, upstream, &self);
            let cfg_path = dir.path().join("scopegate.toml");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = dir.path().join("scopegate.log");
            let stderr = dir.path().join("stderr.log");
            let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
                .arg("run")
                .arg("--config")
                .arg(&cfg_path)
                .env_remove("RUST_LOG")
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap();
            let mut gate = Gate {
                child: Some(child),
                addr,
                admin,
                log,
                dir,
            };
            match gate.wait_listening().await {
                Ok(()) => return gate,
                Err(e) if e.contains("cannot listen on") => {
                    dir = std::mem::replace(&mut gate.dir, tempfile::tempdir().unwrap());
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("scopegate found no free ports in five tries");
    }
}

impl Gate {
    pub async fn start(upstream: SocketAddr) -> Gate {
        GateBuilder::new().start(upstream).await
    }

    async fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let stderr =
                    std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
                return Err(format!(
                    "scopegate exited at start-up ({status}): {stderr}{}",
                    self.logs()
                ));
            }
            if TcpStream::connect(self.addr).await.is_ok()
                && TcpStream::connect(self.admin).await.is_ok()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "scopegate did not start: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log so far. Lines are written by a background thread: give it a
    /// moment to catch up with what the test just did.
    pub fn logs(&self) -> String {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The gateway's peak resident memory, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn metrics(&self) -> String {
        let (_, body) = get(self.admin, "/metrics", None).await;
        String::from_utf8(body.to_vec()).unwrap()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<TestBody>) -> (http::response::Parts, Bytes) {
    let response = send_streaming(addr, req).await;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts, bytes)
}

pub async fn send_streaming(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

pub async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (http::response::Parts, Bytes) {
    let mut req = Request::get(path).header("host", "matrix.example.org");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    send(addr, req.body(full("")).unwrap()).await
}

/// Writes raw bytes and reads until the gateway closes or `limit` passes.
pub fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = StdStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}
