//! The decision: does a token's scope set satisfy the matched rule?
//!
//! Pure and allocation-free, on the allow and the deny path alike: a denial
//! carries a shared, precomputed scope list and renders it only when asked.

use std::fmt;
use std::sync::Arc;

use super::compile::Rule;
use super::scope::ScopeSet;
use super::template::Template;
use super::Access;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No rule names the route: default deny, whatever the token.
    Unmatched,
    /// The rule's alternatives are all unsatisfied by the token's scopes.
    InsufficientScope,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    reason: DenyReason,
    required: Option<Arc<str>>,
}

impl Denial {
    pub fn reason(&self) -> DenyReason {
        self.reason
    }

    /// Space-separated scopes for `WWW-Authenticate: Bearer
    /// error="insufficient_scope", scope="…"`: the rule's first alternative
    /// that needs no value from the request (full access, in the shipped
    /// rules). Empty for unmatched routes, which no scope opens.
    pub fn required_scopes(&self) -> String {
        self.required.as_deref().unwrap_or_default().to_owned()
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            DenyReason::Unmatched => f.write_str("no rule matches this route"),
            DenyReason::InsufficientScope => f.write_str("insufficient scope"),
        }
    }
}

/// The decision for a matched rule (or none). Public and federation routes
/// allow; `Optional` and `Protected` check the alternatives — whether a token
/// must be present at all is the caller's concern (see `Access`).
pub(crate) fn decide(rule: Option<&Rule>, captures: &[&str], scopes: &ScopeSet) -> Decision {
    let Some(rule) = rule else {
        return Decision::Deny(Denial {
            reason: DenyReason::Unmatched,
            required: None,
        });
    };
    match rule.access {
        Access::Public | Access::Federation => Decision::Allow,
        Access::Unmatched => unreachable!("rules are never unmatched"),
        Access::Optional | Access::Protected => {
            if rule
                .alternatives
                .iter()
                .any(|alt| satisfied(alt, scopes, captures))
            {
                Decision::Allow
            } else {
                Decision::Deny(Denial {
                    reason: DenyReason::InsufficientScope,
                    required: Some(Arc::clone(&rule.required)),
                })
            }
        }
    }
}

pub(crate) fn satisfied(alternative: &[Template], scopes: &ScopeSet, captures: &[&str]) -> bool {
    alternative.iter().all(|t| granted(t, scopes, captures))
}

/// Does some scope of the set grant this template? A binary search for a
/// literal template, a scan of the scopes sharing its literal prefix otherwise.
pub(crate) fn granted(template: &Template, scopes: &ScopeSet, captures: &[&str]) -> bool {
    match template.literal() {
        Some(scope) => scopes.may_contain(template.bit()) && scopes.contains_exactly(scope),
        None => scopes
            .starting_with(template.prefix())
            .any(|s| template.matches(s, captures)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::RuleSet;
    use super::*;
    use http::Method;

    const RULES: &str = r#"
[[rule]]
route = "PUT /rooms/{roomId}/send/{type}"
allow = ["full", ["send:{type}", "room:{roomId}"]]

[[rule]]
route = "GET /open"
access = "public"

[[rule]]
route = "GET /any-token"
access = "optional"
allow = [[]]
"#;

    fn decide_for(method: Method, path: &str, scopes: &str) -> Decision {
        let rs = RuleSet::parse(RULES, "t").unwrap().rules;
        let route = rs.route(&method, path);
        rs.authorize(&route, &ScopeSet::from_space_separated(scopes))
    }

    #[test]
    fn any_of_all_of() {
        let p = "/rooms/!r:x/send/m.text";
        assert!(decide_for(Method::PUT, p, "full").is_allow());
        assert!(decide_for(Method::PUT, p, "send:m.text room:!r:x").is_allow());
        assert!(!decide_for(Method::PUT, p, "send:m.text").is_allow());
        assert!(!decide_for(Method::PUT, p, "room:!r:x send:m.other").is_allow());
    }

    #[test]
    fn denial_names_the_literal_alternative() {
        let Decision::Deny(d) = decide_for(Method::PUT, "/rooms/!r/send/t", "") else {
            panic!("allowed")
        };
        assert_eq!(
            (d.reason(), d.required_scopes()),
            (DenyReason::InsufficientScope, "full".into())
        );
    }

    #[test]
    fn public_and_empty_alternative_and_unmatched() {
        assert!(decide_for(Method::GET, "/open", "").is_allow());
        assert!(decide_for(Method::GET, "/any-token", "whatever").is_allow());
        let Decision::Deny(d) = decide_for(Method::GET, "/nowhere", "full") else {
            panic!("allowed")
        };
        assert_eq!(
            (d.reason(), d.required_scopes()),
            (DenyReason::Unmatched, String::new())
        );
    }
}
