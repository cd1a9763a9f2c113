//! Request framing, measured: every `Content-Length`/`Transfer-Encoding`
//! shape of the corpus goes raw over TCP to hyper alone (the HTTP/1 settings
//! the gateway's server uses, in front of a handler that records what it is
//! given) and to the gateway (in front of an upstream whose input is recorded
//! byte for byte). Each is followed on the same connection by a second,
//! "smuggled" request. The table in `src/server/framing.rs` is this test's
//! output: `cargo test --test it framing:: -- --nocapture` prints it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A chunked body of two bytes, `{}`; read by a `Content-Length: 2`, it is
/// `2\r` and the rest is taken for the next request.
const CHUNKED: &str = "2\r\n{}\r\n0\r\n\r\n";

/// What a shape should come to through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// hyper refuses the head: a Matrix JSON 400, nothing forwarded, closed.
    Refused,
    /// Served once, framed by its chunked body alone; then closed, so what
    /// follows the body is never read (RFC 9112 §6.1).
    ChunkedThenClosed,
    /// One framing, nothing ambiguous: served, and the connection kept.
    Served,
    /// The head is fine and the body's chunks are not: the request fails
    /// and the connection closes, and nothing after it is read.
    BadBody,
}

struct Shape {
    name: &'static str,
    version: &'static str,
    /// Framing fields, CRLF-separated.
    fields: &'static str,
    body: &'static str,
    expect: Expect,
}

const fn shape(name: &'static str, fields: &'static str, expect: Expect) -> Shape {
    Shape {
        name,
        version: "1.1",
        fields,
        body: CHUNKED,
        expect,
    }
}

/// The corpus: CL+TE in both orders, obfuscated `Transfer-Encoding`, and the
/// `Content-Length` forms RFC 9112 §6.3 says to refuse.
const SHAPES: &[Shape] = &[
    shape(
        "CL then TE",
        "Content-Length: 2\r\nTransfer-Encoding: chunked",
        Expect::ChunkedThenClosed,
    ),
    shape(
        "TE then CL",
        "Transfer-Encoding: chunked\r\nContent-Length: 2",
        Expect::ChunkedThenClosed,
    ),
    shape(
        "CL, TE, CL (different)",
        "Content-Length: 2\r\nTransfer-Encoding: chunked\r\nContent-Length: 40",
        Expect::ChunkedThenClosed,
    ),
    shape(
        "TE then an invalid CL",
        "Transfer-Encoding: chunked\r\nContent-Length: abc",
        Expect::ChunkedThenClosed,
    ),
    shape(
        "CL, TE `gzip, chunked`",
        "Content-Length: 2\r\nTransfer-Encoding: gzip, chunked",
        Expect::ChunkedThenClosed,
    ),
    shape(
        "TE `Chunked` (case)",
        "Transfer-Encoding: Chunked",
        Expect::Served,
    ),
    shape(
        "TE with a tab before the value",
        "Transfer-Encoding:\tchunked",
        Expect::Served,
    ),
    shape(
        "TE `chunked, chunked`",
        "Transfer-Encoding: chunked, chunked",
        Expect::Served,
    ),
    shape(
        "TE `xchunked`",
        "Transfer-Encoding: xchunked",
        Expect::Refused,
    ),
    shape(
        "TE `chunked, identity`",
        "Transfer-Encoding: chunked, identity",
        Expect::Refused,
    ),
    shape(
        "TE `chunked` then TE `identity`",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        Expect::Refused,
    ),
    shape(
        "CL, TE `identity`",
        "Content-Length: 2\r\nTransfer-Encoding: identity",
        Expect::Refused,
    ),
    shape(
        "space before the colon",
        "Transfer-Encoding : chunked",
        Expect::Refused,
    ),
    shape(
        "TE folded (obs-fold)",
        "Transfer-Encoding:\r\n chunked",
        Expect::Refused,
    ),
    shape(
        "CL, TE with a vertical tab",
        "Content-Length: 2\r\nTransfer-Encoding:\x0bchunked",
        Expect::Refused,
    ),
    Shape {
        name: "TE in HTTP/1.0",
        version: "1.0",
        fields: "Transfer-Encoding: chunked",
        body: CHUNKED,
        expect: Expect::Refused,
    },
    shape(
        "two different CLs",
        "Content-Length: 2\r\nContent-Length: 12",
        Expect::Refused,
    ),
    shape("CL `12, 12`", "Content-Length: 12, 12", Expect::Refused),
    shape("CL `+12`", "Content-Length: +12", Expect::Refused),
    shape(
        "`Transfer_Encoding` (underscore) and CL",
        "Transfer_Encoding: chunked\r\nContent-Length: 12",
        Expect::Served,
    ),
    Shape {
        name: "chunk size `0x2`",
        version: "1.1",
        fields: "Transfer-Encoding: chunked",
        body: "0x2\r\n{}\r\n0\r\n\r\n",
        expect: Expect::BadBody,
    },
    Shape {
        name: "chunk lines ending in LF only",
        version: "1.1",
        fields: "Transfer-Encoding: chunked",
        body: "2\n{}\n0\n\n",
        expect: Expect::BadBody,
    },
];

fn target(i: usize) -> String {
    format!("/_matrix/client/v3/rooms/%21r%3Ax/send/m.room.message/framing{i}")
}

fn smuggled_target(i: usize) -> String {
    format!("/_matrix/client/v3/account/whoami?smuggled={i}")
}

fn request(i: usize, shape: &Shape) -> String {
    format!(
        "PUT {} HTTP/{}\r\nHost: x\r\nAuthorization: Bearer {FULL_TOKEN}\r\n{}\r\n\r\n{}\
         GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {FULL_TOKEN}\r\nConnection: close\r\n\r\n",
        target(i),
        shape.version,
        shape.fields,
        shape.body,
        smuggled_target(i),
    )
}

/// What the client saw.
struct Answer {
    statuses: Vec<u16>,
    /// The first response's `errcode`, when its body is Matrix JSON.
    errcode: Option<String>,
    /// The server closed the connection (within the patience of the test).
    closed: bool,
}

async fn exchange(addr: SocketAddr, request: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out))
        .await
        .is_ok();
    let text = String::from_utf8_lossy(&out);
    let statuses = text
        .match_indices("HTTP/1.")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect();
    let errcode = text.split_once("\r\n\r\n").and_then(|(_, body)| {
        let first = serde_json::Deserializer::from_str(body)
            .into_iter::<serde_json::Value>()
            .next()?
            .ok()?;
        Some(first["errcode"].as_str()?.to_owned())
    });
    Answer {
        statuses,
        errcode,
        closed,
    }
}

/// What hyper handed its service.
#[derive(Debug, Clone)]
struct Arrival {
    target: String,
    content_length: Vec<String>,
    transfer_encoding: Vec<String>,
    body: Result<Bytes, String>,
}

/// hyper alone, with the HTTP/1 settings of the gateway's server, in front
/// of a service that records each request and reads its body whole.
async fn bare_hyper() -> (SocketAddr, Arc<Mutex<Vec<Arrival>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let recorded = arrivals.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(1))
        .max_buf_size(64 * 1024)
        .max_headers(100)
        .keep_alive(true);
    let builder = builder.http1_only();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrivals = recorded.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let arrivals = arrivals.clone();
                    async move {
                        let values = |name| {
                            req.headers()
                                .get_all(name)
                                .iter()
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .collect()
                        };
                        let mut arrival = Arrival {
                            target: req.uri().to_string(),
                            content_length: values(http::header::CONTENT_LENGTH),
                            transfer_encoding: values(http::header::TRANSFER_ENCODING),
                            body: Ok(Bytes::new()),
                        };
                        arrival.body = match req.into_body().collect().await {
                            Ok(body) => Ok(body.to_bytes()),
                            Err(e) => Err(e.to_string()),
                        };
                        arrivals.lock().unwrap().push(arrival);
                        Ok::<_, Infallible>(hyper::Response::new(full("ok")))
                    }
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, arrivals)
}

/// A TCP relay in front of `upstream` that keeps every byte the gateway
/// sends, one buffer per connection.
async fn tee(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(Mutex::new(Vec::new()));
    let recorded = streams.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let slot = {
                let mut streams = recorded.lock().unwrap();
                streams.push(Vec::new());
                streams.len() - 1
            };
            let streams = recorded.clone();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                    streams.lock().unwrap()[slot].extend_from_slice(&buf[..n]);
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (addr, streams)
}

/// The head of the request for `target` in what the upstream received, if
/// it arrived.
fn forwarded_head(streams: &[Vec<u8>], target: &str) -> Option<String> {
    let line = format!(" {target} HTTP/1.1\r\n");
    streams.iter().find_map(|stream| {
        let text = String::from_utf8_lossy(stream);
        let start = text.find(&line)?;
        let start = text[..start].rfind("\r\n").map_or(0, |at| at + 2);
        let end = text[start..].find("\r\n\r\n")? + start;
        Some(text[start..end].to_owned())
    })
}

/// The values of a field in a head, by name, case-insensitively.
fn field_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn describe(answer: &Answer) -> String {
    let mut out = answer
        .statuses
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" + ");
    if out.is_empty() {
        out.push_str("no response");
    }
    if let Some(errcode) = &answer.errcode {
        out.push_str(&format!(" {errcode}"));
    }
    out.push_str(if answer.closed {
        ", closed"
    } else {
        ", kept open"
    });
    out
}

fn framing_of(content_length: &[String], transfer_encoding: &[String]) -> String {
    let mut parts = Vec::new();
    if !transfer_encoding.is_empty() {
        parts.push(format!("TE `{}`", transfer_encoding.join(", ")));
    }
    if !content_length.is_empty() {
        parts.push(format!("CL `{}`", content_length.join(", ")));
    }
    if parts.is_empty() {
        "no framing field".to_owned()
    } else {
        parts.join(" + ")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_framing_shape_through_hyper_alone_and_through_the_gateway() {
    let (hyper_addr, arrivals) = bare_hyper().await;
    let upstream = Stub::homeserver(|_| Reply::json(200, "{}")).await;
    let (tee_addr, streams) = tee(upstream.addr).await;
    let gate = Gate::start(tee_addr).await;

    let mut table = vec![
        "| shape | hyper alone: answer | hyper alone: service gets | gateway: answer | upstream gets |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    let mut failures = Vec::new();
    for (i, shape) in SHAPES.iter().enumerate() {
        let request = request(i, shape);
        let alone = exchange(hyper_addr, &request).await;
        let arrived: Vec<Arrival> = arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.target == target(i) || a.target == smuggled_target(i))
            .cloned()
            .collect();
        let through = exchange(gate.addr, &request).await;
        let streams = streams.lock().unwrap().clone();
        let head = forwarded_head(&streams, &target(i));
        let smuggled_forwarded = forwarded_head(&streams, &smuggled_target(i)).is_some();
        let body = upstream
            .requests()
            .into_iter()
            .find(|r| r.uri.path() == target(i))
            .map(|r| r.body);

        let service_got = match arrived.iter().find(|a| a.target == target(i)) {
            None => "nothing".to_owned(),
            Some(a) => format!(
                "{}; body {}",
                framing_of(&a.content_length, &a.transfer_encoding),
                match &a.body {
                    Ok(b) => format!("`{}`", String::from_utf8_lossy(b).escape_debug()),
                    Err(e) => format!("error ({e})"),
                }
            ),
        };
        let smuggled_read = arrived.iter().any(|a| a.target == smuggled_target(i));
        let upstream_got = match &head {
            None => "nothing".to_owned(),
            Some(head) => format!(
                "{}{}; body {}",
                framing_of(
                    &field_values(head, "content-length"),
                    &field_values(head, "transfer-encoding")
                ),
                if field_values(head, "transfer_encoding").is_empty() {
                    ""
                } else {
                    " (and `Transfer_Encoding`, an ordinary field)"
                },
                body.map_or("unfinished".to_owned(), |b| format!(
                    "`{}`",
                    String::from_utf8_lossy(&b).escape_debug()
                )),
            ),
        };
        let smuggled_note = |read: bool| if read { "; next request read" } else { "" };
        table.push(format!(
            "| {} | {} | {}{} | {} | {}{} |",
            shape.name,
            describe(&alone),
            service_got,
            smuggled_note(smuggled_read),
            describe(&through),
            upstream_got,
            smuggled_note(smuggled_forwarded),
        ));

        // What a user of the gateway relies on, shape by shape.
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failures.push(format!("{}: {what}", shape.name));
            }
        };
        if let Some(head) = &head {
            let lengths = field_values(head, "content-length").len();
            let codings = field_values(head, "transfer-encoding").len();
            check(
                lengths + codings <= 1,
                "reached the homeserver framed two ways",
            );
        }
        match shape.expect {
            Expect::Refused => {
                check(through.statuses == [400], "not one 400");
                check(
                    through.errcode.as_deref() == Some("M_UNRECOGNIZED"),
                    "no Matrix error",
                );
                check(head.is_none(), "forwarded");
                check(through.closed, "connection kept");
                check(alone.statuses == [400], "hyper alone did not refuse it");
            }
            Expect::ChunkedThenClosed => {
                check(through.statuses.len() == 1, "not one response");
                check(through.closed, "connection kept");
                check(!smuggled_forwarded, "what followed the body was forwarded");
                check(
                    alone.statuses == [200] && alone.closed && !smuggled_read,
                    "hyper alone did not serve it once and close",
                );
                check(
                    arrived.first().is_some_and(|a| {
                        a.content_length.is_empty() && a.body.as_deref() == Ok(&b"{}"[..])
                    }),
                    "hyper alone did not frame it by its chunks alone",
                );
            }
            Expect::Served => {
                check(through.statuses == [200, 200], "not served twice");
                check(head.is_some() && smuggled_forwarded, "not both forwarded");
                check(alone.statuses == [200, 200], "hyper alone did not serve it");
            }
            Expect::BadBody => {
                check(!smuggled_forwarded, "what followed the body was forwarded");
                check(through.closed, "connection kept");
                check(!smuggled_read && alone.closed, "hyper alone read on");
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(failures.is_empty(), "{failures:#?}\n{}", table.join("\n"));
}
