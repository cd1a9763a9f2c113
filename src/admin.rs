//! The admin listener, on its own address so it is never exposed with the
//! public one: metrics for Prometheus, liveness and readiness for
//! orchestrators, and token-cache eviction for operators. It has no
//! authentication of its own: bind it to loopback or a private network.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstream;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub upstream: Arc<Upstream>,
    pub auth: Arc<Authenticator>,
    /// How recently the upstream must have answered for `/readyz`.
    pub readiness_window: Duration,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        crate::server::serve_internal(listener, shutdown, move |req| {
            let admin = self.clone();
            async move { admin.respond(req).await }
        })
        .await
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/cache/evict") => self.evict(req).await,
            (&Method::GET, "/metrics") => {
                let body = self.metrics.render();
                text(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.upstream.seen_within(self.readiness_window) {
                    text(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "upstream not reachable recently\n",
                    )
                }
            }
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}

/// `POST /cache/evict` with one of `{"token": "…"}`, `{"user_id": "@…"}`
/// or `{"all": true}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Eviction {
    token: Option<String>,
    user_id: Option<String>,
    #[serde(default)]
    all: bool,
}

impl Admin {
    async fn evict(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        const LIMIT: usize = 64 * 1024;
        let body = match Limited::new(req.into_body(), LIMIT).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "text/plain",
                    "body too large\n",
                )
            }
        };
        let auth = &self.auth;
        let evicted = match serde_json::from_slice::<Eviction>(&body) {
            Ok(Eviction { token: Some(token), user_id: None, all: false }) => {
                auth.revoke_token(&token, None).await;
                "token"
            }
            Ok(Eviction { token: None, user_id: Some(user), all: false }) => {
                auth.revoke_user(&user);
                "user"
            }
            Ok(Eviction { token: None, user_id: None, all: true }) => {
                auth.evict_all();
                "all"
            }
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "expected one of {\"token\": \"…\"}, {\"user_id\": \"@user:server\"}, {\"all\": true}\n",
                )
            }
        };
        auth.run_pending_tasks().await;
        tracing::info!(evicted, "cache eviction requested on the admin listener");
        let body = serde_json::json!({"evicted": evicted, "entries": auth.entry_count()});
        text(StatusCode::OK, "application/json", body.to_string())
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// Keeps readiness current while traffic is quiet.
pub async fn probe_upstream(
    upstream: Arc<Upstream>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if !upstream.seen_within(every) {
            upstream.probe().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}
