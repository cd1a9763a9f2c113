//! What a token costs the gateway: a full JWT validation on a cache miss
//! (RS256, ES256, EdDSA, keys already fetched) and a cache hit.
//!
//! "uncached" evicts the token before each call, so it measures the real
//! miss path: SHA-256, cache miss, signature and claim checks, insert.
//! "jwt_parse" is the part of a miss that reads the token's JSON: the
//! decoded header and claims of the RS256 token, parsed as the validator
//! parses them (no base64, no signature, no checks).
//! "uncached_pool" is the load harness's uncached contender instead: a
//! cache of capacity 1 and 1024 distinct RS256 tokens in turn, so every
//! call is a miss whose insert evicts another entry.
//!
//! `TOKENS_BENCH_CPU=1` measures the benchmark thread's CPU time instead of
//! wall time: on a shared machine, time spent waiting for a CPU then does not
//! count, which makes before/after runs comparable. Everything measured runs
//! on that thread (a current-thread runtime).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};
use jsonwebtoken::Algorithm;
use scopegate::auth::Authenticator;
use scopegate::config::CacheConfig;
use scopegate::demo::issuer::{DemoIssuer, DEMO_AUDIENCE};
use serde_json::json;
use tokio::runtime::Runtime;

fn setup(rt: &Runtime, cache: &CacheConfig) -> (DemoIssuer, Authenticator) {
    rt.block_on(async {
        let issuer = DemoIssuer::start().await.expect("demo issuer");
        let auth = Authenticator::from_config(
            &issuer.settings("example.org"),
            cache,
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
    issuer.sign(alg, &claims(issuer))
}

fn claims(issuer: &DemoIssuer) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "iss": issuer.issuer(),
        "aud": DEMO_AUDIENCE,
        "sub": "alice",
        "scope": "urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ",
        "client_id": "bench",
        "iat": now,
        "exp": now + 3600,
    })
}

fn jwt<M: Measurement + 'static>(c: &mut Criterion<M>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (issuer, auth) = setup(&rt, &CacheConfig::default());

    let mut uncached = c.benchmark_group("jwt_uncached");
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let t = token(&issuer, alg);
        uncached.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    auth.evict_all();
                    auth.authenticate(&t).await.expect("valid")
                })
            })
        });
    }
    uncached.finish();

    let t = token(&issuer, Algorithm::RS256);
    let mut parts = t
        .split('.')
        .map(|p| URL_SAFE_NO_PAD.decode(p).expect("base64url"));
    let (header, payload) = (parts.next().expect("header"), parts.next().expect("claims"));
    c.bench_function("jwt_parse/RS256", |b| {
        b.iter(|| assert!(scopegate::auth::parse_jwt_json(&header, &payload)))
    });

    let (pool_issuer, pool_auth) = setup(
        &rt,
        &CacheConfig {
            capacity: 1,
            ..CacheConfig::default()
        },
    );
    let pool: Vec<String> = (0..1024)
        .map(|i| {
            let mut claims = claims(&pool_issuer);
            claims["jti"] = json!(format!("pool-{i}"));
            pool_issuer.sign(Algorithm::RS256, &claims)
        })
        .collect();
    let mut next = pool.iter().cycle();
    c.bench_function("jwt_uncached_pool/RS256", |b| {
        b.iter(|| {
            let t = next.next().expect("cycle");
            rt.block_on(pool_auth.authenticate(t)).expect("valid")
        })
    });

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

fn main() {
    let config = |c: Criterion| {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(30)
    };
    if std::env::var_os("TOKENS_BENCH_CPU").is_some_and(|v| v != "0") {
        let mut c = config(Criterion::default())
            .with_measurement(ThreadCpu)
            .configure_from_args();
        jwt(&mut c);
        c.final_summary();
    } else {
        let mut c = config(Criterion::default()).configure_from_args();
        jwt(&mut c);
        c.final_summary();
    }
}

/// CPU time of the calling thread, from `/proc/thread-self/schedstat` (ns).
struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat (Linux with schedstats)");
    stat.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat runtime")
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical_ns < 1e3 {
            (1.0, "ns cpu")
        } else if typical_ns < 1e6 {
            (1e-3, "µs cpu")
        } else {
            (1e-6, "ms cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, _: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n,
            _ => 1,
        } as f64;
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v);
        "per cpu second"
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns"
    }
}
