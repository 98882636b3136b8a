#!/usr/bin/env bash
# make demo: the simulator on one port, the proxy in front of it, and curl lines to paste.
# It stops with exit code 1, and prints no lines to paste, when a port is taken, a process
# exits during start-up, or the two are not ready in time: pasted lines would otherwise reach
# whatever holds the port.
set -euo pipefail
sim_port=${1:-9000}
port=${2:-8080}
admin=${3:-9464}
py=${PYTHON:-.venv/bin/python}
# How long start-up may take, in tenths of a second.
ready_within=200

fail() {
  echo "make demo: $*" >&2
  exit 1
}

# Bound as the proxy binds (SO_REUSEADDR), so a port left in TIME_WAIT counts as free; a port
# with a listener on it, on any local address, does not.
free() {
  "$py" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

check_port() {
  local value=$1 what=$2 variable=$3
  if [[ ! $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
    fail "$variable=$value is not a port (1-65535)"
  fi
  if ! free "$value"; then
    fail "port $value ($what) is already in use on 127.0.0.1; nothing was started." \
      "Choose another with make demo $variable=<port> (the ports: SIM_PORT, DEMO_PORT," \
      "DEMO_ADMIN_PORT), or stop what holds it (ss -ltnp 'sport = :$value' shows it)."
  fi
}

check_port "$sim_port" "the simulated API" SIM_PORT
check_port "$port" "the proxy" DEMO_PORT
check_port "$admin" "the proxy's admin port" DEMO_ADMIN_PORT
if ((sim_port == port || sim_port == admin || port == admin)); then
  fail "SIM_PORT ($sim_port), DEMO_PORT ($port) and DEMO_ADMIN_PORT ($admin) must differ"
fi

"$py" -m proxy simulate --port "$sim_port" --limit 100/1m --limit 1500/1h >/dev/null &
sim=$!
DEFENDER_PROXY_UPSTREAM="http://127.0.0.1:$sim_port" \
DEFENDER_PROXY_LISTEN="127.0.0.1:$port" \
DEFENDER_PROXY_ADMIN_LISTEN="127.0.0.1:$admin" \
DEFENDER_PROXY_LOG_FORMAT="${DEFENDER_PROXY_LOG_FORMAT:-console}" \
  "$py" -m proxy run &
proxy=$!
trap 'kill "$proxy" "$sim" 2>/dev/null || true' EXIT INT TERM

ready=
for _ in $(seq "$ready_within"); do
  kill -0 "$sim" 2>/dev/null || fail "the simulator exited during start-up (its message is above)"
  kill -0 "$proxy" 2>/dev/null || fail "the proxy exited during start-up (its log is above)"
  if curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 &&
    curl -fs "http://127.0.0.1:$sim_port/_sim/stats" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
[[ -n $ready ]] || fail "the proxy and the simulator were not ready within $((ready_within / 10))s"

cat <<EOF

The simulated Defender API listens on 127.0.0.1:$sim_port, the proxy on 127.0.0.1:$port,
its metrics on 127.0.0.1:$admin. Paste these in another terminal:

  # an ordinary call, forwarded unchanged
  curl -s http://127.0.0.1:$port/api/machines
  # a 401 and a 403 as the API sends them; each is counted and logged with its target id
  curl -s -H 'X-Simulate: error=Unauthorized' http://127.0.0.1:$port/api/machines
  curl -s -H 'X-Simulate: error=Forbidden' -X POST http://127.0.0.1:$port/api/machines/1234/isolate
  # hunting's throttling answer, whose code is the string "429"
  curl -s -H 'X-Simulate: hunting-429' -X POST http://127.0.0.1:$port/api/advancedqueries/run
  # an HTML page from a gateway instead of JSON
  curl -s -H 'X-Simulate: body=html;status=502' http://127.0.0.1:$port/api/alerts
  # a target for another host: refused, with the base URL to use instead
  curl -s -x http://127.0.0.1:$port http://example.com/
  # the proxy as a proxy variable for its own URL: served as the plain call above
  curl -s -x http://127.0.0.1:$port http://127.0.0.1:$port/api/machines
  # what was counted, and whether the upstream is reachable
  curl -s http://127.0.0.1:$admin/metrics | grep -E '^defender_(api_errors|proxy_requests)_total'
  curl -s http://127.0.0.1:$admin/readyz

Ctrl-C stops both.
EOF
wait "$proxy"
