use super::*;

/// A keep-alive stream: a GET, a POST with a body that looks like a head, a
/// chunked PUT with extensions and a trailer, a request with both lengths.
const STREAM: &[&[u8]] = &[
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 41\r\n\r\nGET /fake HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
    b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"POST /d HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
];

const EXPECTED: &[(&str, &str, Framed)] = &[
    ("GET", "/a", Framed::Single),
    ("POST", "/b", Framed::Single),
    ("PUT", "/c", Framed::Single),
    ("POST", "/d", Framed::Twice),
];

fn fed_in_pieces(size: usize) -> Framing {
    let stream = STREAM.concat();
    let framing = Framing::default();
    for piece in stream.chunks(size) {
        framing.record(piece);
    }
    framing
}

#[test]
fn verdicts_come_in_order_however_the_input_is_split() {
    for size in (1..=64).chain([1000, 100_000]) {
        let framing = fed_in_pieces(size);
        for (method, target, verdict) in EXPECTED {
            assert_eq!(
                framing.dispatched(method, target),
                *verdict,
                "{size}: {target}"
            );
        }
        {
            let state = framing.state.lock().unwrap();
            assert_eq!(state.phase, Phase::Head, "{size}");
            assert_eq!(state.pending.capacity(), 0, "nothing held between requests");
        }
        assert_eq!(framing.dispatched("GET", "/a"), Framed::Unknown, "{size}");
    }
}

#[test]
fn a_head_that_is_not_the_next_one_is_unknown() {
    let framing = fed_in_pieces(7);
    assert_eq!(framing.dispatched("GET", "/other"), Framed::Unknown);
    // The tracker and hyper disagree: nothing it says is trusted after,
    // not even a head that would have matched.
    assert_eq!(framing.dispatched("POST", "/b"), Framed::Unknown);
    framing.record(b"GET /later HTTP/1.1\r\n\r\n");
    assert_eq!(framing.dispatched("GET", "/later"), Framed::Unknown);
}

#[test]
fn a_look_alike_line_in_a_header_value_is_not_a_head() {
    let framing = Framing::default();
    framing.record(
        b"POST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX: POST /b HTTP/1.1\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(framing.dispatched("POST", "/b"), Framed::Twice);
}

#[test]
fn a_stream_that_no_longer_parses_gives_no_verdicts() {
    for stream in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        b"GET /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /b HTTP/1.1\r\n\r\n",
        b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxyz\r\nGET /b HTTP/1.1\r\n\r\n",
    ] {
        let framing = Framing::default();
        framing.record(stream);
        let _ = framing.dispatched("GET", "/a");
        let _ = framing.dispatched("PUT", "/a");
        assert_eq!(framing.dispatched("GET", "/b"), Framed::Unknown);
        assert_eq!(framing.state.lock().unwrap().phase, Phase::Lost);
    }
}

#[test]
fn a_large_body_is_skipped_without_being_held() {
    let framing = Framing::default();
    framing.record(b"PUT /up HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n");
    for _ in 0..100 {
        framing.record(&[b'x'; 10_000]);
    }
    framing.record(b"GET /next HTTP/1.1\r\n\r\n");
    assert_eq!(framing.dispatched("PUT", "/up"), Framed::Single);
    assert_eq!(framing.dispatched("GET", "/next"), Framed::Single);
    assert_eq!(framing.state.lock().unwrap().pending.capacity(), 0);
}

#[test]
fn an_endless_head_is_given_up_on() {
    let framing = Framing::default();
    framing.record(b"GET /a HTTP/1.1\r\nX-Long: ");
    for _ in 0..20 {
        framing.record(&[b'a'; 4096]);
    }
    let state = framing.state.lock().unwrap();
    assert_eq!(state.phase, Phase::Lost);
    assert!(state.pending.len() <= MAX_LINE_BYTES);
}

#[test]
fn heads_hyper_refuses_are_noted_and_http2_is_not() {
    let framing = Framing::new(1024);
    framing.record(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert!(framing.head_refused());

    let framing = Framing::new(1024);
    framing.record(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n");
    assert!(framing.head_refused());

    let framing = Framing::new(1024);
    framing.record(b"GET / HTTP/1.1\r\nX-Pad: ");
    framing.record(&[b'a'; 2000]);
    assert!(framing.head_refused(), "past hyper's limit");

    let framing = Framing::new(1024);
    framing.record(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert!(!framing.head_refused());

    let framing = Framing::new(1024);
    framing.record(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!framing.head_refused());
}
