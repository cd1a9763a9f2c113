//! The scope rule engine: which token scopes may use which route.
//!
//! `scopes.toml` names routes (method set + path template) and, for each, the
//! scopes that allow it as *any of* alternatives, each *all of* a list of
//! scope templates that may name path captures
//! (`org.matrix.msc2762.timeline:{roomId}`). The file is parsed and checked
//! once ([`RuleSet::load`]); a request then costs a trie walk
//! ([`RuleSet::route`]) and a few comparisons ([`RuleSet::authorize`]), with
//! no allocation either way.
//!
//! Unmatched routes are refused for every token (default deny). Why each
//! piece is as it is lives in the module it belongs to: `path` (templates),
//! `template` (scope templates and the wildcard), `matcher` (precedence),
//! `check` (what a load refuses), `authorize` (the decision).

mod authorize;
mod check;
mod compile;
mod diag;
mod explain;
mod matcher;
mod method;
mod parse;
mod path;
mod scope;
mod template;

use std::path::Path;

use serde::Serialize;

pub use authorize::{Decision, Denial, DenyReason};
pub use diag::{Diagnostic, RuleErrors, Severity};
pub use explain::{AlternativeReport, CaptureReport, Explanation, RuleRef, Ruling, ScopeReport};
pub use matcher::{RouteMatch, MAX_CAPTURES};
pub use scope::{ScopeSet, FULL_ACCESS};

use compile::Rule;
use matcher::Trie;
use template::Template;

/// The shipped rule set.
const BUILTIN: &str = include_str!("../../scopes.toml");

/// What a route needs before the request may go upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// No token needed; one sent along goes on only if valid (no scope is
    /// asked of it), else it is taken off the request.
    Public,
    /// Passes without a token; a token present must be valid, then authorized.
    Optional,
    /// A token is required, then authorized.
    Protected,
    /// Server-server traffic signed with X-Matrix: passed through without
    /// bearer checks (`options.federation = false` turns these rules off).
    Federation,
    /// No rule names the route: refused (default deny).
    Unmatched,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Optional => "optional",
            Access::Protected => "protected",
            Access::Federation => "federation",
            Access::Unmatched => "unmatched",
        }
    }
}

/// A compiled, immutable rule set. `Send + Sync`: share it behind an `Arc`
/// (or an `ArcSwap` for reloads).
pub struct RuleSet {
    origin: Box<str>,
    rules: Vec<Rule>,
    trie: Trie,
    /// Every distinct scope template, for [`RuleSet::recognises`].
    grants: Vec<Template>,
}

/// A successful load: the rules, and what was worth a warning.
pub struct Loaded {
    pub rules: RuleSet,
    pub warnings: Vec<Diagnostic>,
}

impl RuleSet {
    /// The shipped `scopes.toml`, embedded at build time. Tests keep it valid.
    pub fn builtin() -> RuleSet {
        match Self::parse(BUILTIN, "scopes.toml") {
            Ok(loaded) => loaded.rules,
            Err(e) => panic!("the shipped scopes.toml is invalid:\n{e}"),
        }
    }

    pub fn load(path: &Path) -> Result<Loaded, RuleErrors> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(src) => Self::parse(&src, &origin),
            Err(e) => Err(RuleErrors(vec![Diagnostic {
                file: origin,
                line: 0,
                message: format!("cannot read: {e}"),
                severity: Severity::Error,
            }])),
        }
    }

    /// Parses and checks rules; `origin` names the file in diagnostics.
    pub fn parse(src: &str, origin: &str) -> Result<Loaded, RuleErrors> {
        compile::compile(src, origin)
    }

    /// The rule for a request. `path` is the raw path without query, as the
    /// canonicalizer passed it. No allocation.
    pub fn route<'r, 'p>(&'r self, method: &http::Method, path: &'p str) -> RouteMatch<'r, 'p> {
        let mut captures = [""; MAX_CAPTURES];
        let rule = self.trie.lookup(method, path, &mut captures);
        RouteMatch {
            rule: rule.map(|id| &self.rules[id as usize]),
            id: rule,
            captures,
        }
    }

    /// Do these scopes satisfy the matched rule? No allocation. Whether a
    /// token must be present is the caller's reading of [`RouteMatch::access`].
    /// How many rules there are: [`RouteMatch::index`] is below it.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn authorize(&self, route: &RouteMatch<'_, '_>, scopes: &ScopeSet) -> Decision {
        authorize::decide(route.rule, route.values(), scopes)
    }

    /// Route and decide, with everything a human needs to see why. An empty
    /// scope set is read as "no token".
    pub fn explain(&self, method: &http::Method, path: &str, scopes: &ScopeSet) -> Explanation {
        let route = self.route(method, path);
        explain::explain(&self.origin, method, path, &route, scopes)
    }

    /// True if some scope of the set is one these rules can grant for some
    /// request: the token was minted with this gateway in mind.
    pub fn recognises(&self, scopes: &ScopeSet) -> bool {
        scopes
            .iter()
            .any(|s| self.grants.iter().any(|t| t.could_match(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_set_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RuleSet>();
        assert_send_sync::<Decision>();
    }

    #[test]
    fn recognises_scopes_the_rules_grant() {
        let rs = RuleSet::builtin();
        let yes = |s: &str| rs.recognises(&ScopeSet::from_space_separated(s));
        assert!(yes("urn:matrix:org.matrix.msc2967.client:api:*"));
        assert!(yes("openid org.matrix.msc2762.timeline:!r:example.org"));
        assert!(yes("urn:synapse:admin:*"));
        assert!(yes("scopegate:read"));
        assert!(!yes("urn:matrix:client:device:ABCDEFGHIJ openid"));
        assert!(!yes(""));
    }

    #[test]
    fn load_reports_unreadable_files() {
        let err = RuleSet::load(Path::new("/nonexistent/scopes.toml"))
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .starts_with("/nonexistent/scopes.toml:0: cannot read"));
    }
}
