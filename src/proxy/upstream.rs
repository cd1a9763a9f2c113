//! The homeserver side: one pooled keep-alive client, bodies streamed both
//! ways, and failures mapped to what a client can act on (502 vs 504).

use std::error::Error as _;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::UpstreamConfig;

/// What the client sends upstream: a client's streamed body, or nothing
/// (readiness probes).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Refused, reset, TLS or protocol failure: 502.
    Unreachable,
    /// No response headers in time: 504.
    Timeout,
}

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    scheme: Scheme,
    authority: Authority,
    host_override: Option<HeaderValue>,
    response_header_timeout: Duration,
    /// Unix milliseconds of the last response from the upstream, any status.
    last_seen_ms: AtomicU64,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, ca_file: Option<&std::path::Path>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout()));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(cfg.pool_idle_timeout_s))
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(connector);

        let url = &cfg.url.0;
        let host_override = cfg
            .host
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| "upstream.host is not a valid header value".to_string())?;
        Ok(Upstream {
            client,
            scheme: url.scheme().cloned().expect("validated at load"),
            authority: url.authority().cloned().expect("validated at load"),
            host_override,
            response_header_timeout: cfg.response_header_timeout(),
            last_seen_ms: AtomicU64::new(0),
        })
    }

    /// The upstream URI for a client's raw path and query, byte for byte.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).expect("scheme, authority and path are all set")
    }

    pub fn host_override(&self) -> Option<&HeaderValue> {
        self.host_override.as_ref()
    }

    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_header_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&e), "upstream request failed");
                if is_timeout(&e) {
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
        *req.uri_mut() = self.uri_for(Some(&path));
        if let Some(host) = &self.host_override {
            req.headers_mut().insert(http::header::HOST, host.clone());
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.client.request(req)).await,
            Ok(Ok(_))
        ) && {
            self.mark_seen();
            true
        }
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

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = e.source();
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
