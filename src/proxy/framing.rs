//! HTTP/1 requests framed two ways at once.
//!
//! A request carrying both `Content-Length` and `Transfer-Encoding` is how
//! request smuggling starts: two parsers that pick different headers see
//! different requests. hyper follows RFC 9112 §6.1 (the chunked framing wins,
//! the connection is closed afterwards) but drops `Content-Length` without
//! telling the service, so the request would still be forwarded. We refuse
//! it outright. To see what hyper hides, each HTTP/1 connection keeps the
//! bytes it received since its previous request was dispatched; a request
//! that arrives with `Transfer-Encoding` has its head looked up there.
//! Requests without it cost a copy of their bytes, and an idle connection
//! keeps at most a small buffer. A chunked request pipelined behind another
//! in the same read is no longer in the record when its turn comes, and is
//! refused: smuggling looks exactly like that.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use memchr::memmem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much of the recent input a connection keeps: a request head and more.
const WINDOW: usize = 16 * 1024;

/// The capacity a connection keeps between requests: enough for a usual
/// head, so that the next one is recorded without allocating.
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

    /// The request `method target` was dispatched: the bytes up to the end
    /// of its head are of no further use. Dropped once they pass [`KEEP`],
    /// so that most requests search nothing; what follows the head (its
    /// body, a pipelined request) stays.
    pub fn dispatched(&self, method: &str, target: &str) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if bytes.len() <= KEEP {
            return;
        }
        let contiguous = bytes.make_contiguous();
        match head_at(contiguous, method, target) {
            Some((start, len)) => {
                bytes.drain(..start + len);
                if bytes.capacity() > 2 * KEEP && bytes.len() <= KEEP {
                    bytes.shrink_to(KEEP);
                }
            }
            None => *bytes = VecDeque::new(),
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
    memmem::rfind_iter(bytes, target).find_map(|at| {
        let line_start = at.checked_sub(method.len() + 1)?;
        let starts_line = line_start == 0 || bytes[line_start - 1] == b'\n';
        let opened = bytes[line_start..at - 1] == *method && bytes[at - 1] == b' ';
        let rest = &bytes[at + target.len()..];
        if !(starts_line && opened && rest.starts_with(b" HTTP/1.")) {
            return None;
        }
        let end = memmem::find(rest, b"\r\n\r\n")?;
        Some((line_start, at + target.len() + end + 4 - line_start))
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
    fn a_dispatched_head_is_dropped_and_what_follows_it_kept() {
        let first = "GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let next = "POST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Small records are left alone: no search on most requests.
        let r = recent(&[first.as_bytes(), next.as_bytes()]);
        r.dispatched("GET", "/a?x=1");
        assert_eq!(r.bytes.lock().unwrap().len(), first.len() + next.len());
        // Past KEEP, everything through the dispatched head goes; the
        // pipelined request behind it can still be checked.
        let padding = format!("X-Pad: {}\r\n\r\n", "p".repeat(KEEP));
        let big_first = first.replace("\r\n\r\n", &format!("\r\n{padding}"));
        let r = recent(&[big_first.as_bytes(), next.as_bytes()]);
        r.dispatched("GET", "/a?x=1");
        assert_eq!(r.bytes.lock().unwrap().len(), next.len());
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(true));
        // A head that cannot be found: nothing is kept.
        let r = recent(&[big_first.as_bytes()]);
        r.dispatched("GET", "/elsewhere");
        assert_eq!(r.bytes.lock().unwrap().capacity(), 0);
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
