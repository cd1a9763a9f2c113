//! The command line: `check` reports config mistakes with their line.

use std::process::Command;

fn check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

const VALID: &str = r#"[server]
listen = "127.0.0.1:8080"

[upstream]
url = "http://127.0.0.1:8008"

[auth]
server_name = "example.org"
"#;

#[test]
fn check_accepts_a_valid_config() {
    let out = check(VALID);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_reports_the_line_of_a_mistake() {
    let out = check(&VALID.replace("url = ", "urll = "));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gate.toml:5:"), "{stderr}");
    assert!(stderr.contains("urll"), "{stderr}");

    let out = check(&VALID.replace("127.0.0.1:8008", "127.0.0.1:8008/prefix"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gate.toml:5:"));
}

#[test]
fn check_reports_missing_tls_files() {
    let out = check(&VALID.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\ntls_cert = \"missing.pem\"\ntls_key = \"missing.key\"",
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls_cert") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_broken_config_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, "[server]\nlisten = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gate.toml:2:"));
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/scopegate.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example in docs/config.md prints what the docs say it prints.
#[test]
fn check_reports_every_mistake_as_documented() {
    let doc = include_str!("../../docs/config.md");
    let example = doc
        .split("<!-- tested by tests/it/cli.rs -->\n```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the tested example in docs/config.md");
    let documented: Vec<&str> = doc
        .split(example)
        .nth(1)
        .unwrap()
        .lines()
        .skip_while(|l| !l.starts_with("$ scopegate check"))
        .skip(1)
        .take_while(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(documented.len(), 2, "{documented:?}");
    let out = check(example);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let printed: Vec<&str> = stderr.lines().collect();
    assert_eq!(printed.len(), documented.len(), "{stderr}");
    // The same after the file's path, which is a temporary one here.
    for (printed, documented) in printed.iter().zip(documented) {
        let (_, after_path) = printed.split_once("gate.toml:").expect("file:line");
        assert_eq!(
            after_path,
            documented.split_once("gate.toml:").unwrap().1,
            "{stderr}"
        );
    }
}
