//! What a load refuses, each with the line to fix.

use scopegate::scopes::{RuleSet, Severity};

fn errors(src: &str) -> Vec<String> {
    match RuleSet::parse(src, "bad.toml") {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => {
            assert!(e.0.iter().all(|d| d.severity == Severity::Error));
            e.to_string().lines().map(str::to_owned).collect()
        }
    }
}

fn one_error(src: &str, line: usize, starts: &str) {
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let want = format!("bad.toml:{line}: {starts}");
    assert!(
        errs[0].starts_with(&want),
        "{} does not start with {want}",
        errs[0]
    );
}

#[test]
fn unknown_key() {
    one_error(
        "[[rule]]\nroute = \"GET /a\"\nallow = [\"s\"]\nalow = [\"t\"]\n",
        4,
        "unknown field `alow`",
    );
    one_error("[option]\nfederation = true\n", 1, "unknown field `option`");
}

#[test]
fn bad_method() {
    one_error(
        "[[rule]]\nroute = \"GET /a\"\nallow = [\"s\"]\n\n[[rule]]\nroute = \"FETCH /b\"\nallow = [\"s\"]\n",
        6,
        "unknown method `FETCH`",
    );
    one_error(
        "[[rule]]\nroutes = [\n  \"GET /a\",\n  \"get /b\",\n]\nallow = [\"s\"]\n",
        4,
        "unknown method `get`",
    );
}

#[test]
fn unknown_placeholder() {
    one_error(
        r#"[[rule]]
route = "PUT /rooms/{roomId}/send/{eventType}/{txnId}"
allow = [
  "full",
  ["send.event:{eventType}", "timeline:{room_id}"],
]
"#,
        5,
        "unknown placeholder `{room_id}` in `timeline:{room_id}`: route `/rooms/{roomId}/send/{eventType}/{txnId}` captures {roomId}, {eventType}, {txnId}",
    );
}

#[test]
fn overlap_with_different_requirements() {
    one_error(
        r#"[[rule]]
route = "GET /a/{x}/c"
allow = ["one"]

[[rule]]
route = "GET /a/b/{y}"
allow = ["two"]
"#,
        6,
        "overlap: `GET /a/b/{y}` and line 2 `GET /a/{x}/c` both match `/a/b/c`",
    );
    // Method sets cross too: `*` on a literal against `GET` on a capture.
    one_error(
        "[[rule]]\nroute = \"GET /a/{x}\"\nallow = [\"one\"]\n\n[[rule]]\nroute = \"* /a/b\"\nallow = [\"two\"]\n",
        6,
        "overlap: `* /a/b` and line 2 `GET /a/{x}`",
    );
}

#[test]
fn containment_and_equal_requirements_are_not_overlaps() {
    let ok = r#"[[rule]]
routes = ["GET /a/{x}/c", "GET /a/b/{y}"]
allow = ["same"]

[[rule]]
route = "GET /a/b/c"
allow = ["exception"]

[[rule]]
route = "* /a/{rest..}"
allow = ["fallback"]
"#;
    assert!(RuleSet::parse(ok, "ok.toml").is_ok());
}

#[test]
fn unreachable_duplicates() {
    one_error(
        r#"[versions]
cur = ["r0", "v3"]

[[rule]]
route = "GET|PUT /_matrix/client/{versions}/x/{id}"
versions = "cur"
allow = ["one"]

[[rule]]
route = "GET /_matrix/client/v3/x/{other}"
allow = ["two"]
"#,
        10,
        "unreachable: `GET /_matrix/client/v3/x/{other}` is already routed by line 5",
    );
}

#[test]
fn version_mistakes() {
    one_error(
        "[[rule]]\nroute = \"GET /a/{versions}/b\"\nversions = [\"v3\", \"v3\"]\nallow = [\"s\"]\n",
        2,
        "unreachable: `GET /a/{versions}/b` lists the same version twice",
    );
    one_error(
        "[[rule]]\nroute = \"GET /a/{versions}\"\nversions = \"nope\"\nallow = [\"s\"]\n",
        3,
        "unknown version set `nope`",
    );
    one_error(
        "[[rule]]\nroute = \"GET /a/{v}\"\nversions = [\"v3\"]\nallow = [\"s\"]\n",
        3,
        "`versions` given but no route uses `{versions}`",
    );
}

#[test]
fn many_errors_at_once_in_line_order() {
    let errs = errors(
        r#"[[rule]]
route = "GET /a/{x}"
allow = ["s:{y}"]

[[rule]]
route = "BREW /b"
allow = ["s"]

[[rule]]
route = "GET /c/{rest..}/d"
allow = ["s"]
"#,
    );
    let lines: Vec<&str> = errs.iter().map(|e| e.split(':').nth(1).unwrap()).collect();
    assert_eq!(lines, ["3", "6", "10"], "{errs:#?}");
}
