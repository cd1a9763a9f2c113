//! Placeholder rule set until the rule language lands: public paths pass,
//! everything else needs full access.

mod scope;

pub use scope::{ScopeSet, FULL_ACCESS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Optional,
    Protected,
    Federation,
    Unmatched,
}

pub struct RuleSet;

pub struct RouteMatch<'r, 'p> {
    access: Access,
    label: &'r str,
    _path: &'p str,
}

impl<'r> RouteMatch<'r, '_> {
    pub fn access(&self) -> Access {
        self.access
    }
    pub fn label(&self) -> &'r str {
        self.label
    }
}

pub enum Decision {
    Allow,
    Deny(Denial),
}

pub struct Denial;

impl Denial {
    pub fn required_scopes(&self) -> String {
        FULL_ACCESS.to_string()
    }
}

const PUBLIC: &[&str] = &[
    "/.well-known/matrix/client",
    "/_matrix/client/versions",
    "/_matrix/client/v3/login",
];

impl RuleSet {
    pub fn builtin() -> RuleSet {
        RuleSet
    }

    pub fn route<'r, 'p>(&'r self, _method: &http::Method, path: &'p str) -> RouteMatch<'r, 'p> {
        let access = if PUBLIC.contains(&path) {
            Access::Public
        } else if path.starts_with("/_matrix/client/") || path.starts_with("/_matrix/media/") {
            Access::Protected
        } else {
            Access::Unmatched
        };
        RouteMatch {
            access,
            label: "builtin",
            _path: path,
        }
    }

    pub fn authorize(&self, _route: &RouteMatch<'_, '_>, scopes: &ScopeSet) -> Decision {
        if scopes.has_full_access() {
            Decision::Allow
        } else {
            Decision::Deny(Denial)
        }
    }
}
