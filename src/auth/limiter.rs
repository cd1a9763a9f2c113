//! Slows down a client that keeps presenting invalid tokens, so the gateway
//! cannot be used to flood the identity provider with guesses. Each client
//! gets a GCRA bucket (one atomic timestamp); buckets live in a bounded cache,
//! so memory is capped however many addresses an attacker uses.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use prometheus::{IntCounter, Registry};

use super::config::RateLimitConfig;

pub struct InvalidTokenLimiter {
    buckets: Option<Buckets>,
    limited: IntCounter,
}

struct Buckets {
    clients: Cache<IpAddr, Arc<AtomicU64>>,
    epoch: Instant,
    /// One invalid token is "paid back" after this long (ns).
    interval: u64,
    /// `burst * interval` (ns): the debt a client may run up.
    tolerance: u64,
    ipv6_prefix_len: u8,
}

impl InvalidTokenLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        let limited = IntCounter::new(
            "scopegate_rate_limited_requests_total",
            "Requests refused with 429 because the client sent too many invalid tokens.",
        )
        .expect("a valid metric name");
        let buckets = cfg.enabled.then(|| {
            let interval = 60_000_000_000 / u64::from(cfg.per_minute.max(1));
            let tolerance = interval * u64::from(cfg.burst.max(1));
            Buckets {
                // A bucket idle for a whole tolerance is full again: forgetting it changes nothing.
                clients: Cache::builder()
                    .max_capacity(cfg.max_clients.max(1))
                    .time_to_idle(Duration::from_nanos(tolerance))
                    .build(),
                epoch: Instant::now(),
                interval,
                tolerance,
                ipv6_prefix_len: cfg.ipv6_prefix_len,
            }
        });
        InvalidTokenLimiter { buckets, limited }
    }

    /// Adds `scopegate_rate_limited_requests_total` to `registry`.
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), String> {
        registry
            .register(Box::new(self.limited.clone()))
            .map_err(|e| format!("cannot register the rate-limit metric: {e}"))
    }

    /// Before authenticating: `Err(retry_after)` once the client's budget of
    /// invalid tokens is spent.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(b) = &self.buckets else {
            return Ok(());
        };
        let Some(tat) = b.clients.get(&b.key(ip)) else {
            return Ok(());
        };
        let now = b.now();
        // GCRA: the next invalid token would push the debt past the tolerance.
        let debt_after = tat.load(Ordering::Relaxed).saturating_sub(now) + b.interval;
        if debt_after > b.tolerance {
            self.limited.inc();
            return Err(Duration::from_nanos(debt_after - b.tolerance));
        }
        Ok(())
    }

    /// After a request ended in `M_UNKNOWN_TOKEN`.
    pub fn record_invalid(&self, ip: IpAddr) {
        let Some(b) = &self.buckets else {
            return;
        };
        let now = b.now();
        let tat = b
            .clients
            .get_with(b.key(ip), || Arc::new(AtomicU64::new(now)));
        let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            Some(t.max(now) + b.interval)
        });
    }
}

impl Buckets {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// One bucket per IPv4 address, per IPv6 prefix (a host gets a whole /64).
    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return IpAddr::V4(v4);
                }
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, per_minute: u32) -> InvalidTokenLimiter {
        InvalidTokenLimiter::new(&RateLimitConfig {
            burst,
            per_minute,
            ..RateLimitConfig::default()
        })
    }

    #[test]
    fn the_burst_is_allowed_then_refused_with_a_retry_time() {
        let l = limiter(3, 60);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.check(ip), Ok(()));
            l.record_invalid(ip);
        }
        let retry = l.check(ip).unwrap_err();
        assert!(
            retry > Duration::from_millis(900) && retry <= Duration::from_secs(1),
            "{retry:?}"
        );
        assert_eq!(l.limited.get(), 1);
        // Another client is unaffected.
        assert_eq!(l.check("192.0.2.2".parse().unwrap()), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_their_prefix() {
        let l = limiter(1, 60);
        l.record_invalid("2001:db8::1".parse().unwrap());
        assert!(l.check("2001:db8::ffff".parse().unwrap()).is_err());
        assert!(l.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        l.record_invalid("::ffff:192.0.2.9".parse().unwrap());
        assert!(l.check("192.0.2.9".parse().unwrap()).is_err());
    }

    #[test]
    fn debt_is_paid_back_over_time() {
        let l = limiter(1, 6000); // one token per 10 ms
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        l.record_invalid(ip);
        assert!(l.check(ip).is_err());
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(l.check(ip), Ok(()));
    }

    #[test]
    fn disabled_never_refuses() {
        let l = InvalidTokenLimiter::new(&RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        });
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        for _ in 0..100 {
            l.record_invalid(ip);
        }
        assert_eq!(l.check(ip), Ok(()));
    }
}
