"""Homeserver integration (issue 5, and issue 6's scenario 4): hs-relay is a
Synapse whose `matrix_authentication_service.endpoint` is sg-relay's
introspection relay (`[relay]`, `widen_restricted_tokens = true`, the Synapse
shared secret). sg-relay validates by introspection at the provider and answers
Synapse's questions from the same cache. See stack.py for the settings.

What Synapse 1.163 does with the relay's answers (synapse/api/auth/mas.py) shapes
these scenarios: it keeps every answer for 2 minutes and never asks again in
that time; `expires_in` only makes it refuse the token once `retrieved_at +
expires_in` has passed. In delegated mode it serves no `/logout` (404), so the
gateway's logout eviction cannot happen there: a revocation reaches scopegate
as the provider's revocation plus an eviction (admin `POST /cache/evict`, what
a deployment's revocation hook calls).
"""

from __future__ import annotations

import asyncio
import time

import requests
from nio import JoinResponse, RoomCreateResponse, RoomMessageText, SyncResponse

from . import fixtures as fx
from . import oidc
from . import stack as st
from .harness import bearer, check, expect_matrix_error, marker, scenario
from .scenarios import SYNC_FILTER

FULL = oidc.FULL
UNSTABLE_FULL = "urn:matrix:org.matrix.msc2967.client:api:*"
GW = "sg-relay"
HS = "hs-relay"
# How long the session test runs past Synapse's question: longer than the bounded
# `expires_in` an earlier relay gave (10 s), which ended such sessions at Synapse.
PAST = 11.5


def S():
    return fx.stack()


def q(s: str) -> str:
    return requests.utils.quote(s, safe="")


def whoami(base: str, token: str) -> requests.Response:
    return requests.get(base + "/_matrix/client/v3/account/whoami", headers=bearer(token), timeout=10)


def relay_introspect(token: str, authorization: str | None) -> requests.Response:
    """The question Synapse asks: RFC 7662 form, Bearer shared secret."""
    headers = {"Accept": "application/json", "X-MAS-Supports-Device-Id": "1"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return requests.post(S().url("relay") + "/oauth2/introspect", headers=headers, timeout=10,
                         data={"token": token, "token_type_hint": "access_token"})


def relay_counts() -> tuple[float, float]:
    """(relay answers `active`, relay answers given without asking the provider)."""
    s = S()
    return (s.metric(GW, "scopegate_relay_requests_total", {"result": "active"}),
            s.metric(GW, "scopegate_relay_lookups_saved_total"))


def synapse_saw(needle: str) -> bool:
    return S().log_contains(HS, needle)


# ================================================================== 4 (issue 6) / issue 5


@scenario("4 widget token via the relay: Synapse accepts its message in room A; scopegate refuses "
          "the rest (403 insufficient_scope); 1 provider lookup per token for the whole session")
async def widget_through_relay():
    s = S()
    gw = s.url(GW)
    stats0 = s.op_stats()["introspection"]
    active0, saved0 = relay_counts()
    alice_tok = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("RELAYALICE")])
    bob_tok = oidc.user_token(s.op, "bob", [FULL, oidc.device_scope("RELAYBOB")])
    alice = fx.client(GW, "alice", alice_tok, "RELAYALICE")
    bob = fx.client(GW, "bob", bob_tok, "RELAYBOB")
    try:
        a = await alice.room_create(name="relay widget A", invite=[fx.uid("bob")])
        b = await alice.room_create(name="relay widget B")
        check(isinstance(a, RoomCreateResponse) and isinstance(b, RoomCreateResponse),
              f"createRoom through scopegate and the relay: {a} {b}")
        room_a, room_b = a.room_id, b.room_id
        joined = await bob.join(room_a)
        check(isinstance(joined, JoinResponse), f"bob joins room A: {joined}")

        # The widget's token: its permissions are the two capabilities. The device
        # scope grants nothing in scopes.toml; it names the session, as MAS's
        # tokens do. Without one, Synapse answers 500 to any PUT with a txn id
        # (transactions.py asserts a device or an access_token_id).
        caps = [f"org.matrix.msc2762.timeline:{room_a}", "org.matrix.msc2762.send.event:m.room.message"]
        granted = oidc.client_credentials(s.op, "alice-cc", caps + [oidc.device_scope("RELAYWIDGET")])
        check(set(granted["scope"].split()) == set(caps + [oidc.device_scope("RELAYWIDGET")]),
              f"the provider granted {granted['scope']!r}")
        widget = granted["access_token"]
        h = bearer(widget)
        base = gw + "/_matrix/client/v3"
        body = f"from the widget via the relay {marker()}"
        r = requests.put(f"{base}/rooms/{q(room_a)}/send/m.room.message/{marker('w')}", headers=h,
                         json={"msgtype": "m.text", "body": body}, timeout=10)
        check(r.status_code == 200 and str(r.json().get("event_id", "")).startswith("$"),
              f"the widget posts into room A: {r.status_code} {r.text[:300]}")
        event_id = r.json()["event_id"]

        m = marker("wr")
        refused = [
            ("PUT", f"/rooms/{q(room_b)}/send/m.room.message/{m}1", {"msgtype": "m.text", "body": "x"}),
            ("PUT", f"/rooms/{q(room_a)}/state/m.room.topic/?e2e={m}2", {"topic": "x"}),
            ("PUT", f"/rooms/{q(room_a)}/send/m.reaction/{m}3",
             {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": "x"}}),
            ("PUT", f"/user/{q(fx.uid('alice'))}/account_data/org.example.e2e?e2e={m}4", {"a": 1}),
            ("GET", f"/devices?e2e={m}5", None),
            ("POST", f"/keys/upload?e2e={m}6", {}),
        ]
        for method, path, payload in refused:
            r = requests.request(method, base + path, headers=h, json=payload, timeout=10)
            expect_matrix_error(r, 403, "M_FORBIDDEN", f"widget {method} {path}")
            www = r.headers.get("www-authenticate", "")
            check('error="insufficient_scope"' in www and "scope=" in www,
                  f"widget {method} {path}: WWW-Authenticate {www!r}")

        # A full-access member sees the widget's message (sent as alice).
        synced = await bob.sync(timeout=0, sync_filter=SYNC_FILTER, full_state=True)
        check(isinstance(synced, SyncResponse), f"bob's sync: {synced}")
        room = synced.rooms.join.get(room_a)
        events = [e for e in (room.timeline.events if room else []) if isinstance(e, RoomMessageText)]
        check(any(e.event_id == event_id and e.body == body and e.sender == fx.uid("alice")
                  for e in events),
              f"bob's sync shows the widget's message: {[(e.event_id, e.sender, e.body) for e in events]}")
    finally:
        await asyncio.gather(alice.close(), bob.close(), return_exceptions=True)

    stats1 = s.op_stats()["introspection"]
    active1, saved1 = relay_counts()
    calls = {c: stats1.get(c, 0) - stats0.get(c, 0) for c in ("gateway", "synapse")}
    print(f"     provider introspections for the session (3 tokens): {calls}; relay answered "
          f"{active1 - active0:.0f} questions from Synapse, {saved1 - saved0:.0f} from cache", flush=True)
    check(calls == {"gateway": 3, "synapse": 0},
          f"one provider introspection per token (scopegate's), none by Synapse: {calls}")
    check(active1 - active0 == 3 and saved1 - saved0 == 3,
          f"Synapse asked the relay once per token, answered from cache: "
          f"active +{active1 - active0}, saved +{saved1 - saved0}")
    time.sleep(0.3)
    check(not synapse_saw(m), f"a request scopegate refused reached Synapse ({m})")
    # The contrast: the Synapse that asks the provider itself refuses the same token.
    r = whoami(s.url("hs-delegated"), widget)
    expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", "the widget token at the Synapse asking the provider")


# ================================================================== the relay's own door


@scenario("relay: 401 without the shared secret; MAS-shaped answers; widens only recognised "
          "narrow tokens; serves the provider's discovery to Synapse")
def relay_door():
    s = S()
    secret = s.data["mas_secret"]
    token = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("RELAYDOOR")])
    for what, auth in (("no Authorization", None), ("a wrong secret", "Bearer " + "x" * len(secret)),
                       ("a secret prefix", "Bearer " + secret[:-1]), ("the secret, longer", f"Bearer {secret}x"),
                       ("the gateway's provider secret", "Bearer " + s.data["gateway_secret"]),
                       ("the secret as Basic", "Basic " + secret)):
        r = relay_introspect(token, auth)
        check(r.status_code == 401 and r.json().get("error") == "invalid_client",
              f"relay with {what}: {r.status_code} {r.text[:200]}")
        check(r.headers.get("www-authenticate", "").startswith("Bearer"),
              f"relay with {what}: WWW-Authenticate {r.headers.get('www-authenticate')!r}")
    ok = "Bearer " + secret

    body = relay_introspect(token, ok).json()
    scope = set(body.get("scope", "").split())
    check(body.get("active") is True and body.get("username") == "alice"
          and body.get("sub") == fx.uid("alice") and body.get("device_id") == "RELAYDOOR"
          and body.get("client_id") == "alice-cc" and isinstance(body.get("exp"), int)
          and {FULL, UNSTABLE_FULL} <= scope, f"full-access token: {body}")
    left = body.get("exp", 0) - time.time()
    check(isinstance(body.get("expires_in"), int) and abs(body["expires_in"] - left) <= 2,
          f"expires_in is the token's own remaining lifetime ({left:.0f}s): {body.get('expires_in')}")

    narrow = oidc.user_token(s.op, "alice", ["scopegate:read", oidc.device_scope("RELAYDOOR")])
    body = relay_introspect(narrow, ok).json()
    check(body.get("active") is True and {"scopegate:read", FULL, UNSTABLE_FULL}
          <= set(body.get("scope", "").split()), f"a recognised narrow token is widened: {body}")
    meaningless = oidc.user_token(s.op, "alice", ["urn:scopegate:e2e-nothing", oidc.device_scope("RELAYDOOR")])
    body = relay_introspect(meaningless, ok).json()
    check(body.get("active") is True and FULL not in body.get("scope", "").split()
          and UNSTABLE_FULL not in body.get("scope", "").split(),
          f"a token whose scopes the rules do not know is not widened: {body}")
    r = whoami(s.url(HS), meaningless)
    expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", "Synapse, given the unwidened answer")
    body = relay_introspect("not-a-token-" + marker(), ok).json()
    check(body == {"active": False}, f"an unknown token: {body}")

    doc = requests.get(s.url("relay") + "/.well-known/openid-configuration", timeout=10).json()
    check(doc.get("issuer") == s.op and doc.get("jwks_uri") == s.op + "/jwks"
          and doc.get("introspection_endpoint") == s.url("relay") + "/oauth2/introspect"
          and doc.get("account_management_uri"), f"the relay's discovery document: {doc}")
    # Synapse loaded its metadata from the relay: its auth_metadata is that document.
    r = requests.get(s.url(GW) + "/_matrix/client/v1/auth_metadata", timeout=10)
    check(r.status_code == 200 and r.json().get("issuer") == s.op
          and r.json().get("introspection_endpoint") == doc["introspection_endpoint"],
          f"Synapse's auth_metadata through scopegate: {r.status_code} {r.text[:300]}")


# ================================================================== revocation (issue 5, scenario 6)


@scenario("6 revocation via the relay: scopegate refuses the very next request after eviction, "
          "and the relay answers inactive; Synapse's own 120 s cache reported")
def revocation_through_relay():
    s = S()
    gw, hs = s.url(GW), s.url(HS)
    token = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("RELAYREV")])
    r = whoami(gw, token)
    asked = time.monotonic()  # Synapse asked the relay for this request
    check(r.status_code == 200, f"through scopegate: {r.status_code} {r.text[:200]}")
    check(whoami(hs, token).status_code == 200, "directly at hs-relay (its cached answer)")
    check(whoami(s.url("hs-delegated"), token).status_code == 200,
          "directly at hs-delegated (it asks the provider itself)")

    # In delegated mode Synapse has no /logout: the gateway's logout eviction needs a 2xx.
    r = requests.post(gw + "/_matrix/client/v3/logout", headers=bearer(token), json={}, timeout=10)
    expect_matrix_error(r, 404, "M_UNRECOGNIZED", "/logout at a delegated Synapse")
    check(whoami(gw, token).status_code == 200, "the token after a /logout Synapse does not serve")

    # The OIDC logout: the provider revokes. scopegate cannot know until told or
    # until its cache entry ([cache] max_ttl_s) ends.
    oidc.revoke(s.op, token, "alice-cc", "alice-cc-secret")
    revoked = time.monotonic()
    check(whoami(gw, token).status_code == 200, "scopegate still has its cached answer")
    active0, _ = relay_counts()
    r = requests.post(s.url(GW + "-admin") + "/cache/evict", json={"token": token}, timeout=10)
    check(r.status_code == 200 and r.json().get("evicted") == "token", f"/cache/evict: {r.status_code} {r.text}")
    evicted = time.monotonic()

    m = marker("rev")
    r = requests.get(gw + f"/_matrix/client/v3/rooms/!{m}:localhost/state", headers=bearer(token), timeout=10)
    expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", "the very next request after eviction")
    gate_latency = time.monotonic() - evicted
    check(relay_introspect(token, "Bearer " + s.data["mas_secret"]).json() == {"active": False},
          "the relay's answer right after eviction")

    # Requests straight to Synapse (which widening forbids by network design) meet its
    # own cache: it keeps an answer 120 s without asking again, relay or provider.
    active1, _ = relay_counts()
    direct_relay = whoami(hs, token).status_code
    direct = whoami(s.url("hs-delegated"), token).status_code
    print(f"     revocation: scopegate refused the first request after /cache/evict ({gate_latency:.2f}s, "
          f"{time.monotonic() - revoked:.1f}s after the provider revoked); straight to hs-relay then: "
          f"{direct_relay}, to hs-delegated: {direct} (Synapse keeps answers 120 s, asked "
          f"{time.monotonic() - asked:.1f}s ago)", flush=True)
    check(active1 == active0, "hs-relay asked the relay again inside its 120 s cache")
    time.sleep(0.3)
    check(not synapse_saw(m), "the request after eviction reached Synapse")


# ================================================================== a session past expires_in


@scenario(f"relay: a valid token keeps working through scopegate {PAST}s after Synapse asked", timeout=60)
def session_past_expires_in():
    # Synapse keeps the relay's answer 2 minutes without asking again, and refuses
    # the token once `expires_in` has run out: the relay's expires_in must not end a
    # token that scopegate still accepts.
    s = S()
    gw = s.url(GW)
    token = oidc.user_token(s.op, "alice", [FULL, oidc.device_scope("RELAYLONG")])
    r = whoami(gw, token)
    check(r.status_code == 200, f"first request: {r.status_code} {r.text[:200]}")
    asked = time.monotonic()
    body = relay_introspect(token, "Bearer " + s.data["mas_secret"]).json()
    check(body.get("active") is True, f"the relay believes the token: {body}")
    time.sleep(max(0.0, asked + PAST - time.monotonic()))
    r = whoami(gw, token)
    check(r.status_code == 200,
          f"GET /_matrix/client/v3/account/whoami through scopegate {time.monotonic() - asked:.1f}s after "
          f"Synapse asked the relay (token valid 600 s, scopegate's cache {st.RELAY_CACHE_TTL}s): expected "
          f"200, got {r.status_code} {r.text[:200]} — Synapse ran out the relay's expires_in "
          f"({body.get('expires_in')}s) and does not ask again until its 120 s cache entry ends")
