//! Tokens an operator lists in the config file, for bots, appservices and
//! tests. The file holds SHA-256 digests, so a leaked config leaks no token.

use std::collections::HashMap;
use std::sync::Arc;

use super::Identity;
use crate::config::{StaticToken, TokenDigest};
use crate::scopes::ScopeSet;

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
