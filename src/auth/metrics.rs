//! What the token layer reports to Prometheus. Labels are fixed, small sets
//! (validator names and outcomes): a token, a user id or a key id never
//! becomes a label, so the series count cannot grow with traffic.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub(crate) struct AuthMetrics {
    entries: IntGauge,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// Labels: `source` (static, jwt, introspection, legacy, precheck),
    /// `result` (valid, invalid, unavailable).
    pub validations: IntCounterVec,
    pub introspection_seconds: Histogram,
    /// Label `result`: ok, error.
    pub jwks_refreshes: IntCounterVec,
}

impl AuthMetrics {
    pub(crate) fn new() -> Result<Self, String> {
        Ok(AuthMetrics {
            entries: IntGauge::new(
                "scopegate_token_cache_entries",
                "Tokens (valid and recently refused) held in the cache.",
            )
            .map_err(fail)?,
            cache_hits: IntCounter::new(
                "scopegate_token_cache_hits_total",
                "Token lookups answered from the cache.",
            )
            .map_err(fail)?,
            cache_misses: IntCounter::new(
                "scopegate_token_cache_misses_total",
                "Token lookups that needed a validator.",
            )
            .map_err(fail)?,
            validations: IntCounterVec::new(
                Opts::new(
                    "scopegate_token_validations_total",
                    "Tokens judged by a validator, by validator and outcome.",
                ),
                &["source", "result"],
            )
            .map_err(fail)?,
            introspection_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "scopegate_introspection_duration_seconds",
                    "Time for one RFC 7662 introspection call, including waiting for a slot.",
                )
                .buckets(vec![
                    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .map_err(fail)?,
            jwks_refreshes: IntCounterVec::new(
                Opts::new(
                    "scopegate_jwks_refreshes_total",
                    "Fetches of the issuer's signing keys, by outcome.",
                ),
                &["result"],
            )
            .map_err(fail)?,
        })
    }

    /// Adds everything to `registry`; `entries` is read at scrape time.
    pub(crate) fn register(
        &self,
        registry: &Registry,
        entries: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<(), String> {
        let collectors: [Box<dyn Collector>; 6] = [
            Box::new(self.cache_hits.clone()),
            Box::new(self.cache_misses.clone()),
            Box::new(self.validations.clone()),
            Box::new(self.introspection_seconds.clone()),
            Box::new(self.jwks_refreshes.clone()),
            Box::new(ReadAtScrape {
                gauge: self.entries.clone(),
                read: Box::new(entries),
            }),
        ];
        for c in collectors {
            registry.register(c).map_err(fail)?;
        }
        Ok(())
    }

    pub(crate) fn validated(&self, source: &str, result: &str) {
        self.validations.with_label_values(&[source, result]).inc();
    }
}

fn fail(e: prometheus::Error) -> String {
    format!("cannot register the token metrics: {e}")
}

/// A gauge whose value is read from its source when scraped, so it is never stale.
struct ReadAtScrape {
    gauge: IntGauge,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Collector for ReadAtScrape {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge
            .set(i64::try_from((self.read)()).unwrap_or(i64::MAX));
        self.gauge.collect()
    }
}
