//! Turning what a provider says about a token (a subject, a username, a
//! device) into Matrix identifiers. Both the JWT and the introspection
//! validator go through here, so a user id means the same whoever vouched.

use std::fmt;
use std::str::FromStr;

use crate::scopes::ScopeSet;

/// The stable device scope prefix; ScopeSet has already rewritten unstable twins to it.
const DEVICE_SCOPE: &str = "urn:matrix:client:device:";

/// A Matrix user id, `@localpart:server_name` (spec "User Identifiers";
/// historical localparts allow any printable ASCII but `:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    /// A full user id as-is, or a bare localpart placed on `server_name`.
    pub fn from_subject(subject: &str, server_name: &str) -> Result<Self, String> {
        if subject.starts_with('@') {
            subject.parse()
        } else {
            format!("@{subject}:{server_name}").parse()
        }
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for UserId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .strip_prefix('@')
            .ok_or_else(|| "user id does not start with @".to_string())?;
        let (localpart, server) = body
            .split_once(':')
            .ok_or_else(|| "user id has no :server_name".to_string())?;
        if s.len() > 255 {
            return Err("user id longer than 255 bytes".into());
        }
        if localpart.is_empty()
            || !localpart
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b':')
        {
            return Err("user id localpart is empty or not printable ASCII".into());
        }
        if server.is_empty() || server.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err("user id server name is empty or malformed".into());
        }
        Ok(UserId(s.to_string()))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device id: 1–255 characters of RFC 6749 NQCHAR, so that it can sit in
/// a scope (MSC2967).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for DeviceId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // RFC 6749 Appendix A: NQCHAR = %x21 / %x23-5B / %x5D-7E.
        let nqchar = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
        if s.is_empty() || s.len() > 255 || !s.bytes().all(nqchar) {
            return Err(
                "device id is empty, too long or has characters a scope cannot carry".into(),
            );
        }
        Ok(DeviceId(s.to_string()))
    }
}

/// The device a token is bound to: the explicit `device_id` (MAS 0.15+)
/// wins; otherwise the one device scope, if any. Two device scopes are
/// ambiguous and refuse the token.
pub fn device_id(explicit: Option<&str>, scopes: &ScopeSet) -> Result<Option<DeviceId>, String> {
    if let Some(d) = explicit {
        return d.parse().map(Some);
    }
    let mut devices = scopes.iter().filter_map(|s| s.strip_prefix(DEVICE_SCOPE));
    match (devices.next(), devices.next()) {
        (None, _) => Ok(None),
        (Some(d), None) => d.parse().map(Some),
        (Some(_), Some(_)) => Err("token carries more than one device scope".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_become_user_ids() {
        let id = UserId::from_subject("alice", "example.org").unwrap();
        assert_eq!(id.to_string(), "@alice:example.org");
        let full = UserId::from_subject("@bob:other.org", "example.org").unwrap();
        assert_eq!(full.to_string(), "@bob:other.org");
        assert!(UserId::from_subject("has space", "example.org").is_err());
        assert!(UserId::from_subject("@nocolon", "example.org").is_err());
        assert!(UserId::from_subject("", "example.org").is_err());
        assert!(UserId::from_subject(&"a".repeat(300), "example.org").is_err());
    }

    #[test]
    fn device_from_field_or_the_single_device_scope() {
        let scopes = ScopeSet::from_space_separated(
            "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ",
        );
        let d = device_id(None, &scopes).unwrap().unwrap();
        assert_eq!(d.into_string(), "ABCDEFGHIJ");
        let d = device_id(Some("EXPLICIT"), &scopes).unwrap().unwrap();
        assert_eq!(d.into_string(), "EXPLICIT");
        assert_eq!(device_id(None, &ScopeSet::default()), Ok(None));

        let two = ScopeSet::from_space_separated(
            "urn:matrix:client:device:AAAAAAAAAA urn:matrix:client:device:BBBBBBBBBB",
        );
        assert!(device_id(None, &two).is_err());
        assert!(device_id(Some("has space"), &ScopeSet::default()).is_err());
        assert!(device_id(Some("quo\"te"), &ScopeSet::default()).is_err());
    }
}
