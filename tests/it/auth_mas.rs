//! MAS token shapes: the checksum is checked offline, before any network call.

use http::StatusCode;
use scopegate::auth::mas::MasTokenKind;
use scopegate::auth::AuthError;
use scopegate::config::{CacheConfig, ClientAuthMethod};

use crate::support::{build, introspection_settings, mas_stub, Stub};

// matrix-facts.md §3.
const VECTORS: [&str; 2] = [
    "mct_16tugBE5Ta9LIWoSJaAEHHq2g3fx8S_alcBB4",
    "mpt_6cq7FqNSYoosbXl3bbpfh9yNy9NzuR_0vOV2O",
];
const INVALID: AuthError = AuthError::Invalid { soft_logout: false };

#[tokio::test]
async fn published_vectors_reach_the_provider() {
    let stub = mas_stub(|_| true).await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    for token in VECTORS {
        assert!(auth.authenticate(token).await.is_ok(), "{token}");
    }
    assert_eq!(stub.calls(), 2);
}

#[tokio::test]
async fn a_one_character_change_fails_with_no_network_call() {
    let stub = mas_stub(|_| true).await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    for token in VECTORS {
        for i in 4..token.len() {
            let c = token.as_bytes()[i];
            if c == b'_' {
                continue;
            }
            let mut changed = token.as_bytes().to_vec();
            changed[i] = if c == b'x' { b'y' } else { b'x' };
            let changed = String::from_utf8(changed).unwrap();
            assert_eq!(
                auth.authenticate(&changed).await.unwrap_err(),
                INVALID,
                "{changed}"
            );
        }
    }
    assert_eq!(stub.calls(), 0);
    assert_eq!(auth.entry_count(), 0, "offline refusals take no cache room");
}

#[tokio::test]
async fn refresh_tokens_are_refused_offline() {
    let stub = mas_stub(|_| true).await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    for kind in [MasTokenKind::RefreshToken, MasTokenKind::CompatRefreshToken] {
        let token = kind.token_with(&crate::support::random_alnum(30));
        assert_eq!(auth.authenticate(&token).await.unwrap_err(), INVALID);
    }
    assert_eq!(stub.calls(), 0);
}

#[tokio::test]
async fn mas_tokens_never_go_to_whoami() {
    // Legacy on, introspection off: a MAS token has no validator and is refused.
    let homeserver =
        Stub::start(|_| (StatusCode::OK, r#"{"user_id":"@a:example.org"}"#.into())).await;
    let mut settings = introspection_settings("http://127.0.0.1:9", ClientAuthMethod::Bearer);
    settings.introspection.enabled = false;
    settings.legacy.enabled = true;
    let auth = scopegate::auth::Authenticator::from_config(
        &settings,
        &CacheConfig::default(),
        &homeserver.url.parse().unwrap(),
        &prometheus::Registry::new(),
    )
    .unwrap();
    assert_eq!(auth.authenticate(VECTORS[0]).await.unwrap_err(), INVALID);
    assert_eq!(homeserver.calls(), 0);
}
