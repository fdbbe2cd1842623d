#!/usr/bin/env bash
# API fuzzing: schemathesis (from PyPI, in .venv) against a real
# `hpfaas service`'s own /openapi.json. Starts the service on a free port with
# a temporary data directory, creates a token, runs every operation with
# generated (valid and invalid) requests, and fails on any 5xx, any crash of
# the service, or fewer than MIN_REQUESTS requests.
#
#   tests/fuzz/api_fuzz.sh            # MAX_EXAMPLES per operation (default 100)
#   MAX_EXAMPLES=200 SEED=1 tests/fuzz/api_fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${HPFAAS_BIN:-$PWD/target/debug/hpfaas}
ST=${SCHEMATHESIS:-$PWD/.venv/bin/schemathesis}
MAX_EXAMPLES=${MAX_EXAMPLES:-100}
MIN_REQUESTS=${MIN_REQUESTS:-2000}
[[ -x $BIN ]] || { echo "api fuzz: $BIN not built (cargo build --bin hpfaas)" >&2; exit 1; }
[[ -x $ST ]] || { echo "api fuzz: schemathesis missing (.venv/bin/pip install schemathesis)" >&2; exit 1; }

work=$(mktemp -d)
service_pid=
cleanup() {
    if [[ -n $service_pid ]]; then
        kill "$service_pid" 2>/dev/null || true
        wait "$service_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export HPFAAS_HOME=$work/home
# Small limits, so the limit paths (413, too many tasks) are exercised too.
"$BIN" service --listen "127.0.0.1:$port" --data-dir "$work/data" \
    --max-request-bytes 65536 --max-tasks-per-submit 50 >"$work/service.log" 2>&1 &
service_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/openapi.json" -o "$work/openapi.json" 2>/dev/null && break
    kill -0 "$service_pid" 2>/dev/null || { cat "$work/service.log" >&2; exit 1; }
    sleep 0.1
done
token=$("$BIN" token create --user fuzz --data-dir "$work/data" | tail -n1 | awk '{print $NF}')

# The live views never end by themselves: every example that reaches one
# (the activity view always; an endpoint's, once the stateful phase has made
# an endpoint) waits for the request timeout, which took the stage past its
# limit. Their inputs are parsed by code fuzzed through other routes: the
# endpoint id and access by `GET /v3/endpoints/{id}/events`'s, Last-Event-ID
# by the result stream's. Their refusals are in registry/tests/security.rs
# and registry/tests/live_views.rs.
echo "api fuzz: not fuzzed: GET /v3/activity/stream, GET /v3/endpoints/{id}/events/stream (endless live views; their inputs are fuzzed through /v3/endpoints/{id}/events and /v3/taskgroup/{id}/stream)"
status=0
"$ST" run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    ${SEED:+--seed "$SEED"} \
    --request-timeout 10 \
    --suppress-health-check all \
    --exclude-path /v3/activity/stream \
    --exclude-path '/v3/endpoints/{id}/events/stream' \
    --report har --report-har-path "$work/requests.har" \
    --no-color >"$work/schemathesis.log" 2>&1 || status=$?

# Any 5xx or dead service fails the run, whatever the other checks said.
alive=yes
kill -0 "$service_pid" 2>/dev/null || alive=no
read -r total server_errors < <(python3 - "$work/requests.har" <<'PY'
import json, sys
try:
    entries = json.load(open(sys.argv[1]))["log"]["entries"]
except (OSError, ValueError, KeyError):
    entries = []
print(len(entries), sum(1 for e in entries if e["response"]["status"] >= 500))
PY
)
tail -n 40 "$work/schemathesis.log"
echo "api fuzz: $total requests, $server_errors server errors (5xx), service alive: $alive, schemathesis exit $status"
if [[ $server_errors -ne 0 || $alive != yes ]]; then
    grep -n -B3 -A20 "Server error\|panicked" "$work/schemathesis.log" "$work/service.log" | head -100 >&2 || true
    exit 1
fi
if ((total < MIN_REQUESTS)); then
    echo "api fuzz: only $total requests (want $MIN_REQUESTS); raise MAX_EXAMPLES" >&2
    exit 1
fi
if grep -q "panicked" "$work/service.log"; then
    grep -n -A5 "panicked" "$work/service.log" >&2
    exit 1
fi
# schemathesis' other checks (status codes and schemas) must pass too.
exit "$status"
