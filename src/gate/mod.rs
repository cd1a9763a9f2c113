//! The request pipeline, phase by phase, in the order a request meets them:
//!
//! 1. [`canonicalize`] — refuse targets two parsers could read differently;
//! 2. route — find the rule for (method, raw path), default deny;
//! 3. [`Gateway::authenticate`] — who is calling (token → identity, cached);
//! 4. authorize — may this identity use this route, given the path's values;
//! 5. [`Gateway::forward`] — stream the request up and the response back;
//! 6. [`Gateway::record`] — metrics and one access-log line, never a token.
//!
//! Each phase is a small function; [`Gateway::handle`] only strings them
//! together, so this file reads as the path of a request.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HeaderValue, AUTHORIZATION, HOST};
use http::{Method, Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use ipnet::IpNet;
use prometheus::{Histogram, IntCounter};

use crate::auth::extract::{self, Credential};
use crate::auth::{AuthError, Authenticator, Identity};
use crate::canonical::canonicalize;
use crate::metrics::Metrics;
mod refusal;
#[cfg(test)]
mod tests;

pub use refusal::{cors, matrix_parser_refusal, Disposition, Refusal};

use crate::proxy::body::{ConnActivity, GateBody, InFlight};
use crate::proxy::headers::{self, ClientView};
use crate::proxy::upstream::{Upstream, UpstreamError};
use crate::scopes::{self, Access, RuleSet};

/// What the gateway knows about the connection a request came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as a header value, for `X-Forwarded-For`.
    pub peer_value: HeaderValue,
    pub proto: &'static str,
    pub activity: Arc<ConnActivity>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, proto: &'static str, activity: Arc<ConnActivity>) -> Self {
        let peer_value =
            HeaderValue::try_from(peer.ip().to_string()).expect("an IP is a valid value");
        ConnInfo {
            peer,
            peer_value,
            proto,
            activity,
        }
    }
}

/// Request-handling settings from `[server]`.
pub struct Settings {
    pub max_path_bytes: usize,
    pub max_header_bytes: usize,
    pub allow_query_token: bool,
    pub trusted_proxies: Vec<IpNet>,
}

/// The rules serving now, and the metrics of their routes.
struct Serving {
    rules: Arc<RuleSet>,
    /// Per rule, the handles a forwarded request records into, found by
    /// label on first use rather than on every request.
    forwarded: Box<[OnceLock<RouteMetrics>]>,
}

struct RouteMetrics {
    allowed: IntCounter,
    upstream_latency: Histogram,
}

impl Serving {
    fn new(rules: Arc<RuleSet>) -> Self {
        let forwarded = (0..rules.rule_count()).map(|_| OnceLock::new()).collect();
        Serving { rules, forwarded }
    }

    fn route_metrics(&self, rule: usize, route: &str, metrics: &Metrics) -> &RouteMetrics {
        self.forwarded[rule].get_or_init(|| RouteMetrics {
            allowed: metrics
                .requests
                .with_label_values(&[Disposition::Allowed.as_str(), route]),
            upstream_latency: metrics.upstream_latency.with_label_values(&[route]),
        })
    }
}

pub struct Gateway {
    serving: ArcSwap<Serving>,
    auth: Arc<Authenticator>,
    upstream: Arc<Upstream>,
    settings: Settings,
    pub metrics: Arc<Metrics>,
    /// `gateway_latency` for each decision, looked up once rather than by
    /// label on every request.
    latency_by_decision: [Histogram; Disposition::ALL.len()],
}

/// Makes the request the gateway judges the request the homeserver gets:
/// hop-by-hop fields go before anything reads the headers, and what the
/// homeserver could read a credential from besides the token the gateway
/// checks is refused (docs/auth.md, "One token per request").
fn one_view(req: &mut Request<Incoming>) -> Result<(), Refusal> {
    if let Some(name) = headers::connection_names_guarded(req.headers()) {
        tracing::debug!(name, "Connection names a field the gateway reads");
        return Err(Refusal::HiddenCredential(
            "Connection must not name Authorization, Host, Content-Type, Content-Length, Transfer-Encoding or a forwarding header.",
        ));
    }
    if let Some(problem) = extract::body_refusal(req.headers()) {
        return Err(Refusal::HiddenCredential(problem));
    }
    headers::strip_hop_by_hop(req.headers_mut());
    Ok(())
}

fn credential_refusal(e: extract::ExtractError) -> Refusal {
    if e.synapse_refuses_too() {
        Refusal::MissingToken(e.message())
    } else {
        Refusal::AmbiguousToken(e.message())
    }
}

/// `POST …/logout` ends one session; `POST …/logout/all` every session of
/// the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logout {
    One,
    All,
}

impl Logout {
    fn of(method: &Method, path: &str) -> Option<Logout> {
        if method != Method::POST || !path.starts_with("/_matrix/client/") {
            return None;
        }
        if path.ends_with("/logout/all") {
            Some(Logout::All)
        } else if path.ends_with("/logout") {
            Some(Logout::One)
        } else {
            None
        }
    }
}

/// What the pipeline decided, for the record phase.
struct Outcome<'r> {
    response: Response<GateBody>,
    decision: Disposition,
    route: &'r str,
    /// The matched rule's index, for a forwarded request.
    forwarded_by: Option<usize>,
    user: Option<Arc<Identity>>,
    upstream_time: Option<Duration>,
}

impl<'r> Outcome<'r> {
    fn refused(refusal: Refusal, route: &'r str, user: Option<Arc<Identity>>) -> Self {
        Outcome {
            decision: refusal.decision(),
            response: refusal.into_response(),
            route,
            forwarded_by: None,
            user,
            upstream_time: None,
        }
    }
}

impl Gateway {
    pub fn new(
        rules: Arc<RuleSet>,
        auth: Arc<Authenticator>,
        upstream: Arc<Upstream>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let latency_by_decision = Disposition::ALL.map(|decision| {
            metrics
                .gateway_latency
                .with_label_values(&[decision.as_str()])
        });
        Gateway {
            latency_by_decision,
            serving: ArcSwap::from_pointee(Serving::new(rules)),
            auth,
            upstream,
            settings,
            metrics,
        }
    }

    /// Replaces the rule set; requests in flight finish under the old one.
    pub fn swap_rules(&self, rules: Arc<RuleSet>) {
        self.serving.store(Arc::new(Serving::new(rules)));
    }

    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<GateBody> {
        let started = Instant::now();
        let guard = InFlight::start(conn.activity.clone(), self.metrics.in_flight.clone());
        // A cheap clone: standard methods are inline.
        let method = req.method().clone();
        // A copy, and only for the access log: a view of the URI would keep
        // hyper's read buffer alive for as long as a long-poll waits.
        let path = tracing::enabled!(target: "scopegate::access", tracing::Level::INFO)
            .then(|| Box::<str>::from(req.uri().path()));
        let serving = self.serving.load_full();
        let outcome = self.process(req, conn, &serving.rules).await;
        let path = path.as_deref().unwrap_or("-");
        self.record(&outcome, &serving, &method, path, conn, started.elapsed());
        let (parts, body) = outcome.response.into_parts();
        Response::from_parts(parts, body.with_guard(guard))
    }

    async fn process<'r>(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        rules: &'r RuleSet,
    ) -> Outcome<'r> {
        // 1. canonicalize
        if headers::header_bytes(req.headers()) > self.settings.max_header_bytes {
            return Outcome::refused(Refusal::HeadersTooLarge, "-", None);
        }
        if let Err(refusal) = one_view(&mut req) {
            return Outcome::refused(refusal, "-", None);
        }
        let target = match canonicalize(req.uri(), req.version(), self.settings.max_path_bytes) {
            Ok(target) => target,
            Err(e) => return Outcome::refused(Refusal::BadTarget(e), "-", None),
        };
        // 2. route
        let route = rules.route(req.method(), target.path);
        let label = route.label();
        let rule = route.index();
        let access = route.access();
        let credential = match access {
            Access::Unmatched => return Outcome::refused(Refusal::NoRoute, label, None),
            // Signed with X-Matrix, not a bearer token: the homeserver's
            // federation servlets read no access token.
            Access::Federation => Credential::Absent,
            _ => match extract::credential(
                req.headers(),
                target.query,
                self.settings.allow_query_token,
            ) {
                Ok(credential) => credential,
                Err(e) => return Outcome::refused(credential_refusal(e), label, None),
            },
        };
        // Only a header token can be taken off a request: the target is
        // forwarded as it came.
        let in_header = req.headers().contains_key(AUTHORIZATION);
        let mut take_header = false;
        let token = match (credential, access) {
            // CORS preflights carry no credentials (Fetch standard, §4.8), and
            // Synapse answers them without reading one (`OptionsResource`);
            // whatever came along is not the homeserver's to see.
            _ if req.method() == Method::OPTIONS => {
                take_header = in_header;
                None
            }
            // An X-Matrix header stays; a bearer token is nobody's business.
            (_, Access::Federation) => {
                take_header = req
                    .headers()
                    .get(AUTHORIZATION)
                    .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
                None
            }
            (Credential::Absent, Access::Protected) => {
                return Outcome::refused(
                    Refusal::MissingToken("Missing access token."),
                    label,
                    None,
                )
            }
            (Credential::Absent, _) => None,
            // A token that is present must be valid, even where none is
            // needed: the homeserver acts on it.
            (Credential::Token(token), _) => Some(token),
        };
        let mut user = None;
        let mut logout = None;
        if let Some(token) = token {
            // 3. authenticate
            match self.authenticate(&token, req.headers(), conn).await {
                Ok(identity) => {
                    logout = Logout::of(req.method(), target.path)
                        .map(|kind| (kind, token.into_owned()));
                    // 4. authorize (a public route asks only for a valid token)
                    if access != Access::Public {
                        if let scopes::Decision::Deny(denial) =
                            rules.authorize(&route, &identity.scopes)
                        {
                            let refusal = Refusal::InsufficientScope {
                                required: denial.required_scopes(),
                            };
                            return Outcome::refused(refusal, label, Some(identity));
                        }
                    }
                    user = Some(identity);
                }
                // A public route needs no token: one the gateway cannot vouch
                // for is taken off, so a client refreshing or logging in with
                // a stale token still gets through, and the homeserver never
                // acts on it.
                Err(_) if access == Access::Public && in_header => take_header = true,
                Err(refusal) => return Outcome::refused(refusal, label, None),
            }
        }
        if take_header {
            req.headers_mut().remove(AUTHORIZATION);
        }
        // 5. forward
        let sent = Instant::now();
        match self.forward(req, conn).await {
            Ok(response) => {
                if let (Some((kind, token)), Some(identity)) = (logout, &user) {
                    if response.status().is_success() {
                        self.observe_logout(kind, &token, identity).await;
                    }
                }
                Outcome {
                    response,
                    decision: Disposition::Allowed,
                    route: label,
                    forwarded_by: rule,
                    user,
                    upstream_time: Some(sent.elapsed()),
                }
            }
            Err(UpstreamError::Unreachable) => {
                Outcome::refused(Refusal::UpstreamUnreachable, label, user)
            }
            Err(UpstreamError::Timeout) => Outcome::refused(Refusal::UpstreamTimeout, label, user),
        }
    }

    async fn authenticate(
        &self,
        token: &str,
        headers: &http::HeaderMap,
        conn: &ConnInfo,
    ) -> Result<Arc<Identity>, Refusal> {
        let client = self.client_ip(headers, conn.peer.ip());
        match self.auth.authenticate_from(token, client).await {
            Ok(identity) => Ok(identity),
            Err(AuthError::Invalid { soft_logout }) => Err(Refusal::UnknownToken { soft_logout }),
            Err(AuthError::Unavailable) => Err(Refusal::ProviderUnavailable),
            Err(AuthError::RateLimited { retry_after }) => Err(Refusal::RateLimited {
                retry_after_s: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            }),
        }
    }

    /// The homeserver ended a session: the gateway must not go on
    /// honouring its token from cache.
    async fn observe_logout(&self, kind: Logout, token: &str, identity: &Identity) {
        self.auth.revoke_token(token, Some(identity)).await;
        if kind == Logout::All {
            self.auth.revoke_user(&identity.user_id);
        }
        tracing::info!(user = %identity.user_id, all = kind == Logout::All, "logout observed; token revoked");
    }

    /// The address rate limits apply to: the peer, or, behind trusted
    /// proxies, the nearest address in `X-Forwarded-For` that is not one.
    fn client_ip(&self, headers: &http::HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        // Split as bytes: a line the client began may hold bytes that are
        // not text, and the addresses proxies appended to it still count.
        let chain: Vec<&[u8]> = headers
            .get_all(&headers::X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .collect();
        // Right to left: each trusted proxy vouches for the hop before it.
        chain
            .iter()
            .rev()
            .map_while(|hop| std::str::from_utf8(hop).ok()?.trim().parse::<IpAddr>().ok())
            .find(|hop| !self.is_trusted(*hop))
            .unwrap_or(peer)
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<GateBody>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let headers = &mut parts.headers;
        headers::ensure_host(headers, parts.uri.authority());
        let view = ClientView {
            peer: &conn.peer_value,
            trusted: self.is_trusted(conn.peer.ip()),
            proto: conn.proto,
            // Only a `Host` that is visible ASCII is repeated upstream.
            host: headers.get(HOST).filter(|h| h.to_str().is_ok()).cloned(),
        };
        headers::set_forwarded(headers, view);
        if let Some(host) = self.upstream.host_override() {
            headers.insert(HOST, host.clone());
        }
        // The upstream connection is HTTP/1.1 whatever the client spoke.
        parts.version = http::Version::HTTP_11;
        let request = Request::from_parts(parts, Either::Left(body));

        let response = self.upstream.send(request).await?;
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, GateBody::upstream(body)))
    }

    fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    }

    fn record(
        &self,
        outcome: &Outcome<'_>,
        serving: &Serving,
        method: &Method,
        path: &str,
        conn: &ConnInfo,
        elapsed: Duration,
    ) {
        let decision = outcome.decision.as_str();
        let own = elapsed.saturating_sub(outcome.upstream_time.unwrap_or_default());
        self.latency_by_decision[outcome.decision as usize].observe(own.as_secs_f64());
        match (outcome.forwarded_by, outcome.upstream_time) {
            (Some(rule), Some(upstream)) => {
                let route = serving.route_metrics(rule, outcome.route, &self.metrics);
                route.allowed.inc();
                route.upstream_latency.observe(upstream.as_secs_f64());
            }
            _ => self
                .metrics
                .requests
                .with_label_values(&[decision, outcome.route])
                .inc(),
        }
        // The path never holds a token; the query may (`access_token`), so
        // it is not logged.
        tracing::info!(
            target: "scopegate::access",
            peer = %conn.peer.ip(),
            method = %method,
            path,
            route = outcome.route,
            status = outcome.response.status().as_u16(),
            decision,
            user = outcome.user.as_ref().map(|u| u.user_id.as_str()).unwrap_or("-"),
            upstream_ms = outcome.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
            total_ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
}
