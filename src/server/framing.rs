//! HTTP/1 request framing: what hyper settles by itself, and a Matrix error
//! for what it refuses.
//!
//! Request smuggling needs two parsers that frame the same bytes differently
//! (RFC 9112 §11.2). The homeserver never sees a client's framing: hyper
//! decodes the body, `Transfer-Encoding` is dropped as hop-by-hop
//! (`proxy::headers`), and the upstream client frames the body anew. What is
//! left is hyper's own reading of the client. `tests/it/framing.rs` sends
//! each shape below raw, followed on the same connection by a second
//! request, to hyper alone (hyper 1.12, this server's HTTP/1 settings) and
//! to the gateway, and checks what the homeserver receives:
//!
//! | shape | hyper alone | gateway with the tracker | gateway now | homeserver gets |
//! |---|---|---|---|---|
//! | `Content-Length` and `Transfer-Encoding: chunked`, either order; or a second, different length after them; or `Content-Length: abc` after them | serves it once, by its chunks; drops the length; closes | 400 JSON, closes | 200, closes | the body, chunked, no length; never the next request |
//! | the same with `Transfer-Encoding: gzip, chunked` | the same | 400 JSON, closes | 200, closes | the same; the gzip coding is dropped unannounced, as for `gzip, chunked` alone |
//! | `Transfer-Encoding: Chunked`, `:\tchunked`, `chunked, chunked` | serves both requests | the same | the same | each body, chunked |
//! | `Transfer-Encoding: xchunked`, `chunked, identity`, `chunked` then `identity`, `identity` with a length; a space before the colon; obs-fold; a vertical tab | bare 400, closes | 400 JSON | 400 JSON | nothing |
//! | `Transfer-Encoding` in HTTP/1.0 | bare 400, closes | bare 400 | 400 JSON | nothing |
//! | two different lengths; `Content-Length: 12, 12` | bare 400, closes | 400 JSON | 400 JSON | nothing |
//! | `Content-Length: +12` | bare 400, closes | bare 400 | 400 JSON | nothing |
//! | `Transfer_Encoding: chunked` and a length | serves both, by the length | the same | the same | the length, and `transfer_encoding` as an ordinary field (Twisted frames by `transfer-encoding` only) |
//! | chunk size `0x2`; chunk lines ending in LF | body error, closes | 502, closes | 502, closes | nothing |
//!
//! The tracker that stood here (a second parser, httparse over every request
//! head, following each connection's framing) changed one thing: a request
//! framed both ways got a 400 instead of being served once by its chunks.
//! RFC 9112 §6.1 allows either, provided the connection closes after it,
//! which hyper does; it also drops the length before the gateway sees the
//! request (RFC 9112 §6.3 item 3). No shape reaches the homeserver framed
//! two ways, and no bytes after a body are read as a request. So the
//! tracker went, with its ≈ 3.9k instructions per request (callgrind, an
//! 8-field `PUT` head; the check below costs ≈ 13), and with its false
//! refusals of valid chunked requests. A proxy in front of the gateway must
//! frame such a request as RFC 9112 §6.3 says, by `Transfer-Encoding`, or
//! refuse it: one that framed it by `Content-Length` and kept the connection
//! would hand the gateway its next client's bytes as this body.
//!
//! hyper answers a head it refuses by itself, before the gateway sees a
//! request: a bare `400`, `414` or `431` with no body, then it closes the
//! connection. A Matrix client reads a JSON error, so [`MatrixRefusals`]
//! sits between hyper and the socket and writes
//! [`matrix_parser_refusal`]'s version instead. It does not parse requests:
//! a head written while no request is in flight, after the last response
//! was flushed whole, is hyper's own, since no body can be on its way out.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gate::matrix_parser_refusal;
use crate::proxy::body::ConnActivity;

/// A connection's I/O, giving hyper's own refusals of request heads a Matrix
/// JSON body.
pub struct MatrixRefusals<I> {
    inner: I,
    activity: Arc<ConnActivity>,
    /// How many requests had started when a flush last completed with none
    /// in flight. While that is still the count, nothing of a response is
    /// left to write: a response head written now is hyper's own.
    settled: usize,
    /// A refusal being written in place of hyper's bodiless one: the bytes,
    /// how many are out, and how long hyper's was.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<I> MatrixRefusals<I> {
    pub fn new(inner: I, activity: Arc<ConnActivity>) -> Self {
        MatrixRefusals {
            inner,
            activity,
            settled: 0,
            replacing: None,
        }
    }

    /// No request in flight, and the last response all flushed.
    fn between_responses(&self) -> bool {
        !self.activity.is_active() && self.activity.started() == self.settled
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for MatrixRefusals<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> MatrixRefusals<I> {
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

impl<I: AsyncWrite + Unpin> AsyncWrite for MatrixRefusals<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Between responses only: a response body can carry the same bytes.
        if self.replacing.is_none() && self.between_responses() {
            if let Some(refusal) = matrix_parser_refusal(buf) {
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
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        // hyper flushes its socket only once its own buffer is empty: if no
        // request is in flight now, the last response is all out.
        if matches!(flushed, Poll::Ready(Ok(()))) && !self.activity.is_active() {
            self.settled = self.activity.started();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
