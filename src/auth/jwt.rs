//! Local validation of JWT access tokens (RFC 9068): signature against the
//! issuer's published keys, then `iss`, `aud`, `exp`, `nbf`, `iat`. No
//! network per token once the keys are known, which is what makes a cache
//! miss cheap (≈30 µs for RS256 with the aws-lc-rs backend).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::cache::Verdict;
use super::jwks::{KeyError, KeyRef, KeyStore};
use super::subject::{self, UserId};
use super::{AuthError, Identity};
use crate::scopes::ScopeSet;

pub(crate) struct JwtSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub require_typ: bool,
    pub user_claim: Option<String>,
    pub hmac_secret: Option<Vec<u8>>,
    pub server_name: String,
}

pub(crate) struct JwtValidator {
    keys: Arc<KeyStore>,
    /// One prepared `Validation` per allowed algorithm: jsonwebtoken wants
    /// the algorithm list to match the key's family.
    validations: HashMap<Algorithm, Validation>,
    hmac: Option<DecodingKey>,
    require_typ: bool,
    leeway_s: u64,
    user_claim: Option<String>,
    server_name: String,
}

/// Why a token was refused, for the debug log.
type Refusal = &'static str;

impl JwtValidator {
    pub(crate) fn new(s: JwtSettings, keys: Arc<KeyStore>) -> Self {
        let validations = s
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = s.leeway.as_secs();
                v.set_issuer(&[&s.issuer]);
                v.set_audience(&s.audiences);
                // RFC 9068 §2.2: iss, exp, aud are required.
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                v.validate_nbf = true;
                (alg, v)
            })
            .collect();
        JwtValidator {
            keys,
            validations,
            hmac: s.hmac_secret.map(|k| DecodingKey::from_secret(&k)),
            require_typ: s.require_typ,
            leeway_s: s.leeway.as_secs(),
            user_claim: s.user_claim,
            server_name: s.server_name,
        }
    }

    /// Starts fetching the issuer's keys ahead of the first token.
    pub(crate) fn warm_up(&self) {
        self.keys.warm_up();
    }

    pub(crate) async fn validate(&self, token: &str) -> Result<Verdict, AuthError> {
        match self.check(token).await {
            Ok(identity) => Ok(Verdict::Valid(Arc::new(identity))),
            Err(Check::Refused {
                reason,
                soft_logout,
            }) => {
                tracing::debug!(reason, "JWT refused");
                Ok(Verdict::Invalid { soft_logout })
            }
            Err(Check::UnknownKey) => {
                tracing::debug!("JWT refused: unknown key id");
                Err(AuthError::Invalid { soft_logout: false })
            }
            Err(Check::Unavailable) => Err(AuthError::Unavailable),
        }
    }

    async fn check(&self, token: &str) -> Result<Identity, Check> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed header"))?;
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or(refused("algorithm not allowed"))?;
        if self.require_typ && !header.typ.as_deref().is_some_and(is_access_token_typ) {
            return Err(refused("typ is not at+jwt"));
        }
        let published: KeyRef;
        let key = if header.alg.family() == AlgorithmFamily::Hmac {
            // Only reachable when a shared secret is configured (checked at load).
            self.hmac
                .as_ref()
                .ok_or(refused("no shared secret for HMAC"))?
        } else {
            published = match self.keys.key(header.kid.as_deref(), header.alg).await {
                Ok(k) => k,
                Err(KeyError::Unknown) => return Err(Check::UnknownKey),
                Err(KeyError::Unavailable) => return Err(Check::Unavailable),
            };
            published.key()
        };
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(|e| {
                match e.kind() {
                    // The spec asks for soft_logout on expiry: the client refreshes and keeps its state.
                    ErrorKind::ExpiredSignature => Check::Refused {
                        reason: "expired",
                        soft_logout: true,
                    },
                    ErrorKind::ImmatureSignature => refused("not yet valid (nbf)"),
                    ErrorKind::InvalidIssuer => refused("wrong issuer"),
                    ErrorKind::InvalidAudience => refused("wrong audience"),
                    ErrorKind::InvalidSignature => refused("bad signature"),
                    ErrorKind::MissingRequiredClaim(_) => refused("missing iss, aud or exp"),
                    _ => refused("malformed or unverifiable"),
                }
            })?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, Check> {
        let now = unix_now();
        // jsonwebtoken leaves iat alone; a token issued in the future is forged or from a broken clock.
        if number(claims, "iat").is_some_and(|iat| iat > now.saturating_add(self.leeway_s)) {
            return Err(refused("issued in the future (iat)"));
        }
        let exp = number(claims, "exp").ok_or(refused("exp is not a number"))?;
        let str_claim = |name: &str| claims.get(name).and_then(Value::as_str);
        let subject = match &self.user_claim {
            Some(claim) => str_claim(claim),
            None => str_claim("username").or_else(|| str_claim("sub")),
        }
        .ok_or(refused("no user claim"))?;
        let user_id = UserId::from_subject(subject, &self.server_name)
            .map_err(|_| refused("user claim is not a Matrix user"))?;
        let scopes = match (claims.get("scope"), claims.get("scp")) {
            // RFC 9068 §2.2.3: `scope` is space-separated (RFC 8693 §4.2).
            (Some(Value::String(s)), _) => ScopeSet::from_space_separated(s),
            (None, Some(Value::Array(items))) => {
                ScopeSet::new(items.iter().filter_map(Value::as_str))
            }
            (None, None) => ScopeSet::default(),
            _ => return Err(refused("scope/scp has the wrong type")),
        };
        let device_id = subject::device_id(str_claim("device_id"), &scopes)
            .map_err(|_| refused("bad device id"))?;
        Ok(Identity {
            user_id: user_id.into_string(),
            device_id: device_id.map(|d| d.into_string()),
            client_id: str_claim("client_id")
                .or_else(|| str_claim("azp"))
                .map(str::to_string),
            scopes,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(exp)),
            source: "jwt",
            validated_at: std::time::Instant::now(),
        })
    }
}

enum Check {
    Refused {
        reason: Refusal,
        soft_logout: bool,
    },
    /// Refused, but only until the next key refetch: not cached, so a token
    /// signed with a just-rotated key works as soon as the keys are refetched.
    UnknownKey,
    Unavailable,
}

fn refused(reason: Refusal) -> Check {
    Check::Refused {
        reason,
        soft_logout: false,
    }
}

/// RFC 9068 §2.1: `at+jwt`, or in full `application/at+jwt`; case-insensitive (RFC 7515 §4.1.9).
fn is_access_token_typ(typ: &str) -> bool {
    typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
}

/// A NumericDate (RFC 7519 §2), fractions dropped.
fn number(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    let v = claims.get(name)?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_forms() {
        assert!(is_access_token_typ("at+jwt"));
        assert!(is_access_token_typ("AT+JWT"));
        assert!(is_access_token_typ("application/at+jwt"));
        assert!(!is_access_token_typ("JWT"));
    }

    #[test]
    fn numeric_dates_accept_floats() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"a": 12, "b": 12.7, "c": "12", "d": -1}"#).unwrap();
        assert_eq!(number(&claims, "a"), Some(12));
        assert_eq!(number(&claims, "b"), Some(12));
        assert_eq!(number(&claims, "c"), None);
        assert_eq!(number(&claims, "d"), None);
    }
}
