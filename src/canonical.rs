//! The first phase: decide whether a request target can be read only one way.
//!
//! Path-confusion advisories in comparable gateways (Envoy, Traefik,
//! Oathkeeper) all come from the gateway and the backend reading one target
//! two ways. We do not normalise: we refuse every form that a second parser
//! could read differently, match on the raw segments, and forward the very
//! bytes we matched.

use std::fmt;

use http::{Uri, Version};
use memchr::memchr;

/// A request target that passed [`canonicalize`]: `path` is the raw,
/// still-encoded path, split on raw `/` by the matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Why a target was refused; each answers 400 with a message naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    AbsoluteForm,
    NotOriginForm,
    TooLong,
    DotSegment,
    EmptySegment,
    NulByte,
    Backslash,
    BadPercentEncoding,
    NotUtf8,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::AbsoluteForm => "absolute-form request targets are not accepted",
            TargetError::NotOriginForm => "the request target must be a path starting with '/'",
            TargetError::TooLong => "the request path is too long",
            TargetError::DotSegment => "the request path contains a '.' or '..' segment",
            TargetError::EmptySegment => "the request path contains an empty segment ('//')",
            TargetError::NulByte => "the request path contains an encoded NUL byte",
            TargetError::Backslash => "the request path contains a backslash",
            TargetError::BadPercentEncoding => "the request path has invalid percent-encoding",
            TargetError::NotUtf8 => "the request path does not decode to UTF-8",
        })
    }
}

/// Refuse what two parsers could read differently: the pipeline's first phase
/// (`gate/mod.rs`), before any rule sees the path.
pub fn canonicalize(
    uri: &Uri,
    version: Version,
    max_path: usize,
) -> Result<Target<'_>, TargetError> {
    // HTTP/2 always carries :scheme and :authority; in HTTP/1 only the
    // absolute form does, and RFC 9112 §3.2.2 reserves it for proxies.
    if version < Version::HTTP_2 && uri.authority().is_some() {
        return Err(TargetError::AbsoluteForm);
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    if path.len() > max_path {
        return Err(TargetError::TooLong);
    }
    // Most paths have neither: then no segment needs searching for them.
    let rare = Rare {
        backslash: memchr(b'\\', path.as_bytes()).is_some(),
        percent: memchr(b'%', path.as_bytes()).is_some(),
    };
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        // A trailing empty segment is legitimate (empty state keys); the
        // rules decide whether a route accepts it.
        if segment.is_empty() && segments.peek().is_some() {
            return Err(TargetError::EmptySegment);
        }
        check_segment(segment, rare)?;
    }
    Ok(Target {
        path,
        query: uri.query(),
    })
}

/// Which of the bytes that need a closer look occur anywhere in the path.
#[derive(Clone, Copy)]
struct Rare {
    backslash: bool,
    percent: bool,
}

fn check_segment(segment: &str, rare: Rare) -> Result<(), TargetError> {
    if rare.backslash && segment.contains('\\') {
        return Err(TargetError::Backslash);
    }
    if !rare.percent || !segment.contains('%') {
        return match segment {
            "." | ".." => Err(TargetError::DotSegment),
            _ => Ok(()),
        };
    }
    let mut decoded = Utf8Stream::default();
    let mut dots = 0usize;
    let mut len = 0usize;
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
            let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(TargetError::BadPercentEncoding);
            };
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            bytes[i - 1]
        };
        match byte {
            0 => return Err(TargetError::NulByte),
            b'\\' => return Err(TargetError::Backslash),
            b'.' => dots += 1,
            _ => {}
        }
        len += 1;
        decoded.push(byte)?;
    }
    decoded.finish()?;
    if dots == len && len <= 2 {
        return Err(TargetError::DotSegment);
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Validates decoded bytes as UTF-8 in fixed-size chunks, so checking a
/// segment never allocates.
#[derive(Default)]
struct Utf8Stream {
    buf: [u8; 32],
    len: usize,
}

impl Utf8Stream {
    fn push(&mut self, byte: u8) -> Result<(), TargetError> {
        if self.len == self.buf.len() {
            self.drain()?;
        }
        self.buf[self.len] = byte;
        self.len += 1;
        Ok(())
    }

    /// Validates the buffer, keeping an incomplete trailing sequence.
    fn drain(&mut self) -> Result<(), TargetError> {
        match std::str::from_utf8(&self.buf[..self.len]) {
            Ok(_) => self.len = 0,
            Err(e) if e.error_len().is_none() => {
                let tail = e.valid_up_to();
                self.buf.copy_within(tail..self.len, 0);
                self.len -= tail;
            }
            Err(_) => return Err(TargetError::NotUtf8),
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), TargetError> {
        self.drain()?;
        if self.len == 0 {
            Ok(())
        } else {
            Err(TargetError::NotUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(target: &str) -> Result<Target<'static>, TargetError> {
        let uri: &'static Uri = Box::leak(Box::new(target.parse::<Uri>().unwrap()));
        canonicalize(uri, Version::HTTP_11, crate::config::DEFAULT_MAX_PATH_BYTES)
    }

    #[test]
    fn matrix_paths_pass_untouched() {
        let t =
            check("/_matrix/client/v3/rooms/!abc%3Aexample.org/send/m.room.message/1?x=1").unwrap();
        assert_eq!(
            t.path,
            "/_matrix/client/v3/rooms/!abc%3Aexample.org/send/m.room.message/1"
        );
        assert_eq!(t.query, Some("x=1"));
        // An encoded slash stays inside its segment; an id may hold dots.
        check("/_matrix/client/v3/rooms/!r:x/event/$ab%2Fcd").unwrap();
        check("/_matrix/client/v3/directory/room/%23caf%C3%A9%3Aexample.org").unwrap();
        check("/_matrix/client/v3/rooms/!r:x/state/m.room.name/").unwrap();
        check("/_matrix/client/v3/profile/@a.b:x/displayname").unwrap();
        check("/a/...").unwrap();
    }

    #[test]
    fn dot_segments_in_every_spelling() {
        for t in [
            "/_matrix/client/v3/../../admin",
            "/_matrix/./client",
            "/_matrix/%2e%2e/admin",
            "/_matrix/%2E./admin",
            "/_matrix/.%2e",
            "/_matrix/%2e",
        ] {
            assert_eq!(check(t), Err(TargetError::DotSegment), "{t}");
        }
    }

    #[test]
    fn ambiguous_forms() {
        assert_eq!(check("/_matrix//client"), Err(TargetError::EmptySegment));
        assert_eq!(check("//_matrix"), Err(TargetError::EmptySegment));
        assert_eq!(check("/a//"), Err(TargetError::EmptySegment));
        assert_eq!(check("/a%00b"), Err(TargetError::NulByte));
        assert_eq!(check("/a%5Cb"), Err(TargetError::Backslash));
        assert_eq!(check("/a%zzb"), Err(TargetError::BadPercentEncoding));
        assert_eq!(check("/a%4"), Err(TargetError::BadPercentEncoding));
        assert_eq!(check("/a%C3%28"), Err(TargetError::NotUtf8));
        assert_eq!(check("/a%C3"), Err(TargetError::NotUtf8));
        assert_eq!(
            check("http://evil/_matrix/client/versions"),
            Err(TargetError::AbsoluteForm)
        );
        assert_eq!(check("*"), Err(TargetError::NotOriginForm));
    }

    #[test]
    fn long_multibyte_segments_split_across_chunks() {
        let ok = "/a/".to_string() + &"%C3%A9".repeat(100);
        check(Box::leak(ok.into_boxed_str())).unwrap();
        let bad = "/a/".to_string() + &"%C3%A9".repeat(40) + "%C3";
        assert_eq!(
            check(Box::leak(bad.into_boxed_str())),
            Err(TargetError::NotUtf8)
        );
    }

    #[test]
    fn path_length_is_bounded() {
        let uri: Uri = format!("/{}", "a".repeat(100)).parse().unwrap();
        assert_eq!(
            canonicalize(&uri, Version::HTTP_11, 50),
            Err(TargetError::TooLong)
        );
    }

    #[test]
    fn http2_targets_carry_an_authority() {
        let uri: Uri = "https://hs.example.org/_matrix/client/versions"
            .parse()
            .unwrap();
        assert!(canonicalize(&uri, Version::HTTP_2, crate::config::DEFAULT_MAX_PATH_BYTES).is_ok());
    }
}
