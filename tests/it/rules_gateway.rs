//! The rule set at work in the running gateway: narrow tokens, reloads, and
//! the `explain` command.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;

use crate::support::*;

const WIDGET_TOKEN: &str = "widget_token_for_room_a";

fn widget_entry() -> String {
    format!(
        r#"
[[auth.static]]
token_sha256 = "{}"
user_id = "@widget:example.org"
scopes = ["org.matrix.msc2762.timeline:!a:example.org", "org.matrix.msc2762.send.event:m.room.message"]
"#,
        sha256_hex(WIDGET_TOKEN)
    )
}

async fn put(gate: &Gate, path: &str, token: &str) -> u16 {
    let req = Request::put(path)
        .header("authorization", format!("Bearer {token}"))
        .body(full("{}"))
        .unwrap();
    send(gate.addr, req).await.0.status.as_u16()
}

#[tokio::test]
async fn widget_token_is_held_to_its_room_and_event_type() {
    let upstream = ok_stub().await;
    let gate = GateBuilder::new()
        .rest(&widget_entry())
        .start(upstream)
        .await;
    let room_a = "/_matrix/client/v3/rooms/%21a%3Aexample.org";
    assert_eq!(
        put(
            &gate,
            &format!("{room_a}/send/m.room.message/1"),
            WIDGET_TOKEN
        )
        .await,
        200
    );
    assert_eq!(
        put(
            &gate,
            "/_matrix/client/v3/rooms/!a:example.org/send/m.room.message/2",
            WIDGET_TOKEN
        )
        .await,
        200,
        "the raw and encoded forms of a room id decide alike"
    );
    assert_eq!(
        put(&gate, &format!("{room_a}/send/m.reaction/3"), WIDGET_TOKEN).await,
        403
    );
    assert_eq!(
        put(&gate, &format!("{room_a}/state/m.room.name/"), WIDGET_TOKEN).await,
        403
    );
    assert_eq!(
        put(
            &gate,
            "/_matrix/client/v3/rooms/%21b%3Aexample.org/send/m.room.message/4",
            WIDGET_TOKEN
        )
        .await,
        403
    );
    let (parts, body) = get(gate.addr, "/_matrix/client/v3/devices", Some(WIDGET_TOKEN)).await;
    assert_eq!(parts.status, 403);
    assert_eq!(json(&body)["errcode"], "M_FORBIDDEN");
    assert!(parts.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));

    let metrics = gate.metrics().await;
    assert!(
        metrics.contains(r#"decision="allowed",route="/_matrix/client/{versions}/rooms/{roomId}/send/{eventType}/{txnId}"} 2"#),
        "requests are labelled by rule template:\n{metrics}"
    );
}

#[tokio::test]
async fn unmatched_routes_are_refused_for_every_token() {
    let upstream = ok_stub().await;
    let gate = Gate::start(upstream).await;
    let (parts, body) = get(gate.addr, "/_synapse/admin/v1/users", Some(FULL_TOKEN)).await;
    assert_eq!(
        parts.status, 403,
        "admin API needs the admin scope, not api:*"
    );
    assert_eq!(json(&body)["errcode"], "M_FORBIDDEN");
    let (parts, body) = get(gate.addr, "/not/matrix", Some(FULL_TOKEN)).await;
    assert_eq!(parts.status, 404);
    assert_eq!(json(&body)["errcode"], "M_UNRECOGNIZED");
    // Public routes need no token.
    let (parts, _) = get(gate.addr, "/_matrix/client/v3/login", None).await;
    assert_eq!(parts.status, 200);
}

const SMALL_RULES: &str = r#"
[[rule]]
route = "GET /_matrix/client/{versions}/account/whoami"
versions = ["v3"]
allow = ["urn:matrix:client:api:*"]
"#;

#[tokio::test]
async fn rules_reload_on_sighup_and_a_broken_file_keeps_the_old_rules() {
    // The first `/sync` forwarded is the one in flight across a reload.
    let first_sync = AtomicBool::new(true);
    let upstream = Stub::homeserver(move |req| {
        let reply = Reply::json(200, "{}");
        if req.path == "/_matrix/client/v3/sync" && first_sync.swap(false, Ordering::SeqCst) {
            reply.after(Duration::from_millis(1500))
        } else {
            reply
        }
    })
    .await;
    let gate = GateBuilder::new()
        .binary()
        .file("rules.toml", SMALL_RULES)
        .rest("[rules]\nfile = \"rules.toml\"")
        .start(upstream.addr)
        .await;
    let rules = gate.dir.path().join("rules.toml");
    let whoami = "/_matrix/client/v3/account/whoami";
    let sync = "/_matrix/client/v3/sync";
    assert_eq!(get(gate.addr, whoami, Some(FULL_TOKEN)).await.0.status, 200);
    assert_eq!(
        get(gate.addr, sync, Some(FULL_TOKEN)).await.0.status,
        404,
        "no rule names /sync yet"
    );

    // A valid change takes effect; a request in flight meanwhile is unharmed.
    let extended = format!(
        "{SMALL_RULES}\n[[rule]]\nroute = \"GET /_matrix/client/{{versions}}/sync\"\nversions = [\"v3\"]\nallow = [\"urn:matrix:client:api:*\"]\n"
    );
    std::fs::write(&rules, &extended).unwrap();
    gate.signal("HUP");
    gate.wait_metrics("successful reload", |m| {
        m.contains(r#"scopegate_rule_reloads_total{result="ok"}"#)
    })
    .await;
    assert_eq!(get(gate.addr, whoami, Some(FULL_TOKEN)).await.0.status, 200);
    let (addr, forwarded) = (gate.addr, upstream.calls());
    let in_flight = tokio::spawn(async move { get(addr, sync, Some(FULL_TOKEN)).await.0.status });
    upstream.wait_calls(forwarded + 1).await;

    // A broken file is refused and the previous rules keep serving.
    std::fs::write(&rules, "[[rule]]\nroute = \"BREW /coffee\"\n").unwrap();
    gate.signal("HUP");
    // The broken reload shows in the metrics, and in the log.
    gate.wait_metrics("failed reload", |m| {
        m.contains(r#"scopegate_rule_reloads_total{result="error"}"#)
    })
    .await;
    gate.wait_log("refused reload", |l| l.contains("rules not reloaded"))
        .await;
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request completed"
    );
    assert_eq!(
        get(gate.addr, sync, Some(FULL_TOKEN)).await.0.status,
        200,
        "old rules still serve"
    );
}

#[tokio::test]
async fn rules_reload_when_the_file_changes() {
    let upstream = ok_stub().await;
    let gate = GateBuilder::new()
        .file("rules.toml", SMALL_RULES)
        .rest("[rules]\nfile = \"rules.toml\"")
        .start(upstream)
        .await;
    let sync = "/_matrix/client/v3/sync";
    assert_eq!(get(gate.addr, sync, Some(FULL_TOKEN)).await.0.status, 404);
    let extended = format!(
        "{SMALL_RULES}\n[[rule]]\nroute = \"GET /_matrix/client/{{versions}}/sync\"\nversions = [\"v3\"]\nallow = [\"urn:matrix:client:api:*\"]\n"
    );
    // Replaced whole, with a modification time that moves even on coarse
    // file systems.
    let path = gate.dir.path().join("rules.toml");
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let new = gate.dir.path().join("rules.toml.new");
    std::fs::write(&new, extended).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&new)
        .unwrap()
        .set_modified(before + Duration::from_secs(2))
        .unwrap();
    std::fs::rename(&new, &path).unwrap();
    let mut status = 0;
    for _ in 0..60 {
        status = get(gate.addr, sync, Some(FULL_TOKEN))
            .await
            .0
            .status
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}

fn explain(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .arg("explain")
        .args([
            "--rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/scopes.toml"),
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explain_exit_codes_and_output() {
    let widget =
        "org.matrix.msc2762.timeline:!a:example.org org.matrix.msc2762.send.event:m.room.message";
    let (code, out) = explain(&[
        "--scopes",
        widget,
        "PUT",
        "/_matrix/client/v3/rooms/%21a%3Aexample.org/send/m.room.message/1",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("roomId=!a:example.org"), "{out}");
    assert!(out.contains("decision  allow"), "{out}");

    let (code, out) = explain(&[
        "--json",
        "--scopes",
        widget,
        "PUT",
        "/_matrix/client/v3/rooms/%21b%3Aexample.org/send/m.room.message/1",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"]["line"].as_u64().map(|l| l > 0), Some(true));

    let (code, out) = explain(&["GET", "/_matrix/client/v3/../../_synapse/admin"]);
    assert_eq!(code, 1);
    assert!(out.contains("refused before routing"), "{out}");

    let (code, _) = explain(&["BREW", "not a path"]);
    assert_eq!(code, 2);
}

#[test]
fn check_reports_rule_errors_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nroute = \"BREW /coffee\"\nallow = []\n",
    )
    .unwrap();
    let config = "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://127.0.0.1:8008\"\n[rules]\nfile = \"rules.toml\"\n[auth]\nserver_name = \"example.org\"\n";
    std::fs::write(dir.path().join("gate.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config"])
        .arg(dir.path().join("gate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rules.toml:2:"), "{stderr}");
}
