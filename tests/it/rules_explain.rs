//! `explain`: what an operator reads to see why a request is allowed or not.

use http::Method;
use scopegate::scopes::{Access, RuleSet, Ruling, ScopeSet};
use serde_json::json;

fn rules() -> RuleSet {
    RuleSet::parse(
        r#"[versions]
cur = ["r0", "v3"]

[[rule]]
route = "PUT /_matrix/client/{versions}/rooms/{roomId}/send/{eventType}/{txnId}"
versions = "cur"
allow = [
  "urn:matrix:client:api:*",
  ["org.matrix.msc2762.send.event:{eventType}", "org.matrix.msc2762.timeline:{roomId}"],
]

[[rule]]
route = "GET /_matrix/client/{versions}/login"
versions = "cur"
access = "public"
"#,
        "scopes.toml",
    )
    .unwrap()
    .rules
}

const SEND: &str = "/_matrix/client/v3/rooms/%21r%3Ax.org/send/m.room.message/t1";

#[test]
fn text_for_a_denied_widget_send() {
    let scopes = ScopeSet::from_space_separated("org.matrix.msc2762.timeline:!r:x.org");
    let text = rules().explain(&Method::PUT, SEND, &scopes).to_string();
    assert_eq!(
        text,
        "\
request   PUT /_matrix/client/v3/rooms/%21r%3Ax.org/send/m.room.message/t1
rule      scopes.toml:5 PUT /_matrix/client/{versions}/rooms/{roomId}/send/{eventType}/{txnId}
access    protected
captures  roomId=!r:x.org (%21r%3Ax.org) eventType=m.room.message txnId=t1
token     org.matrix.msc2762.timeline:!r:x.org
accepts   any of
  [ ] urn:matrix:client:api:* (missing)
  [ ] org.matrix.msc2762.send.event:m.room.message (missing) + org.matrix.msc2762.timeline:!r:x.org
decision  deny: no alternative is satisfied
"
    );
}

#[test]
fn json_for_an_allowed_widget_send() {
    let scopes = ScopeSet::from_space_separated(
        "org.matrix.msc2762.timeline:* org.matrix.msc2762.send.event:m.room.message",
    );
    let e = rules().explain(&Method::PUT, SEND, &scopes);
    assert_eq!(e.decision, Ruling::Allow);
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(
        v["rule"],
        json!({"file": "scopes.toml", "line": 5, "route": "PUT /_matrix/client/{versions}/rooms/{roomId}/send/{eventType}/{txnId}"})
    );
    assert_eq!(v["access"], "protected");
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["reason"], "alternative 2 is satisfied");
    assert_eq!(
        v["captures"][0],
        json!({"name": "roomId", "raw": "%21r%3Ax.org", "value": "!r:x.org"})
    );
    assert_eq!(
        v["alternatives"][1],
        json!({"satisfied": true, "scopes": [
            {"template": "org.matrix.msc2762.send.event:{eventType}", "scope": "org.matrix.msc2762.send.event:m.room.message", "granted": true},
            {"template": "org.matrix.msc2762.timeline:{roomId}", "scope": "org.matrix.msc2762.timeline:!r:x.org", "granted": true},
        ]})
    );
    assert_eq!(v["alternatives"][0]["satisfied"], false);
}

#[test]
fn public_and_unmatched_and_missing_token() {
    let rs = rules();
    let none = ScopeSet::default();
    let e = rs.explain(&Method::GET, "/_matrix/client/r0/login", &none);
    assert_eq!((e.access, e.decision), (Access::Public, Ruling::Allow));
    assert!(e
        .to_string()
        .ends_with("decision  allow: public route: no token needed\n"));

    let e = rs.explain(&Method::GET, "/_matrix/client/v3/sync", &none);
    assert_eq!((e.access, e.decision), (Access::Unmatched, Ruling::Deny));
    assert!(e.rule.is_none());
    assert!(e.to_string().contains("rule      none\n"));
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(
        (v["access"].as_str(), v["rule"].is_null()),
        (Some("unmatched"), true)
    );

    let e = rs.explain(&Method::PUT, SEND, &none);
    assert_eq!(e.decision, Ruling::Deny);
    assert_eq!(e.reason, "a token is required");
}
