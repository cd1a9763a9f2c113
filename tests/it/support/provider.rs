//! The identity provider's side: [`Stub`]s answering RFC 7662 token
//! introspection (in MAS's shape where it matters), MAS tokens, and an
//! in-process `Authenticator` configured against them.

use http::StatusCode;
use scopegate::auth::Authenticator;
use scopegate::config::{AuthSettings, CacheConfig, ClientAuthMethod};
use serde_json::Value;

use super::{random_alnum, unix_now, Stub, SERVER_NAME};

/// An upstream nobody listens on (legacy disabled in most tests).
pub fn no_upstream() -> http::Uri {
    "http://127.0.0.1:9".parse().unwrap()
}

pub fn build(settings: &AuthSettings, cache: &CacheConfig) -> Authenticator {
    Authenticator::from_config(
        settings,
        cache,
        &no_upstream(),
        &prometheus::Registry::new(),
    )
    .expect("valid test config")
}

/// A well-formed MAS access token (`mat_…`, checksum right).
pub fn mas_access_token() -> String {
    scopegate::auth::mas::MasTokenKind::AccessToken.token_with(&random_alnum(30))
}

/// `[auth.introspection]` against `{base}/oauth2/introspect`.
pub fn introspection_settings(base: &str, method: ClientAuthMethod) -> AuthSettings {
    AuthSettings {
        server_name: SERVER_NAME.into(),
        introspection: scopegate::config::IntrospectionConfig {
            enabled: true,
            endpoint: Some(format!("{base}/oauth2/introspect")),
            client_id: Some("scopegate".into()),
            client_secret: Some(scopegate::config::Secret::new("s3cret")),
            auth_method: method,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The gateway's `[auth.introspection]` section against this provider,
/// then `[cache]` with `cache` in it.
pub fn introspection_config(provider: &Stub, cache: &str) -> String {
    format!(
        "[auth.introspection]\nenabled = true\nendpoint = \"{}/oauth2/introspect\"\n\
         auth_method = \"bearer\"\nclient_secret = \"s3cret\"\n\n[cache]\n{cache}\n",
        provider.url
    )
}

/// An introspection endpoint: `answer(token)` is the response, 200.
pub async fn introspection_stub(answer: impl Fn(&str) -> Value + Send + Sync + 'static) -> Stub {
    Stub::start(move |req| {
        let form = req.form();
        let token = form.get("token").map(String::as_str).unwrap_or_default();
        (StatusCode::OK, answer(token).to_string())
    })
    .await
}

/// An introspection stub in MAS's shape: `active(token)` decides, and every
/// active token is alice's.
pub async fn mas_stub(active: impl Fn(&str) -> bool + Send + Sync + 'static) -> Stub {
    introspection_stub(move |token| {
        if active(token) {
            mas_active("alice", "ABCDEFGHIJ", 300)
        } else {
            serde_json::json!({"active": false})
        }
    })
    .await
}

/// What MAS answers for an active OAuth access token (oauth2-types
/// IntrospectionResponse, scopes normalised with their unstable twins).
pub fn mas_active_body(username: &str, device: &str, expires_in: u64) -> String {
    mas_active(username, device, expires_in).to_string()
}

fn mas_active(username: &str, device: &str, expires_in: u64) -> Value {
    let now = unix_now();
    serde_json::json!({
        "active": true,
        "scope": format!(
            "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:api:* \
             urn:matrix:client:device:{device} urn:matrix:org.matrix.msc2967.client:device:{device}"
        ),
        "client_id": "01J9Q3ZKQ8Y6V5D4R3E2W1T0SA",
        "username": username,
        "token_type": "access_token",
        "exp": now + expires_in,
        "expires_in": expires_in,
        "iat": now,
        "nbf": now,
        "sub": "01J9Q3ZKQ8Y6V5D4R3E2W1T0SB",
        "aud": null,
        "iss": null,
        "jti": "01J9Q3ZKQ8Y6V5D4R3E2W1T0SC",
        "device_id": device,
    })
}
