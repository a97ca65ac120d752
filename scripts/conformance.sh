#!/usr/bin/env bash
# Run the official MCP conformance suite against the fixture upstream, directly and through the gateway,
# and print the two verdicts side by side. Needs npm (the suite and Node 22 come from the npm registry,
# cached in $WORK), PostgreSQL and Redis. The test command runs the same comparison in
# tests/gateway/test_conformance.py; see docs/conformance.md.
#
#   scripts/conformance.sh                     # the fixture: scripts/conformance_fixture.py
#   FIXTURE_CMD="<serves 127.0.0.1:\$FIXTURE_PORT/mcp>" scripts/conformance.sh
#   PY=/path/to/venv/bin/python scripts/conformance.sh   # another environment (a worktree: PYTHONPATH=src)
# Exit status: 1 if a scenario that passes directly does not pass through the gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-.tenantry/conformance}
FIXTURE_PORT=${FIXTURE_PORT:-8300}
GATEWAY_PORT=${GATEWAY_PORT:-8301}
SHIM_PORT=${SHIM_PORT:-8302}
PY=${PY:-.venv/bin/python}
TENANTRY=${TENANTRY:-$(dirname "$PY")/tenantry}
FIXTURE_CMD=${FIXTURE_CMD:-$PY scripts/conformance_fixture.py $FIXTURE_PORT}

"$PY" scripts/conformance_suite.py install "$WORK" >/dev/null
rm -rf "$WORK/direct" "$WORK/gateway"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_for() { for _ in $(seq 100); do curl -s -m 2 -o /dev/null -X POST "$1" && return 0; sleep 0.1; done; echo "no answer at $1" >&2; exit 1; }

bash -c "$FIXTURE_CMD" & pids+=($!)
wait_for "http://127.0.0.1:$FIXTURE_PORT/mcp"

echo "== conformance: the fixture directly"
start=${EPOCHREALTIME/./}
"$PY" scripts/conformance_suite.py run "$WORK" "http://127.0.0.1:$FIXTURE_PORT/mcp" "$WORK/direct"
direct_us=$(( ${EPOCHREALTIME/./} - start ))

# Stateful sessions with SSE answers: the agent-side back-channel that relaying sampling, elicitation,
# progress, log messages and resource updates needs (stateless JSON, the default, has none). The
# allowed hosts and origins turn on the DNS-rebinding check the suite probes (loopback, any port).
export TENANTRY_UPSTREAM_ALLOW_LOOPBACK=true TENANTRY_PORT=$GATEWAY_PORT
export TENANTRY_MCP_STATEFUL=${TENANTRY_MCP_STATEFUL:-true} TENANTRY_MCP_JSON_RESPONSE=${TENANTRY_MCP_JSON_RESPONSE:-false}
export TENANTRY_MCP_ALLOWED_HOSTS=${TENANTRY_MCP_ALLOWED_HOSTS:-'["127.0.0.1:*","localhost:*"]'}
export TENANTRY_MCP_ALLOWED_ORIGINS=${TENANTRY_MCP_ALLOWED_ORIGINS:-'["http://127.0.0.1:*","http://localhost:*"]'}
"$TENANTRY" migrate >/dev/null
made=$("$TENANTRY" tenant create --name conformance --with-key --json)
TENANT_ID=$(echo "$made" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["id"])')
API_KEY=$(echo "$made" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["key"]["secret"])')
"$TENANTRY" upstream add --tenant "$TENANT_ID" --name fx --url "http://127.0.0.1:$FIXTURE_PORT/mcp" >/dev/null
"$TENANTRY" serve --port "$GATEWAY_PORT" --log-level warning & pids+=($!)
wait_for "http://127.0.0.1:$GATEWAY_PORT/health"
GATEWAY="http://127.0.0.1:$GATEWAY_PORT" TENANT_ID=$TENANT_ID API_KEY=$API_KEY UPSTREAM=fx \
  "$PY" scripts/conformance_shim.py "$SHIM_PORT" & pids+=($!)
wait_for "http://127.0.0.1:$SHIM_PORT/mcp"

echo "== conformance: the same fixture through the gateway (via the header-injecting shim)"
start=${EPOCHREALTIME/./}
"$PY" scripts/conformance_suite.py run "$WORK" "http://127.0.0.1:$SHIM_PORT/mcp" "$WORK/gateway"
gateway_us=$(( ${EPOCHREALTIME/./} - start ))

echo
status=0
"$PY" scripts/conformance_suite.py compare "$WORK/direct" "$WORK/gateway" >"$WORK/table.txt" || status=$?
cat "$WORK/table.txt"
echo "suite run: $((direct_us / 1000)) ms directly, $((gateway_us / 1000)) ms through the gateway;" \
  "results in $WORK/direct and $WORK/gateway"
exit "$status"
