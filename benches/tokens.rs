//! What a token costs the gateway: a full JWT validation on a cache miss
//! (RS256, ES256, EdDSA, keys already fetched) and a cache hit.
//!
//! "uncached" evicts the token before each call, so it measures the real
//! miss path: SHA-256, cache miss, signature and claim checks, insert.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::Algorithm;
use scopegate::auth::demo_issuer::{DemoIssuer, DEMO_AUDIENCE};
use scopegate::auth::{Authenticator, CacheConfig};
use serde_json::json;
use tokio::runtime::Runtime;

fn setup(rt: &Runtime) -> (DemoIssuer, Authenticator) {
    rt.block_on(async {
        let issuer = DemoIssuer::start().await.expect("demo issuer");
        let auth = Authenticator::from_config(
            &issuer.settings("example.org"),
            &CacheConfig::default(),
            &"http://127.0.0.1:9".parse().unwrap(),
            &prometheus::Registry::new(),
        )
        .expect("demo config");
        // Fetch the keys once, outside the measurement.
        let warm = issuer.access_token("alice", "openid", Duration::from_secs(3600));
        auth.authenticate(&warm).await.expect("warm-up token");
        (issuer, auth)
    })
}

fn token(issuer: &DemoIssuer, alg: Algorithm) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    issuer.sign(
        alg,
        &json!({
            "iss": issuer.issuer(),
            "aud": DEMO_AUDIENCE,
            "sub": "alice",
            "scope": "urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ",
            "client_id": "bench",
            "iat": now,
            "exp": now + 3600,
        }),
    )
}

fn jwt(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (issuer, auth) = setup(&rt);

    let mut uncached = c.benchmark_group("jwt_uncached");
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let t = token(&issuer, alg);
        uncached.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    auth.evict_token(&t).await;
                    auth.authenticate(&t).await.expect("valid")
                })
            })
        });
    }
    uncached.finish();

    let t = token(&issuer, Algorithm::RS256);
    rt.block_on(auth.authenticate(&t)).expect("valid");
    c.bench_function("cached_lookup", |b| {
        b.iter(|| rt.block_on(auth.authenticate(&t)).expect("valid"))
    });

    let guess = "mat_16tugBE5Ta9LIWoSJaAEHHq2g3fx8S_alcBB5";
    c.bench_function("mas_checksum_refusal", |b| {
        b.iter(|| {
            rt.block_on(auth.authenticate(guess))
                .expect_err("bad checksum")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = jwt
}
criterion_main!(benches);
