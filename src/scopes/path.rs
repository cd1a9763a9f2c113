//! Path templates: `/_matrix/client/{versions}/rooms/{roomId}/send/{eventType}/{txnId}`.
//!
//! A template is a list of `/`-separated parts, matched against the raw
//! (still percent-encoded) segments of a request path:
//!
//! * a literal matches exactly that raw segment;
//! * `{name}` captures exactly one segment, which may be empty only when it is
//!   the last one (a trailing `/`: empty state keys);
//! * `{name..}` (last part only) captures the rest of the path, zero or more
//!   segments, for prefix rules;
//! * `{versions}` (at most once) stands for the rule's client API versions, so
//!   one rule covers `r0`, `v3`, `unstable`… without copying it per version.
//!
//! Literals never contain `%`: a matcher on raw segments and a server matching
//! its own regexes on the raw path (Synapse) then agree on what a literal is.

use std::fmt;
use std::str::FromStr;

/// The placeholder that stands for the rule's version segments.
pub(crate) const VERSIONS: &str = "versions";

/// One part of a template as written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(Box<str>),
    Versions,
    Cap(Box<str>),
    Tail(Box<str>),
}

/// One segment of a template after `{versions}` is expanded: what the matcher
/// and the checker work on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Seg {
    Lit(Box<str>),
    Cap,
    Tail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    text: Box<str>,
    parts: Vec<Part>,
}

impl PathTemplate {
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn has_versions(&self) -> bool {
        self.parts.contains(&Part::Versions)
    }

    /// Capture names in path order (the tail last, if any).
    pub(crate) fn captures(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Cap(n) | Part::Tail(n) => Some(&**n),
            _ => None,
        })
    }

    /// The concrete segment lists this template stands for: one per version,
    /// or just one when the template has no `{versions}`.
    pub(crate) fn expand(&self, versions: &[Version]) -> Vec<Vec<Seg>> {
        let one = |version: Option<&Version>| {
            let mut segs = Vec::with_capacity(self.parts.len() + 1);
            for part in &self.parts {
                match part {
                    Part::Lit(s) => segs.push(Seg::Lit(s.clone())),
                    Part::Cap(_) => segs.push(Seg::Cap),
                    Part::Tail(_) => segs.push(Seg::Tail),
                    Part::Versions => {
                        let v = version.expect("versions resolved before expansion");
                        segs.extend(v.0.iter().map(|s| Seg::Lit(s.clone())));
                    }
                }
            }
            segs
        };
        if self.has_versions() {
            versions.iter().map(|v| one(Some(v))).collect()
        } else {
            vec![one(None)]
        }
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: names of captures and of scope placeholders.
pub(crate) fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A literal segment: printable ASCII, no `%`, braces or `/`, and not a dot
/// segment (the canonicalizer refuses those in requests).
fn is_literal(s: &str) -> bool {
    s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b'{' | b'}' | b'/' | b'\\'))
}

impl FromStr for PathTemplate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let body = text
            .strip_prefix('/')
            .ok_or_else(|| format!("path `{text}` must start with `/`"))?;
        let raw: Vec<&str> = body.split('/').collect();
        let mut parts = Vec::with_capacity(raw.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, seg) in raw.iter().enumerate() {
            let last = i + 1 == raw.len();
            let part = if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
            {
                if inner == VERSIONS {
                    if parts.contains(&Part::Versions) {
                        return Err("`{versions}` appears twice".into());
                    }
                    Part::Versions
                } else {
                    let (name, tail) = match inner.strip_suffix("..") {
                        Some(n) => (n, true),
                        None => (inner, false),
                    };
                    if !is_name(name) {
                        return Err(format!(
                            "bad capture `{seg}` (want `{{name}}` or `{{name..}}`)"
                        ));
                    }
                    if names.contains(&name) {
                        return Err(format!("capture `{{{name}}}` appears twice"));
                    }
                    names.push(name);
                    if tail && !last {
                        return Err(format!("tail capture `{seg}` must be the last segment"));
                    }
                    if tail {
                        Part::Tail(name.into())
                    } else {
                        Part::Cap(name.into())
                    }
                }
            } else if seg.is_empty() && !last {
                return Err(format!("empty segment in `{text}`"));
            } else if !is_literal(seg) {
                return Err(format!(
                    "bad literal segment `{seg}` (no `%`, braces, backslash, space or control characters)"
                ));
            } else {
                Part::Lit((*seg).into())
            };
            parts.push(part);
        }
        Ok(PathTemplate {
            text: text.into(),
            parts,
        })
    }
}

/// A client API version as segments: `v3`, or `api/v1` (two segments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Version(Vec<Box<str>>);

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let segs: Vec<Box<str>> = s.split('/').map(Into::into).collect();
        if segs.iter().any(|seg| seg.is_empty() || !is_literal(seg)) {
            return Err(format!(
                "bad version `{s}` (segments of literal characters, `/`-separated)"
            ));
        }
        Ok(Version(segs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Seg {
        Seg::Lit(s.into())
    }

    #[test]
    fn parses_captures_tail_and_versions() {
        let t: PathTemplate = "/_matrix/client/{versions}/rooms/{roomId}/x/{rest..}"
            .parse()
            .unwrap();
        assert!(t.has_versions());
        assert_eq!(t.captures().collect::<Vec<_>>(), ["roomId", "rest"]);
        let versions = ["v3".parse().unwrap(), "api/v1".parse().unwrap()];
        let expanded = t.expand(&versions);
        assert_eq!(
            expanded[0],
            [
                lit("_matrix"),
                lit("client"),
                lit("v3"),
                lit("rooms"),
                Seg::Cap,
                lit("x"),
                Seg::Tail
            ]
        );
        assert_eq!(expanded[1][2..4], [lit("api"), lit("v1")]);
    }

    #[test]
    fn trailing_slash_is_an_empty_literal() {
        let t: PathTemplate = "/a/pushrules/".parse().unwrap();
        assert_eq!(t.expand(&[]), [vec![lit("a"), lit("pushrules"), lit("")]]);
    }

    #[test]
    fn refuses_malformed_templates() {
        for bad in [
            "a/b",
            "/a//b",
            "/a/{x}/{x}",
            "/a/{rest..}/b",
            "/a/{1x}",
            "/a/{}",
            "/a/%2F",
            "/a/b c",
            "/{versions}/{versions}",
            "/a/{x",
            "/a/../b",
        ] {
            assert!(bad.parse::<PathTemplate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_are_literal_segments() {
        assert!("unstable/org.matrix.msc3916".parse::<Version>().is_ok());
        for bad in ["", "v3/", "/v3", "v%33", "{v}"] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(is_name("roomId") && is_name("_x1"));
        assert!(!is_name("") && !is_name("1x") && !is_name("a-b"));
    }
}
