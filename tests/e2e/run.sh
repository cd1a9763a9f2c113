#!/usr/bin/env bash
# scopegate's end-to-end suite: scopegate (a release build, or $E2E_BIN) in
# front of three real Synapse homeservers (legacy login; delegated to the provider; delegated to
# scopegate's introspection relay), with a real OpenID provider (panva's
# oidc-provider) and a real Matrix client library (matrix-nio). Everything
# listens on 127.0.0.1 only.
#
#   tests/e2e/run.sh                 install what is missing, build, start, test, stop
#   E2E_ONLY=hostile tests/e2e/run.sh   only the scenarios whose name contains the text (a|b: either)
#   E2E_PENDING=1 tests/e2e/run.sh   also run scenarios marked pending (none today)
#   E2E_KEEP=1 tests/e2e/run.sh      leave the stack running afterwards, pass or fail
#   E2E_BIN=target/debug/scopegate tests/e2e/run.sh
#                                    test this binary instead of building a release one
#                                    (CI: the one `cargo test` already built)
#                                    (stop it: tests/e2e/run.sh --down)
#
# Installs are cached outside the tracked files: the Python venv in
# ${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scopegate-e2e}, node_modules in tests/e2e/
# (gitignored). Runtime state (configs, SQLite DBs, logs) is in tests/e2e/.state/.
# The binary is built into $CARGO_TARGET_DIR if set, else the repository's target/.
# The last line is `N passed, N failed`; the exit status is non-zero if anything failed.
set -euo pipefail

E2E="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$E2E/../.." && pwd)"
export E2E_STATE="$E2E/.state"
export PYTHONDONTWRITEBYTECODE=1
CACHE="${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scopegate-e2e}"
export E2E_VENV="$CACHE/venv"
PY="$E2E_VENV/bin/python"
# Pinned to what the suite was written against; bump deliberately.
PY_PACKAGES=(matrix-synapse==1.163.2 matrix-nio==0.26.0 requests==2.34.2 pyjwt==2.15.1)

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------- stopping

# Kills exactly the processes the stack recorded (.state/pids/*.pid), and only
# if the PID still runs a command from this state folder or this provider.js.
stop_stack() {
    local pidfile pid cmdline
    shopt -s nullglob
    for pidfile in "$E2E_STATE"/pids/*.pid; do
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        [[ "$pid" =~ ^[0-9]+$ ]] || { rm -f "$pidfile"; continue; }
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        if [[ "$cmdline" == *"$E2E_STATE"* || "$cmdline" == *"$E2E/provider.js"* ]]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    local deadline=$((SECONDS + 10)) alive
    while ((SECONDS < deadline)); do
        alive=0
        for pidfile in "$E2E_STATE"/pids/*.pid; do
            pid="$(cat "$pidfile" 2>/dev/null || true)"
            [[ -n "$pid" && -d "/proc/$pid" ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null \
                && alive=1
        done
        ((alive)) || break
        sleep 0.2
    done
    for pidfile in "$E2E_STATE"/pids/*.pid; do
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        if [[ -n "$cmdline" && ("$cmdline" == *"$E2E_STATE"* || "$cmdline" == *"$E2E/provider.js"*) ]]; then
            log "process $pid did not stop on SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    shopt -u nullglob
}

if [[ "${1:-}" == "--down" ]]; then
    stop_stack
    exit 0
fi

on_exit() {
    local status=$?
    trap - EXIT INT TERM
    if [[ "${E2E_KEEP:-}" == 1 ]]; then
        log "E2E_KEEP=1: the stack is still running (state in $E2E_STATE; stop: $0 --down)"
    else
        stop_stack
    fi
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START=$SECONDS

# ---------------------------------------------------------------- installs

command -v node >/dev/null || { echo "e2e: node (>= 20) is required" >&2; exit 2; }
command -v npm >/dev/null || { echo "e2e: npm is required" >&2; exit 2; }
command -v python3 >/dev/null || { echo "e2e: python3 (>= 3.10) is required" >&2; exit 2; }

mkdir -p "$CACHE" "$E2E_STATE"
STAMP="$CACHE/venv.stamp"
WANT="$(printf '%s\n' "${PY_PACKAGES[@]}" "$(python3 -c 'import sys; print(sys.version)')")"
if [[ ! -x "$PY" || ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    log "creating the Python venv in $E2E_VENV (${PY_PACKAGES[*]})"
    rm -rf "$E2E_VENV"
    python3 -m venv "$E2E_VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
    printf '%s' "$WANT" >"$STAMP"
else
    log "Python venv: cached"
fi

NODE_STAMP="$E2E/node_modules/.e2e-lock.sha256"
LOCK_SUM="$(sha256sum "$E2E/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$NODE_STAMP" || "$(cat "$NODE_STAMP")" != "$LOCK_SUM" ]]; then
    log "npm ci (oidc-provider)"
    (cd "$E2E" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s' "$LOCK_SUM" >"$NODE_STAMP"
else
    log "node_modules: cached"
fi

# ---------------------------------------------------------------- build

if [[ -n "${E2E_BIN:-}" ]]; then
    SCOPEGATE_BIN="$(cd "$REPO" && realpath "$E2E_BIN")"
    log "testing $SCOPEGATE_BIN (not rebuilt)"
else
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --locked --quiet)
    TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
    [[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$REPO/$TARGET_DIR"
    SCOPEGATE_BIN="$TARGET_DIR/release/scopegate"
fi
export SCOPEGATE_BIN
[[ -x "$SCOPEGATE_BIN" ]] || { echo "e2e: no binary at $SCOPEGATE_BIN" >&2; exit 2; }
log "installs and build: $((SECONDS - START))s"

# ---------------------------------------------------------------- stack and suite

cd "$E2E"
STACK_START=$SECONDS
if ! "$PY" -m suite.stack up; then
    log "the stack did not come up; logs in $E2E_STATE/logs"
    echo "0 passed, 1 failed"
    exit 1
fi
log "stack up in $((SECONDS - STACK_START))s"

set +e
# A watchdog over the whole suite (its loops are bounded; this bounds a hang).
timeout --signal=TERM --kill-after=10 "${E2E_SUITE_TIMEOUT:-900}" "$PY" -u -m suite 2>&1 \
    | tee "$E2E_STATE/suite.log"
SUITE_STATUS=${PIPESTATUS[0]}
set -e
SUMMARY="$(tail -n 1 "$E2E_STATE/suite.log")"
if [[ ! "$SUMMARY" =~ ^[0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
    SUMMARY="0 passed, 1 failed"  # the runner itself broke
    ((SUITE_STATUS)) || SUITE_STATUS=1
fi
if [[ "${E2E_KEEP:-}" != 1 ]]; then
    stop_stack
fi
log "total $((SECONDS - START))s; logs in $E2E_STATE/logs"
echo "$SUMMARY"
exit "$SUITE_STATUS"
