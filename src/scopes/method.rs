//! Method sets of routes: `GET`, `GET|PUT`, or `*` for any method.
//!
//! `HEAD` is not written in rules: like Synapse, the matcher routes a `HEAD`
//! request as the `GET` it mirrors, so a rule cannot give the two different
//! requirements.

use std::fmt;
use std::str::FromStr;

use http::Method;

/// The methods a rule may name, in slot order.
pub(crate) const KNOWN: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// A request method reduced to its slot in [`KNOWN`]; `None` for methods no
/// rule can name (they only match `*` rules).
pub(crate) fn slot(method: &Method) -> Option<usize> {
    // Comparisons against the standard constants are enum compares, no strings.
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
    ]
    .iter()
    .position(|m| m == method)
    .or((*method == Method::HEAD).then_some(0))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MethodSet {
    Any,
    /// Bit `i` set = `KNOWN[i]` included; never empty.
    Some(u8),
}

impl MethodSet {
    pub(crate) fn intersects(self, other: MethodSet) -> bool {
        match (self, other) {
            (MethodSet::Some(a), MethodSet::Some(b)) => a & b != 0,
            _ => true,
        }
    }

    pub(crate) fn is_subset_of(self, other: MethodSet) -> bool {
        match (self, other) {
            (_, MethodSet::Any) => true,
            (MethodSet::Any, MethodSet::Some(_)) => false,
            (MethodSet::Some(a), MethodSet::Some(b)) => a & !b == 0,
        }
    }

    pub(crate) fn slots(self) -> impl Iterator<Item = usize> {
        let bits = match self {
            MethodSet::Any => 0,
            MethodSet::Some(b) => b,
        };
        (0..KNOWN.len()).filter(move |i| bits & (1 << i) != 0)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadMethod(pub String);

impl fmt::Display for BadMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == "HEAD" {
            f.write_str("HEAD is routed as GET: write GET")
        } else {
            write!(
                f,
                "unknown method `{}` (expected `*` or {} joined with `|`)",
                self.0,
                KNOWN.join(", ")
            )
        }
    }
}

impl FromStr for MethodSet {
    type Err = BadMethod;

    fn from_str(s: &str) -> Result<Self, BadMethod> {
        if s == "*" {
            return Ok(MethodSet::Any);
        }
        let mut bits = 0u8;
        for name in s.split('|') {
            let i = KNOWN
                .iter()
                .position(|k| *k == name)
                .ok_or_else(|| BadMethod(name.to_owned()))?;
            bits |= 1 << i;
        }
        Ok(MethodSet::Some(bits))
    }
}

impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodSet::Any => f.write_str("*"),
            MethodSet::Some(_) => {
                for (n, i) in self.slots().enumerate() {
                    if n > 0 {
                        f.write_str("|")?;
                    }
                    f.write_str(KNOWN[i])?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sets_and_any() {
        let set: MethodSet = "GET|PUT".parse().unwrap();
        assert_eq!(set.to_string(), "GET|PUT");
        assert_eq!("*".parse::<MethodSet>().unwrap(), MethodSet::Any);
    }

    #[test]
    fn refuses_unknown_lowercase_empty_and_head() {
        for bad in ["GETT", "get", "", "GET|", "HEAD"] {
            assert!(bad.parse::<MethodSet>().is_err(), "{bad}");
        }
        assert!(BadMethod("HEAD".into()).to_string().contains("GET"));
    }

    #[test]
    fn head_uses_the_get_slot_and_extensions_have_none() {
        assert_eq!(slot(&Method::HEAD), Some(0));
        assert_eq!(slot(&Method::PUT), Some(2));
        assert_eq!(slot(&Method::from_bytes(b"PURGE").unwrap()), None);
    }

    #[test]
    fn subset_and_intersection() {
        let get: MethodSet = "GET".parse().unwrap();
        let get_put: MethodSet = "GET|PUT".parse().unwrap();
        let post: MethodSet = "POST".parse().unwrap();
        assert!(get.is_subset_of(get_put) && !get_put.is_subset_of(get));
        assert!(get.is_subset_of(MethodSet::Any) && !MethodSet::Any.is_subset_of(get));
        assert!(get.intersects(get_put) && !get.intersects(post));
        assert!(MethodSet::Any.intersects(post));
    }
}
