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

use crate::config::RateLimitConfig;

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

    /// Before validating a token the cache does not know: takes one invalid
    /// token's worth from the client's budget, or `Err(retry_after)` once
    /// it is spent. Taken up front, so that validations in flight count:
    /// however many run at once, no more than the burst get through.
    pub fn reserve(&self, ip: IpAddr) -> Result<Reservation, Duration> {
        let Some(b) = &self.buckets else {
            return Ok(Reservation::none());
        };
        let now = b.now();
        let tat = b
            .clients
            .get_with(b.key(ip), || Arc::new(AtomicU64::new(now)));
        // GCRA: refuse when this token would push the debt past the tolerance.
        let taken = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            let next = t.max(now) + b.interval;
            (next - now <= b.tolerance).then_some(next)
        });
        match taken {
            Ok(_) => Ok(Reservation {
                taken: Some((tat, b.interval)),
            }),
            Err(t) => {
                self.limited.inc();
                Err(Duration::from_nanos(
                    t.max(now) + b.interval - now - b.tolerance,
                ))
            }
        }
    }
}

/// One invalid token's worth of a client's budget, spent unless the token
/// turns out not to be invalid.
#[must_use = "a reservation not refunded stays spent"]
pub struct Reservation {
    taken: Option<(Arc<AtomicU64>, u64)>,
}

impl Reservation {
    /// For callers the limiter does not apply to.
    pub fn none() -> Self {
        Reservation { taken: None }
    }

    /// The token was valid (or nobody could tell): the budget is given back.
    pub fn refund(self) {
        if let Some((tat, interval)) = self.taken {
            let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(interval))
            });
        }
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

    /// Reserves and keeps the reservation: an invalid token.
    fn spend(l: &InvalidTokenLimiter, ip: IpAddr) -> Result<(), Duration> {
        l.reserve(ip).map(drop)
    }

    #[test]
    fn the_burst_is_allowed_then_refused_with_a_retry_time() {
        let l = limiter(3, 60);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(spend(&l, ip), Ok(()));
        }
        let retry = spend(&l, ip).unwrap_err();
        assert!(
            retry > Duration::from_millis(900) && retry <= Duration::from_secs(1),
            "{retry:?}"
        );
        assert_eq!(l.limited.get(), 1);
        // Another client is unaffected.
        assert_eq!(spend(&l, "192.0.2.2".parse().unwrap()), Ok(()));
    }

    #[test]
    fn refunded_reservations_cost_nothing() {
        let l = limiter(2, 60);
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        for _ in 0..100 {
            l.reserve(ip).unwrap().refund();
        }
        assert_eq!(spend(&l, ip), Ok(()));
        assert_eq!(spend(&l, ip), Ok(()));
        assert!(spend(&l, ip).is_err());
    }

    #[test]
    fn reservations_in_flight_count_against_the_burst() {
        let l = limiter(20, 60);
        let ip: IpAddr = "192.0.2.6".parse().unwrap();
        // Held, not yet spent nor refunded: as validations in flight are.
        let held: Vec<_> = (0..100).filter_map(|_| l.reserve(ip).ok()).collect();
        assert_eq!(held.len(), 20);
    }

    #[test]
    fn ipv6_clients_share_their_prefix() {
        let l = limiter(1, 60);
        spend(&l, "2001:db8::1".parse().unwrap()).unwrap();
        assert!(spend(&l, "2001:db8::ffff".parse().unwrap()).is_err());
        assert!(spend(&l, "2001:db8:0:1::1".parse().unwrap()).is_ok());
        spend(&l, "::ffff:192.0.2.9".parse().unwrap()).unwrap();
        assert!(spend(&l, "192.0.2.9".parse().unwrap()).is_err());
    }

    #[test]
    fn debt_is_paid_back_over_time() {
        let l = limiter(1, 6000); // one token per 10 ms
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        spend(&l, ip).unwrap();
        assert!(spend(&l, ip).is_err());
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(spend(&l, ip), Ok(()));
    }

    #[test]
    fn disabled_never_refuses() {
        let l = InvalidTokenLimiter::new(&RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        });
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(spend(&l, ip), Ok(()));
        }
    }
}
