//! Tokens an operator lists in the config file, for bots, appservices and
//! tests. The file holds SHA-256 digests, so a leaked config leaks no token.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Identity;
use crate::scopes::ScopeSet;

/// One `[[auth.static]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub token_sha256: TokenDigest,
    pub user_id: String,
    #[serde(default)]
    pub device_id: Option<String>,
    pub scopes: Vec<String>,
}

/// A lowercase or uppercase hex SHA-256 digest of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::str::FromStr for TokenDigest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(s, &mut digest).map_err(|_| {
            "expected the 64 hex digits of the token's SHA-256 (e.g. `printf %s TOKEN | sha256sum`)"
                .to_string()
        })?;
        Ok(TokenDigest(digest))
    }
}

impl<'de> Deserialize<'de> for TokenDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Default)]
pub struct StaticTable {
    entries: HashMap<TokenDigest, Arc<Identity>>,
}

impl StaticTable {
    pub fn new(tokens: &[StaticToken]) -> Self {
        let entries = tokens
            .iter()
            .map(|t| {
                let identity = Identity {
                    user_id: t.user_id.clone(),
                    device_id: t.device_id.clone(),
                    client_id: None,
                    scopes: ScopeSet::new(&t.scopes),
                    expires_at: None,
                    vouched_at: None,
                    source: "static",
                };
                (t.token_sha256, Arc::new(identity))
            })
            .collect();
        StaticTable { entries }
    }

    pub fn lookup(&self, token: &str) -> Option<Arc<Identity>> {
        self.lookup_digest(&TokenDigest::of(token))
    }

    pub fn lookup_digest(&self, digest: &TokenDigest) -> Option<Arc<Identity>> {
        self.entries.get(digest).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str) -> StaticToken {
        StaticToken {
            token_sha256: TokenDigest::of(token),
            user_id: "@bot:example.org".into(),
            device_id: Some("BOTDEVICE".into()),
            scopes: vec!["urn:matrix:client:api:*".into()],
        }
    }

    #[test]
    fn finds_a_listed_token_by_digest() {
        let table = StaticTable::new(&[entry("s3cret")]);
        let id = table.lookup("s3cret").expect("listed token");
        assert_eq!(id.user_id, "@bot:example.org");
        assert!(id.scopes.has_full_access());
        assert!(table.lookup("s3cre").is_none());
    }

    #[test]
    fn digest_must_be_64_hex_digits() {
        assert!("abc".parse::<TokenDigest>().is_err());
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(hex.parse::<TokenDigest>().unwrap(), TokenDigest::of("test"));
        assert_eq!(
            hex.to_uppercase().parse::<TokenDigest>().unwrap(),
            TokenDigest::of("test")
        );
    }
}
