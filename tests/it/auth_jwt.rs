//! JWT access tokens against the in-process demo issuer: discovery, JWKS,
//! signature and claim checks, key rotation, refetch limits, stale keys.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scopegate::auth::{AuthError, Authenticator};
use scopegate::config::{AuthSettings, CacheConfig, JwsAlgorithm, Secret};
use scopegate::demo::issuer::{DemoIssuer, DEMO_AUDIENCE};
use serde_json::{json, Value};

use crate::support::{build, unix_now, SERVER_NAME};

const INVALID: AuthError = AuthError::Invalid { soft_logout: false };

fn claims(issuer: &DemoIssuer) -> Value {
    let now = unix_now();
    json!({
        "iss": issuer.issuer(),
        "aud": DEMO_AUDIENCE,
        "sub": "alice",
        "scope": "urn:matrix:client:api:*",
        "iat": now,
        "exp": now + 300,
        "jti": format!("{}", rand_u64()),
    })
}

fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

async fn setup(tweak: impl FnOnce(&mut AuthSettings)) -> (DemoIssuer, Authenticator) {
    let issuer = DemoIssuer::start().await.unwrap();
    let mut settings = issuer.settings(SERVER_NAME);
    tweak(&mut settings);
    let auth = build(&settings, &CacheConfig::default());
    (issuer, auth)
}

#[tokio::test]
async fn a_valid_rs256_token_yields_its_identity() {
    let (issuer, auth) = setup(|_| {}).await;
    let token = issuer.access_token(
        "alice",
        "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ",
        Duration::from_secs(300),
    );
    let id = auth.authenticate(&token).await.unwrap();
    assert_eq!(id.user_id, "@alice:example.org");
    assert_eq!(id.device_id.as_deref(), Some("ABCDEFGHIJ"));
    assert_eq!(id.client_id.as_deref(), Some("scopegate-demo-client"));
    assert!(id.scopes.has_full_access());
    assert_eq!(id.source, "jwt");
    let left = id
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(290) && left <= Duration::from_secs(300));
}

#[tokio::test]
async fn es256_eddsa_and_ps256_are_accepted() {
    let (issuer, auth) = setup(|_| {}).await;
    for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS256] {
        let token = issuer.sign(alg, &claims(&issuer));
        let id = auth
            .authenticate(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(id.user_id, "@alice:example.org", "{alg:?}");
    }
}

#[tokio::test]
async fn time_claims_are_enforced() {
    let (issuer, auth) = setup(|_| {}).await;
    let now = unix_now();
    let expired = issuer.sign(
        Algorithm::RS256,
        &with(claims(&issuer), json!({"exp": now - 120})),
    );
    assert_eq!(
        auth.authenticate(&expired).await.unwrap_err(),
        AuthError::Invalid { soft_logout: true },
        "expired tokens ask the client to refresh"
    );
    let early = issuer.sign(
        Algorithm::RS256,
        &with(claims(&issuer), json!({"nbf": now + 600})),
    );
    assert_eq!(auth.authenticate(&early).await.unwrap_err(), INVALID);
    let future_iat = issuer.sign(
        Algorithm::RS256,
        &with(claims(&issuer), json!({"iat": now + 600})),
    );
    assert_eq!(auth.authenticate(&future_iat).await.unwrap_err(), INVALID);
    let no_exp = issuer.sign(
        Algorithm::RS256,
        &with(claims(&issuer), json!({"exp": null})),
    );
    assert_eq!(auth.authenticate(&no_exp).await.unwrap_err(), INVALID);
    // Within the leeway (30 s) an expiry just past is still accepted.
    let just = issuer.sign(
        Algorithm::RS256,
        &with(claims(&issuer), json!({"exp": now - 5})),
    );
    assert!(auth.authenticate(&just).await.is_ok());
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let (issuer, auth) = setup(|_| {}).await;
    let iss = issuer.sign(
        Algorithm::RS256,
        &with(claims(&issuer), json!({"iss": "https://evil.example"})),
    );
    assert_eq!(auth.authenticate(&iss).await.unwrap_err(), INVALID);
    let aud = issuer.sign(
        Algorithm::RS256,
        &with(claims(&issuer), json!({"aud": "someone-else"})),
    );
    assert_eq!(auth.authenticate(&aud).await.unwrap_err(), INVALID);
    let aud_list = issuer.sign(
        Algorithm::RS256,
        &with(
            claims(&issuer),
            json!({"aud": ["someone-else", DEMO_AUDIENCE]}),
        ),
    );
    assert!(
        auth.authenticate(&aud_list).await.is_ok(),
        "one of several audiences is ours"
    );
}

#[tokio::test]
async fn forged_signatures_are_refused() {
    let (issuer, auth) = setup(|_| {}).await;
    let a = issuer.sign(Algorithm::RS256, &claims(&issuer));
    let b = issuer.sign(
        Algorithm::RS256,
        &with(claims(&issuer), json!({"sub": "mallory"})),
    );
    // b's header and claims with a's signature.
    let (b_signed, _) = b.rsplit_once('.').unwrap();
    let (_, a_sig) = a.rsplit_once('.').unwrap();
    let spliced = format!("{b_signed}.{a_sig}");
    assert_eq!(auth.authenticate(&spliced).await.unwrap_err(), INVALID);

    // alg: none, no signature.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims(&issuer).to_string());
    assert_eq!(
        auth.authenticate(&format!("{header}.{body}."))
            .await
            .unwrap_err(),
        INVALID
    );
}

/// RFC 8725 §2.1: an HS256 token whose "secret" is the issuer's RSA public key.
#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let (issuer, auth) = setup(|_| {}).await;
    let jwks = issuer.jwks();
    let rsa = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(rsa["kid"].as_str().unwrap().to_string());
    for secret in [
        URL_SAFE_NO_PAD.decode(rsa["n"].as_str().unwrap()).unwrap(),
        serde_json::to_vec(rsa).unwrap(),
    ] {
        let forged = jsonwebtoken::encode(
            &header,
            &claims(&issuer),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(auth.authenticate(&forged).await.unwrap_err(), INVALID);
    }
}

#[tokio::test]
async fn hmac_works_only_with_the_configured_shared_key() {
    let (issuer, auth) = setup(|s| {
        s.jwt.algorithms.push(JwsAlgorithm(Algorithm::HS256));
        s.jwt.hmac_secret = Some(Secret::new("a shared secret of decent length"));
    })
    .await;
    let header = Header::new(Algorithm::HS256);
    let good = jsonwebtoken::encode(
        &header,
        &claims(&issuer),
        &EncodingKey::from_secret(b"a shared secret of decent length"),
    )
    .unwrap();
    assert_eq!(
        auth.authenticate(&good).await.unwrap().user_id,
        "@alice:example.org"
    );
    let bad = jsonwebtoken::encode(
        &header,
        &claims(&issuer),
        &EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    assert_eq!(auth.authenticate(&bad).await.unwrap_err(), INVALID);
    // Even with HS256 allowed, the RSA public key is no HMAC secret.
    let jwks = issuer.jwks();
    let n = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap()["n"]
        .as_str()
        .unwrap()
        .to_string();
    let confused = jsonwebtoken::encode(
        &header,
        &claims(&issuer),
        &EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(n).unwrap()),
    )
    .unwrap();
    assert_eq!(auth.authenticate(&confused).await.unwrap_err(), INVALID);

    // Listing HS256 without a key is a config error, not a silent accept-nothing.
    let mut settings = issuer.settings(SERVER_NAME);
    settings.jwt.algorithms.push(JwsAlgorithm(Algorithm::HS256));
    let err = Authenticator::from_config(
        &settings,
        &CacheConfig::default(),
        &crate::support::no_upstream(),
        &prometheus::Registry::new(),
    )
    .err()
    .unwrap();
    assert!(err.contains("hmac_secret"), "{err}");
}

#[tokio::test]
async fn typ_is_enforced_when_required() {
    let (issuer, auth) = setup(|s| s.jwt.require_typ = true).await;
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    let plain = issuer.sign_with(header, &claims(&issuer));
    assert_eq!(auth.authenticate(&plain).await.unwrap_err(), INVALID);
    let at = issuer.sign(Algorithm::RS256, &claims(&issuer));
    assert!(auth.authenticate(&at).await.is_ok());
}

#[tokio::test]
async fn user_and_scopes_come_from_the_documented_claims() {
    let (issuer, auth) = setup(|_| {}).await;
    let t = issuer.sign(
        Algorithm::ES256,
        &with(
            claims(&issuer),
            json!({"username": "carol", "sub": "0b5e-uuid", "scope": null, "scp": ["openid", "urn:matrix:client:api:*"], "device_id": "DEV1"}),
        ),
    );
    let id = auth.authenticate(&t).await.unwrap();
    assert_eq!(id.user_id, "@carol:example.org");
    assert_eq!(id.device_id.as_deref(), Some("DEV1"));
    assert!(id.scopes.contains("openid") && id.scopes.has_full_access());

    let full = issuer.sign(
        Algorithm::ES256,
        &with(claims(&issuer), json!({"sub": "@dave:other.org"})),
    );
    assert_eq!(
        auth.authenticate(&full).await.unwrap().user_id,
        "@dave:other.org"
    );
    let bad = issuer.sign(
        Algorithm::ES256,
        &with(claims(&issuer), json!({"sub": "not a user"})),
    );
    assert_eq!(auth.authenticate(&bad).await.unwrap_err(), INVALID);
}

async fn wait_for_fetches(issuer: &DemoIssuer, n: usize) {
    for _ in 0..200 {
        if issuer.jwks_fetches() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("JWKS fetched {} times, expected {n}", issuer.jwks_fetches());
}

fn unknown_kid_token(issuer: &DemoIssuer, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    issuer.sign_with(header, &claims(issuer))
}

#[tokio::test]
async fn an_unknown_kid_is_invalid() {
    let (issuer, auth) = setup(|_| {}).await;
    let t = unknown_kid_token(&issuer, "no-such-key");
    assert_eq!(auth.authenticate(&t).await.unwrap_err(), INVALID);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_refetch() {
    // The cooldown must outlast generating an RSA key on a busy machine.
    let (issuer, auth) = setup(|s| s.jwt.unknown_kid_cooldown_s = 3).await;
    let old = issuer.access_token("alice", "openid", Duration::from_secs(300));
    auth.authenticate(&old).await.unwrap();
    wait_for_fetches(&issuer, 1).await;
    let before = issuer.jwks_fetches();

    issuer.rotate(Algorithm::RS256);
    let new = issuer.access_token("alice", "openid", Duration::from_secs(300));
    // Within the cooldown of the last fetch: refused, nothing fetched.
    assert_eq!(auth.authenticate(&new).await.unwrap_err(), INVALID);
    assert_eq!(issuer.jwks_fetches(), before);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    // The earlier refusal was not cached: the same token now verifies.
    let id = auth.authenticate(&new).await.unwrap();
    assert_eq!(id.user_id, "@alice:example.org");
    assert_eq!(issuer.jwks_fetches(), before + 1, "exactly one refetch");
}

#[tokio::test]
async fn unknown_kid_refetches_are_bounded_by_the_cooldown() {
    let (issuer, auth) = setup(|s| s.jwt.unknown_kid_cooldown_s = 1).await;
    let auth = Arc::new(auth);
    wait_for_fetches(&issuer, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for round in 0..2 {
        // Signed before the storm starts the cooldown: signing 120 tokens
        // on a busy machine could outlast it.
        let storm: Vec<String> = (0..100)
            .map(|i| unknown_kid_token(&issuer, &format!("made-up-{round}-{i}")))
            .collect();
        let later: Vec<String> = (0..20)
            .map(|i| unknown_kid_token(&issuer, &format!("later-{round}-{i}")))
            .collect();
        let before = issuer.jwks_fetches();
        let mut tasks = tokio::task::JoinSet::new();
        for token in storm {
            let auth = auth.clone();
            tasks.spawn(async move { auth.authenticate(&token).await });
        }
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap().unwrap_err(), INVALID);
        }
        // Sequential ones after the storm, still within the cooldown.
        for token in &later {
            assert_eq!(auth.authenticate(token).await.unwrap_err(), INVALID);
        }
        assert_eq!(
            issuer.jwks_fetches(),
            before + 1,
            "round {round}: one fetch for 120 unknown kids"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

#[tokio::test]
async fn cached_keys_serve_while_the_provider_is_down_then_fail_closed() {
    let (issuer, auth) = setup(|s| {
        s.jwt.max_stale_s = 2;
        s.jwt.refresh_interval_s = 1;
        s.jwt.unknown_kid_cooldown_s = 1;
    })
    .await;
    let token = || issuer.access_token("alice", "openid", Duration::from_secs(300));
    auth.authenticate(&token()).await.unwrap();

    issuer.set_available(false);
    // A token never seen before still verifies against the last good keys.
    auth.authenticate(&token()).await.unwrap();

    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(
        auth.authenticate(&token()).await.unwrap_err(),
        AuthError::Unavailable,
        "keys older than max_stale_s are not trusted"
    );

    issuer.set_available(true);
    // Served again once the refresher (every second) or a refetch after the
    // cooldown (one second) has the keys.
    let back = async {
        while auth.authenticate(&token()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), back)
        .await
        .expect("the keys are fetched again");
}

#[tokio::test]
async fn a_provider_down_at_start_does_not_stop_the_gateway() {
    let settings = AuthSettings {
        issuer: Some("http://127.0.0.1:9".into()),
        ..DemoIssuer::start().await.unwrap().settings(SERVER_NAME)
    };
    let started = std::time::Instant::now();
    let auth = build(&settings, &CacheConfig::default());
    assert!(started.elapsed() < Duration::from_millis(500));
    let issuer = DemoIssuer::start().await.unwrap();
    let t = issuer.access_token("alice", "openid", Duration::from_secs(60));
    assert_eq!(
        auth.authenticate(&t).await.unwrap_err(),
        AuthError::Unavailable
    );
}

#[tokio::test]
async fn metrics_are_registered_and_counted() {
    let issuer = DemoIssuer::start().await.unwrap();
    let registry = prometheus::Registry::new();
    let auth = Authenticator::from_config(
        &issuer.settings(SERVER_NAME),
        &CacheConfig::default(),
        &crate::support::no_upstream(),
        &registry,
    )
    .unwrap();
    let t = issuer.access_token("alice", "openid", Duration::from_secs(60));
    auth.authenticate(&t).await.unwrap();
    auth.authenticate(&t).await.unwrap();
    auth.run_pending_tasks().await;
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for line in [
        "scopegate_token_cache_hits_total 1",
        "scopegate_token_cache_misses_total 1",
        "scopegate_token_cache_entries 1",
        r#"scopegate_token_validations_total{result="valid",source="jwt"} 1"#,
        r#"scopegate_jwks_refreshes_total{result="ok"} 1"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert!(!text.contains(&t[..20]), "no token in metrics");
}
