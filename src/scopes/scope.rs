//! The scopes a token carries, normalised once when the token is validated so
//! that every later check is a plain comparison.

use std::fmt;

/// The one allocated permission scope: full access to the client-server API.
pub const FULL_ACCESS: &str = "urn:matrix:client:api:*";

/// MSC2967's unstable namespace; tokens from older providers still carry it.
const UNSTABLE_PREFIX: &str = "urn:matrix:org.matrix.msc2967.client:";
const STABLE_PREFIX: &str = "urn:matrix:client:";

/// A token's scopes, with unstable MSC2967 names rewritten to their stable
/// twins, sorted and deduplicated.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    scopes: Box<[Box<str>]>,
}

impl ScopeSet {
    pub fn new<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut scopes: Vec<Box<str>> = scopes
            .into_iter()
            .map(|s| normalize(s.as_ref()))
            .filter(|s| !s.is_empty())
            .collect();
        scopes.sort_unstable();
        scopes.dedup();
        ScopeSet {
            scopes: scopes.into_boxed_slice(),
        }
    }

    /// RFC 6749 §3.3: scopes are space-delimited.
    pub fn from_space_separated(scope: &str) -> Self {
        Self::new(scope.split(' '))
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.scopes
            .binary_search_by(|s| s.as_ref().cmp(scope))
            .is_ok()
    }

    pub fn has_full_access(&self) -> bool {
        self.contains(FULL_ACCESS)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(AsRef::as_ref)
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }
}

fn normalize(scope: &str) -> Box<str> {
    match scope.strip_prefix(UNSTABLE_PREFIX) {
        Some(rest) => format!("{STABLE_PREFIX}{rest}").into_boxed_str(),
        None => scope.into(),
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstable_names_equal_stable_ones() {
        let set = ScopeSet::from_space_separated(
            "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ",
        );
        assert!(set.has_full_access());
        assert!(set.contains("urn:matrix:client:device:ABCDEFGHIJ"));
    }

    #[test]
    fn twins_collapse_and_empty_items_vanish() {
        let set = ScopeSet::from_space_separated(
            "urn:matrix:client:api:*  urn:matrix:org.matrix.msc2967.client:api:* openid",
        );
        assert_eq!(set.to_string(), "openid urn:matrix:client:api:*");
    }

    #[test]
    fn a_device_scope_is_not_full_access() {
        assert!(!ScopeSet::new(["urn:matrix:client:device:ABC"]).has_full_access());
        assert!(!ScopeSet::new(["urn:matrix:client:api:read:*"]).has_full_access());
    }
}
