//! Revocations the gateway must remember itself. A JWT cannot be revoked at
//! its issuer, and a provider's "inactive" can lag behind a logout, so once
//! the gateway has seen a logout, or an operator evicted a token or a user,
//! its own memory is what keeps the token away from the homeserver until the
//! token expires.
//!
//! - A revoked token is refused until its own expiry, or for `max_ttl` when
//!   it has none.
//! - A revoked user (`logout/all`, eviction by user id) gets a watermark for
//!   `max_ttl`: every token of theirs vouched for at or before it is refused.
//!   A JWT is vouched for by its `iat` (to the end of that second, so a login
//!   in the same second as the logout still works); a token a provider
//!   checked, by the moment the provider answered, so the provider, asked
//!   again after the watermark, has the last word.
//! - Memory is bounded: when the token list is full, a token's revocation
//!   becomes its user's watermark, and when the user list is full, one
//!   watermark for everyone. Both refuse more than asked, never less, and
//!   are counted; no revocation is dropped before it expires.
//!
//! The cache re-checks a cached identity against this list only when the
//! list changed since that identity was last checked ([`Revocations::generation`]):
//! one atomic load per cached request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::Identity;
use crate::config::RevocationConfig;
use crate::config::TokenDigest;

pub(crate) struct Revocations {
    /// Bumped after every change to `state`.
    generation: AtomicU64,
    state: Mutex<State>,
    capacity: usize,
    max_ttl: Duration,
    /// How long past its expiry a validator still accepts a token (the JWT
    /// leeway): a revocation lasts that much longer.
    grace: Duration,
    metrics: RevocationMetrics,
}

#[derive(Default)]
struct State {
    /// Revoked tokens, until when.
    tokens: HashMap<TokenDigest, SystemTime>,
    users: HashMap<String, Watermark>,
    /// Set only when `users` overflowed.
    everyone: Option<Watermark>,
}

#[derive(Debug, Clone, Copy)]
struct Watermark {
    at: SystemTime,
    until: SystemTime,
}

impl Watermark {
    fn covers(&self, identity: &Identity, now: SystemTime) -> bool {
        self.until > now && identity.vouched_at.is_none_or(|vouched| vouched <= self.at)
    }
}

impl Revocations {
    pub(crate) fn new(cfg: &RevocationConfig, grace: Duration) -> Self {
        Revocations {
            generation: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            capacity: cfg.capacity.max(1),
            max_ttl: Duration::from_secs(cfg.max_ttl_s),
            grace,
            metrics: RevocationMetrics::new(),
        }
    }

    /// Changes whenever a revocation is added: a cached identity checked at
    /// this generation needs no new check.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Refuses the token until `identity` expires (or for `max_ttl` when its
    /// expiry is unknown).
    pub(crate) fn revoke_token(&self, token: TokenDigest, identity: Option<&Identity>) {
        let now = SystemTime::now();
        let until = identity
            .and_then(|i| i.expires_at)
            .map_or(now + self.max_ttl, |exp| exp + self.grace);
        let mut state = self.lock();
        if state.tokens.len() >= self.capacity && !state.tokens.contains_key(&token) {
            state.tokens.retain(|_, until| *until > now);
        }
        if state.tokens.len() < self.capacity || state.tokens.contains_key(&token) {
            let kept = state.tokens.entry(token).or_insert(until);
            *kept = (*kept).max(until);
        } else {
            match identity {
                Some(identity) => {
                    self.metrics.escalated.with_label_values(&["user"]).inc();
                    self.watermark_user(&mut state, &identity.user_id, now);
                }
                None => self.watermark_everyone(&mut state, now),
            }
        }
        self.changed(&state);
    }

    /// Refuses every token of `user_id` vouched for until now.
    pub(crate) fn revoke_user(&self, user_id: &str) {
        let mut state = self.lock();
        self.watermark_user(&mut state, user_id, SystemTime::now());
        self.changed(&state);
    }

    /// Whether `identity`, which `token` stands for, has been revoked.
    pub(crate) fn refuses(&self, token: &TokenDigest, identity: &Identity) -> bool {
        let now = SystemTime::now();
        let state = self.lock();
        state.tokens.get(token).is_some_and(|until| *until > now)
            || state
                .users
                .get(&identity.user_id)
                .is_some_and(|w| w.covers(identity, now))
            || state.everyone.is_some_and(|w| w.covers(identity, now))
    }

    /// Whether the token itself has been revoked, before anyone validates it.
    pub(crate) fn token_revoked(&self, token: &TokenDigest) -> bool {
        let now = SystemTime::now();
        self.lock()
            .tokens
            .get(token)
            .is_some_and(|until| *until > now)
    }

    pub(crate) fn register_metrics(&self, registry: &Registry) -> Result<(), String> {
        registry
            .register(Box::new(self.metrics.escalated.clone()))
            .map_err(|e| format!("cannot register the revocation metrics: {e}"))
    }

    /// The entries held, by kind, for the gauge read at scrape time.
    fn held(&self) -> [(&'static str, usize); 3] {
        let state = self.lock();
        [
            ("token", state.tokens.len()),
            ("user", state.users.len()),
            ("everyone", usize::from(state.everyone.is_some())),
        ]
    }

    fn watermark_user(&self, state: &mut State, user_id: &str, now: SystemTime) {
        let mark = Watermark {
            at: now,
            until: now + self.max_ttl,
        };
        if state.users.len() >= self.capacity && !state.users.contains_key(user_id) {
            state.users.retain(|_, w| w.until > now);
        }
        if state.users.len() < self.capacity || state.users.contains_key(user_id) {
            state.users.insert(user_id.to_string(), mark);
        } else {
            self.watermark_everyone(state, now);
        }
    }

    fn watermark_everyone(&self, state: &mut State, now: SystemTime) {
        self.metrics
            .escalated
            .with_label_values(&["everyone"])
            .inc();
        tracing::error!(
            capacity = self.capacity,
            "revocation store full: every token vouched for until now is refused; raise [revocations] capacity"
        );
        state.everyone = Some(Watermark {
            at: now,
            until: now + self.max_ttl,
        });
    }

    /// Published while the lock is held, so a reader that sees the new
    /// generation and then takes the lock sees the new state.
    fn changed(&self, _state: &State) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct RevocationMetrics {
    /// Label `to`: user, everyone.
    escalated: IntCounterVec,
}

impl RevocationMetrics {
    fn new() -> Self {
        RevocationMetrics {
            escalated: IntCounterVec::new(
                Opts::new(
                    "scopegate_revocations_escalated_total",
                    "Revocations that did not fit and were widened, to the user or to everyone.",
                ),
                &["to"],
            )
            .expect("a valid metric"),
        }
    }
}

/// `scopegate_revocations{kind}`, read from the store at scrape time.
pub(crate) struct HeldGauge(pub std::sync::Arc<Revocations>);

impl Collector for HeldGauge {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "scopegate_revocations",
                "Revocations held: tokens, users' watermarks, and the one for everyone.",
            ),
            &["kind"],
        )
        .expect("a valid metric");
        for (kind, n) in self.0.held() {
            gauge
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scopes::ScopeSet;

    fn identity(user: &str, vouched_at: Option<SystemTime>, expires_in: u64) -> Identity {
        Identity {
            user_id: user.into(),
            device_id: None,
            client_id: None,
            scopes: ScopeSet::default(),
            expires_at: Some(SystemTime::now() + Duration::from_secs(expires_in)),
            vouched_at,
            source: "test",
        }
    }

    fn store(capacity: usize) -> Revocations {
        Revocations::new(
            &RevocationConfig {
                capacity,
                max_ttl_s: 3600,
            },
            Duration::ZERO,
        )
    }

    fn long_ago() -> Option<SystemTime> {
        Some(SystemTime::now() - Duration::from_secs(60))
    }

    #[test]
    fn a_revoked_token_stays_refused_and_others_pass() {
        let r = store(10);
        let alice = identity("@a:x", long_ago(), 600);
        let g = r.generation();
        r.revoke_token(TokenDigest::of("t1"), Some(&alice));
        assert_ne!(r.generation(), g, "a change is published");
        assert!(r.refuses(&TokenDigest::of("t1"), &alice));
        assert!(r.token_revoked(&TokenDigest::of("t1")));
        assert!(!r.refuses(&TokenDigest::of("t2"), &alice));
    }

    #[test]
    fn a_token_already_expired_is_not_kept() {
        let r = store(10);
        let mut gone = identity("@a:x", long_ago(), 0);
        gone.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        r.revoke_token(TokenDigest::of("t"), Some(&gone));
        assert!(!r.token_revoked(&TokenDigest::of("t")));
    }

    #[test]
    fn a_token_within_the_validators_leeway_is_kept() {
        let r = Revocations::new(
            &RevocationConfig {
                capacity: 10,
                max_ttl_s: 3600,
            },
            Duration::from_secs(30),
        );
        let mut just_expired = identity("@a:x", long_ago(), 0);
        just_expired.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
        r.revoke_token(TokenDigest::of("t"), Some(&just_expired));
        assert!(r.token_revoked(&TokenDigest::of("t")));
    }

    #[test]
    fn a_user_watermark_refuses_older_tokens_only() {
        let r = store(10);
        r.revoke_user("@a:x");
        assert!(r.refuses(&TokenDigest::of("old"), &identity("@a:x", long_ago(), 600)));
        // Unknown issue time: refused (fail closed).
        assert!(r.refuses(&TokenDigest::of("iatless"), &identity("@a:x", None, 600)));
        let later = Some(SystemTime::now() + Duration::from_secs(2));
        assert!(!r.refuses(&TokenDigest::of("new"), &identity("@a:x", later, 600)));
        assert!(!r.refuses(&TokenDigest::of("bob"), &identity("@b:x", long_ago(), 600)));
    }

    #[test]
    fn a_full_token_list_widens_to_the_user_then_to_everyone() {
        let r = store(1);
        let a = identity("@a:x", long_ago(), 600);
        r.revoke_token(TokenDigest::of("a1"), Some(&a));
        // No room: @a's watermark stands for the token.
        r.revoke_token(TokenDigest::of("a2"), Some(&a));
        assert!(r.refuses(&TokenDigest::of("a2"), &a));
        assert!(r.refuses(&TokenDigest::of("a3"), &a), "wider than asked");
        assert_eq!(r.metrics.escalated.with_label_values(&["user"]).get(), 1);
        // The user list is full too: everyone vouched for until now.
        let b = identity("@b:x", long_ago(), 600);
        r.revoke_user("@b:x");
        assert!(r.refuses(&TokenDigest::of("b"), &b));
        let c = identity("@c:x", long_ago(), 600);
        assert!(r.refuses(&TokenDigest::of("c"), &c));
        assert_eq!(
            r.metrics.escalated.with_label_values(&["everyone"]).get(),
            1
        );
        let fresh = Some(SystemTime::now() + Duration::from_secs(2));
        assert!(!r.refuses(&TokenDigest::of("c2"), &identity("@c:x", fresh, 600)));
    }

    #[test]
    fn expired_entries_make_room() {
        let r = store(1);
        let mut short = identity("@a:x", long_ago(), 0);
        short.expires_at = Some(SystemTime::now() + Duration::from_millis(20));
        r.revoke_token(TokenDigest::of("short"), Some(&short));
        std::thread::sleep(Duration::from_millis(30));
        let b = identity("@b:x", long_ago(), 600);
        r.revoke_token(TokenDigest::of("b"), Some(&b));
        assert!(r.token_revoked(&TokenDigest::of("b")));
        assert_eq!(r.metrics.escalated.with_label_values(&["user"]).get(), 0);
    }
}
