//! Local validation of JWT access tokens (RFC 9068): signature against the
//! issuer's published keys, then `iss`, `aud`, `exp`, `nbf`, `iat`. No
//! network per token once the keys are known, which is what makes a cache
//! miss cheap.
//!
//! The token is taken apart here rather than by `jsonwebtoken::decode`: each
//! part is base64-decoded and parsed once (`claims`, whose grammar is the
//! RFCs'), and the signature is checked with a key aws-lc parsed when the key
//! set was fetched (`jwks`): that pre-parsing is what made a miss cheaper.
//! The claims are checked in jsonwebtoken's order, so that an expired token
//! with a wrong issuer still gets `soft_logout`; where the verdicts differ
//! from jsonwebtoken's, the tests below list each difference.

mod claims;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::claims::{Claims, Header, NumericDate, Text};
use super::cache::Verdict;
use super::jwks::{KeyError, KeyStore};
use super::subject::{self, UserId};
use super::{AuthError, Identity};
use crate::scopes::ScopeSet;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily};

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
        let exp = self.check_registered(&claims, now)?;
        self.identity(&claims, exp, now)
    }

    /// `exp`, `nbf`, `iss`, `aud` in jsonwebtoken's order (so an expired
    /// token with a wrong issuer still gets `soft_logout`).
    fn check_registered(&self, claims: &Claims<'_>, now: u64) -> Result<NumericDate, Check> {
        // RFC 9068 §2.2: iss, exp, aud are required.
        let (Some(exp), Some(iss), Some(aud)) = (claims.exp, &claims.iss, &claims.aud) else {
            return Err(refused("missing iss, aud or exp"));
        };
        if exp.0 < now.saturating_sub(self.leeway_s) {
            // The spec asks for soft_logout on expiry: the client refreshes and keeps its state.
            return Err(Check::Refused {
                reason: "expired",
                soft_logout: true,
            });
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf.0 > now.saturating_add(self.leeway_s))
        {
            return Err(refused("not yet valid (nbf)"));
        }
        if **iss != self.issuer {
            return Err(refused("wrong issuer"));
        }
        if !aud.any(|a| self.audiences.iter().any(|ours| ours == a)) {
            return Err(refused("wrong audience"));
        }
        Ok(exp)
    }

    fn identity(&self, claims: &Claims<'_>, exp: NumericDate, now: u64) -> Result<Identity, Check> {
        // jsonwebtoken left iat alone; a token issued in the future is forged or from a broken clock.
        if claims
            .iat
            .is_some_and(|iat| iat.0 > now.saturating_add(self.leeway_s))
        {
            return Err(refused("issued in the future (iat)"));
        }
        let subject = match &self.user_claim {
            Some(_) => claims.user.as_deref(),
            None => str_claim(&claims.username).or_else(|| str_claim(&claims.sub)),
        }
        .ok_or(refused("no user claim"))?;
        let user_id = UserId::from_subject(subject, &self.server_name)
            .map_err(|_| refused("user claim is not a Matrix user"))?;
        let scopes = match (&claims.scope, &claims.scp) {
            // RFC 9068 §2.2.3: `scope` is space-separated (RFC 8693 §4.2).
            (Some(s), _) => ScopeSet::from_space_separated(s),
            (None, Some(items)) => ScopeSet::new(items.iter().map(|s| &**s)),
            (None, None) => ScopeSet::default(),
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
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(exp.0)),
            vouched_at: claims.iat.map(|iat| end_of_second(iat.0)),
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

fn str_claim<'r>(claim: &'r Option<Text<'_>>) -> Option<&'r str> {
    claim.as_deref()
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

    /// The validator on jsonwebtoken::decode and its claim checks, for the
    /// HMAC path: what the tests below compare with, difference by difference.
    mod reference {
        use super::*;
        use jsonwebtoken::errors::ErrorKind;
        use jsonwebtoken::{DecodingKey, Validation};
        use serde_json::{Map, Value};

        /// A NumericDate as the old path read it: fractions dropped, a
        /// negative or non-number as absent.
        fn number(claims: &Map<String, Value>, name: &str) -> Option<u64> {
            let n = claims.get(name)?.as_number()?;
            match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => Some(v),
                (None, Some(_)) => None,
                (None, None) => n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64),
            }
        }

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
    }

    /// A verdict without its reason: the identity, or the refusal's `soft_logout`.
    type Verdict = Result<
        (
            String,
            Option<String>,
            Option<String>,
            ScopeSet,
            Option<SystemTime>,
        ),
        bool,
    >;

    fn ours(v: &Result<Identity, Check>) -> Verdict {
        match v {
            Ok(i) => Ok(parts(i)),
            Err(Check::Refused { soft_logout, .. }) => Err(*soft_logout),
            Err(_) => panic!("the HMAC path neither fetches keys nor fails"),
        }
    }

    fn theirs(v: &Result<Identity, bool>) -> Verdict {
        v.as_ref().map(parts).map_err(|soft| *soft)
    }

    fn parts(
        i: &Identity,
    ) -> (
        String,
        Option<String>,
        Option<String>,
        ScopeSet,
        Option<SystemTime>,
    ) {
        (
            i.user_id.clone(),
            i.device_id.clone(),
            i.client_id.clone(),
            i.scopes.clone(),
            i.expires_at,
        )
    }

    /// Each way our grammar (docs/auth.md, "JWT grammar") differs from what
    /// jsonwebtoken's decode and claim checks accepted.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Difference {
        /// RFC 7519 §4.1.1: `iss` is one string; jsonwebtoken also took an
        /// array naming the issuer.
        IssArray,
        /// RFC 7519 §4, RFC 7515 §4: a name used twice is refused;
        /// jsonwebtoken kept the last, except for exp, nbf, sub, iss, aud and
        /// its typed header fields.
        Repeated,
        /// RFC 7515 §4.1.11: `crit` names extensions we do not understand;
        /// jsonwebtoken ignored it.
        Crit,
        /// A member we read holds another type, `null` included: refused;
        /// jsonwebtoken's path read it as absent (`iat`, `sub`, `username`,
        /// `device_id`, `client_id`, `azp`, `kid`, `typ`), skipped non-string
        /// `scp` elements, or ignored `scp` beside `scope` (and `username`
        /// beside another `user_claim`).
        Mistyped,
        /// RFC 7519 §2: a NumericDate past year 9999 is refused; jsonwebtoken
        /// took any u64 (past i64::MAX seconds, building the identity panicked).
        FarFuture,
        /// RFC 7519 §2 allows fractions: we drop them, jsonwebtoken rounded
        /// `exp` and `nbf` to the nearest second.
        Fraction,
        /// Loosening, RFC 8259 §6 and §8.2: a member we do not read may hold
        /// a number beyond f64 or a lone surrogate; jsonwebtoken refused.
        UnreadValue,
        /// Loosening, RFC 7515 §4: header parameters we do not use (`x5c`,
        /// `jwk`, `cty`, …) may hold anything; jsonwebtoken typed them.
        UnusedHeader,
    }

    impl Difference {
        /// We accept what jsonwebtoken refused (else the reverse, or a refusal
        /// that loses `soft_logout`).
        fn loosens(self) -> bool {
            matches!(self, Difference::UnreadValue | Difference::UnusedHeader)
        }
    }

    /// A token from these claims, with a valid iss, aud, sub and exp unless
    /// `claims` names them (a repeated name stays repeated).
    fn token_with(header: &str, claims: &str) -> String {
        let now = unix_now();
        let mut members = vec![claims.to_string()];
        for (name, value) in [
            ("iss", format!("\"{ISS}\"")),
            ("aud", "\"matrix\"".into()),
            ("sub", "\"alice\"".into()),
            ("exp", (now + 300).to_string()),
        ] {
            if !claims.contains(&format!("\"{name}\":")) {
                members.push(format!("\"{name}\":{value}"));
            }
        }
        members.retain(|m| !m.is_empty());
        sign(
            header,
            &format!("{{{}}}", members.join(",")),
            hmac::HMAC_SHA256,
        )
    }

    #[tokio::test]
    async fn each_documented_difference_from_jsonwebtoken() {
        use Difference::*;
        const HS: &str = r#"{"alg":"HS256"}"#;
        let now = unix_now();
        let cases: &[(Difference, &str, &str, Option<&str>)] = &[
            (IssArray, HS, r#""iss":["https://id.example.org"]"#, None),
            (Repeated, HS, r#""jti":"a","jti":"b""#, None),
            (Repeated, HS, r#""scope":"a","scope":"openid""#, None),
            (Repeated, r#"{"alg":"HS256","x":1,"x":2}"#, "", None),
            (Crit, r#"{"alg":"HS256","crit":["exp"]}"#, "", None),
            (Mistyped, HS, r#""iat":"x""#, None),
            (Mistyped, HS, r#""iat":-1"#, None),
            (Mistyped, HS, r#""iat":null"#, None),
            (Mistyped, HS, r#""sub":5,"username":"carol""#, None),
            (Mistyped, HS, r#""username":null"#, None),
            (Mistyped, HS, r#""client_id":1"#, None),
            (Mistyped, HS, r#""device_id":5"#, None),
            (Mistyped, HS, r#""scp":["openid",1]"#, None),
            (Mistyped, HS, r#""scope":"openid","scp":"x""#, None),
            (
                Mistyped,
                HS,
                r#""preferred_username":"carol","username":7"#,
                Some("preferred_username"),
            ),
            (Mistyped, r#"{"alg":"HS256","kid":null}"#, "", None),
            (Mistyped, r#"{"alg":"HS256","typ":null}"#, "", None),
            (FarFuture, HS, r#""exp":253402300800"#, None),
            (UnreadValue, HS, r#""jti":1e400"#, None),
            (UnreadValue, HS, r#""jti":"\ud800""#, None),
            (UnusedHeader, r#"{"alg":"HS256","x5c":[1]}"#, "", None),
            (UnusedHeader, r#"{"alg":"HS256","jwk":5}"#, "", None),
        ];
        for &(difference, header, claims, user_claim) in cases {
            let v = validator(user_claim, false);
            let token = token_with(header, claims);
            let (new, old) = (
                ours(&v.check(&token).await),
                theirs(&reference::check(&v, SECRET, &token)),
            );
            let case = format!("{difference:?}: {header} {claims}");
            if difference.loosens() {
                assert!(new.is_ok() && old == Err(false), "{case}: {new:?} {old:?}");
            } else {
                assert!(old.is_ok() && new == Err(false), "{case}: {new:?} {old:?}");
            }
        }
        // Fraction: exp 0.7 s into the last second leeway_s (30) allows is
        // that second rounded, one before dropped. (Again if the clock ticked.)
        let v = validator(None, false);
        let (new, old) = loop {
            let now = unix_now();
            let token = token_with(HS, &format!(r#""exp":{}.7"#, now - 31));
            let verdicts = (
                ours(&v.check(&token).await),
                theirs(&reference::check(&v, SECRET, &token)),
            );
            if unix_now() == now {
                break verdicts;
            }
        };
        assert!(
            !Fraction.loosens() && old.is_ok() && new == Err(true),
            "{new:?} {old:?}"
        );
        // Refused by the grammar before expiry is looked at: no soft_logout.
        let v = validator(None, false);
        let token = token_with(HS, &format!(r#""iat":"x","exp":{}"#, now - 120));
        assert_eq!(ours(&v.check(&token).await), Err(false));
        assert_eq!(theirs(&reference::check(&v, SECRET, &token)), Err(true));
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

    /// Random tokens, many outside the grammar: where the verdicts differ,
    /// the token holds a value tagged with a difference that explains it.
    #[tokio::test]
    async fn verdicts_differ_from_jsonwebtoken_only_as_documented() {
        use Difference::*;
        const SAME: Option<Difference> = None;
        const TYPE: Option<Difference> = Some(Mistyped);
        let now = unix_now();
        let (past, future, soon) = (
            (now - 120).to_string(),
            (now + 600).to_string(),
            (now + 300).to_string(),
        );
        let (just_past, float_exp) = ((now - 5).to_string(), format!("{}.7", now + 300));
        let exp: &[(&str, _)] = &[
            (&soon, SAME),
            (&past, SAME),
            (&just_past, SAME),
            (&float_exp, SAME),
            ("\"300\"", SAME),
            ("null", SAME),
            ("-5", SAME),
            ("[]", SAME),
            ("[1]", SAME),
            ("{}", SAME),
            ("1e300", SAME),
            ("true", SAME),
            ("253402300800", Some(FarFuture)),
        ];
        let nbf: &[(&str, _)] = &[
            (&past, SAME),
            (&future, SAME),
            ("\"1\"", SAME),
            ("null", SAME),
            ("-1", SAME),
            ("{}", SAME),
            ("{\"a\":1}", SAME),
            ("1.5", SAME),
        ];
        let iat: &[(&str, _)] = &[
            (&past, SAME),
            (&future, SAME),
            ("\"x\"", TYPE),
            ("null", TYPE),
            ("-1", TYPE),
            ("[1]", TYPE),
        ];
        let iss: &[(&str, _)] = &[
            ("\"https://id.example.org\"", SAME),
            ("\"https:\\/\\/id.example.org\"", SAME),
            ("\"https://evil\"", SAME),
            (
                "[\"https://evil\",\"https://id.example.org\"]",
                Some(IssArray),
            ),
            ("[]", SAME),
            ("[\"https://id.example.org\",1]", SAME),
            ("null", SAME),
            ("5", SAME),
        ];
        let aud: &[(&str, _)] = &[
            ("\"matrix\"", SAME),
            ("\"other\"", SAME),
            ("\"nope\"", SAME),
            ("[\"nope\",\"matrix\"]", SAME),
            ("[\"nope\"]", SAME),
            ("[]", SAME),
            ("[\"matrix\",null]", SAME),
            ("null", SAME),
            ("{}", SAME),
        ];
        let sub: &[(&str, _)] = &[
            ("\"alice\"", SAME),
            ("\"@bob:other.org\"", SAME),
            ("\"not a user\"", SAME),
            ("5", TYPE),
            ("null", TYPE),
            ("[]", SAME),
            ("[\"alice\"]", SAME),
            ("{}", SAME),
            ("\"\"", SAME),
        ];
        let username: &[(&str, _)] = &[
            ("\"carol\"", SAME),
            ("7", TYPE),
            ("null", TYPE),
            ("[\"carol\"]", TYPE),
        ];
        let scope: &[(&str, _)] = &[
            (
                "\"urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ\"",
                SAME,
            ),
            ("\"openid\"", SAME),
            ("\"\"", SAME),
            ("null", SAME),
            ("5", SAME),
            ("[\"openid\"]", SAME),
            (
                "\"urn:matrix:client:device:AAAAAAAAAA urn:matrix:client:device:BBBBBBBBBB\"",
                SAME,
            ),
        ];
        let scp: &[(&str, _)] = &[
            ("[\"openid\",\"urn:matrix:client:api:*\"]", SAME),
            ("[\"a\",1,[\"b\"],{\"c\":1}]", TYPE),
            ("\"openid\"", TYPE),
            ("null", TYPE),
            ("[]", SAME),
        ];
        let device: &[(&str, _)] = &[
            ("\"DEV1\"", SAME),
            ("\"has space\"", SAME),
            ("5", TYPE),
            ("null", TYPE),
        ];
        let client: &[(&str, _)] = &[("\"c1\"", SAME), ("1", TYPE), ("null", TYPE)];
        let other: &[(&str, _)] = &[
            ("\"jti-1\"", SAME),
            ("1e400", Some(UnreadValue)),
            ("\"\\ud800\"", Some(UnreadValue)),
            ("[[[]]]", SAME),
            ("{\"nested\":{\"deep\":[1,2.5,-3,null,true]}}", SAME),
            ("\"\\ud83d\\ude00\"", SAME),
        ];
        /// Each value, with the difference it may show.
        type Values<'a> = &'a [(&'a str, Option<Difference>)];
        let fields: &[(&str, Values)] = &[
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
            (r#"{"alg":"HS256","typ":"at+jwt"}"#, hmac::HMAC_SHA256, SAME),
            (r#"{"alg":"HS256"}"#, hmac::HMAC_SHA256, SAME),
            (
                r#"{"typ":"JWT","alg":"HS512","extra":{"x":[1]}}"#,
                hmac::HMAC_SHA512,
                SAME,
            ),
            (r#"{"alg":"HS384","typ":"at+jwt"}"#, hmac::HMAC_SHA384, SAME),
            (r#"{"alg":"HS256","kid":5}"#, hmac::HMAC_SHA256, SAME),
            (
                r#"{"alg":"HS256","crit":["x"]}"#,
                hmac::HMAC_SHA256,
                Some(Crit),
            ),
            (
                r#"{"alg":"HS256","x5c":[1]}"#,
                hmac::HMAC_SHA256,
                Some(UnusedHeader),
            ),
        ];
        let validators = [
            validator(None, false),
            validator(None, true),
            validator(Some("preferred_username"), false),
            validator(Some("sub"), false),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut expired, mut refused_n, mut differed) = (0, 0, 0, 0);
        for case in 0..6000 {
            let (header, alg, header_tag) = headers[(rng.next() % headers.len() as u64) as usize];
            let mut tags: Vec<Difference> = header_tag.into_iter().collect();
            let mut entries = Vec::new();
            for (name, values) in fields {
                // Mostly present and well-formed, sometimes absent, rarely twice.
                let roll = rng.next() % 10;
                if roll == 0 {
                    continue;
                }
                let (value, tag) = if roll < 8 {
                    values[0]
                } else {
                    values[(rng.next() % values.len() as u64) as usize]
                };
                tags.extend(tag);
                entries.push(format!("\"{name}\":{value}"));
                if rng.next().is_multiple_of(60) {
                    let (again, tag) = values[(rng.next() % values.len() as u64) as usize];
                    tags.extend(tag);
                    tags.push(Repeated);
                    entries.push(format!("\"{name}\":{again}"));
                }
            }
            let payload = format!("{{{}}}", entries.join(","));
            let mut token = sign(header, &payload, alg);
            if case % 97 == 0 {
                token.push('A'); // a tampered signature
            }
            for v in &validators {
                let new = ours(&v.check(&token).await);
                let old = theirs(&reference::check(v, SECRET, &token));
                if new != old {
                    differed += 1;
                    // Both accepted: the identities must agree; else the
                    // direction must be one a tag on this token explains.
                    let loosened = matches!((&new, &old), (Ok(_), _) | (Err(true), Err(false)));
                    assert!(
                        new.is_err() || old.is_err(),
                        "{header}\n{payload}\n{new:?}\n{old:?}"
                    );
                    assert!(
                        tags.iter().any(|d| d.loosens() == loosened),
                        "header {header}\npayload {payload}\nuser_claim {:?} require_typ {}\nnew {new:?}\nold {old:?}\ntags {tags:?}",
                        v.user_claim,
                        v.require_typ,
                    );
                }
                match new {
                    Ok(_) => accepted += 1,
                    Err(true) => expired += 1,
                    Err(false) => refused_n += 1,
                }
            }
        }
        // The generator reaches every outcome, and differences too.
        assert!(
            accepted > 500 && expired > 20 && refused_n > 1000 && differed > 1000,
            "{accepted} {expired} {refused_n} {differed}"
        );
    }
}
