//! Floods of made-up tokens: bounded cache, bounded provider calls, 429s.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use scopegate::auth::AuthError;
use scopegate::config::{CacheConfig, ClientAuthMethod, RateLimitConfig};

use crate::support::{build, introspection_settings, mas_stub, random_alnum};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_bounds_provider_calls_from_one_client_even_in_parallel() {
    let stub = mas_stub(|_| false).await;
    let mut settings = introspection_settings(&stub.url, ClientAuthMethod::Bearer);
    settings.rate_limit = RateLimitConfig {
        burst: 20,
        per_minute: 30,
        ..RateLimitConfig::default()
    };
    let auth = Arc::new(build(&settings, &CacheConfig::default()));
    let attacker: IpAddr = "203.0.113.7".parse().unwrap();
    // 100 callers at once, as 100 connections would be: every validation in
    // flight must already count against the budget.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..100 {
        let auth = auth.clone();
        tasks.spawn(async move {
            let mut limited = 0;
            for i in 0..100 {
                let token = format!("opaque-{worker}-{i}-{}", random_alnum(20));
                match auth.authenticate_from(&token, attacker).await {
                    Err(AuthError::RateLimited { retry_after }) => {
                        assert!(
                            retry_after > Duration::ZERO && retry_after <= Duration::from_secs(2),
                            "{retry_after:?}"
                        );
                        limited += 1;
                    }
                    r => assert_eq!(r.unwrap_err(), AuthError::Invalid { soft_logout: false }),
                }
            }
            limited
        });
    }
    let mut limited = 0;
    while let Some(r) = tasks.join_next().await {
        limited += r.unwrap();
    }
    // 30 a minute refill: at most one more if the flood outlasts 2 s.
    assert!(
        (20..=21).contains(&stub.calls()),
        "{} provider calls",
        stub.calls()
    );
    assert_eq!(limited, 10_000 - stub.calls());
    let other: IpAddr = "203.0.113.8".parse().unwrap();
    let r = auth.authenticate_from("opaque-other", other).await;
    assert_eq!(
        r.unwrap_err(),
        AuthError::Invalid { soft_logout: false },
        "other clients unaffected"
    );
}

/// Concurrent requests with one uncached valid token share one validation,
/// and with it one share of the budget: a burst of them is not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_valid_token_are_not_limited() {
    let stub = mas_stub(|_| true).await;
    stub.set_delay(Duration::from_millis(50));
    let mut settings = introspection_settings(&stub.url, ClientAuthMethod::Bearer);
    settings.rate_limit = RateLimitConfig {
        burst: 2,
        per_minute: 1,
        ..RateLimitConfig::default()
    };
    let auth = Arc::new(build(&settings, &CacheConfig::default()));
    let client: IpAddr = "203.0.113.9".parse().unwrap();
    let token = crate::support::mas_access_token();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (auth, token) = (auth.clone(), token.clone());
        tasks.spawn(async move { auth.authenticate_from(&token, client).await.is_ok() });
    }
    while let Some(ok) = tasks.join_next().await {
        assert!(ok.unwrap(), "a valid token is never rate limited");
    }
    assert_eq!(stub.calls(), 1);
}
