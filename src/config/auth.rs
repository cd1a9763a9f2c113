//! The `[auth]` and `[cache]` sections. What serde cannot check without I/O
//! is checked in `problems`, so a bad file is refused at load with the line
//! of the key, never at the first request.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use sha2::{Digest, Sha256};

use super::Problems;

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The homeserver's name: a bare `sub` or `username` becomes
    /// `@localpart:server_name`.
    pub server_name: String,
    /// The OpenID Provider's issuer URL; discovery is `{issuer}/.well-known/openid-configuration`.
    pub issuer: Option<String>,
    /// `[[auth.static]]`.
    #[serde(rename = "static")]
    pub static_tokens: Vec<StaticToken>,
    pub jwt: JwtConfig,
    pub introspection: IntrospectionConfig,
    pub legacy: LegacyConfig,
    pub rate_limit: RateLimitConfig,
}

/// One `[[auth.static]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub token_sha256: TokenDigest,
    pub user_id: String,
    #[serde(default)]
    pub device_id: Option<String>,
    pub scopes: Vec<String>,
}

/// A lowercase or uppercase hex SHA-256 digest of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::str::FromStr for TokenDigest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(s, &mut digest).map_err(|_| {
            "expected the 64 hex digits of the token's SHA-256 (e.g. `printf %s TOKEN | sha256sum`)"
                .to_string()
        })?;
        Ok(TokenDigest(digest))
    }
}

impl<'de> Deserialize<'de> for TokenDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[auth.jwt]`: local validation of RFC 9068 JWT access tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    pub enabled: bool,
    /// RFC 9068 §4: the `aud` claim must name one of these.
    pub audiences: Vec<String>,
    pub algorithms: Vec<JwsAlgorithm>,
    pub leeway_s: u64,
    /// Skips discovery for the keys when set.
    pub jwks_uri: Option<String>,
    /// RFC 9068 §2.1: require the header `typ: at+jwt`.
    pub require_typ: bool,
    /// The claim naming the user; unset means `username` if present, else `sub`.
    pub user_claim: Option<String>,
    /// The only way HS256/384/512 become acceptable: an explicitly shared key.
    pub hmac_secret: Option<Secret>,
    pub hmac_secret_file: Option<PathBuf>,
    pub refresh_interval_s: u64,
    pub unknown_kid_cooldown_s: u64,
    /// How long the last good key set is trusted while the provider cannot be reached.
    pub max_stale_s: u64,
    pub fetch_timeout_ms: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            enabled: false,
            audiences: Vec::new(),
            algorithms: [
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::EdDSA,
                Algorithm::PS256,
            ]
            .map(JwsAlgorithm)
            .to_vec(),
            leeway_s: 30,
            jwks_uri: None,
            require_typ: false,
            user_claim: None,
            hmac_secret: None,
            hmac_secret_file: None,
            refresh_interval_s: 300,
            unknown_kid_cooldown_s: 10,
            max_stale_s: 3600,
            fetch_timeout_ms: 5000,
        }
    }
}

/// `[auth.introspection]`: RFC 7662 token introspection (MAS, Keycloak, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub enabled: bool,
    /// Taken from discovery (`introspection_endpoint`) when unset.
    pub endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<PathBuf>,
    pub auth_method: ClientAuthMethod,
    pub timeout_ms: u64,
    pub max_in_flight: usize,
}

impl Default for IntrospectionConfig {
    fn default() -> Self {
        IntrospectionConfig {
            enabled: false,
            endpoint: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            auth_method: ClientAuthMethod::ClientSecretBasic,
            timeout_ms: 2000,
            max_in_flight: 64,
        }
    }
}

/// `[auth.legacy]`: the homeserver's own access tokens, checked with `whoami`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyConfig {
    pub enabled: bool,
    /// What such a token may do; unset means full access.
    pub scopes: Option<Vec<String>>,
    pub timeout_ms: u64,
}

impl Default for LegacyConfig {
    fn default() -> Self {
        LegacyConfig {
            enabled: false,
            scopes: None,
            timeout_ms: 5000,
        }
    }
}

/// `[auth.rate_limit]`: invalid tokens per client before 429.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Invalid tokens a client may present at once before being slowed down.
    pub burst: u32,
    /// The sustained rate of invalid tokens allowed once the burst is spent.
    pub per_minute: u32,
    /// Memory bound: clients tracked at once (least recently seen go first).
    pub max_clients: u64,
    /// IPv6 clients are counted per prefix of this length (one host owns a /64).
    pub ipv6_prefix_len: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            burst: 20,
            per_minute: 30,
            max_clients: 100_000,
            ipv6_prefix_len: 64,
        }
    }
}

/// `[cache]`: validated tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_ttl_s: u64,
    pub negative_ttl_s: u64,
    pub capacity: u64,
    pub revocations: RevocationConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_ttl_s: 60,
            negative_ttl_s: 10,
            capacity: 100_000,
            revocations: RevocationConfig::default(),
        }
    }
}

/// `[cache.revocations]`: logouts and evictions, remembered until the
/// tokens they cover expire (docs/auth.md, "Revocations").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RevocationConfig {
    /// Revoked tokens held at once, and as many users' watermarks.
    pub capacity: usize,
    /// How long a revocation lasts when the token's expiry is unknown, and
    /// how long a user's watermark refuses their older tokens: at least the
    /// longest access-token lifetime the issuer grants.
    pub max_ttl_s: u64,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            capacity: 100_000,
            max_ttl_s: 86_400,
        }
    }
}

/// RFC 7662 §2.1 leaves client authentication to the server; these are the
/// three that MAS and common providers accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// RFC 6749 §2.3.1, HTTP Basic.
    ClientSecretBasic,
    /// RFC 6749 §2.3.1, credentials in the form body.
    ClientSecretPost,
    /// A shared secret as a bearer token, as MAS offers homeservers.
    Bearer,
}

/// A JWS algorithm the operator allows. `none` is not one (RFC 8725 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwsAlgorithm(pub Algorithm);

impl FromStr for JwsAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            return Err("`none` means unsigned tokens and is never accepted".into());
        }
        Algorithm::from_str(s).map(JwsAlgorithm).map_err(|_| {
            format!(
                "unknown algorithm `{s}`; expected one of RS256 RS384 RS512 PS256 PS384 PS512 \
                 ES256 ES384 EdDSA HS256 HS384 HS512"
            )
        })
    }
}

impl<'de> Deserialize<'de> for JwsAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A secret from the config file or the environment; never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `{key}` or `{key}_file`, not both; a file's trailing newline is dropped.
    pub(crate) fn resolve(
        inline: Option<&Secret>,
        file: Option<&PathBuf>,
        key: &str,
    ) -> Result<Option<Secret>, String> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(format!("set either {key} or {key}_file, not both")),
            (Some(s), None) => Ok(Some(s.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{key}_file: cannot read {}: {e}", path.display()))?;
                let secret = text.trim_end_matches(['\r', '\n']);
                if secret.is_empty() {
                    return Err(format!("{key}_file: {} is empty", path.display()));
                }
                Ok(Some(Secret(secret.to_string())))
            }
            (None, None) => Ok(None),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// An absolute URL of the identity provider. https, except on loopback
/// addresses (tests, a provider on the same host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProviderUrl(pub(crate) Uri);

impl FromStr for ProviderUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("`{s}` is not an absolute URL"))?;
        match uri.scheme_str() {
            Some("https") => Ok(ProviderUrl(uri)),
            Some("http") if is_loopback(host) => Ok(ProviderUrl(uri)),
            Some("http") => Err(format!(
                "`{s}` must use https (plain http is accepted only for loopback addresses)"
            )),
            _ => Err(format!("`{s}` must be an https URL")),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ProviderUrl {
    /// `{self}{suffix}`, with exactly one `/` between them.
    pub(crate) fn join(&self, suffix: &str) -> Result<Uri, String> {
        let base = self.0.to_string();
        format!(
            "{}/{}",
            base.trim_end_matches('/'),
            suffix.trim_start_matches('/')
        )
        .parse()
        .map_err(|e| format!("cannot append {suffix} to {base}: {e}"))
    }
}

/// Parses an optional URL key.
pub(crate) fn provider_url(value: Option<&str>) -> Result<Option<ProviderUrl>, String> {
    value.map(str::parse).transpose()
}

/// Far beyond any token's life, and far from overflowing a clock.
const TEN_YEARS_S: u64 = 10 * 365 * 86_400;

impl AuthSettings {
    /// Every mistake in `[auth]` and its subsections that needs no I/O.
    pub fn problems(&self) -> Problems {
        let mut out = Problems::default();
        if self.server_name.is_empty() {
            out.add(
                "auth",
                "server_name",
                "is required: bare user names become @name:server_name",
            );
        } else if let Err(e) = check_server_name(&self.server_name) {
            out.add("auth", "server_name", e);
        }
        let issuer = provider_url(self.issuer.as_deref())
            .map_err(|e| out.add("auth", "issuer", e))
            .ok()
            .flatten();
        if self.jwt.enabled {
            self.jwt.problems(self.issuer.is_some(), &mut out);
        }
        if self.introspection.enabled {
            self.introspection.problems(issuer.is_some(), &mut out);
        }
        self.rate_limit.problems(&mut out);
        out
    }
}

impl JwtConfig {
    pub(crate) fn has_hmac(&self) -> bool {
        self.algorithms
            .iter()
            .any(|a| a.0.family() == AlgorithmFamily::Hmac)
    }

    fn problems(&self, has_issuer: bool, out: &mut Problems) {
        const S: &str = "auth.jwt";
        if !has_issuer {
            out.add(
                S,
                "enabled",
                "needs [auth] issuer: tokens are checked against it (iss)",
            );
        }
        if self.audiences.is_empty() {
            out.add(
                S,
                "audiences",
                "must name the audience your issuer puts in access tokens (aud)",
            );
        }
        if self.algorithms.is_empty() {
            out.add(S, "algorithms", "is empty: no token could ever be accepted");
        }
        let secret_set = match (&self.hmac_secret, &self.hmac_secret_file) {
            (Some(_), Some(_)) => {
                out.add(
                    S,
                    "hmac_secret",
                    "set either hmac_secret or hmac_secret_file, not both",
                );
                true
            }
            (None, None) => false,
            _ => true,
        };
        match (self.has_hmac(), secret_set) {
            (true, false) => out.add(
                S,
                "algorithms",
                "lists an HS* algorithm but no hmac_secret is set",
            ),
            (false, true) => out.add(
                S,
                "hmac_secret",
                "is set but algorithms lists no HS* algorithm",
            ),
            _ => {}
        }
        if let Err(e) = provider_url(self.jwks_uri.as_deref()) {
            out.add(S, "jwks_uri", e);
        }
    }
}

impl IntrospectionConfig {
    fn problems(&self, has_issuer: bool, out: &mut Problems) {
        const S: &str = "auth.introspection";
        match (&self.client_secret, &self.client_secret_file) {
            (Some(_), Some(_)) => out.add(
                S,
                "client_secret",
                "set either client_secret or client_secret_file, not both",
            ),
            (None, None) => out.add(
                S,
                "enabled",
                "needs client_secret or client_secret_file (or SCOPEGATE__AUTH__INTROSPECTION__CLIENT_SECRET)",
            ),
            _ => {}
        }
        let needs_id = self.auth_method != ClientAuthMethod::Bearer;
        if needs_id && self.client_id.as_deref().is_none_or(str::is_empty) {
            out.add(
                S,
                "client_id",
                "is required for client_secret_basic and client_secret_post",
            );
        }
        match provider_url(self.endpoint.as_deref()) {
            Err(e) => out.add(S, "endpoint", e),
            Ok(None) if !has_issuer => out.add(S, "endpoint", "is required without [auth] issuer"),
            Ok(_) => {}
        }
    }
}

impl RateLimitConfig {
    fn problems(&self, out: &mut Problems) {
        const S: &str = "auth.rate_limit";
        if !self.enabled {
            return;
        }
        if self.burst == 0 || self.per_minute == 0 {
            out.add(
                S,
                if self.burst == 0 {
                    "burst"
                } else {
                    "per_minute"
                },
                "burst and per_minute must be at least 1 (or set enabled = false)",
            );
        }
        // `burst` minutes' worth of nanoseconds must fit the limiter's u64.
        if self.burst > 1_000_000 {
            out.add(S, "burst", "must be at most 1000000");
        }
        if self.ipv6_prefix_len == 0 || self.ipv6_prefix_len > 128 {
            out.add(S, "ipv6_prefix_len", "must be between 1 and 128");
        }
    }
}

impl CacheConfig {
    /// Every mistake in `[cache]` and `[cache.revocations]`.
    pub fn problems(&self) -> Problems {
        let mut out = Problems::default();
        if self.capacity == 0 {
            out.add("cache", "capacity", "must be at least 1");
        }
        if self.max_ttl_s == 0 {
            out.add(
                "cache",
                "max_ttl_s",
                "must be at least 1 (every request would reach the identity provider)",
            );
        }
        if self.max_ttl_s > TEN_YEARS_S {
            out.add("cache", "max_ttl_s", "must be at most ten years");
        }
        if self.negative_ttl_s > TEN_YEARS_S {
            out.add("cache", "negative_ttl_s", "must be at most ten years");
        }
        let r = &self.revocations;
        if r.capacity == 0 {
            out.add("cache.revocations", "capacity", "must be at least 1");
        }
        if r.max_ttl_s > TEN_YEARS_S {
            out.add(
                "cache.revocations",
                "max_ttl_s",
                "must be at most ten years",
            );
        }
        if r.max_ttl_s < self.max_ttl_s {
            out.add(
                "cache.revocations",
                "max_ttl_s",
                format!(
                    "({}) must be at least [cache] max_ttl_s ({}): a revocation must outlive what the cache remembers",
                    r.max_ttl_s, self.max_ttl_s
                ),
            );
        }
        out
    }

    pub(crate) fn max_ttl(&self) -> Duration {
        Duration::from_secs(self.max_ttl_s)
    }

    pub(crate) fn negative_ttl(&self) -> Duration {
        Duration::from_secs(self.negative_ttl_s)
    }
}

/// A Matrix server name (spec appendix "Server name"): host with optional port.
fn check_server_name(s: &str) -> Result<(), String> {
    let valid = s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a Matrix server name (a host name or IP literal, with an optional port)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_refused_by_name() {
        let err = "none".parse::<JwsAlgorithm>().unwrap_err();
        assert!(err.contains("never accepted"), "{err}");
        assert!("rs256".parse::<JwsAlgorithm>().is_err());
        assert_eq!(
            "EdDSA".parse::<JwsAlgorithm>().unwrap(),
            JwsAlgorithm(Algorithm::EdDSA)
        );
    }

    #[test]
    fn provider_urls_must_be_https_except_on_loopback() {
        assert!("https://id.example.org".parse::<ProviderUrl>().is_ok());
        assert!("http://127.0.0.1:8080".parse::<ProviderUrl>().is_ok());
        assert!("http://[::1]:8080/x".parse::<ProviderUrl>().is_ok());
        assert!("http://localhost/".parse::<ProviderUrl>().is_ok());
        let err = "http://id.example.org".parse::<ProviderUrl>().unwrap_err();
        assert!(err.contains("must use https"), "{err}");
        assert!("/relative".parse::<ProviderUrl>().is_err());
    }

    #[test]
    fn join_puts_one_slash_between() {
        let url: ProviderUrl = "https://id.example.org/realms/m/".parse().unwrap();
        assert_eq!(
            url.join("/.well-known/openid-configuration").unwrap(),
            "https://id.example.org/realms/m/.well-known/openid-configuration"
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_defaults_fill_in() {
        let err = toml::from_str::<AuthSettings>("server_name = \"x\"\n[jwt]\nenable = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `enable`"), "{err}");

        let cfg: AuthSettings = toml::from_str(
            "server_name = \"example.org\"\n[introspection]\nenabled = true\nauth_method = \"bearer\"\n",
        )
        .unwrap();
        assert_eq!(cfg.introspection.auth_method, ClientAuthMethod::Bearer);
        assert_eq!(cfg.introspection.timeout_ms, 2000);
        assert_eq!(cfg.legacy.scopes, None);
        assert_eq!(cfg.jwt.algorithms.len(), 4);
        assert!(!cfg.jwt.has_hmac());
    }

    #[test]
    fn secrets_come_from_one_place_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "hunter2\n").unwrap();
        let from_file = Secret::resolve(None, Some(&path), "client_secret").unwrap();
        assert_eq!(from_file.as_ref().map(Secret::expose), Some("hunter2"));
        assert!(!format!("{from_file:?}").contains("hunter2"));
        let both = Secret::resolve(Some(&Secret::new("a")), Some(&path), "client_secret");
        assert!(both.unwrap_err().contains("not both"));
        let missing = Secret::resolve(None, Some(&dir.path().join("nope")), "client_secret");
        assert!(missing.unwrap_err().contains("cannot read"));
    }
}
