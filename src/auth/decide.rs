//! Which validator judges a token, from its shape and the config alone. One
//! token goes to exactly one validator: trying them all in turn would let a
//! token refused by one be accepted by a laxer one, and would multiply the
//! calls an attacker can cause. docs/auth.md repeats this order.

use std::cell::RefCell;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use memchr::memchr;

use super::mas::{MasToken, MasTokenKind};

/// The validators the config enabled.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Enabled {
    pub jwt: bool,
    pub introspection: bool,
    pub legacy: bool,
}

/// Where a (non-static) token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    Jwt,
    Introspection,
    Legacy,
    /// Refused offline; the reason is for debug logs.
    Refuse(&'static str),
}

pub(crate) fn route(token: &str, enabled: Enabled) -> Route {
    if MasTokenKind::of(token).is_some() {
        return match token.parse::<MasToken>() {
            Err(e) => Route::Refuse(e.reason()),
            Ok(t) if t.kind.is_refresh() => Route::Refuse("refresh token used as access token"),
            Ok(_) if enabled.introspection => Route::Introspection,
            Ok(_) => Route::Refuse("MAS token but [auth.introspection] is disabled"),
        };
    }
    // Synapse's refresh tokens are no more bearer credentials than MAS's.
    if token.starts_with("syr_") {
        return Route::Refuse("refresh token used as access token");
    }
    if looks_like_jwt(token) {
        return if enabled.jwt {
            Route::Jwt
        } else if enabled.introspection {
            Route::Introspection
        } else if enabled.legacy {
            Route::Legacy
        } else {
            Route::Refuse("JWT but no validator is enabled for it")
        };
    }
    if enabled.legacy {
        Route::Legacy
    } else if enabled.introspection {
        Route::Introspection
    } else {
        Route::Refuse("opaque token but neither [auth.legacy] nor [auth.introspection] is enabled")
    }
}

/// RFC 7515 §7.1 compact form: three base64url parts, the first a JSON
/// object naming an `alg`.
fn looks_like_jwt(token: &str) -> bool {
    // Two dots, no third. (memchr: a token is long, and this runs on every
    // request.)
    let bytes = token.as_bytes();
    let Some(first) = memchr(b'.', bytes) else {
        return false;
    };
    let Some(second) = memchr(b'.', &bytes[first + 1..]).map(|at| first + 1 + at) else {
        return false;
    };
    if memchr(b'.', &bytes[second + 1..]).is_some() {
        return false;
    }
    let header = &token[..first];
    // This runs on every request, cache hits included, and an issuer signs
    // all its tokens with the same few headers: the last header that passed
    // is remembered (per thread, so without a lock) and not decoded again.
    thread_local! {
        static LAST_PASSED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    // (Empty until a header passed: an empty first part must not match it.)
    if !header.is_empty() && LAST_PASSED.with_borrow(|last| last.as_slice() == header.as_bytes()) {
        return true;
    }
    if !is_jwt_header(header) {
        return false;
    }
    LAST_PASSED.with_borrow_mut(|last| {
        last.clear();
        last.extend_from_slice(header.as_bytes());
    });
    true
}

fn is_jwt_header(header: &str) -> bool {
    // A header of a few hundred bytes is plenty; refuse to decode a huge one.
    let mut buf = [0u8; 1536];
    if header.len() > 2048 {
        return false;
    }
    let Ok(len) = URL_SAFE_NO_PAD.decode_slice(header, &mut buf) else {
        return false;
    };
    let json = &buf[..len];
    // Check the shape without building a map.
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "alg")]
        _alg: serde::de::IgnoredAny,
    }
    serde_json::from_slice::<Probe>(json).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAS_OK: &str = "mct_16tugBE5Ta9LIWoSJaAEHHq2g3fx8S_alcBB4";
    const ALL: Enabled = Enabled {
        jwt: true,
        introspection: true,
        legacy: true,
    };

    fn jwt() -> String {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#);
        format!("{h}.e30.c2ln")
    }

    #[test]
    fn mas_tokens_go_to_introspection_only_when_checksummed() {
        assert_eq!(route(MAS_OK, ALL), Route::Introspection);
        let bad = MAS_OK.replace("alcBB4", "alcBB5");
        assert!(matches!(route(&bad, ALL), Route::Refuse(_)));
        let no_introspection = Enabled {
            introspection: false,
            ..ALL
        };
        assert!(matches!(route(MAS_OK, no_introspection), Route::Refuse(_)));
    }

    #[test]
    fn refresh_tokens_are_refused_offline() {
        // Well formed, checksum right, but a refresh token.
        let token = MasTokenKind::RefreshToken.token_with("16tugBE5Ta9LIWoSJaAEHHq2g3fx8S");
        assert_eq!(
            route(&token, ALL),
            Route::Refuse("refresh token used as access token")
        );
        assert_eq!(
            route("syr_abc_def_123", ALL),
            Route::Refuse("refresh token used as access token")
        );
    }

    #[test]
    fn jwts_prefer_local_validation_then_introspection_then_legacy() {
        let t = jwt();
        assert_eq!(route(&t, ALL), Route::Jwt);
        let e = Enabled { jwt: false, ..ALL };
        assert_eq!(route(&t, e), Route::Introspection);
        let e = Enabled {
            jwt: false,
            introspection: false,
            ..ALL
        };
        assert_eq!(route(&t, e), Route::Legacy);
        assert!(matches!(route(&t, Enabled::default()), Route::Refuse(_)));
    }

    #[test]
    fn opaque_tokens_prefer_legacy_then_introspection() {
        assert_eq!(route("syt_YWxpY2U_abc_123", ALL), Route::Legacy);
        assert_eq!(
            route("a.b.c", ALL),
            Route::Legacy,
            "not base64 JSON: opaque"
        );
        let e = Enabled {
            legacy: false,
            ..ALL
        };
        assert_eq!(route("syt_YWxpY2U_abc_123", e), Route::Introspection);
        assert!(matches!(
            route("whatever", Enabled::default()),
            Route::Refuse(_)
        ));
    }

    #[test]
    fn a_remembered_header_decides_only_for_itself() {
        let t = jwt();
        let not_json = format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(b"alg"));
        for _ in 0..2 {
            assert_eq!(route(&t, ALL), Route::Jwt);
            assert_eq!(route(&not_json, ALL), Route::Legacy);
            assert_eq!(route("a.b.c", ALL), Route::Legacy);
        }
        // The same header with the wrong number of parts is not a JWT.
        assert_eq!(route(&format!("{t}.x"), ALL), Route::Legacy);
        // Nor is an empty header, on a thread that has remembered nothing.
        let fresh = std::thread::spawn(|| route(".e30.c2ln", ALL))
            .join()
            .unwrap();
        assert_eq!(fresh, Route::Legacy);
    }
}
