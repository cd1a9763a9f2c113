//! The gateway as a proxy: what reaches the upstream, what comes back, and
//! what is refused before anything is forwarded.

use std::time::Duration;

use http::Request;

use crate::support::*;

/// A homeserver that records every client request and answers with a
/// recognisable response.
async fn recording_stub() -> Stub {
    Stub::homeserver(|_| {
        Reply::json(201, r#"{"event_id":"$abc"}"#)
            .header("x-upstream", "yes")
            .header("connection", "x-hop")
            .header("x-hop", "drop-me")
            .header("keep-alive", "timeout=5")
    })
    .await
}

#[tokio::test]
async fn allowed_request_reaches_upstream_intact() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await;
    let path =
        "/_matrix/client/v3/rooms/%21room%3Aexample.org/send/m.room.message/t%2F1?ts=1&x=%20y";
    let req = Request::put(path)
        .header("host", "matrix.example.org")
        .header("authorization", format!("Bearer {FULL_TOKEN}"))
        .header("content-type", "application/json")
        .header("x-custom", "kept")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("te", "trailers")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .body(full(r#"{"body":"hello"}"#))
        .unwrap();
    let (parts, body) = send(gate.addr, req).await;

    assert_eq!(parts.status, 201);
    assert_eq!(parts.headers["x-upstream"], "yes");
    assert_eq!(parts.headers["content-type"], "application/json");
    assert!(
        !parts.headers.contains_key("x-hop"),
        "response hop-by-hop field named in Connection"
    );
    assert!(!parts.headers.contains_key("keep-alive"));
    assert_eq!(&body[..], br#"{"event_id":"$abc"}"#);

    let seen = upstream.requests();
    let req = &seen[0];
    assert_eq!(req.method, "PUT");
    assert_eq!(
        req.uri.to_string(),
        path,
        "raw path and query forwarded byte for byte"
    );
    assert_eq!(&req.body[..], br#"{"body":"hello"}"#);
    assert_eq!(req.headers["host"], "matrix.example.org");
    assert_eq!(req.headers["x-custom"], "kept");
    assert_eq!(req.headers["authorization"], format!("Bearer {FULL_TOKEN}"));
    assert!(!req.headers.contains_key("x-secret"));
    assert!(!req.headers.contains_key("te"));
    assert_eq!(
        req.headers["x-forwarded-for"], "127.0.0.1",
        "client-sent value replaced"
    );
    assert_eq!(req.headers["x-forwarded-proto"], "http");
    assert_eq!(req.headers["x-forwarded-host"], "matrix.example.org");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_visible_ascii_is_not_repeated_as_forwarded_host() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await;
    let mut request =
        b"GET /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: matrix.\xe9xample.org\r\n"
            .to_vec();
    request.extend(format!("Authorization: Bearer {FULL_TOKEN}\r\n").as_bytes());
    request.extend(b"X-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n");
    let response = raw(gate.addr, &request, Duration::from_secs(5));
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let seen = upstream.requests();
    assert!(!seen[0].headers.contains_key("x-forwarded-host"));
}

#[tokio::test]
async fn trusted_proxy_forwarding_headers_are_kept() {
    let upstream = recording_stub().await;
    let gate = GateBuilder::new()
        .server(r#"trusted_proxies = ["127.0.0.0/8"]"#)
        .start(upstream.addr)
        .await;
    let req = Request::get("/_matrix/client/v3/account/whoami")
        .header("host", "gw.internal")
        .header("authorization", format!("Bearer {FULL_TOKEN}"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "matrix.example.org")
        .body(full(""))
        .unwrap();
    send(gate.addr, req).await;
    let seen = upstream.requests();
    let headers = &seen[0].headers;
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["x-forwarded-host"], "matrix.example.org");
}

#[tokio::test]
async fn configured_host_replaces_the_clients() {
    let upstream = recording_stub().await;
    let gate = GateBuilder::new()
        .upstream(r#"host = "synapse.internal""#)
        .start(upstream.addr)
        .await;
    get(
        gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(FULL_TOKEN),
    )
    .await;
    assert_eq!(upstream.requests()[0].headers["host"], "synapse.internal");
}

fn assert_matrix_error(parts: &http::response::Parts, body: &[u8], status: u16, errcode: &str) {
    assert_eq!(parts.status, status, "{}", String::from_utf8_lossy(body));
    assert_eq!(parts.headers["content-type"], "application/json");
    assert_eq!(parts.headers["access-control-allow-origin"], "*");
    assert!(parts.headers.contains_key("access-control-allow-headers"));
    let value = json(body);
    assert_eq!(value["errcode"], errcode);
    assert!(value["error"].is_string());
}

#[tokio::test]
async fn token_refusals_are_matrix_errors_with_cors() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await;
    let path = "/_matrix/client/v3/account/whoami";

    let (parts, body) = get(gate.addr, path, None).await;
    assert_matrix_error(&parts, &body, 401, "M_MISSING_TOKEN");

    let (parts, body) = get(gate.addr, path, Some("not-a-known-token")).await;
    assert_matrix_error(&parts, &body, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(json(&body)["soft_logout"], false);

    let both = Request::get(format!("{path}?access_token={FULL_TOKEN}"))
        .header("authorization", format!("Bearer {FULL_TOKEN}"))
        .body(full(""))
        .unwrap();
    let (parts, body) = send(gate.addr, both).await;
    assert_matrix_error(&parts, &body, 401, "M_MISSING_TOKEN");

    let (parts, body) = get(gate.addr, path, Some(DEVICE_ONLY_TOKEN)).await;
    assert_matrix_error(&parts, &body, 403, "M_FORBIDDEN");
    let challenge = parts.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_scope\""),
        "{challenge}"
    );

    assert!(
        upstream.requests().is_empty(),
        "no refused request was forwarded"
    );

    // The deprecated query parameter alone still works, as in Synapse.
    let (parts, _) = get(
        gate.addr,
        &format!("{path}?access_token={FULL_TOKEN}"),
        None,
    )
    .await;
    assert_eq!(parts.status, 201);
}

#[tokio::test]
async fn cors_preflight_passes_without_token() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await;
    let req = Request::options("/_matrix/client/v3/account/whoami")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .body(full(""))
        .unwrap();
    let (parts, _) = send(gate.addr, req).await;
    assert_eq!(parts.status, 201, "answered by the upstream");
    assert_eq!(upstream.requests()[0].method, "OPTIONS");
}

#[tokio::test]
async fn ambiguous_targets_are_refused_before_forwarding() {
    let upstream = recording_stub().await;
    let gate = GateBuilder::new().binary().start(upstream.addr).await;
    let targets: &[&[u8]] = &[
        b"/_matrix/client/v3/../../admin",
        b"/_matrix/client/v3/%2e%2e/%2E%2E/_synapse/admin/v1/users",
        b"/_matrix//client/v3/account/whoami",
        b"/_matrix/client/v3/rooms/a%00b/state",
        b"/_matrix/client/v3/rooms/a\\b/state",
        b"/_matrix/client/v3/rooms/a%5Cb/state",
        b"/_matrix/client/v3/rooms/%C3%28/state",
        b"/_matrix/client/v3/rooms/%zz/state",
        b"http://matrix.example.org/_matrix/client/v3/account/whoami",
    ];
    for target in targets {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL_TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let response = raw(gate.addr, &request, Duration::from_secs(5));
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{}: {response}",
            String::from_utf8_lossy(target)
        );
        if !target.contains(&b'\\') {
            // Refused by the gateway itself, as a Matrix error.
            assert!(response.contains("\"errcode\""), "{response}");
        }
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn http2_prior_knowledge_on_cleartext() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await;
    let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://matrix.example.org/_matrix/client/v3/account/whoami")
        .header("authorization", format!("Bearer {FULL_TOKEN}"))
        .body(full(""))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 201);
    let seen = upstream.requests();
    assert_eq!(
        seen[0].headers["host"], "matrix.example.org",
        "authority becomes Host upstream"
    );
    assert_eq!(seen[0].uri, "/_matrix/client/v3/account/whoami");
}

/// Heads hyper refuses before the gateway sees a request still answer with
/// a Matrix error a client can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_the_parser_refuses_get_a_matrix_error() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await;
    for head in [
        "Content-Length: 1\r\nContent-Length: 2",
        "Transfer-Encoding: gzip",
        "Bad Name: x",
    ] {
        let request =
            format!("POST /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n");
        let response = raw(gate.addr, request.as_bytes(), Duration::from_secs(5));
        assert!(response.starts_with("HTTP/1.1 400"), "{head}: {response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(
            json(body.as_bytes())["errcode"],
            "M_UNRECOGNIZED",
            "{head}: {response}"
        );
    }
    assert!(upstream.requests().is_empty());
}

/// On a kept-alive connection too: a refused head after a request that was
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_after_a_served_request_gets_a_matrix_error() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await;
    let request = format!(
        "GET /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {FULL_TOKEN}\r\n\r\n\
         POST /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: x\r\n\
         Content-Length: 1\r\nContent-Length: 2\r\n\r\n"
    );
    let response = raw(gate.addr, request.as_bytes(), Duration::from_secs(5));
    let (served, refused) = response
        .split_once("HTTP/1.1 400")
        .unwrap_or_else(|| panic!("{response}"));
    assert!(served.starts_with("HTTP/1.1 201"), "{response}");
    let body = refused.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(
        json(body.as_bytes())["errcode"],
        "M_UNRECOGNIZED",
        "{response}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

/// A body that looks like hyper's own refusal is a body: only a head hyper
/// refused on that connection lets the gateway rewrite one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shaped_like_a_refusal_passes_unchanged() {
    const LOOKALIKE: &str = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    let upstream = stub(|_req| async {
        http::Response::builder()
            .header("content-type", "application/octet-stream")
            .body(full(LOOKALIKE))
            .unwrap()
    })
    .await;
    let gate = Gate::start(upstream).await;
    let request = format!(
        "GET /_matrix/client/v1/media/download/example.org/abc HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {FULL_TOKEN}\r\n\r\n\
         GET /_matrix/client/v1/media/download/example.org/abc HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {FULL_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let response = raw(gate.addr, request.as_bytes(), Duration::from_secs(5));
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 2, "{response}");
    assert_eq!(response.matches(LOOKALIKE).count(), 2, "{response}");
    assert!(!response.contains("M_UNRECOGNIZED"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_requests_still_pass() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await;
    // Keep-alive: a first request whose body ends without a line break, then
    // a chunked one on the same connection.
    let request = format!(
        "PUT /_matrix/client/v3/rooms/%21r%3Ax/send/m.room.message/1 HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {FULL_TOKEN}\r\nContent-Length: 7\r\n\r\n{{\"a\":1}}\
         PUT /_matrix/client/v3/rooms/%21r%3Ax/send/m.room.message/2 HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {FULL_TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n"
    );
    let response = raw(gate.addr, request.as_bytes(), Duration::from_secs(5));
    assert_eq!(response.matches("HTTP/1.1 201").count(), 2, "{response}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(&seen[1].body[..], b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let upstream = recording_stub().await;
    let gate = Gate::start(upstream.addr).await; // max_header_bytes = 64 KiB
    for pad in [70_000, 200_000] {
        let request = format!(
            "GET /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {FULL_TOKEN}\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(pad)
        );
        let response = raw(gate.addr, request.as_bytes(), Duration::from_secs(5));
        assert!(
            response.starts_with("HTTP/1.1 431"),
            "{pad}: {}",
            &response[..response.len().min(200)]
        );
    }
    assert!(upstream.requests().is_empty());
}
