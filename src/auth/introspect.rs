//! RFC 7662 token introspection, spoken the way Synapse speaks it to MAS:
//! form `token` + `token_type_hint=access_token`, `Accept: application/json`,
//! `X-MAS-Supports-Device-Id: 1` (so MAS answers with `device_id` instead of
//! a device scope), and one of three client authentications. Answers
//! `{"active": false}` are verdicts (cached); anything unparseable is the
//! provider failing (503, not cached).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::cache::Verdict;
use super::discovery::Discovery;
use super::http_client::HttpClient;
use super::metrics::AuthMetrics;
use super::subject::{self, UserId};
use super::{AuthError, Identity};
use crate::config::{ClientAuthMethod, ProviderUrl, Secret};
use crate::scopes::ScopeSet;

const MAX_RESPONSE: usize = 64 * 1024;

pub(crate) enum EndpointSource {
    Fixed(Uri),
    Discovered(Arc<Discovery>),
}

/// How the gateway proves to the provider that it may introspect.
pub(crate) enum ClientAuth {
    /// RFC 6749 §2.3.1: Basic, with id and secret form-encoded first.
    Basic(HeaderValue),
    /// RFC 6749 §2.3.1: `client_id` and `client_secret` in the body.
    Post { client_id: String, secret: Secret },
    /// A shared secret as bearer token (MAS `matrix.secret`).
    Bearer(HeaderValue),
}

impl ClientAuth {
    pub(crate) fn new(
        method: ClientAuthMethod,
        client_id: Option<&str>,
        secret: Option<Secret>,
    ) -> Result<Self, String> {
        let secret = secret.ok_or(
            "[auth.introspection] needs client_secret or client_secret_file (or SCOPEGATE__AUTH__INTROSPECTION__CLIENT_SECRET)",
        )?;
        let client_id = || {
            client_id
                .filter(|c| !c.is_empty())
                .ok_or("[auth.introspection] client_id is required for client_secret_basic and client_secret_post")
        };
        let sensitive = |v: String| {
            let mut h = HeaderValue::try_from(v).map_err(|_| {
                "[auth.introspection] client_secret contains characters a header cannot carry"
            })?;
            h.set_sensitive(true);
            Ok::<_, String>(h)
        };
        Ok(match method {
            ClientAuthMethod::ClientSecretBasic => {
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", encode(client_id()?), encode(secret.expose()));
                ClientAuth::Basic(sensitive(format!("Basic {}", STANDARD.encode(pair)))?)
            }
            ClientAuthMethod::ClientSecretPost => ClientAuth::Post {
                client_id: client_id()?.to_string(),
                secret,
            },
            ClientAuthMethod::Bearer => {
                ClientAuth::Bearer(sensitive(format!("Bearer {}", secret.expose()))?)
            }
        })
    }
}

pub(crate) struct Introspector {
    endpoint: EndpointSource,
    auth: ClientAuth,
    http: HttpClient,
    timeout: Duration,
    slots: Semaphore,
    server_name: String,
    metrics: Arc<AuthMetrics>,
}

/// RFC 7662 §2.2, plus MAS's `device_id`. Unknown members are ignored.
#[derive(Debug, Deserialize)]
struct Response {
    active: bool,
    scope: Option<String>,
    username: Option<String>,
    sub: Option<String>,
    client_id: Option<String>,
    device_id: Option<String>,
    exp: Option<u64>,
    expires_in: Option<u64>,
}

impl Introspector {
    pub(crate) fn new(
        endpoint: EndpointSource,
        auth: ClientAuth,
        http: HttpClient,
        timeout: Duration,
        max_in_flight: usize,
        server_name: String,
        metrics: Arc<AuthMetrics>,
    ) -> Self {
        Introspector {
            endpoint,
            auth,
            http,
            timeout,
            slots: Semaphore::new(max_in_flight.max(1)),
            server_name,
            metrics,
        }
    }

    pub(crate) async fn validate(&self, token: &str) -> Result<Verdict, AuthError> {
        let started = Instant::now();
        // The deadline covers waiting for a slot too: a queue is no excuse to hang a client.
        let answer = tokio::time::timeout(self.timeout, async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| "closed".to_string())?;
            // What the provider says holds from the moment it was asked: a
            // logout it had not seen yet is later than this.
            let asked = SystemTime::now();
            self.call(token).await.map(|r| (r, asked))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        self.metrics
            .introspection_seconds
            .observe(started.elapsed().as_secs_f64());
        let response = answer.map_err(|e| {
            tracing::warn!("token introspection failed: {e}");
            AuthError::Unavailable
        })?;
        let (response, asked) = response;
        Ok(self.verdict(response, asked))
    }

    async fn call(&self, token: &str) -> Result<Response, String> {
        let endpoint = self.endpoint().await?;
        let mut req = Request::post(endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header("x-mas-supports-device-id", "1");
        if let ClientAuth::Basic(h) | ClientAuth::Bearer(h) = &self.auth {
            req = req.header(AUTHORIZATION, h.clone());
        }
        let req = req
            .body(Full::new(Bytes::from(self.form(token))))
            .map_err(|e| e.to_string())?;
        let fetched = self
            .http
            .send(req, self.timeout, MAX_RESPONSE)
            .await
            .map_err(|e| format!("{endpoint} {e}"))?;
        if fetched.status != StatusCode::OK {
            return Err(format!(
                "{endpoint} answered HTTP {} (check client_id, the secret and auth_method)",
                fetched.status
            ));
        }
        serde_json::from_slice(&fetched.body).map_err(|e| {
            format!("{endpoint} answered something that is not an RFC 7662 response: {e}")
        })
    }

    /// RFC 7662 §2.1 request body, with the credentials for client_secret_post.
    fn form(&self, token: &str) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token)
            .append_pair("token_type_hint", "access_token");
        if let ClientAuth::Post { client_id, secret } = &self.auth {
            form.append_pair("client_id", client_id)
                .append_pair("client_secret", secret.expose());
        }
        form.finish()
    }

    async fn endpoint(&self) -> Result<Uri, String> {
        match &self.endpoint {
            EndpointSource::Fixed(uri) => Ok(uri.clone()),
            EndpointSource::Discovered(d) => {
                let meta = d.metadata().await.ok_or("OpenID discovery failed")?;
                let url = meta.introspection_endpoint.as_deref().ok_or(
                    "the discovery document has no introspection_endpoint; set [auth.introspection] endpoint",
                )?;
                Ok(url.parse::<ProviderUrl>()?.0)
            }
        }
    }

    fn verdict(&self, r: Response, asked: SystemTime) -> Verdict {
        match self.identity(r, asked) {
            Ok(identity) => Verdict::Valid(Arc::new(identity)),
            Err(reason) => {
                tracing::debug!(reason, "introspection refused the token");
                Verdict::Invalid { soft_logout: false }
            }
        }
    }

    fn identity(&self, r: Response, asked: SystemTime) -> Result<Identity, &'static str> {
        if !r.active {
            return Err("inactive");
        }
        let now = SystemTime::now();
        // `exp` is absolute, `expires_in` relative (MAS sends both); the earlier wins.
        let expires_at = [
            r.exp.map(|e| UNIX_EPOCH + Duration::from_secs(e)),
            r.expires_in.map(|s| now + Duration::from_secs(s)),
        ]
        .into_iter()
        .flatten()
        .min();
        if expires_at.is_some_and(|at| at <= now) {
            return Err("active but already expired");
        }
        // MAS: the user is `username` on this server; `sub` is its internal id.
        let subject = r
            .username
            .as_deref()
            .or(r.sub.as_deref())
            .ok_or("no username or sub: not a user's token")?;
        let user_id = UserId::from_subject(subject, &self.server_name)
            .map_err(|_| "username is not a Matrix user")?;
        let scopes = ScopeSet::from_space_separated(r.scope.as_deref().unwrap_or_default());
        let device_id =
            subject::device_id(r.device_id.as_deref(), &scopes).map_err(|_| "bad device id")?;
        Ok(Identity {
            user_id: user_id.into_string(),
            device_id: device_id.map(|d| d.into_string()),
            client_id: r.client_id,
            scopes,
            expires_at,
            vouched_at: Some(asked),
            source: "introspection",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let auth = ClientAuth::new(
            ClientAuthMethod::ClientSecretBasic,
            Some("gate way"),
            Some(Secret::new("p:ss")),
        )
        .unwrap();
        let ClientAuth::Basic(h) = auth else { panic!() };
        let b64 = h.to_str().unwrap().strip_prefix("Basic ").unwrap();
        assert_eq!(STANDARD.decode(b64).unwrap(), b"gate+way:p%3Ass");
        assert!(h.is_sensitive());
    }

    #[test]
    fn missing_credentials_are_named() {
        let err = ClientAuth::new(
            ClientAuthMethod::ClientSecretPost,
            None,
            Some(Secret::new("s")),
        )
        .err()
        .unwrap();
        assert!(err.contains("client_id"), "{err}");
        let err = ClientAuth::new(ClientAuthMethod::Bearer, None, None)
            .err()
            .unwrap();
        assert!(err.contains("client_secret"), "{err}");
        assert!(ClientAuth::new(ClientAuthMethod::Bearer, None, Some(Secret::new("s"))).is_ok());
    }
}
