//! Who is calling: the token is taken from the request (`extract`), and an
//! identity source vouches for it. Scope decisions are never made here: the
//! rule set judges the returned [`Identity`] on every request.

pub mod extract;
pub mod static_table;

use std::sync::Arc;
use std::time::SystemTime;

use crate::scopes::ScopeSet;

pub use static_table::StaticTable;

/// What a validated token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub device_id: Option<String>,
    pub client_id: Option<String>,
    pub scopes: ScopeSet,
    pub expires_at: Option<SystemTime>,
    /// Which validator vouched for the token, for logs and metrics.
    pub source: &'static str,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown, expired, revoked or malformed: 401 `M_UNKNOWN_TOKEN`.
    Invalid { soft_logout: bool },
    /// The identity provider could not answer: 503, fail closed.
    Unavailable,
}

/// The gateway's `authenticate` phase calls this; sources are consulted in a
/// fixed order decided by the token's shape, never all in turn.
pub struct Authenticator {
    static_table: StaticTable,
}

impl Authenticator {
    pub fn new(static_table: StaticTable) -> Self {
        Authenticator { static_table }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        self.static_table
            .lookup(token)
            .ok_or(AuthError::Invalid { soft_logout: false })
    }
}
