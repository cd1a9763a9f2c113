//! Prometheus metrics. Labels are bounded by construction: a route label is a
//! rule's template, a decision one of a fixed set; never a raw path or a token.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Latency buckets from 100 µs to 5 min: gateway overhead sits at the low end,
/// `/sync` long-polls at the high end.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub gateway_latency: HistogramVec,
    pub upstream_latency: HistogramVec,
    pub in_flight: IntGauge,
    pub connections: IntGauge,
    pub rule_reloads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "scopegate_requests_total",
                "Requests by decision and matched route template.",
            ),
            &["decision", "route"],
        )
        .expect("valid metric");
        let gateway_latency = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_gateway_latency_seconds",
                "Time the gateway adds to a request, upstream time excluded.",
            )
            .buckets(BUCKETS.to_vec()),
            &["decision"],
        )
        .expect("valid metric");
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_upstream_latency_seconds",
                "Time from forwarding a request to the upstream's response headers.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("scopegate_requests_in_flight", "Requests being served.")
            .expect("valid metric");
        let connections = IntGauge::new("scopegate_connections_open", "Open client connections.")
            .expect("valid metric");
        let rule_reloads = IntCounterVec::new(
            Opts::new("scopegate_rule_reloads_total", "Rule reloads by result."),
            &["result"],
        )
        .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(gateway_latency.clone()),
            Box::new(upstream_latency.clone()),
            Box::new(in_flight.clone()),
            Box::new(connections.clone()),
            Box::new(rule_reloads.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            gateway_latency,
            upstream_latency,
            in_flight,
            connections,
            rule_reloads,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
