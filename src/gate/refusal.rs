//! Refusals as Matrix clients expect them: a JSON body with `errcode` and
//! `error`, and CORS headers so that a web client can read it (and so refresh
//! its token instead of failing blind).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use serde_json::json;

use crate::canonical::TargetError;
use crate::proxy::body::GateBody;

/// Every way the gateway answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadTarget(TargetError),
    HeadersTooLarge,
    MissingToken(&'static str),
    /// A token spelled so that another parser could read it differently.
    AmbiguousToken(&'static str),
    /// A request the homeserver could read a credential from that the
    /// gateway did not check, or that hides a field the gateway acted on.
    HiddenCredential(&'static str),
    UnknownToken {
        soft_logout: bool,
    },
    InsufficientScope {
        required: String,
    },
    NoRoute,
    ProviderUnavailable,
    UpstreamUnreachable,
    UpstreamTimeout,
    RateLimited {
        retry_after_s: u64,
    },
}

/// The `decision` label of the requests metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Allowed,
    Denied,
    Unauthenticated,
    InvalidToken,
    BadRequest,
    ProviderError,
    UpstreamError,
    RateLimited,
}

impl Disposition {
    pub const ALL: [Disposition; 8] = [
        Disposition::Allowed,
        Disposition::Denied,
        Disposition::Unauthenticated,
        Disposition::InvalidToken,
        Disposition::BadRequest,
        Disposition::ProviderError,
        Disposition::UpstreamError,
        Disposition::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Allowed => "allowed",
            Disposition::Denied => "denied",
            Disposition::Unauthenticated => "unauthenticated",
            Disposition::InvalidToken => "invalid_token",
            Disposition::BadRequest => "bad_request",
            Disposition::ProviderError => "provider_error",
            Disposition::UpstreamError => "upstream_error",
            Disposition::RateLimited => "rate_limited",
        }
    }
}

impl Refusal {
    pub fn decision(&self) -> Disposition {
        match self {
            Refusal::BadTarget(_)
            | Refusal::HeadersTooLarge
            | Refusal::AmbiguousToken(_)
            | Refusal::HiddenCredential(_) => Disposition::BadRequest,
            Refusal::MissingToken(_) => Disposition::Unauthenticated,
            Refusal::UnknownToken { .. } => Disposition::InvalidToken,
            Refusal::InsufficientScope { .. } | Refusal::NoRoute => Disposition::Denied,
            Refusal::ProviderUnavailable => Disposition::ProviderError,
            Refusal::UpstreamUnreachable | Refusal::UpstreamTimeout => Disposition::UpstreamError,
            Refusal::RateLimited { .. } => Disposition::RateLimited,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadTarget(_) | Refusal::AmbiguousToken(_) | Refusal::HiddenCredential(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::MissingToken(_) | Refusal::UnknownToken { .. } => StatusCode::UNAUTHORIZED,
            Refusal::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::ProviderUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            Refusal::BadTarget(e) => {
                json!({"errcode": "M_UNRECOGNIZED", "error": format!("Bad request target: {e}")})
            }
            Refusal::HeadersTooLarge => {
                json!({"errcode": "M_TOO_LARGE", "error": "Request header fields too large"})
            }
            Refusal::MissingToken(msg) | Refusal::AmbiguousToken(msg) => {
                json!({"errcode": "M_MISSING_TOKEN", "error": msg})
            }
            Refusal::HiddenCredential(msg) => json!({"errcode": "M_UNRECOGNIZED", "error": msg}),
            Refusal::UnknownToken { soft_logout } => json!({
                "errcode": "M_UNKNOWN_TOKEN",
                "error": "Invalid access token passed.",
                "soft_logout": soft_logout,
            }),
            Refusal::InsufficientScope { .. } => {
                json!({"errcode": "M_FORBIDDEN", "error": "Insufficient scope"})
            }
            Refusal::NoRoute => {
                json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
            }
            Refusal::ProviderUnavailable => {
                json!({"errcode": "M_UNKNOWN", "error": "Unable to validate the access token"})
            }
            Refusal::UpstreamUnreachable => {
                json!({"errcode": "M_UNKNOWN", "error": "The homeserver could not be reached"})
            }
            Refusal::UpstreamTimeout => {
                json!({"errcode": "M_UNKNOWN", "error": "The homeserver did not answer in time"})
            }
            Refusal::RateLimited { retry_after_s } => json!({
                "errcode": "M_LIMIT_EXCEEDED",
                "error": "Too many requests with invalid tokens",
                "retry_after_ms": retry_after_s * 1000,
            }),
        }
    }

    pub fn into_response(self) -> Response<GateBody> {
        let body = serde_json::to_vec(&self.body()).expect("JSON values serialize");
        let mut response = Response::new(GateBody::full(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        cors(headers);
        match &self {
            // RFC 6750 §3.1.
            Refusal::InsufficientScope { required } => {
                let challenge =
                    format!("Bearer error=\"insufficient_scope\", scope=\"{required}\"");
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Refusal::RateLimited { retry_after_s } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
        }
        response
    }
}

/// hyper answers a request head it cannot parse by itself, before the
/// gateway sees a request: a bare `400`, `414` or `431` with
/// `content-length: 0`, then it closes the connection. Given the bytes hyper
/// writes, this is the same refusal with a Matrix error body, or `None` for
/// anything else. A response the gateway forwards always carries other
/// fields (at least a `Content-Type` or the homeserver's own), so it is
/// never taken for one.
pub fn matrix_parser_refusal(written: &[u8]) -> Option<Vec<u8>> {
    // Every write on the connection passes here: a prefix test settles
    // bodies and most responses.
    if !written.starts_with(b"HTTP/1.1 4") || written.len() > 256 {
        return None;
    }
    let mut fields = [httparse::EMPTY_HEADER; 4];
    let mut head = httparse::Response::new(&mut fields);
    let Ok(httparse::Status::Complete(len)) = head.parse(written) else {
        return None;
    };
    if len != written.len() || head.version != Some(1) {
        return None;
    }
    let (errcode, error) = match head.code? {
        400 => (
            "M_UNRECOGNIZED",
            "Bad request: the request head could not be parsed",
        ),
        414 => ("M_TOO_LARGE", "Request target too long"),
        431 => ("M_TOO_LARGE", "Request header fields too large"),
        _ => return None,
    };
    let mut bodiless = false;
    for field in head.headers.iter() {
        match field.name.to_ascii_lowercase().as_str() {
            "content-length" => bodiless = field.value == b"0",
            "date" | "connection" => {}
            _ => return None,
        }
    }
    if !bodiless {
        return None;
    }
    let body = json!({"errcode": errcode, "error": error}).to_string();
    let status = StatusCode::from_u16(head.code?).ok()?;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         access-control-allow-origin: *\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    );
    out.push_str(&body);
    Some(out.into_bytes())
}

/// The CORS headers Synapse sends, plus `WWW-Authenticate` exposed so a web
/// client can see which scope it lacks.
pub fn cors(headers: &mut HeaderMap) {
    use http::header::*;
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization, Date"),
    );
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Synapse-Trace-Id, Server, WWW-Authenticate"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_refusals_get_a_matrix_body() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(matrix_parser_refusal(hyper).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["errcode"], "M_UNRECOGNIZED");
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));

        let too_large =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(matrix_parser_refusal(too_large).unwrap())
            .unwrap()
            .contains("M_TOO_LARGE"));
    }

    #[test]
    fn forwarded_responses_are_left_alone() {
        for written in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Req",
        ] {
            assert_eq!(matrix_parser_refusal(written), None, "{:?}", String::from_utf8_lossy(written));
        }
    }

    #[test]
    fn all_decisions_are_listed_in_declaration_order() {
        // Stops compiling when a variant is added: add it to `ALL` too.
        fn listed(decision: Disposition) -> bool {
            match decision {
                Disposition::Allowed
                | Disposition::Denied
                | Disposition::Unauthenticated
                | Disposition::InvalidToken
                | Disposition::BadRequest
                | Disposition::ProviderError
                | Disposition::UpstreamError
                | Disposition::RateLimited => Disposition::ALL.contains(&decision),
            }
        }
        for (i, decision) in Disposition::ALL.into_iter().enumerate() {
            assert_eq!(decision as usize, i, "{decision:?}");
            assert!(listed(decision));
        }
    }
}
