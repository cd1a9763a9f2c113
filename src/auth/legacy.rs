//! The homeserver's own access tokens (`syt_…`), during the migration to
//! OIDC when both kinds are in use. Only the homeserver knows them, so we ask
//! it: `GET /_matrix/client/v3/account/whoami` with the token. Such a token
//! carries no scopes; it gets the configured set (full access by default).

use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use serde::Deserialize;

use super::cache::Verdict;
use super::http_client::HttpClient;
use super::subject::{DeviceId, UserId};
use super::{AuthError, Identity};
use crate::scopes::ScopeSet;

const MAX_RESPONSE: usize = 16 * 1024;

pub(crate) struct LegacyValidator {
    whoami: Uri,
    http: HttpClient,
    timeout: Duration,
    scopes: ScopeSet,
}

/// Spec: `GET /account/whoami` 200 body.
#[derive(Deserialize)]
struct WhoAmI {
    user_id: String,
    device_id: Option<String>,
}

/// Spec: the 401 body may say `soft_logout`.
#[derive(Deserialize)]
struct UnknownTokenBody {
    #[serde(default)]
    soft_logout: bool,
}

impl LegacyValidator {
    pub(crate) fn new(
        upstream: &Uri,
        http: HttpClient,
        timeout: Duration,
        scopes: ScopeSet,
    ) -> Result<Self, String> {
        let base = upstream.to_string();
        let whoami = format!(
            "{}/_matrix/client/v3/account/whoami",
            base.trim_end_matches('/')
        )
        .parse()
        .map_err(|e| {
            format!("[auth.legacy]: cannot build the whoami URL from upstream {base}: {e}")
        })?;
        Ok(LegacyValidator {
            whoami,
            http,
            timeout,
            scopes,
        })
    }

    pub(crate) async fn validate(&self, token: &str) -> Result<Verdict, AuthError> {
        // A token that cannot be a header value cannot be valid upstream either.
        let Ok(mut bearer) = HeaderValue::try_from(format!("Bearer {token}")) else {
            return Ok(Verdict::Invalid { soft_logout: false });
        };
        bearer.set_sensitive(true);
        let req = Request::get(self.whoami.clone())
            .header(AUTHORIZATION, bearer)
            .header(ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|_| AuthError::Unavailable)?;
        // The homeserver's answer holds from the moment it was asked.
        let asked = std::time::SystemTime::now();
        let fetched = self
            .http
            .send(req, self.timeout, MAX_RESPONSE)
            .await
            .map_err(|e| {
                tracing::warn!("whoami on the homeserver failed: {e}");
                AuthError::Unavailable
            })?;
        match fetched.status {
            StatusCode::OK => match self.identity(&fetched.body, asked) {
                Ok(identity) => Ok(Verdict::Valid(Arc::new(identity))),
                Err(e) => {
                    tracing::warn!("whoami answered 200 with an unusable body: {e}");
                    Err(AuthError::Unavailable)
                }
            },
            StatusCode::UNAUTHORIZED => {
                let soft_logout = serde_json::from_slice::<UnknownTokenBody>(&fetched.body)
                    .is_ok_and(|r| r.soft_logout);
                Ok(Verdict::Invalid { soft_logout })
            }
            other => {
                tracing::warn!("whoami on the homeserver answered HTTP {other}");
                Err(AuthError::Unavailable)
            }
        }
    }

    fn identity(&self, body: &[u8], asked: std::time::SystemTime) -> Result<Identity, String> {
        let w: WhoAmI = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let user_id: UserId = w.user_id.parse()?;
        let device_id = w.device_id.map(|d| d.parse::<DeviceId>()).transpose()?;
        Ok(Identity {
            user_id: user_id.into_string(),
            device_id: device_id.map(DeviceId::into_string),
            client_id: None,
            scopes: self.scopes.clone(),
            expires_at: None,
            vouched_at: Some(asked),
            source: "legacy",
        })
    }
}
