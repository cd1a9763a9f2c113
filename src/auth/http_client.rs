//! One pooled HTTP client for everything the validators ask of the outside:
//! discovery, JWKS, introspection, whoami. Connections are reused and HTTP/2
//! is negotiated by ALPN, so a busy gateway holds a handful of connections to
//! its provider, not one per request. Every call has a deadline and a body
//! limit: a slow or hostile provider cannot hold a request or fill memory.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A response read whole, within the limits.
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why a provider call produced no usable answer. Its Display is for the
/// operator's log and never contains a token.
#[derive(Debug)]
pub(crate) enum FetchError {
    Timeout,
    Transport(String),
    Status(StatusCode),
    Body(String),
    Json(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Timeout => f.write_str("timed out"),
            FetchError::Transport(e) => write!(f, "connection failed: {e}"),
            FetchError::Status(s) => write!(f, "answered HTTP {s}"),
            FetchError::Body(e) => write!(f, "response body unreadable: {e}"),
            FetchError::Json(e) => write!(f, "response is not the expected JSON: {e}"),
        }
    }
}

impl HttpClient {
    pub(crate) fn new() -> Self {
        let roots = crate::proxy::roots::system_roots("the identity provider");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        HttpClient { client }
    }

    /// Sends `req` and reads the body, all within `timeout`.
    pub(crate) async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Fetched, FetchError> {
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Transport(crate::error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| FetchError::Body(e.to_string()))?
                .to_bytes();
            Ok(Fetched { status, body })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    /// GET a JSON document that must answer 200.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        uri: &http::Uri,
        timeout: Duration,
        max_body: usize,
    ) -> Result<T, FetchError> {
        let req = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let fetched = self.send(req, timeout, max_body).await?;
        if fetched.status != StatusCode::OK {
            return Err(FetchError::Status(fetched.status));
        }
        serde_json::from_slice(&fetched.body).map_err(|e| FetchError::Json(e.to_string()))
    }
}
