//! The pipeline in-process: requests go to [`Gateway::handle`] through a
//! hyper connection over `tokio::io::duplex`, as the server hands them over;
//! the homeserver (and the introspection endpoint beside it) is a hyper
//! server on a loopback port inside the test.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::auth::{
    AuthSettings, CacheConfig, ClientAuthMethod, IntrospectionConfig, RateLimitConfig, Secret,
    StaticToken, TokenDigest,
};
use crate::canonical::TargetError;
use crate::proxy::upstream::UpstreamSettings;

/// A static token with full access (`@alice:example.org`).
const FULL: &str = "static_full_access";
/// A static token whose only scope names a device: valid, but allowed
/// almost nothing.
const DEVICE_ONLY: &str = "static_device_only";
/// Opaque tokens go to introspection; the stub says this one is active.
const INTROSPECTED: &str = "opaque_alice";
/// The stub's introspection endpoint fails (HTTP 500) for this one.
const PROVIDER_FAILS: &str = "opaque_provider_fails";
/// Any other opaque token is inactive.
const UNKNOWN: &str = "opaque_nobody";

const WHOAMI: &str = "/_matrix/client/v3/account/whoami";
const WHOAMI_ROUTE: &str = "/_matrix/client/{versions}/account/whoami";
/// A client peer no proxy setting trusts.
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));

/// What the stub homeserver received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
}

#[derive(Default)]
struct StubState {
    seen: Mutex<Vec<Seen>>,
    introspections: AtomicUsize,
    /// Receive requests but never answer them.
    stall: AtomicBool,
}

/// The homeserver, and the identity provider's introspection endpoint.
/// Answers 200 `{}`, or the status a request asks for in `x-stub-status`.
struct Stub {
    addr: SocketAddr,
    state: Arc<StubState>,
}

impl Stub {
    async fn start() -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(StubState::default());
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let service = service_fn(move |req| stub_answer(state.clone(), req));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Stub { addr, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn introspections(&self) -> usize {
        self.state.introspections.load(Ordering::SeqCst)
    }
}

async fn stub_answer(
    state: Arc<StubState>,
    req: Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let answer = |status: u16, body: String| {
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(response)
    };
    if parts.uri.path() == "/oauth2/introspect" {
        state.introspections.fetch_add(1, Ordering::SeqCst);
        let token = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        return match token.as_str() {
            INTROSPECTED => answer(
                200,
                r#"{"active": true, "username": "alice", "scope": "urn:matrix:client:api:*"}"#
                    .into(),
            ),
            PROVIDER_FAILS => answer(500, "{}".into()),
            _ => answer(200, r#"{"active": false}"#.into()),
        };
    }
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: parts.uri.to_string(),
        headers: parts.headers.clone(),
    });
    if state.stall.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let status = parts
        .headers
        .get("x-stub-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(200);
    answer(status, "{}".into())
}

/// How a test's gateway differs from the default one.
struct Setup {
    trusted_proxies: Vec<IpNet>,
    /// Invalid tokens a client may present before 429.
    burst: u32,
    max_header_bytes: usize,
    /// Point the gateway at a port nobody listens on.
    upstream_down: bool,
    response_header_timeout: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            trusted_proxies: Vec::new(),
            burst: 20,
            max_header_bytes: 8192,
            upstream_down: false,
            response_header_timeout: Duration::from_secs(30),
        }
    }
}

/// A gateway with the shipped rules, two static tokens and introspection
/// against the stub, and the stub behind it.
struct Harness {
    gateway: Arc<Gateway>,
    stub: Stub,
}

/// A response, read to the end.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn errcode(&self) -> String {
        self.json()["errcode"].as_str().unwrap_or("-").to_string()
    }
}

/// A request as a client would build it.
fn request(method: Method, target: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "gate.test");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

fn get(target: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    request(Method::GET, target, token)
}

fn peer(ip: &str) -> IpAddr {
    ip.parse().unwrap()
}

impl Harness {
    async fn start() -> Harness {
        Harness::with(Setup::default()).await
    }

    async fn with(setup: Setup) -> Harness {
        let stub = Stub::start().await;
        let upstream_addr = if setup.upstream_down {
            // Bound, then closed: connections are refused.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        } else {
            stub.addr
        };
        let upstream_url: http::Uri = format!("http://{upstream_addr}").parse().unwrap();
        let static_token = |token: &str, user: &str, scope: &str| StaticToken {
            token_sha256: TokenDigest::of(token),
            user_id: user.into(),
            device_id: None,
            scopes: vec![scope.into()],
        };
        let auth = AuthSettings {
            server_name: "example.org".into(),
            static_tokens: vec![
                static_token(FULL, "@alice:example.org", "urn:matrix:client:api:*"),
                static_token(DEVICE_ONLY, "@bob:example.org", "urn:matrix:client:device:ABC"),
            ],
            introspection: IntrospectionConfig {
                enabled: true,
                endpoint: Some(format!("http://{}/oauth2/introspect", stub.addr)),
                client_secret: Some(Secret::new("s3cret")),
                auth_method: ClientAuthMethod::Bearer,
                ..Default::default()
            },
            rate_limit: RateLimitConfig {
                burst: setup.burst,
                per_minute: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let metrics = Arc::new(Metrics::new());
        let auth = Authenticator::from_config(
            &auth,
            &CacheConfig::default(),
            &upstream_url,
            &metrics.registry,
        )
        .unwrap();
        let upstream = Upstream::new(&UpstreamSettings {
            url: upstream_url,
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: setup.response_header_timeout,
            host: None,
            pool_max_idle_per_host: 8,
            pool_idle_timeout: Duration::from_secs(60),
            ca_file: None,
        })
        .unwrap();
        let settings = Settings {
            max_path_bytes: 8192,
            max_header_bytes: setup.max_header_bytes,
            allow_query_token: true,
            trusted_proxies: setup.trusted_proxies,
        };
        let gateway = Gateway::new(RuleSet::builtin(), auth, upstream, settings, metrics);
        Harness {
            gateway: Arc::new(gateway),
            stub,
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        self.send_as(req, CLIENT, false).await
    }

    async fn send_from(&self, from: IpAddr, req: Request<Full<Bytes>>) -> Answer {
        self.send_as(req, from, false).await
    }

    /// One request on a fresh connection from `from`; `framed_twice` marks
    /// it as the server's framing tracker marks a head with both
    /// `Content-Length` and `Transfer-Encoding`.
    async fn send_as(&self, req: Request<Full<Bytes>>, from: IpAddr, framed_twice: bool) -> Answer {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let info = Arc::new(ConnInfo::new(
            SocketAddr::new(from, 40000),
            "http",
            Arc::new(ConnActivity::new()),
        ));
        let gateway = self.gateway.clone();
        let service = service_fn(move |mut req: Request<Incoming>| {
            if framed_twice {
                req.extensions_mut().insert(FramedTwice);
            }
            let gateway = gateway.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req, &info).await) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), service),
        );
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender.send_request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// A sample of a metric family from the gateway's registry, by labels.
    fn sample(&self, family: &str, labels: &[(&str, &str)]) -> Option<prometheus::proto::Metric> {
        let families = self.gateway.metrics.registry.gather();
        let family = families.iter().find(|f| f.name() == family)?;
        family
            .get_metric()
            .iter()
            .find(|m| {
                m.get_label().len() == labels.len()
                    && labels.iter().all(|(name, value)| {
                        m.get_label()
                            .iter()
                            .any(|l| l.name() == *name && l.value() == *value)
                    })
            })
            .cloned()
    }

    /// `scopegate_requests_total{decision, route}`.
    fn requests(&self, decision: &str, route: &str) -> u64 {
        self.sample(
            "scopegate_requests_total",
            &[("decision", decision), ("route", route)],
        )
        .map_or(0, |m| m.get_counter().get_value() as u64)
    }

    /// Every `scopegate_requests_total` sample, for "nothing else counted".
    fn requests_total(&self) -> u64 {
        let families = self.gateway.metrics.registry.gather();
        families
            .iter()
            .filter(|f| f.name() == "scopegate_requests_total")
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> u64 {
        self.sample(family, labels)
            .map_or(0, |m| m.get_histogram().get_sample_count())
    }
}

// ---------------------------------------------------------------- refusals ---

/// One refusal of each kind, in declaration order.
fn every_refusal() -> Vec<Refusal> {
    vec![
        Refusal::BadTarget(TargetError::DotSegment),
        Refusal::AmbiguousFraming,
        Refusal::HeadersTooLarge,
        Refusal::MissingToken(""),
        Refusal::AmbiguousToken(""),
        Refusal::HiddenCredential(""),
        Refusal::UnknownToken { soft_logout: false },
        Refusal::InsufficientScope {
            required: String::new(),
        },
        Refusal::NoRoute,
        Refusal::ProviderUnavailable,
        Refusal::UpstreamUnreachable,
        Refusal::UpstreamTimeout,
        Refusal::RateLimited { retry_after_s: 0 },
    ]
}

/// A request that meets a refusal, and what the client and the metrics
/// must see.
struct Case {
    setup: Setup,
    request: Request<Full<Bytes>>,
    framed_twice: bool,
    /// Invalid tokens the client sends first.
    invalid_first: u32,
    /// Wait for the upstream's response-header timeout (paused time).
    stall: bool,
    status: u16,
    errcode: &'static str,
    decision: &'static str,
    route: &'static str,
}

impl Case {
    fn new(request: Request<Full<Bytes>>) -> Case {
        Case {
            setup: Setup::default(),
            request,
            framed_twice: false,
            invalid_first: 0,
            stall: false,
            status: 0,
            errcode: "",
            decision: "",
            route: WHOAMI_ROUTE,
        }
    }

    fn expect(mut self, status: u16, errcode: &'static str, decision: &'static str) -> Case {
        (self.status, self.errcode, self.decision) = (status, errcode, decision);
        self
    }

    fn route(mut self, route: &'static str) -> Case {
        self.route = route;
        self
    }
}

/// How each refusal is met through the pipeline. The match has no wildcard:
/// a new variant does not compile until it has a case here (and a place in
/// [`every_refusal`]).
fn case(refusal: &Refusal) -> Case {
    let whoami = |token| get(WHOAMI, token);
    match refusal {
        Refusal::BadTarget(_) => Case::new(get(
            "/_matrix/client/v3/rooms/../account/whoami",
            Some(FULL),
        ))
        .expect(400, "M_UNRECOGNIZED", "bad_request")
        .route("-"),
        Refusal::AmbiguousFraming => Case {
            framed_twice: true,
            ..Case::new(whoami(Some(FULL)))
        }
        .expect(400, "M_UNRECOGNIZED", "bad_request")
        .route("-"),
        Refusal::HeadersTooLarge => {
            let mut req = whoami(Some(FULL));
            let big = HeaderValue::from_str(&"x".repeat(300)).unwrap();
            req.headers_mut().insert("x-padding", big);
            Case {
                setup: Setup {
                    max_header_bytes: 256,
                    ..Setup::default()
                },
                ..Case::new(req)
            }
            .expect(431, "M_TOO_LARGE", "bad_request")
            .route("-")
        }
        Refusal::MissingToken(_) => {
            Case::new(whoami(None)).expect(401, "M_MISSING_TOKEN", "unauthenticated")
        }
        // A percent-encoded parameter name: Twisted decodes it, others
        // would not see a token.
        Refusal::AmbiguousToken(_) => Case::new(get(&format!("{WHOAMI}?access%5Ftoken={FULL}"), None))
            .expect(400, "M_MISSING_TOKEN", "bad_request"),
        Refusal::HiddenCredential(_) => {
            let mut req = request(Method::POST, "/_matrix/client/v3/createRoom", Some(FULL));
            req.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            Case::new(req)
                .expect(400, "M_UNRECOGNIZED", "bad_request")
                .route("-")
        }
        Refusal::UnknownToken { .. } => {
            Case::new(whoami(Some(UNKNOWN))).expect(401, "M_UNKNOWN_TOKEN", "invalid_token")
        }
        Refusal::InsufficientScope { .. } => Case::new(whoami(Some(DEVICE_ONLY)))
            .expect(403, "M_FORBIDDEN", "denied"),
        Refusal::NoRoute => Case::new(get("/_matrix/nowhere", Some(FULL)))
            .expect(404, "M_UNRECOGNIZED", "denied")
            .route("unmatched"),
        Refusal::ProviderUnavailable => Case::new(whoami(Some(PROVIDER_FAILS)))
            .expect(503, "M_UNKNOWN", "provider_error"),
        Refusal::UpstreamUnreachable => Case {
            setup: Setup {
                upstream_down: true,
                ..Setup::default()
            },
            ..Case::new(whoami(Some(FULL)))
        }
        .expect(502, "M_UNKNOWN", "upstream_error"),
        Refusal::UpstreamTimeout => Case {
            stall: true,
            ..Case::new(whoami(Some(FULL)))
        }
        .expect(504, "M_UNKNOWN", "upstream_error"),
        Refusal::RateLimited { .. } => Case {
            setup: Setup {
                burst: 2,
                ..Setup::default()
            },
            invalid_first: 2,
            ..Case::new(whoami(Some(UNKNOWN)))
        }
        .expect(429, "M_LIMIT_EXCEEDED", "rate_limited"),
    }
}

#[tokio::test]
async fn every_refusal_has_its_status_errcode_and_metric_label() {
    let all = every_refusal();
    let kinds: std::collections::HashSet<_> = all.iter().map(std::mem::discriminant).collect();
    assert_eq!(kinds.len(), all.len(), "one refusal of each kind");
    for refusal in &all {
        let case = case(refusal);
        let gate = Harness::with(case.setup).await;
        for i in 0..case.invalid_first {
            let spent = gate.send(get(WHOAMI, Some(&format!("opaque_{i}")))).await;
            assert_eq!(spent.status, 401, "{refusal:?}");
        }
        let counted_before = gate.requests_total();
        let answer = if case.stall {
            gate.stub.state.stall.store(true, Ordering::SeqCst);
            // The upstream's deadline passes in paused time, not real time.
            tokio::time::pause();
            let answer = gate.send_as(case.request, CLIENT, false).await;
            tokio::time::resume();
            answer
        } else {
            gate.send_as(case.request, CLIENT, case.framed_twice).await
        };
        assert_eq!(answer.status, case.status, "{refusal:?}");
        assert_eq!(answer.errcode(), case.errcode, "{refusal:?}");
        assert!(answer.json()["error"].is_string(), "{refusal:?}");
        // A web client can read the refusal (and so refresh its token).
        assert_eq!(
            answer.headers["access-control-allow-origin"], "*",
            "{refusal:?}"
        );
        assert_eq!(answer.headers["content-type"], "application/json");
        assert_eq!(
            gate.requests(case.decision, case.route),
            1,
            "{refusal:?}: {}",
            String::from_utf8_lossy(&gate.gateway.metrics.render())
        );
        assert_eq!(gate.requests_total(), counted_before + 1, "{refusal:?}");
        assert_eq!(
            gate.histogram_count(
                "scopegate_gateway_latency_seconds",
                &[("decision", case.decision)]
            ),
            1,
            "{refusal:?}"
        );
        let reached_upstream = matches!(refusal, Refusal::UpstreamTimeout);
        assert_eq!(
            !gate.stub.seen().is_empty(),
            reached_upstream,
            "{refusal:?}"
        );
    }
}

#[tokio::test]
async fn a_scope_refusal_names_the_scopes_that_would_do() {
    let gate = Harness::start().await;
    let answer = gate.send(get(WHOAMI, Some(DEVICE_ONLY))).await;
    assert_eq!(answer.status, 403);
    let challenge = answer.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_scope\", scope=\"")
            && challenge.contains("urn:matrix:client:api:*"),
        "{challenge}"
    );
}

#[tokio::test]
async fn a_rate_limited_client_is_told_when_to_come_back() {
    let gate = Harness::with(Setup {
        burst: 1,
        ..Setup::default()
    })
    .await;
    assert_eq!(gate.send(get(WHOAMI, Some("opaque_1"))).await.status, 401);
    // Another guess: the first one's refusal is cached and costs nothing.
    assert_eq!(gate.send(get(WHOAMI, Some("opaque_1"))).await.status, 401);
    let answer = gate.send(get(WHOAMI, Some("opaque_2"))).await;
    assert_eq!(answer.status, 429);
    // One invalid token a minute: the next is paid back within the minute.
    let retry: u64 = answer.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(answer.json()["retry_after_ms"], retry * 1000);
    // A valid token from the same client is not held back.
    assert_eq!(gate.send(get(WHOAMI, Some(FULL))).await.status, 200);
}

#[tokio::test]
async fn an_unknown_token_is_not_a_soft_logout() {
    let gate = Harness::start().await;
    let answer = gate.send(get(WHOAMI, Some(UNKNOWN))).await;
    assert_eq!(answer.json()["soft_logout"], false);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_does_not_answer_in_time_gets_504_after_the_configured_timeout() {
    let gate = Harness::with(Setup {
        response_header_timeout: Duration::from_secs(7),
        ..Setup::default()
    })
    .await;
    gate.stub.state.stall.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let answer = gate.send(get(WHOAMI, Some(FULL))).await;
    assert_eq!(answer.status, 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    assert_eq!(gate.stub.seen().len(), 1, "the request did reach the homeserver");
}
