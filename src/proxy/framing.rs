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
//! an idle connection holds little. A chunked request pipelined behind
//! another, when it and what followed it in the same reads pass 2 KiB, can
//! no longer be checked and is refused. The record always starts at a line
//! (a cut moves past the line it falls in), and every head with the request
//! line in question counts, so that no fragment or look-alike can stand in
//! for the real head.

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
    record: Mutex<Record>,
}

/// Recent input whose first byte always starts a line: a cut in the middle
/// of a line is moved past its end, so that no line fragment can pose as a
/// request line.
#[derive(Debug)]
struct Record {
    bytes: VecDeque<u8>,
    /// Offset 0 starts a line. False only while nothing is kept.
    aligned: bool,
}

impl Default for Record {
    fn default() -> Self {
        // A connection's input starts with a request line.
        Record {
            bytes: VecDeque::new(),
            aligned: true,
        }
    }
}

impl Record {
    /// Drops the first `n` bytes, and then the rest of the line they cut.
    fn cut(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.aligned = self.bytes.get(n - 1) == Some(&b'\n');
        self.bytes.drain(..n.min(self.bytes.len()));
        self.realign();
    }

    fn realign(&mut self) {
        if self.aligned {
            return;
        }
        match self.bytes.iter().position(|b| *b == b'\n') {
            Some(end) => {
                self.bytes.drain(..=end);
                self.aligned = true;
            }
            None => self.bytes.clear(),
        }
    }
}

impl RecentInput {
    fn record(&self, read: &[u8]) {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if read.len() > WINDOW {
            // hyper dispatches a request as soon as its head is parsed, so a
            // head is at the start of the latest read or spans the last few:
            // keep both ends of a large read, apart (no line runs across the
            // gap: a NUL is never part of a request line).
            let len = record.bytes.len();
            record.cut(len);
            record.bytes.extend(&read[..WINDOW / 2]);
            record.bytes.push_back(0);
            record.bytes.extend(&read[read.len() - WINDOW / 2..]);
        } else {
            let overflow = (record.bytes.len() + read.len()).saturating_sub(WINDOW);
            record.cut(overflow);
            record.bytes.extend(read);
        }
        record.realign();
    }

    /// A request was dispatched and checked: only the last [`KEEP`] bytes
    /// are kept, enough for a pipelined request that follows, if it and what
    /// came after it in the same reads fit (a chunked one that does not is
    /// refused: it can no longer be checked). Without this, an idle
    /// keep-alive connection or a waiting long-poll would hold a full window.
    pub fn dispatched(&self) {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let excess = record.bytes.len().saturating_sub(KEEP);
        record.cut(excess);
        if record.bytes.capacity() > 2 * KEEP {
            record.bytes.shrink_to(KEEP);
        }
    }

    /// Whether a head of the request `method target` also set
    /// `Content-Length`; `None` when no such head is left in the record. Any
    /// head with that request line counts: a look-alike line further on (in
    /// a body, in a later request) must not hide the real one.
    pub fn head_has_content_length(&self, method: &str, target: &str) -> Option<bool> {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = record.bytes.make_contiguous();
        let mut found = false;
        for (start, len) in heads(bytes, method, target) {
            found = true;
            let has_length = bytes[start..start + len]
                .split(|b| *b == b'\n')
                .any(|line| {
                    line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
                });
            if has_length {
                return Some(true);
            }
        }
        found.then_some(false)
    }
}

/// The heads in `bytes` (which starts a line) whose request line is
/// `method target HTTP/1.x`: start and length of each, up to and including
/// the blank line.
fn heads<'a>(
    bytes: &'a [u8],
    method: &'a str,
    target: &'a str,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    let (method, target) = (method.as_bytes(), target.as_bytes());
    memmem::find_iter(bytes, target).filter_map(move |at| {
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
        assert_eq!(r.record.lock().unwrap().bytes.len(), WINDOW);
        // Cutting into the line of x's drops the rest of it: a fragment of a
        // line is never kept as if it started one.
        r.record(b"tail\r\nPOST /b HTTP/1.1\r\n\r\n");
        assert_eq!(r.record.lock().unwrap().bytes.len(), 20);
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(false));
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
        let record = r.record.lock().unwrap();
        // What is left starts at a line: the end of the padding line went
        // with the cut into it.
        assert_eq!(record.bytes.len(), 2 + next.len());
        assert!(record.bytes.capacity() <= 2 * KEEP);
    }

    #[test]
    fn a_cut_cannot_make_a_fragment_pose_as_a_request_line() {
        // A pipelined request with both framings, whose padding ends with
        // text shaped like a request line, placed so that keeping the last
        // KEEP bytes would start the record right at that text.
        let fake = "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let filler = "f".repeat(KEEP - fake.len());
        let pipelined = format!(
            "POST /b HTTP/1.1\r\nContent-Length: 10\r\nX-Pad: {}{fake}{filler}",
            "p".repeat(KEEP)
        );
        let r = recent(&[b"GET /a HTTP/1.1\r\n\r\n", pipelined.as_bytes()]);
        r.dispatched();
        assert_ne!(r.head_has_content_length("POST", "/b"), Some(false));
    }

    #[test]
    fn a_look_alike_head_later_on_does_not_hide_the_real_one() {
        let r = recent(&[
            b"POST /b HTTP/1.1\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert_eq!(r.head_has_content_length("POST", "/b"), Some(true));
    }

    #[test]
    fn the_two_ends_of_a_large_read_do_not_join_into_a_line() {
        // The head kept from the start of the read ends its first half with
        // a line end; the second half starts inside a line with text shaped
        // like a request line.
        let mut read = b"GET /a HTTP/1.1\r\nX-Pad: ".to_vec();
        read.resize(WINDOW / 2 - 2, b'p');
        read.extend(b"\r\n");
        read.resize(2 * WINDOW, b'q');
        let fake = b"POST /b HTTP/1.1\r\n\r\n";
        let tail_start = read.len() - WINDOW / 2;
        read[tail_start..tail_start + fake.len()].copy_from_slice(fake);
        let r = RecentInput::default();
        r.record(&read);
        assert_eq!(r.head_has_content_length("POST", "/b"), None);
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
