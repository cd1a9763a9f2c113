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
    /// One bit per scope ([`bit`]): a rule asking for a scope whose bit is
    /// clear is refused without a string comparison.
    mask: u64,
}

/// The mask bit of a whole scope: FNV-1a, folded to 0..64.
pub(crate) fn bit(scope: &str) -> u64 {
    let hash = scope.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    1 << (hash >> 58)
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
        let mask = scopes.iter().fold(0, |m, s| m | bit(s));
        ScopeSet {
            scopes: scopes.into_boxed_slice(),
            mask,
        }
    }

    /// RFC 6749 §3.3: scopes are space-delimited.
    pub fn from_space_separated(scope: &str) -> Self {
        Self::new(scope.split(' '))
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.may_contain(bit(scope)) && self.contains_exactly(scope)
    }

    /// False only if no scope of the set has this [`bit`].
    pub(crate) fn may_contain(&self, bit: u64) -> bool {
        self.mask & bit != 0
    }

    /// [`ScopeSet::contains`] without the mask test, for callers that did it.
    pub(crate) fn contains_exactly(&self, scope: &str) -> bool {
        self.scopes
            .binary_search_by(|s| s.as_ref().cmp(scope))
            .is_ok()
    }

    /// The scopes that start with `prefix`, found by binary search: the set
    /// is sorted, so they are adjacent.
    pub fn starting_with<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let start = self.scopes.partition_point(|s| s.as_ref() < prefix);
        self.scopes[start..]
            .iter()
            .map(AsRef::as_ref)
            .take_while(move |s| s.starts_with(prefix))
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
    fn starting_with_finds_the_adjacent_run() {
        let set = ScopeSet::from_space_separated("b:2 a:1 b:1 c b:");
        assert_eq!(
            set.starting_with("b:").collect::<Vec<_>>(),
            ["b:", "b:1", "b:2"]
        );
        assert_eq!(set.starting_with("").count(), 5);
        assert_eq!(set.starting_with("d").count(), 0);
    }

    #[test]
    fn the_mask_never_hides_a_member() {
        let set = ScopeSet::from_space_separated("a b c urn:matrix:client:api:* scopegate:read");
        for s in ["a", "b", "c", "urn:matrix:client:api:*", "scopegate:read"] {
            assert!(set.may_contain(bit(s)) && set.contains(s), "{s}");
        }
        assert!(!set.contains("d") && !set.contains("scopegate:media"));
        assert!(!ScopeSet::default().may_contain(bit("a")));
    }

    #[test]
    fn a_device_scope_is_not_full_access() {
        assert!(!ScopeSet::new(["urn:matrix:client:device:ABC"]).has_full_access());
        assert!(!ScopeSet::new(["urn:matrix:client:api:read:*"]).has_full_access());
    }
}
