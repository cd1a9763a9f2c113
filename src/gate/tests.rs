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
use crate::canonical::TargetError;
use crate::config::{
    AuthSettings, CacheConfig, ClientAuthMethod, IntrospectionConfig, RateLimitConfig, Secret,
    StaticToken, TokenDigest,
};
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
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
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
                static_token(
                    DEVICE_ONLY,
                    "@bob:example.org",
                    "urn:matrix:client:device:ABC",
                ),
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
        let gateway = Gateway::new(
            Arc::new(RuleSet::builtin()),
            Arc::new(auth),
            Arc::new(upstream),
            settings,
            metrics,
        );
        Harness {
            gateway: Arc::new(gateway),
            stub,
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        self.send_from(CLIENT, req).await
    }

    /// One request on a fresh connection from `from`.
    async fn send_from(&self, from: IpAddr, req: Request<Full<Bytes>>) -> Answer {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let info = Arc::new(ConnInfo::new(
            SocketAddr::new(from, 40000),
            "http",
            Arc::new(ConnActivity::new()),
        ));
        let gateway = self.gateway.clone();
        let service = service_fn(move |req: Request<Incoming>| {
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
        Refusal::AmbiguousToken(_) => Case::new(get(
            &format!("{WHOAMI}?access%5Ftoken={FULL}"),
            None,
        ))
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
        Refusal::InsufficientScope { .. } => {
            Case::new(whoami(Some(DEVICE_ONLY))).expect(403, "M_FORBIDDEN", "denied")
        }
        Refusal::NoRoute => Case::new(get("/_matrix/nowhere", Some(FULL)))
            .expect(404, "M_UNRECOGNIZED", "denied")
            .route("unmatched"),
        Refusal::ProviderUnavailable => {
            Case::new(whoami(Some(PROVIDER_FAILS))).expect(503, "M_UNKNOWN", "provider_error")
        }
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
            let answer = gate.send_from(CLIENT, case.request).await;
            tokio::time::resume();
            answer
        } else {
            gate.send_from(CLIENT, case.request).await
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
    let retry: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
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
    assert_eq!(
        gate.stub.seen().len(),
        1,
        "the request did reach the homeserver"
    );
}

// ---------------------------------------------------------- optional token ---

/// An `optional` route any valid token may use (`allow = [[]]`).
const VERSIONS: &str = "/_matrix/client/versions";
/// An `optional` route that asks full access of a token.
const PASSWORD: &str = "/_matrix/client/v3/account/password";

#[tokio::test]
async fn an_optional_route_without_a_token_is_forwarded_without_one() {
    let gate = Harness::start().await;
    let answer = gate.send(get(VERSIONS, None)).await;
    assert_eq!(answer.status, 200);
    let seen = gate.stub.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, VERSIONS);
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(gate.stub.introspections(), 0);
}

#[tokio::test]
async fn an_optional_route_forwards_a_valid_token_with_the_request() {
    let gate = Harness::start().await;
    let answer = gate.send(get(VERSIONS, Some(INTROSPECTED))).await;
    assert_eq!(answer.status, 200);
    let seen = gate.stub.seen();
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {INTROSPECTED}")
    );
}

#[tokio::test]
async fn an_optional_route_refuses_a_token_the_gateway_cannot_vouch_for() {
    let gate = Harness::start().await;
    // The homeserver would act on it: a token present must be valid.
    let unknown = gate.send(get(VERSIONS, Some(UNKNOWN))).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.errcode(), "M_UNKNOWN_TOKEN");
    // Nor is it passed on when the provider cannot say.
    let unchecked = gate.send(get(VERSIONS, Some(PROVIDER_FAILS))).await;
    assert_eq!(unchecked.status, 503);
    assert!(gate.stub.seen().is_empty());
}

#[tokio::test]
async fn an_optional_route_authorizes_a_token_that_is_present() {
    let gate = Harness::start().await;
    let narrow = gate
        .send(request(Method::POST, PASSWORD, Some(DEVICE_ONLY)))
        .await;
    assert_eq!(narrow.status, 403);
    assert_eq!(narrow.errcode(), "M_FORBIDDEN");
    let anonymous = gate.send(request(Method::POST, PASSWORD, None)).await;
    assert_eq!(anonymous.status, 200);
    assert_eq!(gate.stub.seen().len(), 1);
}

#[tokio::test]
async fn a_public_route_takes_off_a_header_token_it_cannot_vouch_for() {
    let gate = Harness::start().await;
    // A client refreshing with a stale access token still gets through.
    let refresh = "/_matrix/client/v3/refresh";
    let answer = gate
        .send(request(Method::POST, refresh, Some(UNKNOWN)))
        .await;
    assert_eq!(answer.status, 200);
    let seen = gate.stub.seen();
    assert_eq!(seen[0].path, refresh);
    assert!(!seen[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_public_route_refuses_a_query_token_it_cannot_vouch_for() {
    let gate = Harness::start().await;
    // The target is forwarded as it came: the token could not be taken off.
    let target = format!("/_matrix/client/v3/refresh?access_token={UNKNOWN}");
    let answer = gate.send(request(Method::POST, &target, None)).await;
    assert_eq!(answer.status, 401);
    assert!(gate.stub.seen().is_empty());
}

// ---------------------------------------------------------- CORS preflight ---

#[tokio::test]
async fn a_preflight_is_forwarded_without_its_authorization_and_unchecked() {
    let gate = Harness::start().await;
    let answer = gate
        .send(request(Method::OPTIONS, WHOAMI, Some(UNKNOWN)))
        .await;
    // The homeserver answers it (Synapse's OptionsResource).
    assert_eq!(answer.status, 200);
    let seen = gate.stub.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::OPTIONS);
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(gate.stub.introspections(), 0, "no token was validated");
    assert_eq!(gate.requests("allowed", "/_matrix/client/{rest..}"), 1);
}

#[tokio::test]
async fn a_preflight_with_a_valid_token_loses_it_too() {
    let gate = Harness::start().await;
    let answer = gate
        .send(request(Method::OPTIONS, WHOAMI, Some(FULL)))
        .await;
    assert_eq!(answer.status, 200);
    assert!(!gate.stub.seen()[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_preflight_with_an_ambiguous_credential_is_refused() {
    let gate = Harness::start().await;
    // Header and query token together: Synapse refuses that too.
    let target = format!("{WHOAMI}?access_token={FULL}");
    let answer = gate
        .send(request(Method::OPTIONS, &target, Some(FULL)))
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.errcode(), "M_MISSING_TOKEN");
    assert!(gate.stub.seen().is_empty());
}

#[tokio::test]
async fn a_preflight_where_no_rule_routes_is_refused() {
    let gate = Harness::start().await;
    let answer = gate
        .send(request(Method::OPTIONS, "/.well-known/matrix/client", None))
        .await;
    assert_eq!(answer.status, 404);
    assert!(gate.stub.seen().is_empty());
}

#[tokio::test]
async fn federation_keeps_its_signature_and_loses_a_bearer_token() {
    let gate = Harness::start().await;
    let path = "/_matrix/federation/v1/version";
    let mut signed = request(Method::GET, path, None);
    signed.headers_mut().insert(
        "authorization",
        HeaderValue::from_static("X-Matrix origin=\"other.example\",key=\"ed25519:1\",sig=\"x\""),
    );
    assert_eq!(gate.send(signed).await.status, 200);
    // Not validated: the homeserver checks the signature, and reads no token.
    assert_eq!(gate.send(get(path, Some(UNKNOWN))).await.status, 200);
    let seen = gate.stub.seen();
    assert!(seen[0].headers["authorization"]
        .as_bytes()
        .starts_with(b"X-Matrix "));
    assert!(!seen[1].headers.contains_key("authorization"));
    assert_eq!(gate.stub.introspections(), 0);
}

// ------------------------------------------------------------------ logout ---

fn logout(token: &str) -> Request<Full<Bytes>> {
    request(Method::POST, "/_matrix/client/v3/logout", Some(token))
}

#[tokio::test]
async fn a_token_logged_out_through_the_gateway_is_refused_afterwards() {
    let gate = Harness::start().await;
    assert_eq!(gate.send(get(WHOAMI, Some(INTROSPECTED))).await.status, 200);
    assert_eq!(gate.send(logout(INTROSPECTED)).await.status, 200);
    // The provider still says active; the gateway saw the session end.
    let after = gate.send(get(WHOAMI, Some(INTROSPECTED))).await;
    assert_eq!(after.status, 401);
    assert_eq!(after.errcode(), "M_UNKNOWN_TOKEN");
    assert_eq!(gate.stub.seen().len(), 2, "whoami and logout only");
}

#[tokio::test]
async fn a_logout_the_homeserver_refused_leaves_the_token_valid() {
    let gate = Harness::start().await;
    let mut refused = logout(INTROSPECTED);
    refused
        .headers_mut()
        .insert("x-stub-status", HeaderValue::from_static("500"));
    assert_eq!(gate.send(refused).await.status, 500);
    assert_eq!(gate.send(get(WHOAMI, Some(INTROSPECTED))).await.status, 200);
}

#[tokio::test]
async fn a_token_that_logged_out_everywhere_is_refused_afterwards() {
    let gate = Harness::start().await;
    let all = request(
        Method::POST,
        "/_matrix/client/v3/logout/all",
        Some(INTROSPECTED),
    );
    assert_eq!(gate.send(all).await.status, 200);
    assert_eq!(gate.send(get(WHOAMI, Some(INTROSPECTED))).await.status, 401);
}

#[tokio::test]
async fn a_static_token_outlives_a_logout() {
    // Static tokens are config: an operator removes them there (docs/auth.md).
    let gate = Harness::start().await;
    assert_eq!(gate.send(logout(FULL)).await.status, 200);
    assert_eq!(gate.send(get(WHOAMI, Some(FULL))).await.status, 200);
}

// --------------------------------------------------------------- client_ip ---

fn trusting(proxies: &[&str]) -> Setup {
    Setup {
        trusted_proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
        ..Setup::default()
    }
}

fn forwarded_for(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(&headers::X_FORWARDED_FOR, value.parse().unwrap());
    }
    headers
}

#[tokio::test]
async fn a_peer_that_is_not_trusted_is_the_client_whatever_it_forwards() {
    let gate = Harness::with(trusting(&["10.0.0.0/8"])).await;
    let headers = forwarded_for(&["198.51.100.1"]);
    assert_eq!(gate.gateway.client_ip(&headers, CLIENT), CLIENT);
    // No trusted proxies at all: the same.
    let gate = Harness::start().await;
    assert_eq!(
        gate.gateway.client_ip(&headers, peer("10.0.0.1")),
        peer("10.0.0.1")
    );
}

#[tokio::test]
async fn behind_trusted_proxies_the_client_is_the_nearest_untrusted_hop() {
    let gate = Harness::with(trusting(&["10.0.0.0/8", "fd00::/8"])).await;
    let ip =
        |values: &[&str], from: &str| gate.gateway.client_ip(&forwarded_for(values), peer(from));
    assert_eq!(ip(&["198.51.100.1"], "10.0.0.1"), peer("198.51.100.1"));
    // Right to left through the trusted hops; what lies further left is
    // the client's to write, so a forged first entry is not believed.
    assert_eq!(
        ip(&["192.0.2.66, 198.51.100.1, 10.0.0.2"], "10.0.0.1"),
        peer("198.51.100.1")
    );
    // Several header lines are one list, in order.
    assert_eq!(
        ip(&["192.0.2.66", "198.51.100.1", "10.0.0.2"], "10.0.0.1"),
        peer("198.51.100.1")
    );
    assert_eq!(
        ip(&["2001:db8::1, fd00::2"], "fd00::1"),
        peer("2001:db8::1")
    );
    // An IPv4 peer on a dual-stack socket is still the trusted proxy.
    assert_eq!(
        ip(&["198.51.100.1"], "::ffff:10.0.0.1"),
        peer("198.51.100.1")
    );
    // Nothing forwarded, or only trusted hops: the peer.
    assert_eq!(ip(&[], "10.0.0.1"), peer("10.0.0.1"));
    assert_eq!(ip(&["10.0.0.3, 10.0.0.2"], "10.0.0.1"), peer("10.0.0.1"));
}

#[tokio::test]
async fn a_malformed_hop_ends_the_walk_at_the_peer() {
    let gate = Harness::with(trusting(&["10.0.0.0/8"])).await;
    let ip = |values: &[&str]| {
        gate.gateway
            .client_ip(&forwarded_for(values), peer("10.0.0.1"))
    };
    // Nothing past an entry that is not an address is believed: the
    // (shared) proxy address is the client then, never a forged one.
    for chain in [
        "198.51.100.1, unknown, 10.0.0.2",
        "198.51.100.1, garbage",
        "198.51.100.1:4711",
        "[2001:db8::1]",
        "",
    ] {
        assert_eq!(ip(&[chain]), peer("10.0.0.1"), "{chain:?}");
    }
    // Spaces around an entry are not malformed.
    assert_eq!(ip(&["  198.51.100.1 ,10.0.0.2 "]), peer("198.51.100.1"));
}

#[tokio::test]
async fn bytes_a_client_writes_left_of_its_address_do_not_hide_it() {
    let gate = Harness::with(trusting(&["10.0.0.0/8"])).await;
    // A proxy that appends to the client's own line (nginx's
    // `$proxy_add_x_forwarded_for`) passes on whatever bytes came first.
    let mut headers = HeaderMap::new();
    headers.insert(
        &headers::X_FORWARDED_FOR,
        HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.1").unwrap(),
    );
    assert_eq!(
        gate.gateway.client_ip(&headers, peer("10.0.0.1")),
        peer("198.51.100.1")
    );
}

/// An invalid token, with `X-Forwarded-For: client`.
fn invalid_from(client: &str, token: &str) -> Request<Full<Bytes>> {
    let mut req = get(WHOAMI, Some(token));
    req.headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    req
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_invalid_token_budget() {
    let gate = Harness::with(Setup {
        burst: 1,
        ..trusting(&["10.0.0.0/8"])
    })
    .await;
    let proxy = peer("10.0.0.1");
    let send = |client, token| gate.send_from(proxy, invalid_from(client, token));
    assert_eq!(send("198.51.100.1", "opaque_1").await.status, 401);
    assert_eq!(send("198.51.100.1", "opaque_2").await.status, 429);
    // Another client behind the same proxy is not held back.
    assert_eq!(send("198.51.100.2", "opaque_3").await.status, 401);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_spread_its_guesses_over_forged_addresses() {
    let gate = Harness::with(Setup {
        burst: 1,
        ..trusting(&["10.0.0.0/8"])
    })
    .await;
    let send = |client, token| gate.send_from(CLIENT, invalid_from(client, token));
    assert_eq!(send("198.51.100.1", "opaque_1").await.status, 401);
    assert_eq!(send("198.51.100.2", "opaque_2").await.status, 429);
}

// ------------------------------------------------------------------ record ---

#[tokio::test]
async fn an_allowed_request_is_counted_under_its_route_with_its_upstream_time() {
    let gate = Harness::start().await;
    assert_eq!(gate.send(get(WHOAMI, Some(FULL))).await.status, 200);
    assert_eq!(gate.requests("allowed", WHOAMI_ROUTE), 1);
    assert_eq!(gate.requests_total(), 1);
    assert_eq!(
        gate.histogram_count(
            "scopegate_upstream_latency_seconds",
            &[("route", WHOAMI_ROUTE)]
        ),
        1
    );
    assert_eq!(
        gate.histogram_count(
            "scopegate_gateway_latency_seconds",
            &[("decision", "allowed")]
        ),
        1
    );
    // Served and read to the end: nothing left in flight.
    assert_eq!(gate.gateway.metrics.in_flight.get(), 0);
}

#[tokio::test]
async fn a_refused_request_is_counted_under_its_decision_without_upstream_time() {
    let gate = Harness::start().await;
    assert_eq!(gate.send(get(WHOAMI, Some(FULL))).await.status, 200);
    assert_eq!(gate.send(get(WHOAMI, None)).await.status, 401);
    assert_eq!(gate.requests("unauthenticated", WHOAMI_ROUTE), 1);
    assert_eq!(gate.requests("allowed", WHOAMI_ROUTE), 1);
    assert_eq!(gate.requests_total(), 2);
    // The refusal never went upstream: the route's upstream time is the
    // allowed request's alone.
    assert_eq!(
        gate.histogram_count(
            "scopegate_upstream_latency_seconds",
            &[("route", WHOAMI_ROUTE)]
        ),
        1
    );
    assert_eq!(
        gate.histogram_count(
            "scopegate_gateway_latency_seconds",
            &[("decision", "unauthenticated")]
        ),
        1
    );
}

#[tokio::test]
async fn an_upstream_error_status_is_still_an_allowed_request() {
    // The decision is the gateway's; the homeserver's answer is its own.
    let gate = Harness::start().await;
    let mut req = get(WHOAMI, Some(FULL));
    req.headers_mut()
        .insert("x-stub-status", HeaderValue::from_static("500"));
    assert_eq!(gate.send(req).await.status, 500);
    assert_eq!(gate.requests("allowed", WHOAMI_ROUTE), 1);
    assert_eq!(gate.requests_total(), 1);
}

#[tokio::test]
async fn rules_swapped_in_count_their_routes_afresh() {
    let gate = Harness::start().await;
    assert_eq!(gate.send(get(WHOAMI, Some(FULL))).await.status, 200);
    gate.gateway.swap_rules(Arc::new(RuleSet::builtin()));
    assert_eq!(gate.send(get(WHOAMI, Some(FULL))).await.status, 200);
    // Same route, same series: a reload does not reset or split it.
    assert_eq!(gate.requests("allowed", WHOAMI_ROUTE), 2);
}
