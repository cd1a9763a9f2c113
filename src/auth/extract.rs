//! Where a request carries its access token, read the way the homeserver
//! reads it: the token the gateway checks must be the only credential the
//! homeserver can find (docs/auth.md, "One token per request").
//!
//! Synapse (`synapse/api/auth/base.py`, `get_access_token_from_request`)
//! takes `Authorization: Bearer`, or else the first `access_token` in
//! Twisted's `request.args`. Twisted (`twisted/web/http.py`, `parse_qs`)
//! splits the query on `&` *and* `;`, reads `+` as a space and
//! percent-decodes names as well as values, so `access%5Ftoken` is
//! `access_token` to it. Other homeservers split differently (Go's
//! `url.ParseQuery` refuses `;`, `form_urlencoded` knows only `&`). So a
//! query token is accepted in the one form every parser reads alike —
//! spelled `access_token`, once, between `&`s — and any other spelling that
//! Twisted would still find is refused rather than guessed about.
//!
//! Twisted also merges the fields of a `POST` form body into the same
//! arguments; [`merges_body_fields`] finds the requests it would do that for.

use std::borrow::Cow;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::HeaderMap;
use memchr::memchr;

const QUERY_NAME: &str = "access_token";

/// The token as the request carried it.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Absent,
    Token(Cow<'a, str>),
}

/// Why no single token can be taken from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractError {
    TooManyHeaders,
    InvalidHeader,
    /// Spec v1.11 / MSC4126: header and query together are refused.
    Mixed,
    QueryNotAllowed,
    /// `access_token` written with percent-encoding in its name.
    EncodedName,
    /// More than one `access_token` parameter.
    Repeated,
    /// A query token in a query that also uses `;` as a separator.
    Semicolon,
    /// `access_token` without a value, or one that is not UTF-8.
    UnreadableQueryToken,
}

impl ExtractError {
    pub fn message(self) -> &'static str {
        match self {
            ExtractError::TooManyHeaders => "Too many Authorization headers.",
            ExtractError::InvalidHeader => "Invalid Authorization header.",
            ExtractError::Mixed => {
                "Mixing Authorization headers and access_token query parameters."
            }
            ExtractError::QueryNotAllowed => {
                "The access_token query parameter is not accepted here; use an Authorization header."
            }
            ExtractError::EncodedName => {
                "The access_token parameter name must not be percent-encoded."
            }
            ExtractError::Repeated => "The access_token query parameter appears more than once.",
            ExtractError::Semicolon => {
                "A query carrying access_token must not use ';' as a separator."
            }
            ExtractError::UnreadableQueryToken => {
                "The access_token query parameter is empty or not UTF-8."
            }
        }
    }

    /// Synapse refuses these itself, with 401 `M_MISSING_TOKEN`; the others
    /// are spellings it would accept and another parser might not, refused
    /// with 400 by the gateway alone.
    pub fn synapse_refuses_too(self) -> bool {
        matches!(
            self,
            ExtractError::TooManyHeaders
                | ExtractError::InvalidHeader
                | ExtractError::Mixed
                | ExtractError::QueryNotAllowed
        )
    }
}

pub fn credential<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    allow_query: bool,
) -> Result<Credential<'a>, ExtractError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(ExtractError::TooManyHeaders);
    }
    let from_query = match query {
        Some(query) => query_token(query)?,
        None => None,
    };
    match (header, from_query) {
        (Some(_), Some(_)) => Err(ExtractError::Mixed),
        (Some(value), None) => {
            let value = value.to_str().map_err(|_| ExtractError::InvalidHeader)?;
            // RFC 6750 §2.1, read as strictly as Synapse: "Bearer" and one space.
            match value.strip_prefix("Bearer ") {
                Some(token) if !token.is_empty() && memchr(b' ', token.as_bytes()).is_none() => {
                    Ok(Credential::Token(Cow::Borrowed(token)))
                }
                _ => Err(ExtractError::InvalidHeader),
            }
        }
        (None, Some(_)) if !allow_query => Err(ExtractError::QueryNotAllowed),
        (None, Some(token)) => Ok(Credential::Token(token)),
        (None, None) => Ok(Credential::Absent),
    }
}

/// The query's token: `None` when Twisted would find none, an error when it
/// would find one in a form that not every parser reads alike.
fn query_token(query: &str) -> Result<Option<Cow<'_, str>>, ExtractError> {
    let mut found = None;
    // Twisted's separators, both of them.
    for pair in query.split(['&', ';']) {
        let (name, value) = match pair.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (pair, None),
        };
        if !names_the_token(name) {
            continue;
        }
        if found.is_some() {
            return Err(ExtractError::Repeated);
        }
        if name != QUERY_NAME {
            return Err(ExtractError::EncodedName);
        }
        found = Some(decode_value(value.unwrap_or_default())?);
    }
    if found.is_some() && memchr(b';', query.as_bytes()).is_some() {
        return Err(ExtractError::Semicolon);
    }
    Ok(found)
}

/// Whether Twisted would read `name` as `access_token`: `+` is a space,
/// then percent-decoding (invalid escapes stay as they are).
fn names_the_token(name: &str) -> bool {
    if memchr(b'%', name.as_bytes()).is_none() {
        return name == QUERY_NAME;
    }
    let spaced = name.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).eq(QUERY_NAME.bytes())
}

fn decode_value(value: &str) -> Result<Cow<'_, str>, ExtractError> {
    if value.is_empty() {
        return Err(ExtractError::UnreadableQueryToken);
    }
    let spaced = value.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|v| Cow::Owned(v.into_owned()))
        .map_err(|_| ExtractError::UnreadableQueryToken)
}

/// Refuses a body the homeserver could read a credential from. Twisted
/// merges the fields of a `POST` form body into the arguments it looks for
/// `access_token` in (`twisted/web/http.py`, `Request.requestReceived`), and
/// finds the media type with Python's e-mail header parser, which also
/// decodes RFC 2047 encoded words and skips comments: a `Content-Type` of
/// `=?utf-8?b?…?=` can name a form. So only one `Content-Type` is accepted,
/// its media type must be a plain RFC 9110 `type/subtype`, and it must not
/// name a form anywhere. Matrix APIs take JSON, so every method is checked.
pub fn body_refusal(headers: &HeaderMap) -> Option<&'static str> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let value = values.next()?.as_bytes();
    if values.next().is_some() {
        return Some("Only one Content-Type field is accepted.");
    }
    let forms = [&b"x-www-form-urlencoded"[..], b"multipart/form-data"];
    if forms.iter().any(|form| {
        value
            .windows(form.len())
            .any(|w| w.eq_ignore_ascii_case(form))
    }) {
        return Some(
            "Form-encoded bodies are not accepted: Matrix APIs take JSON, and the homeserver would read an access_token from the form.",
        );
    }
    let media_type = value
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let plain = match media_type.iter().position(|b| *b == b'/') {
        None => media_type.is_empty(),
        Some(slash) => {
            let (kind, subtype) = (&media_type[..slash], &media_type[slash + 1..]);
            is_token(kind) && is_token(subtype)
        }
    };
    (!plain).then_some("Content-Type must be a plain media type (type/subtype, then parameters).")
}

/// RFC 9110 §5.6.2: `token = 1*tchar`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn token(t: &str) -> Credential<'_> {
        Credential::Token(Cow::Borrowed(t))
    }

    fn from_query(q: &str) -> Result<Credential<'static>, ExtractError> {
        let h = HeaderMap::new();
        credential(&h, Some(q), true).map(|c| match c {
            Credential::Absent => Credential::Absent,
            Credential::Token(t) => Credential::Token(Cow::Owned(t.into_owned())),
        })
    }

    #[test]
    fn bearer_header() {
        let h = headers(&["Bearer abc"]);
        assert_eq!(credential(&h, None, true), Ok(token("abc")));
    }

    #[test]
    fn query_parameter_is_decoded() {
        assert_eq!(
            from_query("since=s1&access_token=a%2Bb+c"),
            Ok(Credential::Token(Cow::Owned("a+b c".into())))
        );
        let h = headers(&[]);
        assert_eq!(
            credential(&h, Some("access_token=x"), false),
            Err(ExtractError::QueryNotAllowed)
        );
    }

    #[test]
    fn header_and_query_together_are_refused() {
        let h = headers(&["Bearer abc"]);
        assert_eq!(
            credential(&h, Some("access_token=abc"), true),
            Err(ExtractError::Mixed)
        );
        // Also when the query spells the name so only Twisted reads it.
        assert!(credential(&h, Some("access%5Ftoken=abc"), true).is_err());
    }

    #[test]
    fn spellings_twisted_decodes_are_refused() {
        for q in [
            "access%5Ftoken=x",
            "access%5ftoken=x",
            "%61ccess_token=x",
            "%61%63%63%65%73%73%5F%74%6F%6B%65%6E=x",
        ] {
            assert_eq!(from_query(q), Err(ExtractError::EncodedName), "{q}");
        }
        // Not `access_token` to Twisted either: plain parameters.
        for q in [
            "access+token=x",
            "Access_token=x",
            "access_token_x=1",
            "access%5Gtoken=1",
        ] {
            assert_eq!(from_query(q), Ok(Credential::Absent), "{q}");
        }
    }

    #[test]
    fn repeats_and_semicolons_are_refused() {
        assert_eq!(
            from_query("access_token=a&access_token=b"),
            Err(ExtractError::Repeated)
        );
        assert_eq!(
            from_query("access_token=a;access_token=b"),
            Err(ExtractError::Repeated)
        );
        assert_eq!(
            from_query("access_token=a&x=1;y=2"),
            Err(ExtractError::Semicolon)
        );
        assert_eq!(
            from_query("x=1;access_token=a"),
            Err(ExtractError::Semicolon)
        );
        // `;` in a query without a token is none of our business.
        assert_eq!(from_query("x=1;y=2"), Ok(Credential::Absent));
    }

    #[test]
    fn empty_or_undecodable_values_are_refused() {
        for q in [
            "access_token=",
            "access_token",
            "access_token=%FF",
            "x&access_token",
        ] {
            assert_eq!(
                from_query(q),
                Err(ExtractError::UnreadableQueryToken),
                "{q}"
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in ["bearer abc", "Basic abc", "Bearer", "Bearer ", "Bearer a b"] {
            assert_eq!(
                credential(&headers(&[bad]), None, true),
                Err(ExtractError::InvalidHeader),
                "{bad}"
            );
        }
        assert_eq!(
            credential(&headers(&["Bearer a", "Bearer b"]), None, true),
            Err(ExtractError::TooManyHeaders)
        );
    }

    #[test]
    fn no_token_at_all() {
        assert_eq!(
            credential(&headers(&[]), Some("access_token_x=1"), true),
            Ok(Credential::Absent)
        );
    }

    #[test]
    fn form_bodies_are_found_in_any_spelling() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for ct in values {
                h.append(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            }
            body_refusal(&h)
        };
        for ct in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            " application/x-www-form-urlencoded ;",
            "multipart/form-data; boundary=x",
            "(comment)application/x-www-form-urlencoded",
            // RFC 2047 encoded words, which Python's header parser decodes.
            "=?us-ascii?q?application/x-www-form-urlencode=64?=",
            "=?utf-8?b?YXBwbGljYXRpb24veC13d3ctZm9ybS11cmxlbmNvZGVk?=",
            "application/=?utf-8?q?json?=",
            "\"application/json\"",
            "application",
        ] {
            assert!(with(&[ct]).is_some(), "{ct}");
        }
        assert!(with(&["application/json", "application/json"]).is_some());
        for ct in [
            "application/json",
            "image/png",
            "image/svg+xml",
            "text/plain; charset=\"utf-8\"",
            "",
        ] {
            assert_eq!(with(&[ct]), None, "{ct}");
        }
        assert_eq!(body_refusal(&HeaderMap::new()), None);
    }
}
