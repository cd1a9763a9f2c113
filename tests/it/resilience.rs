//! Slow, absent and hostile peers: long-polls survive, failures become
//! Matrix errors, slow clients are cut off without hurting others, and a
//! shutdown lets in-flight requests finish.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use http::Request;

use crate::support::*;

/// An upstream that answers after `delay`, like a `/sync` long-poll.
async fn slow_stub(delay: Duration) -> Stub {
    Stub::homeserver(move |_| Reply::json(200, r#"{"next_batch":"s2"}"#).after(delay)).await
}

#[tokio::test]
async fn long_poll_within_the_response_timeout_is_not_cut_off() {
    // The default is above five minutes (config tests); scaled down here,
    // the wait still longer than the header read timeout (1 s).
    let upstream = slow_stub(Duration::from_millis(1500)).await;
    let gate = GateBuilder::new()
        .upstream("response_header_timeout_s = 3")
        .start(upstream.addr)
        .await;
    let started = Instant::now();
    let (parts, body) = get(
        gate.addr,
        "/_matrix/client/v3/sync?timeout=30000",
        Some(FULL_TOKEN),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(json(&body)["next_batch"], "s2");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn upstream_too_slow_is_504() {
    let upstream = slow_stub(Duration::from_secs(30)).await;
    let gate = GateBuilder::new()
        .upstream("response_header_timeout_s = 1")
        .start(upstream.addr)
        .await;
    let (parts, body) = get(gate.addr, "/_matrix/client/v3/sync", Some(FULL_TOKEN)).await;
    assert_eq!(parts.status, 504);
    assert_eq!(parts.headers["access-control-allow-origin"], "*");
    assert_eq!(json(&body)["errcode"], "M_UNKNOWN");
}

#[tokio::test]
async fn upstream_down_is_502() {
    let nothing_there = free_port();
    let gate = Gate::start(nothing_there).await;
    let (parts, body) = get(
        gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(FULL_TOKEN),
    )
    .await;
    assert_eq!(parts.status, 502);
    assert_eq!(json(&body)["errcode"], "M_UNKNOWN");
    let (ready, _) = get(gate.admin, "/readyz", None).await;
    assert_eq!(
        ready.status, 503,
        "not ready while the upstream is unreachable"
    );
}

fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 or 400 before closing is fine
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn slowloris_is_disconnected_while_others_are_served() {
    let upstream = ok_stub().await;
    let gate = Gate::start(upstream).await; // header_read_timeout_ms = 1000
    let started = Instant::now();
    let mut partial = std::net::TcpStream::connect(gate.addr).unwrap();
    partial
        .write_all(b"GET /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut silent = std::net::TcpStream::connect(gate.addr).unwrap();

    // Others are served meanwhile.
    let (parts, _) = get(
        gate.addr,
        "/_matrix/client/v3/account/whoami",
        Some(FULL_TOKEN),
    )
    .await;
    assert_eq!(parts.status, 200);

    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            closed_within(&mut partial, Duration::from_secs(5)),
            closed_within(&mut silent, Duration::from_secs(5)),
        )
    })
    .await
    .unwrap();
    assert!(
        a,
        "a client that never finishes its headers is disconnected"
    );
    assert!(b, "a client that sends nothing is disconnected");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let upstream = ok_stub().await;
    let gate = GateBuilder::new()
        .server("idle_timeout_s = 1")
        .start(upstream)
        .await;
    let mut stream = std::net::TcpStream::connect(gate.addr).unwrap();
    stream
        .write_all(
            format!("GET /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL_TOKEN}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let started = Instant::now();
    let closed =
        tokio::task::spawn_blocking(move || closed_within(&mut stream, Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(closed, "an idle keep-alive connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let upstream = slow_stub(Duration::from_millis(1500)).await;
    let mut gate = GateBuilder::new().binary().start(upstream.addr).await;
    let addr = gate.addr;
    let in_flight =
        tokio::spawn(async move { get(addr, "/_matrix/client/v3/sync", Some(FULL_TOKEN)).await });
    upstream.wait_calls(1).await;
    gate.signal("TERM");
    // Within the upstream's 1.5 s, while the request is still in flight.
    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(1), refused)
            .await
            .is_ok(),
        "new connections are refused once shutdown starts"
    );
    assert!(!in_flight.is_finished());
    let (parts, body) = in_flight.await.unwrap();
    assert_eq!(parts.status, 200, "the in-flight request completed");
    assert_eq!(json(&body)["next_batch"], "s2");
    let status = gate
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown() {
    let upstream = slow_stub(Duration::from_secs(60)).await;
    let mut gate = GateBuilder::new()
        .binary()
        .server("drain_timeout_s = 1")
        .start(upstream.addr)
        .await;
    let addr = gate.addr;
    let _stuck = tokio::spawn(async move {
        let req = Request::get("/_matrix/client/v3/sync")
            .header("authorization", format!("Bearer {FULL_TOKEN}"))
            .body(full(""))
            .unwrap();
        let _ = send(addr, req).await;
    });
    upstream.wait_calls(1).await;
    let started = Instant::now();
    gate.signal("TERM");
    let status = gate
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let upstream = Stub::homeserver(|req| {
        let reply = Reply::json(200, "{}");
        if req.path == "/_matrix/client/v3/sync" {
            reply.after(Duration::from_millis(1500))
        } else {
            reply
        }
    })
    .await;
    let gate = GateBuilder::new()
        .server("max_connections = 1")
        .start(upstream.addr)
        .await;
    let addr = gate.addr;
    let started = Instant::now();
    let slow =
        tokio::spawn(async move { get(addr, "/_matrix/client/v3/sync", Some(FULL_TOKEN)).await });
    upstream.wait_calls(1).await;
    let (parts, _) = get(addr, "/_matrix/client/v3/account/whoami", Some(FULL_TOKEN)).await;
    assert_eq!(parts.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the second connection was served only once the first closed"
    );
    assert_eq!(slow.await.unwrap().0.status, 200);
}
