//! Local validation of JWT access tokens (RFC 9068): signature against the
//! issuer's published keys, then `iss`, `aud`, `exp`, `nbf`, `iat`. No
//! network per token once the keys are known, which is what makes a cache
//! miss cheap.
//!
//! The token is taken apart here rather than by `jsonwebtoken::decode`: each
//! part is base64-decoded and parsed once (`claims`), the signature is checked
//! with a key aws-lc parsed when the key set was fetched (`jwks`), and the
//! claims are checked in jsonwebtoken's order with its rules, so a token is
//! refused exactly when, and as (expired or not), it was before.

mod claims;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
#[cfg(test)]
use serde_json::{Map, Value};

use self::claims::{Claims, Header, Raw, Spec};
use super::cache::Verdict;
use super::jwks::{KeyError, KeyStore};
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
    /// The allowed `alg`s (never `none`: it does not even parse).
    algorithms: Vec<Algorithm>,
    /// The shared secret, keyed for each allowed HS* algorithm.
    hmac: Vec<(Algorithm, hmac::Key)>,
    issuer: String,
    audiences: Vec<String>,
    require_typ: bool,
    leeway_s: u64,
    user_claim: Option<String>,
    server_name: String,
}

/// Why a token was refused, for the debug log.
type Refusal = &'static str;

/// Room for the largest signature any supported algorithm makes (RSA-8192,
/// 1024 bytes), and the slack base64's decoder wants. A longer one cannot
/// verify.
const SIGNATURE_BUF: usize = 1024 + 8;

/// Claims up to this size (decoded) are decoded on the stack; larger ones on the heap.
const CLAIMS_BUF: usize = 2048;

impl JwtValidator {
    pub(crate) fn new(s: JwtSettings, keys: Arc<KeyStore>) -> Self {
        let hmac = match &s.hmac_secret {
            Some(secret) => s
                .algorithms
                .iter()
                .filter_map(|&alg| {
                    let h = match alg {
                        Algorithm::HS256 => hmac::HMAC_SHA256,
                        Algorithm::HS384 => hmac::HMAC_SHA384,
                        Algorithm::HS512 => hmac::HMAC_SHA512,
                        _ => return None,
                    };
                    Some((alg, hmac::Key::new(h, secret)))
                })
                .collect(),
            None => Vec::new(),
        };
        JwtValidator {
            keys,
            algorithms: s.algorithms,
            hmac,
            issuer: s.issuer,
            audiences: s.audiences,
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

    /// The order of the steps matters, not only their outcome: a malformed
    /// header is refused before any key lookup (no refetch), an unknown key
    /// before the signature or claims are looked at (not cached), and the
    /// signature before the claims are parsed.
    async fn check(&self, token: &str) -> Result<Identity, Check> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("malformed header"));
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| refused("malformed header"))?;
        let header = Header::parse(&header_json).ok_or(refused("malformed header"))?;
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(refused("algorithm not allowed"));
        }
        if self.require_typ && !header.typ.as_deref().is_some_and(is_access_token_typ) {
            return Err(refused("typ is not at+jwt"));
        }
        // What is signed: the first two parts as sent.
        let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        let verified = if alg.family() == AlgorithmFamily::Hmac {
            // Only the configured shared secret, never a published key.
            let key = self
                .hmac
                .iter()
                .find(|(a, _)| *a == alg)
                .map(|(_, k)| k)
                .ok_or(refused("no shared secret for HMAC"))?;
            with_signature(signature_b64, |sig| hmac::verify(key, message, sig).is_ok())?
        } else {
            // The key must fit the algorithm and be the one `kid` names (KeySet::find).
            let key = match self.keys.key(header.kid.as_deref(), alg).await {
                Ok(k) => k,
                Err(KeyError::Unknown) => return Err(Check::UnknownKey),
                Err(KeyError::Unavailable) => return Err(Check::Unavailable),
            };
            with_signature(signature_b64, |sig| key.verify(alg, message, sig))?
        };
        if !verified {
            return Err(refused("bad signature"));
        }
        self.check_claims(payload_b64)
    }

    /// The claims of a token whose signature verified. Not async, so that
    /// its stack buffer is never part of `check`'s future.
    fn check_claims(&self, payload_b64: &str) -> Result<Identity, Check> {
        let mut stack = [0u8; CLAIMS_BUF];
        let heap;
        let payload = if payload_b64.len() <= CLAIMS_BUF / 3 * 4 {
            let n = URL_SAFE_NO_PAD.decode_slice(payload_b64, &mut stack);
            &stack[..n.map_err(|_| refused("malformed claims"))?]
        } else {
            heap = URL_SAFE_NO_PAD
                .decode(payload_b64)
                .map_err(|_| refused("malformed claims"))?;
            &heap[..]
        };
        let claims = Claims::parse(payload, self.user_claim.as_deref())
            .ok_or(refused("malformed claims"))?;
        let now = unix_now();
        self.check_registered(&claims, now)?;
        self.identity(&claims, now)
    }

    /// `exp`, `nbf`, `iss`, `aud` as jsonwebtoken checked them, in its order
    /// (so an expired token with a wrong issuer still gets `soft_logout`).
    fn check_registered(&self, claims: &Claims<'_>, now: u64) -> Result<(), Check> {
        // RFC 9068 §2.2: iss, exp, aud are required.
        let (Spec::Parsed(exp), Spec::Parsed(iss), Spec::Parsed(aud)) = (
            Raw::spec_date(claims.exp.as_ref()),
            Raw::spec_one_or_many(claims.iss.as_ref()),
            Raw::spec_one_or_many(claims.aud.as_ref()),
        ) else {
            return Err(refused("missing iss, aud or exp"));
        };
        let nbf = match Raw::spec_date(claims.nbf.as_ref()) {
            Spec::Parsed(nbf) => Some(nbf),
            Spec::NotPresent => None,
            Spec::Failed => return Err(refused("nbf is not a number")),
        };
        if exp < now.saturating_sub(self.leeway_s) {
            // The spec asks for soft_logout on expiry: the client refreshes and keeps its state.
            return Err(Check::Refused {
                reason: "expired",
                soft_logout: true,
            });
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway_s)) {
            return Err(refused("not yet valid (nbf)"));
        }
        if !iss.any(|i| i == self.issuer) {
            return Err(refused("wrong issuer"));
        }
        if !aud.any(|a| self.audiences.iter().any(|ours| ours == a)) {
            return Err(refused("wrong audience"));
        }
        Ok(())
    }

    fn identity(&self, claims: &Claims<'_>, now: u64) -> Result<Identity, Check> {
        // jsonwebtoken left iat alone; a token issued in the future is forged or from a broken clock.
        if number(claims, "iat").is_some_and(|iat| iat > now.saturating_add(self.leeway_s)) {
            return Err(refused("issued in the future (iat)"));
        }
        let exp = number(claims, "exp").ok_or(refused("exp is not a number"))?;
        let subject = match &self.user_claim {
            Some(claim) => claims.get(claim).and_then(Raw::as_str),
            None => str_claim(&claims.username).or_else(|| str_claim(&claims.sub)),
        }
        .ok_or(refused("no user claim"))?;
        let user_id = UserId::from_subject(subject, &self.server_name)
            .map_err(|_| refused("user claim is not a Matrix user"))?;
        let scopes = match (&claims.scope, &claims.scp) {
            // RFC 9068 §2.2.3: `scope` is space-separated (RFC 8693 §4.2).
            (Some(Raw::Str(s)), _) => ScopeSet::from_space_separated(s),
            (None, Some(Raw::List(items))) => ScopeSet::new(items.iter().flatten()),
            (None, None) => ScopeSet::default(),
            _ => return Err(refused("scope/scp has the wrong type")),
        };
        let device_id = subject::device_id(str_claim(&claims.device_id), &scopes)
            .map_err(|_| refused("bad device id"))?;
        Ok(Identity {
            user_id: user_id.into_string(),
            device_id: device_id.map(|d| d.into_string()),
            client_id: str_claim(&claims.client_id)
                .or_else(|| str_claim(&claims.azp))
                .map(str::to_string),
            scopes,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(exp)),
            vouched_at: number(claims, "iat").map(end_of_second),
            source: "jwt",
        })
    }
}

/// Both JSON parts parsed as `check` parses them (see `parse_jwt_json`).
pub(super) fn parse_json(header: &[u8], claims: &[u8]) -> bool {
    Header::parse(header).is_some() && Claims::parse(claims, None).is_some()
}

/// The latest moment a token with this `iat` (whole seconds, RFC 7519
/// §4.1.6) can have been issued.
fn end_of_second(iat: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(iat) + Duration::from_nanos(999_999_999)
}

/// A claim that is a string; any other type counts as absent.
fn str_claim<'r>(claim: &'r Option<Raw<'_>>) -> Option<&'r str> {
    claim.as_ref().and_then(Raw::as_str)
}

/// `verify` applied to the signature's bytes, decoded on the stack (no
/// allocation, and not async: the buffer is never part of a future).
fn with_signature(b64: &str, verify: impl FnOnce(&[u8]) -> bool) -> Result<bool, Check> {
    if b64.len() > (SIGNATURE_BUF / 3) * 4 {
        return Err(refused("bad signature"));
    }
    let mut buf = [0u8; SIGNATURE_BUF];
    let n = URL_SAFE_NO_PAD
        .decode_slice(b64, &mut buf)
        .map_err(|_| refused("malformed signature"))?;
    Ok(verify(&buf[..n]))
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
fn number<C: NumericClaims + ?Sized>(claims: &C, name: &str) -> Option<u64> {
    match claims.numeric(name)? {
        Numeric::U64(v) => Some(v),
        Numeric::Negative => None,
        Numeric::F64(f) => (f >= 0.0).then_some(f as u64),
    }
}

/// A claim's number, as serde_json holds it.
enum Numeric {
    U64(u64),
    Negative,
    F64(f64),
}

trait NumericClaims {
    fn numeric(&self, name: &str) -> Option<Numeric>;
}

impl NumericClaims for Claims<'_> {
    fn numeric(&self, name: &str) -> Option<Numeric> {
        match self.get(name)? {
            Raw::U64(v) => Some(Numeric::U64(*v)),
            Raw::I64(_) => Some(Numeric::Negative),
            Raw::F64(f) => Some(Numeric::F64(*f)),
            _ => None,
        }
    }
}

#[cfg(test)]
impl NumericClaims for Map<String, Value> {
    fn numeric(&self, name: &str) -> Option<Numeric> {
        let n = self.get(name)?.as_number()?;
        Some(match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => Numeric::U64(v),
            (None, Some(_)) => Numeric::Negative,
            (None, None) => Numeric::F64(n.as_f64()?),
        })
    }
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

    /// The validator as it was, on jsonwebtoken::decode, for the HMAC path:
    /// the reference the differential test below holds the new one to.
    mod reference {
        use super::*;
        use jsonwebtoken::errors::ErrorKind;
        use jsonwebtoken::{DecodingKey, Validation};

        pub(super) fn check(
            v: &JwtValidator,
            secret: &[u8],
            token: &str,
        ) -> Result<Identity, bool> {
            let header = jsonwebtoken::decode_header(token).map_err(|_| false)?;
            if !v.algorithms.contains(&header.alg) {
                return Err(false);
            }
            if v.require_typ && !header.typ.as_deref().is_some_and(is_access_token_typ) {
                return Err(false);
            }
            let mut validation = Validation::new(header.alg);
            validation.leeway = v.leeway_s;
            validation.set_issuer(&[&v.issuer]);
            validation.set_audience(&v.audiences);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validation.validate_nbf = true;
            let data = jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &DecodingKey::from_secret(secret),
                &validation,
            )
            .map_err(|e| matches!(e.kind(), ErrorKind::ExpiredSignature))?;
            identity(v, &data.claims)
        }

        fn identity(v: &JwtValidator, claims: &Map<String, Value>) -> Result<Identity, bool> {
            let now = unix_now();
            if number(claims, "iat").is_some_and(|iat| iat > now.saturating_add(v.leeway_s)) {
                return Err(false);
            }
            let exp = number(claims, "exp").ok_or(false)?;
            let str_claim = |name: &str| claims.get(name).and_then(Value::as_str);
            let subject = match &v.user_claim {
                Some(claim) => str_claim(claim),
                None => str_claim("username").or_else(|| str_claim("sub")),
            }
            .ok_or(false)?;
            let user_id = UserId::from_subject(subject, &v.server_name).map_err(|_| false)?;
            let scopes = match (claims.get("scope"), claims.get("scp")) {
                (Some(Value::String(s)), _) => ScopeSet::from_space_separated(s),
                (None, Some(Value::Array(items))) => {
                    ScopeSet::new(items.iter().filter_map(Value::as_str))
                }
                (None, None) => ScopeSet::default(),
                _ => return Err(false),
            };
            let device_id =
                subject::device_id(str_claim("device_id"), &scopes).map_err(|_| false)?;
            Ok(Identity {
                user_id: user_id.into_string(),
                device_id: device_id.map(|d| d.into_string()),
                client_id: str_claim("client_id")
                    .or_else(|| str_claim("azp"))
                    .map(str::to_string),
                scopes,
                expires_at: Some(UNIX_EPOCH + Duration::from_secs(exp)),
                vouched_at: number(claims, "iat").map(end_of_second),
                source: "jwt",
            })
        }
    }

    const SECRET: &[u8] = b"a shared secret of decent length";
    const ISS: &str = "https://id.example.org";

    fn validator(user_claim: Option<&str>, require_typ: bool) -> JwtValidator {
        let keys = KeyStore::new(
            super::super::jwks::JwksSource::Fixed("http://127.0.0.1:9/jwks".parse().unwrap()),
            super::super::http_client::HttpClient::new(),
            super::super::jwks::KeyStoreConfig {
                timeout: Duration::from_millis(10),
                cooldown: Duration::from_secs(10),
                refresh_interval: Duration::from_secs(300),
                max_stale: Duration::from_secs(3600),
            },
            Arc::new(super::super::metrics::AuthMetrics::new().unwrap()),
        );
        JwtValidator::new(
            JwtSettings {
                issuer: ISS.into(),
                audiences: vec!["matrix".into(), "other".into()],
                algorithms: vec![Algorithm::RS256, Algorithm::HS256, Algorithm::HS512],
                leeway: Duration::from_secs(30),
                require_typ,
                user_claim: user_claim.map(str::to_string),
                hmac_secret: Some(SECRET.to_vec()),
                server_name: "example.org".into(),
            },
            keys,
        )
    }

    fn sign(header: &str, payload: &str, alg: hmac::Algorithm) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let tag = hmac::sign(&hmac::Key::new(alg, SECRET), msg.as_bytes());
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// A small deterministic generator: the cases are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    fn same(new: &Result<Identity, Check>, old: &Result<Identity, bool>) -> bool {
        match (new, old) {
            (Ok(a), Ok(b)) => {
                (
                    &a.user_id,
                    &a.device_id,
                    &a.client_id,
                    &a.scopes,
                    a.expires_at,
                ) == (
                    &b.user_id,
                    &b.device_id,
                    &b.client_id,
                    &b.scopes,
                    b.expires_at,
                )
            }
            (Err(Check::Refused { soft_logout, .. }), Err(old_soft)) => soft_logout == old_soft,
            _ => false,
        }
    }

    #[test]
    fn the_buffers_stay_out_of_the_future() {
        // The signature and claims buffers live past the last await; were one
        // held across it, every cache miss would carry (and move) it.
        // What check() holds across its await: the key lookup (which may
        // fetch), the header and a few slices.
        let v = validator(None, false);
        let size = std::mem::size_of_val(&v.check("a.b.c"));
        let lookup = std::mem::size_of_val(&v.keys.key(None, Algorithm::RS256));
        assert!(
            size < lookup + 512,
            "check() future is {size} bytes, the key lookup {lookup}"
        );
    }

    #[tokio::test]
    async fn verdicts_match_the_jsonwebtoken_path() {
        let now = unix_now();
        let (past, future, soon) = (
            (now - 120).to_string(),
            (now + 600).to_string(),
            (now + 300).to_string(),
        );
        let (just_past, float_exp) = ((now - 5).to_string(), format!("{}.7", now + 300));
        let exp: &[&str] = &[
            &soon, &soon, &past, &just_past, &float_exp, "\"300\"", "null", "-5", "[]", "[1]",
            "{}", "1e300", "true",
        ];
        let nbf: &[&str] = &[
            &past,
            &future,
            "\"1\"",
            "null",
            "-1",
            "{}",
            "{\"a\":1}",
            "1.5",
        ];
        let iat: &[&str] = &[&past, &future, "\"x\"", "null", "-1", "[1]"];
        let iss: &[&str] = &[
            "\"https://id.example.org\"",
            "\"https:\\/\\/id.example.org\"",
            "\"https://evil\"",
            "[\"https://evil\",\"https://id.example.org\"]",
            "[]",
            "[\"https://id.example.org\",1]",
            "null",
            "5",
        ];
        let aud: &[&str] = &[
            "\"matrix\"",
            "\"other\"",
            "\"nope\"",
            "[\"nope\",\"matrix\"]",
            "[\"nope\"]",
            "[]",
            "[\"matrix\",null]",
            "null",
            "{}",
        ];
        let sub: &[&str] = &[
            "\"alice\"",
            "\"@bob:other.org\"",
            "\"not a user\"",
            "5",
            "null",
            "[]",
            "[\"alice\"]",
            "{}",
            "\"\"",
        ];
        let username: &[&str] = &["\"carol\"", "7", "null", "[\"carol\"]"];
        let scope: &[&str] = &[
            "\"urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ\"",
            "\"openid\"",
            "\"\"",
            "null",
            "5",
            "[\"openid\"]",
            "\"urn:matrix:client:device:AAAAAAAAAA urn:matrix:client:device:BBBBBBBBBB\"",
        ];
        let scp: &[&str] = &[
            "[\"openid\",\"urn:matrix:client:api:*\"]",
            "[\"a\",1,[\"b\"],{\"c\":1}]",
            "\"openid\"",
            "null",
            "[]",
        ];
        let device: &[&str] = &["\"DEV1\"", "\"has space\"", "5", "null"];
        let client: &[&str] = &["\"c1\"", "1", "null"];
        let other: &[&str] = &[
            "\"jti-1\"",
            "1e400",
            "[[[]]]",
            "{\"nested\":{\"deep\":[1,2.5,-3,null,true]}}",
            "\"\\ud83d\\ude00\"",
        ];
        let fields: &[(&str, &[&str])] = &[
            ("exp", exp),
            ("nbf", nbf),
            ("iat", iat),
            ("iss", iss),
            ("aud", aud),
            ("sub", sub),
            ("username", username),
            ("scope", scope),
            ("scp", scp),
            ("device_id", device),
            ("client_id", client),
            ("azp", client),
            ("preferred_username", username),
            ("jti", other),
        ];
        let headers = [
            (r#"{"alg":"HS256","typ":"at+jwt"}"#, hmac::HMAC_SHA256),
            (r#"{"alg":"HS256"}"#, hmac::HMAC_SHA256),
            (
                r#"{"typ":"JWT","alg":"HS512","extra":{"x":[1]}}"#,
                hmac::HMAC_SHA512,
            ),
            (r#"{"alg":"HS384","typ":"at+jwt"}"#, hmac::HMAC_SHA384),
            (r#"{"alg":"HS256","kid":5}"#, hmac::HMAC_SHA256),
        ];
        let validators = [
            validator(None, false),
            validator(None, true),
            validator(Some("preferred_username"), false),
            validator(Some("sub"), false),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut expired, mut refused_n) = (0, 0, 0);
        for case in 0..6000 {
            let mut entries = Vec::new();
            for (name, values) in fields {
                // Mostly present and well-formed, sometimes absent, sometimes twice.
                let roll = rng.next() % 10;
                if roll == 0 {
                    continue;
                }
                let value = if roll < 8 {
                    values[0]
                } else {
                    rng.pick(values)
                };
                entries.push(format!("\"{name}\":{value}"));
                if rng.next().is_multiple_of(25) {
                    entries.push(format!("\"{name}\":{}", rng.pick(values)));
                }
            }
            let payload = format!("{{{}}}", entries.join(","));
            let (header, alg) = &headers[(rng.next() % headers.len() as u64) as usize];
            let mut token = sign(header, &payload, *alg);
            if case % 97 == 0 {
                token.push('A'); // a tampered signature
            }
            for v in &validators {
                let new = v.check(&token).await;
                let old = reference::check(v, SECRET, &token);
                assert!(
                    same(&new, &old),
                    "header {header}\npayload {payload}\nuser_claim {:?} require_typ {}\nnew {:?}\nold {:?}",
                    v.user_claim,
                    v.require_typ,
                    new.as_ref().map(|i| &i.user_id).map_err(|e| match e {
                        Check::Refused { reason, soft_logout } => format!("{reason} soft={soft_logout}"),
                        _ => "other".into(),
                    }),
                    old.as_ref().map(|i| &i.user_id),
                );
                match new {
                    Ok(_) => accepted += 1,
                    Err(Check::Refused {
                        soft_logout: true, ..
                    }) => expired += 1,
                    Err(_) => refused_n += 1,
                }
            }
        }
        // The generator reaches every outcome, not only refusals.
        assert!(
            accepted > 1000 && expired > 50 && refused_n > 1000,
            "{accepted} {expired} {refused_n}"
        );
    }
}
