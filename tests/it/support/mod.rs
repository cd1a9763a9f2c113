//! What the integration tests share:
//!
//! - [`client`]: plain hyper clients, one fresh connection per request, and
//!   raw bytes for what a well-behaved client would never send;
//! - [`stub`]: one stub server for every peer the gateway talks to, the
//!   homeserver behind it and the identity provider beside it, recording
//!   what it receives and answering what the test decides;
//! - [`provider`]: that stub speaking OAuth 2.0 token introspection (MAS's
//!   dialect), and an in-process `Authenticator` in front of it;
//! - [`gate`]: the real `scopegate` binary on ephemeral ports, with its log.

pub mod client;
pub mod gate;
pub mod provider;
pub mod stub;

pub use client::*;
pub use gate::*;
pub use provider::*;
pub use stub::*;

use std::net::{SocketAddr, TcpListener};

use sha2::{Digest, Sha256};

/// A static token with full access (`@alice:example.org`) in every
/// gateway the tests start.
pub const FULL_TOKEN: &str = "syt_full_access_token_for_tests";
/// A static token whose only scope names a device (`@bob:example.org`).
pub const DEVICE_ONLY_TOKEN: &str = "device_only_token_for_tests";
pub const SERVER_NAME: &str = "example.org";

/// A loopback port nobody listens on, for now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn random_alnum(n: usize) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes
        .iter()
        .map(|b| ALNUM[usize::from(*b) % ALNUM.len()] as char)
        .collect()
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}
