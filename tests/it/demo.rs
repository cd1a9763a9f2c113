//! `scopegate demo` does what it prints: each demo token gets the answer the
//! instructions promise.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use http::Request;

use crate::support::*;

#[tokio::test]
async fn demo_tokens_behave_as_printed() {
    let (listen, admin) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Keep reading to the end, so the demo never writes into a closed pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.contains("M_UNKNOWN_TOKEN") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(text.clone());
                }
            }
        }
    });
    let printed =
        tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(20)))
            .await
            .unwrap();
    let Ok(printed) = printed else {
        let _ = child.kill();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        panic!("the demo did not print its instructions: {stderr}");
    };
    assert!(printed.contains(&format!(
        "curl -s http://{listen}/_matrix/client/v3/account/whoami"
    )));
    let token = |var: &str| -> &'static str {
        let prefix = format!("export {var}=");
        let line = printed
            .lines()
            .find(|l| l.starts_with(&prefix))
            .expect("an export line");
        let token = line[prefix.len()..].to_string();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        Box::leak(token.into_boxed_str())
    };
    let (full_token, bot, widget) = (token("FULL"), token("BOT"), token("WIDGET"));

    let room = "/_matrix/client/v3/rooms/%21demo%3Aexample.org/send/m.room.message";
    let other = "/_matrix/client/v3/rooms/%21other%3Aexample.org/send/m.room.message";
    let put = |path: String, token: &'static str| async move {
        let req = Request::put(path)
            .header("authorization", format!("Bearer {token}"))
            .body(full(r#"{"msgtype":"m.text","body":"hi"}"#))
            .unwrap();
        send(listen, req).await
    };

    let (parts, body) = get(listen, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(
        (parts.status.as_u16(), json(&body)["errcode"].clone()),
        (401, "M_MISSING_TOKEN".into())
    );
    let (parts, body) = get(
        listen,
        "/_matrix/client/v3/account/whoami",
        Some(full_token),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(json(&body)["user_id"], "@alice:example.org");
    assert_eq!(put(format!("{room}/t1"), full_token).await.0.status, 200);
    let (parts, body) = get(listen, "/_matrix/client/v3/sync", Some(full_token)).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        json(&body)["rooms"]["join"]["!demo:example.org"]["timeline"]["events"][0]["content"]
            ["body"],
        "hi"
    );

    assert_eq!(
        get(listen, "/_matrix/client/v3/sync", Some(bot))
            .await
            .0
            .status,
        200
    );
    assert_eq!(put(format!("{room}/t2"), bot).await.0.status, 403);
    assert_eq!(put(format!("{room}/t3"), widget).await.0.status, 200);
    assert_eq!(put(format!("{other}/t4"), widget).await.0.status, 403);
    let (parts, body) = get(
        listen,
        "/_matrix/client/v3/account/whoami",
        Some("not-a-token"),
    )
    .await;
    assert_eq!(
        (parts.status.as_u16(), json(&body)["errcode"].clone()),
        (401, "M_UNKNOWN_TOKEN".into())
    );

    let _ = child.kill();
    let _ = child.wait();
}
