//! A JWT's two JSON parts, read into derived structs that borrow their
//! strings from the decoded bytes (a string is copied only when it has
//! escapes).
//!
//! The grammar is the RFCs', not what a library happened to accept; it is
//! written out as a table in docs/auth.md ("JWT grammar"), and the tests in
//! `jwt.rs` list where it differs from jsonwebtoken's. In short: every
//! member the gateway reads has one JSON type, and a present member of
//! another type (`null` included) refuses the token; members it does not read
//! may hold any JSON value; a name used twice refuses the token; `crit`
//! refuses it too, since no extension is understood here.
//!
//! Why serde's derive rather than a parser of our own: `benches/tokens.rs`
//! (`jwt_parse`) measured both, and the hand-written one (one pass, ≈ 0.63 µs
//! of CPU for the bench token) saved 0.15–0.4 µs against this (two passes,
//! ≈ 0.8 µs) of an uncached RS256 validation's ≈ 21 µs: far from the 3 µs
//! that would have paid for its ~700 lines.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use jsonwebtoken::Algorithm;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The JOSE header (RFC 7515 §4) as far as the validator reads it.
#[derive(Deserialize)]
pub(crate) struct Header<'a> {
    /// RFC 7515 §4.1.1: required; jsonwebtoken's names, never `none`.
    pub alg: Algorithm,
    /// RFC 7515 §4.1.9: a string.
    #[serde(borrow, default, deserialize_with = "present")]
    pub typ: Option<Text<'a>>,
    /// RFC 7515 §4.1.4: a string.
    #[serde(borrow, default, deserialize_with = "present")]
    pub kid: Option<Text<'a>>,
    /// RFC 7515 §4.1.11: names extensions that must be understood; we
    /// understand none, so its presence (any value) refuses the token.
    #[serde(default, deserialize_with = "present")]
    crit: Option<IgnoredAny>,
}

impl<'a> Header<'a> {
    pub(crate) fn parse(json: &'a [u8]) -> Option<Header<'a>> {
        let json = utf8(json)?;
        let header: Header<'a> = serde_json::from_str(json).ok()?;
        distinct_members(json, None)?;
        header.crit.is_none().then_some(header)
    }
}

/// The claims the validator reads (RFC 7519 §4.1, RFC 9068 §2.2).
#[derive(Deserialize)]
pub(crate) struct Claims<'a> {
    /// RFC 7519 §4.1.4.
    #[serde(default, deserialize_with = "present")]
    pub exp: Option<NumericDate>,
    /// RFC 7519 §4.1.5.
    #[serde(default, deserialize_with = "present")]
    pub nbf: Option<NumericDate>,
    /// RFC 7519 §4.1.6.
    #[serde(default, deserialize_with = "present")]
    pub iat: Option<NumericDate>,
    /// RFC 7519 §4.1.1: a StringOrURI, that is one string.
    #[serde(borrow, default, deserialize_with = "present")]
    pub iss: Option<Text<'a>>,
    /// RFC 7519 §4.1.2.
    #[serde(borrow, default, deserialize_with = "present")]
    pub sub: Option<Text<'a>>,
    /// RFC 7519 §4.1.3.
    #[serde(borrow, default, deserialize_with = "present")]
    pub aud: Option<Audience<'a>>,
    /// RFC 7662 §2.2's name for the user; read before `sub` when present.
    #[serde(borrow, default, deserialize_with = "present")]
    pub username: Option<Text<'a>>,
    /// RFC 9068 §2.2.3, RFC 8693 §4.2: space-separated scopes.
    #[serde(borrow, default, deserialize_with = "present")]
    pub scope: Option<Text<'a>>,
    /// The array form some issuers use instead of `scope`.
    #[serde(borrow, default, deserialize_with = "present")]
    pub scp: Option<Vec<Text<'a>>>,
    /// MSC2967's device; else the device scope.
    #[serde(borrow, default, deserialize_with = "present")]
    pub device_id: Option<Text<'a>>,
    /// RFC 9068 §2.2, RFC 8693 §4.3.
    #[serde(borrow, default, deserialize_with = "present")]
    pub client_id: Option<Text<'a>>,
    /// OpenID Connect Core §2: the authorized party, read when `client_id` is absent.
    #[serde(borrow, default, deserialize_with = "present")]
    pub azp: Option<Text<'a>>,
    /// The configured user claim (`[auth.jwt] user_claim`), whatever its name.
    #[serde(skip)]
    pub user: Option<Text<'a>>,
}

impl<'a> Claims<'a> {
    /// `user_claim` is the configured user claim, read into `user`.
    pub(crate) fn parse(json: &'a [u8], user_claim: Option<&str>) -> Option<Claims<'a>> {
        let json = utf8(json)?;
        let mut claims: Claims<'a> = serde_json::from_str(json).ok()?;
        claims.user = distinct_members(json, user_claim)?;
        Some(claims)
    }
}

/// RFC 7519 §7.2 step 10 and RFC 7515 §5.2 step 3: the whole part is UTF-8,
/// members we skip included (serde_json does not look inside those).
fn utf8(json: &[u8]) -> Option<&str> {
    std::str::from_utf8(json).ok()
}

/// A JSON string, borrowed from the input unless it has escapes.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// RFC 7519 §2 NumericDate: seconds since the epoch, a JSON number. A
/// fraction is dropped (the checks and `leeway_s` work in whole seconds, and
/// dropping it can only make `exp` earlier). Negative values and values past
/// 9999-12-31T23:59:59Z are refused: the latter keeps every clock sum in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NumericDate(pub u64);

impl NumericDate {
    /// The last second RFC 3339 §5.6 can write (year 9999).
    const MAX: u64 = 253_402_300_799;
}

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a number of seconds from 0 to {}", NumericDate::MAX)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                if v <= NumericDate::MAX {
                    Ok(NumericDate(v))
                } else {
                    Err(E::invalid_value(de::Unexpected::Unsigned(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                Err(E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                // serde_json never yields a NaN or an infinity.
                if (0.0..NumericDate::MAX as f64 + 1.0).contains(&v) {
                    Ok(NumericDate(v as u64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_u64(V)
    }
}

/// RFC 7519 §4.1.3: one StringOrURI or an array of them.
pub(crate) enum Audience<'a> {
    One(Text<'a>),
    Many(Vec<Text<'a>>),
}

impl Audience<'_> {
    /// The token names at least one accepted audience.
    pub(crate) fn any(&self, accepted: impl Fn(&str) -> bool) -> bool {
        match self {
            Audience::One(a) => accepted(a),
            Audience::Many(items) => items.iter().any(|a| accepted(a)),
        }
    }
}

impl<'de> Deserialize<'de> for Audience<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Audience<'de>, E> {
                Ok(Audience::One(Text(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Audience<'de>, E> {
                Ok(Audience::One(Text(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Audience<'de>, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Audience::Many)
            }
        }
        d.deserialize_any(V)
    }
}

/// A member that, when present, holds a value of its type: `null` is not
/// "absent" (RFC 7519 and RFC 7515 give every member we read a type that
/// excludes it). With `#[serde(default)]`, absent stays `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// RFC 7519 §4 and RFC 7515 §4: a member name used twice refuses the token
/// (both allow "reject or keep the last"; we reject). The derived structs
/// refuse repeats of the members they read; this pass covers every name.
/// It also reads the member named `pick` (a string, when present).
fn distinct_members<'a>(json: &'a str, pick: Option<&str>) -> Option<Option<Text<'a>>> {
    let mut de = serde_json::Deserializer::from_str(json);
    Members { pick }.deserialize(&mut de).ok()
}

struct Members<'n> {
    pick: Option<&'n str>,
}

impl<'de> DeserializeSeed<'de> for Members<'_> {
    type Value = Option<Text<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = Option<Text<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut names: Vec<Text<'de>> = Vec::with_capacity(16);
        let mut picked = None;
        while let Some(name) = map.next_key::<Text<'de>>()? {
            if self.pick == Some(&*name) {
                picked = Some(map.next_value::<Text<'de>>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            names.push(name);
        }
        // Sorted, so a header of many members costs n log n, not n².
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if names.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(de::Error::custom("a member name is used twice"));
        }
        Ok(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> Option<(Algorithm, Option<String>, Option<String>)> {
        let h = Header::parse(json.as_bytes())?;
        Some((
            h.alg,
            h.typ.map(|t| t.to_string()),
            h.kid.map(|k| k.to_string()),
        ))
    }

    #[test]
    fn headers_name_an_algorithm_and_type_what_we_read() {
        let rs = |typ: Option<&str>, kid: Option<&str>| {
            Some((Algorithm::RS256, typ.map(Into::into), kid.map(Into::into)))
        };
        assert_eq!(header(r#"{"alg":"RS256"}"#), rs(None, None));
        assert_eq!(
            header(r#" { "alg" : "RS256" , "typ":"at+jwt", "kid" : "a\/b\u0041" } "#),
            rs(Some("at+jwt"), Some("a/bA"))
        );
        // Members we do not read may hold anything, including registered
        // ones we do not use (RFC 7515 §4).
        assert_eq!(
            header(r#"{"alg":"RS256","x5c":[1],"jwk":5,"zip":1,"e":1e400}"#),
            rs(None, None)
        );
        for refused in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"rs256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"RS256","kid":5}"#,
            r#"{"alg":"RS256","kid":null}"#,
            r#"{"alg":"RS256","typ":null}"#,
            r#"{"alg":"RS256","alg":"RS256"}"#,
            r#"{"alg":"RS256","x":1,"x":1}"#,
            r#"{"alg":"RS256","\u0078":1,"x":1}"#,
            r#"{"alg":"RS256","crit":["exp"]}"#,
            r#"{"alg":"RS256","crit":null}"#,
            r#"{"alg":"RS256"} x"#,
            r#"["RS256"]"#,
            "",
        ] {
            assert_eq!(header(refused), None, "{refused}");
        }
        assert!(Header::parse(b"{\"alg\":\"RS256\",\"x\":\"\xff\"}").is_none());
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let json = br#"{"alg":"RS256","kid":"plain","typ":"at\u002bjwt"}"#;
        let h = Header::parse(json).unwrap();
        assert!(matches!(h.kid.unwrap().0, Cow::Borrowed("plain")));
        assert!(matches!(h.typ.unwrap().0, Cow::Owned(t) if t == "at+jwt"));
    }

    fn claims(json: &str) -> Option<Claims<'_>> {
        Claims::parse(json.as_bytes(), Some("preferred_username"))
    }

    #[test]
    fn claims_read_into_their_types() {
        let c = claims(
            r#"{"exp": 12, "nbf": 1.9, "iat": 0, "sub": "a\"b", "iss": "i",
            "aud": ["x", "y"], "scope": "s t", "scp": ["u"], "username": "n",
            "device_id": "D", "client_id": "c", "azp": "z", "jti": [[1e400]],
            "other": "\ud800", "preferred_username": "p"}"#,
        )
        .unwrap();
        assert_eq!(c.exp, Some(NumericDate(12)));
        assert_eq!(c.nbf, Some(NumericDate(1)));
        assert_eq!(c.iat, Some(NumericDate(0)));
        assert_eq!(c.sub.as_deref(), Some("a\"b"));
        assert!(c.aud.unwrap().any(|a| a == "y"));
        assert_eq!(c.scp.unwrap()[0].0, "u");
        assert_eq!(c.user.as_deref(), Some("p"));
        assert!(claims("{}").unwrap().user.is_none());
        let single = claims(r#"{"aud":"x"}"#).unwrap().aud.unwrap();
        assert!(single.any(|a| a == "x") && !single.any(|a| a == "y"));
    }

    #[test]
    fn numeric_dates() {
        let date = |v: &str| claims(&format!(r#"{{"exp":{v}}}"#)).map(|c| c.exp);
        assert_eq!(date("0"), Some(Some(NumericDate(0))));
        assert_eq!(date("12.7"), Some(Some(NumericDate(12))));
        assert_eq!(date("1e3"), Some(Some(NumericDate(1000))));
        assert_eq!(
            date("253402300799"),
            Some(Some(NumericDate(NumericDate::MAX)))
        );
        assert_eq!(
            date("253402300799.5"),
            Some(Some(NumericDate(NumericDate::MAX)))
        );
        for refused in [
            "253402300800",
            "18446744073709551615",
            "1e300",
            "-1",
            "-0.5",
            "\"12\"",
            "null",
            "[]",
        ] {
            assert_eq!(date(refused), None, "{refused}");
        }
    }

    #[test]
    fn claims_outside_the_grammar_are_refused() {
        for refused in [
            r#"{"iss":["i"]}"#,
            r#"{"iss":null}"#,
            r#"{"aud":["a",1]}"#,
            r#"{"aud":{}}"#,
            r#"{"sub":5}"#,
            r#"{"sub":null}"#,
            r#"{"username":["n"]}"#,
            r#"{"scope":["a"]}"#,
            r#"{"scp":"a"}"#,
            r#"{"scp":["a",1]}"#,
            r#"{"client_id":1}"#,
            r#"{"preferred_username":7}"#,
            r#"{"preferred_username":null}"#,
            r#"{"exp":1,"exp":1}"#,
            r#"{"jti":1,"jti":2}"#,
            r#"{"jti":1,"j\u0074i":1}"#,
            r#"{"preferred_username":"a","preferred_username":"a"}"#,
            r#"{"x":1} trailing"#,
            r#"[1]"#,
            r#"null"#,
            "",
        ] {
            assert!(claims(refused).is_none(), "{refused}");
        }
        assert!(Claims::parse(b"{\"x\":\"\xff\"}", None).is_none());
    }
}
