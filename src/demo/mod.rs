//! `scopegate demo`: the whole picture in one process, with nothing else
//! installed — a stub homeserver, the gateway in front of it, and tokens with
//! different powers to try with curl.

mod homeserver;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use crate::auth::static_table::TokenDigest;
use crate::config::Config;
use crate::run;

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
pub struct DemoToken {
    pub name: &'static str,
    pub token: &'static str,
    pub user_id: &'static str,
    pub scopes: &'static [&'static str],
}

pub const TOKENS: &[DemoToken] = &[
    DemoToken {
        name: "full access",
        token: "demo-full-access",
        user_id: "@alice:example.org",
        scopes: &["urn:matrix:client:api:*"],
    },
    DemoToken {
        name: "read-only bot",
        token: "demo-readonly-bot",
        user_id: "@bot:example.org",
        scopes: &["scopegate:read"],
    },
    DemoToken {
        name: "widget limited to one room",
        token: "demo-widget",
        user_id: "@alice:example.org",
        scopes: &[
            "org.matrix.msc2762.timeline:!demo:example.org",
            "org.matrix.msc2762.send.event:m.room.message",
        ],
    },
];

/// The demo's config, as an operator would write it.
pub fn config_toml(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    let mut toml = format!(
        "[server]\nlisten = \"{listen}\"\n\n[upstream]\nurl = \"http://{upstream}\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n[auth]\nserver_name = \"example.org\"\n"
    );
    for t in TOKENS {
        let digest = hex::encode(TokenDigest::of(t.token).as_bytes());
        let scopes: Vec<String> = t.scopes.iter().map(|s| format!("\"{s}\"")).collect();
        toml.push_str(&format!(
            "\n[[auth.static]]\n# {}\ntoken_sha256 = \"{digest}\"\nuser_id = \"{}\"\nscopes = [{}]\n",
            t.name,
            t.user_id,
            scopes.join(", ")
        ));
    }
    toml
}

pub async fn run(args: DemoArgs) -> ExitCode {
    let users: HashMap<String, String> = TOKENS
        .iter()
        .map(|t| (t.token.to_string(), t.user_id.to_string()))
        .collect();
    let upstream = match StubHomeserver::new(users).start().await {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: cannot start the stub homeserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let toml = config_toml(args.listen, args.admin_listen, upstream);
    let prepared = match Config::parse(&toml, Path::new("demo.toml"), std::iter::empty())
        .map_err(|e| e.to_string())
        .and_then(run::prepare)
    {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run::serve(prepared, run::termination_signal(), |bound| {
        println!("{}", instructions(bound.public, bound.admin));
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

fn instructions(public: SocketAddr, admin: SocketAddr) -> String {
    let room = "%21demo%3Aexample.org";
    let base = format!("http://{public}/_matrix/client/v3");
    let send = |token: &str, room: &str| {
        format!(
            "curl -s -X PUT -H 'Authorization: Bearer {token}' -d '{{\"msgtype\":\"m.text\",\"body\":\"hi\"}}' \\\n     {base}/rooms/{room}/send/m.room.message/txn$RANDOM"
        )
    };
    let get = |token: &str, path: &str| {
        format!("curl -s -H 'Authorization: Bearer {token}' {base}/{path}")
    };
    format!(
        "\nscopegate demo: a stub homeserver behind the gateway on http://{public} (metrics on http://{admin}/metrics)\n\
         Demo room: {ROOM}. Press Ctrl-C to stop.\n\n\
         # No token: 401 M_MISSING_TOKEN\n  curl -s {base}/account/whoami\n\n\
         # Full access (demo-full-access): 200 with @alice:example.org, then a message sent and seen in /sync\n  {}\n  {}\n  {}\n\n\
         # Read-only bot (demo-readonly-bot): reading /sync is allowed, sending is 403 M_FORBIDDEN (insufficient_scope)\n  {}\n  {}\n\n\
         # Widget (demo-widget): may post m.room.message in {ROOM} only; another room is 403 M_FORBIDDEN\n  {}\n  {}\n\n\
         # An unknown token: 401 M_UNKNOWN_TOKEN\n  {}\n",
        get("demo-full-access", "account/whoami"),
        send("demo-full-access", room),
        get("demo-full-access", "sync"),
        get("demo-readonly-bot", "sync"),
        send("demo-readonly-bot", room),
        send("demo-widget", room),
        send("demo-widget", "%21other%3Aexample.org"),
        get("not-a-token", "account/whoami"),
    )
}
