//! Revocation by token and by user, and forgetting the whole cache.

use scopegate::auth::AuthError;
use scopegate::config::{CacheConfig, ClientAuthMethod};

use crate::support::{build, introspection_settings, introspection_stub, mas_access_token, Stub};

/// Tokens ending in `B` belong to bob, the rest to alice; always active.
async fn provider() -> Stub {
    introspection_stub(|token| {
        let user = if token.ends_with('B') { "bob" } else { "alice" };
        serde_json::json!({"active": true, "username": user, "scope": "urn:matrix:client:api:*"})
    })
    .await
}

fn settings(url: &str) -> scopegate::config::AuthSettings {
    introspection_settings(url, ClientAuthMethod::Bearer)
}

/// Refusals are not kept in the cache: what still refuses a revoked token
/// is the revocation itself.
fn no_negative_cache() -> CacheConfig {
    CacheConfig {
        negative_ttl_s: 0,
        ..CacheConfig::default()
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_until_it_expires_without_asking_the_provider() {
    let stub = provider().await;
    let auth = build(&settings(&stub.url), &no_negative_cache());
    let token = mas_access_token();
    auth.authenticate(&token).await.unwrap();
    auth.revoke_token(&token, None).await;
    for _ in 0..3 {
        assert_eq!(
            auth.authenticate(&token).await.unwrap_err(),
            AuthError::Invalid { soft_logout: false }
        );
    }
    assert_eq!(
        stub.calls(),
        1,
        "the provider, still saying active, is not asked"
    );
    // Another token of the same user is untouched.
    auth.authenticate(&mas_access_token()).await.unwrap();
}

#[tokio::test]
async fn a_revoked_user_is_refused_from_cache_and_the_provider_has_the_last_word() {
    let stub = provider().await;
    let auth = build(&settings(&stub.url), &no_negative_cache());
    let alice = ["opaque-alice-1", "opaque-alice-2"];
    let bob = "opaque-bob-B";
    for t in alice.iter().chain([&bob]) {
        auth.authenticate(t).await.unwrap();
    }
    assert_eq!(stub.calls(), 3);

    auth.revoke_user("@alice:example.org");
    for t in alice {
        assert_eq!(
            auth.authenticate(t).await.unwrap_err(),
            AuthError::Invalid { soft_logout: false },
            "cached before the revocation"
        );
    }
    auth.authenticate(bob).await.unwrap();
    assert_eq!(stub.calls(), 3, "bob's token still cached");

    // Asked afresh after the revocation, the provider vouches again.
    auth.authenticate(alice[0]).await.unwrap();
    assert_eq!(stub.calls(), 4);
}

#[tokio::test]
async fn evict_all_forgets_without_revoking() {
    let stub = provider().await;
    let auth = build(&settings(&stub.url), &CacheConfig::default());
    let token = mas_access_token();
    auth.authenticate(&token).await.unwrap();
    auth.evict_all();
    auth.authenticate(&token).await.unwrap();
    assert_eq!(stub.calls(), 2);
}
