"""Token validation against the real provider: introspection (`[auth.introspection]`),
local JWT validation (`[auth.jwt]`), legacy whoami (`[auth.legacy]`), the cache
(`[cache]`), and the static-table forms of the widget and bot scenarios. Each
scenario that needs other settings rewrites its gateway's config and restarts it
(`configure`).

Numbers in test names are issue 6's scenario numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time

import requests
from nio import (
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
from .harness import bearer, check, expect_matrix_error, marker, poll, scenario
from .scenarios import SYNC_FILTER

FULL = oidc.FULL
CACHE_TTL = 5  # [cache] max_ttl_s for these scenarios: bounds revocation latency


def S():
    return fx.stack()


def introspection_cfg(method: str = "client_secret_basic", client: str = "gateway",
                      max_ttl: int = CACHE_TTL) -> dict:
    op = S().op
    return {
        "auth": {
            "issuer": op,
            "introspection": {"enabled": True, "endpoint": op + "/oauth2/introspect",
                              "client_id": client, "client_secret": S().data["gateway_secret"],
                              "auth_method": method, "timeout_ms": 2000},
        },
        "cache": {"max_ttl_s": max_ttl, "negative_ttl_s": 1, "capacity": 10000},
    }


def jwt_cfg() -> dict:
    op = S().op
    cfg = introspection_cfg()
    cfg["auth"]["jwt"] = {"enabled": True, "audiences": [oidc.RS_GATEWAY],
                          "algorithms": ["RS256", "ES256"], "leeway_s": 2,
                          "jwks_uri": op + "/jwks"}
    return cfg


def configure(gateway: str, cfg: dict) -> None:
    fx.extra[gateway] = cfg
    fx.restart(gateway)


def whoami(gateway: str, token: str) -> requests.Response:
    return requests.get(S().url(gateway) + "/_matrix/client/v3/account/whoami",
                        headers=bearer(token), timeout=10)


async def matrix_flow(gateway: str, user: str, token: str, device: str, media: bool = False) -> str:
    """whoami, create room, send, sync returns it (and media round trip): returns the room id."""
    c = fx.client(gateway, user, token, device)
    try:
        who = await c.whoami()
        check(isinstance(who, WhoamiResponse) and who.user_id == fx.uid(user)
              and who.device_id == device, f"whoami: {who}")
        created = await c.room_create(name=f"e2e {user}")
        check(isinstance(created, RoomCreateResponse), f"createRoom: {created}")
        body = f"{user} via {gateway} {marker()}"
        sent = await c.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        check(isinstance(sent, RoomSendResponse), f"send: {sent}")
        synced = await c.sync(timeout=0, sync_filter=SYNC_FILTER, full_state=True)
        check(isinstance(synced, SyncResponse), f"sync: {synced}")
        room = synced.rooms.join.get(created.room_id)
        check(room is not None and any(isinstance(e, RoomMessageText) and e.body == body
                                       for e in room.timeline.events), "sync returns the message")
        if media:
            data = os.urandom(11 * 1024 * 1024)
            up, _ = await c.upload(io.BytesIO(data), content_type="application/octet-stream",
                                   filename="e2e.bin", filesize=len(data))
            check(isinstance(up, UploadResponse), f"upload: {up}")
            down = await c.download(mxc=up.content_uri)
            check(isinstance(down, MemoryDownloadResponse)
                  and hashlib.sha256(down.body).digest() == hashlib.sha256(data).digest(),
                  f"download: {down}")
        return created.room_id
    finally:
        await c.close()


# ================================================================== 1


@scenario("1 full-access OIDC token, introspected: nio flow with 11 MiB media, revocation")
async def introspected_flow():
    s = S()
    await asyncio.to_thread(configure, "sg-delegated", introspection_cfg())
    token = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("INTRO1")])
    before = s.introspections("gateway")
    await matrix_flow("sg-delegated", "alice", token, "INTRO1", media=True)
    calls = s.introspections("gateway") - before
    check(1 <= calls <= 2, f"scopegate introspected {calls} times for one token (cache)")
    # The OIDC world's logout: the client revokes its token at the provider.
    oidc.revoke(s.op, token, "alice-cc", "alice-cc-secret")
    t0 = time.monotonic()
    poll(lambda: whoami("sg-delegated", token).status_code == 401, CACHE_TTL + 3, 0.2,
         "a revoked token refused by scopegate")
    print(f"     revoked token refused after {time.monotonic() - t0:.1f}s", flush=True)
    expect_matrix_error(whoami("sg-delegated", token), 401, "M_UNKNOWN_TOKEN", "revoked token")


@scenario("1 introspection client authentication: client_secret_post and bearer")
def introspection_auth_methods():
    s = S()
    for method, client in (("client_secret_post", "gateway-post"), ("bearer", "gateway")):
        configure("sg-delegated", introspection_cfg(method=method, client=client))
        token = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("INTRO1")])
        before = s.introspections(client)
        r = whoami("sg-delegated", token)
        check(r.status_code == 200 and r.json().get("user_id") == fx.uid("alice"),
              f"{method}: whoami {r.status_code} {r.text[:200]}")
        check(s.introspections(client) - before == 1, f"{method}: one introspection as {client}")
    configure("sg-delegated", introspection_cfg())


# ================================================================== 2


@scenario("2 full-access JWT validated locally: nio flow, no introspection by scopegate")
async def jwt_flow():
    s = S()
    await asyncio.to_thread(configure, "sg-delegated", jwt_cfg())
    token = oidc.user_token(s.op, "bob", [FULL, oidc.device_scope("JWT1")], resource=oidc.RS_GATEWAY)
    before = s.op_stats()["introspection"]
    await matrix_flow("sg-delegated", "bob", token, "JWT1")
    after = s.op_stats()["introspection"]
    check(after.get("gateway", 0) == before.get("gateway", 0),
          f"scopegate introspected a JWT: {before} -> {after}")
    check(after.get("synapse", 0) > before.get("synapse", 0),
          "Synapse itself introspected (sanity: the counter moves)")
    # Tampered signature, wrong audience, and an expired JWT are refused by scopegate.
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}"
    expect_matrix_error(whoami("sg-delegated", tampered), 401, "M_UNKNOWN_TOKEN", "tampered JWT")
    elsewhere = oidc.user_token(s.op, "bob", [FULL], resource=oidc.RS_ELSEWHERE)
    expect_matrix_error(whoami("sg-delegated", elsewhere), 401, "M_UNKNOWN_TOKEN", "JWT for another audience")
    short = oidc.client_credentials(s.op, "alice-short-cc", [FULL, oidc.device_scope("JWTSHORT")],
                                    resource=oidc.RS_GATEWAY)
    check(short["expires_in"] <= 5, f"short-lived token lives {short['expires_in']}s")
    check(whoami("sg-delegated", short["access_token"]).status_code == 200, "short JWT before expiry")
    await asyncio.sleep(short["expires_in"] + 2 + 1)  # lifetime + leeway_s + margin
    expect_matrix_error(whoami("sg-delegated", short["access_token"]), 401, "M_UNKNOWN_TOKEN", "expired JWT")
    check(s.op_stats()["introspection"].get("gateway", 0) == before.get("gateway", 0),
          "refusing JWTs must not introspect them either")


# ================================================================== 3


@scenario("3 legacy syt_ token validated by whoami: nio flow, logout evicts at once")
async def legacy_whoami_validation():
    s = S()
    await asyncio.to_thread(configure, "sg-legacy",
                            {"auth": {"legacy": {"enabled": True, "scopes": [FULL]}},
                             "cache": {"max_ttl_s": 60, "negative_ttl_s": 1, "capacity": 10000}})
    token, device = await fx.nio_login("sg-legacy", "bob", "e2e-legacy-validation")
    await matrix_flow("sg-legacy", "bob", token, device)
    c = fx.client("sg-legacy", "bob", token, device)
    try:
        out = await c.logout()
        check(type(out).__name__ == "LogoutResponse", f"logout: {out}")
    finally:
        await c.close()
    # Evicted: refused by scopegate itself, so the request never reaches Synapse
    # (cached, it would be forwarded and refused by Synapse).
    m = marker("evict")
    r = requests.get(s.url("sg-legacy") + f"/_matrix/client/v3/rooms/!{m}:localhost/state",
                     headers=bearer(token), timeout=10)
    expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", "token after logout")
    await asyncio.sleep(0.5)
    check(not s.log_contains("hs-legacy", m), "after logout the token's request reached Synapse: not evicted")


# ================================================================== 4


@scenario("4 widget token (static digest, legacy Synapse): posts m.room.message into room A only; "
          "everything else 403 insufficient_scope")
async def widget_token():
    # A real syt_ session of bob's, listed in scopegate with the widget's scopes.
    # The provider-minted form, on a delegated Synapse that asks scopegate's relay,
    # is in relay.py.
    s = S()
    owner, owner_dev = await asyncio.to_thread(fx.legacy_token, "bob")
    widget_tok, widget_dev = await fx.nio_login("sg-legacy", "bob", "e2e-widget")
    c = fx.client("sg-legacy", "bob", owner, owner_dev)
    try:
        room_a = (await c.room_create(name="widget A")).room_id
        room_b = (await c.room_create(name="widget B")).room_id
    finally:
        await c.close()
    scopes = [f"org.matrix.msc2762.timeline:{room_a}", "org.matrix.msc2762.send.event:m.room.message"]
    fx.static["sg-legacy"].append((widget_tok, fx.uid("bob"), widget_dev, scopes))
    await asyncio.to_thread(fx.restart, "sg-legacy")
    base = s.url("sg-legacy") + "/_matrix/client/v3"
    h = bearer(widget_tok)
    q = requests.utils.quote
    r = requests.put(f"{base}/rooms/{q(room_a, safe='')}/send/m.room.message/w1", headers=h,
                     json={"msgtype": "m.text", "body": "from the widget"}, timeout=10)
    check(r.status_code == 200 and r.json().get("event_id"), f"widget posts into A: {r.status_code} {r.text[:200]}")
    refused = [
        ("PUT", f"/rooms/{q(room_b, safe='')}/send/m.room.message/w2", {"msgtype": "m.text", "body": "x"}),
        ("PUT", f"/rooms/{q(room_a, safe='')}/state/m.room.topic/", {"topic": "x"}),
        ("PUT", f"/rooms/{q(room_a, safe='')}/send/m.reaction/w3",
         {"m.relates_to": {"rel_type": "m.annotation", "event_id": r.json()["event_id"], "key": "x"}}),
        ("PUT", f"/user/{q(fx.uid('bob'), safe='')}/account_data/org.example.e2e", {"a": 1}),
        ("GET", "/devices", None),
        ("POST", "/keys/upload", {}),
    ]
    for method, path, body in refused:
        r = requests.request(method, base + path, headers=h, json=body, timeout=10)
        expect_matrix_error(r, 403, "M_FORBIDDEN", f"widget {method} {path}")
        www = r.headers.get("www-authenticate", "")
        check('error="insufficient_scope"' in www and "scope=" in www,
              f"widget {method} {path}: WWW-Authenticate {www!r}")


# ================================================================== 5


@scenario("5 read-only bot: reads rooms and messages, refused on every write")
async def read_only_bot():
    s = S()
    owner, owner_dev = await asyncio.to_thread(fx.legacy_token, "bob")
    bot_tok, bot_dev = await fx.nio_login("sg-legacy", "readbot", "e2e-readbot")
    c = fx.client("sg-legacy", "bob", owner, owner_dev)
    try:
        room = (await c.room_create(name="bot room", invite=[fx.uid("readbot")])).room_id
        body = f"for the bot {marker()}"
        await c.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
    finally:
        await c.close()
    q = requests.utils.quote
    # Joining is a write: the bot's operator does it with the bot's full session, at Synapse.
    r = requests.post(s.url("hs-legacy") + f"/_matrix/client/v3/join/{q(room, safe='')}",
                      headers=bearer(bot_tok), json={}, timeout=10)
    check(r.status_code == 200, f"bot joins (directly): {r.status_code}")
    fx.static["sg-legacy"].append((bot_tok, fx.uid("readbot"), bot_dev, ["scopegate:read"]))
    await asyncio.to_thread(fx.restart, "sg-legacy")
    base = s.url("sg-legacy") + "/_matrix/client/v3"
    h = bearer(bot_tok)
    r = requests.get(base + "/sync", params={"timeout": 0}, headers=h, timeout=30)
    check(r.status_code == 200 and room in r.json().get("rooms", {}).get("join", {}), f"bot sync: {r.status_code}")
    r = requests.get(f"{base}/rooms/{q(room, safe='')}/messages", params={"dir": "b", "limit": 20},
                     headers=h, timeout=10)
    check(r.status_code == 200 and any(e.get("content", {}).get("body") == body for e in r.json()["chunk"]),
          f"bot reads messages: {r.status_code}")
    for method, path in (("GET", "/joined_rooms"), ("GET", f"/rooms/{q(room, safe='')}/state"),
                         ("GET", "/account/whoami")):
        r = requests.request(method, base + path, headers=h, timeout=10)
        check(r.status_code == 200, f"bot {method} {path}: {r.status_code} {r.text[:200]}")
    writes = [
        ("PUT", f"/rooms/{q(room, safe='')}/send/m.room.message/b1", {"msgtype": "m.text", "body": "x"}),
        ("PUT", f"/rooms/{q(room, safe='')}/state/m.room.topic/", {"topic": "x"}),
        ("POST", "/createRoom", {}),
        ("POST", f"/rooms/{q(room, safe='')}/leave", {}),
        ("POST", f"/rooms/{q(room, safe='')}/invite", {"user_id": fx.uid("alice")}),
        ("PUT", f"/rooms/{q(room, safe='')}/typing/{q(fx.uid('readbot'), safe='')}", {"typing": True}),
        ("PUT", f"/profile/{q(fx.uid('readbot'), safe='')}/displayname", {"displayname": "x"}),
        ("PUT", f"/user/{q(fx.uid('readbot'), safe='')}/account_data/org.example.e2e", {"a": 1}),
        ("POST", "/keys/upload", {}),
        ("DELETE", "/devices/XYZ", {}),
    ]
    for method, path, payload in writes:
        r = requests.request(method, base + path, headers=h, json=payload, timeout=10)
        expect_matrix_error(r, 403, "M_FORBIDDEN", f"read-only bot {method} {path}")
    r = requests.post(s.url("sg-legacy") + "/_matrix/media/v3/upload", headers=h, data=b"x", timeout=10)
    expect_matrix_error(r, 403, "M_FORBIDDEN", "read-only bot media upload")


# ================================================================== 6


@scenario("6 token lifecycle: refresh rotation, expiry, revocation latency vs Synapse's cache", timeout=240)
def token_lifecycle():
    s = S()
    configure("sg-delegated", introspection_cfg())
    op = s.op
    # Refresh rotation through scopegate.
    tok = oidc.auth_code_login(op, "dora", ["openid", FULL, oidc.device_scope("LIFE1")])
    check(whoami("sg-delegated", tok["access_token"]).status_code == 200, "first access token")
    new = oidc.refresh(op, tok["refresh_token"]).json()
    r = whoami("sg-delegated", new["access_token"])
    check(r.status_code == 200 and r.json()["user_id"] == fx.uid("dora"), f"rotated token: {r.status_code}")
    # Expiry: a 4 s token is refused once expired (the cache never outlives `exp`).
    short = oidc.client_credentials(op, "alice-short-cc", [FULL, oidc.device_scope("LIFE2")])
    check(short["expires_in"] <= 5, f"short-lived token lives {short['expires_in']}s")
    check(whoami("sg-delegated", short["access_token"]).status_code == 200, "short-lived token")
    issued = time.monotonic()
    poll(lambda: whoami("sg-delegated", short["access_token"]).status_code == 401,
         short["expires_in"] + 3, 0.2, "an expired token refused")
    print(f"     expired token refused {time.monotonic() - issued:.1f}s after first use "
          f"(lifetime {short['expires_in']}s)", flush=True)
    # Revocation: how long scopegate keeps accepting, against Synapse's own cache.
    token = oidc.user_token(op, "alice", [FULL, oidc.device_scope("LIFE3")])
    check(whoami("sg-delegated", token).status_code == 200, "before revocation (cached now)")
    direct = requests.get(s.url("hs-delegated") + "/_matrix/client/v3/account/whoami",
                          headers=bearer(token), timeout=10)
    check(direct.status_code == 200, "Synapse caches it too")
    oidc.revoke(op, token, "alice-cc", "alice-cc-secret")
    revoked = time.monotonic()
    poll(lambda: whoami("sg-delegated", token).status_code == 401, CACHE_TTL + 3, 0.1,
         "revoked token refused by scopegate")
    latency = time.monotonic() - revoked
    direct = requests.get(s.url("hs-delegated") + "/_matrix/client/v3/account/whoami",
                          headers=bearer(token), timeout=10)
    print(f"     revocation: scopegate refused after {latency:.1f}s (max_ttl_s={CACHE_TTL}); "
          f"Synapse directly at that moment: {direct.status_code} (its cache holds 120 s)", flush=True)
    check(latency <= CACHE_TTL + 1, f"revocation latency {latency:.1f}s over the cache bound")


# ================================================================== 7


@scenario("7 device authorization grant: a device-flow token works end to end through scopegate")
async def device_grant_flow():
    s = S()
    await asyncio.to_thread(configure, "sg-delegated", introspection_cfg())
    tok = await asyncio.to_thread(oidc.device_flow, s.op, "erin", [FULL, oidc.device_scope("TVDEVICE1")])
    await matrix_flow("sg-delegated", "erin", tok["access_token"], "TVDEVICE1")


# ================================================================== 8


@scenario("8 provider outage: cached tokens work until cache expiry, new ones 503, service resumes", timeout=180)
def provider_outage():
    s = S()
    ttl = 8
    configure("sg-delegated", introspection_cfg(max_ttl=ttl))
    cached = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("OUT1")])
    fresh = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("OUT1")])
    check(whoami("sg-delegated", cached).status_code == 200, "cached token before the outage")
    cached_at = time.monotonic()
    gate_pid = st.pid_of("sg-delegated")
    st.stop("op")
    try:
        r = whoami("sg-delegated", cached)
        check(r.status_code == 200, f"cached token during the outage: {r.status_code} {r.text[:200]}")
        expect_matrix_error(whoami("sg-delegated", fresh), 503, "M_UNKNOWN", "uncached token, provider down")
        poll(lambda: whoami("sg-delegated", cached).status_code == 503, ttl + 3, 0.2,
             "the cached token failing closed after its cache expiry")
        check(time.monotonic() - cached_at >= ttl - 1, "the cached token stopped working before its cache expiry")
        expect_matrix_error(whoami("sg-delegated", cached), 503, "M_UNKNOWN", "expired cache entry, provider down")
    finally:
        st.start("op")
    st.wait_ready("op")
    # The provider's storage is in memory: its old tokens are gone. A new one works.
    token = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("OUT2")])
    poll(lambda: whoami("sg-delegated", token).status_code == 200, 10, 0.2, "service after the provider's return")
    expect_matrix_error(whoami("sg-delegated", fresh), 401, "M_UNKNOWN_TOKEN",
                        "a token the restarted provider no longer knows")
    check(st.pid_of("sg-delegated") == gate_pid, "scopegate was restarted")
