//! Who is calling: the token is taken from the request (`extract`), and an
//! identity source vouches for it. Scope decisions are never made here: the
//! rule set judges the returned [`Identity`] on every request.
//!
//! [`Authenticator`] is the seam the pipeline calls. Per token it goes:
//! static table → offline shape checks → cache → the one validator the
//! token's shape and the config choose (`decide`). docs/auth.md has the order.

mod cache;
mod decide;
mod discovery;
pub mod extract;
pub(crate) mod http_client;
mod introspect;
mod jwks;
mod jwt;
mod legacy;
mod limiter;
pub mod mas;
mod metrics;
mod revocation;
pub mod static_table;
mod subject;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::scopes::ScopeSet;

pub use limiter::InvalidTokenLimiter;
pub use static_table::StaticTable;
pub use subject::{DeviceId, UserId};

use crate::config::{provider_url, AuthSettings, CacheConfig, Secret, TokenDigest};
use cache::{CacheKey, Cached, Profile, TokenCache, Verdict};
use decide::{Enabled, Route};
use discovery::Discovery;
use http_client::HttpClient;
use introspect::{ClientAuth, EndpointSource, Introspector};
use jwks::{JwksSource, KeyStore, KeyStoreConfig};
use jwt::{JwtSettings, JwtValidator};
use legacy::LegacyValidator;
use metrics::AuthMetrics;
use revocation::Revocations;

/// Parses a JWT's decoded header and claims as the validator does, and says
/// whether both parsed. Only for `benches/tokens.rs`, which times the parse
/// apart from the signature.
#[doc(hidden)]
pub fn parse_jwt_json(header: &[u8], claims: &[u8]) -> bool {
    jwt::parse_json(header, claims)
}

/// What a validated token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub device_id: Option<String>,
    pub client_id: Option<String>,
    pub scopes: ScopeSet,
    pub expires_at: Option<SystemTime>,
    /// The latest moment the token is known to have been good: a JWT's
    /// `iat`, to the end of its second, or when a provider last vouched for
    /// it. A user's revocation refuses tokens vouched for at or before it;
    /// `None` counts as before.
    pub vouched_at: Option<SystemTime>,
    /// Which validator vouched for the token, for logs and metrics.
    pub source: &'static str,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown, expired, revoked or malformed: 401 `M_UNKNOWN_TOKEN`.
    Invalid { soft_logout: bool },
    /// The identity provider could not answer: 503, fail closed.
    Unavailable,
    /// The client sent too many invalid tokens: 429 `M_LIMIT_EXCEEDED`.
    RateLimited { retry_after: Duration },
}

/// The gateway's `authenticate` phase calls this; sources are consulted in a
/// fixed order decided by the token's shape, never all in turn.
pub struct Authenticator {
    static_table: StaticTable,
    enabled: Enabled,
    jwt: Option<Validator<JwtValidator>>,
    introspection: Option<Validator<Introspector>>,
    legacy: Option<Validator<LegacyValidator>>,
    cache: TokenCache,
    revocations: Arc<Revocations>,
    limiter: InvalidTokenLimiter,
    metrics: Arc<AuthMetrics>,
    /// The pooled client every call to the provider goes through.
    http: HttpClient,
}

/// A validator and the cache profile of what it vouches for.
struct Validator<V> {
    inner: V,
    profile: Profile,
}

impl Authenticator {
    /// Builds every enabled validator from the config. Touches no network:
    /// discovery and keys are fetched in the background or on first use, so a
    /// provider that is down at start-up costs 503s, not a gateway that will
    /// not start. Reads `*_secret_file`s.
    pub fn from_config(
        cfg: &AuthSettings,
        cache: &CacheConfig,
        upstream: &http::Uri,
        registry: &prometheus::Registry,
    ) -> Result<Authenticator, String> {
        // Checked with lines by `Config::load`; again here for callers that
        // build from settings alone (the demo, tests).
        cfg.problems().into_result()?;
        cache.problems().into_result()?;
        let token_cache = TokenCache::new(cache);
        let metrics = Arc::new(AuthMetrics::new()?);
        let http = HttpClient::new();
        let issuer = provider_url(cfg.issuer.as_deref())?;
        let discovery_timeout = Duration::from_millis(cfg.jwt.fetch_timeout_ms);
        let discovery = issuer
            .as_ref()
            .map(|i| Discovery::new(i, http.clone(), discovery_timeout).map(Arc::new))
            .transpose()?;

        let jwt = if cfg.jwt.enabled {
            Some(build_jwt(cfg, discovery.clone(), &http, &metrics)?)
        } else {
            None
        };
        let introspection = if cfg.introspection.enabled {
            Some(build_introspection(
                cfg,
                discovery.clone(),
                &http,
                &metrics,
            )?)
        } else {
            None
        };
        let legacy = if cfg.legacy.enabled {
            let l = &cfg.legacy;
            Some(Validator {
                inner: LegacyValidator::new(
                    upstream,
                    http.clone(),
                    Duration::from_millis(l.timeout_ms),
                    match &l.scopes {
                        Some(scopes) => ScopeSet::new(scopes),
                        None => ScopeSet::new(&[crate::scopes::FULL_ACCESS.to_string()]),
                    },
                )?,
                profile: Profile::new(&format!("legacy upstream={upstream}")),
            })
        } else {
            None
        };
        // Only now that the whole config is accepted: metrics, background work.
        let for_gauge = token_cache.clone();
        metrics.register(registry, move || for_gauge.entry_count())?;
        let limiter = InvalidTokenLimiter::new(&cfg.rate_limit);
        limiter.register_metrics(registry)?;
        // A JWT is accepted up to `leeway_s` past its `exp`.
        let grace = Duration::from_secs(if cfg.jwt.enabled { cfg.jwt.leeway_s } else { 0 });
        let revocations = Arc::new(Revocations::new(&cache.revocations, grace));
        revocations.register_metrics(registry)?;
        registry
            .register(Box::new(revocation::HeldGauge(revocations.clone())))
            .map_err(|e| format!("cannot register the revocation gauge: {e}"))?;
        if let Some(jwt) = &jwt {
            jwt.inner.warm_up();
        }
        Ok(Authenticator {
            static_table: StaticTable::new(&cfg.static_tokens),
            enabled: Enabled {
                jwt: jwt.is_some(),
                introspection: introspection.is_some(),
                legacy: legacy.is_some(),
            },
            jwt,
            introspection,
            legacy,
            cache: token_cache,
            revocations,
            limiter,
            metrics,
            http,
        })
    }

    /// The client for the provider, to share its connections (the relay's
    /// discovery calls).
    pub(crate) fn http_client(&self) -> HttpClient {
        self.http.clone()
    }

    /// Validates `token` for a caller not subject to the invalid-token limit
    /// (the homeserver asking the introspection relay, tests).
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        self.authenticate_inner(token, None).await.0
    }

    /// As [`Self::authenticate`], also saying whether the answer came
    /// without asking a provider (static table, offline check or cache).
    pub async fn lookup(&self, token: &str) -> (Result<Arc<Identity>, AuthError>, bool) {
        self.authenticate_inner(token, None).await
    }

    /// Validates a token a client presented. Cache hits cost the provider
    /// nothing and pass; a validation first takes one invalid token's worth
    /// from the client's budget, given back if the token was valid.
    pub async fn authenticate_from(
        &self,
        token: &str,
        client: std::net::IpAddr,
    ) -> Result<Arc<Identity>, AuthError> {
        self.authenticate_inner(token, Some(client)).await.0
    }

    /// The verdict, and whether it came without asking a provider.
    async fn authenticate_inner(
        &self,
        token: &str,
        client: Option<std::net::IpAddr>,
    ) -> (Result<Arc<Identity>, AuthError>, bool) {
        let digest = TokenDigest::of(token);
        if let Some(identity) = self.static_table.lookup_digest(&digest) {
            self.metrics.validated("static", "valid");
            return (Ok(identity), true);
        }
        let reserve = || match client {
            Some(ip) => self
                .limiter
                .reserve(ip)
                .map_err(|retry_after| AuthError::RateLimited { retry_after }),
            None => Ok(limiter::Reservation::none()),
        };
        let (chosen, profile) = match self.route(token) {
            Ok(found) => found,
            Err(reason) => {
                // The reservation is spent: the token is invalid.
                if let Err(limited) = reserve() {
                    return (Err(limited), true);
                }
                tracing::debug!(reason, token = %short_hash(token), "token refused offline");
                self.metrics.validated("precheck", "invalid");
                return (Err(AuthError::Invalid { soft_logout: false }), true);
            }
        };
        let key = CacheKey::of_digest(digest, profile);
        if let Some(cached) = self.cache.cached(&key).await {
            self.metrics.cache_hits.inc();
            return (self.unrevoked(cached, key).await.into_result(), true);
        }
        self.metrics.cache_misses.inc();
        let validate = async {
            // Taken before validating, so validations in flight count
            // against the budget: concurrency cannot push provider calls
            // past the burst. One per validation: concurrent requests with
            // the same token share it. Not cached when refused.
            let reservation = reserve()?;
            // Read before the checks below: a revocation they miss changes it.
            let generation = self.revocations.generation();
            if self.revocations.token_revoked(&digest) {
                self.metrics.validated("revocation", "invalid");
                return Ok(Cached::Invalid { soft_logout: false });
            }
            let verdict = match chosen {
                Chosen::Jwt(v) => v.validate(token).await,
                Chosen::Introspection(v) => v.validate(token).await,
                Chosen::Legacy(v) => v.validate(token).await,
            };
            let result = match &verdict {
                Ok(Verdict::Valid(_)) => "valid",
                Ok(Verdict::Invalid { .. }) => "invalid",
                Err(AuthError::Invalid { .. }) => "invalid",
                Err(AuthError::Unavailable) => "unavailable",
                Err(AuthError::RateLimited { .. }) => "rate_limited",
            };
            self.metrics.validated(chosen.name(), result);
            // The share comes back unless the token was invalid: a provider
            // outage is not the client's doing.
            match verdict {
                Ok(Verdict::Valid(identity)) if self.revocations.refuses(&digest, &identity) => {
                    self.metrics.validated("revocation", "invalid");
                    Ok(Cached::Invalid { soft_logout: false })
                }
                Ok(Verdict::Valid(identity)) => {
                    reservation.refund();
                    Ok(Cached::new(Verdict::Valid(identity), generation))
                }
                Ok(invalid) => Ok(Cached::new(invalid, generation)),
                Err(AuthError::Unavailable) => {
                    reservation.refund();
                    Err(AuthError::Unavailable)
                }
                Err(e) => Err(e),
            }
        };
        // Boxed: validation (JWKS refetch, an HTTP exchange) is most of this
        // future's size, and every connection's request future would
        // otherwise reserve it, cache hit or not, for as long as the request
        // lasts (a long-poll: minutes). Misses are rare and cost far more
        // than an allocation.
        let result = match Box::pin(self.cache.validate_shared(key, validate)).await {
            // A revocation may have landed while the verdict was cached.
            Ok(cached) => self.unrevoked(cached, key).await.into_result(),
            Err(e) => Err(e),
        };
        (result, false)
    }

    /// A cached identity stands unless a revocation arrived since it was
    /// last checked and covers it. The common case is one atomic load.
    async fn unrevoked(&self, cached: Cached, key: CacheKey) -> Cached {
        let Cached::Valid(vouched) = &cached else {
            return cached;
        };
        let generation = self.revocations.generation();
        if vouched.checked_at(generation) {
            return cached;
        }
        if self.revocations.refuses(key.token(), &vouched.identity) {
            self.cache.refuse(key).await;
            return Cached::Invalid { soft_logout: false };
        }
        vouched.mark_checked(generation);
        cached
    }

    /// After a logout the homeserver accepted, or an operator's eviction:
    /// the token is refused from now on, until it expires, whatever a
    /// provider says of it. `identity` tells when that is; without it the
    /// token is looked up first.
    pub async fn revoke_token(&self, token: &str, identity: Option<&Identity>) {
        let looked_up = match identity {
            Some(_) => None,
            None => self.lookup(token).await.0.ok(),
        };
        let digest = TokenDigest::of(token);
        self.revocations
            .revoke_token(digest, identity.or(looked_up.as_deref()));
        if let Ok((_, profile)) = self.route(token) {
            self.cache
                .refuse(CacheKey::of_digest(digest, profile))
                .await;
        }
    }

    /// After `logout/all`, or an operator's eviction of a user: every token
    /// of `user_id` vouched for until now is refused (docs/auth.md).
    pub fn revoke_user(&self, user_id: &str) {
        self.revocations.revoke_user(user_id);
    }

    /// Forgets every cached verdict (not a revocation: tokens are validated
    /// afresh).
    pub fn evict_all(&self) {
        self.cache.evict_all();
    }

    /// Cached verdicts; approximate until [`Self::run_pending_tasks`].
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies the cache's pending evictions now, so `entry_count` is exact
    /// (the admin endpoint and tests; moka otherwise does it as it goes).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// The validator for `token` and its cache profile, or why none applies.
    fn route(&self, token: &str) -> Result<(Chosen<'_>, Profile), &'static str> {
        fn pick<'a, V>(
            v: &'a Option<Validator<V>>,
            wrap: fn(&'a V) -> Chosen<'a>,
        ) -> Result<(Chosen<'a>, Profile), &'static str> {
            // decide::route only picks enabled validators.
            let v = v.as_ref().ok_or("validator not configured")?;
            Ok((wrap(&v.inner), v.profile))
        }
        match decide::route(token, self.enabled) {
            Route::Jwt => pick(&self.jwt, Chosen::Jwt),
            Route::Introspection => pick(&self.introspection, Chosen::Introspection),
            Route::Legacy => pick(&self.legacy, Chosen::Legacy),
            Route::Refuse(reason) => Err(reason),
        }
    }
}

#[derive(Clone, Copy)]
enum Chosen<'a> {
    Jwt(&'a JwtValidator),
    Introspection(&'a Introspector),
    Legacy(&'a LegacyValidator),
}

impl Chosen<'_> {
    fn name(self) -> &'static str {
        match self {
            Chosen::Jwt(_) => "jwt",
            Chosen::Introspection(_) => "introspection",
            Chosen::Legacy(_) => "legacy",
        }
    }
}

/// Enough of the token's hash to correlate log lines, never the token.
fn short_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(token.as_bytes())[..4])
}

fn build_jwt(
    cfg: &AuthSettings,
    discovery: Option<Arc<Discovery>>,
    http: &HttpClient,
    metrics: &Arc<AuthMetrics>,
) -> Result<Validator<JwtValidator>, String> {
    let j = &cfg.jwt;
    let issuer_str = cfg.issuer.as_deref().unwrap_or_default();
    let hmac_secret = Secret::resolve(
        j.hmac_secret.as_ref(),
        j.hmac_secret_file.as_ref(),
        "[auth.jwt] hmac_secret",
    )?;
    let source = match (provider_url(j.jwks_uri.as_deref())?, discovery) {
        (Some(uri), _) => JwksSource::Fixed(uri.0),
        (None, Some(discovery)) => JwksSource::Discovered(discovery),
        (None, None) => return Err("[auth.jwt] needs jwks_uri or [auth] issuer".into()),
    };
    let keys = KeyStore::new(
        source,
        http.clone(),
        KeyStoreConfig {
            timeout: Duration::from_millis(j.fetch_timeout_ms),
            cooldown: Duration::from_secs(j.unknown_kid_cooldown_s),
            refresh_interval: Duration::from_secs(j.refresh_interval_s.max(1)),
            max_stale: Duration::from_secs(j.max_stale_s),
        },
        metrics.clone(),
    );
    let mut audiences = j.audiences.clone();
    audiences.sort();
    let profile = Profile::new(&format!(
        "jwt iss={issuer_str} aud={} user_claim={:?}",
        audiences.join(" "),
        j.user_claim
    ));
    let inner = JwtValidator::new(
        JwtSettings {
            issuer: issuer_str.to_string(),
            audiences,
            algorithms: j.algorithms.iter().map(|a| a.0).collect(),
            leeway: Duration::from_secs(j.leeway_s),
            require_typ: j.require_typ,
            user_claim: j.user_claim.clone(),
            hmac_secret: hmac_secret.map(|s| s.expose().as_bytes().to_vec()),
            server_name: cfg.server_name.clone(),
        },
        keys,
    );
    Ok(Validator { inner, profile })
}

fn build_introspection(
    cfg: &AuthSettings,
    discovery: Option<Arc<Discovery>>,
    http: &HttpClient,
    metrics: &Arc<AuthMetrics>,
) -> Result<Validator<Introspector>, String> {
    let i = &cfg.introspection;
    let secret = Secret::resolve(
        i.client_secret.as_ref(),
        i.client_secret_file.as_ref(),
        "[auth.introspection] client_secret",
    )?;
    let auth = ClientAuth::new(i.auth_method, i.client_id.as_deref(), secret)?;
    let (endpoint, described) = match provider_url(i.endpoint.as_deref())? {
        Some(url) => {
            let text = url.0.to_string();
            (EndpointSource::Fixed(url.0), text)
        }
        None => (
            EndpointSource::Discovered(
                discovery.ok_or("[auth.introspection] needs endpoint or [auth] issuer")?,
            ),
            format!(
                "discovered from {}",
                cfg.issuer.as_deref().unwrap_or_default()
            ),
        ),
    };
    let profile = Profile::new(&format!("introspection endpoint={described}"));
    let inner = Introspector::new(
        endpoint,
        auth,
        http.clone(),
        Duration::from_millis(i.timeout_ms),
        i.max_in_flight,
        cfg.server_name.clone(),
        metrics.clone(),
    );
    Ok(Validator { inner, profile })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JwtConfig, RevocationConfig};

    fn build(cfg: &AuthSettings) -> Result<Authenticator, String> {
        Authenticator::from_config(
            cfg,
            &CacheConfig::default(),
            &"http://127.0.0.1:9".parse().unwrap(),
            &prometheus::Registry::new(),
        )
    }

    fn jwt_settings() -> AuthSettings {
        AuthSettings {
            server_name: "example.org".into(),
            issuer: Some("https://id.example.org".into()),
            jwt: JwtConfig {
                enabled: true,
                audiences: vec!["matrix".into()],
                ..JwtConfig::default()
            },
            ..AuthSettings::default()
        }
    }

    #[test]
    fn builds_outside_a_runtime_without_touching_the_network() {
        assert!(build(&jwt_settings()).is_ok());
    }

    #[test]
    fn config_mistakes_are_named() {
        let no_server = AuthSettings {
            server_name: String::new(),
            ..jwt_settings()
        };
        assert!(build(&no_server).err().unwrap().contains("server_name"));

        let mut no_aud = jwt_settings();
        no_aud.jwt.audiences.clear();
        assert!(build(&no_aud).err().unwrap().contains("audiences"));

        let mut http_issuer = jwt_settings();
        http_issuer.issuer = Some("http://id.example.org".into());
        assert!(build(&http_issuer).err().unwrap().contains("https"));

        let mut no_secret = jwt_settings();
        no_secret.introspection.enabled = true;
        assert!(build(&no_secret).err().unwrap().contains("client_secret"));
    }

    #[test]
    fn revocations_must_outlive_the_cache() {
        let cache = CacheConfig {
            max_ttl_s: 600,
            revocations: RevocationConfig {
                max_ttl_s: 60,
                ..RevocationConfig::default()
            },
            ..CacheConfig::default()
        };
        let upstream = "http://127.0.0.1:9".parse().unwrap();
        let registry = prometheus::Registry::new();
        let err = Authenticator::from_config(&jwt_settings(), &cache, &upstream, &registry)
            .err()
            .unwrap();
        assert!(err.contains("[cache.revocations] max_ttl_s"), "{err}");
    }

    #[test]
    fn a_failed_build_leaves_the_registry_free_for_the_next() {
        let registry = prometheus::Registry::new();
        let mut bad = jwt_settings();
        bad.jwt.audiences.clear();
        let upstream = "http://127.0.0.1:9".parse().unwrap();
        let cache = CacheConfig::default();
        assert!(Authenticator::from_config(&bad, &cache, &upstream, &registry).is_err());
        assert!(Authenticator::from_config(&jwt_settings(), &cache, &upstream, &registry).is_ok());
    }
}
