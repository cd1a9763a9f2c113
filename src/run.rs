//! Assembling a gateway from its config and running it until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Admin};
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::gate::{Gateway, Settings};
use crate::metrics::Metrics;
use crate::proxy::upstream::{Upstream, UpstreamSettings};
use crate::relay::Relay;
use crate::reload;
use crate::scopes::RuleSet;
use crate::server::{self, Limits};

/// Why the gateway did not start. Each names the part of the config that
/// failed; `main` prints the whole chain of causes.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("rules: {0}")]
    Rules(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Relay(String),
    #[error(transparent)]
    Listen(#[from] std::io::Error),
}

/// Everything `run` needs, built and checked before any socket is opened, so
/// `scopegate check` and start-up report the same errors.
pub struct Prepared {
    pub config: Config,
    pub gateway: Arc<Gateway>,
    auth: Arc<Authenticator>,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    relay: Option<(Arc<Relay>, Arc<ArcSwap<RuleSet>>)>,
    /// What the rule check found worth saying, though not fatal.
    pub warnings: Vec<String>,
    tls: Option<TlsAcceptor>,
}

pub fn prepare(config: Config) -> Result<Prepared, StartError> {
    let rules_file = config.rules.file.as_ref().map(|f| config.resolve(f));
    let (rules, mut warnings) = load_rules(rules_file.as_deref()).map_err(StartError::Rules)?;
    let metrics = Arc::new(Metrics::new());
    let auth = Arc::new(
        Authenticator::from_config(
            &config.auth,
            &config.cache,
            &config.upstream.url.0,
            &metrics.registry,
        )
        .map_err(StartError::Auth)?,
    );
    let upstream =
        Arc::new(Upstream::new(&upstream_settings(&config)).map_err(StartError::Upstream)?);
    let rules = Arc::new(rules);
    let settings = Settings {
        max_path_bytes: config.server.max_path_bytes,
        max_header_bytes: config.server.max_header_bytes,
        allow_query_token: config.server.allow_query_token,
        trusted_proxies: config.server.trusted_proxies.iter().map(|p| p.0).collect(),
    };
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(
            server::tls_acceptor(&config.resolve(cert), &config.resolve(key))
                .map_err(StartError::Tls)?,
        ),
        _ => None,
    };
    let gateway = Arc::new(Gateway::new(
        rules.clone(),
        auth.clone(),
        upstream.clone(),
        settings,
        metrics.clone(),
    ));
    let relay = match &config.relay {
        None => None,
        Some(relay) => {
            if relay.widen_restricted_tokens {
                warnings.push(format!(
                    "warning: [relay] widen_restricted_tokens is on: the homeserver will accept narrow tokens \
                     as full access, so its client API ({}) must be reachable only through scopegate \
                     (see docs/relay.md)",
                    config.upstream.url.0
                ));
            }
            let secret = relay.secret(&config.base_dir).map_err(StartError::Relay)?;
            let relay_rules = Arc::new(ArcSwap::new(rules));
            let relay = Relay::new(
                relay,
                secret,
                &config.auth.server_name,
                config.auth.issuer.as_deref(),
                auth.clone(),
                relay_rules.clone(),
                &metrics.registry,
            )
            .map_err(StartError::Relay)?;
            Some((Arc::new(relay), relay_rules))
        }
    };
    Ok(Prepared {
        config,
        gateway,
        auth,
        upstream,
        metrics,
        relay,
        warnings,
        tls,
    })
}

/// `[upstream]` as the upstream client takes it.
fn upstream_settings(config: &Config) -> UpstreamSettings {
    let u = &config.upstream;
    UpstreamSettings {
        url: u.url.0.clone(),
        connect_timeout: u.connect_timeout(),
        response_header_timeout: u.response_header_timeout(),
        host: u.host.clone(),
        pool_max_idle_per_host: u.pool_max_idle_per_host,
        pool_idle_timeout: Duration::from_secs(u.pool_idle_timeout_s),
        ca_file: u.ca_file.as_ref().map(|p| config.resolve(p)),
    }
}

/// The configured rule file, or the shipped rules, with the check's
/// warnings as `file:line: message` lines.
pub fn load_rules(file: Option<&Path>) -> Result<(RuleSet, Vec<String>), String> {
    let Some(file) = file else {
        return Ok((RuleSet::builtin(), Vec::new()));
    };
    let loaded = RuleSet::load(file).map_err(|e| e.to_string())?;
    let warnings = loaded.warnings.iter().map(ToString::to_string).collect();
    Ok((loaded.rules, warnings))
}

/// Addresses actually bound (a configured port 0 is resolved here).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

/// Serves until `shutdown` resolves, then drains. `on_bound` learns the
/// addresses once both listeners are open.
pub async fn serve(
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<(), StartError> {
    let Prepared {
        config,
        gateway,
        auth,
        upstream,
        metrics,
        relay,
        warnings,
        tls,
    } = prepared;
    for warning in &warnings {
        tracing::warn!("rules: {warning}");
    }
    let public = server::bind(config.server.listen, "server.listen").await?;
    let admin_listener = server::bind(config.admin.listen, "admin.listen").await?;
    let relay_listener = match &config.relay {
        Some(relay) => Some(server::bind(relay.listen, "relay.listen").await?),
        None => None,
    };
    let bound = Bound {
        public: public.local_addr()?,
        admin: admin_listener.local_addr()?,
    };
    tracing::info!(
        public = %bound.public,
        admin = %bound.admin,
        upstream = %config.upstream.url.0,
        tls = tls.is_some(),
        "scopegate listening"
    );
    on_bound(bound);

    let (stop_tx, stop_rx) = watch::channel(false);
    let probe_every = Duration::from_secs(config.upstream.probe_interval_s.max(1));
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        upstream: upstream.clone(),
        auth,
        readiness_window: probe_every * 3,
    });
    tokio::spawn(admin.serve(admin_listener, stop_rx.clone()));
    let relay_rules = match (relay, relay_listener) {
        (Some((relay, rules)), Some(listener)) => {
            tokio::spawn(relay.serve(listener, stop_rx.clone()));
            Some(rules)
        }
        _ => None,
    };
    tokio::spawn(admin::probe_upstream(
        upstream,
        probe_every,
        stop_rx.clone(),
    ));
    let rules_file = config.rules.file.as_ref().map(|f| config.resolve(f));
    let serving = gateway.clone();
    tokio::spawn(reload::watch_rules(
        rules_file.clone(),
        move || load_rules(rules_file.as_deref()).map(|(rules, _)| rules),
        move |rules| {
            if let Some(relay_rules) = &relay_rules {
                relay_rules.store(rules.clone());
            }
            serving.swap_rules(rules);
        },
        metrics.rule_reloads.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let drained = server::serve(
        public,
        tls,
        Limits::from_config(&config.server),
        gateway,
        stop_rx,
        config.server.drain_timeout(),
    )
    .await;
    if drained {
        tracing::info!("all connections closed; exiting");
    } else {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
