//! Eviction: by token, by user, all; and revocation after a logout.

mod auth_common;

use auth_common::{build, introspection_settings, mas_access_token, Stub};
use http::StatusCode;
use scopegate::auth::{AuthError, CacheConfig, ClientAuthMethod};

/// Tokens ending in `B` belong to bob, the rest to alice; always active.
async fn provider() -> Stub {
    Stub::start(|req| {
        let user = if req.form()["token"].ends_with('B') {
            "bob"
        } else {
            "alice"
        };
        (
            StatusCode::OK,
            format!(r#"{{"active":true,"username":"{user}","scope":"urn:matrix:client:api:*"}}"#),
        )
    })
    .await
}

fn settings(url: &str) -> scopegate::auth::AuthSettings {
    introspection_settings(url, ClientAuthMethod::Bearer)
}

#[tokio::test]
async fn evict_token_makes_the_next_request_ask_again() {
    let stub = provider().await;
    let auth = build(&settings(&stub.url), &CacheConfig::default());
    let token = mas_access_token();
    auth.authenticate(&token).await.unwrap();
    auth.authenticate(&token).await.unwrap();
    assert_eq!(stub.calls(), 1);
    auth.evict_token(&token).await;
    auth.authenticate(&token).await.unwrap();
    assert_eq!(stub.calls(), 2);
}

#[tokio::test]
async fn evict_user_and_evict_all() {
    let stub = provider().await;
    let auth = build(&settings(&stub.url), &CacheConfig::default());
    let alice = ["opaque-alice-1", "opaque-alice-2"];
    let bob = "opaque-bob-B";
    for t in alice.iter().chain([&bob]) {
        auth.authenticate(t).await.unwrap();
    }
    assert_eq!(stub.calls(), 3);

    auth.evict_user("@alice:example.org");
    for t in alice.iter().chain([&bob]) {
        auth.authenticate(t).await.unwrap();
    }
    assert_eq!(
        stub.calls(),
        5,
        "alice's two tokens asked again, bob's still cached"
    );

    auth.evict_all();
    auth.authenticate(bob).await.unwrap();
    assert_eq!(stub.calls(), 6);
}

#[tokio::test]
async fn a_revoked_token_is_refused_even_if_the_provider_still_says_active() {
    let stub = provider().await;
    let auth = build(
        &settings(&stub.url),
        &CacheConfig {
            negative_ttl_s: 1,
            ..CacheConfig::default()
        },
    );
    let token = mas_access_token();
    auth.authenticate(&token).await.unwrap();
    auth.revoke_token(&token).await;
    assert_eq!(
        auth.authenticate(&token).await.unwrap_err(),
        AuthError::Invalid { soft_logout: false }
    );
    assert_eq!(stub.calls(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    auth.authenticate(&token).await.unwrap();
    assert_eq!(
        stub.calls(),
        2,
        "after the negative TTL the provider is asked again"
    );
}
