//! The integration tests, one binary (one link step): a module per area,
//! sharing [`support`]. Run one area with `cargo test --test it proxy::`.
//!
//! - the real binary on ephemeral ports in front of stub homeservers and
//!   identity providers: `proxy`, `streaming`, `resilience`, `tls`,
//!   `observability`, `tokens_gateway`, `rules_gateway`, `relay`,
//!   `credentials` (the one-token differential corpus), `demo`, `cli`;
//! - the library in-process: `auth_*` (validators, cache, limiter, against
//!   stub providers and the demo issuer), `rules_*` (the rule language, the
//!   shipped rules against the endpoint catalog, allocation on the hot path).

mod support;

/// The endpoint catalog, read from the copies in `tests/data`.
#[path = "../catalog/mod.rs"]
mod catalog;

mod auth_attack;
mod auth_eviction;
mod auth_introspection;
mod auth_jwt;
mod auth_legacy;
mod auth_mas;
mod cli;
mod credentials;
mod demo;
mod framing;
mod observability;
mod proxy;
mod relay;
mod resilience;
mod rules_alloc;
mod rules_catalog;
mod rules_check;
mod rules_explain;
mod rules_gateway;
mod rules_widget;
mod streaming;
mod tls;
mod tokens_gateway;
