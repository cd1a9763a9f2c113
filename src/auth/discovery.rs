//! The provider's metadata (OpenID Connect Discovery 1.0 §4), fetched on
//! first need rather than at start-up, so a provider that is down when the
//! gateway starts costs 503s for new tokens, not a gateway that will not start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Uri;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::http_client::HttpClient;
use crate::config::ProviderUrl;

/// A failed fetch is not retried sooner than this, whatever the traffic.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
const MAX_DOCUMENT: usize = 256 * 1024;

/// The fields scopegate reads.
#[derive(Debug, Deserialize)]
pub(crate) struct Metadata {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub introspection_endpoint: Option<String>,
}

pub(crate) struct Discovery {
    issuer: String,
    url: Uri,
    http: HttpClient,
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    metadata: Option<Arc<Metadata>>,
    failed_at: Option<Instant>,
}

impl Discovery {
    pub(crate) fn new(
        issuer: &ProviderUrl,
        http: HttpClient,
        timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Discovery {
            issuer: issuer.0.to_string().trim_end_matches('/').to_string(),
            url: issuer.join(".well-known/openid-configuration")?,
            http,
            timeout,
            state: Mutex::default(),
        })
    }

    /// The metadata, fetched once; concurrent first callers share one fetch.
    pub(crate) async fn metadata(&self) -> Option<Arc<Metadata>> {
        let mut state = self.state.lock().await;
        if let Some(m) = &state.metadata {
            return Some(m.clone());
        }
        if state
            .failed_at
            .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE)
        {
            return None;
        }
        match self.fetch().await {
            Ok(m) => {
                let m = Arc::new(m);
                state.metadata = Some(m.clone());
                Some(m)
            }
            Err(e) => {
                tracing::warn!(url = %self.url, "OpenID discovery failed: {e}");
                state.failed_at = Some(Instant::now());
                None
            }
        }
    }

    async fn fetch(&self) -> Result<Metadata, String> {
        let m: Metadata = self
            .http
            .get_json(&self.url, self.timeout, MAX_DOCUMENT)
            .await
            .map_err(|e| e.to_string())?;
        // OpenID Connect Discovery §4.3: the issuer must be the one asked for.
        if m.issuer.trim_end_matches('/') != self.issuer {
            return Err(format!(
                "the document names issuer `{}`, not the configured `{}`",
                m.issuer, self.issuer
            ));
        }
        Ok(m)
    }
}
