//! HTTP/1 requests framed two ways at once.
//!
//! A request carrying both `Content-Length` and `Transfer-Encoding` is how
//! request smuggling starts: two parsers that pick different headers see
//! different requests. hyper follows RFC 9112 §6.1 (the chunked framing wins,
//! the connection is closed afterwards) but drops `Content-Length` without
//! telling the service, so the request would still be forwarded. We refuse
//! it outright.
//!
//! To see what hyper hides, each HTTP/1 connection's input also goes through
//! a [`Framing`] tracker: it parses each request head with httparse (hyper's
//! own parser), notes whether the head set both lengths, and skips the body
//! by the same rules hyper frames it with, so it knows where the next head
//! starts. Nothing of a body is copied, and a connection between requests
//! holds no bytes. hyper dispatches heads in the order they came, so the
//! gateway takes the tracker's verdicts in order, checking each against the
//! request's method and target; when the two disagree, or the tracker could
//! not follow the stream, a chunked request is refused rather than guessed
//! about.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest head or chunk-size line the tracker buffers; past it, it
/// gives up on the connection (hyper refuses such heads itself).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// As many fields as hyper reads in a request head (its default, 100), and
/// some room.
const MAX_HEADERS: usize = 128;

/// What the tracker says of a dispatched request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// One framing, or none.
    Single,
    /// Both `Content-Length` and `Transfer-Encoding`.
    Twice,
    /// The tracker lost the stream, or its next head is not this request.
    Unknown,
}

/// One HTTP/1 connection's request framing, as its input arrives.
#[derive(Debug, Default)]
pub struct Framing {
    state: Mutex<Tracker>,
    /// Keys requests by method and target, to check the tracker and hyper
    /// saw the same sequence of heads.
    keys: RandomState,
    /// A head came that hyper refuses (unparsable, or past `max_head`):
    /// the one time [`Recording`] may replace hyper's bare refusal.
    head_refused: AtomicBool,
    /// hyper's limit on a head (`max_buf_size`); 0: [`MAX_LINE_BYTES`].
    max_head: usize,
}

#[derive(Debug, Default)]
struct Tracker {
    phase: Phase,
    /// Bytes of an unfinished head, chunk-size line or trailer section.
    pending: Vec<u8>,
    /// Heads parsed and not yet dispatched, oldest first.
    heads: VecDeque<(u64, bool)>,
    /// The stream was lost on a head hyper refuses too (not on HTTP/2).
    refused: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Head,
    /// Body bytes of a `Content-Length` body still to come.
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many of its two bytes are left.
    ChunkEnd(u8),
    Trailers,
    /// The stream no longer parses (an upgrade, HTTP/2, an error hyper
    /// refuses too): nothing more is known.
    Lost,
}

impl Framing {
    /// For a connection whose heads hyper refuses past `max_head` bytes.
    pub fn new(max_head: usize) -> Self {
        Framing {
            max_head,
            ..Framing::default()
        }
    }

    /// An HTTP/1 request that set both `Transfer-Encoding` and
    /// `Content-Length`, or a chunked one whose head could not be checked.
    /// Called once for every HTTP/1 request, in order: it takes the
    /// tracker's verdict on the request.
    pub fn framed_twice<B>(&self, req: &http::Request<B>) -> bool {
        let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
        let verdict = self.dispatched(req.method().as_str(), target);
        req.headers().contains_key(http::header::TRANSFER_ENCODING) && verdict != Framed::Single
    }

    /// The verdict on the next dispatched request, `method target`.
    pub fn dispatched(&self, method: &str, target: &str) -> Framed {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.heads.pop_front() {
            Some((key, twice)) if key == self.keys.hash_one((method, target)) => {
                if twice {
                    Framed::Twice
                } else {
                    Framed::Single
                }
            }
            _ => {
                // Out of step with hyper: nothing the tracker says is about
                // the right request any more.
                state.phase = Phase::Lost;
                state.heads.clear();
                state.pending = Vec::new();
                Framed::Unknown
            }
        }
    }

    fn record(&self, mut input: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let max_head = if self.max_head == 0 {
            MAX_LINE_BYTES
        } else {
            self.max_head
        };
        while !input.is_empty() {
            let used = state.advance(input, &self.keys, max_head);
            input = &input[used..];
        }
        if state.refused {
            self.head_refused.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a head came on this connection that hyper refuses.
    fn head_refused(&self) -> bool {
        self.head_refused.load(Ordering::Relaxed)
    }
}

impl Tracker {
    /// Consumes a prefix of `input` (at least one byte) and moves on.
    fn advance(&mut self, input: &[u8], keys: &RandomState, max_head: usize) -> usize {
        match self.phase {
            Phase::Lost => input.len(),
            Phase::Head => self.head(input, keys, max_head),
            Phase::Length(left) => {
                let used = left.min(input.len() as u64);
                self.phase = match left - used {
                    0 => Phase::Head,
                    left => Phase::Length(left),
                };
                used as usize
            }
            Phase::ChunkSize => self.chunk_size(input),
            Phase::ChunkData(left) => {
                let used = left.min(input.len() as u64);
                self.phase = match left - used {
                    0 => Phase::ChunkEnd(2),
                    left => Phase::ChunkData(left),
                };
                used as usize
            }
            Phase::ChunkEnd(left) => {
                let expected = &b"\r\n"[2 - left as usize..];
                let used = expected.len().min(input.len());
                self.phase = if input[..used] != expected[..used] {
                    Phase::Lost
                } else if used == expected.len() {
                    Phase::ChunkSize
                } else {
                    Phase::ChunkEnd(left - used as u8)
                };
                used
            }
            Phase::Trailers => self.trailers(input),
        }
    }

    /// Runs `scan` over what is pending and `input`, as one buffer, and
    /// keeps what it could not finish for the next read. Returns how many
    /// bytes of `input` were used, and what `scan` found once complete. A
    /// buffer past [`MAX_LINE_BYTES`], or input `scan` refuses, loses the
    /// stream.
    fn scan<T>(&mut self, input: &[u8], scan: impl FnOnce(&[u8]) -> Scan<T>) -> (usize, Option<T>) {
        let was_pending = !self.pending.is_empty();
        if was_pending {
            if self.pending.len() + input.len() > MAX_LINE_BYTES {
                self.phase = Phase::Lost;
                return (input.len(), None);
            }
            self.pending.extend_from_slice(input);
        }
        let bytes = if was_pending {
            &self.pending[..]
        } else {
            input
        };
        match scan(bytes) {
            Scan::Complete(used, found) => {
                // Of the buffer, `used`; of it, what was pending before.
                let before = self.pending.len().saturating_sub(input.len());
                self.pending = Vec::new();
                (used - before, Some(found))
            }
            Scan::Partial if !was_pending && input.len() <= MAX_LINE_BYTES => {
                self.pending.extend_from_slice(input);
                (input.len(), None)
            }
            Scan::Partial if was_pending => (input.len(), None),
            Scan::Partial | Scan::Invalid => {
                self.phase = Phase::Lost;
                (input.len(), None)
            }
        }
    }

    fn head(&mut self, input: &[u8], keys: &RandomState, max_head: usize) -> usize {
        let h2 = self.pending.is_empty() && input.starts_with(b"PRI * HTTP/2.0");
        let (used, found) = self.scan(input, |bytes| {
            // Left uninitialised: httparse writes the fields it finds.
            let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
                &mut request,
                bytes,
                &mut fields,
            );
            match parsed {
                Ok(httparse::Status::Partial) => Scan::Partial,
                Err(_) => Scan::Invalid,
                Ok(httparse::Status::Complete(used)) => {
                    let key = keys.hash_one((
                        request.method.unwrap_or_default(),
                        request.path.unwrap_or_default(),
                    ));
                    Scan::Complete(used, (key, body_of(request.headers)))
                }
            }
        });
        match found {
            Some((key, Some((phase, twice)))) => {
                self.heads.push_back((key, twice));
                self.phase = phase;
            }
            Some((_, None)) => {
                self.phase = Phase::Lost;
                self.refused = true;
            }
            None if self.pending.len() > max_head => {
                self.phase = Phase::Lost;
                self.pending = Vec::new();
                self.refused = true;
            }
            None if self.phase == Phase::Lost => self.refused = !h2,
            None => {}
        }
        used
    }

    fn chunk_size(&mut self, input: &[u8]) -> usize {
        let (used, size) = self.scan(input, |bytes| match httparse::parse_chunk_size(bytes) {
            Ok(httparse::Status::Partial) => Scan::Partial,
            Err(_) => Scan::Invalid,
            Ok(httparse::Status::Complete((used, size))) => Scan::Complete(used, size),
        });
        match size {
            Some(0) => self.phase = Phase::Trailers,
            Some(size) => self.phase = Phase::ChunkData(size),
            None => {}
        }
        used
    }

    /// RFC 9112 §7.1.2: field lines after the last chunk, then an empty line.
    fn trailers(&mut self, input: &[u8]) -> usize {
        let (used, end) = self.scan(input, |bytes| {
            let end = if bytes.starts_with(b"\r\n") {
                Some(2)
            } else {
                memchr::memmem::find(bytes, b"\r\n\r\n").map(|at| at + 4)
            };
            end.map_or(Scan::Partial, |end| Scan::Complete(end, ()))
        });
        if end.is_some() {
            self.phase = Phase::Head;
        }
        used
    }
}

/// What a scan of a head, a chunk-size line or trailers found.
enum Scan<T> {
    Partial,
    Invalid,
    /// Done after this many bytes.
    Complete(usize, T),
}

/// How the body after these fields is framed, as hyper frames it, and
/// whether both lengths were set; `None` for a head hyper refuses.
fn body_of(fields: &[httparse::Header<'_>]) -> Option<(Phase, bool)> {
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for field in fields {
        if field.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(field.value).ok()?.trim();
            let parsed: u64 = value.parse().ok()?;
            // hyper refuses differing lengths.
            if length.is_some_and(|known| known != parsed) {
                return None;
            }
            length = Some(parsed);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(field.value).ok()?;
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        }
    }
    match (chunked, length) {
        // A coding other than chunked last: hyper refuses the request.
        (Some(false), _) => None,
        (Some(true), length) => Some((Phase::ChunkSize, length.is_some())),
        (None, Some(0) | None) => Some((Phase::Head, false)),
        (None, Some(length)) => Some((Phase::Length(length), false)),
    }
}

/// An HTTP/1 connection's I/O, passing what it reads to a [`Framing`], and
/// giving hyper's own refusals of unparsable heads a Matrix JSON body.
pub struct Recording<I> {
    inner: I,
    framing: Arc<Framing>,
    /// A refusal being written in place of hyper's bodiless one: the bytes,
    /// how many are out, and how long hyper's was.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<I> Recording<I> {
    pub fn new(inner: I, framing: Arc<Framing>) -> Self {
        Recording {
            inner,
            framing,
            replacing: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Recording<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                self.framing.record(read);
            }
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> Recording<I> {
    /// Writes the replacement out; done, it stands for hyper's whole write.
    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, stands_for)) = &mut self.replacing {
            if *written == bytes.len() {
                let stands_for = *stands_for;
                self.replacing = None;
                return Poll::Ready(Ok(stands_for));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Recording<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Only once a head hyper refuses has come on this connection: a
        // response body can carry the same bytes. (A client that pipelines
        // such a body and a bad head only garbles its own connection.)
        if self.replacing.is_none() && self.framing.head_refused() {
            if let Some(refusal) = crate::gate::matrix_parser_refusal(buf) {
                self.framing.head_refused.store(false, Ordering::Relaxed);
                self.replacing = Some((refusal, 0, buf.len()));
            }
        }
        if self.replacing.is_some() {
            return self.poll_replacing(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper writes its refusal as one head and nothing else.
        if self.replacing.is_some() || bufs.iter().filter(|b| !b.is_empty()).count() == 1 {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
