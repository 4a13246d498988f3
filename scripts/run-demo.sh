#!/usr/bin/env bash
# Runs the demo: rmcp MCP servers (filesystem on 127.0.0.1:10001, github's eu-west and
# us-east replicas on 127.0.0.1:10002 and :10003), the audit sidecar on
# the Unix socket .dev/sidecar.sock (store in .dev/audit.db) and Envoy with the mcp-gateway filter on
# 127.0.0.1:10000. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
MCPGW=target/release/mcpgw
ENVOY=${ENVOY:-.envoy/bin/envoy}

"$MCPGW" keygen --dir .dev
MCPGW_DEMO_JWK="$(cat .dev/public-key.jwk)"
export MCPGW_DEMO_JWK
# The secret the filter adds to its calls to the sidecar, made once per checkout.
if [ ! -s .dev/sidecar-secret ]; then
  (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > .dev/sidecar-secret)
fi
MCPGW_SIDECAR_SECRET="$(cat .dev/sidecar-secret)"
export MCPGW_SIDECAR_SECRET
# The key every gateway replica shares to bind session ids to their caller.
if [ ! -s .dev/session-key ]; then
  (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > .dev/session-key)
fi
MCPGW_SESSION_KEY="$(cat .dev/session-key)"
export MCPGW_SESSION_KEY

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$MCPGW" demo --filesystem 127.0.0.1:10001 --github 127.0.0.1:10002 --github 127.0.0.1:10003 --sandbox .dev/sandbox &
pids+=($!)
"$MCPGW" sidecar --listen unix:.dev/sidecar.sock --db .dev/audit.db --checkpoint-key .dev/audit-checkpoint.key \
  --heartbeat-secs 15 --gateway-config envoy/demo.yaml --gateway-url http://127.0.0.1:10000 2> .dev/sidecar.log &
pids+=($!)
"$ENVOY" -c envoy/demo.yaml --use-dynamic-base-id --log-level info 2> .dev/envoy.log &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS http://127.0.0.1:9901/ready >/dev/null || { echo "envoy did not become ready; see .dev/envoy.log" >&2; exit 1; }
for _ in $(seq 1 100); do
  grep -q "listening on" .dev/sidecar.log 2>/dev/null && break
  sleep 0.1
done
grep -q "listening on" .dev/sidecar.log || { echo "the sidecar did not start; see .dev/sidecar.log" >&2; exit 1; }
# Envoy sends traffic by its health checks: wait for the MCP servers' first ones (up to 15 s).
for _ in $(seq 1 150); do
  curl -fsS http://127.0.0.1:9901/clusters 2>/dev/null | grep -q "health_flags::/failed_active_hc" || break
  sleep 0.1
done

cat <<'MSG'

MCP gateway ready on http://127.0.0.1:10000
  http://127.0.0.1:10000/mcp/filesystem   read_file, list_directory, write_file
  http://127.0.0.1:10000/mcp/github       get_repository, list_issues, create_issue
                                           (replicas in eu-west and us-east)
  http://127.0.0.1:10000/mcp/all          both as one server (github__get_repository, filesystem__read_file...)
  (and the same at /proxy/filesystem/mcp and /proxy/github/mcp)

Call a tool through the gateway with a real MCP client (paste into another terminal):

  TOKEN=$(target/release/mcpgw token --sub alice --roles developer)
  target/release/mcpgw call --token "$TOKEN" http://127.0.0.1:10000/mcp/github get_repository '{"repository":"acme/website"}'

Try what the gateway refuses:
  - --roles readonly with create_issue (403: readonly may only read)
  - alice reading /user/bob/notes.md or /public/../private/salaries.csv on /mcp/filesystem (403)
  - no token at all (401)
and ask why: target/release/mcpgw explain --help

Regions (the audit record names region, region_source, residency and served_region):
  - a token with --claim region=us-east is served by github's us-east replica
  - a front proxy at 127.0.0.2 may say where the caller is:
    curl --interface 127.0.0.2 -H 'x-client-region: us-east' ...  (from 127.0.0.1: ignored)
  - --claim data_residency=eu pins a caller to eu-west: never served elsewhere

The audit trail (every decision, in .dev/audit.db, hash-chained and signed):
  ADMIN=$(target/release/mcpgw token --sub root --roles admin)
  curl -N -H "Authorization: Bearer $ADMIN" http://127.0.0.1:10000/events          # live, as SSE
  curl -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:10000/audit?user=alice&limit=5"
  target/release/mcpgw audit verify      # checks the chain and the signed checkpoints
A developer's token on /events sees only that developer's own records.
Envoy's stats: curl -s http://127.0.0.1:9901/stats/prometheus | grep mcp_gateway
Audit lines are also in .dev/envoy.log (grep mcp_audit). Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
