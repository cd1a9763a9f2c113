#!/usr/bin/python3
"""Small asyncio helpers for the load harness (stdlib only, loopback only).

  slow-upstream  a homeserver stub whose /sync long-polls are held until
                 released (POST /__release) or --hold seconds pass; other
                 paths answer at once. GET /__stats: {"held", "served"}.
  longpoll       opens N connections to the gateway, sends one /sync
                 long-poll on each, waits for the answers, prints a RESULT line.
  introspect     an RFC 7662 endpoint that counts calls: active for
                 --active-token, inactive for anything else. GET /__stats:
                 {"calls", "active", "inactive"}.
"""
import argparse
import asyncio
import json
import sys
import time

SYNC_BODY = json.dumps(
    {"next_batch": "s72595_4483_1934", "rooms": {}, "presence": {"events": []}}
).encode()
SMALL_BODY = b'{"ok":true}'


async def read_request(reader):
    """Returns (method, target, headers, body) or None at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    length = int(headers.get("content-length", "0") or 0)
    if length:
        body = await reader.readexactly(length)
    return method, target, headers, body


def response(status, body, ctype=b"application/json"):
    reason = {200: b"OK", 404: b"Not Found"}.get(status, b"X")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (status, reason, ctype, len(body))
        + body
    )


async def serve_loop(reader, writer, handle):
    try:
        while True:
            try:
                req = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(await handle(*req))
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


# ---------------------------------------------------------------- slow upstream
async def slow_upstream(args):
    state = {"held": 0, "served": 0}
    # held requests wait on the current event; a release sets it and starts
    # a new one, so the stub can hold a second batch
    gate = {"event": asyncio.Event()}

    async def handle(method, target, headers, body):
        path = target.split("?", 1)[0]
        if path == "/__stats":
            return response(200, json.dumps(state).encode())
        if path == "/__release":
            gate["event"].set()
            gate["event"] = asyncio.Event()
            return response(200, b"{}")
        if path.endswith("/sync"):
            state["held"] += 1
            try:
                await asyncio.wait_for(gate["event"].wait(), args.hold)
            except asyncio.TimeoutError:
                pass
            state["held"] -= 1
            state["served"] += 1
            return response(200, SYNC_BODY)
        state["served"] += 1
        return response(200, SMALL_BODY)

    server = await asyncio.start_server(
        lambda r, w: serve_loop(r, w, handle), "127.0.0.1", args.port, backlog=4096
    )
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- long-poll client
async def longpoll(args):
    token = open(args.token_file).read().strip()
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: application/json\r\n"
        "User-Agent: Element/1.11.80 (scopegate-load longpoll)\r\n\r\n"
    ).encode()
    counts = {"ok": 0, "status": 0, "error": 0, "connected": 0}
    statuses = {}
    all_sent = asyncio.Event()
    conns = []

    async def one():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        except OSError:
            counts["error"] += 1
            return None
        counts["connected"] += 1
        writer.write(request)
        await writer.drain()
        return reader, writer

    started = time.monotonic()
    for i in range(0, args.n, args.batch):
        got = await asyncio.gather(*(one() for _ in range(min(args.batch, args.n - i))))
        conns.extend(c for c in got if c)
    print(
        f"SENT connected={counts['connected']} errors={counts['error']} "
        f"seconds={time.monotonic() - started:.1f}",
        flush=True,
    )
    all_sent.set()

    async def finish(reader, writer):
        try:
            line = await asyncio.wait_for(reader.readline(), args.timeout)
            status = int(line.split()[1]) if line else 0
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                counts["ok"] += 1
            else:
                counts["status"] += 1
        except (asyncio.TimeoutError, OSError, IndexError, ValueError):
            counts["error"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(finish(r, w) for r, w in conns))
    print(
        f"RESULT ok={counts['ok']} bad_status={counts['status']} errors={counts['error']} "
        f"statuses={json.dumps(statuses, separators=(',', ':'))}",
        flush=True,
    )


# ---------------------------------------------------------------- introspection
async def introspect(args):
    state = {"calls": 0, "active": 0, "inactive": 0}
    active = json.dumps(json.load(open(args.answer)), separators=(",", ":")).encode()
    token = open(args.active_token_file).read().strip()

    async def handle(method, target, headers, body):
        path = target.split("?", 1)[0]
        if path == "/__stats":
            return response(200, json.dumps(state).encode())
        state["calls"] += 1
        form = dict(
            kv.split("=", 1) for kv in body.decode("latin-1").split("&") if "=" in kv
        )
        if form.get("token") == token:
            state["active"] += 1
            return response(200, active)
        state["inactive"] += 1
        return response(200, b'{"active":false}')

    server = await asyncio.start_server(
        lambda r, w: serve_loop(r, w, handle), "127.0.0.1", args.port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("slow-upstream")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--hold", type=float, default=60.0)
    c = sub.add_parser("longpoll")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--n", type=int, default=10000)
    c.add_argument("--batch", type=int, default=500)
    c.add_argument("--token-file", required=True)
    c.add_argument("--path", default="/_matrix/client/v3/sync?timeout=30000&since=s72594_4483_1934")
    c.add_argument("--timeout", type=float, default=120.0)
    i = sub.add_parser("introspect")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--answer", required=True)
    i.add_argument("--active-token-file", required=True)
    args = ap.parse_args()
    fn = {"slow-upstream": slow_upstream, "longpoll": longpoll, "introspect": introspect}[args.cmd]
    try:
        asyncio.run(fn(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
