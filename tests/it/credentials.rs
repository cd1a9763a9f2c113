//! A differential corpus for one invariant: **the token the gateway
//! authenticated is the only credential the homeserver can see**.
//!
//! Every case sends one request through the real binary to a stub homeserver
//! that reads credentials the way Synapse does, then pairs what the gateway
//! did (its answer, and from its access log the user it authenticated) with
//! what the stub saw. A forwarded request whose homeserver-side token is not
//! the token the gateway authenticated is a bypass: a client sends its own
//! valid token where the gateway looks and another one where the homeserver
//! looks.
//!
//! For every case: if the gateway forwarded (the answer is the stub's), the
//! stub's token must be the one the gateway authenticated, or the stub must
//! see no token or refuse the request itself; if the gateway refused, the stub
//! must never have received the request and the answer must be a Matrix
//! error. Requests carry `x-case: N`, which the stub records with its view;
//! the gateway's JSON access log (one line per request, in order) names the
//! user it authenticated, and each test user has one token.
//! `CREDENTIALS_VERBOSE=1 cargo test --test it credentials:: -- --nocapture`
//! prints every case with both sides' view.
//!
//! The stub is a hyper server: it reads the target hyper forwarded, which
//! carries no fragment (the gateway's URI type drops one, so none reaches a
//! homeserver either).
//!
//! # The stub's reading of a request (Synapse on Twisted)
//!
//! - `synapse/api/auth/base.py`, `get_access_token_from_request` (and
//!   `has_access_token` for optional authentication): with `Authorization`
//!   present, an `access_token` argument too → refused ("Mixing"), more than
//!   one header → refused ("Too many"), the value split on single spaces must
//!   give exactly `[b"Bearer", token]` → `token`, else refused ("Invalid").
//!   Without the header, the first value of `request.args[b"access_token"]`
//!   (an empty list or no entry: no credential). Tokens are `.decode("ascii")`.
//! - `twisted/web/http.py`, `Request.requestReceived`: `request.args =
//!   parse_qs(query, 1)` on what follows the first `?`; then, for `POST` with
//!   a first `Content-Type` and a non-empty body, the media type
//!   `_parseContentType(ctype)` (an `email.message.EmailMessage` header, then
//!   `get_content_type()`: RFC 2047 encoded words are decoded, the part before
//!   `;` is stripped and lowercased, anything without exactly one `/` is
//!   `text/plain`) selects `args.update(parse_qs(body, 1))` for
//!   `application/x-www-form-urlencoded` or `args.update(_getMultiPartArgs(…))`
//!   for `multipart/form-data` (a compat32 `message_from_bytes`, which does
//!   *not* decode encoded words: a body it cannot split is a 400).
//!   `dict.update` *replaces* a name's values: a form field `access_token`
//!   overrides the query's.
//! - `twisted/web/http.py`, `parse_qs(qs, keep_blank_values=1)`: split on `&`,
//!   then each piece on `;`; a piece without `=` is skipped; name and value
//!   split at the first `=`, `+` → space, then `urllib.parse.unquote_to_bytes`
//!   (`%XX` with hex digits of either case decoded, invalid escapes kept).
//! - Synapse releases with the GHSA-rfq8-j7rh-8hf2 fix answer any `POST` whose
//!   first `Content-Type` contains `multipart/form-data` with 415; the stub
//!   models the older behaviour (fields merged), the stricter test.
//!
//! These rules were checked against Twisted 26 and Synapse 1.163 as installed
//! by `tests/e2e/run.sh` (for instance `_parseContentType(b"=?us-ascii?q?
//! application/x-www-form-urlencode=64?=")` is
//! `b"application/x-www-form-urlencoded"`).
//!
//! # What the gateway is expected to do
//!
//! `gateway_model` restates docs/auth.md ("One token per request"); every
//! case's answer is compared with it, separately from the invariant, so a
//! failure says whether the gateway changed behaviour or let a second
//! credential through.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{full, sha256_hex, GateBuilder, Reply, Stub, DEVICE_ONLY_TOKEN, FULL_TOKEN};

/// A second full-access user, so that "the homeserver acted as someone else
/// with full access" is among the outcomes.
const CAROL_TOKEN: &str = "syt_carol_second_full_access_token";
/// A token no validator knows.
const UNKNOWN_TOKEN: &str = "syt_victim_token_nobody_issued";
/// The tokens put where the attacker hopes only one side looks.
const VICTIMS: [&str; 3] = [DEVICE_ONLY_TOKEN, CAROL_TOKEN, UNKNOWN_TOKEN];

fn user_token(user: &str) -> Option<&'static str> {
    match user {
        "@alice:example.org" => Some(FULL_TOKEN),
        "@bob:example.org" => Some(DEVICE_ONLY_TOKEN),
        "@carol:example.org" => Some(CAROL_TOKEN),
        _ => None,
    }
}

fn short(token: &str) -> &'static str {
    match token {
        FULL_TOKEN => "FULL",
        DEVICE_ONLY_TOKEN => "DEVICE",
        CAROL_TOKEN => "CAROL",
        UNKNOWN_TOKEN => "UNKNOWN",
        _ => "other",
    }
}

// ------------------------------------------------------------ the stub ---

/// What Synapse would do with a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HsView {
    /// It would act on this token.
    Token(String),
    /// No credential: the request is anonymous.
    NoToken,
    /// It would refuse the request.
    Refuses(&'static str),
}

type Args = HashMap<Vec<u8>, Vec<Vec<u8>>>;

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `urllib.parse.unquote_to_bytes`.
fn unquote_to_bytes(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(hi), Some(lo)) = (hex_digit(s[i + 1]), hex_digit(s[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn plus_to_space(s: &[u8]) -> Vec<u8> {
    s.iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect()
}

/// `twisted.web.http.parse_qs(qs, keep_blank_values=1)`.
fn twisted_parse_qs(qs: &[u8]) -> Args {
    let mut d = Args::new();
    for s1 in qs.split(|&b| b == b'&') {
        for item in s1.split(|&b| b == b';') {
            let Some(eq) = item.iter().position(|&b| b == b'=') else {
                continue;
            };
            let k = unquote_to_bytes(&plus_to_space(&item[..eq]));
            let v = unquote_to_bytes(&plus_to_space(&item[eq + 1..]));
            d.entry(k).or_default().push(v);
        }
    }
    d
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Python's `str.strip()` on Latin-1 text.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `email.message.Message.get_content_type` on an already decoded value.
fn media_type_of(text: &str) -> String {
    let main = text.split(';').next().unwrap_or("");
    let main = main.trim_matches(py_space).to_lowercase();
    if main.matches('/').count() == 1 {
        main
    } else {
        "text/plain".into()
    }
}

/// RFC 2047 `Q` encoding.
fn q_decode(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' if i + 2 < b.len() => {
                if let (Some(hi), Some(lo)) = (hex_digit(b[i + 1]), hex_digit(b[i + 2])) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'=');
            }
            other => out.push(other),
        }
        i += 1;
    }
    out
}

/// One encoded word after its `=?`: `charset[*lang]?q|b?text?=`.
fn decode_word(s: &str) -> Option<(String, usize)> {
    let q1 = s.find('?')?;
    let encoding = s.get(q1 + 1..q1 + 2)?;
    if s.get(q1 + 2..q1 + 3)? != "?" {
        return None;
    }
    let start = q1 + 3;
    let len = s[start..].find("?=")?;
    let text = &s[start..start + len];
    let bytes = match encoding {
        "q" | "Q" => q_decode(text),
        "b" | "B" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        _ => return None,
    };
    Some((
        String::from_utf8_lossy(&bytes).into_owned(),
        start + len + 2,
    ))
}

/// What the default email policy's header parser does to encoded words.
fn decode_encoded_words(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("=?") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match decode_word(after) {
            Some((decoded, used)) => {
                out.push_str(&decoded);
                rest = &after[used..];
            }
            None => {
                out.push_str("=?");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `twisted.web.http._parseContentType`.
fn twisted_media_type(ctype: &[u8]) -> String {
    media_type_of(&decode_encoded_words(&latin1(ctype)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `twisted.web.http._getMultiPartArgs`: a compat32 parse of the raw
/// `Content-Type` (no encoded words), the form fields by name in order.
fn twisted_multipart_args(body: &[u8], ctype: &[u8]) -> Option<Args> {
    let text = latin1(ctype);
    let mut params = text.split(';');
    let main = params.next()?.trim_matches(py_space).to_lowercase();
    if !main.starts_with("multipart/") {
        return None;
    }
    let boundary = params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        (name.trim().eq_ignore_ascii_case("boundary"))
            .then(|| value.trim().trim_matches('"').to_owned())
    })?;
    let delimiter = format!("--{boundary}").into_bytes();
    let first = find(body, &delimiter)?;
    let mut rest = &body[first + delimiter.len()..];
    let mut args = Args::new();
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        let end = find(rest, &delimiter).unwrap_or(rest.len());
        let part = rest[..end].strip_prefix(b"\r\n").unwrap_or(&rest[..end]);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let (head, payload) = match find(part, b"\r\n\r\n") {
            Some(at) => (&part[..at], &part[at + 4..]),
            None => (part, &b""[..]),
        };
        let name = latin1(head).lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            if !field.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            value.split(';').find_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim().eq_ignore_ascii_case("name"))
                    .then(|| v.trim().trim_matches('"').to_owned())
            })
        });
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            args.entry(name.into_bytes())
                .or_default()
                .push(payload.to_vec());
        }
        if end == rest.len() {
            break;
        }
        rest = &rest[end + delimiter.len()..];
    }
    Some(args)
}

fn ascii_token(token: &[u8]) -> HsView {
    match std::str::from_utf8(token) {
        Ok(t) if t.is_ascii() => HsView::Token(t.to_owned()),
        _ => HsView::Refuses("the token is not ASCII (UnicodeDecodeError, 500)"),
    }
}

/// The credential Synapse would act on for this request.
fn synapse_view(method: &Method, query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> HsView {
    let mut args = query
        .map(|q| twisted_parse_qs(q.as_bytes()))
        .unwrap_or_default();
    let ctype = headers.get_all(CONTENT_TYPE).iter().next();
    if let Some(ctype) = ctype.filter(|c| !c.is_empty()) {
        if method == Method::POST && !body.is_empty() {
            match twisted_media_type(ctype.as_bytes()).as_str() {
                // `args.update(…)`: a name in the body replaces the query's.
                "application/x-www-form-urlencoded" => args.extend(twisted_parse_qs(body)),
                "multipart/form-data" => match twisted_multipart_args(body, ctype.as_bytes()) {
                    Some(fields) => args.extend(fields),
                    None => {
                        return HsView::Refuses("Twisted cannot split the multipart body (400)")
                    }
                },
                _ => {}
            }
        }
    }
    let auth: Vec<&[u8]> = headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let query_params = args.get(&b"access_token"[..]);
    if !auth.is_empty() {
        if query_params.is_some() {
            return HsView::Refuses(
                "Mixing Authorization headers and access_token query parameters.",
            );
        }
        if auth.len() > 1 {
            return HsView::Refuses("Too many Authorization headers.");
        }
        let parts: Vec<&[u8]> = auth[0].split(|&b| b == b' ').collect();
        if parts[0] == b"Bearer" && parts.len() == 2 {
            ascii_token(parts[1])
        } else {
            HsView::Refuses("Invalid Authorization header.")
        }
    } else {
        match query_params {
            Some(values) if !values.is_empty() => ascii_token(&values[0]),
            _ => HsView::NoToken,
        }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    case: usize,
    path: String,
    view: HsView,
}

/// The stub homeserver: records, per request marked `x-case`, the
/// credential Synapse would act on, and answers `{"stub": <case>}`.
async fn homeserver(seen: Arc<Mutex<Vec<Seen>>>) -> Stub {
    Stub::start(move |req| {
        let case = req.header("x-case").and_then(|v| v.parse::<usize>().ok());
        let view = synapse_view(&req.method, req.uri.query(), &req.headers, &req.body);
        if let Some(case) = case {
            seen.lock().unwrap().push(Seen {
                case,
                path: req.path.clone(),
                view,
            });
        }
        let marker = case.map_or(-1, |c| c as i64);
        Reply::json(200, format!(r#"{{"stub":{marker}}}"#))
    })
    .await
}

// ----------------------------------------------------------- the cases ---

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Protected,
    Optional,
    Public,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    method: &'static str,
    path: &'static str,
    access: Access,
    /// Whether the rule allows `DEVICE_ONLY_TOKEN`'s scope.
    device_allowed: bool,
}

const WHOAMI: Route = Route {
    method: "GET",
    path: "/_matrix/client/v3/account/whoami",
    access: Access::Protected,
    device_allowed: false,
};
/// A protected `POST` that does not end a session.
const JOIN: Route = Route {
    method: "POST",
    path: "/_matrix/client/v3/rooms/!r:example.org/join",
    access: Access::Protected,
    device_allowed: false,
};
/// Optional, `allow = [[]]`: any valid token.
const VERSIONS: Route = Route {
    method: "GET",
    path: "/_matrix/client/versions",
    access: Access::Optional,
    device_allowed: true,
};
/// Optional (user-interactive auth), full access when a token is present.
const PASSWORD: Route = Route {
    method: "POST",
    path: "/_matrix/client/v3/account/password",
    access: Access::Optional,
    device_allowed: false,
};
const PUBLIC_ROOMS: Route = Route {
    method: "GET",
    path: "/_matrix/client/v3/publicRooms",
    access: Access::Public,
    device_allowed: true,
};
const LOGIN: Route = Route {
    method: "POST",
    path: "/_matrix/client/v3/login",
    access: Access::Public,
    device_allowed: true,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Forwarded, the gateway having authenticated this token (or none).
    Forwarded(Option<String>),
    Refused(u16, String),
}

fn refused(status: u16, errcode: &str) -> Outcome {
    Outcome::Refused(status, errcode.into())
}

struct Case {
    id: usize,
    family: &'static str,
    name: String,
    proto: Proto,
    route: Route,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// HTTP/1.1 only: send the body chunked, with this trailer field.
    trailer: Option<(String, String)>,
    /// Compared with the gateway's answer, besides the model's.
    pinned: Option<Outcome>,
    /// Whether `gateway_model` can predict the answer.
    modelled: bool,
}

impl Case {
    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.route.path),
            None => self.route.path.to_owned(),
        }
    }
}

#[derive(Default)]
struct Corpus {
    cases: Vec<Case>,
    /// The family the next cases belong to.
    family: &'static str,
}

impl Corpus {
    fn add(
        &mut self,
        name: String,
        proto: Proto,
        route: Route,
        query: Option<String>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> &mut Case {
        let id = self.cases.len();
        self.cases.push(Case {
            id,
            family: self.family,
            name,
            proto,
            route,
            query,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            trailer: None,
            pinned: None,
            modelled: true,
        });
        self.cases.last_mut().unwrap()
    }
}

/// Spellings of the query parameter's name, and whether Twisted reads each
/// as `access_token`.
const NAMES: [(&str, bool); 18] = [
    ("access_token", true),
    ("access%5Ftoken", true),
    ("access%5ftoken", true),
    ("%61ccess_token", true),
    ("access_toke%6E", true),
    ("access_toke%6e", true),
    ("%61%63%63%65%73%73%5F%74%6F%6B%65%6E", true),
    ("%61%63%63%65%73%73%5f%74%6f%6b%65%6e", true),
    ("%61%63%63%65%73%73%5F%74%6f%6B%65%6e", true),
    // Not `access_token` to Twisted either.
    ("access+token", false),
    ("access_token+", false),
    ("+access_token", false),
    ("access%2Btoken", false),
    ("access%5Gtoken", false),
    ("access%5token", false),
    ("Access_token", false),
    ("access%20token", false),
    ("access_token%00", false),
];

/// Where the spelled name `n` sits: `a` is the attacker's own token (in the
/// literal `access_token` when there is one), `b` the victim's.
/// Renders a query from a name spelling, the attacker's and the victim's token.
type Render = fn(&str, &str, &str) -> String;

const PLACEMENTS: [(&str, Render); 8] = [
    ("alone-own", |n, a, _| format!("{n}={a}")),
    ("alone-victim", |n, _, b| format!("{n}={b}")),
    ("after-literal", |n, a, b| {
        format!("access_token={a}&{n}={b}")
    }),
    ("before-literal", |n, a, b| {
        format!("{n}={b}&access_token={a}")
    }),
    ("semicolon", |n, a, b| format!("access_token={a};{n}={b}")),
    ("empty-pairs", |n, _, b| format!("&&{n}={b}&&since=s1")),
    ("no-equals", |n, a, _| format!("{n}&access_token={a}")),
    ("semicolon-only", |n, _, b| format!("since=s1;{n}={b}")),
];

const BOUNDARY: &str = "XyZzy";

fn multipart_body(field: &str, value: &str) -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n--{BOUNDARY}--\r\n"
    )
    .into_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Urlencoded,
    Multipart,
    Other,
}

fn content_types() -> Vec<(&'static str, String, BodyKind)> {
    let b64 = base64::engine::general_purpose::STANDARD.encode("application/x-www-form-urlencoded");
    vec![
        (
            "urlencoded",
            "application/x-www-form-urlencoded".into(),
            BodyKind::Urlencoded,
        ),
        (
            "urlencoded+charset",
            "application/x-www-form-urlencoded; charset=utf-8".into(),
            BodyKind::Urlencoded,
        ),
        (
            "URLENCODED",
            "APPLICATION/X-WWW-FORM-URLENCODED".into(),
            BodyKind::Urlencoded,
        ),
        (
            "multipart",
            format!("multipart/form-data; boundary={BOUNDARY}"),
            BodyKind::Multipart,
        ),
        (
            "Multipart-quoted",
            format!("Multipart/Form-Data; boundary=\"{BOUNDARY}\""),
            BodyKind::Multipart,
        ),
        // RFC 2047 encoded words, which Twisted's `_parseContentType` decodes.
        (
            "encoded-word-q",
            "=?us-ascii?q?application/x-www-form-urlencode=64?=".into(),
            BodyKind::Urlencoded,
        ),
        (
            "encoded-word-b",
            format!("=?utf-8?b?{b64}?="),
            BodyKind::Urlencoded,
        ),
        (
            "encoded-word-subtype",
            "application/=?us-ascii?q?x-www-form-urlencoded?=; charset=utf-8".into(),
            BodyKind::Urlencoded,
        ),
        (
            "encoded-word-multipart",
            format!("=?us-ascii?Q?multipart/form-dat=61?=; boundary={BOUNDARY}"),
            BodyKind::Multipart,
        ),
        // Not forms: Twisted leaves the body alone.
        ("json", "application/json".into(), BodyKind::Other),
        ("text", "text/plain; charset=utf-8".into(), BodyKind::Other),
    ]
}

fn corpus() -> Vec<Case> {
    let mut c = Corpus::default();
    let protos = [Proto::H1, Proto::H2];
    let bearer = |t: &str| format!("Bearer {t}");
    let mut victim_index = 0usize;
    let mut victim = move || {
        victim_index += 1;
        VICTIMS[victim_index % VICTIMS.len()]
    };

    // 1. The query alone: spellings × placements × routes.
    c.family = "query";
    for proto in protos {
        for (name, _) in NAMES {
            for (pi, (placement, render)) in PLACEMENTS.iter().enumerate() {
                let routes: &[Route] = if pi < 2 {
                    &[WHOAMI, VERSIONS, PUBLIC_ROOMS]
                } else {
                    &[WHOAMI]
                };
                for route in routes {
                    let v = victim();
                    let query = render(name, FULL_TOKEN, v);
                    c.add(
                        format!("{placement} name={name} victim={}", short(v)),
                        proto,
                        *route,
                        Some(query),
                        &[],
                        b"",
                    );
                }
            }
        }
    }

    // 2. Header and query together, both ways round.
    c.family = "header+query";
    for proto in protos {
        for (name, _) in NAMES {
            for swap in [false, true] {
                let v = victim();
                let (in_header, in_query) = if swap {
                    (v, FULL_TOKEN)
                } else {
                    (FULL_TOKEN, v)
                };
                for (shape, query) in [
                    ("plain", format!("{name}={in_query}")),
                    ("semicolon", format!("since=s1;{name}={in_query}")),
                ] {
                    c.add(
                        format!(
                            "header={} query[{shape}] {name}={}",
                            short(in_header),
                            short(in_query)
                        ),
                        proto,
                        WHOAMI,
                        Some(query),
                        &[("authorization", &bearer(in_header))],
                        b"",
                    );
                }
            }
        }
    }

    // 3. Authorization header shapes.
    c.family = "authorization";
    for proto in protos {
        for route in [WHOAMI, VERSIONS, PUBLIC_ROOMS] {
            let v = victim();
            let shapes: Vec<(&str, Vec<String>)> = vec![
                ("own", vec![bearer(FULL_TOKEN)]),
                ("victim", vec![bearer(v)]),
                ("two own-first", vec![bearer(FULL_TOKEN), bearer(v)]),
                ("two victim-first", vec![bearer(v), bearer(FULL_TOKEN)]),
                ("comma-joined", vec![format!("Bearer {FULL_TOKEN},{v}")]),
                (
                    "comma-bearer",
                    vec![format!("Bearer {FULL_TOKEN}, Bearer {v}")],
                ),
                ("lowercase scheme", vec![format!("bearer {FULL_TOKEN}")]),
                ("double space", vec![format!("Bearer  {FULL_TOKEN}")]),
                ("three parts", vec![format!("Bearer {FULL_TOKEN} {v}")]),
                ("basic", vec![format!("Basic {FULL_TOKEN}")]),
                ("scheme only", vec!["Bearer".into()]),
                ("tab", vec![format!("Bearer\t{FULL_TOKEN}")]),
            ];
            for (shape, values) in shapes {
                let headers: Vec<(&str, &str)> = values
                    .iter()
                    .map(|h| ("authorization", h.as_str()))
                    .collect();
                c.add(
                    format!("{shape} victim={}", short(v)),
                    proto,
                    route,
                    None,
                    &headers,
                    b"",
                );
            }
        }
    }

    // 4. Bodies: form and non-form content types × where the tokens are ×
    //    protected, optional and public POSTs (and a GET).
    c.family = "body";
    for proto in protos {
        for (ct_name, ct, kind) in content_types() {
            for route in [JOIN, PASSWORD, LOGIN, WHOAMI] {
                let placements: &[&str] = if route.method == "GET" {
                    &["header-own"]
                } else {
                    &["header-own", "query-own", "none", "header-own, no field"]
                };
                for placement in placements {
                    let v = victim();
                    let carries = *placement != "header-own, no field";
                    let field = if carries { "access_token" } else { "since" };
                    let mut bodies: Vec<(&str, Vec<u8>)> = match kind {
                        BodyKind::Urlencoded => {
                            vec![("form", format!("{field}={v}&x=1").into_bytes())]
                        }
                        BodyKind::Multipart => vec![("multipart", multipart_body(field, v))],
                        BodyKind::Other => vec![],
                    };
                    // JSON that is also a form Twisted reads `access_token` from.
                    if kind != BodyKind::Multipart {
                        bodies.push((
                            "json-form",
                            format!("{{\"x\":\"&{field}={v}&\"}}").into_bytes(),
                        ));
                    }
                    for (body_name, body) in bodies {
                        let own = bearer(FULL_TOKEN);
                        let mut headers: Vec<(&str, &str)> = vec![("content-type", ct.as_str())];
                        let mut query = None;
                        match *placement {
                            "header-own" | "header-own, no field" => {
                                headers.push(("authorization", &own))
                            }
                            "query-own" => query = Some(format!("access_token={FULL_TOKEN}")),
                            _ => {}
                        }
                        c.add(
                            format!(
                                "{} ct={ct_name} {placement} body={body_name} victim={}",
                                route.path.rsplit('/').next().unwrap(),
                                short(v)
                            ),
                            proto,
                            route,
                            query,
                            &headers,
                            &body,
                        );
                    }
                }
            }
        }
    }

    // 5. Connection (HTTP/1.1 only: the field is illegal in HTTP/2).
    c.family = "connection";
    let guarded = [
        "authorization",
        "close, Authorization",
        "keep-alive, AUTHORIZATION",
        " Authorization ",
        "Host",
        "content-type",
        "Content-Length",
        "transfer-encoding",
        "forwarded",
        "x-forwarded-for",
        "X-Forwarded-Proto",
        "x-forwarded-host",
        "x-real-ip",
    ];
    for route in [WHOAMI, VERSIONS] {
        let own = bearer(FULL_TOKEN);
        for value in guarded {
            c.add(
                format!("Connection: {value} (header token)"),
                Proto::H1,
                route,
                None,
                &[("connection", value), ("authorization", &own)],
                b"",
            );
        }
        c.add(
            "Connection: authorization (query token)".into(),
            Proto::H1,
            route,
            Some(format!("access_token={FULL_TOKEN}")),
            &[("connection", "authorization")],
            b"",
        );
        c.add(
            "two Connection fields, the second names authorization".into(),
            Proto::H1,
            route,
            None,
            &[
                ("connection", "keep-alive"),
                ("authorization", &own),
                ("connection", "authorization"),
            ],
            b"",
        );
        let v = victim();
        let victim_bearer = bearer(v);
        let cookie = format!("access_token={v}");
        let stripped: [(&str, Vec<(&str, &str)>); 6] = [
            ("x-victim", vec![("x-victim", victim_bearer.as_str())]),
            (
                "proxy-authorization",
                vec![("proxy-authorization", victim_bearer.as_str())],
            ),
            ("keep-alive", vec![("keep-alive", "timeout=5")]),
            ("te", vec![("te", "trailers")]),
            ("cookie", vec![("cookie", cookie.as_str())]),
            (
                "x-access-token, x-victim",
                vec![("x-access-token", v), ("x-victim", v)],
            ),
        ];
        for (value, extra) in stripped {
            for (where_, query) in [
                ("header", None),
                ("query", Some(format!("access_token={FULL_TOKEN}"))),
            ] {
                let mut headers: Vec<(&str, &str)> = vec![("connection", value)];
                if where_ == "header" {
                    headers.push(("authorization", &own));
                }
                headers.extend(extra.iter().copied());
                c.add(
                    format!(
                        "Connection: {value} (stripped; {where_} token) victim={}",
                        short(v)
                    ),
                    Proto::H1,
                    route,
                    query,
                    &headers,
                    b"",
                );
            }
        }
    }

    // 6. HTTP/1.1 framing: a chunked body whose trailer carries a token, and
    //    a fragment after the query.
    c.family = "framing";
    for route in [JOIN, PASSWORD] {
        for with_header in [true, false] {
            let v = victim();
            let own = bearer(FULL_TOKEN);
            let mut headers = vec![
                ("content-type", "application/json"),
                ("trailer", "authorization"),
            ];
            if with_header {
                headers.push(("authorization", &own));
            }
            let case = c.add(
                format!(
                    "chunked, trailer Authorization victim={} header={}",
                    short(v),
                    if with_header { "own" } else { "none" }
                ),
                Proto::H1,
                route,
                None,
                &headers,
                b"{}",
            );
            case.trailer = Some(("authorization".into(), bearer(v)));
            // hyper reads the trailer section (or not): outside the model.
            case.modelled = false;
        }
    }
    for route in [WHOAMI, VERSIONS] {
        let v = victim();
        let case = c.add(
            format!("fragment: ?access_token=FULL#&access_token={}", short(v)),
            Proto::H1,
            route,
            Some(format!("access_token={FULL_TOKEN}#&access_token={v}")),
            &[],
            b"",
        );
        case.modelled = false;
    }

    // Expectations pinned by hand, besides the model (the first case whose
    // name starts with the given text).
    let cases = &mut c.cases;
    let mut pin = |family: &str, proto: Proto, route: Route, name: &str, outcome: Outcome| {
        let case = cases
            .iter_mut()
            .find(|c| {
                c.family == family
                    && c.proto == proto
                    && c.route.path == route.path
                    && c.name.starts_with(name)
            })
            .unwrap_or_else(|| panic!("no case {family} {proto:?} {} {name}", route.path));
        case.pinned = Some(outcome);
    };
    for proto in protos {
        let full = Outcome::Forwarded(Some(FULL_TOKEN.into()));
        // A plain query token, and a plain header, are forwarded as is.
        pin(
            "query",
            proto,
            WHOAMI,
            "alone-own name=access_token victim=",
            full.clone(),
        );
        pin("authorization", proto, WHOAMI, "own victim=", full);
        // A spelling only Twisted reads is refused, even alone.
        pin(
            "query",
            proto,
            VERSIONS,
            "alone-victim name=access%5Ftoken victim=",
            refused(400, "M_MISSING_TOKEN"),
        );
        // The victim's token in a spelling only Twisted reads, next to the
        // attacker's own header.
        pin(
            "header+query",
            proto,
            WHOAMI,
            "header=FULL query[plain] access%5Ftoken=",
            refused(400, "M_MISSING_TOKEN"),
        );
        pin(
            "header+query",
            proto,
            WHOAMI,
            "header=FULL query[plain] access_token=",
            refused(401, "M_MISSING_TOKEN"),
        );
        pin(
            "body",
            proto,
            JOIN,
            "join ct=urlencoded header-own body=form",
            refused(400, "M_UNRECOGNIZED"),
        );
    }
    pin(
        "connection",
        Proto::H1,
        WHOAMI,
        "Connection: close, Authorization (header token)",
        refused(400, "M_UNRECOGNIZED"),
    );
    c.cases
}

// ------------------------------------------------- the gateway's rules ---

const GUARDED: [&str; 10] = [
    "authorization",
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// docs/auth.md: a query token only as `access_token=…`, once, between `&`s.
fn model_query_token(query: &str) -> Result<Option<String>, ()> {
    let mut found = None;
    for pair in query.split(['&', ';']) {
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, v),
            None => (pair, ""),
        };
        let names_it = if name.contains('%') {
            unquote_to_bytes(&plus_to_space(name.as_bytes())) == b"access_token"
        } else {
            name == "access_token"
        };
        if !names_it {
            continue;
        }
        if found.is_some() || name != "access_token" || value.is_empty() {
            return Err(());
        }
        let decoded = String::from_utf8(unquote_to_bytes(&plus_to_space(value.as_bytes())))
            .map_err(|_| ())?;
        found = Some(decoded);
    }
    if found.is_some() && query.contains(';') {
        return Err(());
    }
    Ok(found)
}

/// What the gateway should answer, from docs/auth.md and scopes.toml.
fn gateway_model(case: &Case) -> Outcome {
    for value in case.header_values("connection") {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if value
            .split(',')
            .any(|name| GUARDED.iter().any(|g| g.eq_ignore_ascii_case(name.trim())))
        {
            return refused(400, "M_UNRECOGNIZED");
        }
    }
    // One Content-Type, a plain `type/subtype` (so no encoded word the
    // homeserver's header parser could decode into a form), and no form.
    let content_types = case.header_values("content-type");
    if content_types.len() > 1 {
        return refused(400, "M_UNRECOGNIZED");
    }
    for value in content_types {
        let lower = value.to_ascii_lowercase();
        let media_type = lower
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        let plain = media_type.is_empty()
            || media_type.split(|b| *b == b'/').count() == 2
                && media_type
                    .split(|b| *b == b'/')
                    .all(|part| !part.is_empty() && part.iter().all(tchar));
        if !plain
            || find(&lower, b"x-www-form-urlencoded").is_some()
            || find(&lower, b"multipart/form-data").is_some()
        {
            return refused(400, "M_UNRECOGNIZED");
        }
    }
    let auth = case.header_values("authorization");
    if auth.len() > 1 {
        return refused(401, "M_MISSING_TOKEN");
    }
    let from_query = match case.query.as_deref().map(model_query_token) {
        Some(Err(())) => return refused(400, "M_MISSING_TOKEN"),
        Some(Ok(token)) => token,
        None => None,
    };
    let token = match (auth.first(), from_query) {
        (Some(_), Some(_)) => return refused(401, "M_MISSING_TOKEN"),
        (Some(value), None) => {
            let token = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "));
            match token {
                Some(t) if !t.is_empty() && !t.contains(' ') => Some(t.to_owned()),
                _ => return refused(401, "M_MISSING_TOKEN"),
            }
        }
        (None, token) => token,
    };
    let Some(token) = token else {
        return match case.route.access {
            Access::Protected => refused(401, "M_MISSING_TOKEN"),
            _ => Outcome::Forwarded(None),
        };
    };
    if ![FULL_TOKEN, DEVICE_ONLY_TOKEN, CAROL_TOKEN].contains(&token.as_str()) {
        // A public route needs no token: an unknown one in the header is
        // taken off and the request goes on without it.
        if case.route.access == Access::Public && !auth.is_empty() {
            return Outcome::Forwarded(None);
        }
        return refused(401, "M_UNKNOWN_TOKEN");
    }
    if case.route.access != Access::Public
        && token == DEVICE_ONLY_TOKEN
        && !case.route.device_allowed
    {
        return refused(403, "M_FORBIDDEN");
    }
    Outcome::Forwarded(Some(token))
}

// ------------------------------------------------------------ clients ---

struct Answer {
    status: u16,
    body: Vec<u8>,
}

const IO_LIMIT: Duration = Duration::from_secs(5);

fn h1_bytes(case: &Case) -> Vec<u8> {
    let mut out = format!(
        "{} {} HTTP/1.1\r\nHost: matrix.example.org\r\nx-case: {}\r\n",
        case.route.method,
        case.target(),
        case.id
    )
    .into_bytes();
    for (name, value) in &case.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match &case.trailer {
        Some((name, value)) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            out.extend_from_slice(format!("{:x}\r\n", case.body.len()).as_bytes());
            out.extend_from_slice(&case.body);
            out.extend_from_slice(format!("\r\n0\r\n{name}: {value}\r\n\r\n").as_bytes());
        }
        None => {
            if case.route.method == "POST" || !case.body.is_empty() {
                out.extend_from_slice(
                    format!("Content-Length: {}\r\n", case.body.len()).as_bytes(),
                );
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&case.body);
        }
    }
    out
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(IO_LIMIT, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// One request written byte for byte on a new connection; the response read
/// by its framing.
async fn send_h1(addr: SocketAddr, case: &Case) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&h1_bytes(case)).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if !read_more(&mut stream, &mut buf).await {
            return Answer {
                status: 0,
                body: buf,
            };
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let body = if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < head_end + len && read_more(&mut stream, &mut buf).await {}
        buf[head_end..(head_end + len).min(buf.len())].to_vec()
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            if let Some(body) = dechunk(&buf[head_end..]) {
                break body;
            }
            if !read_more(&mut stream, &mut buf).await {
                break buf[head_end..].to_vec();
            }
        }
    } else {
        while read_more(&mut stream, &mut buf).await {}
        buf[head_end..].to_vec()
    };
    Answer { status, body }
}

/// One request on a new HTTP/2 connection (prior knowledge).
async fn send_h2(addr: SocketAddr, case: &Case) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(case.route.method)
        .uri(format!("http://matrix.example.org{}", case.target()))
        .header("x-case", case.id.to_string());
    for (name, value) in &case.headers {
        req = req.header(name.as_str(), HeaderValue::from_bytes(value).unwrap());
    }
    let req = req.body(full(Bytes::from(case.body.clone()))).unwrap();
    let response = tokio::time::timeout(IO_LIMIT, sender.send_request(req))
        .await
        .expect("the gateway answers in time")
        .unwrap_or_else(|e| panic!("case {} ({}): HTTP/2 error {e}", case.id, case.name));
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer { status, body }
}

// ---------------------------------------------------------------- run ---

#[derive(Debug)]
enum Observed {
    Forwarded,
    Refused(u16, String),
    /// Neither the stub's answer nor a Matrix error.
    Other(u16, String),
}

fn observe(case: &Case, answer: &Answer) -> Observed {
    let json: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    match json {
        Some(v) if v["stub"] == case.id as u64 && answer.status == 200 => Observed::Forwarded,
        Some(v) if v["errcode"].is_string() => {
            Observed::Refused(answer.status, v["errcode"].as_str().unwrap().to_owned())
        }
        _ => Observed::Other(
            answer.status,
            String::from_utf8_lossy(&answer.body).into_owned(),
        ),
    }
}

/// The gateway's access-log lines, in order: (path, status, user).
fn access_lines(logs: &str) -> Vec<(String, u64, String)> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "scopegate::access")
        .map(|v| {
            (
                v["path"].as_str().unwrap_or_default().to_owned(),
                v["status"].as_u64().unwrap_or_default(),
                v["user"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

fn describe(case: &Case) -> String {
    let headers: Vec<String> = case
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
        .collect();
    format!(
        "#{} [{:?} {}] {} {} {} | headers {:?} | body {:?}",
        case.id,
        case.proto,
        case.family,
        case.name,
        case.route.method,
        case.target(),
        headers,
        String::from_utf8_lossy(&case.body)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticated_token_is_the_only_credential_the_homeserver_sees() {
    let started = Instant::now();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = homeserver(seen.clone()).await;
    let gate = GateBuilder::new()
        .binary()
        .log(r#"format = "json""#)
        .rest(&format!(
            "[[auth.static]]\ntoken_sha256 = \"{}\"\nuser_id = \"@carol:example.org\"\nscopes = [\"urn:matrix:client:api:*\"]",
            sha256_hex(CAROL_TOKEN)
        ))
        .rest("[auth.rate_limit]\nburst = 100000\nper_minute = 100000")
        .start(upstream.addr)
        .await;

    let cases = corpus();
    let mut observed = Vec::with_capacity(cases.len());
    for case in &cases {
        let answer = match case.proto {
            Proto::H1 => send_h1(gate.addr, case).await,
            Proto::H2 => send_h2(gate.addr, case).await,
        };
        observed.push(observe(case, &answer));
    }

    // The gateway writes one access line per request it answered, in order.
    let answered = observed
        .iter()
        .filter(|o| !matches!(o, Observed::Other(..)))
        .count();
    // (A missing line is reported per case below.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = access_lines(&gate.logs());
        if lines.len() >= answered || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut lines = lines.into_iter();

    let mut by_case: HashMap<usize, Vec<Seen>> = HashMap::new();
    for s in seen.lock().unwrap().iter() {
        by_case.entry(s.case).or_default().push(s.clone());
    }

    // `CREDENTIALS_VERBOSE=1 cargo test --test it credentials:: -- --nocapture`
    // prints every case with what each side did.
    let verbose = std::env::var_os("CREDENTIALS_VERBOSE").is_some();
    let mut bypasses = Vec::new();
    let mut failures = Vec::new();
    let (mut forwarded, mut refused_count) = (0usize, 0usize);
    let mut per_family: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (case, obs) in cases.iter().zip(&observed) {
        let stub = by_case.get(&case.id);
        let what = describe(case);
        let log_user = if matches!(obs, Observed::Other(..)) {
            None
        } else {
            match lines.next() {
                Some((path, status, user)) => {
                    let status_ok = match obs {
                        Observed::Forwarded => status == 200,
                        Observed::Refused(s, _) => status == u64::from(*s),
                        Observed::Other(..) => true,
                    };
                    if path != case.route.path || !status_ok {
                        failures.push(format!("{what}: access line out of step ({path} {status})"));
                    }
                    Some(user)
                }
                None => {
                    failures.push(format!("{what}: no access line"));
                    None
                }
            }
        };
        let authenticated = log_user.as_deref().and_then(user_token);
        let actual = match obs {
            Observed::Forwarded => {
                forwarded += 1;
                per_family.entry(case.family).or_default().0 += 1;
                let views: Vec<&Seen> = stub.map(|s| s.iter().collect()).unwrap_or_default();
                match views.as_slice() {
                    [one] => {
                        if one.path != case.route.path {
                            failures.push(format!("{what}: the stub saw path {}", one.path));
                        }
                        // The invariant.
                        match &one.view {
                            HsView::Token(t) if Some(t.as_str()) == authenticated => {}
                            HsView::Token(t) => bypasses.push(format!(
                                "{what}\n      gateway authenticated {}, homeserver would act on {} ({})",
                                authenticated.map_or("no token", short),
                                short(t),
                                t
                            )),
                            HsView::NoToken | HsView::Refuses(_) => {}
                        }
                    }
                    other => failures.push(format!(
                        "{what}: forwarded, the stub saw {} requests",
                        other.len()
                    )),
                }
                Some(Outcome::Forwarded(authenticated.map(str::to_owned)))
            }
            Observed::Refused(status, errcode) => {
                refused_count += 1;
                per_family.entry(case.family).or_default().1 += 1;
                if stub.is_some() {
                    failures.push(format!(
                        "{what}: refused ({status}) yet the stub received it"
                    ));
                }
                if ![400, 401, 403].contains(status) {
                    failures.push(format!("{what}: refused with {status} {errcode}"));
                }
                Some(Outcome::Refused(*status, errcode.clone()))
            }
            Observed::Other(status, body) => {
                failures.push(format!("{what}: not a Matrix answer: {status} {body:?}"));
                None
            }
        };
        if verbose {
            println!("{what}\n      -> {obs:?}, gateway user {log_user:?}, stub {stub:?}");
        }
        if let Some(actual) = actual {
            if case.modelled {
                let model = gateway_model(case);
                if actual != model {
                    failures.push(format!("{what}: expected {model:?}, got {actual:?}"));
                }
            }
            if let Some(pinned) = &case.pinned {
                if &actual != pinned {
                    failures.push(format!("{what}: pinned {pinned:?}, got {actual:?}"));
                }
            }
        }
    }

    println!(
        "credential corpus: {} cases, {forwarded} forwarded, {refused_count} refused, {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    for (family, (f, r)) in &per_family {
        println!("  {family:<14} forwarded {f:>4}  refused {r:>4}");
    }
    for f in &failures {
        println!("FAILURE {f}");
    }
    for b in &bypasses {
        println!("BYPASS {b}");
    }
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    assert!(
        forwarded > 0 && refused_count > 0,
        "{forwarded} forwarded, {refused_count} refused"
    );
    assert!(
        failures.is_empty(),
        "{} failures (see FAILURE lines above)",
        failures.len()
    );
    assert!(
        bypasses.is_empty(),
        "{} requests reached the homeserver with a credential other than the one the gateway authenticated (see BYPASS lines above)",
        bypasses.len()
    );
}

// The stub's reading of requests, checked against the examples verified with
// Twisted and Synapse themselves.
#[test]
fn the_stub_reads_like_twisted_and_synapse() {
    let args = twisted_parse_qs(b"a=1&&b;access%5Ftoken=x+y&c&access_token=%zz;d=%41%4a");
    assert_eq!(
        args[&b"access_token"[..]],
        vec![b"x y".to_vec(), b"%zz".to_vec()]
    );
    assert_eq!(args[&b"d"[..]], vec![b"AJ".to_vec()]);
    assert!(!args.contains_key(&b"c"[..]) && !args.contains_key(&b"b"[..]));

    for (ctype, media) in [
        (
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded",
        ),
        (
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
            "application/x-www-form-urlencoded",
        ),
        (
            "=?us-ascii?q?application/x-www-form-urlencode=64?=",
            "application/x-www-form-urlencoded",
        ),
        (
            "=?utf-8?b?YXBwbGljYXRpb24veC13d3ctZm9ybS11cmxlbmNvZGVk?=",
            "application/x-www-form-urlencoded",
        ),
        (
            "application/=?us-ascii?q?x-www-form-urlencoded?=",
            "application/x-www-form-urlencoded",
        ),
        (
            "=?us-ascii?Q?multipart/form-dat=61?=; boundary=xyz",
            "multipart/form-data",
        ),
        (
            "application/ x-www-form-urlencoded",
            "application/ x-www-form-urlencoded",
        ),
        ("application/x-www-form-urlencoded,text/plain", "text/plain"),
    ] {
        assert_eq!(twisted_media_type(ctype.as_bytes()), media, "{ctype}");
    }

    let post = |uri: &str, ctype: Option<&str>, body: &str, auth: &[&str]| {
        let mut headers = HeaderMap::new();
        if let Some(ct) = ctype {
            headers.append(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        for a in auth {
            headers.append(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        let uri: http::Uri = uri.parse().unwrap();
        synapse_view(&Method::POST, uri.query(), &headers, body.as_bytes())
    };
    let token = |t: &str| HsView::Token(t.into());
    // `args.update`: the form's access_token replaces the query's.
    assert_eq!(
        post(
            "/x?access_token=A",
            Some("application/x-www-form-urlencoded"),
            "access_token=B",
            &[]
        ),
        token("B")
    );
    assert_eq!(
        post(
            "/x?access_token=A",
            Some("application/x-www-form-urlencoded"),
            "other=B",
            &[]
        ),
        token("A")
    );
    assert_eq!(
        post(
            "/x",
            Some("=?us-ascii?q?application/x-www-form-urlencode=64?="),
            "access_token=VICTIM",
            &[]
        ),
        token("VICTIM")
    );
    assert!(matches!(
        post(
            "/x",
            Some("application/x-www-form-urlencoded"),
            "access_token=B",
            &["Bearer A"]
        ),
        HsView::Refuses(_)
    ));
    assert!(matches!(
        post(
            "/x",
            Some("=?us-ascii?Q?multipart/form-dat=61?=; boundary=xyz"),
            "--xyz\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\nV\r\n--xyz--\r\n",
            &[]
        ),
        HsView::Refuses(_)
    ));
    assert_eq!(
        post(
            "/x",
            Some("multipart/form-data; boundary=xyz"),
            "--xyz\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\nV\r\n--xyz--\r\n",
            &[]
        ),
        token("V")
    );
    assert_eq!(post("/x?access_token=", None, "", &[]), token(""));
    assert_eq!(post("/x?access%5Ftoken=T", None, "", &[]), token("T"));
    assert_eq!(post("/x?access_token", None, "", &[]), HsView::NoToken);
    assert_eq!(post("/x", None, "", &["Bearer T"]), token("T"));
    for bad in [
        &["Bearer  T"][..],
        &["bearer T"],
        &["Bearer T U"],
        &["Bearer A", "Bearer B"],
    ] {
        assert!(
            matches!(post("/x", None, "", bad), HsView::Refuses(_)),
            "{bad:?}"
        );
    }
    assert!(matches!(
        post("/x?access_token=T", None, "", &["Bearer T"]),
        HsView::Refuses(_)
    ));
}
