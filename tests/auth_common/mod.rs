//! In-process stubs on 127.0.0.1:0 for the auth tests: a recording HTTP
//! server whose answers the test decides, and settings helpers.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use scopegate::auth::{AuthSettings, Authenticator, CacheConfig};
use tokio::net::TcpListener;

/// What the stub received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Handler = dyn Fn(&Recorded) -> (StatusCode, String) + Send + Sync;

pub struct Stub {
    pub url: String,
    state: Arc<StubState>,
    server: tokio::task::JoinHandle<()>,
}

struct StubState {
    handler: Box<Handler>,
    requests: Mutex<Vec<Recorded>>,
    calls: AtomicUsize,
    down: AtomicBool,
    delay_ms: AtomicU64,
}

impl Stub {
    pub async fn start(
        handler: impl Fn(&Recorded) -> (StatusCode, String) + Send + Sync + 'static,
    ) -> Stub {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(StubState {
            handler: Box::new(handler),
            requests: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        Stub { url, state, server }
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// While down the stub answers 500.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<StubState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let recorded = Recorded {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_string(),
                        headers: parts.headers,
                        body,
                    };
                    state.calls.fetch_add(1, Ordering::SeqCst);
                    state.requests.lock().unwrap().push(recorded.clone());
                    let delay = state.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    let (status, body) = if state.down.load(Ordering::SeqCst) {
                        (StatusCode::INTERNAL_SERVER_ERROR, "{}".to_string())
                    } else {
                        (state.handler)(&recorded)
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub const SERVER_NAME: &str = "example.org";

/// An upstream nobody listens on (legacy disabled in most tests).
pub fn no_upstream() -> http::Uri {
    "http://127.0.0.1:9".parse().unwrap()
}

pub fn build(settings: &AuthSettings, cache: &CacheConfig) -> Authenticator {
    Authenticator::from_config(
        settings,
        cache,
        &no_upstream(),
        &prometheus::Registry::new(),
    )
    .expect("valid test config")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn random_alnum(n: usize) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes
        .iter()
        .map(|b| ALNUM[usize::from(*b) % ALNUM.len()] as char)
        .collect()
}

/// A well-formed MAS access token (`mat_…`, checksum right).
pub fn mas_access_token() -> String {
    scopegate::auth::mas::MasTokenKind::AccessToken.token_with(&random_alnum(30))
}

/// `[auth.introspection]` against `{base}/oauth2/introspect`.
pub fn introspection_settings(
    base: &str,
    method: scopegate::auth::ClientAuthMethod,
) -> AuthSettings {
    AuthSettings {
        server_name: SERVER_NAME.into(),
        introspection: scopegate::auth::IntrospectionConfig {
            enabled: true,
            endpoint: Some(format!("{base}/oauth2/introspect")),
            client_id: Some("scopegate".into()),
            client_secret: Some(scopegate::auth::Secret::new("s3cret")),
            auth_method: method,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An introspection stub: `active(token)` decides, answering in MAS's shape.
pub async fn mas_stub(active: impl Fn(&str) -> bool + Send + Sync + 'static) -> Stub {
    Stub::start(move |req| {
        let form = req.form();
        let token = form.get("token").map(String::as_str).unwrap_or_default();
        if !active(token) {
            return (StatusCode::OK, r#"{"active":false}"#.into());
        }
        (StatusCode::OK, mas_active_body("alice", "ABCDEFGHIJ", 300))
    })
    .await
}

/// What MAS answers for an active OAuth access token (oauth2-types
/// IntrospectionResponse, scopes normalised with their unstable twins).
pub fn mas_active_body(username: &str, device: &str, expires_in: u64) -> String {
    let now = unix_now();
    serde_json::json!({
        "active": true,
        "scope": format!(
            "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:api:* \
             urn:matrix:client:device:{device} urn:matrix:org.matrix.msc2967.client:device:{device}"
        ),
        "client_id": "01J9Q3ZKQ8Y6V5D4R3E2W1T0SA",
        "username": username,
        "token_type": "access_token",
        "exp": now + expires_in,
        "expires_in": expires_in,
        "iat": now,
        "nbf": now,
        "sub": "01J9Q3ZKQ8Y6V5D4R3E2W1T0SB",
        "aud": null,
        "iss": null,
        "jti": "01J9Q3ZKQ8Y6V5D4R3E2W1T0SC",
        "device_id": device,
    })
    .to_string()
}
