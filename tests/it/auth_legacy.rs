//! Legacy Matrix tokens, vouched for by the homeserver's whoami.

use http::StatusCode;
use scopegate::auth::{AuthError, Authenticator};
use scopegate::config::{AuthSettings, CacheConfig, LegacyConfig};
use scopegate::scopes::FULL_ACCESS;

use crate::support::{Stub, SERVER_NAME};

const TOKEN: &str = "syt_YWxpY2U_lKuRhHkiXmWZzgSoBRwb_3u5Fqv";

fn legacy(scopes: Option<Vec<String>>) -> AuthSettings {
    let cfg = LegacyConfig {
        enabled: true,
        scopes,
        ..LegacyConfig::default()
    };
    AuthSettings {
        server_name: SERVER_NAME.into(),
        legacy: cfg,
        ..AuthSettings::default()
    }
}

fn build(settings: &AuthSettings, homeserver: &str) -> Authenticator {
    Authenticator::from_config(
        settings,
        &CacheConfig::default(),
        &homeserver.parse().unwrap(),
        &prometheus::Registry::new(),
    )
    .unwrap()
}

async fn homeserver() -> Stub {
    Stub::start(|req| match req.header("authorization") {
        Some(h) if h == format!("Bearer {TOKEN}") => (
            StatusCode::OK,
            r#"{"user_id":"@alice:example.org","device_id":"LEGACYDEV","is_guest":false}"#.into(),
        ),
        Some("Bearer syt_soft") => (
            StatusCode::UNAUTHORIZED,
            r#"{"errcode":"M_UNKNOWN_TOKEN","error":"expired","soft_logout":true}"#.into(),
        ),
        Some("Bearer syt_broken") => (StatusCode::BAD_GATEWAY, "{}".into()),
        _ => (
            StatusCode::UNAUTHORIZED,
            r#"{"errcode":"M_UNKNOWN_TOKEN","error":"unknown"}"#.into(),
        ),
    })
    .await
}

#[tokio::test]
async fn whoami_200_gives_only_the_configured_scopes() {
    let hs = homeserver().await;
    let read_only = vec!["urn:matrix:client:api:read:*".to_string()];
    let auth = build(&legacy(Some(read_only)), &hs.url);
    let id = auth.authenticate(TOKEN).await.unwrap();
    assert_eq!(id.user_id, "@alice:example.org");
    assert_eq!(id.device_id.as_deref(), Some("LEGACYDEV"));
    assert_eq!(id.source, "legacy");
    assert_eq!(id.scopes.to_string(), "urn:matrix:client:api:read:*");
    assert!(!id.scopes.has_full_access());

    let req = &hs.requests()[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/_matrix/client/v3/account/whoami");
}

#[tokio::test]
async fn default_scopes_are_full_access() {
    let hs = homeserver().await;
    let auth = build(&legacy(None), &hs.url);
    let id = auth.authenticate(TOKEN).await.unwrap();
    assert!(id.scopes.has_full_access());
    assert_eq!(id.scopes.to_string(), FULL_ACCESS);
}

#[tokio::test]
async fn whoami_401_is_invalid_and_other_answers_unavailable() {
    let hs = homeserver().await;
    let auth = build(&legacy(None), &hs.url);
    assert_eq!(
        auth.authenticate("syt_unknown").await.unwrap_err(),
        AuthError::Invalid { soft_logout: false }
    );
    assert_eq!(
        auth.authenticate("syt_soft").await.unwrap_err(),
        AuthError::Invalid { soft_logout: true },
        "the homeserver's soft_logout is passed on"
    );
    assert_eq!(
        auth.authenticate("syt_broken").await.unwrap_err(),
        AuthError::Unavailable
    );

    let down = build(&legacy(None), "http://127.0.0.1:9");
    assert_eq!(
        down.authenticate(TOKEN).await.unwrap_err(),
        AuthError::Unavailable
    );
}
