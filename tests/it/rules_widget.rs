//! Widget capabilities as scopes: bound to a room and an event type, and no
//! way to widen the binding from the request path.

use http::Method;
use scopegate::scopes::{RuleSet, ScopeSet};

const ROOM: &str = "!abc:example.org";
/// The same room id, as strict, js (`encodeURIComponent`) and raw encoders send it.
const ROOM_FORMS: [&str; 3] = [
    "%21abc%3Aexample.org",
    "!abc%3Aexample.org",
    "!abc:example.org",
];

fn widget(extra: &str) -> ScopeSet {
    ScopeSet::from_space_separated(&format!(
        "urn:matrix:client:device:WIDGETDEV1 org.matrix.msc2762.timeline:{ROOM} {extra}"
    ))
}

fn allowed(method: Method, path: &str, scopes: &ScopeSet) -> bool {
    static RULES: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
    let rs = RULES.get_or_init(RuleSet::builtin);
    let m = rs.route(&method, path);
    rs.authorize(&m, scopes).is_allow()
}

fn send(room: &str, event_type: &str) -> String {
    format!("/_matrix/client/v3/rooms/{room}/send/{event_type}/m1718031234567.0")
}

fn state(room: &str, event_type: &str, key: &str) -> String {
    format!("/_matrix/client/v3/rooms/{room}/state/{event_type}/{key}")
}

#[test]
fn sends_only_the_bound_type_into_the_bound_room() {
    let w = widget("org.matrix.msc2762.send.event:m.room.message");
    for room in ROOM_FORMS {
        assert!(
            allowed(Method::PUT, &send(room, "m.room.message"), &w),
            "{room}"
        );
        assert!(
            !allowed(Method::PUT, &send(room, "m.reaction"), &w),
            "{room}"
        );
    }
    for other in ["!other:example.org", "%21abc%3Aexample.net", "!abc"] {
        assert!(
            !allowed(Method::PUT, &send(other, "m.room.message"), &w),
            "{other}"
        );
    }
    // Legacy prefixes decide the same.
    let r0 = send(ROOM, "m.room.message").replace("/v3/", "/r0/");
    assert!(allowed(Method::PUT, &r0, &w));
}

#[test]
fn without_a_timeline_scope_the_room_is_closed() {
    let w = ScopeSet::from_space_separated("org.matrix.msc2762.send.event:m.room.message");
    assert!(!allowed(Method::PUT, &send(ROOM, "m.room.message"), &w));
    let read = format!("/_matrix/client/v3/rooms/{ROOM}/messages");
    assert!(!allowed(Method::GET, &read, &w));
    assert!(allowed(Method::GET, &read, &widget("")));
    let other = "/_matrix/client/v3/rooms/!zzz:example.org/messages";
    assert!(!allowed(Method::GET, other, &widget("")));
}

#[test]
fn any_room_with_timeline_wildcard() {
    let w = ScopeSet::from_space_separated(
        "org.matrix.msc2762.timeline:* org.matrix.msc2762.send.event:m.room.message",
    );
    for room in [
        "!one:a.org",
        "%21two%3Ab.org",
        "!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM",
    ] {
        assert!(
            allowed(Method::PUT, &send(room, "m.room.message"), &w),
            "{room}"
        );
        assert!(
            !allowed(Method::PUT, &send(room, "m.room.encrypted"), &w),
            "{room}"
        );
    }
}

#[test]
fn state_needs_the_state_capability() {
    let sender = widget("org.matrix.msc2762.send.event:m.room.topic");
    let path = state(ROOM, "m.room.topic", "");
    assert!(!allowed(Method::PUT, &path, &sender));

    let any_key = widget("org.matrix.msc2762.send.state_event:m.room.topic");
    assert!(allowed(Method::PUT, &path, &any_key));
    assert!(allowed(
        Method::PUT,
        &state(ROOM, "m.room.topic", "x"),
        &any_key
    ));
    assert!(!allowed(
        Method::PUT,
        &state(ROOM, "m.room.name", ""),
        &any_key
    ));
    // Synapse's form without the trailing slash (empty state key).
    let bare = format!("/_matrix/client/v3/rooms/{ROOM}/state/m.room.topic");
    assert!(allowed(Method::PUT, &bare, &any_key));

    let one_key = widget("org.matrix.msc2762.send.state_event:m.room.member#@alice:example.org");
    let member = |key: &str| state(ROOM, "m.room.member", key);
    assert!(allowed(
        Method::PUT,
        &member("%40alice%3Aexample.org"),
        &one_key
    ));
    assert!(allowed(
        Method::PUT,
        &member("@alice:example.org"),
        &one_key
    ));
    assert!(!allowed(
        Method::PUT,
        &member("%40bob%3Aexample.org"),
        &one_key
    ));
    assert!(!allowed(Method::PUT, &member(""), &one_key));

    let empty_key = widget("org.matrix.msc2762.send.state_event:m.room.topic#");
    assert!(allowed(Method::PUT, &path, &empty_key));
    assert!(allowed(Method::PUT, &bare, &empty_key));
    assert!(!allowed(
        Method::PUT,
        &state(ROOM, "m.room.topic", "x"),
        &empty_key
    ));

    let reader = widget("org.matrix.msc2762.receive.state_event:m.room.topic");
    assert!(allowed(Method::GET, &path, &reader));
    assert!(!allowed(Method::PUT, &path, &reader));
}

#[test]
fn room_scoped_widget_routes_need_the_binding() {
    let w = widget("org.matrix.msc2762.send.event:m.room.redaction");
    let ok = |path: String, method: Method| {
        assert!(allowed(method.clone(), &path, &w), "{path}");
        let elsewhere = path.replace(ROOM, "!zzz:example.org");
        assert!(!allowed(method, &elsewhere, &w), "{elsewhere}");
    };
    let room = format!("/_matrix/client/v3/rooms/{ROOM}");
    ok(format!("{room}/messages"), Method::GET);
    ok(format!("{room}/context/%24e"), Method::GET);
    ok(format!("{room}/event/%24e"), Method::GET);
    ok(format!("{room}/redact/%24e/t"), Method::PUT);
    ok(format!("{room}/read_markers"), Method::POST);
    ok(format!("{room}/receipt/m.read/%24e"), Method::POST);
    ok(format!("{room}/typing/%40me%3Aexample.org"), Method::PUT);
    ok(
        format!("/_matrix/client/v1/rooms/{ROOM}/relations/%24e/m.thread"),
        Method::GET,
    );
    // Membership and moderation are not widget routes.
    assert!(!allowed(Method::POST, &format!("{room}/join"), &w));
    assert!(!allowed(Method::POST, &format!("{room}/kick"), &w));
}

#[test]
fn a_room_id_cannot_smuggle_a_wider_grant() {
    let w = widget("org.matrix.msc2762.send.event:m.room.message");
    for forged in [
        "!abc:example.org%2Fx",    // `%2F`: one segment, decoded `!abc:example.org/x`
        "%21abc%3Aexample.org%2F", // trailing encoded slash
        "!abc:example.org:8448",   // another `:` part
        "!abc:example.org%3A",
        "*", // a literal `*` is not the wildcard
        "%2A",
        "!abc:*",
        "!abc%3A%2A",
    ] {
        assert!(
            !allowed(Method::PUT, &send(forged, "m.room.message"), &w),
            "{forged}"
        );
    }
    // A token bound to a prefix of a room id gets nothing of the longer one.
    let short = ScopeSet::from_space_separated(
        "org.matrix.msc2762.timeline:!abc org.matrix.msc2762.send.event:m.room.message",
    );
    assert!(!allowed(
        Method::PUT,
        &send("!abc:example.org", "m.room.message"),
        &short
    ));
    assert!(!allowed(
        Method::PUT,
        &send("!abc%3A", "m.room.message"),
        &short
    ));
}

#[test]
fn msgtype_capabilities_do_not_grant_the_send() {
    let w = widget("org.matrix.msc2762.send.event:m.room.message#m.text");
    assert!(!allowed(Method::PUT, &send(ROOM, "m.room.message"), &w));
    // …nor can the path forge the `#msgtype` qualifier.
    assert!(!allowed(
        Method::PUT,
        &send(ROOM, "m.room.message%23m.text"),
        &w
    ));
}

#[test]
fn stickers_by_their_own_capability() {
    let w = widget("m.sticker");
    assert!(allowed(Method::PUT, &send(ROOM, "m.sticker"), &w));
    assert!(!allowed(Method::PUT, &send(ROOM, "m.room.message"), &w));
    assert!(!allowed(
        Method::PUT,
        &send("!zzz:example.org", "m.sticker"),
        &w
    ));
}

#[test]
fn to_device_and_media_and_directory() {
    let w = ScopeSet::from_space_separated(
        "org.matrix.msc3819.send.to_device:m.call.invite org.matrix.msc4039.upload_file",
    );
    assert!(allowed(
        Method::PUT,
        "/_matrix/client/v3/sendToDevice/m.call.invite/t1",
        &w
    ));
    assert!(!allowed(
        Method::PUT,
        "/_matrix/client/v3/sendToDevice/m.room_key/t1",
        &w
    ));
    assert!(allowed(Method::POST, "/_matrix/media/v3/upload", &w));
    assert!(allowed(Method::POST, "/_matrix/media/v1/create", &w));
    assert!(!allowed(
        Method::GET,
        "/_matrix/client/v1/media/download/x.org/abc",
        &w
    ));

    let reader = ScopeSet::from_space_separated("org.matrix.msc4039.download_file");
    assert!(allowed(
        Method::GET,
        "/_matrix/client/v1/media/download/x.org/abc",
        &reader
    ));
    assert!(allowed(
        Method::GET,
        "/_matrix/client/unstable/org.matrix.msc3916/media/thumbnail/x.org/abc",
        &reader
    ));
    assert!(!allowed(Method::POST, "/_matrix/media/v3/upload", &reader));

    let dir = ScopeSet::from_space_separated("org.matrix.msc3973.user_directory_search");
    assert!(allowed(
        Method::POST,
        "/_matrix/client/v3/user_directory/search",
        &dir
    ));
    let turn = ScopeSet::from_space_separated("town.robin.msc3846.turn_servers");
    assert!(allowed(
        Method::GET,
        "/_matrix/client/v3/voip/turnServer",
        &turn
    ));
}
