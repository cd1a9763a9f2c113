//! Where a request carries its access token. Mirrors Synapse's reading
//! (`get_access_token_from_request`) so a client sees the same refusals with
//! and without the gateway.

use std::borrow::Cow;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use memchr::memchr;

/// The token as the request carried it.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Absent,
    Token(Cow<'a, str>),
}

/// Every variant answers 401 `M_MISSING_TOKEN`, as in Synapse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractError {
    TooManyHeaders,
    InvalidHeader,
    /// Spec v1.11 / MSC4126: header and query together are refused.
    Mixed,
    QueryNotAllowed,
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
        }
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
    let from_query = query.and_then(query_token);
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

/// The first `access_token` parameter, percent-decoded.
fn query_token(query: &str) -> Option<Cow<'_, str>> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("access_token=")?;
        let value = value.replace('+', " ");
        percent_encoding::percent_decode_str(&value)
            .decode_utf8()
            .ok()
            .map(|v| Cow::Owned(v.into_owned()))
    })
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

    #[test]
    fn bearer_header() {
        let h = headers(&["Bearer abc"]);
        assert_eq!(credential(&h, None, true), Ok(token("abc")));
    }

    #[test]
    fn query_parameter_is_decoded() {
        let h = headers(&[]);
        assert_eq!(
            credential(&h, Some("since=s1&access_token=a%2Bb"), true),
            Ok(Credential::Token(Cow::Owned("a+b".into())))
        );
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
}
