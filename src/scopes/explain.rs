//! `scopegate explain`: why a request would be allowed or refused.
//!
//! Off the hot path, so it allocates freely; the verdict comes from the same
//! `decide` the gateway uses, so the explanation cannot drift from it.

use std::fmt;

use serde::Serialize;

use super::authorize::{decide, granted};
use super::matcher::RouteMatch;
use super::scope::ScopeSet;
use super::template::decode;
use super::Access;

#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub path: String,
    /// The matched rule; `None` when no rule matches (default deny).
    pub rule: Option<RuleRef>,
    pub access: Access,
    pub captures: Vec<CaptureReport>,
    /// The token's scopes, normalised; empty means "no token".
    pub scopes: Vec<String>,
    pub alternatives: Vec<AlternativeReport>,
    pub decision: Ruling,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleRef {
    pub file: String,
    pub line: usize,
    pub route: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaptureReport {
    pub name: String,
    /// As sent, percent-encoded.
    pub raw: String,
    /// Decoded: what scope templates compare.
    pub value: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct AlternativeReport {
    pub satisfied: bool,
    pub scopes: Vec<ScopeReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScopeReport {
    pub template: String,
    /// The template filled from this request's captures.
    pub scope: String,
    pub granted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ruling {
    Allow,
    Deny,
}

pub(crate) fn explain(
    origin: &str,
    method: &http::Method,
    path: &str,
    route: &RouteMatch<'_, '_>,
    scopes: &ScopeSet,
) -> Explanation {
    let captures = route.values();
    let rule = route.rule;
    let alternatives: Vec<AlternativeReport> = rule
        .map(|r| &r.alternatives[..])
        .unwrap_or_default()
        .iter()
        .map(|alt| {
            let scopes: Vec<ScopeReport> = alt
                .iter()
                .map(|t| ScopeReport {
                    template: t.text().to_owned(),
                    scope: t.render(captures),
                    granted: granted(t, scopes, captures),
                })
                .collect();
            AlternativeReport {
                satisfied: scopes.iter().all(|s| s.granted),
                scopes,
            }
        })
        .collect();

    let no_token = scopes.is_empty();
    let access = route.access();
    let (decision, reason) = match access {
        Access::Unmatched => (
            Ruling::Deny,
            "no rule matches this route: default deny".into(),
        ),
        Access::Public => (Ruling::Allow, "public route: no token needed".into()),
        Access::Federation => (
            Ruling::Allow,
            "federation route: passed through, authenticated by X-Matrix signatures".into(),
        ),
        Access::Optional if no_token => (
            Ruling::Allow,
            "optional route without a token (a token, if sent, must satisfy an alternative)".into(),
        ),
        Access::Protected if no_token => (Ruling::Deny, "a token is required".into()),
        Access::Optional | Access::Protected => {
            if decide(rule, captures, scopes).is_allow() {
                let n = alternatives
                    .iter()
                    .position(|a| a.satisfied)
                    .map_or(0, |i| i + 1);
                (Ruling::Allow, format!("alternative {n} is satisfied"))
            } else {
                (Ruling::Deny, "no alternative is satisfied".into())
            }
        }
    };

    Explanation {
        method: method.to_string(),
        path: path.to_owned(),
        rule: rule.map(|r| RuleRef {
            file: origin.to_owned(),
            line: r.line,
            route: format!("{} {}", r.methods, r.path),
        }),
        access,
        captures: route
            .captures()
            .map(|(name, raw)| CaptureReport {
                name: name.to_owned(),
                raw: raw.to_owned(),
                value: decode(raw),
            })
            .collect(),
        scopes: scopes.iter().map(str::to_owned).collect(),
        alternatives,
        decision,
        reason,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request   {} {}", self.method, self.path)?;
        match &self.rule {
            Some(r) => writeln!(f, "rule      {}:{} {}", r.file, r.line, r.route)?,
            None => writeln!(f, "rule      none")?,
        }
        writeln!(f, "access    {}", self.access.as_str())?;
        if !self.captures.is_empty() {
            f.write_str("captures ")?;
            for c in &self.captures {
                write!(f, " {}={}", c.name, c.value)?;
                if c.raw != c.value {
                    write!(f, " ({})", c.raw)?;
                }
            }
            writeln!(f)?;
        }
        if self.scopes.is_empty() {
            writeln!(f, "token     none")?;
        } else {
            writeln!(f, "token     {}", self.scopes.join(" "))?;
        }
        if !self.alternatives.is_empty() {
            writeln!(f, "accepts   any of")?;
            for alt in &self.alternatives {
                f.write_str(if alt.satisfied { "  [x]" } else { "  [ ]" })?;
                if alt.scopes.is_empty() {
                    f.write_str(" any valid token")?;
                }
                for (i, s) in alt.scopes.iter().enumerate() {
                    let sep = if i == 0 { " " } else { " + " };
                    let state = if s.granted { "" } else { " (missing)" };
                    write!(f, "{sep}{}{state}", s.scope)?;
                }
                writeln!(f)?;
            }
        }
        let verdict = match self.decision {
            Ruling::Allow => "allow",
            Ruling::Deny => "deny",
        };
        writeln!(f, "decision  {verdict}: {}", self.reason)
    }
}
