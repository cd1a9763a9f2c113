//! HTTP/1 requests framed two ways at once.
//!
//! A request carrying both `Content-Length` and `Transfer-Encoding` is how
//! request smuggling starts: two parsers that pick different headers see
//! different requests. hyper follows RFC 9112 §6.1 (the chunked framing wins,
//! the connection is closed afterwards) but drops `Content-Length` without
//! telling the service, so the request would still be forwarded. We refuse
//! it outright. To see what hyper hides, each HTTP/1 connection keeps the
//! last bytes it received; a request that arrives with `Transfer-Encoding`
//! has its head looked up there. Requests without it cost nothing.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use memchr::memmem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much of the recent input a connection keeps. It grows only as bytes
/// arrive, so an idle long-poll holds little more than its request head.
const WINDOW: usize = 16 * 1024;

/// The most recent bytes a connection received.
#[derive(Debug, Default)]
pub struct RecentInput {
    bytes: Mutex<VecDeque<u8>>,
}

impl RecentInput {
    fn record(&self, read: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if read.len() > WINDOW {
            // hyper dispatches a request as soon as its head is parsed, so a
            // head is at the start of the latest read or spans the last few:
            // keep both ends of a large read.
            bytes.clear();
            bytes.extend(&read[..WINDOW / 2]);
            bytes.extend(&read[read.len() - WINDOW / 2..]);
            return;
        }
        let overflow = (bytes.len() + read.len()).saturating_sub(WINDOW);
        bytes.drain(..overflow);
        bytes.extend(read);
    }

    /// Whether a head of the request `method target` set `Content-Length`;
    /// `None` when no such head is in the window. Every occurrence of the
    /// request line counts, wherever it is: a look-alike (in a header value,
    /// a body, a later request) can then only make the answer stricter, never
    /// hide the real head.
    pub fn head_has_content_length(&self, method: &str, target: &str) -> Option<bool> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = bytes.make_contiguous();
        let mut found = false;
        for head in heads(bytes, method, target) {
            found = true;
            let has_length = head.split(|b| *b == b'\n').any(|line| {
                line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
            });
            if has_length {
                return Some(true);
            }
        }
        found.then_some(false)
    }
}

/// The heads in `bytes` whose request line is `method target HTTP/1.x`, each
/// up to its blank line.
fn heads<'a>(bytes: &'a [u8], method: &'a str, target: &'a str) -> impl Iterator<Item = &'a [u8]> {
    let (method, target) = (method.as_bytes(), target.as_bytes());
    memmem::find_iter(bytes, target).filter_map(move |at| {
        let start = at.checked_sub(method.len() + 1)?;
        let opened = bytes[start..at - 1] == *method && bytes[at - 1] == b' ';
        let rest = &bytes[at + target.len()..];
        if !(opened && rest.starts_with(b" HTTP/1.")) {
            return None;
        }
        let end = memmem::find(rest, b"\r\n\r\n")?;
        Some(&bytes[start..at + target.len() + end])
    })
}

/// An HTTP/1 connection's I/O, recording what it reads into a shared
/// [`RecentInput`].
pub struct Recording<I> {
    inner: I,
    recent: std::sync::Arc<RecentInput>,
}

impl<I> Recording<I> {
    pub fn new(inner: I, recent: std::sync::Arc<RecentInput>) -> Self {
        Recording { inner, recent }
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
                self.recent.record(read);
            }
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Recording<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
mod tests {
    use super::*;

    fn recent(chunks: &[&[u8]]) -> RecentInput {
        let recent = RecentInput::default();
        for chunk in chunks {
            recent.record(chunk);
        }
        recent
    }

    #[test]
    fn finds_content_length_in_the_matching_head() {
        let r = recent(&[
            b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(false));
        let r = recent(&[
            b"POST /b HTTP/1.1\r\nconTent-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(true));
    }

    #[test]
    fn a_body_that_looks_like_headers_does_not_count() {
        let r = recent(&[
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1a\r\nContent-Length: 5\r\n\r\n..\r\n0\r\n\r\n",
        ]);
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(false));
    }

    #[test]
    fn the_window_is_bounded() {
        let r = RecentInput::default();
        r.record(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        r.record(&vec![b'x'; WINDOW]);
        assert_eq!(r.head_has_content_length("POST", "/b"), None);
        assert_eq!(r.bytes.lock().unwrap().len(), WINDOW);
        r.record(b"tail");
        assert_eq!(r.bytes.lock().unwrap().len(), WINDOW);
    }

    #[test]
    fn a_head_at_the_start_of_a_large_read_is_kept() {
        let r = RecentInput::default();
        let mut read =
            b"POST /b HTTP/1.1\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        read.extend(vec![b'x'; 3 * WINDOW]);
        r.record(&read);
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(true));
    }

    #[test]
    fn a_look_alike_head_later_on_does_not_hide_the_real_one() {
        let r = recent(&[
            b"POST /b HTTP/1.1\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(true));
        // Nor one inside the real head.
        let r = recent(&[
            b"POST /b HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX: POST /b HTTP/1.1\r\n\r\n",
        ]);
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(true));
    }

    #[test]
    fn a_head_right_after_a_body_is_found() {
        let r = recent(&[
            b"POST /a HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
            b"PUT /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert_eq!(r.head_has_content_length("PUT", "/b"), Some(false));
        assert_eq!(r.head_has_content_length("PUT", "/b/c"), None);
        assert_eq!(r.head_has_content_length("GET", "/b"), None);
    }
}
