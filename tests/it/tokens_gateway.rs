//! Token validation in the running gateway: introspected tokens are cached,
//! logouts revoke them, a provider outage fails closed for new tokens only,
//! floods of bad tokens meet 429, and operators can revoke by hand.

use http::Request;

use crate::support::*;

fn introspection(provider: &Stub) -> String {
    introspection_config(provider, "negative_ttl_s = 0")
}

async fn whoami(gate: &Gate, token: &str) -> (u16, serde_json::Value) {
    let (parts, body) = get(gate.addr, "/_matrix/client/v3/account/whoami", Some(token)).await;
    let value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        json(&body)
    };
    (parts.status.as_u16(), value)
}

async fn post(gate: &Gate, path: &str, token: &str) -> u16 {
    let req = Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .body(full("{}"))
        .unwrap();
    send(gate.addr, req).await.0.status.as_u16()
}

// Refusals are not cached here (`negative_ttl_s = 0`): what refuses a
// revoked token is the revocation itself.

#[tokio::test]
async fn a_token_logged_out_through_the_gateway_stays_refused() {
    let provider = mas_stub(|_| true).await;
    let gate = GateBuilder::new()
        .rest(&introspection(&provider))
        .start(ok_stub().await)
        .await;
    let token = mas_access_token();

    assert_eq!(whoami(&gate, &token).await.0, 200);
    assert_eq!(whoami(&gate, &token).await.0, 200);
    assert_eq!(
        provider.calls(),
        1,
        "the second request is answered from cache"
    );

    assert_eq!(post(&gate, "/_matrix/client/v3/logout", &token).await, 200);
    for _ in 0..3 {
        let (status, body) = whoami(&gate, &token).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (401, Some("M_UNKNOWN_TOKEN"))
        );
    }
    assert_eq!(
        provider.calls(),
        1,
        "refused without asking the provider, which still says active"
    );
}

#[tokio::test]
async fn logout_all_refuses_every_token_the_user_had() {
    let provider = mas_stub(|_| true).await; // every token is alice's
    let gate = GateBuilder::new()
        .rest(&introspection(&provider))
        .start(ok_stub().await)
        .await;
    let (phone, laptop) = (mas_access_token(), mas_access_token());
    assert_eq!(whoami(&gate, &phone).await.0, 200);
    assert_eq!(whoami(&gate, &laptop).await.0, 200);
    assert_eq!(provider.calls(), 2);

    assert_eq!(
        post(&gate, "/_matrix/client/v3/logout/all", &phone).await,
        200
    );
    assert_eq!(whoami(&gate, &phone).await.0, 401);
    assert_eq!(
        whoami(&gate, &laptop).await.0,
        401,
        "the other session's cached token is refused too"
    );
    assert_eq!(provider.calls(), 2);
    // Introspected tokens: the provider, asked afresh, has the last word
    // (here it still says active; MAS would not after its own logout).
    assert_eq!(whoami(&gate, &laptop).await.0, 200);
    assert_eq!(provider.calls(), 3);
}

#[tokio::test]
async fn provider_outage_fails_closed_for_new_tokens_only() {
    let provider = mas_stub(|_| true).await;
    let gate = GateBuilder::new()
        .rest(&introspection(&provider))
        .start(ok_stub().await)
        .await;
    let cached = mas_access_token();
    assert_eq!(whoami(&gate, &cached).await.0, 200);

    provider.set_down(true);
    let (status, body) = whoami(&gate, &mas_access_token()).await;
    assert_eq!((status, body["errcode"].as_str()), (503, Some("M_UNKNOWN")));
    assert_eq!(
        whoami(&gate, &cached).await.0,
        200,
        "cached tokens keep working"
    );

    provider.set_down(false);
    assert_eq!(
        whoami(&gate, &mas_access_token()).await.0,
        200,
        "service resumes"
    );
    let metrics = gate.metrics().await;
    assert!(
        metrics.contains(r#"decision="provider_error""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_flood_of_invalid_tokens_meets_429_but_valid_cached_tokens_pass() {
    let good = mas_access_token();
    let known = good.clone();
    let provider = mas_stub(move |t| t == known).await;
    let gate = GateBuilder::new()
        .rest(&introspection(&provider))
        .rest("[auth.rate_limit]\nburst = 3\nper_minute = 6")
        .start(ok_stub().await)
        .await;
    assert_eq!(whoami(&gate, &good).await.0, 200);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let (parts, body) = get(
            gate.addr,
            "/_matrix/client/v3/account/whoami",
            Some(&mas_access_token()),
        )
        .await;
        if parts.status == 429 {
            assert_eq!(json(&body)["errcode"], "M_LIMIT_EXCEEDED");
            retry_after = parts
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(parts.status.as_u16());
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(
        provider.calls(),
        4,
        "the provider saw the good token and the budget"
    );
    assert_eq!(
        whoami(&gate, &good).await.0,
        200,
        "a cached valid token still passes"
    );
    assert_eq!(
        whoami(&gate, FULL_TOKEN).await.0,
        200,
        "so does a static one"
    );
    assert!(gate
        .metrics()
        .await
        .contains("scopegate_rate_limited_requests_total 7"));
}

#[tokio::test]
async fn admin_eviction_revokes() {
    let provider = mas_stub(|_| true).await;
    let gate = GateBuilder::new()
        .rest(&introspection(&provider))
        .start(ok_stub().await)
        .await;
    let (token, other) = (mas_access_token(), mas_access_token());
    assert_eq!(whoami(&gate, &token).await.0, 200);
    assert_eq!(whoami(&gate, &other).await.0, 200);
    assert_eq!(provider.calls(), 2);

    let evict = |body: String| {
        let req = Request::post("/cache/evict").body(full(body)).unwrap();
        send(gate.admin, req)
    };
    let (parts, body) = evict(serde_json::json!({ "token": token }).to_string()).await;
    assert_eq!(parts.status, 200);
    assert_eq!(json(&body)["evicted"], "token");
    assert_eq!(whoami(&gate, &token).await.0, 401);
    assert_eq!(whoami(&gate, &token).await.0, 401, "and stays refused");
    assert_eq!(whoami(&gate, &other).await.0, 200);
    assert_eq!(provider.calls(), 2);

    let (parts, _) = evict(r#"{"user_id":"@alice:example.org"}"#.into()).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        whoami(&gate, &other).await.0,
        401,
        "cached before the eviction"
    );
    assert_eq!(provider.calls(), 2);

    let (parts, body) = evict(r#"{"all":true}"#.into()).await;
    assert_eq!(parts.status, 200);
    assert_eq!(json(&body)["entries"], 0);
    assert_eq!(
        whoami(&gate, &token).await.0,
        401,
        "forgetting the cache keeps revocations"
    );
    let (parts, _) = evict(r#"{"token":"a","all":true}"#.into()).await;
    assert_eq!(parts.status, 400);
}

/// 2,000 made-up MAS tokens from one address over 100 connections at once:
/// validations in flight count against the budget, so the provider sees no
/// more than the burst, and a cached token keeps working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_flood_reaches_the_provider_at_most_the_burst() {
    let good = mas_access_token();
    let known = good.clone();
    let provider = mas_stub(move |t| t == known).await;
    // Each introspection takes a while, so many are in flight at once.
    provider.set_delay(std::time::Duration::from_millis(20));
    let gate = GateBuilder::new()
        .rest(&introspection(&provider))
        .rest("[auth.rate_limit]\nburst = 20\nper_minute = 30")
        .start(ok_stub().await)
        .await;
    assert_eq!(whoami(&gate, &good).await.0, 200);

    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let addr = gate.addr;
        flood.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut conn, driver) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(driver);
            let mut statuses = Vec::new();
            for _ in 0..20 {
                let req = Request::get("/_matrix/client/v3/account/whoami")
                    .header("host", "gate")
                    .header("authorization", format!("Bearer {}", mas_access_token()))
                    .body(full(""))
                    .unwrap();
                statuses.push(conn.send_request(req).await.unwrap().status().as_u16());
            }
            statuses
        });
    }
    let legit = tokio::spawn({
        let addr = gate.addr;
        let good = good.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                let (parts, _) = get(addr, "/_matrix/client/v3/account/whoami", Some(&good)).await;
                statuses.push(parts.status.as_u16());
            }
            statuses
        }
    });
    let mut counts = std::collections::BTreeMap::new();
    while let Some(statuses) = flood.join_next().await {
        for s in statuses.unwrap() {
            *counts.entry(s).or_insert(0) += 1;
        }
    }
    let legit = legit.await.unwrap();
    assert!(legit.iter().all(|s| *s == 200), "{legit:?}");
    let calls = provider.calls() - 1;
    // 30 a minute refill the budget: one more if the flood outlasts 2 s.
    assert!(
        calls <= 21,
        "{calls} provider calls for the flood; {counts:?}"
    );
    assert_eq!(counts.get(&401).copied().unwrap_or(0), calls, "{counts:?}");
    assert_eq!(
        counts.get(&429).copied().unwrap_or(0),
        2000 - calls,
        "{counts:?}"
    );
}
