//! Reading `scopes.toml` into rules with line numbers.
//!
//! ```toml
//! [options]
//! federation = true                    # pass /_matrix/federation and /_matrix/key through
//!
//! [versions]                           # named sets for `{versions}`
//! current = ["r0", "v3", "unstable"]
//!
//! [[rule]]
//! routes = ["PUT /_matrix/client/{versions}/rooms/{roomId}/send/{eventType}/{txnId}"]
//! versions = "current"                 # a set name, or an inline list
//! access = "protected"                 # the default; or public, optional, federation
//! allow = [                            # any of these alternatives…
//!   "urn:matrix:client:api:*",         # …a single scope,
//!   ["org.matrix.msc2762.send.event:{eventType}",   # …or all of a list
//!    "org.matrix.msc2762.timeline:{roomId}"],
//! ]
//! ```
//!
//! Shape errors (unknown keys, wrong types) come from the TOML reader with its
//! span; everything else is collected so one run reports every mistake.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::diag::Sink;
use super::method::MethodSet;
use super::path::{PathTemplate, Version};
use super::template::ScopeTemplate;
use super::Access;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    options: OptionsToml,
    #[serde(default)]
    versions: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsToml {
    #[serde(default = "yes")]
    federation: bool,
}

fn yes() -> bool {
    true
}

impl Default for OptionsToml {
    fn default() -> Self {
        OptionsToml { federation: true }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    route: Option<Spanned<String>>,
    routes: Option<Vec<Spanned<String>>>,
    access: Option<Spanned<String>>,
    versions: Option<Spanned<VersionsToml>>,
    allow: Option<Vec<Spanned<AlternativeToml>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VersionsToml {
    Named(String),
    Inline(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AlternativeToml {
    One(String),
    AllOf(Vec<String>),
}

/// One route of the file with everything it needs, not yet bound together.
pub(crate) struct RawRule {
    pub(crate) line: usize,
    pub(crate) methods: MethodSet,
    pub(crate) path: PathTemplate,
    pub(crate) access: Access,
    pub(crate) versions: Vec<Version>,
    /// Alternatives with the line each is written on.
    pub(crate) allow: Vec<(usize, Vec<ScopeTemplate>)>,
}

pub(crate) struct RawFile {
    pub(crate) federation: bool,
    pub(crate) rules: Vec<RawRule>,
}

pub(crate) fn parse(src: &str, sink: &mut Sink<'_>) -> Option<RawFile> {
    let file: FileToml = match toml::from_str(src) {
        Ok(f) => f,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            sink.error(offset, e.message().trim_end().to_owned());
            return None;
        }
    };

    let mut sets: BTreeMap<&str, (usize, Vec<Version>, bool)> = BTreeMap::new();
    for (name, list) in &file.versions {
        let line = sink.line_of(list.span().start);
        let versions = versions(list.get_ref(), line, sink);
        sets.insert(name, (line, versions, false));
    }

    let mut rules = Vec::new();
    for rule in &file.rule {
        let rule_line = sink.line_of(rule.span().start);
        let rule = rule.get_ref();

        let access = match &rule.access {
            None => Access::Protected,
            Some(a) => {
                match a.get_ref().as_str() {
                    "public" => Access::Public,
                    "optional" => Access::Optional,
                    "protected" => Access::Protected,
                    "federation" => Access::Federation,
                    other => {
                        sink.error(
                        a.span().start,
                        format!("unknown access `{other}` (public, optional, protected, federation)"),
                    );
                        continue;
                    }
                }
            }
        };

        let allow = alternatives(rule.allow.as_deref(), sink);
        let needs_allow = matches!(access, Access::Protected | Access::Optional);
        match (&rule.allow, needs_allow) {
            (Some(list), true) if list.is_empty() => sink.error_at_line(
                rule_line,
                "`allow` is empty: the rule could never allow anything (write `[[]]` for any valid token)",
            ),
            (None, true) => sink.error_at_line(
                rule_line,
                format!("a {} rule needs `allow`", access.as_str()),
            ),
            (Some(list), false) => sink.error(
                list.first().map_or(0, |a| a.span().start),
                format!("a {} rule takes no `allow`", access.as_str()),
            ),
            _ => {}
        }

        let versions = rule.versions.as_ref().map(|v| {
            let line = sink.line_of(v.span().start);
            match v.get_ref() {
                VersionsToml::Inline(list) => versions(list, line, sink),
                VersionsToml::Named(name) => match sets.get_mut(name.as_str()) {
                    Some((_, set, used)) => {
                        *used = true;
                        set.clone()
                    }
                    None => {
                        sink.error_at_line(line, format!("unknown version set `{name}`"));
                        Vec::new()
                    }
                },
            }
        });

        let routes: Vec<&Spanned<String>> = match (&rule.route, &rule.routes) {
            (Some(r), None) => vec![r],
            (None, Some(rs)) if !rs.is_empty() => rs.iter().collect(),
            (Some(_), Some(_)) => {
                sink.error_at_line(rule_line, "write `route` or `routes`, not both");
                continue;
            }
            _ => {
                sink.error_at_line(rule_line, "a rule needs `route` or a non-empty `routes`");
                continue;
            }
        };

        let mut any_versions = false;
        for route in routes {
            let line = sink.line_of(route.span().start);
            let Some((methods, path)) = route_line(route.get_ref(), line, sink) else {
                continue;
            };
            any_versions |= path.has_versions();
            let versions = match (&versions, path.has_versions()) {
                (Some(v), true) => v.clone(),
                (None, true) => {
                    sink.error_at_line(
                        line,
                        "`{versions}` in the path but the rule has no `versions`",
                    );
                    continue;
                }
                _ => Vec::new(),
            };
            rules.push(RawRule {
                line,
                methods,
                path,
                access,
                versions,
                allow: allow.clone(),
            });
        }
        if let (Some(v), false) = (&rule.versions, any_versions) {
            sink.error(
                v.span().start,
                "`versions` given but no route uses `{versions}`",
            );
        }
    }

    for (name, (line, _, used)) in &sets {
        if !used {
            sink.warn_at_line(*line, format!("version set `{name}` is never used"));
        }
    }

    Some(RawFile {
        federation: file.options.federation,
        rules,
    })
}

fn versions(list: &[String], line: usize, sink: &mut Sink<'_>) -> Vec<Version> {
    if list.is_empty() {
        sink.error_at_line(line, "a version list must not be empty");
    }
    list.iter()
        .filter_map(|v| v.parse().map_err(|e| sink.error_at_line(line, e)).ok())
        .collect()
}

/// `"GET|PUT /path"` → methods and template.
fn route_line(text: &str, line: usize, sink: &mut Sink<'_>) -> Option<(MethodSet, PathTemplate)> {
    let Some((methods, path)) = text.split_once(' ') else {
        sink.error_at_line(line, format!("route `{text}` should be `METHODS /path`"));
        return None;
    };
    let methods = methods
        .parse::<MethodSet>()
        .map_err(|e| sink.error_at_line(line, e.to_string()));
    let path = path
        .parse::<PathTemplate>()
        .map_err(|e| sink.error_at_line(line, e));
    Some((methods.ok()?, path.ok()?))
}

fn alternatives(
    allow: Option<&[Spanned<AlternativeToml>]>,
    sink: &mut Sink<'_>,
) -> Vec<(usize, Vec<ScopeTemplate>)> {
    let mut out = Vec::new();
    for alt in allow.unwrap_or_default() {
        let line = sink.line_of(alt.span().start);
        let texts: Vec<&str> = match alt.get_ref() {
            AlternativeToml::One(s) => vec![s],
            AlternativeToml::AllOf(list) => list.iter().map(String::as_str).collect(),
        };
        let templates: Vec<ScopeTemplate> = texts
            .into_iter()
            .filter_map(|t| t.parse().map_err(|e| sink.error_at_line(line, e)).ok())
            .collect();
        out.push((line, templates));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str) -> (Option<RawFile>, Vec<String>) {
        let mut sink = Sink::new("t.toml", src);
        let file = parse(src, &mut sink);
        let msgs = sink.items.iter().map(|d| d.to_string()).collect();
        (file, msgs)
    }

    #[test]
    fn reads_routes_versions_and_alternatives() {
        let (file, msgs) = run(r#"
[versions]
cur = ["r0", "v3"]

[[rule]]
routes = [
  "GET /a/{versions}/x/{id}",
  "PUT|POST /a/{versions}/y",
]
versions = "cur"
allow = ["s:1", ["s:{id}", "t"]]
"#);
        assert!(msgs.is_empty(), "{msgs:?}");
        let file = file.unwrap();
        assert!(file.federation);
        assert_eq!(file.rules.len(), 2);
        let r = &file.rules[0];
        assert_eq!(
            (r.line, r.access, r.versions.len()),
            (7, Access::Protected, 2)
        );
        assert_eq!(r.allow.len(), 2);
        assert_eq!(r.allow[1].1.len(), 2);
        assert_eq!(file.rules[1].line, 8);
    }

    #[test]
    fn unknown_key_names_its_line() {
        let (file, msgs) = run("[[rule]]\nroute = \"GET /a\"\nalow = []\n");
        assert!(file.is_none());
        assert!(
            msgs[0].starts_with("t.toml:3: unknown field `alow`"),
            "{msgs:?}"
        );
    }

    #[test]
    fn collects_several_errors() {
        let (_, msgs) = run(r#"
[[rule]]
route = "FETCH /a"
allow = ["x"]

[[rule]]
route = "GET /b/{versions}"
access = "public"

[[rule]]
route = "GET /c"
access = "secret"
"#);
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with("t.toml:3: unknown method `FETCH`"));
        assert!(msgs[1].starts_with("t.toml:7: `{versions}`"));
        assert!(msgs[2].starts_with("t.toml:12: unknown access `secret`"));
    }

    #[test]
    fn allow_must_fit_the_access() {
        let (_, msgs) = run(
            "[[rule]]\nroute = \"GET /a\"\n\n[[rule]]\nroute = \"GET /b\"\naccess = \"public\"\nallow = [\"x\"]\n",
        );
        assert!(
            msgs[0].starts_with("t.toml:1: a protected rule needs `allow`"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("t.toml:7: a public rule takes no `allow`"),
            "{msgs:?}"
        );
    }

    #[test]
    fn unused_version_sets_warn() {
        let (_, msgs) = run("[versions]\nold = [\"r0\"]\n");
        assert_eq!(msgs, ["t.toml:2: warning: version set `old` is never used"]);
    }
}
