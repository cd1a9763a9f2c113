"""A small test runner and the helpers every scenario uses.

Tests register with `@scenario(...)` and run in file order. A test passes if it
returns, fails if it raises; `pending="reason"` marks a test that needs a
scopegate feature not integrated yet: it is reported as skipped with the reason
unless `E2E_PENDING=1`. `E2E_ONLY=text|other` runs the tests whose name contains
one of the texts.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import socket
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from . import stack as st

RUN_PENDING = os.environ.get("E2E_PENDING") == "1"
ONLY = os.environ.get("E2E_ONLY", "")


@dataclass
class Test:
    name: str
    fn: Callable
    pending: str | None
    timeout: float


TESTS: list[Test] = []


def scenario(name: str, pending: str | None = None, timeout: float = 120.0):
    def register(fn):
        TESTS.append(Test(name, fn, pending, timeout))
        return fn

    return register


def run_all() -> int:
    passed = failed = skipped = 0
    started = time.monotonic()
    for test in TESTS:
        if ONLY and not any(part in test.name for part in ONLY.split("|")):
            continue
        if test.pending and not RUN_PENDING:
            skipped += 1
            print(f"SKIP {test.name} — pending: {test.pending}", flush=True)
            continue
        t0 = time.monotonic()
        try:
            if inspect.iscoroutinefunction(test.fn):
                asyncio.run(asyncio.wait_for(test.fn(), test.timeout))
            else:
                test.fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failed += 1
            detail = "".join(traceback.format_exception(e)).rstrip()
            print(f"FAIL {test.name} ({time.monotonic() - t0:.1f}s)\n"
                  + "\n".join("     " + line for line in detail.splitlines()), flush=True)
        else:
            passed += 1
            print(f"PASS {test.name} ({time.monotonic() - t0:.1f}s)", flush=True)
    print(f"suite: {time.monotonic() - started:.1f}s, {skipped} skipped"
          + (" (pending scopegate features; E2E_PENDING=1 runs them)" if skipped else ""),
          flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


# ------------------------------------------------------------------ assertions


def check(cond, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def expect_matrix_error(r: requests.Response, status: int, errcode: str, what: str) -> dict:
    """The response is a Matrix error: this status, this errcode, JSON content type."""
    body = _json(r)
    check(r.status_code == status and body.get("errcode") == errcode,
          f"{what}: expected {status} {errcode}, got {r.status_code} {r.text[:300]!r}")
    ctype = r.headers.get("content-type", "")
    check(ctype.startswith("application/json"), f"{what}: content-type {ctype!r}")
    return body


def _json(r: requests.Response) -> dict:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# ------------------------------------------------------------------ the stack


class Stack:
    def __init__(self):
        self.data = st.load()

    def url(self, name: str) -> str:
        return st.url(self.data, name)

    @property
    def op(self) -> str:
        return self.url("op")

    def metrics(self, sg: str) -> str:
        r = requests.get(self.url(sg + "-admin") + "/metrics", timeout=5)
        r.raise_for_status()
        return r.text

    def metric(self, sg: str, name: str, labels: dict | None = None) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics(sg).splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})?\s+(\S+)$", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in (labels or {}).items()):
                total += float(m.group(3))
        return total

    def op_stats(self) -> dict:
        r = requests.get(self.op + "/_e2e/stats", timeout=5)
        r.raise_for_status()
        return r.json()

    def introspections(self, client: str) -> int:
        return int(self.op_stats()["introspection"].get(client, 0))

    @staticmethod
    def log(name: str) -> Path:
        return st.LOGS / f"{name}.log"

    def log_contains(self, name: str, needle: str) -> bool:
        try:
            return needle in self.log(name).read_text(errors="replace")
        except FileNotFoundError:
            return False


def marker(tag: str = "m") -> str:
    return f"e2e{tag}{uuid.uuid4().hex[:12]}"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ raw HTTP


def raw_request(port: int, data: bytes, timeout: float = 10.0,
                idle: float = 2.0) -> tuple[int | None, bytes]:
    """Sends bytes as they are and returns (status of the first response, all bytes
    received) once the peer closes, or sends nothing more for `idle` seconds. The
    write side stays open: hyper drops a connection whose client half-closes.
    Status None if nothing parseable came back."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-send (oversized head): read what it answered
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(idle if chunks else max(0.1, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    reply = b"".join(chunks)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
    return (int(m.group(1)) if m else None), reply


def first_response_body(reply: bytes) -> dict:
    head, _, rest = reply.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    body = rest[: int(m.group(1))] if m else rest
    try:
        return json.loads(body)
    except ValueError:
        return {}


def poll(fn, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Calls fn until it returns a truthy value; bounded."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s (last: {last!r})")
