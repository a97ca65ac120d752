#!/usr/bin/env bash
# Several gateway replicas on one PostgreSQL and one Redis, behind the round-robin balancer Tenantry
# ships (`tenantry balance`), to try what README "Replicas" describes on one machine:
#
#   ./scripts/replicas.sh                  # 3 replicas on 8001-8003, the balancer on 127.0.0.1:8000
#   REPLICAS=2 ./scripts/replicas.sh       # any number
#   TENANTRY_MCP_STATEFUL=true ./scripts/replicas.sh   # stateful sessions, served through any replica
#
# The first replica is `tenantry dev` (it starts PostgreSQL/Redis if nothing answers, migrates and prints
# the demo tenant and key); the others are `tenantry serve`. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
count=${REPLICAS:-3}
first=${FIRST_PORT:-8001}
listen=${LISTEN:-127.0.0.1:8000}
pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait || true; }
trap stop EXIT INT TERM

wait_for() {  # until /health answers on port $1, ok or degraded (at most 60 s)
  .venv/bin/python - "$1" <<'PY'
import sys, time, urllib.error, urllib.request
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1)
        sys.exit(0)
    except urllib.error.HTTPError:  # 503: degraded, but up
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"the replica on port {sys.argv[1]} did not start")
PY
}

# The first replica migrates and makes the demo tenant; the others start together once it is up.
TENANTRY_PORT=$first .venv/bin/tenantry dev &
pids+=($!)
wait_for "$first"
backends=(--backend "127.0.0.1:$first")
for port in $(seq $((first + 1)) $((first + count - 1))); do
  # TENANTRY_PORT (not --port): it is also the address the replica publishes for its stateful sessions.
  TENANTRY_PORT=$port .venv/bin/tenantry serve &
  pids+=($!)
  backends+=(--backend "127.0.0.1:$port")
done
for port in $(seq $((first + 1)) $((first + count - 1))); do wait_for "$port"; done
echo "replicas on ports $first-$((first + count - 1)); call them through http://$listen/mcp"
.venv/bin/tenantry balance --listen "$listen" "${backends[@]}" &
pids+=($!)
wait "${pids[@]}"
