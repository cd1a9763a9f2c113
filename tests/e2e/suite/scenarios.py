"""The provider and the delegated Synapse on their own, then scopegate with static
tokens (`[[auth.static]]`): the shipped rules, canonicalization and framing
(hostile input), streaming, long-polls, upstream errors.

Numbers in test names are issue 6's scenario numbers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time

import jwt
import requests
from nio import (
    DownloadError,
    MemoryDownloadResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
    WhoamiResponse,
)

from . import fixtures as fx
from . import oidc
from . import stack as st
from .harness import (
    bearer,
    check,
    expect_matrix_error,
    first_response_body,
    marker,
    poll,
    raw_request,
    scenario,
)

FULL = oidc.FULL
SYNC_FILTER = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {"timeline": {"limit": 10}, "state": {"lazy_load_members": True},
             "ephemeral": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]}},
}


def S():
    return fx.stack()


# ================================================================== the provider, directly
# Later scenarios stand on these: the provider issues what they need, and the
# delegated Synapse accepts it.


@scenario("provider: client_credentials token introspects active with its scopes (basic, post, bearer)")
def provider_client_credentials():
    op = S().op
    scopes = [FULL, oidc.device_scope("CCDEVICE1")]
    resp = oidc.client_credentials(op, "alice-cc", scopes)
    check(set(resp["scope"].split()) == set(scopes), f"granted scope: {resp['scope']}")
    check(resp["token_type"] == "Bearer" and resp["expires_in"] > 0, f"token response: {resp}")
    before = S().op_stats()["introspection"]
    for client, method in (("gateway", "client_secret_basic"), ("gateway-post", "client_secret_post"),
                           ("gateway", "bearer")):
        r = oidc.introspect(op, resp["access_token"], client=client, method=method)
        check(r.status_code == 200, f"introspection ({method}): {r.status_code} {r.text[:200]}")
        body = r.json()
        check(body.get("active") is True, f"introspection ({method}): {body}")
        check(set(body["scope"].split()) == set(scopes), f"introspected scope ({method}): {body['scope']}")
        check(body.get("username") == "alice" and body.get("client_id") == "alice-cc",
              f"introspected identity ({method}): {body}")
        check(body.get("aud") == oidc.RS_HOMESERVER, f"audience ({method}): {body.get('aud')}")
        check(body["exp"] > time.time(), f"exp in the past ({method}): {body['exp']}")
    after = S().op_stats()["introspection"]
    check(after.get("gateway", 0) - before.get("gateway", 0) == 2
          and after.get("gateway-post", 0) - before.get("gateway-post", 0) == 1,
          f"the provider's introspection counter: before {before}, after {after}")
    # Refusals the gateway will meet.
    r = oidc.introspect(op, "not-a-token")
    check(r.status_code == 200 and r.json() == {"active": False}, f"unknown token: {r.text}")
    r = oidc.introspect(op, resp["access_token"], secret="wrong-secret")
    check(r.status_code == 401 and r.json().get("error") == "invalid_client",
          f"wrong introspection secret: {r.status_code} {r.text[:200]}")
    r = oidc.introspect(op, resp["access_token"], client="bob-cc", secret="bob-cc-secret",
                        method="client_secret_post")
    check(r.status_code == 200 and r.json() == {"active": False},
          f"another client may not introspect alice's token: {r.text[:200]}")
    # Scopes outside the grantable namespaces are dropped, narrow ones granted.
    narrow = ["org.matrix.msc2762.timeline:!room:localhost",
              "org.matrix.msc2762.send.event:m.room.message", "scopegate:read", "evil:scope"]
    got = oidc.client_credentials(op, "widget-cc", narrow)["scope"].split()
    check(set(got) == set(narrow[:3]), f"narrow scopes granted: {got}")


@scenario("provider: RFC 9068 JWT access token verifies against the JWKS; not introspectable")
def provider_jwt():
    op = S().op
    scopes = [FULL, oidc.device_scope("JWTDEV1")]
    at = oidc.client_credentials(op, "alice-cc", scopes, resource=oidc.RS_GATEWAY)["access_token"]
    header = jwt.get_unverified_header(at)
    check(header.get("typ") == "at+jwt" and header.get("alg") == "RS256" and header.get("kid"),
          f"JWT header: {header}")
    meta = requests.get(op + "/.well-known/openid-configuration", timeout=5).json()
    check(meta["issuer"] == op and meta["jwks_uri"] == op + "/jwks"
          and meta["introspection_endpoint"] == op + "/oauth2/introspect"
          and meta.get("account_management_uri"), f"discovery: {meta}")
    jwks = requests.get(meta["jwks_uri"], timeout=5).json()
    check({k["kty"] for k in jwks["keys"]} == {"RSA", "EC"}
          and all("d" not in k for k in jwks["keys"]), "JWKS: public RSA and EC keys")
    key = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(at)
    claims = jwt.decode(at, key.key, algorithms=["RS256"], audience=oidc.RS_GATEWAY, issuer=op)
    check(set(claims["scope"].split()) == set(scopes) and claims["username"] == "alice"
          and claims["client_id"] == "alice-cc" and claims["exp"] > time.time() and claims["jti"],
          f"JWT claims: {claims}")
    r = oidc.introspect(op, at)
    check(r.status_code == 400 and r.json().get("error") == "unsupported_token_type",
          f"oidc-provider introspecting its own JWT: {r.status_code} {r.text[:200]}")
    other = oidc.client_credentials(op, "alice-cc", scopes, resource=oidc.RS_ELSEWHERE)["access_token"]
    check(jwt.decode(other, options={"verify_signature": False})["aud"] == oidc.RS_ELSEWHERE,
          "a JWT for another audience")


_device_token: dict = {}


@scenario("provider: device authorization grant (RFC 8628) issues a token for the approving user")
def provider_device_flow():
    op = S().op
    scopes = [FULL, oidc.device_scope("DEVFLOW1")]
    tok = oidc.device_flow(op, "carol", scopes)
    check(set(tok["scope"].split()) == set(scopes), f"device-flow scope: {tok['scope']}")
    check("refresh_token" in tok, "a refresh token for the device")
    body = oidc.introspect(op, tok["access_token"]).json()
    check(body.get("active") is True and body.get("username") == "carol"
          and body.get("sub") == "carol" and body.get("client_id") == oidc.PUBLIC_CLIENT,
          f"device-flow token introspection: {body}")
    _device_token.update(tok)


@scenario("provider: authorization_code + PKCE, refresh tokens rotate and the old one dies")
def provider_auth_code_refresh():
    op = S().op
    scopes = ["openid", FULL, oidc.device_scope("ACDEV1")]
    tok = oidc.auth_code_login(op, "alice", scopes)
    check("id_token" in tok and "refresh_token" in tok, f"code exchange: {sorted(tok)}")
    check(set(tok["scope"].split()) >= {FULL, oidc.device_scope("ACDEV1")}, f"scope: {tok['scope']}")
    r1 = oidc.refresh(op, tok["refresh_token"])
    check(r1.status_code == 200, f"refresh: {r1.status_code} {r1.text[:200]}")
    new = r1.json()
    check(new["refresh_token"] != tok["refresh_token"] and new["access_token"] != tok["access_token"],
          "rotation: new refresh and access tokens")
    check(set(new["scope"].split()) >= {FULL, oidc.device_scope("ACDEV1")},
          f"refresh keeps the dynamic device scope: {new['scope']}")
    check(oidc.introspect(op, new["access_token"]).json().get("active") is True, "new access token active")
    check(oidc.introspect(op, tok["access_token"]).json().get("active") is True,
          "the first access token stays active after rotation (until it expires or is revoked)")
    again = oidc.refresh(op, tok["refresh_token"])
    check(again.status_code == 400 and again.json().get("error") == "invalid_grant",
          f"reusing a rotated refresh token: {again.status_code} {again.text[:200]}")
    # Replay of a rotated refresh token revokes the whole grant, new tokens included.
    for label, t in (("first", tok["access_token"]), ("rotated", new["access_token"])):
        check(oidc.introspect(op, t).json() == {"active": False},
              f"after refresh-token replay the {label} access token is still active")
    check(oidc.refresh(op, new["refresh_token"]).status_code == 400,
          "after refresh-token replay the newest refresh token still works")
    # A PKCE verifier is required of the public client.
    r = requests.get(op + "/auth", params={"client_id": oidc.PUBLIC_CLIENT, "response_type": "code",
                                           "redirect_uri": oidc.REDIRECT_URI, "scope": FULL},
                     allow_redirects=False, timeout=10)
    location = r.headers.get("location", "")
    check(r.status_code in (302, 303) and "error=invalid_request" in location and "PKCE" in location,
          f"authorization without PKCE: {r.status_code} {location}")


@scenario("provider: the delegated Synapse accepts its opaque, JWT and device-flow tokens directly")
def delegated_synapse_direct():
    s = S()
    hs = s.url("hs-delegated") + "/_matrix/client/v3/account/whoami"
    opaque = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("DIRECT1")])
    r = requests.get(hs, headers=bearer(opaque), timeout=10)
    check(r.status_code == 200 and r.json().get("user_id") == fx.uid("alice")
          and r.json().get("device_id") == "DIRECT1", f"opaque token: {r.status_code} {r.text[:200]}")
    j = oidc.user_token(s.op, "bob", [FULL, oidc.device_scope("DIRECT2")], resource=oidc.RS_GATEWAY)
    r = requests.get(hs, headers=bearer(j), timeout=10)
    check(r.status_code == 200 and r.json().get("user_id") == fx.uid("bob"),
          f"JWT token: {r.status_code} {r.text[:200]}")
    if not _device_token:
        provider_device_flow()
    r = requests.get(hs, headers=bearer(_device_token["access_token"]), timeout=10)
    check(r.status_code == 200 and r.json().get("user_id") == fx.uid("carol")
          and r.json().get("device_id") == "DEVFLOW1", f"device-flow token: {r.status_code} {r.text[:200]}")
    # Why restricted tokens need scopegate's introspection relay: Synapse on its
    # own refuses any token without full access.
    narrow = oidc.user_token(s.op, "alice", ["scopegate:read", oidc.device_scope("DIRECT1")])
    r = requests.get(hs, headers=bearer(narrow), timeout=10)
    expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", "delegated Synapse, token without api:*")


# ================================================================== the gateway's front door


@scenario("gateway: public routes pass, missing and unknown tokens are refused before Synapse")
def gateway_front_door():
    s = S()
    base = s.url("sg-legacy")
    r = requests.get(base + "/_matrix/client/versions", timeout=10)
    check(r.status_code == 200 and "versions" in r.json(), f"/versions: {r.status_code}")
    r = requests.get(base + "/_matrix/client/v3/login", timeout=10)
    check(r.status_code == 200 and any(f["type"] == "m.login.password" for f in r.json()["flows"]),
          f"GET /login: {r.status_code} {r.text[:200]}")
    m = marker("door")
    path = f"/_matrix/client/v3/rooms/!{m}:localhost/state"
    r = requests.get(base + path, timeout=10)
    body = expect_matrix_error(r, 401, "M_MISSING_TOKEN", "no token")
    check(r.headers.get("access-control-allow-origin") == "*", "CORS header on a refusal")
    r = requests.get(base + path, headers=bearer("syt_not_a_real_token"), timeout=10)
    body = expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", "unknown token")
    check(body.get("soft_logout") is False, f"soft_logout: {body}")
    r = requests.get(base + path, headers={"Authorization": "Basic YTpi"}, timeout=10)
    expect_matrix_error(r, 401, "M_MISSING_TOKEN", "non-Bearer Authorization")
    r = requests.get(base + f"/_matrix/e2e-unknown/{m}", timeout=10)
    expect_matrix_error(r, 404, "M_UNRECOGNIZED", "a route no rule names")
    time.sleep(0.3)
    check(not s.log_contains("hs-legacy", m), "a refused request reached Synapse")


# ================================================================== scenario 3 (static form) + 1


@scenario("rules: a full-access token does not reach the Synapse admin API (403 insufficient_scope)")
def full_access_is_not_admin():
    s = S()
    token, _ = fx.legacy_token("alice")
    m = marker("admin")
    r = requests.get(s.url("sg-legacy") + f"/_synapse/admin/v2/users/%40{m}%3Alocalhost",
                     headers=bearer(token), timeout=10)
    expect_matrix_error(r, 403, "M_FORBIDDEN", "full access on the admin API")
    www = r.headers.get("www-authenticate", "")
    check('error="insufficient_scope"' in www and "urn:synapse:admin:*" in www, f"WWW-Authenticate: {www!r}")
    time.sleep(0.3)
    check(not s.log_contains("hs-legacy", m), "a refused admin request reached Synapse")


@scenario("3 legacy token: nio login through scopegate, whoami, create room, send, sync returns it")
async def legacy_flow():
    token, device = await asyncio.to_thread(fx.legacy_token, "alice")
    c = fx.client("sg-legacy", "alice", token, device)
    try:
        who = await c.whoami()
        check(isinstance(who, WhoamiResponse) and who.user_id == fx.uid("alice")
              and who.device_id == device, f"whoami: {who}")
        created = await c.room_create(name="e2e legacy", topic="scopegate e2e")
        check(isinstance(created, RoomCreateResponse), f"createRoom: {created}")
        body = f"hello through scopegate {marker()}"
        sent = await c.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        check(isinstance(sent, RoomSendResponse), f"send: {sent}")
        synced = await c.sync(timeout=0, sync_filter=SYNC_FILTER, full_state=True)
        check(isinstance(synced, SyncResponse), f"sync: {synced}")
        room = synced.rooms.join.get(created.room_id)
        check(room is not None, "sync lists the new room")
        events = [e for e in room.timeline.events if isinstance(e, RoomMessageText)]
        check(any(e.event_id == sent.event_id and e.body == body for e in events),
              f"sync returns the message: {[(e.event_id, e.body) for e in events]}")
        _shared["room"] = created.room_id
    finally:
        await c.close()


_shared: dict = {}


@scenario("1/3 media: upload and download 12 MiB through scopegate, byte for byte", timeout=180)
async def legacy_media():
    token, device = await asyncio.to_thread(fx.legacy_token, "alice")
    data = os.urandom(12 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    c = fx.client("sg-legacy", "alice", token, device)
    try:
        t0 = time.monotonic()
        up, _ = await c.upload(io.BytesIO(data), content_type="application/octet-stream",
                               filename="e2e.bin", filesize=len(data))
        t_up = time.monotonic() - t0
        check(isinstance(up, UploadResponse) and up.content_uri.startswith("mxc://localhost/"),
              f"upload: {up}")
        t0 = time.monotonic()
        down = await c.download(mxc=up.content_uri)
        t_down = time.monotonic() - t0
        check(isinstance(down, MemoryDownloadResponse), f"download: {down}")
        check(len(down.body) == len(data) and hashlib.sha256(down.body).hexdigest() == digest,
              f"downloaded {len(down.body)} bytes, digest differs" if len(down.body) == len(data)
              else f"downloaded {len(down.body)} of {len(data)} bytes")
        check(down.content_type == "application/octet-stream", f"content type {down.content_type}")
        print(f"     media: 12 MiB up {t_up:.2f}s, down {t_down:.2f}s", flush=True)
        missing = await c.download(mxc="mxc://localhost/doesnotexist")
        check(isinstance(missing, DownloadError), f"download of unknown media: {missing}")
    finally:
        await c.close()


# ================================================================== scenario 10


@scenario("10 long-polls: 200 concurrent /sync held through scopegate, every poller sees the message",
          timeout=240)
async def long_polls():
    s = S()
    a_token, a_device = await asyncio.to_thread(fx.legacy_token, "alice")
    b_token, b_device = await asyncio.to_thread(fx.legacy_token, "bob")
    alice = fx.client("sg-legacy", "alice", a_token, a_device)
    bob = fx.client("sg-legacy", "bob", b_token, b_device)
    pollers = []
    try:
        room = await alice.room_create(name="e2e long-poll", invite=[fx.uid("bob")])
        check(isinstance(room, RoomCreateResponse), f"createRoom: {room}")
        joined = await bob.join(room.room_id)
        check(getattr(joined, "room_id", None) == room.room_id, f"bob joins: {joined}")
        room_filter = dict(SYNC_FILTER, room=dict(SYNC_FILTER["room"], rooms=[room.room_id]))
        first = await alice.sync(timeout=0, sync_filter=room_filter, full_state=True)
        check(isinstance(first, SyncResponse), f"initial sync: {first}")
        since = first.next_batch

        n = 200
        pollers = [fx.client("sg-legacy", "alice", a_token, a_device) for _ in range(n)]
        in_flight_before = s.metric("sg-legacy", "scopegate_requests_in_flight")
        body = f"long-poll message {marker()}"
        seen_after: list[float] = []
        repolls = 0
        sent_at: list[float] = []

        async def one(c):
            nonlocal repolls
            token_since = since
            for attempt in range(4):
                r = await c.sync(timeout=60000, sync_filter=room_filter, since=token_since)
                if not isinstance(r, SyncResponse):
                    raise AssertionError(f"poller sync: {r}")
                joined_room = r.rooms.join.get(room.room_id)
                events = joined_room.timeline.events if joined_room else []
                if any(isinstance(e, RoomMessageText) and e.body == body for e in events):
                    seen_after.append(time.monotonic() - (sent_at[0] if sent_at else time.monotonic()))
                    return True
                repolls += 1
                token_since = r.next_batch
            return False

        tasks = [asyncio.create_task(one(c)) for c in pollers]
        # Held means: 200 more requests in flight at the gateway, none answered.
        def held():
            return s.metric("sg-legacy", "scopegate_requests_in_flight") - in_flight_before >= n
        await asyncio.to_thread(poll, held, 60, 0.2, f"{n} long-polls in flight at scopegate")
        check(not any(t.done() for t in tasks), "a long-poll returned before the message was sent")
        await asyncio.sleep(1.0)
        check(not any(t.done() for t in tasks), "a long-poll returned early (within 1 s, no event)")
        sent_at.append(time.monotonic())
        sent = await bob.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        check(isinstance(sent, RoomSendResponse), f"bob sends: {sent}")
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 90)
        errors = [r for r in results if isinstance(r, BaseException)]
        check(not errors, f"{len(errors)} pollers failed, first: {errors[:1]!r}")
        check(all(results), f"{results.count(False)} of {n} pollers never saw the message")
        seen_after.sort()
        print(f"     long-polls: {n} held; all saw the message, median {seen_after[n // 2]:.2f}s, "
              f"max {seen_after[-1]:.2f}s after sending; {repolls} re-polls", flush=True)
    finally:
        await asyncio.gather(*(c.close() for c in pollers), alice.close(), bob.close(),
                             return_exceptions=True)


# ================================================================== scenario 11


def _hostile(name: str, build, expect=range(400, 500), framing: bool = False):
    """One hostile request, sent as raw bytes with a valid full-access token (so
    only the gateway's own checks can refuse it). It must be refused with a 4xx,
    and Synapse's log must not show its marker, while a well-formed control
    request sent right after does show up. `framing`: an HTTP framing error,
    refused by the HTTP parser itself (no Matrix JSON body is required there)."""

    @scenario(f"11 hostile input: {name}")
    def test():
        s = S()
        token, _ = fx.legacy_token("alice")
        port = s.data["ports"]["sg-legacy"]
        m = marker("h")
        status, reply = raw_request(port, build(m, token, port))
        control = marker("ok")
        c_status, c_reply = raw_request(
            port, (f"GET /_matrix/client/v3/rooms/!{control}:localhost/state HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                   "Connection: close\r\n\r\n").encode())
        check(c_status in (403, 404), f"control request: {c_status} {c_reply[:200]!r}")
        poll(lambda: s.log_contains("hs-legacy", control), 10, 0.1,
             "the control request in Synapse's log")
        log = s.log("hs-legacy").read_text(errors="replace")
        arrived = [line.split(" INFO ", 1)[-1][-160:] for line in log.splitlines() if m in line]
        check(status in expect and not arrived,
              f"expected a {expect.start}-{expect.stop - 1} refusal by scopegate with nothing at Synapse; "
              f"got status {status}, Synapse logged {arrived}; reply {reply[:200]!r}")
        if status is not None and not framing and status != 431:
            body = first_response_body(reply)
            check(body.get("errcode", "").startswith("M_"), f"Matrix JSON error body: {reply[:300]!r}")
        elif status is not None and not first_response_body(reply):
            print(f"     note: refused {status} by the HTTP parser, no Matrix JSON body", flush=True)

    return test


def _get(path_tpl: str):
    def build(m, token, port):
        return (f"GET {path_tpl.format(m=m)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n").encode()
    return build


_hostile("'..' segment", _get("/_matrix/client/v3/rooms/!{m}:localhost/../../account/whoami"))
_hostile("'%2e%2e' segment", _get("/_matrix/client/v3/rooms/!{m}:localhost/%2e%2e/%2E%2E/account/whoami"))
_hostile("'.%2e' segment", _get("/_matrix/client/v3/rooms/!{m}:localhost/.%2e/state"))
_hostile("'.' segment", _get("/_matrix/client/v3/./rooms/!{m}:localhost/state"))
_hostile("'//' empty segment", _get("/_matrix/client/v3/rooms//!{m}:localhost/state"))
_hostile("leading '//'", _get("//_matrix/client/v3/rooms/!{m}:localhost/state"))
_hostile("'%00'", _get("/_matrix/client/v3/rooms/!{m}%00:localhost/state"))
_hostile("raw backslash", _get("/_matrix/client/v3/rooms/!{m}:localhost\\..\\..\\account/whoami"))
_hostile("'%5C' backslash", _get("/_matrix/client/v3/rooms/!{m}:localhost%5C..%5Caccount/state"))
_hostile("bad percent-encoding", _get("/_matrix/client/v3/rooms/!{m}%zz:localhost/state"))
_hostile("absolute-form target", lambda m, t, p: (
    f"GET http://127.0.0.1:{S().data['ports']['hs-legacy']}/_matrix/client/v3/rooms/!{m}:localhost/state"
    f" HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
).encode())


def _smuggle(te_first: bool):
    def build(m, token, port):
        # The inner request's marker is `{m}in`: it also contains `m`.
        inner = (f"GET /_matrix/client/v3/rooms/!{m}in:localhost/state HTTP/1.1\r\n"
                 f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n")
        body = "0\r\n\r\n" + inner
        cl = "Content-Length: 3\r\n"  # '0\r\n': the chunked terminator cut short
        te = "Transfer-Encoding: chunked\r\n"
        return (f"PUT /_matrix/client/v3/rooms/!{m}:localhost/send/m.room.message/t{m} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\n"
                + (te + cl if te_first else cl + te) + "\r\n" + body).encode()
    return build


# RFC 9112 §6.1: a request framed both ways is read by its chunks alone, and the
# connection closes after it (src/server/framing.rs has the measurements). It
# reaches Synapse framed once, by scopegate; the request in its body never does.
@scenario("11 hostile input: a request smuggled behind CL+TE never reaches Synapse")
def smuggled_request_never_arrives():
    s = S()
    token, _ = fx.legacy_token("alice")
    port = s.data["ports"]["sg-legacy"]
    for te_first in (False, True):
        m = marker("smug")
        status, reply = raw_request(port, _smuggle(te_first)(m, token, port))
        check(status is not None, f"no response: {reply[:200]!r}")
        check(reply.count(b"HTTP/1.1 ") == 1, f"more than one response: {reply[:600]!r}")
        control = marker("ok")
        raw_request(port, (f"GET /_matrix/client/v3/rooms/!{control}:localhost/state HTTP/1.1\r\n"
                           f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                           "Connection: close\r\n\r\n").encode())
        poll(lambda: s.log_contains("hs-legacy", control), 10, 0.1, "the control request in Synapse's log")
        check(not s.log_contains("hs-legacy", f"{m}in"), "the smuggled request reached Synapse")


@scenario("11 legitimate chunked requests (Transfer-Encoding, no Content-Length) pass on a "
          "keep-alive connection: small and 40 KB message sends")
def chunked_requests_pass():
    # Chunked requests framed one way, kept alive.
    s = S()
    token, _ = fx.legacy_token("alice")
    base = s.url("sg-legacy")
    h = {**bearer(token), "Content-Type": "application/json"}
    with requests.Session() as http:
        r = http.post(base + "/_matrix/client/v3/createRoom", headers=h, json={"name": "chunked"}, timeout=10)
        check(r.status_code == 200, f"createRoom: {r.status_code} {r.text[:200]}")
        room = requests.utils.quote(r.json()["room_id"], safe="")
        body = f"chunked {marker()}"
        parts = [b'{"msgtype": "m.text", ', f'"body": "{body}"}}'.encode()]
        r = http.put(f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{marker('t')}",
                     headers=h, data=iter(parts), timeout=10)
        check(r.request.headers.get("transfer-encoding") == "chunked"
              and "content-length" not in r.request.headers, f"sent chunked: {r.request.headers}")
        check(r.status_code == 200 and r.json().get("event_id"),
              f"chunked message send: {r.status_code} {r.text[:300]}")
        # Larger than hyper's first read, sent in 4 KiB chunks. (Media uploads
        # cannot be chunked: Synapse requires a Content-Length there.)
        big = "x" * 40000
        parts = [b'{"msgtype": "m.text", "body": "'] + [big[i:i + 4096].encode() for i in range(0, len(big), 4096)] \
            + [b'"}']
        r = http.put(f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{marker('t')}",
                     headers=h, data=iter(parts), timeout=10)
        check(r.status_code == 200 and r.json().get("event_id"),
              f"chunked 40 KB message send: {r.status_code} {r.text[:300]}")
        event_id = r.json()["event_id"]
        r = http.get(f"{base}/_matrix/client/v3/rooms/{room}/event/{requests.utils.quote(event_id, safe='')}",
                     headers=bearer(token), timeout=10)
        check(r.status_code == 200 and r.json().get("content", {}).get("body") == big,
              f"the 40 KB message arrived whole: {r.status_code}")


_hostile("two different Content-Lengths", lambda m, t, p: (
    f"PUT /_matrix/client/v3/rooms/!{m}:localhost/send/m.room.message/t{m} HTTP/1.1\r\n"
    f"Host: 127.0.0.1:{p}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\n"
    "Content-Length: 2\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{}").encode(), framing=True)
_hostile("obfuscated Transfer-Encoding", lambda m, t, p: (
    f"PUT /_matrix/client/v3/rooms/!{m}:localhost/send/m.room.message/t{m} HTTP/1.1\r\n"
    f"Host: 127.0.0.1:{p}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\n"
    "Transfer-Encoding: xchunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n").encode(),
    framing=True)
_hostile("token in header and query", lambda m, t, p: (
    f"GET /_matrix/client/v3/rooms/!{m}:localhost/state?access_token={t} HTTP/1.1\r\n"
    f"Host: 127.0.0.1:{p}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").encode())


@scenario("11 hostile input: smuggled tokens (form body, 'access%5Ftoken' query) are refused "
          "before Synapse; the victim's token still works")
def smuggled_tokens_refused():
    # Twisted merges a POST form body into the arguments Synapse reads
    # `access_token` from, and percent-decodes parameter names: both would hand
    # Synapse a credential next to the one scopegate checked. Alice (attacker)
    # sends her own valid token in the header and Bob's (victim) hidden.
    s = S()
    attacker, _ = fx.legacy_token("alice")
    victim, _ = fx.legacy_token("bob")
    base = s.url("sg-legacy")
    form = marker("form")
    r = requests.post(f"{base}/_matrix/client/v3/logout/all?e2e_marker={form}",
                      headers={**bearer(attacker), "Content-Type": "application/x-www-form-urlencoded"},
                      data=f"access_token={victim}", timeout=10)
    expect_matrix_error(r, 400, "M_UNRECOGNIZED", "logout/all with a form-encoded access_token")
    # Raw bytes: `requests` would rewrite '%5F' (an unreserved character) to '_'.
    encoded = marker("q5f")
    port = s.data["ports"]["sg-legacy"]
    status, reply = raw_request(port, (
        f"GET /_matrix/client/v3/account/whoami?access%5Ftoken={victim}&e2e_marker={encoded} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {attacker}\r\nConnection: close\r\n\r\n").encode())
    check(status == 400 and first_response_body(reply).get("errcode") == "M_MISSING_TOKEN",
          f"whoami with an 'access%5Ftoken' query parameter: expected 400 M_MISSING_TOKEN, "
          f"got {status} {reply[:400]!r}")
    # A control scopegate forwards, marked the same way: the log check can fail.
    control = marker("ok")
    r = requests.get(f"{base}/_matrix/client/v3/account/whoami?e2e_marker={control}",
                     headers=bearer(attacker), timeout=10)
    check(r.status_code == 200 and r.json().get("user_id") == fx.uid("alice"),
          f"control whoami: {r.status_code} {r.text[:200]}")
    poll(lambda: s.log_contains("hs-legacy", f"?e2e_marker={control} HTTP/1.1"), 10, 0.1,
         "the control request in Synapse's access log")
    log = s.log("hs-legacy").read_text(errors="replace")
    arrived = [line.split(" INFO ", 1)[-1][-200:] for line in log.splitlines()
               if form in line or encoded in line]
    check(not arrived, f"a smuggling request reached Synapse: {arrived}")
    # Nobody was logged out: both tokens still work, at Synapse and through scopegate.
    for who, token in (("bob", victim), ("alice", attacker)):
        for target in ("hs-legacy", "sg-legacy"):
            r = requests.get(s.url(target) + "/_matrix/client/v3/account/whoami",
                             headers=bearer(token), timeout=10)
            check(r.status_code == 200 and r.json().get("user_id") == fx.uid(who),
                  f"{who}'s token at {target} afterwards: {r.status_code} {r.text[:200]}")


_hostile("oversized header (70 000 bytes)", lambda m, t, p: (
    f"GET /_matrix/client/v3/rooms/!{m}:localhost/state HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n"
    f"Authorization: Bearer {t}\r\nX-Pad: {'a' * 70000}\r\nConnection: close\r\n\r\n").encode(),
    framing=True)


@scenario("11 hostile input: '%2F' inside an id is legal and reaches Synapse byte for byte")
def encoded_slash_forwarded_raw():
    s = S()
    token, _ = fx.legacy_token("alice")
    port = s.data["ports"]["sg-legacy"]
    m = marker("slash")
    path = f"/_matrix/client/v3/rooms/!{m}%2F..%2F..%2Faccount%2Fwhoami:localhost/state"
    status, reply = raw_request(port, (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                       f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n").encode())
    check(status in (403, 404), f"Synapse reads one room id and refuses it: {status} {reply[:300]!r}")
    check(b"user_id" not in reply, "the encoded slashes were read as a path (whoami answered)")
    poll(lambda: s.log_contains("hs-legacy", f'"GET {path} HTTP/1.1"'), 10, 0.1,
         "the raw path, unchanged, in Synapse's access log")


# ================================================================== scenario 9


@scenario("9 homeserver outage: 502 M_UNKNOWN while Synapse is down, service resumes on restart",
          timeout=180)
def homeserver_outage():
    s = S()
    token, _ = fx.legacy_token("alice")
    base = s.url("sg-legacy")
    whoami = base + "/_matrix/client/v3/account/whoami"
    gate_pid = st.pid_of("sg-legacy")
    r = requests.get(whoami, headers=bearer(token), timeout=10)
    check(r.status_code == 200, f"before the outage: {r.status_code}")
    st.stop("hs-legacy")
    try:
        r = requests.get(whoami, headers=bearer(token), timeout=10)
        body = expect_matrix_error(r, 502, "M_UNKNOWN", "whoami while Synapse is down")
        check(body.get("error"), "an error message")
        check(r.headers.get("access-control-allow-origin") == "*", "CORS on the 502")
        r = requests.get(base + "/_matrix/client/versions", timeout=10)
        expect_matrix_error(r, 502, "M_UNKNOWN", "public /versions while Synapse is down")
        r = requests.post(base + "/_matrix/client/v3/login", timeout=10, json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
            "password": st.password("alice")})
        expect_matrix_error(r, 502, "M_UNKNOWN", "login (with a body) while Synapse is down")
        ready = s.url("sg-legacy-admin") + "/readyz"
        poll(lambda: requests.get(ready, timeout=5).status_code != 200, 20, 0.5,
             "/readyz reporting the upstream down")
    finally:
        st.start("hs-legacy")
    st.wait_ready("hs-legacy", timeout=60)
    poll(lambda: requests.get(whoami, headers=bearer(token), timeout=10).status_code == 200, 30, 0.2,
         "whoami through scopegate after Synapse's restart")
    poll(lambda: requests.get(s.url("sg-legacy-admin") + "/readyz", timeout=5).status_code == 200,
         20, 0.5, "/readyz after Synapse's restart")
    check(st.pid_of("sg-legacy") == gate_pid, "scopegate was restarted")


# ================================================================== scenario 1, with a static digest


@scenario("1 provider token through scopegate to the delegated Synapse (static digest): "
          "whoami, create room, send, sync")
async def delegated_static_flow():
    s = S()
    token = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("SGSTATIC1")])
    fx.static["sg-delegated"].append((token, fx.uid("alice"), "SGSTATIC1", [FULL]))
    await asyncio.to_thread(fx.restart, "sg-delegated")
    c = fx.client("sg-delegated", "alice", token, "SGSTATIC1")
    try:
        who = await c.whoami()
        check(isinstance(who, WhoamiResponse) and who.user_id == fx.uid("alice")
              and who.device_id == "SGSTATIC1", f"whoami: {who}")
        created = await c.room_create(name="e2e delegated")
        check(isinstance(created, RoomCreateResponse), f"createRoom: {created}")
        body = f"delegated {marker()}"
        sent = await c.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        check(isinstance(sent, RoomSendResponse), f"send: {sent}")
        synced = await c.sync(timeout=0, sync_filter=SYNC_FILTER, full_state=True)
        room = synced.rooms.join.get(created.room_id) if isinstance(synced, SyncResponse) else None
        check(room is not None and any(getattr(e, "event_id", None) == sent.event_id
                                       for e in room.timeline.events), f"sync: {synced}")
    finally:
        await c.close()
    # Synapse under delegation serves no /login: a client learns that through scopegate too.
    r = requests.post(s.url("sg-delegated") + "/_matrix/client/v3/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "x"}, timeout=10)
    expect_matrix_error(r, 404, "M_UNRECOGNIZED", "/login on the delegated Synapse")


# ================================================================== scenario 3: logout


@scenario("3 logout through scopegate: Synapse ends the session, the token stops working")
async def legacy_logout():
    s = S()
    token, device = await asyncio.to_thread(fx.legacy_token, "alice")
    c = fx.client("sg-legacy", "alice", token, device)
    try:
        out = await c.logout()
        check(type(out).__name__ == "LogoutResponse", f"logout: {out}")
    finally:
        await c.close()
    r = requests.get(s.url("sg-legacy") + "/_matrix/client/v3/account/whoami", headers=bearer(token),
                     timeout=10)
    expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", "whoami after logout")
    r = requests.get(s.url("hs-legacy") + "/_matrix/client/v3/account/whoami", headers=bearer(token),
                     timeout=10)
    expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", "whoami after logout, directly at Synapse")
    fx._logins.pop("alice", None)
