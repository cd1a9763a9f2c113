//! Metrics move with traffic, and no token ever reaches the logs.

use crate::support::*;

fn counter(metrics: &str, decision: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("scopegate_requests_total{")
                && l.contains(&format!("decision=\"{decision}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_count_decisions_and_logs_hold_no_token() {
    let upstream = ok_stub().await;
    let gate = GateBuilder::new().binary().start(upstream).await;
    let unknown = "mat_ThisIsAnUnknownTokenThatMustNotLeak_abcdef";

    let before = gate.metrics().await;
    assert_eq!(counter(&before, "allowed"), 0);

    get(
        gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(FULL_TOKEN),
    )
    .await;
    get(
        gate.addr,
        &format!("/_matrix/client/v3/sync?access_token={FULL_TOKEN}"),
        None,
    )
    .await;
    get(
        gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(unknown),
    )
    .await;
    get(
        gate.addr,
        &format!("/_matrix/client/v3/sync?since=1&access_token={unknown}"),
        None,
    )
    .await;
    get(gate.addr, "/_matrix/client/v3/account/whoami", None).await;
    get(
        gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(DEVICE_ONLY_TOKEN),
    )
    .await;
    get(gate.addr, "/_matrix/%2e%2e/x", Some(FULL_TOKEN)).await;

    let after = gate.metrics().await;
    assert_eq!(counter(&after, "allowed"), 2, "{after}");
    assert_eq!(counter(&after, "invalid_token"), 2);
    assert_eq!(counter(&after, "unauthenticated"), 1);
    assert_eq!(counter(&after, "denied"), 1);
    assert_eq!(counter(&after, "bad_request"), 1);
    assert!(after.contains("scopegate_upstream_latency_seconds_bucket"));
    assert!(after.contains("scopegate_gateway_latency_seconds_bucket"));
    assert!(after.contains("scopegate_connections_open"));
    assert!(after.contains("scopegate_requests_in_flight 0"));

    let logs = gate
        .wait_log("access line per request", |logs| {
            logs.matches("scopegate::access").count() >= 7
        })
        .await;
    for secret in [FULL_TOKEN, unknown, DEVICE_ONLY_TOKEN] {
        assert!(
            !logs.contains(secret),
            "a token leaked into the logs:\n{logs}"
        );
    }
    assert!(
        !logs.contains("access_token="),
        "query strings are not logged"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let upstream = ok_stub().await;
    let gate = Gate::start(upstream).await;
    let (health, _) = get(gate.admin, "/healthz", None).await;
    assert_eq!(health.status, 200);
    // The probe runs at start; readiness follows within a probe interval.
    let mut ready = 0;
    for _ in 0..50 {
        ready = get(gate.admin, "/readyz", None).await.0.status.as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let upstream = ok_stub().await;
    let gate = GateBuilder::new()
        .binary()
        .log(r#"format = "json""#)
        .start(upstream)
        .await;
    get(
        gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(FULL_TOKEN),
    )
    .await;
    let logs = gate
        .wait_log("access line", |logs| logs.contains("scopegate::access"))
        .await;
    let access: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &serde_json::Value| v["target"] == "scopegate::access")
        .collect();
    let line = access
        .iter()
        .find(|v| v["path"] == "/_matrix/client/v3/account/whoami")
        .expect("an access line for the request");
    assert_eq!(line["status"], 200);
    assert_eq!(line["decision"], "allowed");
    assert_eq!(line["user"], "@alice:example.org");
}

#[tokio::test]
async fn access_log_can_be_turned_off() {
    let upstream = ok_stub().await;
    let gate = GateBuilder::new()
        .binary()
        .log("access = false")
        .start(upstream)
        .await;
    let (parts, _) = get(
        gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(FULL_TOKEN),
    )
    .await;
    assert_eq!(parts.status, 200);
    let logs = gate.logs_flushed().await;
    assert!(logs.contains("scopegate listening"), "{logs}");
    assert!(!logs.contains("scopegate::access"), "{logs}");
}
