//! HTTP/1 requests framed two ways at once.
//!
//! A request carrying both `Content-Length` and `Transfer-Encoding` is how
//! request smuggling starts: two parsers that pick different headers see
//! different requests. hyper follows RFC 9112 §6.1 (the chunked framing wins,
//! the connection is closed afterwards) but drops `Content-Length` without
//! telling the service, so the request would still be forwarded. We refuse
//! it outright. To see what hyper hides, each HTTP/1 connection keeps the
//! bytes it received lately; a request that arrives with `Transfer-Encoding`
//! has its head looked up there. Requests without it cost a copy of their
//! bytes, and once a request is dispatched only the last 2 KiB are kept, so
//! an idle connection holds little. A chunked request with a head larger than
//! that, pipelined behind another, can no longer be checked and is refused.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use memchr::memmem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much of the recent input a connection keeps: a request head and more.
const WINDOW: usize = 16 * 1024;

/// What a connection keeps once a request is dispatched: a usual head.
const KEEP: usize = 2 * 1024;

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

    /// A request was dispatched and checked: only the last [`KEEP`] bytes
    /// are kept, enough for a pipelined head that follows (a larger one is
    /// refused if it is chunked: it can no longer be checked). Without
    /// this, an idle keep-alive connection or a waiting long-poll would hold
    /// a full window.
    pub fn dispatched(&self) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let excess = bytes.len().saturating_sub(KEEP);
        bytes.drain(..excess);
        if bytes.capacity() > 2 * KEEP {
            bytes.shrink_to(KEEP);
        }
    }

    /// Whether the head of the request `method target` also set
    /// `Content-Length`; `None` when that head is no longer in the window.
    pub fn head_has_content_length(&self, method: &str, target: &str) -> Option<bool> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = bytes.make_contiguous();
        let (start, len) = head_at(bytes, method, target)?;
        Some(
            bytes[start..start + len]
                .split(|b| *b == b'\n')
                .any(|line| {
                    line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
                }),
        )
    }
}

/// The latest head in `bytes` whose request line is `method target HTTP/1.x`:
/// its start and length, up to and including the blank line.
fn head_at(bytes: &[u8], method: &str, target: &str) -> Option<(usize, usize)> {
    let (method, target) = (method.as_bytes(), target.as_bytes());
    // Searched forwards, keeping the last: memmem's forward search is the
    // vectorised one.
    let heads = memmem::find_iter(bytes, target).filter_map(|at| {
        let line_start = at.checked_sub(method.len() + 1)?;
        let starts_line = line_start == 0 || bytes[line_start - 1] == b'\n';
        let opened = bytes[line_start..at - 1] == *method && bytes[at - 1] == b' ';
        let rest = &bytes[at + target.len()..];
        if !(starts_line && opened && rest.starts_with(b" HTTP/1.")) {
            return None;
        }
        let end = memmem::find(rest, b"\r\n\r\n")?;
        Some((line_start, at + target.len() + end + 4 - line_start))
    });
    heads.last()
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
    fn after_dispatch_only_the_latest_bytes_are_kept() {
        let padding = format!("X-Pad: {}\r\n", "p".repeat(4 * KEEP));
        let first = format!("GET /a HTTP/1.1\r\n{padding}\r\n");
        let next = "POST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let r = recent(&[first.as_bytes(), next.as_bytes()]);
        assert_eq!(r.head_has_content_length("GET", "/a"), Some(false));
        r.dispatched();
        // The pipelined head behind it can still be checked; the large
        // dispatched one is gone, and so is the memory it took.
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(true));
        assert_eq!(r.head_has_content_length("GET", "/a"), None);
        let bytes = r.bytes.lock().unwrap();
        assert_eq!(bytes.len(), KEEP);
        assert!(bytes.capacity() <= 2 * KEEP);
    }

    #[test]
    fn only_a_whole_request_line_matches() {
        let r = recent(&[b"POST /b/b HTTP/1.1\r\nX: GET /b HTTP/1.1\r\nContent-Length: 2\r\n\r\n"]);
        assert_eq!(r.head_has_content_length("GET", "/b"), None);
        assert_eq!(r.head_has_content_length("POST", "/b"), None);
        assert_eq!(r.head_has_content_length("POST", "/b/b"), Some(true));
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
}
