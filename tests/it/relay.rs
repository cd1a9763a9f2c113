//! The introspection relay: the homeserver asks scopegate, which answers from
//! the gateway's own cache and validators.

use std::net::SocketAddr;

use http::{Request, StatusCode};

use crate::support::*;

const SECRET: &str = "relay-shared-secret-0123456789";

struct Setup {
    gate: Gate,
    relay: SocketAddr,
    provider: Stub,
}

async fn setup(provider: Stub, relay_extra: &str, cache_extra: &str) -> Setup {
    let relay = free_port();
    let gate = GateBuilder::new()
        .rest(&introspection_config(
            &provider,
            &format!("negative_ttl_s = 5\n{cache_extra}"),
        ))
        .rest(&format!(
            "[relay]\nlisten = \"{relay}\"\nsecret = \"{SECRET}\"\n{relay_extra}\n"
        ))
        .start(ok_stub().await)
        .await;
    Setup {
        gate,
        relay,
        provider,
    }
}

/// What the homeserver sends: Synapse's `MasDelegatedAuth` request.
async fn ask(
    relay: SocketAddr,
    secret: Option<&str>,
    token: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post("/oauth2/introspect")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .header("x-mas-supports-device-id", "1");
    if let Some(secret) = secret {
        req = req.header("authorization", format!("Bearer {secret}"));
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let (parts, body) = send(relay, req.body(full(body)).unwrap()).await;
    (parts.status, json(&body))
}

fn scopes(answer: &serde_json::Value) -> Vec<String> {
    answer["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn only_the_homeserver_may_ask() {
    let s = setup(mas_stub(|_| true).await, "", "").await;
    let token = mas_access_token();
    assert_eq!(ask(s.relay, None, &token).await.0, 401);
    assert_eq!(
        ask(s.relay, Some("relay-shared-secret-012345678X"), &token)
            .await
            .0,
        401
    );
    assert_eq!(ask(s.relay, Some(SECRET), &token).await.0, 200);
    assert_eq!(
        s.provider.calls(),
        1,
        "refused callers cost the provider nothing"
    );
}

#[tokio::test]
async fn one_provider_lookup_serves_gateway_and_homeserver() {
    let s = setup(mas_stub(|_| true).await, "", "").await;
    let token = mas_access_token();
    let (parts, _) = get(
        s.gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(&token),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(s.provider.calls(), 1);

    let (status, answer) = ask(s.relay, Some(SECRET), &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.provider.calls(),
        1,
        "the relay answered from the gateway's cache"
    );
    assert_eq!(answer["active"], true);
    assert_eq!(answer["username"], "alice");
    assert_eq!(answer["device_id"], "ABCDEFGHIJ");
    assert_eq!(answer["client_id"], "01J9Q3ZKQ8Y6V5D4R3E2W1T0SA");
    assert!(answer["exp"].as_u64().is_some());
    let scopes = scopes(&answer);
    assert!(
        scopes.contains(&"urn:matrix:client:api:*".to_string()),
        "{scopes:?}"
    );
    assert!(scopes.contains(&"urn:matrix:org.matrix.msc2967.client:api:*".to_string()));
    let expires_in = answer["expires_in"].as_u64().unwrap();
    assert!(
        (295..=300).contains(&expires_in),
        "the token's own remaining lifetime: {expires_in}"
    );

    let metrics = s.gate.metrics().await;
    assert!(
        metrics.contains("scopegate_relay_lookups_saved_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"scopegate_relay_requests_total{result="active"} 1"#));
}

#[tokio::test]
async fn tokens_without_an_expiry_have_no_expires_in() {
    let s = setup(mas_stub(|_| true).await, "", "").await;
    // A static token never expires: MAS leaves the field out for such tokens.
    let (_, answer) = ask(s.relay, Some(SECRET), FULL_TOKEN).await;
    assert_eq!(answer["active"], true);
    assert_eq!(answer["username"], "alice");
    assert!(answer.get("expires_in").is_none(), "{answer}");
    assert!(answer.get("exp").is_none(), "{answer}");
}

#[tokio::test]
async fn a_logout_seen_by_the_gateway_is_inactive_at_the_relay() {
    let s = setup(mas_stub(|_| true).await, "", "").await;
    let token = mas_access_token();
    assert_eq!(ask(s.relay, Some(SECRET), &token).await.1["active"], true);
    let req = Request::post("/_matrix/client/v3/logout")
        .header("authorization", format!("Bearer {token}"))
        .body(full("{}"))
        .unwrap();
    assert_eq!(send(s.gate.addr, req).await.0.status, 200);
    let (status, answer) = ask(s.relay, Some(SECRET), &token).await;
    assert_eq!(status, 200);
    assert_eq!(answer, serde_json::json!({"active": false}));
    assert_eq!(
        s.provider.calls(),
        1,
        "though the provider would still say active"
    );
}

/// A provider that vouches for narrow tokens.
async fn narrow_provider() -> Stub {
    introspection_stub(|token| {
        let scope = if token.ends_with("openid") {
            "openid"
        } else {
            "org.matrix.msc2762.timeline:!a:example.org org.matrix.msc2762.send.event:m.room.message"
        };
        serde_json::json!({
            "active": true, "scope": scope, "username": "widget", "sub": "w",
            "client_id": "widget-host", "expires_in": 300,
        })
    })
    .await
}

#[tokio::test]
async fn narrow_tokens_are_widened_only_when_enabled_and_recognised() {
    let widen = setup(
        narrow_provider().await,
        "widen_restricted_tokens = true",
        "",
    )
    .await;
    let (_, answer) = ask(widen.relay, Some(SECRET), "opaque-widget-token").await;
    let widened = scopes(&answer);
    assert!(
        widened.contains(&"urn:matrix:client:api:*".to_string()),
        "{widened:?}"
    );
    assert!(widened.contains(&"org.matrix.msc2762.timeline:!a:example.org".to_string()));
    let (_, answer) = ask(widen.relay, Some(SECRET), "opaque-token-openid").await;
    assert_eq!(
        scopes(&answer),
        vec!["openid"],
        "unrecognised scopes are not widened"
    );

    let plain = setup(narrow_provider().await, "", "").await;
    let (_, answer) = ask(plain.relay, Some(SECRET), "opaque-widget-token").await;
    assert!(!scopes(&answer).contains(&"urn:matrix:client:api:*".to_string()));
}

#[tokio::test]
async fn discovery_points_the_homeserver_at_the_relay() {
    let s = setup(mas_stub(|_| true).await, "", "").await;
    let (parts, body) = get(s.relay, "/.well-known/openid-configuration", None).await;
    assert_eq!(parts.status, 200);
    let doc = json(&body);
    assert_eq!(
        doc["introspection_endpoint"],
        format!("http://{}/oauth2/introspect", s.relay)
    );
    assert!(doc["account_management_uri"].is_string());
}

#[test]
fn check_warns_when_widening_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://127.0.0.1:8008\"\n\
         [auth]\nserver_name = \"example.org\"\n[relay]\nlisten = \"127.0.0.1:8090\"\n\
         secret = \"{SECRET}\"\nwiden_restricted_tokens = true\n"
    );
    std::fs::write(dir.path().join("gate.toml"), config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config"])
        .arg(dir.path().join("gate.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("widen_restricted_tokens is on"), "{stderr}");
}

/// A JWT cannot be revoked at its issuer: once the gateway has seen it
/// logged out or evicted, it refuses it until its `exp`, past the negative
/// and the positive cache lifetimes, and the relay calls it inactive.
#[tokio::test]
async fn revoked_jwts_stay_refused_until_they_expire() {
    use scopegate::demo::issuer::{DemoIssuer, DEMO_AUDIENCE};
    let issuer = DemoIssuer::start().await.unwrap();
    let relay = free_port();
    let gate = GateBuilder::new()
        .auth(&format!("issuer = \"{}\"", issuer.issuer()))
        .rest(&format!(
            "[auth.jwt]\nenabled = true\naudiences = [\"{DEMO_AUDIENCE}\"]\n\n\
             [cache]\nmax_ttl_s = 1\nnegative_ttl_s = 0\n\n\
             [relay]\nlisten = \"{relay}\"\nsecret = \"{SECRET}\"\n"
        ))
        .start(ok_stub().await)
        .await;
    let now = unix_now();
    // Issued a few seconds ago, as a session's token is; valid ten minutes.
    let jwt = |user: &str, iat: u64| {
        issuer.sign(
            jsonwebtoken::Algorithm::RS256,
            &serde_json::json!({
                "iss": issuer.issuer(), "aud": DEMO_AUDIENCE, "sub": user,
                "scope": "urn:matrix:client:api:*",
                "iat": iat, "exp": now + 600, "jti": random(),
            }),
        )
    };
    let status = |token: String| {
        let addr = gate.addr;
        async move {
            get(addr, "/_matrix/client/v3/account/whoami", Some(&token))
                .await
                .0
                .status
                .as_u16()
        }
    };
    let post = |path: &'static str, token: &str| {
        let req = Request::post(path)
            .header("authorization", format!("Bearer {token}"))
            .body(full("{}"))
            .unwrap();
        send(gate.addr, req)
    };
    let evict = |body: serde_json::Value| {
        let req = Request::post("/cache/evict")
            .body(full(body.to_string()))
            .unwrap();
        send(gate.admin, req)
    };

    let logged_out = jwt("alice", now - 5);
    let evicted = jwt("alice", now - 5);
    let bobs = jwt("bob", now - 5);
    let (carol_phone, carol_laptop) = (jwt("carol", now - 5), jwt("carol", now - 5));
    let alices_other = jwt("alice", now - 5);
    for t in [
        &logged_out,
        &evicted,
        &bobs,
        &carol_phone,
        &carol_laptop,
        &alices_other,
    ] {
        assert_eq!(status(t.clone()).await, 200);
    }

    assert_eq!(
        post("/_matrix/client/v3/logout", &logged_out)
            .await
            .0
            .status,
        200
    );
    assert_eq!(
        evict(serde_json::json!({"token": evicted})).await.0.status,
        200
    );
    assert_eq!(
        evict(serde_json::json!({"user_id": "@bob:example.org"}))
            .await
            .0
            .status,
        200
    );
    assert_eq!(
        post("/_matrix/client/v3/logout/all", &carol_phone)
            .await
            .0
            .status,
        200
    );
    // Issued after bob's eviction (iat within the issuer's leeway).
    let bobs_new = jwt("bob", now + 2);

    let revoked = [&logged_out, &evicted, &bobs, &carol_phone, &carol_laptop];
    for round in ["at once", "after every cache lifetime"] {
        for t in revoked {
            assert_eq!(status(t.clone()).await, 401, "{round}");
            let answer = ask(relay, Some(SECRET), t).await.1;
            assert_eq!(answer, serde_json::json!({"active": false}), "{round}");
        }
        assert_eq!(
            status(alices_other.clone()).await,
            200,
            "{round}: untouched"
        );
        assert_eq!(status(bobs_new.clone()).await, 200, "{round}: issued after");
        assert_eq!(ask(relay, Some(SECRET), &bobs_new).await.1["active"], true);
        // Past `max_ttl_s` and `negative_ttl_s`: nothing cached is left.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
}

fn random() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("jti-{}", N.fetch_add(1, Ordering::Relaxed))
}
