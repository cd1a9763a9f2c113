//! From parsed rules to a `RuleSet`: bind scope placeholders to capture
//! slots, expand `{versions}`, check, build the trie. Everything that can be
//! decided once is decided here, so the per-request work is a walk and a few
//! comparisons.

use std::sync::Arc;

use super::check;
use super::diag::{RuleErrors, Sink};
use super::matcher::{Trie, MAX_CAPTURES};
use super::method::MethodSet;
use super::parse::{self, RawRule};
use super::path::{PathTemplate, Seg};
use super::template::Template;
use super::{Access, Loaded, RuleSet};

/// One route of the rule file, ready to decide requests.
pub(crate) struct Rule {
    pub(crate) line: usize,
    pub(crate) methods: MethodSet,
    pub(crate) path: PathTemplate,
    pub(crate) access: Access,
    pub(crate) captures: Box<[Box<str>]>,
    /// Any of these, each all of its templates.
    pub(crate) alternatives: Box<[Box<[Template]>]>,
    /// For `WWW-Authenticate: … scope="…"`: built once, shared by denials.
    pub(crate) required: Arc<str>,
    /// The segment lists the path stands for, one per version.
    pub(crate) patterns: Vec<Vec<Seg>>,
}

impl Rule {
    pub(crate) fn same_requirement(&self, other: &Rule) -> bool {
        let texts = |r: &Rule| -> Vec<Vec<String>> {
            r.alternatives
                .iter()
                .map(|alt| alt.iter().map(|t| t.text().to_owned()).collect())
                .collect()
        };
        self.access == other.access && texts(self) == texts(other)
    }
}

pub(crate) fn compile(src: &str, origin: &str) -> Result<Loaded, RuleErrors> {
    let mut sink = Sink::new(origin, src);
    let file = parse::parse(src, &mut sink);
    let mut rules = Vec::new();
    if let Some(file) = file {
        for raw in file.rules {
            if raw.access == Access::Federation && !file.federation {
                sink.warn_at_line(
                    raw.line,
                    "federation rule skipped: `options.federation = false` (such requests are refused)",
                );
                continue;
            }
            if let Some(rule) = bind(raw, &mut sink) {
                rules.push(rule);
            }
        }
        check::check(&rules, &mut sink);
    }
    if sink.has_errors() {
        return Err(RuleErrors(sink.finish().0));
    }
    let trie = Trie::build(&rules);
    let mut grants: Vec<Template> = rules
        .iter()
        .flat_map(|r| r.alternatives.iter().flatten().cloned())
        .collect();
    grants.sort_by(|a, b| a.text().cmp(b.text()));
    grants.dedup_by(|a, b| a.text() == b.text());
    Ok(Loaded {
        rules: RuleSet {
            origin: origin.into(),
            rules,
            trie,
            grants,
        },
        warnings: sink.finish().1,
    })
}

fn bind(raw: RawRule, sink: &mut Sink<'_>) -> Option<Rule> {
    let captures: Vec<&str> = raw.path.captures().collect();
    if captures.len() > MAX_CAPTURES {
        sink.error_at_line(
            raw.line,
            format!("more than {MAX_CAPTURES} captures in `{}`", raw.path),
        );
        return None;
    }
    let mut ok = true;
    let mut alternatives = Vec::with_capacity(raw.allow.len());
    for (line, templates) in &raw.allow {
        let mut bound = Vec::with_capacity(templates.len());
        for t in templates {
            match t.bind(&captures) {
                Ok(b) => bound.push(b),
                Err(name) => {
                    ok = false;
                    let known = if captures.is_empty() {
                        "captures nothing".to_owned()
                    } else {
                        format!("captures {{{}}}", captures.join("}, {"))
                    };
                    sink.error_at_line(
                        *line,
                        format!(
                            "unknown placeholder `{{{name}}}` in `{t}`: route `{}` {known}",
                            raw.path
                        ),
                    );
                }
            }
        }
        alternatives.push(bound.into_boxed_slice());
    }
    let required = required(&alternatives).into();
    let patterns = raw.path.expand(&raw.versions);
    let captures = captures.iter().map(|&c| c.into()).collect();
    ok.then(|| Rule {
        line: raw.line,
        methods: raw.methods,
        captures,
        path: raw.path,
        access: raw.access,
        alternatives: alternatives.into_boxed_slice(),
        required,
        patterns,
    })
}

/// The scopes to name in an `insufficient_scope` challenge: the first
/// alternative that needs no request value (in the shipped rules, full access).
fn required(alternatives: &[Box<[Template]>]) -> String {
    let alt = alternatives
        .iter()
        .find(|alt| alt.iter().all(|t| t.literal().is_some()))
        .or(alternatives.first());
    alt.map(|alt| alt.iter().map(Template::text).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
