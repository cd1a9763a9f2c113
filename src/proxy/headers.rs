//! Header hygiene between client and upstream: what belongs to one hop stays
//! on it, and forwarding headers say what the gateway saw, not what a client
//! claims.

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::uri::Authority;
use http::HeaderMap;

/// RFC 9110 §7.6.1, plus the proxy-only fields of RFC 9110 §11.7;
/// `Connection` first.
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::PROXY_AUTHORIZATION,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Fields the gateway reads before forwarding: a `Connection` header that
/// names one would have the gateway act on a field the homeserver never
/// sees (`Authorization`), or frame and route by one it drops.
static GUARDED: [HeaderName; 10] = [
    http::header::AUTHORIZATION,
    HOST,
    http::header::CONTENT_TYPE,
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
];

/// The first field the gateway acts on that `Connection` names, if any.
pub fn connection_names_guarded(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|name| {
            let name = name.trim();
            GUARDED
                .iter()
                .find(|guarded| guarded.as_str().eq_ignore_ascii_case(name))
                .map(HeaderName::as_str)
        })
}

/// Removes hop-by-hop fields, including those the `Connection` field names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are present (usually none in a
    // request, `Connection` in a response): cheaper than a hashed lookup
    // for each of them.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    if present[0] {
        // Values are cheap views of the message's buffer, and names are
        // looked up without building a `HeaderName`: nothing is allocated
        // unless the field is repeated.
        let mut values = headers.get_all(CONNECTION).iter().cloned();
        let first = values.next();
        let rest: Vec<HeaderValue> = values.collect();
        for value in first.iter().chain(&rest) {
            let Ok(value) = value.to_str() else { continue };
            for name in value.split(',') {
                headers.remove(name.trim());
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
}

/// The size of a request's header section as it was sent (names, values,
/// `: ` and CRLF). hyper's buffer limit is approximate: a head can pass it by
/// up to a read's worth of bytes, so `max_header_bytes` is enforced here.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// How the client reached the gateway.
pub struct ClientView<'a> {
    /// The peer's address.
    pub peer: &'a HeaderValue,
    /// The peer is a proxy the operator trusts to report the client.
    pub trusted: bool,
    pub proto: &'static str,
    /// The authority the client asked for (`Host`, or `:authority` in HTTP/2).
    pub host: Option<HeaderValue>,
}

/// Sets `X-Forwarded-{For,Proto,Host}`. Values a client sent are kept only
/// from a trusted proxy (Oathkeeper GHSA-vhr5-ggp3-qq85 trusted them anyway).
pub fn set_forwarded(headers: &mut HeaderMap, client: ClientView<'_>) {
    let peer = client.peer.clone();
    if client.trusted {
        let chain = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        let value = if chain.is_empty() {
            peer
        } else {
            let peer_text = peer.to_str().unwrap_or_default();
            HeaderValue::try_from(format!("{chain}, {peer_text}")).unwrap_or(peer)
        };
        headers.insert(&X_FORWARDED_FOR, value);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(host) = client.host {
                headers.insert(&X_FORWARDED_HOST, host);
            }
        }
    } else {
        headers.insert(&X_FORWARDED_FOR, peer);
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
        match client.host {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        headers.remove(http::header::FORWARDED);
        headers.remove(&X_REAL_IP);
    }
}

/// HTTP/2 requests carry the authority in the URI, not in `Host`; the
/// HTTP/1.1 upstream needs the header.
pub fn ensure_host(headers: &mut HeaderMap, authority: Option<&Authority>) {
    if headers.contains_key(HOST) {
        return;
    }
    if let Some(value) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        headers.insert(HOST, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("authorization", "Bearer t"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn every_connection_field_counts_and_plain_requests_keep_everything() {
        let mut h = map(&[
            ("connection", "close"),
            ("x-a", "1"),
            ("connection", " X-B ,x-c"),
            ("x-b", "2"),
            ("x-c", "3"),
            ("transfer-encoding", "chunked"),
            ("x-d", "4"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["x-a", "x-d"]);

        let plain = map(&[("authorization", "Bearer t"), ("accept", "*/*")]);
        let mut h = plain.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, plain);
    }

    #[test]
    fn connection_may_not_name_what_the_gateway_reads() {
        for value in [
            "Authorization",
            "close, host",
            " X-Forwarded-For ",
            "content-length",
        ] {
            let h = map(&[("connection", value)]);
            assert!(connection_names_guarded(&h).is_some(), "{value}");
        }
        let h = map(&[
            ("connection", "keep-alive"),
            ("connection", "authorization"),
        ]);
        assert_eq!(connection_names_guarded(&h), Some("authorization"));
        let h = map(&[("connection", "keep-alive, upgrade, x-custom")]);
        assert_eq!(connection_names_guarded(&h), None);
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        let view = ClientView {
            peer: &HeaderValue::from_static("10.1.1.1"),
            trusted: false,
            proto: "http",
            host: Some(HeaderValue::from_static("matrix.example.org")),
        };
        set_forwarded(&mut h, view);
        assert_eq!(h["x-forwarded-for"], "10.1.1.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "matrix.example.org");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn trusted_proxy_chain_is_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let view = ClientView {
            peer: &HeaderValue::from_static("10.1.1.1"),
            trusted: true,
            proto: "http",
            host: Some(HeaderValue::from_static("matrix.example.org")),
        };
        set_forwarded(&mut h, view);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.1.1.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "matrix.example.org");
    }
}
