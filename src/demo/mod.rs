//! `scopegate demo`: the whole picture in one process, with nothing else
//! installed — a stub homeserver, the gateway in front of it, and tokens with
//! different powers to try with curl.

mod homeserver;
pub mod issuer;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::run;
use issuer::{DemoIssuer, DEMO_AUDIENCE};

pub use homeserver::StubHomeserver;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where metrics and health checks are served.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
}

pub const ROOM: &str = "!demo:example.org";

/// A demo identity: who it is, what it may do.
pub struct DemoIdentity {
    pub name: &'static str,
    /// The shell variable the printed commands use for its token.
    pub var: &'static str,
    pub user: &'static str,
    pub scope: &'static str,
}

pub const IDENTITIES: &[DemoIdentity] = &[
    DemoIdentity {
        name: "full access",
        var: "FULL",
        user: "alice",
        scope: "urn:matrix:client:api:*",
    },
    DemoIdentity {
        name: "read-only bot",
        var: "BOT",
        user: "bot",
        scope: "scopegate:read",
    },
    DemoIdentity {
        name: "widget limited to one room",
        var: "WIDGET",
        user: "alice",
        scope: "org.matrix.msc2762.timeline:!demo:example.org org.matrix.msc2762.send.event:m.room.message",
    },
];

/// The demo's config, as an operator would write it: JWTs from `issuer`.
pub fn config_toml(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    issuer: &str,
) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\n\n[upstream]\nurl = \"http://{upstream}\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n[auth]\nserver_name = \"example.org\"\nissuer = \"{issuer}\"\n\n\
         [auth.jwt]\nenabled = true\naudiences = [\"{DEMO_AUDIENCE}\"]\n"
    )
}

pub async fn run(args: DemoArgs) -> ExitCode {
    let issuer = match DemoIssuer::start().await {
        Ok(issuer) => issuer,
        Err(e) => {
            eprintln!("error: cannot start the demo issuer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tokens: Vec<(&DemoIdentity, String)> = IDENTITIES
        .iter()
        .map(|id| (id, issuer.access_token(id.user, id.scope, TOKEN_LIFETIME)))
        .collect();
    let users: HashMap<String, String> = tokens
        .iter()
        .map(|(id, token)| (token.clone(), format!("@{}:example.org", id.user)))
        .collect();
    let upstream = match StubHomeserver::new(users).start().await {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: cannot start the stub homeserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let toml = config_toml(args.listen, args.admin_listen, upstream, issuer.issuer());
    let prepared = match Config::parse(&toml, Path::new("demo.toml"), std::iter::empty())
        .map_err(run::StartError::from)
        .and_then(run::prepare)
    {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run::serve(prepared, run::termination_signal(), move |bound| {
        // A closed stdout (`scopegate demo | head`) must not stop the demo.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            instructions(bound.public, bound.admin, &tokens)
        );
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn instructions(
    public: SocketAddr,
    admin: SocketAddr,
    tokens: &[(&DemoIdentity, String)],
) -> String {
    let room = "%21demo%3Aexample.org";
    let base = format!("http://{public}/_matrix/client/v3");
    let send = |var: &str, room: &str| {
        format!(
            "curl -s -X PUT -H \"Authorization: Bearer ${var}\" -d '{{\"msgtype\":\"m.text\",\"body\":\"hi\"}}' \\\n     {base}/rooms/{room}/send/m.room.message/txn$RANDOM"
        )
    };
    let get = |var: &str, path: &str| {
        format!("curl -s -H \"Authorization: Bearer ${var}\" {base}/{path}")
    };
    let exports: Vec<String> = tokens
        .iter()
        .map(|(id, token)| {
            format!(
                "# {} ({}): scope \"{}\"\nexport {}={token}",
                id.name, id.user, id.scope, id.var
            )
        })
        .collect();
    format!(
        "\nscopegate demo: a stub homeserver behind the gateway on http://{public} (metrics on http://{admin}/metrics).\n\
         Tokens are RS256 JWTs from an in-process issuer, checked against its JWKS like any provider's.\n\
         Demo room: {ROOM}. Press Ctrl-C to stop. In another shell:\n\n{}\n\n\
         # No token: 401 M_MISSING_TOKEN\n  curl -s {base}/account/whoami\n\n\
         # Full access: 200 with @alice:example.org, then a message sent and seen in /sync\n  {}\n  {}\n  {}\n\n\
         # Read-only bot: reading /sync is allowed, sending is 403 M_FORBIDDEN (insufficient_scope)\n  {}\n  {}\n\n\
         # Widget: may post m.room.message in {ROOM} only; another room is 403 M_FORBIDDEN\n  {}\n  {}\n\n\
         # An unknown token: 401 M_UNKNOWN_TOKEN\n  curl -s -H 'Authorization: Bearer not-a-token' {base}/account/whoami\n",
        exports.join("\n"),
        get("FULL", "account/whoami"),
        send("FULL", room),
        get("FULL", "sync"),
        get("BOT", "sync"),
        send("BOT", room),
        send("WIDGET", room),
        send("WIDGET", "%21other%3Aexample.org"),
    )
}
