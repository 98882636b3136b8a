#!/usr/bin/env bash
# make demo: the simulator on one port, its stand-in Entra ID on another, the proxy in front of the
# simulator holding a demo app's credential, and curl lines to paste. The simulator checks every
# token as the API does, so a tokenless call is answered 200 only through the token the proxy
# minted. It stops with exit code 1, and prints no lines to paste, when a port is taken, a process
# exits during start-up, or they are not ready in time: pasted lines would otherwise reach
# whatever holds the port.
set -euo pipefail
sim_port=${1:-9000}
port=${2:-8080}
admin=${3:-9464}
idp_port=${4:-9443}
py=${PYTHON:-.venv/bin/python}
# How long start-up may take, in tenths of a second.
ready_within=200

# The demo app, registered with the demo's own identity provider only: made-up GUIDs, and a
# secret that opens nothing else.
tenant=00000000-0000-4000-8000-00000000de70
client=00000000-0000-4000-8000-0000000000a1
secret=demo-secret~opens.nothing_else
roles="Machine.Read.All, Machine.Isolate, Alert.Read.All, AdvancedQuery.Read.All"

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
      "DEMO_ADMIN_PORT, DEMO_IDP_PORT), or stop what holds it (ss -ltnp 'sport = :$value' shows it)."
  fi
}

check_port "$sim_port" "the simulated API" SIM_PORT
check_port "$port" "the proxy" DEMO_PORT
check_port "$admin" "the proxy's admin port" DEMO_ADMIN_PORT
check_port "$idp_port" "the identity provider" DEMO_IDP_PORT
ports=("$sim_port" "$port" "$admin" "$idp_port")
for ((i = 0; i < 4; i++)); do
  for ((j = i + 1; j < 4; j++)); do
    if ((ports[i] == ports[j])); then
      fail "SIM_PORT ($sim_port), DEMO_PORT ($port), DEMO_ADMIN_PORT ($admin) and" \
        "DEMO_IDP_PORT ($idp_port) must differ"
    fi
  done
done

# The apps file, the secret, the proxy's config and the identity provider's throwaway TLS pair
# live in one directory, removed on exit; readable by this user only (the secret is in two files).
umask 077
demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/defender-proxy-demo.XXXXXX")
sim=
proxy=
trap 'kill $proxy $sim 2>/dev/null || true; rm -rf "$demo_dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ca=$demo_dir/tls/ca.pem
secret_file=$demo_dir/client-secret
cat >"$demo_dir/apps.yaml" <<EOF
apps:
  - tenant: $tenant
    client_id: $client
    roles: [$roles]
    secrets:
      - value: $secret
EOF
printf '%s\n' "$secret" >"$secret_file"
cat >"$demo_dir/proxy.yaml" <<EOF
credentials:
  tenant_id: $tenant
  client_id: $client
  client_secret_file: '$secret_file'
  authority: https://127.0.0.1:$idp_port
  scope: https://api.securitycenter.microsoft.com/.default
tls:
  ca_bundle: '$ca'
EOF
# The standard AZURE_* variables would fill the proxy's credentials over the demo app's.
unset AZURE_TENANT_ID AZURE_CLIENT_ID AZURE_CLIENT_SECRET AZURE_CLIENT_CERTIFICATE_PATH \
  AZURE_FEDERATED_TOKEN_FILE AZURE_AUTHORITY_HOST

left=$ready_within
# Wait until "$@" succeeds, within what is left of the start-up time; fail if a process exits.
wait_until() {
  while ((left-- > 0)); do
    kill -0 "$sim" 2>/dev/null || fail "the simulator exited during start-up (its message is above)"
    if [[ -n $proxy ]] && ! kill -0 "$proxy" 2>/dev/null; then
      fail "the proxy exited during start-up (its log is above)"
    fi
    "$@" && return 0
    sleep 0.1
  done
  fail "the proxy and the simulator were not ready within $((ready_within / 10))s"
}

"$py" -m proxy simulate --port "$sim_port" --limit 100/1m --limit 1500/1h --check-tokens \
  --idp-port "$idp_port" --idp-apps "$demo_dir/apps.yaml" --idp-tls-dir "$demo_dir/tls" >/dev/null &
sim=$!
sim_ready() {
  curl -fs "http://127.0.0.1:$sim_port/_sim/stats" >/dev/null 2>&1 &&
    curl -fs --cacert "$ca" "https://127.0.0.1:$idp_port/_sim/identity" >/dev/null 2>&1
}
# The proxy starts once the identity provider answers: it reads the CA at start and mints its
# first token at once, which would otherwise fail and be counted.
wait_until sim_ready
DEFENDER_PROXY_UPSTREAM="http://127.0.0.1:$sim_port" \
DEFENDER_PROXY_LISTEN="127.0.0.1:$port" \
DEFENDER_PROXY_ADMIN_LISTEN="127.0.0.1:$admin" \
DEFENDER_PROXY_LOG_FORMAT="${DEFENDER_PROXY_LOG_FORMAT:-console}" \
  "$py" -m proxy run --config "$demo_dir/proxy.yaml" &
proxy=$!
wait_until curl -fs "http://127.0.0.1:$admin/readyz" -o /dev/null

cat <<EOF

The simulated Defender API listens on 127.0.0.1:$sim_port and checks every token as the API does;
its stand-in Entra ID on https://127.0.0.1:$idp_port (a throwaway CA: $ca);
the proxy on 127.0.0.1:$port, its metrics on 127.0.0.1:$admin. The proxy holds the demo app's
secret and mints the app's token itself, so the calls below carry none. Its config (in
$demo_dir, removed on exit):

$(sed 's/^/    /' "$demo_dir/proxy.yaml")

Paste these in another terminal:

  # an ordinary call without a token: sent with the token the proxy minted, answered 200
  curl -s http://127.0.0.1:$port/api/machines
  # a caller's own token is forwarded as it came: this one is no JWT, so the API answers 401
  curl -s -H 'Authorization: Bearer not-a-token' http://127.0.0.1:$port/api/machines
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
  # one token for every call: after these the identity provider has still had 1 token request
  for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:$port/api/machines; done; echo
  curl -s --cacert $ca https://127.0.0.1:$idp_port/_sim/identity | grep -oE '"token_requests": [0-9]+'
  # what was counted, the proxy's token requests too, and whether the upstream is reachable
  curl -s http://127.0.0.1:$admin/metrics | grep -E '^defender_(api_errors|proxy_requests|proxy_token_requests)_total'
  curl -s http://127.0.0.1:$admin/readyz
  # a refusal planned at the identity provider: the next token request gets AADSTS7000222 (the
  # secret has expired). The proxy asks again only when its token is due (in about 55 minutes)
  # or its secret file changes, as a rotation does: touch the file and within 2 s the proxy asks,
  # is refused and logs "token request failed" here (token_error AADSTS7000222,
  # token_still_usable true), then asks again a second later and is given a token. Calls go on
  # with the token in hand, answered 200; the metrics count the refusal under code="7000222".
  # (A proxy with no usable token, refused at start, answers such calls 503 naming the code.)
  curl -s --cacert $ca -d '{"count":1,"code":7000222}' https://127.0.0.1:$idp_port/_sim/identity/fail
  touch $secret_file; sleep 3
  curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:$port/api/machines
  curl -s http://127.0.0.1:$admin/metrics | grep '^defender_proxy_token_requests_total'

Ctrl-C stops them all.
EOF
wait "$proxy"
