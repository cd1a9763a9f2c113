//! RFC 7662 introspection against a stub speaking MAS's dialect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::StatusCode;
use scopegate::auth::AuthError;
use scopegate::config::{CacheConfig, ClientAuthMethod};
use serde_json::json;

use crate::support::{
    build, introspection_settings, mas_access_token, mas_active_body, mas_stub, unix_now, Stub,
};

const INVALID: AuthError = AuthError::Invalid { soft_logout: false };

#[tokio::test]
async fn active_and_inactive_tokens() {
    let good = mas_access_token();
    let good2 = good.clone();
    let stub = mas_stub(move |t| t == good2).await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    let id = auth.authenticate(&good).await.unwrap();
    assert_eq!(id.user_id, "@alice:example.org");
    assert_eq!(id.source, "introspection");

    let bad = mas_access_token();
    assert_eq!(auth.authenticate(&bad).await.unwrap_err(), INVALID);
    assert_eq!(auth.authenticate(&bad).await.unwrap_err(), INVALID);
    assert_eq!(
        auth.authenticate(&good).await.unwrap().user_id,
        "@alice:example.org"
    );
    assert_eq!(stub.calls(), 2, "inactive is cached like active");
}

#[tokio::test]
async fn mas_response_shape_with_scope_twins_and_device_id() {
    let stub = Stub::start(|_| (StatusCode::OK, mas_active_body("alice", "ABCDEFGHIJ", 300))).await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    let id = auth.authenticate(&mas_access_token()).await.unwrap();
    assert_eq!(
        id.user_id, "@alice:example.org",
        "username, not the ULID sub"
    );
    assert_eq!(id.device_id.as_deref(), Some("ABCDEFGHIJ"));
    assert_eq!(id.client_id.as_deref(), Some("01J9Q3ZKQ8Y6V5D4R3E2W1T0SA"));
    assert_eq!(
        id.scopes.to_string(),
        "urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ",
        "unstable twins fold into the stable names"
    );
    let left = id
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(290) && left <= Duration::from_secs(300));
}

#[tokio::test]
async fn compat_tokens_without_expiry_or_device_scope() {
    // A compat (m.login.password) session with X-MAS-Supports-Device-Id: the
    // device is only in device_id, and nothing says when the token expires.
    let stub = Stub::start(|_| {
        (
            StatusCode::OK,
            json!({
                "active": true,
                "scope": "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:api:* urn:synapse:admin:*",
                "client_id": "legacy",
                "username": "bob",
                "token_type": "access_token",
                "sub": "01J9Q3ZKQ8Y6V5D4R3E2W1T0SB",
                "device_id": "COMPATDEV1",
            })
            .to_string(),
        )
    })
    .await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    let token = scopegate::auth::mas::MasTokenKind::CompatAccessToken
        .token_with(&crate::support::random_alnum(30));
    let id = auth.authenticate(&token).await.unwrap();
    assert_eq!(id.user_id, "@bob:example.org");
    assert_eq!(id.device_id.as_deref(), Some("COMPATDEV1"));
    assert_eq!(id.client_id.as_deref(), Some("legacy"));
    assert!(id.scopes.contains("urn:synapse:admin:*"));
    assert_eq!(id.expires_at, None);
}

#[tokio::test]
async fn each_client_auth_method_sends_what_the_provider_expects() {
    for method in [
        ClientAuthMethod::ClientSecretBasic,
        ClientAuthMethod::ClientSecretPost,
        ClientAuthMethod::Bearer,
    ] {
        let stub = mas_stub(|_| true).await;
        let auth = build(
            &introspection_settings(&stub.url, method),
            &CacheConfig::default(),
        );
        let token = mas_access_token();
        auth.authenticate(&token).await.unwrap();
        let reqs = stub.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/oauth2/introspect");
        assert_eq!(
            r.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(r.header("accept"), Some("application/json"));
        assert_eq!(r.header("x-mas-supports-device-id"), Some("1"));
        let form = r.form();
        assert_eq!(form.get("token"), Some(&token));
        assert_eq!(
            form.get("token_type_hint").map(String::as_str),
            Some("access_token")
        );
        match method {
            ClientAuthMethod::ClientSecretBasic => {
                let expected = format!("Basic {}", STANDARD.encode("scopegate:s3cret"));
                assert_eq!(r.header("authorization"), Some(expected.as_str()));
                assert!(!form.contains_key("client_secret"));
            }
            ClientAuthMethod::ClientSecretPost => {
                assert_eq!(r.header("authorization"), None);
                assert_eq!(form.get("client_id").map(String::as_str), Some("scopegate"));
                assert_eq!(
                    form.get("client_secret").map(String::as_str),
                    Some("s3cret")
                );
            }
            ClientAuthMethod::Bearer => {
                assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
                assert!(!form.contains_key("client_id") && !form.contains_key("client_secret"));
            }
        }
        assert_eq!(
            form.len(),
            if method == ClientAuthMethod::ClientSecretPost {
                4
            } else {
                2
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_token_share_one_call() {
    let stub = mas_stub(|_| true).await;
    stub.set_delay(Duration::from_millis(200));
    let auth = Arc::new(build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    ));
    let token = mas_access_token();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (auth, token) = (auth.clone(), token.clone());
        tasks.spawn(async move { auth.authenticate(&token).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap().user_id, "@alice:example.org");
    }
    assert_eq!(stub.calls(), 1);
}

#[tokio::test]
async fn provider_down_fails_closed_for_new_tokens_only() {
    let stub = mas_stub(|_| true).await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    let cached = mas_access_token();
    auth.authenticate(&cached).await.unwrap();

    stub.set_down(true);
    let fresh = mas_access_token();
    assert_eq!(
        auth.authenticate(&fresh).await.unwrap_err(),
        AuthError::Unavailable
    );
    assert_eq!(
        auth.authenticate(&fresh).await.unwrap_err(),
        AuthError::Unavailable
    );
    assert_eq!(
        stub.calls(),
        3,
        "errors are not cached: each try asks again"
    );
    assert!(
        auth.authenticate(&cached).await.is_ok(),
        "cached tokens keep working"
    );

    stub.set_down(false);
    assert!(auth.authenticate(&fresh).await.is_ok());
}

#[tokio::test]
async fn timeouts_and_garbage_are_unavailable_not_invalid() {
    let garbage = Stub::start(|_| (StatusCode::OK, "<html>login</html>".into())).await;
    let auth = build(
        &introspection_settings(&garbage.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    assert_eq!(
        auth.authenticate(&mas_access_token()).await.unwrap_err(),
        AuthError::Unavailable
    );

    let forbidden = Stub::start(|_| {
        (
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_client"}"#.into(),
        )
    })
    .await;
    let auth = build(
        &introspection_settings(&forbidden.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    assert_eq!(
        auth.authenticate(&mas_access_token()).await.unwrap_err(),
        AuthError::Unavailable
    );

    let slow = mas_stub(|_| true).await;
    slow.set_delay(Duration::from_millis(600));
    let mut settings = introspection_settings(&slow.url, ClientAuthMethod::Bearer);
    settings.introspection.timeout_ms = 150;
    let auth = build(&settings, &CacheConfig::default());
    let started = std::time::Instant::now();
    assert_eq!(
        auth.authenticate(&mas_access_token()).await.unwrap_err(),
        AuthError::Unavailable
    );
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn the_cache_never_outlives_the_token() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    // Active for 2 s on the first call; afterwards the provider says it is gone.
    let stub = Stub::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            (StatusCode::OK, mas_active_body("alice", "ABCDEFGHIJ", 2))
        } else {
            (StatusCode::OK, r#"{"active":false}"#.into())
        }
    })
    .await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig {
            max_ttl_s: 60,
            ..CacheConfig::default()
        },
    );
    let token = mas_access_token();
    let id = auth.authenticate(&token).await.unwrap();
    assert!(id.expires_at.unwrap() <= SystemTime::now() + Duration::from_secs(2));
    assert!(auth.authenticate(&token).await.is_ok());
    assert_eq!(stub.calls(), 1);

    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(auth.authenticate(&token).await.unwrap_err(), INVALID);
    assert_eq!(
        stub.calls(),
        2,
        "expired entry was dropped, provider asked again"
    );
}

#[tokio::test]
async fn max_ttl_bounds_tokens_without_expiry() {
    let stub = Stub::start(|_| {
        (
            StatusCode::OK,
            json!({"active": true, "username": "alice", "scope": "openid"}).to_string(),
        )
    })
    .await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig {
            max_ttl_s: 1,
            ..CacheConfig::default()
        },
    );
    let token = mas_access_token();
    auth.authenticate(&token).await.unwrap();
    auth.authenticate(&token).await.unwrap();
    assert_eq!(stub.calls(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    auth.authenticate(&token).await.unwrap();
    assert_eq!(stub.calls(), 2);
}

#[tokio::test]
async fn active_but_expired_or_userless_answers_are_invalid() {
    let stub = Stub::start(|req| {
        let body = if req.form()["token"].ends_with("AAAAAA") {
            json!({"active": true, "username": "alice", "exp": unix_now() - 10})
        } else {
            json!({"active": true, "client_id": "machine"})
        };
        (StatusCode::OK, body.to_string())
    })
    .await;
    let mut settings = introspection_settings(&stub.url, ClientAuthMethod::Bearer);
    settings.legacy.enabled = false;
    let auth = build(&settings, &CacheConfig::default());
    // Opaque tokens reach introspection when legacy is off.
    assert_eq!(
        auth.authenticate("opaque-AAAAAA").await.unwrap_err(),
        INVALID
    );
    assert_eq!(
        auth.authenticate("opaque-BBBBBB").await.unwrap_err(),
        INVALID
    );
    assert_eq!(stub.calls(), 2);
}

#[tokio::test]
async fn the_endpoint_can_come_from_discovery() {
    let stub = Stub::start(|req| match req.path.as_str() {
        "/.well-known/openid-configuration" => {
            // The stub's own URL is not known inside the closure; the Host header is.
            let host = req.header("host").unwrap().to_string();
            (
                StatusCode::OK,
                json!({
                    "issuer": format!("http://{host}"),
                    "introspection_endpoint": format!("http://{host}/oauth2/introspect"),
                })
                .to_string(),
            )
        }
        "/oauth2/introspect" => (StatusCode::OK, mas_active_body("alice", "ABCDEFGHIJ", 60)),
        _ => (StatusCode::NOT_FOUND, "{}".into()),
    })
    .await;
    let mut settings = introspection_settings(&stub.url, ClientAuthMethod::Bearer);
    settings.introspection.endpoint = None;
    settings.issuer = Some(stub.url.clone());
    let auth = build(&settings, &CacheConfig::default());
    assert!(auth.authenticate(&mas_access_token()).await.is_ok());
    assert!(auth.authenticate(&mas_access_token()).await.is_ok());
    let paths: Vec<String> = stub.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/.well-known/openid-configuration",
            "/oauth2/introspect",
            "/oauth2/introspect"
        ],
        "discovery fetched once"
    );
}
