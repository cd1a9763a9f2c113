//! The introspection relay: scopegate as the homeserver's authentication
//! service.
//!
//! A homeserver that delegates token checks (Synapse's
//! `matrix_authentication_service`) would otherwise ask the provider about
//! every token a second time, cache the answer for two minutes with no way to
//! revoke it, and refuse every token without full access. Pointed here, it
//! gets its answers from the gateway's own cache and validators: one provider
//! lookup per token serves both, a token the gateway stopped believing is
//! refused at the homeserver's next question, and narrow tokens the gateway
//! enforces can be vouched for (`widen_restricted_tokens`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};

use crate::auth::http_client::HttpClient;
use crate::auth::{AuthError, Authenticator, Identity};
use crate::config::RelayConfig;
use crate::scopes::RuleSet;
use crate::scopes::FULL_ACCESS;

const UNSTABLE_FULL_ACCESS: &str = "urn:matrix:org.matrix.msc2967.client:api:*";
const DEVICE_PREFIX: &str = "urn:matrix:client:device:";
/// How long the provider's discovery document is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);

pub struct Relay {
    auth: Arc<Authenticator>,
    /// The rules serving now, swapped with the gateway's on reload.
    rules: Arc<ArcSwap<RuleSet>>,
    secret: Vec<u8>,
    server_name: String,
    public_url: String,
    widen: bool,
    discovery: Option<Uri>,
    http: HttpClient,
    cached_discovery: Mutex<Option<(std::time::Instant, Map<String, Value>)>>,
    metrics: RelayMetrics,
}

struct RelayMetrics {
    requests: IntCounterVec,
    saved: IntCounter,
}

impl Relay {
    pub fn new(
        cfg: &RelayConfig,
        secret: Vec<u8>,
        server_name: &str,
        issuer: Option<&str>,
        auth: Arc<Authenticator>,
        rules: Arc<ArcSwap<RuleSet>>,
        registry: &Registry,
    ) -> Result<Relay, String> {
        let discovery = issuer
            .map(|i| {
                format!(
                    "{}/.well-known/openid-configuration",
                    i.trim_end_matches('/')
                )
                .parse::<Uri>()
                .map_err(|e| format!("[auth] issuer: {e}"))
            })
            .transpose()?;
        let requests = IntCounterVec::new(
            Opts::new(
                "scopegate_relay_requests_total",
                "Introspection relay requests by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let saved = IntCounter::new(
            "scopegate_relay_lookups_saved_total",
            "Relay answers given without asking the identity provider.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .and_then(|_| registry.register(Box::new(saved.clone())))
            .map_err(|e| format!("relay metrics: {e}"))?;
        Ok(Relay {
            http: auth.http_client(),
            auth,
            rules,
            secret,
            server_name: server_name.to_string(),
            public_url: cfg
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", cfg.listen))
                .trim_end_matches('/')
                .to_string(),
            widen: cfg.widen_restricted_tokens,
            discovery,
            cached_discovery: Mutex::new(None),
            metrics: RelayMetrics { requests, saved },
        })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        crate::server::serve_internal(listener, shutdown, move |req| {
            let relay = self.clone();
            async move { relay.respond(req).await }
        })
        .await
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/oauth2/introspect") => self.introspect(req).await,
            (&Method::GET, "/.well-known/openid-configuration") => self.discovery().await,
            _ => reply(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        }
    }

    async fn introspect(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.authorized(req.headers()) {
            self.count("unauthorized");
            let mut response = reply(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                self.count("bad_request");
                return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
            }
        };
        // RFC 7662 §2.1: `token` is required; the hint may be ignored.
        let Some(token) = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
        else {
            self.count("bad_request");
            return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
        };
        let (result, answered_locally) = self.auth.lookup(&token).await;
        let answer = match result {
            Ok(identity) => self.active(&identity),
            Err(AuthError::Invalid { .. }) => None,
            Err(AuthError::Unavailable | AuthError::RateLimited { .. }) => {
                self.count("unavailable");
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "temporarily_unavailable"}),
                );
            }
        };
        if answered_locally {
            self.metrics.saved.inc();
        }
        match answer {
            Some(body) => {
                self.count("active");
                reply(StatusCode::OK, body)
            }
            // RFC 7662 §2.2: an inactive token is `{"active": false}` and nothing else.
            None => {
                self.count("inactive");
                reply(StatusCode::OK, json!({"active": false}))
            }
        }
    }

    /// The answer for a token the gateway believes, in MAS's field shape;
    /// `None` when the homeserver must not take it as one of its users'.
    fn active(&self, identity: &Identity) -> Option<Value> {
        let username = identity
            .user_id
            .strip_prefix('@')?
            .split_once(':')
            .filter(|(_, server)| *server == self.server_name)?
            .0;
        let mut scopes: Vec<&str> = identity.scopes.iter().collect();
        if !identity.scopes.has_full_access()
            && self.widen
            && self.rules.load().recognises(&identity.scopes)
        {
            scopes.push(FULL_ACCESS);
        }
        // Either spelling satisfies the homeserver; MAS sends both.
        if scopes.contains(&FULL_ACCESS) {
            scopes.push(UNSTABLE_FULL_ACCESS);
        }
        let device_id = identity.device_id.clone().or_else(|| {
            identity
                .scopes
                .iter()
                .find_map(|s| s.strip_prefix(DEVICE_PREFIX))
                .map(str::to_string)
        });
        let mut body = json!({
            "active": true,
            "scope": scopes.join(" "),
            "username": username,
            "sub": identity.user_id,
        });
        // The token's own remaining lifetime, as MAS gives it. Not shorter:
        // Synapse keeps an answer two minutes without asking again and
        // counts the token dead once `expires_in` has passed, so a shorter
        // value would end sessions the gateway still accepts. Without an
        // expiry (legacy, static tokens) the field is left out, as MAS does.
        if let Some(exp) = identity.expires_at {
            let left = exp.duration_since(SystemTime::now()).unwrap_or_default();
            body["expires_in"] = json!(left.as_secs().max(1));
            if let Ok(exp) = exp.duration_since(UNIX_EPOCH) {
                body["exp"] = json!(exp.as_secs());
            }
        }
        if let Some(device_id) = device_id {
            body["device_id"] = json!(device_id);
        }
        if let Some(client_id) = &identity.client_id {
            body["client_id"] = json!(client_id);
        }
        Some(body)
    }

    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(given) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        aws_lc_rs::constant_time::verify_slices_are_equal(given, &self.secret).is_ok()
    }

    /// The provider's discovery document with the introspection endpoint
    /// pointing here; without an issuer, the few fields a homeserver reads.
    async fn discovery(&self) -> Response<Full<Bytes>> {
        let mut doc = match &self.discovery {
            None => {
                let mut doc = Map::new();
                doc.insert("issuer".into(), json!(self.public_url));
                doc
            }
            Some(uri) => match self.provider_discovery(uri).await {
                Some(doc) => doc,
                None => {
                    return reply(
                        StatusCode::BAD_GATEWAY,
                        json!({"error": "the identity provider's discovery document is unavailable"}),
                    )
                }
            },
        };
        doc.insert(
            "introspection_endpoint".into(),
            json!(format!("{}/oauth2/introspect", self.public_url)),
        );
        // Synapse's loader requires it; MAS always has one.
        if !doc.contains_key("account_management_uri") {
            let account = doc.get("issuer").cloned().unwrap_or(json!(self.public_url));
            doc.insert("account_management_uri".into(), account);
        }
        reply(StatusCode::OK, Value::Object(doc))
    }

    async fn provider_discovery(&self, uri: &Uri) -> Option<Map<String, Value>> {
        let mut cached = self.cached_discovery.lock().await;
        if let Some((at, doc)) = cached.as_ref() {
            if at.elapsed() < DISCOVERY_TTL {
                return Some(doc.clone());
            }
        }
        match self
            .http
            .get_json::<Map<String, Value>>(uri, Duration::from_secs(5), 256 * 1024)
            .await
        {
            Ok(doc) => {
                *cached = Some((std::time::Instant::now(), doc.clone()));
                Some(doc)
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay: cannot fetch the provider's discovery document");
                cached.as_ref().map(|(_, doc)| doc.clone())
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics.requests.with_label_values(&[result]).inc();
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
