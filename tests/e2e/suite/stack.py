"""The end-to-end stack: config files, processes, readiness.

Seven processes, all on 127.0.0.1, all started by this module with their PIDs in
`.state/pids/<name>.pid` (run.sh's trap kills exactly those, whatever happens):

    op            tests/e2e/provider.js (oidc-provider)
    hs-legacy     Synapse with its own password login (`syt_` tokens)
    hs-delegated  Synapse delegating token validation to `op` (matrix_authentication_service)
    hs-relay      Synapse delegating token validation to sg-relay's introspection relay
    sg-legacy     scopegate in front of hs-legacy
    sg-delegated  scopegate in front of hs-delegated
    sg-relay      scopegate in front of hs-relay, validating by introspection at `op`, and
                  serving hs-relay's questions on its relay listener ([relay])

hs-relay is a third Synapse rather than hs-delegated re-pointed: the scenarios
that compare Synapse asking the provider itself (120 s cache) with Synapse asking
the relay need both at once, and an idle Synapse costs ~120 MiB and no CPU.

CLI (run.sh uses it): `python -m suite.stack up|down|status`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

E2E = Path(__file__).resolve().parents[1]
REPO = E2E.parents[1]
STATE = Path(os.environ.get("E2E_STATE", E2E / ".state")).resolve()
PIDS = STATE / "pids"
LOGS = STATE / "logs"
STACK_FILE = STATE / "stack.json"

SERVER_NAME = "localhost"
LEGACY_USERS = {"admin": True, "alice": False, "bob": False, "readbot": False}
PROCS = ("op", "hs-legacy", "hs-delegated", "hs-relay", "sg-legacy", "sg-delegated", "sg-relay")
SYNAPSES = ("hs-legacy", "hs-delegated", "hs-relay")
GATEWAYS = ("sg-legacy", "sg-delegated", "sg-relay")
UPSTREAM = {"sg-legacy": "hs-legacy", "sg-delegated": "hs-delegated", "sg-relay": "hs-relay"}

# sg-relay's token cache lifetime. The relay tells hs-relay each token's own
# remaining lifetime as `expires_in` (Synapse keeps an answer 120 s regardless).
RELAY_CACHE_TTL = 60


def password(user: str) -> str:
    return f"{user}-password"


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------ stack description


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_stack() -> dict:
    venv = Path(os.environ.get("E2E_VENV", sys.prefix))
    binary = os.environ.get("SCOPEGATE_BIN") or str(REPO / "target" / "release" / "scopegate")
    ports = {}
    for name in ("op", *SYNAPSES, *GATEWAYS, *(f"{g}-admin" for g in GATEWAYS), "relay"):
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    return {
        "venv": str(venv),
        "scopegate": binary,
        "ports": ports,
        "mas_secret": secrets.token_urlsafe(24),
        "registration_secret": secrets.token_urlsafe(24),
        "gateway_secret": "gateway-secret",
        "server_name": SERVER_NAME,
    }


def load() -> dict:
    return json.loads(STACK_FILE.read_text())


def url(stack: dict, name: str) -> str:
    return f"http://127.0.0.1:{stack['ports'][name]}"


# ------------------------------------------------------------------ config files


def synapse_config(stack: dict, name: str) -> Path:
    d = STATE / name
    (d / "media").mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    (d / "log.yaml").write_text(json.dumps({
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain",
                              "filename": str(log), "encoding": "utf8"}},
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"},
                    "twisted": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }))
    unlimited = {"per_second": 10000, "burst_count": 10000}
    cfg = {
        "server_name": SERVER_NAME,
        "pid_file": str(d / "homeserver.pid"),
        "public_baseurl": f"{url(stack, name)}/",
        "listeners": [{
            "port": stack["ports"][name],
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": False,
            "resources": [{"names": ["client"], "compress": False}],
        }],
        "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
        "log_config": str(d / "log.yaml"),
        "media_store_path": str(d / "media"),
        "signing_key_path": str(d / "signing.key"),
        "report_stats": False,
        "macaroon_secret_key": stack["registration_secret"] + "-macaroon",
        "form_secret": stack["registration_secret"] + "-form",
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "enable_metrics": False,
        "presence": {"enabled": False},
        "max_upload_size": "64M",
        "url_preview_enabled": False,
        "rc_message": unlimited,
        "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
        "rc_registration": unlimited,
        "rc_joins": {"local": unlimited, "remote": unlimited},
        "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
        "rc_media_create": unlimited,
        "rc_delayed_event_mgmt": unlimited,
    }
    if name == "hs-legacy":
        cfg["registration_shared_secret"] = stack["registration_secret"]
        cfg["enable_registration"] = False
    else:
        # hs-delegated asks the provider; hs-relay asks scopegate's relay. One
        # secret both ways, as with MAS: the provider (or relay) checks it on the
        # homeserver's questions, Synapse on the provider's provisioning calls.
        cfg["matrix_authentication_service"] = {
            "enabled": True,
            "endpoint": f"{url(stack, 'op' if name == 'hs-delegated' else 'relay')}/",
            "secret": stack["mas_secret"],
        }
    path = d / "homeserver.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def to_toml(doc: dict) -> str:
    """Enough TOML for scopegate's config: tables, sub-tables, arrays of tables."""
    out: list[str] = []

    def table(prefix: str, body: dict) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)
                   and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        if prefix:
            out.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            out.append(f"{k} = {_toml_value(v)}")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    out.append(f"\n[[{prefix}.{k}]]" if prefix else f"\n[[{k}]]")
                    for ik, iv in item.items():
                        out.append(f"{ik} = {_toml_value(iv)}")

    table("", doc)
    return "\n".join(out).lstrip() + "\n"


def scopegate_config(stack: dict, name: str, static=(), extra: dict | None = None) -> Path:
    """Writes `.state/<name>.toml`. `static`: (token, user_id, device_id, scopes) tuples,
    stored as SHA-256 digests. `extra`: more TOML tables, merged into the document
    (e.g. {"auth": {"introspection": {...}}, "cache": {...}})."""
    upstream = UPSTREAM[name]
    doc: dict = {
        "server": {"listen": f"127.0.0.1:{stack['ports'][name]}", "worker_threads": 2},
        "upstream": {"url": url(stack, upstream), "response_header_timeout_s": 120,
                     "connect_timeout_ms": 2000, "probe_interval_s": 2},
        "admin": {"listen": f"127.0.0.1:{stack['ports'][name + '-admin']}"},
        "log": {"level": "info"},
        "auth": {"server_name": SERVER_NAME},
    }
    if name == "sg-relay":
        op = url(stack, "op")
        doc["auth"].update({
            "issuer": op,  # the relay serves the provider's discovery document
            "introspection": {"enabled": True, "endpoint": op + "/oauth2/introspect",
                              "client_id": "gateway", "client_secret": stack["gateway_secret"],
                              "auth_method": "client_secret_basic", "timeout_ms": 2000},
        })
        doc["cache"] = {"max_ttl_s": RELAY_CACHE_TTL, "negative_ttl_s": 1, "capacity": 10000}
        doc["relay"] = {"listen": f"127.0.0.1:{stack['ports']['relay']}",
                        "secret": stack["mas_secret"],
                        "widen_restricted_tokens": True}
    entries = []
    for token, user_id, device_id, scopes in static:
        entry = {"token_sha256": sha256_hex(token), "user_id": user_id, "scopes": list(scopes)}
        if device_id:
            entry["device_id"] = device_id
        entries.append(entry)
    if entries:
        doc["auth"]["static"] = entries
    for section, values in (extra or {}).items():
        target = doc.setdefault(section, {})
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(target.get(k), dict):
                target[k].update(v)
            else:
                target[k] = v
    # Arrays of tables must come after the plain keys and sub-tables of [auth].
    if "static" in doc["auth"]:
        doc["auth"]["static"] = doc["auth"].pop("static")
    path = STATE / f"{name}.toml"
    path.write_text(to_toml(doc))
    return path


# ------------------------------------------------------------------ processes


def command(stack: dict, name: str) -> tuple[list[str], dict, Path]:
    env = dict(os.environ)
    if name == "op":
        env.update({
            "OP_PORT": str(stack["ports"]["op"]),
            "OP_STATE_DIR": str(STATE / "op"),
            "OP_MAS_SECRET": stack["mas_secret"],
            "OP_GATEWAY_SECRET": stack["gateway_secret"],
            "OP_SYNAPSE_URL": f"{url(stack, 'hs-delegated')} {url(stack, 'hs-relay')}",
        })
        return ["node", str(E2E / "provider.js")], env, E2E
    if name.startswith("hs-"):
        py = str(Path(stack["venv"]) / "bin" / "python")
        cfg = STATE / name / "homeserver.yaml"
        return [py, "-m", "synapse.app.homeserver", "-c", str(cfg)], env, STATE / name
    if name.startswith("sg-"):
        env.pop("RUST_LOG", None)
        return [stack["scopegate"], "--config", str(STATE / f"{name}.toml"), "run"], env, STATE
    raise KeyError(name)


_children: dict[str, subprocess.Popen] = {}


def pid_of(name: str) -> int | None:
    try:
        pid = int((PIDS / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_ours(pid) else None


def is_ours(pid: int) -> bool:
    """Alive (not a zombie) and started from this stack's state folder or e2e folder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return str(STATE) in cmdline or str(E2E / "provider.js") in cmdline


def start(name: str, stack: dict | None = None) -> int:
    stack = stack or load()
    if pid_of(name):
        raise RuntimeError(f"{name} is already running (pid {pid_of(name)})")
    argv, env, cwd = command(stack, name)
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log" if not name.startswith("hs-") else LOGS / f"{name}.out", "ab")
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    _children[name] = proc
    (PIDS / f"{name}.pid").write_text(f"{proc.pid}\n")
    # Until exec, the child's /proc cmdline is still ours: wait for it to change.
    deadline = time.monotonic() + 5
    while not is_ours(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc.pid


def stop(name: str, timeout: float = 10.0) -> None:
    pid = pid_of(name)
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_ours(pid):
            _reap(name)
            time.sleep(0.05)
        if is_ours(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.2)
    _reap(name, block=True)
    (PIDS / f"{name}.pid").unlink(missing_ok=True)


def _reap(name: str, block: bool = False) -> None:
    proc = _children.get(name)
    if proc is None:
        return
    try:
        proc.wait(timeout=2 if block else 0.001)
        _children.pop(name, None)
    except subprocess.TimeoutExpired:
        pass


def wait_http(target: str, timeout: float = 60.0, name: str = "", ok=(200,)) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if name and not pid_of(name):
            raise RuntimeError(f"{name} exited during start-up; see {LOGS}/{name}.*")
        try:
            r = requests.get(target, timeout=2)
            if r.status_code in ok:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = type(e).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{target} not ready after {timeout}s ({last})")


READY = {
    "op": "/.well-known/openid-configuration",
    "hs-legacy": "/_matrix/client/versions",
    "hs-delegated": "/_matrix/client/versions",
    "hs-relay": "/_matrix/client/versions",
    "sg-legacy": "/_matrix/client/versions",
    "sg-delegated": "/_matrix/client/versions",
    "sg-relay": "/_matrix/client/versions",
}


def wait_ready(name: str, stack: dict | None = None, timeout: float = 60.0) -> None:
    stack = stack or load()
    wait_http(url(stack, name) + READY[name], timeout=timeout, name=name)


def restart_scopegate(name: str, static=(), extra: dict | None = None) -> None:
    stack = load()
    stop(name)
    scopegate_config(stack, name, static=static, extra=extra)
    start(name, stack)
    wait_ready(name, stack, timeout=30)


# ------------------------------------------------------------------ up / down


def register_users(stack: dict) -> None:
    tool = str(Path(stack["venv"]) / "bin" / "register_new_matrix_user")

    def one(item):
        user, admin = item
        # `=` form: a secret starting with "-" would read as an option.
        argv = [tool, f"--shared-secret={stack['registration_secret']}", "-u", user, "-p", password(user),
                "--admin" if admin else "--no-admin", url(stack, "hs-legacy")]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"register_new_matrix_user {user}: {r.stdout}{r.stderr}")

    with ThreadPoolExecutor(len(LEGACY_USERS)) as pool:
        list(pool.map(one, LEGACY_USERS.items()))


def up() -> None:
    down(quiet=True)
    for child in (*SYNAPSES, "op", "logs", "pids"):
        subprocess.run(["rm", "-rf", str(STATE / child)], check=True)
    for f in STATE.glob("sg-*.toml"):
        f.unlink()
    STATE.mkdir(parents=True, exist_ok=True)
    stack = new_stack()
    STACK_FILE.write_text(json.dumps(stack, indent=1))
    venv_bin = Path(stack["venv"]) / "bin"
    for hs in SYNAPSES:
        synapse_config(stack, hs)
        subprocess.run([str(venv_bin / "generate_signing_key"), "-o",
                        str(STATE / hs / "signing.key")], check=True)
    for sg in GATEWAYS:
        scopegate_config(stack, sg)

    t0 = time.monotonic()
    for name in ("op", *SYNAPSES):
        start(name, stack)
    for name in ("op", *SYNAPSES):
        wait_ready(name, stack, timeout=90)
    print(f"stack: provider and {len(SYNAPSES)} Synapses ready in {time.monotonic() - t0:.1f}s",
          flush=True)
    t1 = time.monotonic()
    register_users(stack)
    print(f"stack: {len(LEGACY_USERS)} users registered in {time.monotonic() - t1:.1f}s",
          flush=True)
    for name in GATEWAYS:
        start(name, stack)
    for name in GATEWAYS:
        wait_ready(name, stack, timeout=30)
    print("stack: up —", ", ".join(f"{n} {url(stack, n)}" for n in PROCS), flush=True)


def down(quiet: bool = False) -> None:
    for name in reversed(PROCS):
        if pid_of(name):
            stop(name)
            if not quiet:
                print(f"stack: stopped {name}", flush=True)


def status() -> None:
    for name in PROCS:
        print(name, pid_of(name) or "-")


if __name__ == "__main__":
    {"up": up, "down": down, "status": status}[sys.argv[1]]()
