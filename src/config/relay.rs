//! `[relay]`: the introspection endpoint the homeserver asks (docs/relay.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Problems, Secret};

/// Shorter secrets are refused: the homeserver's bearer credential.
const MIN_SECRET_LEN: usize = 16;

/// `[relay]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Never the public listener's address; loopback or a private network.
    pub listen: SocketAddr,
    /// Shared with the homeserver (Synapse: `matrix_authentication_service.secret`).
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    /// How the homeserver reaches the relay, for the discovery document.
    pub public_url: Option<String>,
    /// Report full access to the homeserver for tokens whose narrow scopes
    /// the rule set recognises. Safe only when the homeserver's client API
    /// is reachable through scopegate alone.
    #[serde(default)]
    pub widen_restricted_tokens: bool,
}

impl RelayConfig {
    pub(super) fn problems(&self, out: &mut Problems) {
        match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => out.add(
                "relay",
                "secret",
                "set either secret or secret_file, not both",
            ),
            (None, None) => out.add("relay", "secret", "is required (or secret_file)"),
            (Some(s), None) if s.expose().len() < MIN_SECRET_LEN => {
                out.add("relay", "secret", "use at least 16 characters")
            }
            _ => {}
        }
    }

    /// The shared secret, read from `secret_file` (relative to `base_dir`) if
    /// that is where it is.
    pub fn secret(&self, base_dir: &Path) -> Result<Vec<u8>, String> {
        let file = self.secret_file.as_ref().map(|f| base_dir.join(f));
        let secret = Secret::resolve(self.secret.as_ref(), file.as_ref(), "[relay] secret")?
            .ok_or("[relay] needs secret or secret_file")?;
        if secret.expose().len() < MIN_SECRET_LEN {
            return Err("[relay] secret_file: use at least 16 characters".into());
        }
        Ok(secret.expose().as_bytes().to_vec())
    }
}
