//! The shipped rules against every endpoint of the client-server API.

use scopegate::scopes::{Access, RuleSet, ScopeSet};

use crate::catalog;

fn scopes(s: &str) -> ScopeSet {
    ScopeSet::from_space_separated(s)
}

const FULL: &str = "urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ";
const FULL_UNSTABLE: &str =
    "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ";
const DEVICE_ONLY: &str = "urn:matrix:client:device:ABC";

/// `{roomId}` → `{}` so that templates compare by shape.
fn shape(template: &str) -> String {
    let mut out = String::new();
    let mut in_brace = false;
    for c in template.chars() {
        match c {
            '{' => {
                in_brace = true;
                out.push('{');
            }
            '}' => {
                in_brace = false;
                out.push('}');
            }
            _ if in_brace => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn every_row_is_classified_by_its_own_rule() {
    let rs = RuleSet::builtin();
    for row in catalog::rows() {
        let m = rs.route(&row.method, &row.example);
        let label = match catalog::split_version(&row.template) {
            Some((_, v)) => m.label().replace("{versions}", v),
            None => m.label().to_owned(),
        };
        assert_eq!(
            shape(&label),
            shape(&row.template),
            "{} {} matched line {:?}",
            row.method,
            row.example,
            m.rule_line()
        );
        let expected = match row.auth.as_str() {
            "none" => Access::Public,
            "optional" => Access::Optional,
            // The spec labels room_summary X-Matrix; in practice it is optional.
            _ if row.template.contains("/room_summary/") => Access::Optional,
            "required" | "appservice" => Access::Protected,
            other => panic!("unknown auth {other}"),
        };
        assert_eq!(m.access(), expected, "{} {}", row.method, row.example);
    }
}

#[test]
fn full_access_is_allowed_everywhere_also_by_its_unstable_name() {
    let rs = RuleSet::builtin();
    for row in catalog::rows() {
        let m = rs.route(&row.method, &row.example);
        for token in [FULL, FULL_UNSTABLE] {
            assert!(
                rs.authorize(&m, &scopes(token)).is_allow(),
                "{token} refused on {} {}",
                row.method,
                row.example
            );
        }
    }
}

#[test]
fn public_rows_pass_without_a_token() {
    let rs = RuleSet::builtin();
    let public: Vec<_> = catalog::rows()
        .into_iter()
        .filter(|r| r.auth == "none")
        .collect();
    assert_eq!(public.len(), 26);
    for row in public {
        let m = rs.route(&row.method, &row.example);
        assert_eq!(m.access(), Access::Public, "{}", row.example);
        assert!(rs.authorize(&m, &ScopeSet::default()).is_allow());
    }
}

#[test]
fn a_device_scope_alone_opens_no_authenticated_row() {
    let rs = RuleSet::builtin();
    let device = scopes(DEVICE_ONLY);
    let mut checked = 0;
    for row in catalog::rows() {
        if !matches!(row.auth.as_str(), "required" | "appservice") {
            continue;
        }
        let m = rs.route(&row.method, &row.example);
        assert!(
            !rs.authorize(&m, &device).is_allow(),
            "device scope allowed {} {}",
            row.method,
            row.example
        );
        assert!(!rs.authorize(&m, &ScopeSet::default()).is_allow());
        checked += 1;
    }
    assert_eq!(checked, 137);
}

#[test]
fn the_legacy_prefixes_synapse_accepts_route_to_the_same_rule() {
    let rs = RuleSet::builtin();
    let (full, device) = (scopes(FULL), scopes(DEVICE_ONLY));
    let mut checked = 0;
    for row in catalog::rows() {
        let spec = rs.route(&row.method, &row.example);
        for version in &row.synapse_versions {
            let path = catalog::with_version(&row.example, version);
            let m = rs.route(&row.method, &path);
            assert_eq!(
                (m.label(), m.access()),
                (spec.label(), spec.access()),
                "{} {path}",
                row.method
            );
            assert!(rs.authorize(&m, &full).is_allow(), "{path}");
            if m.access() == Access::Protected {
                assert!(!rs.authorize(&m, &device).is_allow(), "{path}");
            }
            checked += 1;
        }
    }
    assert!(checked > 400, "{checked}");
}

#[test]
fn unknown_client_and_media_routes_need_full_access() {
    let rs = RuleSet::builtin();
    for path in [
        "/_matrix/client/unstable/org.matrix.msc9999/shiny",
        "/_matrix/client/v4/sync",
        "/_matrix/client/",
        "/_matrix/media/v9/whatever/x",
    ] {
        let m = rs.route(&http::Method::POST, path);
        assert_eq!(m.access(), Access::Protected, "{path}");
        assert!(rs.authorize(&m, &scopes(FULL)).is_allow(), "{path}");
        for narrow in [
            "scopegate:read scopegate:messaging scopegate:media",
            "urn:synapse:admin:*",
        ] {
            assert!(!rs.authorize(&m, &scopes(narrow)).is_allow(), "{path}");
        }
    }
    // A wrong method on a known route falls back to the same rule.
    let m = rs.route(&http::Method::DELETE, "/_matrix/client/v3/sync");
    assert_eq!(m.label(), "/_matrix/client/{rest..}");
}

#[test]
fn only_the_admin_scope_opens_the_synapse_admin_api() {
    let rs = RuleSet::builtin();
    let m = rs.route(&http::Method::GET, "/_synapse/admin/v2/users/%40a%3Ax");
    assert_eq!(m.access(), Access::Protected);
    assert!(rs.authorize(&m, &scopes("urn:synapse:admin:*")).is_allow());
    assert!(!rs.authorize(&m, &scopes(FULL)).is_allow());
    // …and the admin scope alone opens nothing of the client API.
    let m = rs.route(&http::Method::GET, "/_matrix/client/v3/sync");
    assert!(!rs.authorize(&m, &scopes("urn:synapse:admin:*")).is_allow());
}

#[test]
fn federation_passes_through_and_can_be_turned_off() {
    let rs = RuleSet::builtin();
    for path in [
        "/_matrix/federation/v1/send/1234",
        "/_matrix/federation/v2/invite/!r:x/$e",
        "/_matrix/key/v2/server",
        "/_matrix/policy/v1/sign",
    ] {
        let m = rs.route(&http::Method::PUT, path);
        assert_eq!(m.access(), Access::Federation, "{path}");
        assert!(rs.authorize(&m, &ScopeSet::default()).is_allow());
    }
    assert_eq!(
        rs.route(&http::Method::GET, "/.well-known/matrix/server")
            .access(),
        Access::Public
    );

    let src = include_str!("../../scopes.toml").replace("federation = true", "federation = false");
    let loaded = RuleSet::parse(&src, "scopes.toml").unwrap();
    assert_eq!(loaded.warnings.len(), 3);
    let m = loaded
        .rules
        .route(&http::Method::PUT, "/_matrix/federation/v1/send/1");
    assert_eq!(m.access(), Access::Unmatched);
}

#[test]
fn everything_else_is_refused() {
    let rs = RuleSet::builtin();
    for path in [
        "/",
        "/_matrix",
        "/_matrix/app/v1/transactions/1",
        "/_synapse/client/x",
        "/index.html",
    ] {
        let m = rs.route(&http::Method::GET, path);
        assert_eq!(
            (m.access(), m.label()),
            (Access::Unmatched, "unmatched"),
            "{path}"
        );
        assert!(!rs.authorize(&m, &scopes(FULL)).is_allow());
    }
}

#[test]
fn the_shipped_file_loads_without_warnings() {
    let loaded = RuleSet::parse(include_str!("../../scopes.toml"), "scopes.toml").unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

/// The coarse vocabulary, route by route.
#[test]
fn bot_scopes_stay_in_their_lanes() {
    use http::Method;
    let rs = RuleSet::builtin();
    let room = "/_matrix/client/v3/rooms/!r%3Aexample.org";
    let user = "/_matrix/client/v3/user/%40bot%3Aexample.org";
    let cases: &[(Method, String, [bool; 3])] = &[
        // read, messaging, media
        (
            Method::GET,
            "/_matrix/client/v3/sync".into(),
            [true, true, false],
        ),
        (Method::GET, format!("{room}/messages"), [true, true, false]),
        (
            Method::GET,
            format!("{room}/state/m.room.topic/"),
            [true, true, false],
        ),
        (
            Method::GET,
            "/_matrix/client/v3/account/whoami".into(),
            [true, true, true],
        ),
        (Method::POST, format!("{user}/filter"), [true, true, false]),
        (
            Method::PUT,
            format!("{room}/send/m.room.message/t1"),
            [false, true, false],
        ),
        (
            Method::PUT,
            format!("{room}/redact/%24e/t2"),
            [false, true, false],
        ),
        (
            Method::POST,
            "/_matrix/client/v3/join/%23a%3Ax".into(),
            [false, true, false],
        ),
        (Method::POST, format!("{room}/leave"), [false, true, false]),
        (
            Method::PUT,
            format!("{room}/state/m.room.topic/"),
            [false, false, false],
        ),
        (
            Method::POST,
            format!("{room}/invite"),
            [false, false, false],
        ),
        (
            Method::GET,
            format!("{user}/account_data/m.direct"),
            [false, false, false],
        ),
        (
            Method::GET,
            "/_matrix/client/v3/devices".into(),
            [false, false, false],
        ),
        (
            Method::POST,
            "/_matrix/client/v3/keys/query".into(),
            [false, false, false],
        ),
        (
            Method::GET,
            "/_matrix/client/v3/account/3pid".into(),
            [false, false, false],
        ),
        (
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.x/t".into(),
            [false, false, false],
        ),
        (
            Method::POST,
            "/_matrix/media/v3/upload".into(),
            [false, false, true],
        ),
        (
            Method::GET,
            "/_matrix/client/v1/media/download/x.org/abc".into(),
            [false, false, true],
        ),
    ];
    for (method, path, expected) in cases {
        for (scope, want) in ["scopegate:read", "scopegate:messaging", "scopegate:media"]
            .iter()
            .zip(expected)
        {
            let m = rs.route(method, path);
            assert_eq!(
                rs.authorize(&m, &scopes(scope)).is_allow(),
                *want,
                "{scope} on {method} {path}"
            );
        }
    }
}
