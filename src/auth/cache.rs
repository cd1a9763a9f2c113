//! Validated tokens, so most requests cost a hash and a map lookup instead of
//! a signature check or a provider round trip.
//!
//! - The key is the token's SHA-256 plus the profile (validator and issuer)
//!   that judged it: a token vouched for by one profile is never found under
//!   another (Oathkeeper GHSA-4mq7-pvjg-xp2r).
//! - The value is what the token *is* (an [`Identity`], or "invalid"), never
//!   whether a route is allowed: scope rules run after the lookup on every
//!   request (Oathkeeper CVE-2021-32701).
//! - An entry lives no longer than the token, nor than `max_ttl`; a refusal
//!   lives `negative_ttl`. Provider errors are never stored.
//! - Concurrent misses for one key share one validation.
//! - A valid entry notes the revocation generation it was last checked at
//!   (`revocation.rs`), so a hit re-checks only after a revocation.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::future::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::{AuthError, Identity};
use crate::config::CacheConfig;
use crate::config::TokenDigest;

/// Which validator, with which issuer or endpoint, judged a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Profile(u64);

impl Profile {
    /// From a description such as `jwt iss=https://id.example.org aud=matrix`.
    pub(crate) fn new(description: &str) -> Self {
        let digest = Sha256::digest(description.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Profile(u64::from_be_bytes(first))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    token: TokenDigest,
    profile: Profile,
}

impl CacheKey {
    #[cfg(test)]
    pub(crate) fn new(token: &str, profile: Profile) -> Self {
        Self::of_digest(TokenDigest::of(token), profile)
    }

    /// For a token already hashed: one SHA-256 per request, not two.
    pub(crate) fn of_digest(token: TokenDigest, profile: Profile) -> Self {
        CacheKey { token, profile }
    }

    pub(crate) fn token(&self) -> &TokenDigest {
        &self.token
    }
}

/// What a validator concluded about a token.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Valid(Arc<Identity>),
    Invalid { soft_logout: bool },
}

/// What the cache holds for a token.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    Valid(Arc<Vouched>),
    Invalid { soft_logout: bool },
}

#[derive(Debug)]
pub(crate) struct Vouched {
    pub(crate) identity: Arc<Identity>,
    /// The revocation generation this identity was last checked at.
    checked: AtomicU64,
}

impl Cached {
    /// `verdict`, checked against the revocations of `generation`.
    pub(crate) fn new(verdict: Verdict, generation: u64) -> Self {
        match verdict {
            Verdict::Valid(identity) => Cached::Valid(Arc::new(Vouched {
                identity,
                checked: AtomicU64::new(generation),
            })),
            Verdict::Invalid { soft_logout } => Cached::Invalid { soft_logout },
        }
    }

    pub(crate) fn into_result(self) -> Result<Arc<Identity>, AuthError> {
        match self {
            Cached::Valid(vouched) => Ok(vouched.identity.clone()),
            Cached::Invalid { soft_logout } => Err(AuthError::Invalid { soft_logout }),
        }
    }
}

impl Vouched {
    /// Whether no revocation arrived since this identity was last checked.
    pub(crate) fn checked_at(&self, generation: u64) -> bool {
        self.checked.load(Ordering::Relaxed) == generation
    }

    /// Checked again at `generation` and still good.
    pub(crate) fn mark_checked(&self, generation: u64) {
        self.checked.fetch_max(generation, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub(crate) struct TokenCache {
    entries: Cache<CacheKey, Cached>,
}

impl TokenCache {
    pub(crate) fn new(cfg: &CacheConfig) -> Self {
        let entries = Cache::builder()
            .max_capacity(cfg.capacity)
            .expire_after(Lifetime {
                max_ttl: cfg.max_ttl(),
                negative_ttl: cfg.negative_ttl(),
            })
            .build();
        TokenCache { entries }
    }

    /// (Tests.) The cached verdict, or `validate`'s, shared with concurrent callers for
    /// the same key. `validate`'s `Err` is an outcome that must not be cached
    /// (the provider failed, or a refusal that may not hold a moment later).
    /// The flag says whether the cache answered.
    #[cfg(test)]
    pub(crate) async fn get_or_validate(
        &self,
        key: CacheKey,
        validate: impl Future<Output = Result<Cached, AuthError>>,
    ) -> (Result<Cached, AuthError>, bool) {
        if let Some(v) = self.cached(&key).await {
            return (Ok(v), true);
        }
        (self.validate_shared(key, validate).await, false)
    }

    pub(crate) async fn cached(&self, key: &CacheKey) -> Option<Cached> {
        self.entries.get(key).await
    }

    /// `validate`'s verdict, cached; concurrent callers for one key share it.
    pub(crate) async fn validate_shared(
        &self,
        key: CacheKey,
        validate: impl Future<Output = Result<Cached, AuthError>>,
    ) -> Result<Cached, AuthError> {
        self.entries
            .try_get_with(key, validate)
            .await
            .map_err(|e| *e)
    }

    /// Remembers `key` as invalid for the negative TTL, whatever was cached.
    pub(crate) async fn refuse(&self, key: CacheKey) {
        self.entries
            .insert(key, Cached::Invalid { soft_logout: false })
            .await;
    }

    pub(crate) fn evict_all(&self) {
        self.entries.invalidate_all();
    }

    /// Approximate until pending maintenance has run.
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    pub(crate) async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
    }
}

struct Lifetime {
    max_ttl: Duration,
    negative_ttl: Duration,
}

impl Lifetime {
    fn of(&self, value: &Cached) -> Duration {
        match value {
            Cached::Invalid { .. } => self.negative_ttl,
            Cached::Valid(vouched) => match vouched.identity.expires_at {
                // Never outlive the token itself.
                Some(at) => at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(self.max_ttl),
                None => self.max_ttl,
            },
        }
    }
}

impl Expiry<CacheKey, Cached> for Lifetime {
    fn expire_after_create(&self, _: &CacheKey, value: &Cached, _: Instant) -> Option<Duration> {
        Some(self.of(value))
    }

    /// A replaced entry (a revocation over a valid token) gets its own lifetime,
    /// not what was left of the old one.
    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Cached,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.of(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scopes::ScopeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn identity(user: &str, expires_in: Option<Duration>) -> Arc<Identity> {
        Arc::new(Identity {
            user_id: user.into(),
            device_id: None,
            client_id: None,
            scopes: ScopeSet::default(),
            expires_at: expires_in.map(|d| SystemTime::now() + d),
            vouched_at: None,
            source: "test",
        })
    }

    fn valid(identity: Arc<Identity>) -> Cached {
        Cached::new(Verdict::Valid(identity), 0)
    }

    fn cache() -> TokenCache {
        TokenCache::new(&CacheConfig::default())
    }

    #[tokio::test]
    async fn a_token_under_another_profile_is_a_miss() {
        let c = cache();
        let a = CacheKey::new("tok", Profile::new("jwt iss=a"));
        let b = CacheKey::new("tok", Profile::new("jwt iss=b"));
        let valid = valid(identity("@u:x", None));
        let (r, hit) = c.get_or_validate(a, async { Ok(valid) }).await;
        assert!(r.is_ok() && !hit);
        let (r, hit) = c
            .get_or_validate(a, async { Err(AuthError::Unavailable) })
            .await;
        assert!(r.is_ok() && hit);
        let (r, hit) = c
            .get_or_validate(b, async { Err(AuthError::Unavailable) })
            .await;
        assert!(r.is_err() && !hit, "b must not see a's verdict");
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let c = cache();
        let k = CacheKey::new("tok", Profile::new("p"));
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            let (r, _) = c
                .get_or_validate(k, async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(AuthError::Unavailable)
                })
                .await;
            assert!(r.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn lifetime_is_bounded_by_the_token_and_the_config() {
        let l = Lifetime {
            max_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
        };
        let k = CacheKey::new("t", Profile::new("p"));
        let now = Instant::now();
        let ttl = |v: Cached| l.expire_after_create(&k, &v, now).unwrap();
        assert_eq!(
            ttl(Cached::Invalid { soft_logout: false }),
            Duration::from_secs(10)
        );
        assert_eq!(ttl(valid(identity("@u:x", None))), Duration::from_secs(60));
        let short = ttl(valid(identity("@u:x", Some(Duration::from_secs(5)))));
        assert!(short <= Duration::from_secs(5) && short > Duration::from_secs(4));
        let long = ttl(valid(identity("@u:x", Some(Duration::from_secs(3600)))));
        assert_eq!(long, Duration::from_secs(60));
        let past = identity("@u:x", None);
        let past = Arc::new(Identity {
            expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
            ..(*past).clone()
        });
        assert_eq!(ttl(valid(past)), Duration::ZERO);
    }
}
