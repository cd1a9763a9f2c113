"""State shared by scenarios: logins made once, the static tokens scopegate is
configured with, Matrix clients (matrix-nio) pointed at a gateway."""

from __future__ import annotations

import asyncio

import requests
from nio import AsyncClient, AsyncClientConfig, LoginResponse

from . import stack as st
from .harness import Stack, check, expect_matrix_error, bearer

FULL = "urn:matrix:client:api:*"
SERVER = st.SERVER_NAME

_stack: Stack | None = None
_logins: dict[str, tuple[str, str]] = {}
# What each gateway's [[auth.static]] holds: (token, user_id, device_id, scopes).
static: dict[str, list[tuple]] = {g: [] for g in st.GATEWAYS}
# Extra config tables each gateway runs with (token scenarios set these).
extra: dict[str, dict] = {g: {} for g in st.GATEWAYS}


def stack() -> Stack:
    global _stack
    if _stack is None:
        _stack = Stack()
    return _stack


def uid(user: str) -> str:
    return f"@{user}:{SERVER}"


def client(gateway: str, user: str, token: str, device_id: str | None) -> AsyncClient:
    c = AsyncClient(stack().url(gateway), uid(user),
                    config=AsyncClientConfig(request_timeout=60, max_timeouts=1))
    c.restore_login(uid(user), device_id or "", token)
    return c


async def nio_login(gateway: str, user: str, device_name: str) -> tuple[str, str]:
    """Password login with matrix-nio through a gateway (public /login)."""
    c = AsyncClient(stack().url(gateway), uid(user))
    try:
        resp = await c.login(st.password(user), device_name=device_name)
    finally:
        await c.close()
    check(isinstance(resp, LoginResponse), f"nio login of {user} through {gateway}: {resp}")
    check(resp.access_token.startswith("syt_"), f"legacy token shape: {resp.access_token[:4]}…")
    return resp.access_token, resp.device_id


def restart(gateway: str) -> None:
    st.restart_scopegate(gateway, static=static[gateway], extra=extra[gateway])


def legacy_token(user: str) -> tuple[str, str]:
    """A `syt_` token for `user`, obtained by logging in through scopegate, listed
    in sg-legacy's static table with full access (scopegate restarted once)."""
    if user in _logins:
        return _logins[user]
    pending = [u for u in ("alice", "bob") if u not in _logins]
    if user not in pending:
        pending.append(user)
    fresh = {}
    for u in pending:
        fresh[u] = asyncio.run(nio_login("sg-legacy", u, f"e2e-{u}"))
    s = stack()
    for u, (token, device) in fresh.items():
        # Unknown to the gateway until listed, although Synapse knows it.
        r = requests.get(s.url("sg-legacy") + "/_matrix/client/v3/account/whoami",
                         headers=bearer(token), timeout=10)
        expect_matrix_error(r, 401, "M_UNKNOWN_TOKEN", f"{u}'s unlisted token through scopegate")
        r = requests.get(s.url("hs-legacy") + "/_matrix/client/v3/account/whoami",
                         headers=bearer(token), timeout=10)
        check(r.status_code == 200 and r.json()["user_id"] == uid(u),
              f"{u}'s token directly at Synapse: {r.status_code} {r.text[:200]}")
        static["sg-legacy"].append((token, uid(u), device, [FULL]))
    restart("sg-legacy")
    _logins.update(fresh)
    return _logins[user]
