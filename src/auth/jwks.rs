//! The issuer's signing keys (RFC 7517), parsed once and shared by every
//! request. Keys change by rotation, so the set is refetched periodically and
//! when a token names a key id we do not know; that refetch is rate limited
//! (a stream of made-up key ids must not become a stream of fetches) and
//! single-flight. When the provider cannot be reached the last good set keeps
//! serving for `max_stale`, then validation fails closed.
//!
//! Each key is turned into aws-lc's parsed form once, when the set is
//! fetched, for every algorithm it may verify: a token's signature check is
//! then only the arithmetic (an RSA key's Montgomery constants are computed
//! on its first use and kept), not a rebuild of the key from `n` and `e`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use http::Uri;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::discovery::Discovery;
use super::http_client::HttpClient;
use super::metrics::AuthMetrics;
use crate::config::ProviderUrl;

const MAX_JWKS: usize = 1024 * 1024;
/// More keys than any provider publishes; bounds what a hostile document costs.
const MAX_KEYS: usize = 64;

pub(crate) enum JwksSource {
    Fixed(Uri),
    Discovered(Arc<Discovery>),
}

pub(crate) struct KeyStoreConfig {
    pub timeout: Duration,
    pub cooldown: Duration,
    pub refresh_interval: Duration,
    pub max_stale: Duration,
}

pub(crate) struct KeyStore {
    source: JwksSource,
    http: HttpClient,
    cfg: KeyStoreConfig,
    current: ArcSwapOption<KeySet>,
    /// Held while fetching (single flight); holds the last attempt's time.
    last_attempt: Mutex<Option<Instant>>,
    refresher_started: AtomicBool,
    metrics: Arc<AuthMetrics>,
}

/// One fetched JWKS.
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
    fetched_at: Instant,
}

struct VerifyKey {
    kid: Option<String>,
    /// The JWK's own `alg`, when it pins one (RFC 7517 §4.4).
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    /// The key in aws-lc's parsed form, one per algorithm it may verify (its
    /// pinned `alg`, else every algorithm of its family). An algorithm aws-lc
    /// will not parse the key for (a P-384 point for ES256, a malformed
    /// modulus) has no entry: the key is still found by `kid`, and a
    /// signature checked with it fails, as it always did.
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl VerifyKey {
    fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

/// A key found for a token, borrowed from its set.
pub(crate) struct KeyRef {
    set: Arc<KeySet>,
    index: usize,
}

impl KeyRef {
    /// Whether `signature` is `alg`'s signature of `message` by this key.
    /// `alg` is the one the key was looked up for ([`KeyStore::key`]).
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.set.keys[self.index].verify(alg, message, signature)
    }
}

pub(crate) enum KeyError {
    /// No key with that id (after a refetch, if the cooldown allowed one).
    Unknown,
    /// No trustworthy key set: never fetched, or stale past `max_stale`.
    Unavailable,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<usize> {
        // The key must fit the token's algorithm: an RSA key is never an HMAC
        // secret (RFC 8725 §2.1, algorithm confusion).
        let fits = |k: &VerifyKey| k.family == alg.family() && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .position(|k| k.kid.as_deref() == Some(kid) && fits(k)),
            // Without a kid, only an unambiguous key will do.
            None => {
                let mut candidates = self.keys.iter().enumerate().filter(|(_, k)| fits(k));
                match (candidates.next(), candidates.next()) {
                    (Some((i, _)), None) => Some(i),
                    _ => None,
                }
            }
        }
    }
}

impl KeyStore {
    pub(crate) fn new(
        source: JwksSource,
        http: HttpClient,
        cfg: KeyStoreConfig,
        metrics: Arc<AuthMetrics>,
    ) -> Arc<Self> {
        Arc::new(KeyStore {
            source,
            http,
            cfg,
            current: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
            refresher_started: AtomicBool::new(false),
            metrics,
        })
    }

    /// Fetches the keys now, in the background, when there is a runtime to
    /// do it on; otherwise the first token does.
    pub(crate) fn warm_up(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.start_refresher();
        }
    }

    pub(crate) async fn key(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<KeyRef, KeyError> {
        self.start_refresher();
        if let Some(found) = self.usable().and_then(|set| lookup(set, kid, alg)) {
            return Ok(found);
        }
        self.refetch(false).await;
        let set = self.usable().ok_or(KeyError::Unavailable)?;
        lookup(set, kid, alg).ok_or(KeyError::Unknown)
    }

    fn usable(&self) -> Option<Arc<KeySet>> {
        self.current
            .load_full()
            .filter(|set| set.fetched_at.elapsed() <= self.cfg.max_stale)
    }

    fn start_refresher(self: &Arc<Self>) {
        // Every token comes here: a plain load, not a read-modify-write, once started.
        if self.refresher_started.load(Ordering::Acquire)
            || self.refresher_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak: Weak<KeyStore> = Arc::downgrade(self);
        let interval = self.cfg.refresh_interval;
        tokio::spawn(async move {
            if let Some(store) = weak.upgrade() {
                store.refetch(false).await;
            }
            loop {
                tokio::time::sleep(interval).await;
                // The validator is gone (config reload, shutdown): stop.
                let Some(store) = weak.upgrade() else { return };
                store.refetch(true).await;
            }
        });
    }

    /// Fetches unless another fetch finished while we waited, or (unless
    /// `periodic`) one was attempted within the cooldown.
    async fn refetch(&self, periodic: bool) {
        let seen = self.current.load().as_ref().map(|s| s.fetched_at);
        let mut last_attempt = self.last_attempt.lock().await;
        if self.current.load().as_ref().map(|s| s.fetched_at) != seen {
            return;
        }
        if !periodic && last_attempt.is_some_and(|t| t.elapsed() < self.cfg.cooldown) {
            return;
        }
        *last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                tracing::debug!(keys = set.keys.len(), "fetched the issuer's signing keys");
                self.current.store(Some(Arc::new(set)));
                self.metrics.jwks_refreshes.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                let kept = self.usable().is_some();
                tracing::warn!(
                    keeping_last_good_keys = kept,
                    "fetching the issuer's signing keys failed: {e}"
                );
                self.metrics
                    .jwks_refreshes
                    .with_label_values(&["error"])
                    .inc();
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let uri = match &self.source {
            JwksSource::Fixed(uri) => uri.clone(),
            JwksSource::Discovered(discovery) => {
                let meta = discovery
                    .metadata()
                    .await
                    .ok_or("OpenID discovery failed")?;
                let jwks_uri = meta
                    .jwks_uri
                    .as_deref()
                    .ok_or("the discovery document has no jwks_uri; set [auth.jwt] jwks_uri")?;
                jwks_uri.parse::<ProviderUrl>()?.0
            }
        };
        let doc: RawJwks = self
            .http
            .get_json(&uri, self.cfg.timeout, MAX_JWKS)
            .await
            .map_err(|e| format!("{uri} {e}"))?;
        let keys: Vec<VerifyKey> = doc
            .keys
            .iter()
            .filter_map(parse_key)
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err(format!("{uri} has no usable signing key"));
        }
        Ok(KeySet {
            keys,
            fetched_at: Instant::now(),
        })
    }
}

fn lookup(set: Arc<KeySet>, kid: Option<&str>, alg: Algorithm) -> Option<KeyRef> {
    set.find(kid, alg).map(|index| KeyRef { set, index })
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// A signature-verification key, or None for anything else (encryption keys,
/// symmetric keys, unknown types): one odd key does not spoil the set.
fn parse_key(value: &serde_json::Value) -> Option<VerifyKey> {
    if value.get("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match value.get("alg") {
        None => None,
        Some(a) => Some(a.as_str()?.parse::<Algorithm>().ok()?),
    };
    // jsonwebtoken decides which JWKs are usable keys, and of which family.
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    let family = key.family();
    // A shared secret has no business in a public key set.
    if family == AlgorithmFamily::Hmac || alg.is_some_and(|a| a.family() != family) {
        return None;
    }
    let algorithms = match &alg {
        Some(pinned) => std::slice::from_ref(pinned),
        None => family.algorithms(),
    };
    let parsed = algorithms
        .iter()
        .filter_map(|&a| Some((a, parse_public_key(&key, a)?)))
        .collect();
    Some(VerifyKey {
        kid: jwk.common.key_id,
        alg,
        family,
        parsed,
    })
}

/// The aws-lc verification algorithm for `alg`: the ones jsonwebtoken's
/// aws-lc backend uses (RSA 2048–8192 bits, fixed-size ECDSA signatures).
enum Verification {
    Rsa(&'static RsaParameters),
    Other(&'static dyn sig::VerificationAlgorithm),
}

fn verification(alg: Algorithm) -> Option<Verification> {
    Some(match alg {
        Algorithm::RS256 => Verification::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Verification::Rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Verification::Rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Verification::Rsa(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Verification::Rsa(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Verification::Rsa(&sig::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => Verification::Other(&sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Verification::Other(&sig::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Verification::Other(&sig::ED25519),
        _ => return None,
    })
}

/// `key` parsed for `alg`, from the same bytes jsonwebtoken verified with:
/// RSA `n` and `e`, an uncompressed EC point, a raw Ed25519 key.
fn parse_public_key(key: &DecodingKey, alg: Algorithm) -> Option<ParsedPublicKey> {
    match (verification(alg)?, key.kind()) {
        (Verification::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
            RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .ok()
        }
        (Verification::Other(algorithm), DecodingKeyKind::SecretOrDer(bytes)) => {
            ParsedPublicKey::new(algorithm, bytes).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(values: &[serde_json::Value]) -> KeySet {
        KeySet {
            keys: values.iter().filter_map(parse_key).collect(),
            fetched_at: Instant::now(),
        }
    }

    fn rsa(kid: &str) -> serde_json::Value {
        json!({"kty": "RSA", "kid": kid, "n": "sXch", "e": "AQAB"})
    }

    #[test]
    fn keys_are_matched_by_kid_and_family() {
        let s = set(&[
            rsa("a"),
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "b", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        ]);
        assert_eq!(s.find(Some("a"), Algorithm::RS256), Some(0));
        assert_eq!(s.find(Some("a"), Algorithm::PS256), Some(0));
        assert_eq!(s.find(Some("b"), Algorithm::EdDSA), Some(1));
        assert_eq!(
            s.find(Some("a"), Algorithm::HS256),
            None,
            "RSA key is no HMAC secret"
        );
        assert_eq!(s.find(Some("a"), Algorithm::ES256), None);
        assert_eq!(s.find(Some("c"), Algorithm::RS256), None);
        assert_eq!(
            s.find(None, Algorithm::RS256),
            Some(0),
            "one RSA key: unambiguous"
        );
    }

    #[test]
    fn a_pinned_alg_is_respected_and_kidless_ambiguity_refused() {
        let mut pinned = rsa("p");
        pinned["alg"] = json!("RS256");
        let s = set(&[pinned, rsa("q")]);
        assert_eq!(s.find(Some("p"), Algorithm::RS256), Some(0));
        assert_eq!(s.find(Some("p"), Algorithm::PS256), None);
        assert_eq!(s.find(None, Algorithm::RS256), None, "two RSA keys, no kid");
    }

    #[test]
    fn keys_are_parsed_once_for_the_algorithms_they_may_verify() {
        let s = set(&[
            rsa("tiny"),
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        ]);
        // A modulus aws-lc refuses still names a key; it verifies nothing.
        assert!(s.keys[0].parsed.len() <= 6);
        assert!(!s.keys[0].verify(Algorithm::RS256, b"m", &[0; 256]));
        let algs: Vec<_> = s.keys[1].parsed.iter().map(|(a, _)| *a).collect();
        assert_eq!(algs, [Algorithm::EdDSA]);
        assert!(!s.keys[1].verify(Algorithm::EdDSA, b"m", &[0; 64]));
        assert!(!s.keys[1].verify(Algorithm::RS256, b"m", &[0; 64]));
    }

    #[test]
    fn odd_keys_are_skipped_not_fatal() {
        let mut enc = rsa("enc");
        enc["use"] = json!("enc");
        let mut oaep = rsa("oaep");
        oaep["alg"] = json!("RSA-OAEP");
        let s = set(&[
            enc,
            oaep,
            json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}),
            json!({"kty": "weird"}),
            rsa("ok"),
        ]);
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.keys[0].kid.as_deref(), Some("ok"));
    }
}
