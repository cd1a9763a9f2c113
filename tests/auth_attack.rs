//! Floods of made-up tokens: bounded cache, bounded provider calls, 429s.

mod auth_common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use auth_common::{build, introspection_settings, mas_stub, random_alnum};
use scopegate::auth::{
    AuthError, CacheConfig, ClientAuthMethod, InvalidTokenLimiter, RateLimitConfig,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_tokens_stay_within_the_capacity() {
    let stub = mas_stub(|_| false).await;
    let cache = CacheConfig {
        capacity: 500,
        ..CacheConfig::default()
    };
    let auth = Arc::new(build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &cache,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..20 {
        let auth = auth.clone();
        tasks.spawn(async move {
            for i in 0..500 {
                let token = format!("opaque-{worker}-{i}-{}", random_alnum(20));
                let r = auth.authenticate(&token).await;
                assert_eq!(r.unwrap_err(), AuthError::Invalid { soft_logout: false });
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    auth.run_pending_tasks().await;
    assert!(
        auth.entry_count() <= 500,
        "entry_count {}",
        auth.entry_count()
    );
    assert_eq!(stub.calls(), 10_000);

    // MAS-shaped guesses cost nothing at all.
    let before = stub.calls();
    for _ in 0..10_000 {
        let guess = format!("mat_{}_{}", random_alnum(30), random_alnum(6));
        assert!(auth.authenticate(&guess).await.is_err());
    }
    assert_eq!(stub.calls(), before);
}

#[tokio::test]
async fn the_limiter_bounds_provider_calls_from_one_client() {
    let stub = mas_stub(|_| false).await;
    let auth = build(
        &introspection_settings(&stub.url, ClientAuthMethod::Bearer),
        &CacheConfig::default(),
    );
    let limiter = InvalidTokenLimiter::new(&RateLimitConfig {
        burst: 20,
        per_minute: 30,
        ..RateLimitConfig::default()
    });
    let registry = prometheus::Registry::new();
    limiter.register_metrics(&registry).unwrap();
    let attacker: IpAddr = "203.0.113.7".parse().unwrap();
    let mut limited = 0;
    // What the pipeline does per request: check, authenticate, record.
    for i in 0..10_000 {
        if let Err(retry) = limiter.check(attacker) {
            assert!(
                retry > Duration::ZERO && retry <= Duration::from_secs(2),
                "{retry:?}"
            );
            limited += 1;
            continue;
        }
        let token = format!("opaque-{i}-{}", random_alnum(20));
        if let Err(AuthError::Invalid { .. }) = auth.authenticate(&token).await {
            limiter.record_invalid(attacker);
        }
    }
    assert_eq!(stub.calls(), 20, "only the burst reached the provider");
    assert_eq!(limited, 10_000 - 20);
    assert!(
        limiter.check("203.0.113.8".parse().unwrap()).is_ok(),
        "other clients unaffected"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("scopegate_rate_limited_requests_total 9980"),
        "{text}"
    );
}
