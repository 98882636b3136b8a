#!/usr/bin/env bash
# make demo: the simulator on one port, the proxy in front of it, and curl lines to paste.
set -euo pipefail
sim_port=${1:-9000}
port=${2:-8080}
admin=${3:-9464}
py=${PYTHON:-.venv/bin/python}

"$py" -m proxy simulate --port "$sim_port" --limit 100/1m --limit 1500/1h >/dev/null &
sim=$!
DEFENDER_PROXY_UPSTREAM="http://127.0.0.1:$sim_port" \
DEFENDER_PROXY_LISTEN="127.0.0.1:$port" \
DEFENDER_PROXY_ADMIN_LISTEN="127.0.0.1:$admin" \
DEFENDER_PROXY_LOG_FORMAT="${DEFENDER_PROXY_LOG_FORMAT:-console}" \
  "$py" -m proxy run &
proxy=$!
trap 'kill "$proxy" "$sim" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 100); do
  if curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.1
done

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
  # a target for another host: refused by the proxy itself
  curl -s -x http://127.0.0.1:$port http://example.com/
  # what was counted
  curl -s http://127.0.0.1:$admin/metrics | grep -E '^defender_(api_errors|proxy_requests)_total'

Ctrl-C stops both.
EOF
wait "$proxy"
