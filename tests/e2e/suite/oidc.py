"""The provider's flows, driven with plain HTTP as a client (or a user's browser) would.

Interactive logins go through oidc-provider's own devInteractions pages (any login,
any password): the helpers fetch each page, fill the form it shows and follow the
redirects, so the real authorization endpoint, interaction, consent and device
verification code paths all run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import time
from urllib.parse import parse_qs, urljoin, urlparse

import requests

REDIRECT_URI = "http://127.0.0.1:8765/callback"
PUBLIC_CLIENT = "matrix-client"
RS_HOMESERVER = "urn:scopegate:homeserver"
RS_GATEWAY = "urn:scopegate:gateway"
RS_ELSEWHERE = "urn:scopegate:elsewhere"
FULL = "urn:matrix:client:api:*"


def device_scope(device_id: str) -> str:
    return f"urn:matrix:client:device:{device_id}"


class OidcError(AssertionError):
    pass


def _ok(r: requests.Response, what: str) -> dict:
    if r.status_code != 200:
        raise OidcError(f"{what}: HTTP {r.status_code} {r.text[:300]}")
    return r.json()


def client_credentials(op: str, client: str, scopes: list[str], resource: str | None = None,
                       secret: str | None = None) -> dict:
    data = {"grant_type": "client_credentials", "client_id": client,
            "client_secret": secret or f"{client}-secret", "scope": " ".join(scopes)}
    if resource:
        data["resource"] = resource
    return _ok(requests.post(f"{op}/token", data=data, timeout=10), f"client_credentials {client}")


def user_token(op: str, user: str, scopes: list[str], resource: str | None = None) -> str:
    """An access token that acts as `user` (their client_credentials client)."""
    return client_credentials(op, f"{user}-cc", scopes, resource)["access_token"]


def introspect(op: str, token: str, client: str = "gateway", secret: str = "gateway-secret",
               method: str = "client_secret_basic") -> requests.Response:
    data = {"token": token, "token_type_hint": "access_token"}
    if method == "client_secret_basic":
        return requests.post(f"{op}/oauth2/introspect", data=data, auth=(client, secret), timeout=10)
    if method == "client_secret_post":
        data.update(client_id=client, client_secret=secret)
        return requests.post(f"{op}/oauth2/introspect", data=data, timeout=10)
    if method == "bearer":
        return requests.post(f"{op}/oauth2/introspect", data=data,
                             headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    raise ValueError(method)


def revoke(op: str, token: str, client: str, secret: str | None = None,
           hint: str = "access_token") -> None:
    data = {"token": token, "token_type_hint": hint, "client_id": client}
    if secret:
        data["client_secret"] = secret
    r = requests.post(f"{op}/oauth2/revoke", data=data, timeout=10)
    if r.status_code != 200:
        raise OidcError(f"revocation: HTTP {r.status_code} {r.text[:300]}")


def refresh(op: str, refresh_token: str, client: str = PUBLIC_CLIENT) -> requests.Response:
    return requests.post(f"{op}/token", data={"grant_type": "refresh_token",
                                              "refresh_token": refresh_token,
                                              "client_id": client}, timeout=10)


# ------------------------------------------------------------------ interactive pages

_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.S | re.I)
_ATTR = re.compile(r'([\w-]+)\s*=\s*"([^"]*)"')
_INPUT = re.compile(r"<input\b([^>]*)>", re.S | re.I)


def _forms(page: str) -> list[tuple[str, dict]]:
    forms = []
    for attrs, body in _FORM.findall(page):
        a = dict(_ATTR.findall(attrs))
        fields = {}
        for inp in _INPUT.findall(body):
            ia = dict(_ATTR.findall(inp))
            if "name" in ia:
                fields[ia["name"]] = html.unescape(ia.get("value", ""))
        forms.append((html.unescape(a.get("action", "")), fields))
    return forms


def _drive(session: requests.Session, op: str, response: requests.Response, login: str,
           stop_at: str | None) -> requests.Response | str:
    """Follows redirects and submits the pages' forms (login, consent, device
    confirmation) until a redirect to `stop_at` (returned as the URL) or a page
    with no form (returned as the response). Bounded."""
    r = response
    for _ in range(20):
        if r.is_redirect or r.status_code in (301, 302, 303, 307, 308):
            location = urljoin(r.url, r.headers["location"])
            if stop_at and location.startswith(stop_at):
                return location
            r = session.get(location, allow_redirects=False, timeout=10)
            continue
        if r.status_code != 200:
            raise OidcError(f"interaction: HTTP {r.status_code} at {r.url}: {r.text[:300]}")
        forms = [f for f in _forms(r.text) if f[0]]
        # The abort link is a form too on some pages; take the first submit form.
        if not forms:
            return r
        action, fields = forms[0]
        if "login" in fields:
            fields.update(login=login, password="any-password")
        r = session.post(urljoin(r.url, action), data=fields, allow_redirects=False, timeout=10)
    raise OidcError("interaction did not finish in 20 steps")


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def auth_code_login(op: str, login: str, scopes: list[str], resource: str | None = None) -> dict:
    """authorization_code + PKCE (S256) for the public client, as user `login`."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(8)
    params = {"client_id": PUBLIC_CLIENT, "response_type": "code", "redirect_uri": REDIRECT_URI,
              "scope": " ".join(scopes), "state": state, "code_challenge": challenge,
              "code_challenge_method": "S256", "prompt": "consent"}
    if resource:
        params["resource"] = resource
    with requests.Session() as s:
        first = s.get(f"{op}/auth", params=params, allow_redirects=False, timeout=10)
        landed = _drive(s, op, first, login, stop_at=REDIRECT_URI)
    if not isinstance(landed, str):
        raise OidcError(f"no redirect to the client: {landed.text[:300]}")
    q = parse_qs(urlparse(landed).query)
    if "code" not in q:
        raise OidcError(f"authorization failed: {landed}")
    if q.get("state") != [state]:
        raise OidcError("state mismatch")
    data = {"grant_type": "authorization_code", "code": q["code"][0], "redirect_uri": REDIRECT_URI,
            "client_id": PUBLIC_CLIENT, "code_verifier": verifier}
    if resource:
        data["resource"] = resource
    return _ok(requests.post(f"{op}/token", data=data, timeout=10), "code exchange")


def device_flow(op: str, login: str, scopes: list[str], resource: str | None = None) -> dict:
    """RFC 8628: the device asks for a code, the user approves it in a browser,
    the device polls the token endpoint."""
    data = {"client_id": PUBLIC_CLIENT, "scope": " ".join(scopes)}
    if resource:
        data["resource"] = resource
    started = _ok(requests.post(f"{op}/device/auth", data=data, timeout=10), "device authorization")
    # `interval` is optional (RFC 8628 §3.2, default 5 s); oidc-provider omits it.
    for key in ("device_code", "user_code", "verification_uri", "expires_in"):
        if key not in started:
            raise OidcError(f"device authorization response lacks {key}: {started}")
    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": started["device_code"], "client_id": PUBLIC_CLIENT}
    pending = requests.post(f"{op}/token", data=poll, timeout=10)
    if pending.status_code != 400 or pending.json().get("error") != "authorization_pending":
        raise OidcError(f"before approval: expected authorization_pending, got {pending.text[:200]}")
    with requests.Session() as s:
        # The user types the code at verification_uri.
        page = s.get(started["verification_uri"], allow_redirects=False, timeout=10)
        forms = _forms(page.text)
        if not forms:
            raise OidcError(f"no code input form at {started['verification_uri']}")
        action, fields = forms[0]
        fields["user_code"] = started["user_code"]
        r = s.post(urljoin(page.url, action), data=fields, allow_redirects=False, timeout=10)
        done = _drive(s, op, r, login, stop_at=None)
    if isinstance(done, str) or "success" not in done.text.lower():
        raise OidcError(f"device approval did not end on the success page: {str(done)[:300]}")
    # A device polls no faster than `interval` (else `slow_down`).
    interval = float(started.get("interval", 5))
    polled_at = time.monotonic()
    for _ in range(5):
        time.sleep(max(0.0, polled_at + interval + 0.2 - time.monotonic()))
        r = requests.post(f"{op}/token", data=poll, timeout=10)
        polled_at = time.monotonic()
        if r.status_code == 200:
            return r.json()
        if r.json().get("error") not in ("authorization_pending", "slow_down"):
            raise OidcError(f"device token: {r.text[:300]}")
        interval += 5 if r.json().get("error") == "slow_down" else 0
    raise OidcError("device token not issued after 5 polls")
