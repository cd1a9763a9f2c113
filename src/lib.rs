//! scopegate: a reverse proxy in front of a Matrix homeserver that validates
//! OAuth 2.0 / OIDC access tokens and lets through only what each token's
//! scopes allow. `gate` holds the request pipeline; the other modules are
//! its phases and plumbing.

pub mod admin;
pub mod auth;
pub mod canonical;
pub mod config;
pub mod demo;
pub mod gate;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod run;
pub mod scopes;
pub mod server;

/// An error with its causes, `outer: inner: …`: hyper-util's own message is
/// only "client error (Connect)", the cause is what an operator can act on.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
