//! Scope templates: `org.matrix.msc2762.timeline:{roomId}`.
//!
//! A template is literal text with placeholders naming the route's captures.
//! It is never expanded into a string on the hot path and a token's scope is
//! never split to recover ids (they contain `:`): a token scope is compared
//! piece by piece against the template's literals and the percent-decoded
//! captured segments.
//!
//! Two rules keep captured values from forging grants:
//!
//! * Only the token may carry the wildcard. A token scope with `*` exactly in
//!   a placeholder's position matches any value of that one placeholder; a
//!   captured value `*` is just the byte `*` and matches only a literal `*`.
//! * `#` separates a type from its qualifier in widget capabilities
//!   (`send.state_event:m.room.member#@alice:example.org`,
//!   `send.event:m.room.message#m.text`). A value filled in before the
//!   template's first `#` (or into a template without `#`) must not contain
//!   `#`, so an event type captured from the path cannot forge a qualifier.
//!   Such a value satisfies no template (fail closed).

use std::fmt;
use std::str::FromStr;

use percent_encoding::percent_decode;

use super::path::is_name;
use super::scope;

const UNSTABLE_PREFIX: &str = "urn:matrix:org.matrix.msc2967.client:";
const STABLE_PREFIX: &str = "urn:matrix:client:";

/// A part of a template as written, placeholders still by name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Written {
    Lit(Box<str>),
    Name(Box<str>),
}

/// A scope template as written in the rule file, aliases normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScopeTemplate {
    text: Box<str>,
    parts: Vec<Written>,
}

impl ScopeTemplate {
    /// Binds placeholder names to capture slots; `Err(name)` for a name that
    /// is not among `captures`.
    pub(crate) fn bind(&self, captures: &[&str]) -> Result<Template, String> {
        let mut seen_hash = false;
        let mut pieces = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            pieces.push(match part {
                Written::Lit(s) => {
                    seen_hash |= s.contains('#');
                    Piece::Lit(s.clone())
                }
                Written::Name(n) => {
                    let slot = captures
                        .iter()
                        .position(|c| **c == **n)
                        .ok_or_else(|| n.to_string())?;
                    Piece::Cap {
                        slot,
                        plain: !seen_hash,
                    }
                }
            });
        }
        let bit = match &pieces[..] {
            [Piece::Lit(s)] => scope::bit(s),
            _ => 0,
        };
        Ok(Template {
            text: self.text.clone(),
            pieces: pieces.into(),
            bit,
        })
    }
}

impl fmt::Display for ScopeTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ScopeTemplate {
    type Err = String;

    fn from_str(written: &str) -> Result<Self, String> {
        // Rule side of the alias: the unstable MSC2967 names are the stable ones.
        let text = match written.strip_prefix(UNSTABLE_PREFIX) {
            Some(rest) => format!("{STABLE_PREFIX}{rest}"),
            None => written.to_owned(),
        };
        if text.is_empty() {
            return Err("empty scope".into());
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "scope `{text}` contains {c:?}: scopes are space-separated tokens"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(0) if rest.starts_with('{') => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed `{{` in `{text}`"))?;
                    let name = &rest[1..end];
                    if !is_name(name) {
                        return Err(format!("bad placeholder `{{{name}}}` in `{text}`"));
                    }
                    if matches!(parts.last(), Some(Written::Name(_))) {
                        return Err(format!(
                            "placeholders in `{text}` need literal text between them"
                        ));
                    }
                    parts.push(Written::Name(name.into()));
                    rest = &rest[end + 1..];
                }
                Some(0) => return Err(format!("unmatched `}}` in `{text}`")),
                Some(i) => {
                    parts.push(Written::Lit(rest[..i].into()));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Written::Lit(rest.into()));
                    rest = "";
                }
            }
        }
        Ok(ScopeTemplate {
            text: text.into(),
            parts,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(Box<str>),
    /// `plain`: the value must not contain `#` (see the module docs).
    Cap {
        slot: usize,
        plain: bool,
    },
}

/// A scope template bound to one route's capture slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    text: Box<str>,
    pieces: Box<[Piece]>,
    /// The scope-set mask bit of a literal template; 0 otherwise.
    bit: u64,
}

impl Template {
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The mask bit of [`Template::literal`] (see `ScopeSet`).
    pub(crate) fn bit(&self) -> u64 {
        self.bit
    }

    /// The whole scope when the template has no placeholder.
    pub(crate) fn literal(&self) -> Option<&str> {
        match &*self.pieces {
            [Piece::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Literal text every matching token scope starts with.
    pub(crate) fn prefix(&self) -> &str {
        match self.pieces.first() {
            Some(Piece::Lit(s)) => s,
            _ => "",
        }
    }

    /// Does the token scope `scope` grant this template for these captures?
    /// No allocation.
    pub(crate) fn matches(&self, scope: &str, captures: &[&str]) -> bool {
        match_pieces(&self.pieces, scope.as_bytes(), captures)
    }

    /// Could some request's captures make `scope` match? (Placeholders
    /// accept any value.) Used to tell whether a token is meant for us.
    pub(crate) fn could_match(&self, scope: &str) -> bool {
        could_match(&self.pieces, scope.as_bytes())
    }

    /// The scope this template demands for these captures, values decoded.
    pub(crate) fn render(&self, captures: &[&str]) -> String {
        let mut out = String::with_capacity(self.text.len());
        for piece in &*self.pieces {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Cap { slot, .. } => out.push_str(&decode(captures[*slot])),
            }
        }
        out
    }
}

/// Percent-decodes a captured segment for display (lossy on bad UTF-8, which
/// the canonicalizer has already refused).
pub(crate) fn decode(raw: &str) -> String {
    percent_decode(raw.as_bytes())
        .decode_utf8_lossy()
        .into_owned()
}

fn match_pieces(pieces: &[Piece], scope: &[u8], captures: &[&str]) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return scope.is_empty();
    };
    match first {
        Piece::Lit(lit) => scope
            .strip_prefix(lit.as_bytes())
            .is_some_and(|s| match_pieces(rest, s, captures)),
        Piece::Cap { slot, plain } => {
            // The token's wildcard stands for the whole value of this placeholder.
            if let Some(after) = scope.strip_prefix(b"*") {
                if match_pieces(rest, after, captures) {
                    return true;
                }
            }
            let mut s = scope;
            for byte in percent_decode(captures[*slot].as_bytes()) {
                if *plain && byte == b'#' {
                    return false;
                }
                match s.split_first() {
                    Some((&b, tail)) if b == byte => s = tail,
                    _ => return false,
                }
            }
            match_pieces(rest, s, captures)
        }
    }
}

fn could_match(pieces: &[Piece], scope: &[u8]) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return scope.is_empty();
    };
    match first {
        Piece::Lit(lit) => scope
            .strip_prefix(lit.as_bytes())
            .is_some_and(|s| could_match(rest, s)),
        Piece::Cap { .. } => (1..=scope.len()).any(|n| could_match(rest, &scope[n..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(t: &str, captures: &[&str]) -> Template {
        t.parse::<ScopeTemplate>().unwrap().bind(captures).unwrap()
    }

    #[test]
    fn literal_templates_compare_whole() {
        let t = bind("urn:matrix:client:api:*", &[]);
        assert_eq!(t.literal(), Some("urn:matrix:client:api:*"));
        assert!(t.matches("urn:matrix:client:api:*", &[]));
        assert!(!t.matches("urn:matrix:client:api:*x", &[]));
        assert!(!t.matches("urn:matrix:client:api:", &[]));
    }

    #[test]
    fn unstable_alias_is_normalised() {
        let t: ScopeTemplate = "urn:matrix:org.matrix.msc2967.client:api:*"
            .parse()
            .unwrap();
        assert_eq!(t.to_string(), "urn:matrix:client:api:*");
    }

    #[test]
    fn captures_compare_decoded() {
        let t = bind("org.matrix.msc2762.timeline:{roomId}", &["roomId"]);
        let scope = "org.matrix.msc2762.timeline:!abc:example.org";
        assert!(t.matches(scope, &["!abc:example.org"]));
        assert!(t.matches(scope, &["%21abc%3Aexample.org"]));
        assert!(!t.matches(scope, &["!abc:example.or"]));
        assert!(!t.matches(scope, &["!abc:example.org:8448"]));
        assert_eq!(t.render(&["%21abc%3Aexample.org"]), scope);
    }

    #[test]
    fn only_the_token_carries_the_wildcard() {
        let t = bind("org.matrix.msc2762.timeline:{roomId}", &["roomId"]);
        assert!(t.matches("org.matrix.msc2762.timeline:*", &["!abc:x"]));
        assert!(!t.matches("org.matrix.msc2762.timeline:!abc:x", &["*"]));
        assert!(!t.matches("org.matrix.msc2762.timeline:!abc:x", &["%2A"]));
        // `*` followed by more text is not a wildcard, just a value.
        assert!(!t.matches("org.matrix.msc2762.timeline:*:x", &["!abc:x"]));
    }

    #[test]
    fn wildcard_covers_one_placeholder_only() {
        let t = bind("send.state_event:{type}#{key}", &["type", "key"]);
        assert!(t.matches("send.state_event:*#@a:x", &["m.room.member", "%40a%3Ax"]));
        assert!(!t.matches("send.state_event:*#@a:x", &["m.room.member", "@b:x"]));
        assert!(t.matches(
            "send.state_event:m.room.member#*",
            &["m.room.member", "@b:x"]
        ));
        assert!(!t.matches("send.state_event:*", &["m.room.member", "@b:x"]));
    }

    #[test]
    fn a_captured_hash_cannot_forge_a_qualifier() {
        let send = bind("send.event:{type}", &["type"]);
        assert!(!send.matches(
            "send.event:m.room.message#m.text",
            &["m.room.message%23m.text"]
        ));
        let state = bind("send.state_event:{type}#{key}", &["type", "key"]);
        // The state key comes after the first `#`: it may contain `#`.
        assert!(state.matches("send.state_event:t#a#b", &["t", "a%23b"]));
        assert!(!state.matches("send.state_event:t#a#b", &["t%23a", "b"]));
    }

    #[test]
    fn could_match_treats_placeholders_as_anything() {
        let t = bind("org.matrix.msc2762.send.event:{type}", &["type"]);
        assert!(t.could_match("org.matrix.msc2762.send.event:m.room.message"));
        assert!(!t.could_match("org.matrix.msc2762.send.event:"));
        assert!(!t.could_match("org.matrix.msc2762.send.state_event:x"));
    }

    #[test]
    fn grammar_errors() {
        for bad in ["", "a b", "a:{x", "a:}", "a:{1}", "a:{x}{y}", "a\tb"] {
            assert!(bad.parse::<ScopeTemplate>().is_err(), "{bad:?}");
        }
        let t: ScopeTemplate = "a:{x}#{y}".parse().unwrap();
        assert_eq!(t.bind(&["x"]), Err("y".to_owned()));
    }
}
