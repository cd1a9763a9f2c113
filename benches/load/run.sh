#!/usr/bin/env bash
# The load harness: scopegate side by side with nginx and HAProxy,
# on loopback, with a realistic Matrix request mix. See docs/performance.md.
#
#   benches/load/run.sh [compare|longpoll|flood|all] [options]
#
# compare (default)  every contender, interleaved in rounds; medians to
#                    docs/performance.md and docs/performance.png
# longpoll           N idle /sync long-polls held through scopegate (and nginx,
#                    for scale); RSS and RSS per connection
# flood              N distinct random tokens at full rate; scopegate's RSS,
#                    and what a concurrent legitimate client still gets
# all                the three in turn
#
# Everything listens on 127.0.0.1 only; every process started here is
# stopped by PID on exit (trap). Run with --help for the options.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# ------------------------------------------------------------------ options
MODE=compare
DURATION=5          # seconds per measured wrk run
ROUNDS=3            # interleaved rounds; medians over these
WARMUP=1            # seconds of unrecorded load per contender before round 1
CONNS=64            # wrk connections
THREADS=1           # wrk threads
PIN=on              # on | off | both: generator on CPU 0, servers on CPU 1
WORKERS=1           # worker processes/threads of each proxy (and of the upstream stub)
JWT=auto            # auto | on | off: scopegate [auth.jwt] (5a, 5b)
INTRO=auto          # auto | on | off: scopegate [auth.introspection] (5c)
SG_LOG=warn         # scopegate [log] level: warn = no access log, as nginx and HAProxy here
LOG_CONTENDER=1     # also measure scopegate with its access log on (level info)
PORT_BASE=18080
BUDGET=270          # seconds of measuring, build excluded
POOL=1024           # distinct JWTs for the uncached contender
ONLY=""             # comma-separated contender ids to run (default: all available)
BUILD=1
SG_BIN=""
WRITE_DOC=1
KEEP=0
NOTE=""
LP_N=10000          # long-polls
LP_COMPARE=1        # also hold them through nginx, for scale
FLOOD_N=100000      # distinct tokens
FLOOD_CONNS=32
FLOOD_CAPACITY=10000 # [cache] capacity during the flood (so the bound shows)
FLOOD_RATE_LIMIT=off # [auth.rate_limit] during the flood, when the binary has it
AUTHREQ=proxied     # nginx auth_request: subrequest proxied to an auth server, or answered inline

usage() {
  cat <<EOF
usage: benches/load/run.sh [compare|longpoll|flood|all] [options]

  --duration S        seconds per measured run (default $DURATION)
  --rounds N          interleaved rounds, medians over them (default $ROUNDS)
  --warmup S          unrecorded seconds per contender first (default $WARMUP)
  --connections N     wrk connections (default $CONNS)
  --threads N         wrk threads (default $THREADS)
  --pin on|off|both   taskset: generator on CPU 0, servers on CPU 1 (default $PIN);
                      both = every round is run pinned and unpinned
  --workers N         workers of each proxy and of the upstream stub (default $WORKERS)
  --jwt auto|on|off   scopegate validates JWTs ([auth.jwt]); auto = if the binary has it
  --introspection auto|on|off   likewise for [auth.introspection]
  --only IDS          e.g. nginx,sg_a (ids: direct nginx authreq haproxy sg_a sg_log sg_b sg_c)
  --authreq proxied|inline   nginx auth_request's subrequest: proxied to an nginx
                      auth server (default, as deployed) or answered inside nginx
  --log-level L       scopegate's [log] level while measured (default $SG_LOG: no access
                      log, like the nginx and HAProxy contenders)
  --no-log-contender  skip the extra run of scopegate with its access log on
  --port-base P       ports P..P+29 on 127.0.0.1 (default $PORT_BASE)
  --budget S          stop starting runs after S seconds of measuring (default $BUDGET)
  --pool N            distinct JWTs for the uncached contender (default $POOL)
  --bin PATH          use this scopegate binary (no build)
  --no-build          use target/release/scopegate as it is
  --no-doc            do not write docs/performance.md and .png
  --note TEXT         a line for the report (e.g. "machine shared with a build")
  --keep              keep the state directory (configs, logs, raw results)
  --longpoll-conns N  long-polls to hold (default $LP_N)
  --no-longpoll-nginx do not repeat the long-polls through nginx
  --flood-tokens N    distinct random tokens (default $FLOOD_N)
  --flood-connections N (default $FLOOD_CONNS)
  --flood-capacity N  [cache] capacity during the flood (default $FLOOD_CAPACITY)
  --flood-rate-limit on|off   keep [auth.rate_limit] on during the flood (default $FLOOD_RATE_LIMIT)

CARGO_TARGET_DIR is honoured (default: the repository's target/).
EOF
}

while (($#)); do
  case $1 in
    compare | longpoll | flood | all) MODE=$1 ;;
    --duration) DURATION=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --pin) PIN=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --jwt) JWT=$2; shift ;;
    --introspection) INTRO=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --authreq) AUTHREQ=$2; shift ;;
    --log-level) SG_LOG=$2; shift ;;
    --no-log-contender) LOG_CONTENDER=0 ;;
    --port-base) PORT_BASE=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --pool) POOL=$2; shift ;;
    --bin) SG_BIN=$2; BUILD=0; shift ;;
    --no-build) BUILD=0 ;;
    --no-doc) WRITE_DOC=0 ;;
    --note) NOTE=$2; shift ;;
    --keep) KEEP=1 ;;
    --longpoll-conns) LP_N=$2; shift ;;
    --no-longpoll-nginx) LP_COMPARE=0 ;;
    --flood-tokens) FLOOD_N=$2; shift ;;
    --flood-connections) FLOOD_CONNS=$2; shift ;;
    --flood-capacity) FLOOD_CAPACITY=$2; shift ;;
    --flood-rate-limit) FLOOD_RATE_LIMIT=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case $PIN in on | off | both) ;; *) echo "--pin: on, off or both" >&2; exit 2 ;; esac
case $JWT in auto | on | off) ;; *) echo "--jwt: auto, on or off" >&2; exit 2 ;; esac
case $INTRO in auto | on | off) ;; *) echo "--introspection: auto, on or off" >&2; exit 2 ;; esac

log() { printf '[load %4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------ packages
PY=/usr/bin/python3   # Debian's, for python3-jwt and python3-cryptography
ensure_packages() {
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx-light)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
  command -v curl >/dev/null || missing+=(curl)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v ss >/dev/null || missing+=(iproute2)
  [[ -x $PY ]] || missing+=(python3)
  if [[ -x $PY ]] && ! "$PY" -c 'import jwt, cryptography' 2>/dev/null; then
    missing+=(python3-jwt python3-cryptography)
  fi
  ((${#missing[@]})) || return 0
  log "installing from Debian: ${missing[*]}"
  [[ $(id -u) == 0 ]] || die "need root to apt-get install ${missing[*]}"
  # Packages must not start system services (nginx would take port 80).
  local policy_added=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
  } || rc=$?
  ((policy_added)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install ${missing[*]} failed"
}

# ------------------------------------------------------------------ processes
declare -a PIDS=()
declare -A PID_OF=()
STATE=""
OK=0
cleanup() {
  local rc=$?
  set +e
  local pid live=()
  # only our own children still running: a PID that ended may have been reused
  for pid in "${PIDS[@]}"; do ours "$pid" && live+=("$pid"); done
  for pid in "${live[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${live[@]}"; do
    for _ in $(seq 50); do ours "$pid" || break; sleep 0.1; done
    ours "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ -n $STATE && -d $STATE ]]; then
    if ((KEEP)) || ((!OK)); then
      log "state kept in $STATE"
    else
      rm -rf "$STATE"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Whether PID is a live child of this script.
ours() { [[ $(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ') == "$$" ]]; }

# start NAME LOGFILE CMD... : a server in the background, remembered by PID.
# Never call it inside $(...): the PID would be lost to the trap.
start() {
  local name=$1 logf=$2
  shift 2
  "$@" >"$logf" 2>&1 &
  PIDS+=("$!")
  PID_OF[$name]=$!
}

# stop NAME: before the end of the run (e.g. between modes)
stop() {
  local pid=${PID_OF[$1]:-} p keep=()
  [[ -n $pid ]] || return 0
  if ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do ours "$pid" || break; sleep 0.1; done
    ours "$pid" && kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null || true
  unset "PID_OF[$1]"
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

wait_port() { # PORT NAME: until something answers HTTP there
  local i
  for i in $(seq 100); do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null; then return 0; fi
    local pid=${PID_OF[$2]:-}
    [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || die "$2 exited; see $STATE/$2.log: $(tail -5 "$STATE/$2.log" 2>/dev/null)"
    sleep 0.1
  done
  die "$2 does not answer on 127.0.0.1:$1; see $STATE/$2.log"
}

port_free() { ! ss -Htln "sport = :$1" | grep -q .; }

# All PIDs of a server: the process and its children (nginx workers).
tree_pids() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }

# CPU ticks (user+system) of a server and its children.
cpu_ticks() {
  local p total=0 t
  for p in $(tree_pids "$1"); do
    t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# Sets the CPU affinity of every server started so far (all threads).
set_affinity() {
  local name p
  for name in "${!PID_OF[@]}"; do
    for p in $(tree_pids "${PID_OF[$name]}"); do
      taskset -a -p -c "$1" "$p" >/dev/null 2>&1 || true
    done
  done
}

# ------------------------------------------------------------------ setup
ensure_packages

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z $SG_BIN ]]; then
  SG_BIN=$TARGET_DIR/release/scopegate
  if ((BUILD)); then
    log "cargo build --release (target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --bin scopegate) >&2 ||
      die "cargo build --release failed"
  fi
fi
[[ -x $SG_BIN ]] || die "no scopegate binary at $SG_BIN (build it, or pass --bin)"
SECONDS=0   # the budget counts from here: the build is not measured

STATE=$(mktemp -d /tmp/scopegate-load.XXXXXX)
chmod 755 "$STATE"   # nginx workers run as nobody and read files from here
KEYS=$STATE/keys
NCPU=$(nproc)
((NCPU >= 2)) || { [[ $PIN == off ]] || log "one CPU: no pinning"; PIN=off; }
GEN_CPU=0
SRV_CPU=1

# File descriptors: long-polls need two per connection in each proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

P_UP=$PORT_BASE            # nginx upstream stub (+ discovery, JWKS)
P_NGX=$((PORT_BASE + 1))   # nginx plain
P_AR=$((PORT_BASE + 2))    # nginx auth_request
P_HA=$((PORT_BASE + 3))    # HAProxy
P_SG_A=$((PORT_BASE + 4))
P_SG_B=$((PORT_BASE + 5))
P_SG_C=$((PORT_BASE + 6))
P_INTRO=$((PORT_BASE + 7)) # introspection provider (counts calls)
P_SLOW=$((PORT_BASE + 8))  # long-poll upstream
P_SG_LP=$((PORT_BASE + 9))
P_NGX_LP=$((PORT_BASE + 10))
P_SG_FL=$((PORT_BASE + 11))
P_AUTHSVC=$((PORT_BASE + 12)) # the auth service of nginx auth_request
P_SG_LOG=$((PORT_BASE + 13))
ADMIN_OFF=10               # each scopegate's admin port: its port + 10
for p in $(seq "$PORT_BASE" $((PORT_BASE + 29))); do
  port_free "$p" || die "127.0.0.1:$p is in use; pick another --port-base"
done

ISSUER="http://127.0.0.1:$P_UP"
AUDIENCE=scopegate-bench
log "keys and tokens (RSA-2048, RS256, $POOL pool tokens)"
"$PY" "$HERE/mkjwt.py" "$KEYS" --issuer "$ISSUER" --audience "$AUDIENCE" --pool "$POOL"
chmod 755 "$KEYS"
chmod 644 "$KEYS"/*.json "$KEYS"/pub.pem
TOKEN=$(cat "$KEYS/token.jwt")

# ------------------------------------------------------------------ configs
nginx_common() { # NAME WORKERS
  local dir=$STATE/$1
  mkdir -p "$dir/tmp"
  cat <<EOF
worker_processes $2;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
daemon off;
events { worker_connections $((NOFILE - 64)); }
http {
  access_log off;
  default_type application/json;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
EOF
}

write_nginx_upstream() {
  {
    nginx_common nginx-up "$WORKERS"
    cat <<EOF
  server {
    listen 127.0.0.1:$P_UP backlog=4096;
    location = /.well-known/openid-configuration { alias $KEYS/openid-configuration.json; }
    location = /jwks.json { alias $KEYS/jwks.json; }
    # RFC 7662, static. scopegate's introspection contender uses the counting
    # provider of stubs.py instead: this answer says "active" for any token,
    # so a bad token would pass the enforcement check.
    location = /introspect { return 200 '$(cat "$KEYS/introspection.json")'; }
    location / {
      return 200 '{"next_batch":"s72595_4483_1934","chunk":[],"start":"t1","end":"t2","event_id":"YUwRidLecu"}';
    }
  }
}
EOF
  } >"$STATE/nginx-up.conf"
}

# nginx in front of UPSTREAM_PORT: plain on PORT_PLAIN, auth_request on PORT_AR (optional)
write_nginx_proxy() { # NAME UPSTREAM_PORT PORT_PLAIN [PORT_AR]
  local proxy="proxy_pass http://hs; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Host \$http_host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_read_timeout 330s;"
  {
    nginx_common "$1" "$WORKERS"
    cat <<EOF
  upstream hs {
    server 127.0.0.1:$2;
    keepalive 512;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$3 backlog=4096;
    location / { $proxy }
  }
EOF
    if [[ -n ${4:-} ]]; then
      cat <<EOF
  server {
    listen 127.0.0.1:$4 backlog=4096;
    location /_matrix/client/ { auth_request /_bench_auth; $proxy }
    location /_matrix/media/ { auth_request /_bench_auth; $proxy }
    location / { return 403; }
EOF
      if [[ $AUTHREQ == inline ]]; then
        cat <<EOF
    # the auth endpoint answered inside the subrequest itself (no hop)
    location = /_bench_auth {
      internal;
      if (\$http_authorization != "Bearer $TOKEN") { return 401; }
      return 204;
    }
  }
EOF
      else
        cat <<EOF
    # as operators deploy it: the subrequest is proxied to an auth service,
    # here an nginx server that only compares the token (so only the
    # subrequest and its hop are measured, not an auth service's work)
    location = /_bench_auth {
      internal;
      proxy_pass http://authsvc;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI \$request_uri;
    }
  }
  upstream authsvc {
    server 127.0.0.1:$P_AUTHSVC;
    keepalive 512;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$P_AUTHSVC backlog=4096;
    location / {
      if (\$http_authorization != "Bearer $TOKEN") { return 401; }
      return 204;
    }
  }
EOF
      fi
    fi
    echo "}"
  } >"$STATE/$1.conf"
}

write_haproxy() {
  cat >"$STATE/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  maxconn 4096
  log stderr format raw local0 err

defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 330s
  timeout http-keep-alive 300s
  option http-keep-alive
  option forwardfor
  http-reuse always

frontend gate
  bind 127.0.0.1:$P_HA
  # RS256 verified on every request (HAProxy keeps no cache of verified tokens)
  http-request deny deny_status 401 unless { req.hdr(authorization) -m beg -i "bearer " }
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$KEYS/pub.pem") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str "$ISSUER" }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str "$AUDIENCE" }
  http-request deny deny_status 403 unless { var(txn.bearer),jwt_payload_query('\$.scope') -m sub "urn:matrix:client:api:*" }
  # path ACL: the client-server and media APIs only
  acl matrix_api path_beg /_matrix/client/ /_matrix/media/
  http-request deny deny_status 403 unless matrix_api
  default_backend homeserver

backend homeserver
  server hs 127.0.0.1:$P_UP
EOF
}

# write_sg NAME PORT VARIANT [UPSTREAM_PORT] [EXTRA_TOML] (LOG_LEVEL overrides the level)
# VARIANT: static | jwt | jwt-uncached | introspection | check-jwt | check-introspection
write_sg() {
  local name=$1 port=$2 variant=$3 up=${4:-$P_UP} extra=${5:-}
  local f=$STATE/$name.toml
  cat >"$f" <<EOF
# generated by benches/load/run.sh ($variant)
[server]
listen = "127.0.0.1:$port"
idle_timeout_s = 300
drain_timeout_s = 1
max_connections = 20000
worker_threads = $WORKERS

[upstream]
url = "http://127.0.0.1:$up"
probe_interval_s = 60
pool_max_idle_per_host = 512

[admin]
listen = "127.0.0.1:$((port + ADMIN_OFF))"

[log]
level = "${LOG_LEVEL:-$SG_LOG}"

[auth]
server_name = "bench.localhost"
EOF
  case $variant in
    static)
      cat >>"$f" <<EOF

[[auth.static]]
token_sha256 = "$(cat "$KEYS/token.sha256")"
user_id = "@alice:bench.localhost"
scopes = ["urn:matrix:client:api:*"]
EOF
      ;;
    jwt | jwt-uncached | check-jwt)
      local capacity=100000
      [[ $variant == jwt-uncached ]] && capacity=1
      cat >>"$f" <<EOF
issuer = "$ISSUER"

[auth.jwt]
enabled = true
audiences = ["$AUDIENCE"]
algorithms = ["RS256"]
leeway_s = 30
jwks_uri = "$ISSUER/jwks.json"

[cache]
max_ttl_s = 300
negative_ttl_s = 10
capacity = $capacity
EOF
      ;;
    introspection | check-introspection)
      cat >>"$f" <<EOF
issuer = "$ISSUER"

[auth.introspection]
enabled = true
endpoint = "http://127.0.0.1:$P_INTRO/introspect"
client_id = "scopegate-bench"
client_secret = "bench-secret"
auth_method = "client_secret_basic"
timeout_ms = 2000

[cache]
max_ttl_s = 300
negative_ttl_s = 10
capacity = 100000
EOF
      ;;
  esac
  [[ -z $extra ]] || printf '\n%s\n' "$extra" >>"$f"
  echo "$f"
}

# Whether this scopegate binary accepts a config (feature detection).
sg_accepts() { "$SG_BIN" check --config "$1" >"$STATE/check.log" 2>&1; }

detect() { # FLAG_VALUE VARIANT LABEL -> echoes on|off
  local want=$1 variant=$2 label=$3 f
  [[ $want == off ]] && { echo off; return; }
  f=$(write_sg "check-$variant" 1 "check-$variant")
  if sg_accepts "$f"; then
    echo on
  elif [[ $want == on ]]; then
    die "--$label on, but this scopegate refuses the config: $(head -3 "$STATE/check.log")"
  else
    echo off
  fi
}
JWT_ON=$(detect "$JWT" jwt jwt)
INTRO_ON=$(detect "$INTRO" introspection introspection)
log "scopegate: $("$SG_BIN" --version) | JWT validation: $JWT_ON | introspection: $INTRO_ON"

# ------------------------------------------------------------------ request mix
# GET rows of tests/data/sample-requests.tsv that need a token and that a
# full-access token may use (asked of the shipped rules with `explain`), plus
# the PUT sends. Cached per binary and TSV.
TSV=$ROOT/tests/data/sample-requests.tsv
build_mix() {
  local key cache cfg
  key=$( (stat -c '%s %Y' "$SG_BIN"; cat "$TSV" "$HERE/run.sh") | sha256sum | cut -c1-16)
  cache=$TARGET_DIR/scopegate-load/mix-$key.txt
  if [[ -s $cache ]]; then
    cp "$cache" "$STATE/reqs.txt"
    return
  fi
  log "selecting the request mix with scopegate explain (cached afterwards)"
  cfg=$(write_sg explain 1 static)
  local method path
  while IFS=$'\t' read -r method _ path; do
    case $method in
      GET) ;;
      PUT) [[ $path =~ /(send|redact|typing|sendToDevice)/ ]] || continue ;;
      *) continue ;;
    esac
    # refused without a token, allowed with full access
    if ! "$SG_BIN" explain --config "$cfg" --scopes "" "$method" "$path" >/dev/null 2>&1 &&
      "$SG_BIN" explain --config "$cfg" --scopes "urn:matrix:client:api:*" "$method" "$path" >/dev/null 2>&1; then
      echo "$method $path"
    fi
  done < <(tail -n +2 "$TSV") | sort -u >"$STATE/reqs.txt"
  mkdir -p "$(dirname "$cache")"
  cp "$STATE/reqs.txt" "$cache"
}
build_mix
N_GET=$(grep -c '^GET ' "$STATE/reqs.txt" || true)
N_PUT=$(grep -c '^PUT ' "$STATE/reqs.txt" || true)
((N_GET > 10)) || die "request mix too small ($N_GET GET rows); see $STATE/reqs.txt"
log "request mix: $N_GET GET paths, $N_PUT PUT sends (1 request in 10 is a PUT)"

# ------------------------------------------------------------------ wrk
# run_wrk PORT TOKENFILE SECONDS [CONNS] [PINNED] [extra env...] -> prints the RESULT line
run_wrk() {
  local port=$1 tokens=$2 secs=$3 conns=${4:-$CONNS} pinned=${5:-0}
  shift 5 || shift $#
  local threads=$THREADS
  ((threads <= conns)) || threads=$conns
  local cmd=(wrk -t "$threads" -c "$conns" -d "${secs}s" --timeout 5s -s "$HERE/matrix.lua" "http://127.0.0.1:$port")
  ((pinned)) && cmd=(taskset -c "$GEN_CPU" "${cmd[@]}")
  env BENCH_REQS="$STATE/reqs.txt" BENCH_TOKENS="$tokens" "$@" \
    timeout $((secs + 30)) "${cmd[@]}" >"$STATE/wrk.out" 2>&1 || true
  grep '^RESULT ' "$STATE/wrk.out" | tail -1 || {
    log "wrk gave no result: $(tail -3 "$STATE/wrk.out")"
    echo "RESULT requests=0"
  }
}

field() { # KEY LINE
  local v
  v=$(grep -o "\b$1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2)
  echo "${v:-0}"
}

# Requests scopegate refused for their token (any reason but scope).
refused_count() {
  curl -s --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk '/^scopegate_requests_total\{/ && /decision="(invalid_token|unauthenticated|rate_limited|provider_error)"/ { s += $2 } END { printf "%.0f", s }'
}

metric() { # ADMIN_PORT NAME: sum of a Prometheus metric's samples, or "" if absent
  curl -s --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2; f = 1 } END { if (f) printf "%.0f", s }'
}

# ------------------------------------------------------------------ enforcement
CHECK_FAILED=0
expect() { # PORT LABEL ALLOWED_CODES DESC curl-args...
  local port=$1 label=$2 allowed=$3 desc=$4
  shift 4
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "http://127.0.0.1:$port/_matrix/client/v3/sync" || true)
  if [[ ",$allowed," == *",$code,"* ]]; then
    printf '    %-28s %s\n' "$desc" "$code" >&2
    return 0
  fi
  printf '    %-28s %s   <-- expected %s\n' "$desc" "$code" "$allowed" >&2
  CHECK_FAILED=1
  return 1
}

# Every request of the mix, with the contender's token: all must be 2xx.
check_mix() { # PORT TOKEN LABEL
  local port=$1 token=$2 bad=0 codes
  local urls_get=() urls_put=() method path
  while read -r method path; do
    # one curl per method, reusing its connection; every URL needs its own -o
    if [[ $method == GET ]]; then
      urls_get+=(-o /dev/null "http://127.0.0.1:$port$path")
    else
      urls_put+=(-o /dev/null "http://127.0.0.1:$port$path")
    fi
  done <"$STATE/reqs.txt"
  codes=$(
    curl -s --max-time 20 -H "Authorization: Bearer $token" -w '%{http_code}\n' "${urls_get[@]}"
    if ((${#urls_put[@]})); then
      curl -s --max-time 20 -X PUT -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d '{"msgtype":"m.text","body":"check"}' -w '%{http_code}\n' "${urls_put[@]}"
    fi
  )
  bad=$(grep -cv '^2' <<<"$codes" || true)
  if ((bad)); then
    printf '    %-28s %s of %s not 2xx: %s\n' "request mix, valid token" "$bad" "$(wc -l <<<"$codes")" \
      "$(grep -v '^2' <<<"$codes" | sort | uniq -c | tr -s ' ' | tr '\n' ';')" >&2
    CHECK_FAILED=1
  else
    printf '    %-28s all %s 2xx\n' "request mix, valid token" "$(wc -l <<<"$codes")" >&2
  fi
}

declare -A ENFORCED=()
enforcement_check() { # ID
  local id=$1 port=${C_PORT[$1]} token
  token=$(head -1 "${C_TOKENS[$id]}")
  log "enforcement: ${C_LABEL[$id]} (127.0.0.1:$port)"
  local before=$CHECK_FAILED
  CHECK_FAILED=0
  check_mix "$port" "$token" "$id"
  if [[ $id == direct || $id == nginx ]]; then
    printf '    %s\n' "baseline: does no authentication by design" >&2
    ENFORCED[$id]="baseline (no auth)"
  else
    expect "$port" "$id" 401 "no token" || true
    expect "$port" "$id" 401,403 "malformed token" -H "Authorization: Bearer not-a-valid-token" || true
    expect "$port" "$id" 401,403 "JWT signed by another key" -H "Authorization: Bearer $(cat "$KEYS/forged.jwt")" || true
    expect "$port" "$id" 401,403 "expired JWT" -H "Authorization: Bearer $(cat "$KEYS/expired.jwt")" || true
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $token" \
      "http://127.0.0.1:$port/_synapse/admin/v2/users" || true)
    if [[ $code == 403 || $code == 404 ]]; then
      printf '    %-28s %s\n' "valid token, /_synapse/admin" "$code" >&2
    else
      printf '    %-28s %s   <-- expected 403/404\n' "valid token, /_synapse/admin" "$code" >&2
      CHECK_FAILED=1
    fi
    ((CHECK_FAILED)) && ENFORCED[$id]="FAILED" || ENFORCED[$id]="401/403 ok"
  fi
  ((CHECK_FAILED)) && log "enforcement check failed for $id"
  local failed=$CHECK_FAILED
  CHECK_FAILED=$((before || failed))
}

# ------------------------------------------------------------------ contenders
declare -A C_LABEL=() C_PORT=() C_TOKENS=() C_PROC=() C_ADMIN=()
declare -a CONTENDERS=()
wanted() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
add() { # ID LABEL PORT TOKENFILE PROCESS [ADMIN_PORT]
  wanted "$1" || return 0
  CONTENDERS+=("$1")
  C_LABEL[$1]=$2 C_PORT[$1]=$3 C_TOKENS[$1]=$4 C_PROC[$1]=$5 C_ADMIN[$1]=${6:-}
}

srv_prefix() { if [[ $PIN != off ]]; then echo taskset -c "$SRV_CPU"; fi; }

start_upstream() {
  write_nginx_upstream
  # shellcheck disable=SC2046
  start nginx-up "$STATE/nginx-up.log" $(srv_prefix) nginx -p "$STATE/nginx-up" -c "$STATE/nginx-up.conf" -e stderr
  wait_port "$P_UP" nginx-up
}

start_sg() { # NAME CONFIG PORT
  # shellcheck disable=SC2046
  start "$1" "$STATE/$1.log" $(srv_prefix) "$SG_BIN" run --config "$2"
  wait_port "$3" "$1"
}

# ------------------------------------------------------------------ meta
versions() {
  local dirty=""
  [[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || dirty=" + uncommitted changes"
  local bin_from
  bin_from="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$dirty"
  ((BUILD)) || bin_from="binary $SG_BIN"
  cat <<EOF
date=$(date -u '+%Y-%m-%d %H:%M UTC')
scopegate=$("$SG_BIN" --version 2>&1 | head -1 | sed 's/^scopegate //') ($bin_from)
rustc=$(rustc -V 2>/dev/null || echo '?')
nginx=$(nginx -v 2>&1 | sed 's/.*version: //')
haproxy=$(haproxy -v 2>&1 | head -1 | awk '{print $3}')
wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')
kernel=$(uname -r)
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
nproc=$NCPU
mem=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')
EOF
}

# How busy the machine is right now, before anything of ours runs: the share
# of all CPUs' time over 2 s that was not idle. (The load average at the start
# would mostly tell what ran in the minutes before, e.g. the release build.)
busy_percent() {
  local a b
  a=$(awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6 }' /proc/stat)
  sleep 2
  b=$(awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    t = y[1] - x[1]; i = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (t - i) / t : 0) }'
}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_START=$(busy_percent)
log "machine busy before the run: ${BUSY_START}% of CPU time (load average $LOAD_START)"

# ================================================================== compare
compare() {
  start_upstream
  write_nginx_proxy nginx-proxy "$P_UP" "$P_NGX" "$P_AR"
  # shellcheck disable=SC2046
  start nginx-proxy "$STATE/nginx-proxy.log" $(srv_prefix) nginx -p "$STATE/nginx-proxy" -c "$STATE/nginx-proxy.conf" -e stderr
  write_haproxy
  haproxy -c -q -f "$STATE/haproxy.cfg" >"$STATE/haproxy-check.log" 2>&1 ||
    die "HAProxy refuses its config: $(cat "$STATE/haproxy-check.log")"
  # shellcheck disable=SC2046
  start haproxy "$STATE/haproxy.log" $(srv_prefix) haproxy -db -f "$STATE/haproxy.cfg"
  wait_port "$P_NGX" nginx-proxy
  wait_port "$P_AR" nginx-proxy
  wait_port "$P_HA" haproxy

  local one=$KEYS/token.jwt
  add direct "direct to the upstream (no proxy)" "$P_UP" "$one" nginx-up
  add nginx "nginx plain proxy_pass" "$P_NGX" "$one" nginx-proxy
  add authreq "nginx auth_request ($AUTHREQ)" "$P_AR" "$one" nginx-proxy
  add haproxy "HAProxy jwt_verify RS256" "$P_HA" "$one" haproxy
  local cfg
  if wanted sg_a; then
    if [[ $JWT_ON == on ]]; then
      cfg=$(write_sg sg_a "$P_SG_A" jwt)
      add sg_a "scopegate, JWT, cached" "$P_SG_A" "$one" sg_a $((P_SG_A + ADMIN_OFF))
    else
      cfg=$(write_sg sg_a "$P_SG_A" static)
      add sg_a "scopegate, static token" "$P_SG_A" "$one" sg_a $((P_SG_A + ADMIN_OFF))
    fi
    start_sg sg_a "$cfg" "$P_SG_A"
  fi
  if ((LOG_CONTENDER)) && wanted sg_log; then
    # the same as sg_a, with the access log on (one line per request, to a file)
    local variant=static label="static token"
    [[ $JWT_ON == on ]] && variant=jwt label="JWT, cached"
    cfg=$(LOG_LEVEL=info write_sg sg_log "$P_SG_LOG" "$variant")
    add sg_log "scopegate, $label, access log on" "$P_SG_LOG" "$one" sg_log $((P_SG_LOG + ADMIN_OFF))
    start_sg sg_log "$cfg" "$P_SG_LOG"
  fi
  if [[ $JWT_ON == on ]] && wanted sg_b; then
    # a cache of one entry and 1024 tokens in turn: every request is validated
    cfg=$(write_sg sg_b "$P_SG_B" jwt-uncached)
    add sg_b "scopegate, JWT, uncached" "$P_SG_B" "$KEYS/pool.txt" sg_b $((P_SG_B + ADMIN_OFF))
    start_sg sg_b "$cfg" "$P_SG_B"
  fi
  if [[ $INTRO_ON == on ]] && wanted sg_c; then
    start intro "$STATE/intro.log" "$PY" "$HERE/stubs.py" introspect --port "$P_INTRO" \
      --answer "$KEYS/introspection.json" --active-token-file "$KEYS/opaque.txt"
    wait_port "$P_INTRO" intro
    cfg=$(write_sg sg_c "$P_SG_C" introspection)
    add sg_c "scopegate, introspection, cached" "$P_SG_C" "$KEYS/opaque.txt" sg_c $((P_SG_C + ADMIN_OFF))
    start_sg sg_c "$cfg" "$P_SG_C"
  fi
  ((${#CONTENDERS[@]})) || die "no contender selected (--only $ONLY)"

  local id
  for id in "${CONTENDERS[@]}"; do enforcement_check "$id"; done
  ((CHECK_FAILED == 0)) || die "a contender does not enforce (or does not serve the mix); not measuring"

  local pins=()
  case $PIN in on) pins=(1) ;; off) pins=(0) ;; both) pins=(1 0) ;; esac
  local n_runs=$((ROUNDS * ${#pins[@]} * ${#CONTENDERS[@]}))
  local estimate=$((SECONDS + ${#CONTENDERS[@]} * (WARMUP + 1) + n_runs * (DURATION + 1)))
  log "$n_runs measured runs of ${DURATION}s (${#CONTENDERS[@]} contenders x $ROUNDS rounds x ${#pins[@]} pin modes); about ${estimate}s in all"
  ((estimate <= BUDGET)) || log "that exceeds --budget $BUDGET: rounds will be cut short"

  local tick
  tick=$(getconf CLK_TCK)
  local res=$STATE/results.tsv
  printf 'round\tpinned\tid\tlabel\trps\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\trequests\terrors\tcpu_us_per_req\tcache_hit_pct\n' >"$res"

  if ((WARMUP > 0)); then
    if [[ $PIN == off ]]; then set_affinity "0-$((NCPU - 1))"; else set_affinity "$SRV_CPU"; fi
    for id in "${CONTENDERS[@]}"; do
      run_wrk "${C_PORT[$id]}" "${C_TOKENS[$id]}" "$WARMUP" "$CONNS" "$([[ $PIN == off ]] && echo 0 || echo 1)" >/dev/null
    done
  fi

  local r pinned i k truncated=0 current_pin=""
  for ((r = 1; r <= ROUNDS; r++)); do
    for pinned in "${pins[@]}"; do
      if [[ $current_pin != "$pinned" ]]; then
        if ((pinned)); then set_affinity "$SRV_CPU"; else set_affinity "0-$((NCPU - 1))"; fi
        current_pin=$pinned
      fi
      local n=${#CONTENDERS[@]}
      for ((k = 0; k < n; k++)); do
        # rotate the starting contender each round: no one always runs first
        i=$(((k + r - 1) % n))
        id=${CONTENDERS[$i]}
        if ((SECONDS + DURATION + 2 > BUDGET)); then truncated=1; break 3; fi
        local pid=${PID_OF[${C_PROC[$id]}]} admin=${C_ADMIN[$id]}
        local c0 c1 h0="" m0="" h1="" m1="" line
        c0=$(cpu_ticks "$pid")
        if [[ -n $admin ]]; then
          h0=$(metric "$admin" scopegate_token_cache_hits_total)
          m0=$(metric "$admin" scopegate_token_cache_misses_total)
        fi
        line=$(run_wrk "${C_PORT[$id]}" "${C_TOKENS[$id]}" "$DURATION" "$CONNS" "$pinned")
        c1=$(cpu_ticks "$pid")
        local reqs errs cpu_us hit=""
        reqs=$(field requests "$line")
        errs=$(($(field err_status "$line") + $(field err_connect "$line") + $(field err_read "$line") + $(field err_write "$line") + $(field err_timeout "$line")))
        cpu_us=$(awk -v d=$((c1 - c0)) -v t="$tick" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", d / t * 1e6 / n; else print "" }')
        if [[ -n $admin ]]; then
          h1=$(metric "$admin" scopegate_token_cache_hits_total)
          m1=$(metric "$admin" scopegate_token_cache_misses_total)
          if [[ -n $h0 && -n $h1 ]]; then
            hit=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN { if (h + m > 0) printf "%.1f", 100 * h / (h + m) }')
          fi
        fi
        printf '%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$pinned" "$id" "${C_LABEL[$id]}" \
          "$(field rps "$line")" "$(field p50_us "$line")" "$(field p90_us "$line")" "$(field p99_us "$line")" \
          "$(field p999_us "$line")" "$(field max_us "$line")" "$reqs" "$errs" "$cpu_us" "$hit" >>"$res"
        log "round $r $( ((pinned)) && echo pinned || echo unpinned) $(printf '%-8s' "$id") $(field rps "$line") req/s  p99 $(field p99_us "$line") us  cpu ${cpu_us} us/req${hit:+  cache hits $hit%}$( ((errs)) && echo "  ERRORS $errs")"
      done
    done
  done
  ((truncated)) && log "budget reached: stopped after round $((r))"

  local meta=$STATE/meta.txt
  {
    versions
    echo "load_start=$LOAD_START"
    echo "busy_start=$BUSY_START"
    echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "duration=$DURATION"
    echo "rounds=$ROUNDS"
    echo "truncated=$truncated"
    echo "conns=$CONNS"
    echo "threads=$THREADS"
    echo "workers=$WORKERS"
    echo "pin=$PIN"
    echo "jwt=$JWT_ON"
    echo "introspection=$INTRO_ON"
    echo "pool=$POOL"
    echo "sg_log=$SG_LOG"
    echo "authreq=$AUTHREQ"
    echo "mix_get=$N_GET"
    echo "mix_put=$N_PUT"
    echo "note=$NOTE"
    for id in "${CONTENDERS[@]}"; do echo "enforced_$id=${ENFORCED[$id]}"; done
  } >"$meta"
  local args=(compare "$res" "$meta")
  ((WRITE_DOC)) && args+=(--doc "$ROOT/docs/performance.md" --png "$ROOT/docs/performance.png")
  "$PY" "$HERE/report.py" "${args[@]}"

  for id in nginx-proxy haproxy sg_a sg_log sg_b sg_c intro nginx-up; do stop "$id"; done
}

# ================================================================== longpoll
LP_RESULT=""
# longpoll_one NAME PORT PID_NAME N: sets LP_RESULT to
# "held rss_before_kb rss_held_kb hwm_kb fds_before fds_held answered_200 rss_after_kb"
longpoll_one() {
  local name=$1 port=$2 pidname=$3 n=$4 pid
  pid=${PID_OF[$pidname]}
  # one request first, so the baseline includes a warmed-up gateway
  curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/_matrix/client/v3/joined_rooms" || true
  sleep 0.5
  local rss0 fd0
  rss0=$(rss_kb "$pid")
  fd0=$(fd_count "$pid")
  start "lp-client-$name" "$STATE/lp-client-$name.log" "$PY" "$HERE/stubs.py" longpoll --port "$port" \
    --n "$n" --token-file "$KEYS/token.jwt" --timeout 120
  local held=0 t
  for t in $(seq 600); do # up to 60 s
    held=$(curl -s --max-time 3 "http://127.0.0.1:$P_SLOW/__stats" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["held"])' 2>/dev/null || echo 0)
    ((held >= n)) && break
    kill -0 "${PID_OF[lp-client-$name]}" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1 # let allocations settle
  local rss1 hwm fd1
  rss1=$(rss_kb "$pid")
  hwm=$(hwm_kb "$pid")
  fd1=$(fd_count "$pid")
  local inflight=""
  [[ $name == scopegate ]] && inflight=$(metric $((port + ADMIN_OFF)) scopegate_requests_in_flight)
  log "  $name: $held long-polls held upstream; RSS ${rss0} kB -> ${rss1} kB; fds $fd0 -> $fd1${inflight:+; in flight $inflight}"
  curl -s -o /dev/null -X POST "http://127.0.0.1:$P_SLOW/__release" || true
  local client_pid=${PID_OF[lp-client-$name]}
  for t in $(seq 600); do kill -0 "$client_pid" 2>/dev/null || break; sleep 0.1; done
  local result
  result=$(grep '^RESULT' "$STATE/lp-client-$name.log" || echo "RESULT ok=0")
  stop "lp-client-$name"
  sleep 1
  local rss2
  rss2=$(rss_kb "$pid")
  log "  $name: answers: ${result#RESULT }; RSS after release ${rss2} kB"
  LP_RESULT="$held $rss0 $rss1 $hwm $fd0 $fd1 $(field ok "$result") $rss2"
}

longpoll() {
  PIN=off # scopegate with its default threads, placed by the scheduler
  # two descriptors per long-poll in the proxy (client side + upstream side)
  LP_EFF=$LP_N
  local cap=$(((NOFILE - 200) / 2))
  if ((LP_EFF > cap)); then
    log "open-file limit $NOFILE (hard $(ulimit -Hn)) allows $cap long-polls per proxy, not $LP_N: holding $cap"
    LP_EFF=$cap
  fi
  start slow "$STATE/slow.log" "$PY" "$HERE/stubs.py" slow-upstream --port "$P_SLOW" --hold 90
  wait_port "$P_SLOW" slow
  local cfg
  cfg=$(write_sg sg_lp "$P_SG_LP" static "$P_SLOW")
  # the long-poll figure is with scopegate's default worker threads
  sed -i '/^worker_threads/d' "$cfg"
  start_sg sg_lp "$cfg" "$P_SG_LP"
  log "long-polls: $LP_EFF through scopegate"
  local sg ng=""
  longpoll_one scopegate "$P_SG_LP" sg_lp "$LP_EFF"
  sg=$LP_RESULT
  stop sg_lp
  if ((LP_COMPARE)); then
    write_nginx_proxy nginx-lp "$P_SLOW" "$P_NGX_LP"
    sed -i "s/^worker_processes .*/worker_processes 1;/" "$STATE/nginx-lp.conf"
    start nginx-lp "$STATE/nginx-lp.log" nginx -p "$STATE/nginx-lp" -c "$STATE/nginx-lp.conf" -e stderr
    wait_port "$P_NGX_LP" nginx-lp
    # nginx starts closing connections that have not sent a request once
    # fewer than 1/16 of worker_connections are free: stay below that
    local ng_n=$LP_EFF ng_cap=$(((NOFILE - 64) * 15 / 16 / 2 - 100))
    ((ng_n <= ng_cap)) || ng_n=$ng_cap
    log "long-polls: $ng_n through nginx (one worker), for scale"
    # nginx: the worker holds the connections
    PID_OF[nginx-lp-worker]=$(pgrep -P "${PID_OF[nginx-lp]}" | head -1)
    longpoll_one nginx "$P_NGX_LP" nginx-lp-worker "$ng_n"
    ng=$LP_RESULT
    unset "PID_OF[nginx-lp-worker]"
    stop nginx-lp
  fi
  stop slow
  local meta=$STATE/longpoll.txt
  {
    versions
    echo "load_start=$LOAD_START"
    echo "busy_start=$BUSY_START"
    echo "requested=$LP_N"
    echo "held_target=$LP_EFF"
    echo "nofile=$NOFILE"
    echo "nofile_hard=$(ulimit -Hn)"
    echo "lp_scopegate=$sg"
    echo "lp_nginx=$ng"
    echo "note=$NOTE"
  } >"$meta"
  local args=(longpoll "$meta")
  ((WRITE_DOC)) && args+=(--doc "$ROOT/docs/performance.md")
  "$PY" "$HERE/report.py" "${args[@]}"
}

# ================================================================== flood
flood() {
  PIN=off # no pinning: the flood, the legitimate client and the gateway share the machine
  start_upstream
  local legit_tokens=$KEYS/token.jwt variant=static
  [[ $JWT_ON == on ]] && variant=jwt
  if [[ $INTRO_ON == on ]]; then
    start intro "$STATE/intro.log" "$PY" "$HERE/stubs.py" introspect --port "$P_INTRO" \
      --answer "$KEYS/introspection.json" --active-token-file "$KEYS/opaque.txt"
    wait_port "$P_INTRO" intro
    # random opaque tokens go to introspection: one provider call each, unless cached
    [[ $JWT_ON == on ]] || { variant=introspection; legit_tokens=$KEYS/opaque.txt; }
  fi
  local cfg
  cfg=$(write_sg sg_fl "$P_SG_FL" "$variant")
  sed -i '/^worker_threads/d' "$cfg"
  # HOOK: with JWT and introspection both on, add introspection to the JWT config
  if [[ $JWT_ON == on && $INTRO_ON == on ]]; then
    sed -n '/^\[auth.introspection\]/,/^$/p' "$(write_sg fl-intro 1 introspection)" >>"$cfg"
  fi
  if grep -q '^\[cache\]' "$cfg"; then
    sed -i "s/^capacity = .*/capacity = $FLOOD_CAPACITY/" "$cfg"
  fi
  # [auth.rate_limit] (per-client budget of invalid tokens) would answer 429
  # to almost all of a one-address flood; off by default so the flood reaches
  # validation and the cache (the worst case: a flood from many addresses).
  if [[ $FLOOD_RATE_LIMIT == off ]]; then
    local probe
    probe=$(write_sg fl-probe 1 static "" $'[auth.rate_limit]\nenabled = false')
    if sg_accepts "$probe"; then printf '\n[auth.rate_limit]\nenabled = false\n' >>"$cfg"; fi
  fi
  start_sg sg_fl "$cfg" "$P_SG_FL"
  local pid=${PID_OF[sg_fl]} admin=$((P_SG_FL + ADMIN_OFF))
  local secs=$DURATION
  run_wrk "$P_SG_FL" "$legit_tokens" 1 8 0 >/dev/null # warm-up
  local rss0
  rss0=$(rss_kb "$pid")
  log "flood: legitimate client alone, ${secs}s"
  local alone
  alone=$(run_wrk "$P_SG_FL" "$legit_tokens" "$secs" 16 0)
  log "  alone: $(field rps "$alone") req/s, p99 $(field p99_us "$alone") us"

  local threads=2 per
  per=$(((FLOOD_N + threads - 1) / threads))
  log "flood: $FLOOD_N distinct random tokens on $FLOOD_CONNS connections, legitimate client alongside"
  # the legitimate client runs until the flood is over, then gets SIGINT
  BENCH_REQS="$STATE/reqs.txt" BENCH_TOKENS="$legit_tokens" \
    start legit "$STATE/legit.out" timeout 150 wrk -t 1 -c 16 -d 140s --timeout 5s \
    -s "$HERE/matrix.lua" "http://127.0.0.1:$P_SG_FL"
  # The flood runs until scopegate has refused all its tokens (wrk's own
  # duration cannot end a run early): refusals are polled from /metrics.
  local refused0 t0 now refused=0 peak_entries=0 e last=0 still=0
  refused0=$(refused_count "$admin")
  t0=$(date +%s.%N)
  BENCH_REQS="$STATE/reqs.txt" BENCH_MODE=flood BENCH_LIMIT="$per" \
    start flood "$STATE/flood.out" timeout 150 wrk -t "$threads" -c "$FLOOD_CONNS" -d 140s --timeout 5s \
    -s "$HERE/matrix.lua" "http://127.0.0.1:$P_SG_FL"
  while ours "${PID_OF[flood]}"; do
    sleep 0.2
    refused=$(($(refused_count "$admin") - refused0))
    e=$(metric "$admin" scopegate_token_cache_entries)
    [[ -n $e ]] && ((e > peak_entries)) && peak_entries=$e
    ((refused >= FLOOD_N - threads)) && break
    # no progress for 5 s: give up waiting
    if ((refused == last)); then still=$((still + 1)); else still=0; last=$refused; fi
    ((still < 25)) || break
  done
  now=$(date +%s.%N)
  local flood_secs
  flood_secs=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.1f", b - a }')
  local entries_end
  entries_end=$(metric "$admin" scopegate_token_cache_entries)
  # wrk prints its results on SIGINT (timeout passes the signal on)
  kill -INT "${PID_OF[flood]}" 2>/dev/null || true
  kill -INT "${PID_OF[legit]}" 2>/dev/null || true
  for _ in $(seq 100); do ours "${PID_OF[flood]}" || ours "${PID_OF[legit]}" || break; sleep 0.1; done
  stop flood
  stop legit
  local fl during
  fl=$(grep '^RESULT' "$STATE/flood.out" | tail -1 || echo "RESULT requests=0")
  during=$(grep '^RESULT' "$STATE/legit.out" | tail -1 || echo "RESULT requests=0")
  local rss1 hwm
  rss1=$(rss_kb "$pid")
  hwm=$(hwm_kb "$pid")
  local validations rl calls=""
  validations=$(metric "$admin" scopegate_token_validations_total)
  rl=$(metric "$admin" scopegate_rate_limited_requests_total)
  # HOOK: provider calls, counted by the introspection stub itself
  [[ $INTRO_ON == on ]] && calls=$(curl -s "http://127.0.0.1:$P_INTRO/__stats" || true)
  local flood_rate
  flood_rate=$(awk -v n="$refused" -v t="$flood_secs" 'BEGIN { if (t > 0) printf "%.0f", n / t }')
  log "  flood: $refused tokens refused in ${flood_secs}s ($flood_rate req/s); wrk: $(field requests "$fl") sent, $(field err_status "$fl") answered 4xx/5xx"
  log "  legitimate client during the flood: $(field rps "$during") req/s, p99 $(field p99_us "$during") us, errors $(field err_status "$during")"
  log "  scopegate RSS ${rss0} kB -> ${rss1} kB (peak ${hwm} kB); cache entries ${entries_end:-n/a} at the end, ${peak_entries} at most${calls:+; provider $calls}"
  local meta=$STATE/flood.txt
  {
    versions
    echo "load_start=$LOAD_START"
    echo "busy_start=$BUSY_START"
    echo "tokens=$FLOOD_N"
    echo "conns=$FLOOD_CONNS"
    echo "variant=$variant"
    echo "jwt=$JWT_ON"
    echo "introspection=$INTRO_ON"
    echo "capacity=$FLOOD_CAPACITY"
    echo "rate_limit=$FLOOD_RATE_LIMIT"
    echo "flood=${fl#RESULT }"
    echo "flood_secs=$flood_secs"
    echo "alone=${alone#RESULT }"
    echo "during=${during#RESULT }"
    echo "rss_before_kb=$rss0"
    echo "rss_after_kb=$rss1"
    echo "hwm_kb=$hwm"
    echo "cache_entries=$entries_end"
    echo "cache_entries_peak=$peak_entries"
    echo "refused=$refused"
    echo "flood_rate=$flood_rate"
    echo "validations=$validations"
    echo "rate_limited=$rl"
    echo "provider=$calls"
    echo "note=$NOTE"
  } >"$meta"
  local args=(flood "$meta")
  ((WRITE_DOC)) && args+=(--doc "$ROOT/docs/performance.md")
  "$PY" "$HERE/report.py" "${args[@]}"
  stop sg_fl
  stop intro
  stop nginx-up
}

case $MODE in
  compare) compare ;;
  longpoll) longpoll ;;
  flood) flood ;;
  all) compare; longpoll; flood ;;
esac
OK=1
log "done in ${SECONDS}s"
