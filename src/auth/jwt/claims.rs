//! One pass over a JWT's two JSON parts, borrowing strings from the decoded
//! bytes: the header fields the validator uses and the claims it reads.
//!
//! This replaces `jsonwebtoken::decode`, which parses the header three times
//! and the claims twice (once into a `Map<String, Value>` that allocates every
//! key and value, once for its own checks). What is accepted is exactly what
//! that path accepted; the differential tests at the bottom hold the two side
//! by side:
//!
//! - Header: an object with a known `alg`; the registered fields typed as
//!   `jsonwebtoken::Header` types them (a `kid` that is a number is refused);
//!   each at most once; other fields any valid JSON (numbers in range, UTF-8).
//! - Claims: an object of valid JSON. `exp`, `nbf`, `sub`, `iss`, `aud` at
//!   most once, and `sub` neither an array nor an object (jsonwebtoken's own
//!   claim struct fails on those); any other claim repeated: the last wins.

use std::borrow::Cow;
use std::fmt;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The header fields the validator uses.
pub(crate) struct Header<'a> {
    pub alg: Algorithm,
    pub typ: Option<Cow<'a, str>>,
    pub kid: Option<Cow<'a, str>>,
}

impl<'a> Header<'a> {
    pub(crate) fn parse(json: &'a [u8]) -> Option<Header<'a>> {
        serde_json::from_slice::<HeaderSeed>(json).ok().map(|h| h.0)
    }
}

/// What a claim's JSON value was, as far as the checks care. Numbers keep
/// the form serde_json gave them (`serde_json::Value` sees the same).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    /// Only negative: non-negative integers are `U64`.
    I64(i64),
    F64(f64),
    /// An array: its string elements, `None` for any other element.
    List(Vec<Option<Cow<'a, str>>>),
    Null,
    Bool,
    Object,
}

/// jsonwebtoken's parse of a claim it checks: absent, not of the expected
/// type, or the value.
pub(crate) enum Spec<T> {
    Parsed(T),
    Failed,
    NotPresent,
}

/// `iss` or `aud`: one string or an array of strings.
pub(crate) enum OneOrMany<'r, 'a> {
    One(&'r str),
    Many(&'r [Option<Cow<'a, str>>]),
}

impl OneOrMany<'_, '_> {
    /// jsonwebtoken's test: the claim names at least one accepted value.
    pub(crate) fn any(&self, accepted: impl Fn(&str) -> bool) -> bool {
        match self {
            OneOrMany::One(s) => accepted(s),
            OneOrMany::Many(items) => items.iter().flatten().any(|s| accepted(s)),
        }
    }
}

impl<'a> Raw<'a> {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Raw::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A NumericDate as jsonwebtoken validates it: a non-negative integer,
    /// or a float in range, rounded.
    pub(crate) fn spec_date(raw: Option<&Self>) -> Spec<u64> {
        match raw {
            None => Spec::NotPresent,
            Some(Raw::U64(v)) => Spec::Parsed(*v),
            Some(Raw::F64(f)) if f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64 => {
                Spec::Parsed(f.round() as u64)
            }
            Some(_) => Spec::Failed,
        }
    }

    /// `iss` / `aud` as jsonwebtoken parses them: `null` is absent, an array
    /// must hold only strings.
    pub(crate) fn spec_one_or_many<'r>(raw: Option<&'r Self>) -> Spec<OneOrMany<'r, 'a>> {
        match raw {
            None | Some(Raw::Null) => Spec::NotPresent,
            Some(Raw::Str(s)) => Spec::Parsed(OneOrMany::One(s)),
            Some(Raw::List(items)) if items.iter().all(Option::is_some) => {
                Spec::Parsed(OneOrMany::Many(items))
            }
            Some(_) => Spec::Failed,
        }
    }
}

/// The claims the validator reads; everything else is checked for JSON
/// validity and dropped.
#[derive(Debug, Default)]
pub(crate) struct Claims<'a> {
    pub exp: Option<Raw<'a>>,
    pub nbf: Option<Raw<'a>>,
    pub iat: Option<Raw<'a>>,
    pub sub: Option<Raw<'a>>,
    pub iss: Option<Raw<'a>>,
    pub aud: Option<Raw<'a>>,
    pub username: Option<Raw<'a>>,
    pub scope: Option<Raw<'a>>,
    pub scp: Option<Raw<'a>>,
    pub device_id: Option<Raw<'a>>,
    pub client_id: Option<Raw<'a>>,
    pub azp: Option<Raw<'a>>,
    /// The configured user claim, when it is none of the above.
    user: Option<Raw<'a>>,
}

impl<'a> Claims<'a> {
    /// `user_claim` is the configured user claim (`[auth.jwt] user_claim`),
    /// kept when it is not one of the fixed fields.
    pub(crate) fn parse(json: &'a [u8], user_claim: Option<&str>) -> Option<Claims<'a>> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let claims = ClaimsSeed { user_claim }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(claims)
    }

    /// A claim by name: one of the fixed fields, else the configured user claim.
    pub(crate) fn get(&self, name: &str) -> Option<&Raw<'a>> {
        match ClaimField::of(name, None) {
            ClaimField::Fixed(f) => self.slot(f).as_ref(),
            _ => self.user.as_ref(),
        }
    }

    fn slot(&self, f: Fixed) -> &Option<Raw<'a>> {
        match f {
            Fixed::Exp => &self.exp,
            Fixed::Nbf => &self.nbf,
            Fixed::Iat => &self.iat,
            Fixed::Sub => &self.sub,
            Fixed::Iss => &self.iss,
            Fixed::Aud => &self.aud,
            Fixed::Username => &self.username,
            Fixed::Scope => &self.scope,
            Fixed::Scp => &self.scp,
            Fixed::DeviceId => &self.device_id,
            Fixed::ClientId => &self.client_id,
            Fixed::Azp => &self.azp,
        }
    }

    fn slot_mut(&mut self, f: Fixed) -> &mut Option<Raw<'a>> {
        match f {
            Fixed::Exp => &mut self.exp,
            Fixed::Nbf => &mut self.nbf,
            Fixed::Iat => &mut self.iat,
            Fixed::Sub => &mut self.sub,
            Fixed::Iss => &mut self.iss,
            Fixed::Aud => &mut self.aud,
            Fixed::Username => &mut self.username,
            Fixed::Scope => &mut self.scope,
            Fixed::Scp => &mut self.scp,
            Fixed::DeviceId => &mut self.device_id,
            Fixed::ClientId => &mut self.client_id,
            Fixed::Azp => &mut self.azp,
        }
    }
}

#[derive(Clone, Copy)]
enum Fixed {
    Exp,
    Nbf,
    Iat,
    Sub,
    Iss,
    Aud,
    Username,
    Scope,
    Scp,
    DeviceId,
    ClientId,
    Azp,
}

impl Fixed {
    /// jsonwebtoken reads these into a struct of its own, which refuses a
    /// repeated field.
    fn unique(self) -> bool {
        matches!(
            self,
            Fixed::Exp | Fixed::Nbf | Fixed::Sub | Fixed::Iss | Fixed::Aud
        )
    }
}

enum ClaimField {
    Fixed(Fixed),
    User,
    Other,
}

impl ClaimField {
    fn of(name: &str, user_claim: Option<&str>) -> ClaimField {
        let fixed = match name {
            "exp" => Fixed::Exp,
            "nbf" => Fixed::Nbf,
            "iat" => Fixed::Iat,
            "sub" => Fixed::Sub,
            "iss" => Fixed::Iss,
            "aud" => Fixed::Aud,
            "username" => Fixed::Username,
            "scope" => Fixed::Scope,
            "scp" => Fixed::Scp,
            "device_id" => Fixed::DeviceId,
            "client_id" => Fixed::ClientId,
            "azp" => Fixed::Azp,
            _ if user_claim == Some(name) => return ClaimField::User,
            _ => return ClaimField::Other,
        };
        ClaimField::Fixed(fixed)
    }
}

/// Classifies an object key without allocating, even when it has escapes.
struct KeySeed<F>(F);

impl<'de, T, F: FnOnce(&str) -> T> DeserializeSeed<'de> for KeySeed<F> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

impl<T, F: FnOnce(&str) -> T> Visitor<'_> for KeySeed<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.0)(v))
    }
}

struct ClaimsSeed<'u> {
    user_claim: Option<&'u str>,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Claims<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims<'de>, A::Error> {
        let user_claim = self.user_claim;
        let mut claims = Claims::default();
        while let Some(field) =
            map.next_key_seed(KeySeed(|k: &str| ClaimField::of(k, user_claim)))?
        {
            match field {
                ClaimField::Fixed(f) => {
                    let value: Raw<'de> = map.next_value()?;
                    let slot = claims.slot_mut(f);
                    if f.unique() && slot.is_some() {
                        return Err(de::Error::custom("repeated registered claim"));
                    }
                    if matches!(f, Fixed::Sub) && matches!(value, Raw::List(_) | Raw::Object) {
                        return Err(de::Error::custom("sub is an array or an object"));
                    }
                    *slot = Some(value);
                }
                ClaimField::User => claims.user = Some(map.next_value()?),
                ClaimField::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(claims)
    }
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw<'de>, E> {
        // As serde_json::Number::from(i64): only negatives are signed.
        Ok(u64::try_from(v).map_or(Raw::I64(v), Raw::U64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw<'de>, E> {
        Ok(Raw::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw<'de>, E> {
        Ok(Raw::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw<'de>, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(Element(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Raw::Object)
    }
}

/// An array element: its string, or `None` for any other (valid) value.
struct Element<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Element(match Raw::deserialize(d)? {
            Raw::Str(s) => Some(s),
            _ => None,
        }))
    }
}

/// Any valid JSON value, read as `serde_json::Value` would read it (numbers
/// in range, strings well-formed) and dropped. Unlike `IgnoredAny`, which
/// skips without those checks.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Skip, D::Error> {
        Skip::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// A string, borrowed when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// `jsonwebtoken::Header`'s fields.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderField {
    Alg,
    Typ,
    Kid,
    /// cty, jku, x5u, x5t, x5t#S256, url, nonce, enc, zip: strings.
    OtherString(u8),
    /// x5c, crit: arrays of strings.
    OtherStrings(u8),
    Jwk,
    Other,
}

impl HeaderField {
    fn of(name: &str) -> HeaderField {
        match name {
            "alg" => HeaderField::Alg,
            "typ" => HeaderField::Typ,
            "kid" => HeaderField::Kid,
            "cty" => HeaderField::OtherString(0),
            "jku" => HeaderField::OtherString(1),
            "x5u" => HeaderField::OtherString(2),
            "x5t" => HeaderField::OtherString(3),
            "x5t#S256" => HeaderField::OtherString(4),
            "url" => HeaderField::OtherString(5),
            "nonce" => HeaderField::OtherString(6),
            "enc" => HeaderField::OtherString(7),
            "zip" => HeaderField::OtherString(8),
            "x5c" => HeaderField::OtherStrings(9),
            "crit" => HeaderField::OtherStrings(10),
            "jwk" => HeaderField::Jwk,
            _ => HeaderField::Other,
        }
    }

    /// A bit per registered field, to refuse repeats as serde's derive does.
    fn bit(self) -> u32 {
        match self {
            HeaderField::Alg => 1 << 11,
            HeaderField::Typ => 1 << 12,
            HeaderField::Kid => 1 << 13,
            HeaderField::OtherString(i) | HeaderField::OtherStrings(i) => 1 << i,
            HeaderField::Jwk => 1 << 14,
            HeaderField::Other => 0,
        }
    }
}

struct HeaderSeed<'a>(Header<'a>);

impl<'de> Deserialize<'de> for HeaderSeed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = HeaderSeed<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JOSE header object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderSeed<'de>, A::Error> {
        let mut seen = 0u32;
        let mut alg = None;
        let mut typ = None;
        let mut kid = None;
        while let Some(field) = map.next_key_seed(KeySeed(HeaderField::of))? {
            if seen & field.bit() != 0 {
                return Err(de::Error::custom("repeated header field"));
            }
            seen |= field.bit();
            match field {
                HeaderField::Alg => alg = Some(map.next_value::<Algorithm>()?),
                HeaderField::Typ => typ = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                HeaderField::Kid => kid = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                HeaderField::OtherString(_) => {
                    map.next_value::<Option<Text<'de>>>()?;
                }
                HeaderField::OtherStrings(_) => {
                    map.next_value::<Option<Vec<Text<'de>>>>()?;
                }
                HeaderField::Jwk => {
                    map.next_value::<Option<Jwk>>()?;
                }
                HeaderField::Other => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        let alg = alg.ok_or_else(|| de::Error::missing_field("alg"))?;
        Ok(HeaderSeed(Header { alg, typ, kid }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    /// The old path: jsonwebtoken's header.
    fn old_header(json: &str) -> Option<(Algorithm, Option<String>, Option<String>)> {
        let h: jsonwebtoken::Header = serde_json::from_slice(json.as_bytes()).ok()?;
        Some((h.alg, h.typ, h.kid))
    }

    fn new_header(json: &str) -> Option<(Algorithm, Option<String>, Option<String>)> {
        let h = Header::parse(json.as_bytes())?;
        Some((
            h.alg,
            h.typ.map(|t| t.into_owned()),
            h.kid.map(|k| k.into_owned()),
        ))
    }

    #[test]
    fn headers_parse_as_jsonwebtoken_parses_them() {
        for json in [
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"RS256","typ":"at+jwt","kid":"k1"}"#,
            r#" { "alg" : "EdDSA" , "kid" : "a\/b\u0041" } "#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"rs256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"RS256","alg":"RS256"}"#,
            r#"{"alg":"RS256","kid":"a","kid":"b"}"#,
            r#"{"alg":"RS256","kid":5}"#,
            r#"{"alg":"RS256","kid":null,"typ":null}"#,
            r#"{"alg":"RS256","crit":["exp"]}"#,
            r#"{"alg":"RS256","crit":"exp"}"#,
            r#"{"alg":"RS256","x5c":[1]}"#,
            r#"{"alg":"RS256","x5t#S256":"abc","enc":"A128GCM","zip":"DEF"}"#,
            r#"{"alg":"RS256","zip":1}"#,
            r#"{"alg":"RS256","jwk":{"kty":"oct","k":"c2VjcmV0"}}"#,
            r#"{"alg":"RS256","jwk":{"kty":"nonsense"}}"#,
            r#"{"alg":"RS256","jwk":5}"#,
            r#"{"alg":"RS256","extra":{"deep":[1,2,{"x":null}]}}"#,
            r#"{"alg":"RS256","extra":1e400}"#,
            r#"{"alg":"RS256","extra":1,"extra":2}"#,
            r#"{"alg":"RS256"} x"#,
            r#"{"alg":"RS256",}"#,
            r#"["RS256"]"#,
            r#""RS256""#,
            "",
            "{}",
        ] {
            assert_eq!(old_header(json), new_header(json), "{json}");
        }
        let bad_utf8 = b"{\"alg\":\"RS256\",\"x\":\"\xff\"}";
        assert!(serde_json::from_slice::<jsonwebtoken::Header>(bad_utf8).is_err());
        assert!(Header::parse(bad_utf8).is_none());
    }

    #[test]
    fn claims_read_what_a_map_would_hold() {
        let json = r#"{"exp": 12, "nbf": 1.5, "iat": -3, "sub": "a\"b", "iss": "i",
            "aud": ["x", 1, "y"], "scope": "s t", "scp": null, "username": true,
            "device_id": {"k": 1}, "client_id": "c", "azp": "z", "extra": [[1]],
            "scope": "last wins", "custom": "u"}"#;
        let c = Claims::parse(json.as_bytes(), Some("custom")).unwrap();
        let map: Map<String, Value> = serde_json::from_str(json).unwrap();
        assert_eq!(c.exp, Some(Raw::U64(12)));
        assert_eq!(c.nbf, Some(Raw::F64(1.5)));
        assert_eq!(c.iat, Some(Raw::I64(-3)));
        assert_eq!(c.sub.as_ref().and_then(Raw::as_str), map["sub"].as_str());
        assert_eq!(
            c.aud,
            Some(Raw::List(vec![Some("x".into()), None, Some("y".into())]))
        );
        assert_eq!(c.scope.as_ref().and_then(Raw::as_str), Some("last wins"));
        assert_eq!(c.scp, Some(Raw::Null));
        assert_eq!(c.username, Some(Raw::Bool));
        assert_eq!(c.device_id, Some(Raw::Object));
        assert_eq!(c.get("custom").and_then(Raw::as_str), Some("u"));
        assert_eq!(c.get("client_id").and_then(Raw::as_str), Some("c"));
        assert!(Claims::parse(json.as_bytes(), None)
            .unwrap()
            .get("custom")
            .is_none());
    }

    /// What jsonwebtoken 11 refused while parsing the claims (before any check).
    fn old_claims_parse(json: &str) -> bool {
        use base64::Engine;
        use jsonwebtoken::{decode, DecodingKey, Header, Validation};
        // Sign the exact bytes, then decode with every check off.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&Header::new(Algorithm::HS256)).unwrap());
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let msg = format!("{header}.{payload}");
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"k");
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(aws_lc_rs::hmac::sign(&key, msg.as_bytes()));
        let mut v = Validation::new(Algorithm::HS256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        match decode::<Map<String, Value>>(
            format!("{msg}.{sig}"),
            &DecodingKey::from_secret(b"k"),
            &v,
        ) {
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), jsonwebtoken::errors::ErrorKind::Json(_)),
        }
    }

    #[test]
    fn claims_are_refused_where_jsonwebtoken_refused_them() {
        for json in [
            r#"{}"#,
            r#"{"exp":1,"exp":1}"#,
            r#"{"exp":null,"exp":1}"#,
            r#"{"nbf":1,"nbf":2}"#,
            r#"{"iss":"a","iss":"a"}"#,
            r#"{"aud":"a","aud":["a"]}"#,
            r#"{"sub":"a","sub":"a"}"#,
            r#"{"scope":"a","scope":"b"}"#,
            r#"{"jti":1,"jti":2}"#,
            r#"{"sub":[]}"#,
            r#"{"sub":["a"]}"#,
            r#"{"sub":{}}"#,
            r#"{"sub":5}"#,
            r#"{"sub":null}"#,
            r#"{"exp":"5"}"#,
            r#"{"exp":[]}"#,
            r#"{"nbf":{}}"#,
            r#"{"iat":[1]}"#,
            r#"{"scp":[["a"],{"b":1},"c"]}"#,
            r#"{"iss":5,"aud":{"a":1}}"#,
            r#"{"x":1e400}"#,
            r#"{"x":"\ud800"}"#,
            r#"{"x":"tab	inside"}"#,
            r#"{"x":1} trailing"#,
            r#"[1]"#,
            r#""s""#,
            r#"null"#,
            "",
        ] {
            let new = Claims::parse(json.as_bytes(), None).is_some();
            assert_eq!(old_claims_parse(json), new, "{json}");
        }
        // Not valid UTF-8.
        assert!(Claims::parse(b"{\"x\":\"\xff\"}", None).is_none());
    }
}
