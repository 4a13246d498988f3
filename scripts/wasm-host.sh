#!/usr/bin/env bash
# The filter's cost inside V8 with Envoy left out: runs scripts/wasm-host.mjs (a small
# proxy-wasm host on Node) over the built .wasm with the demo policy and a fresh ES256 key
# and token. `PROFILE=DIR` also writes a V8 CPU profile (.cpuprofile) into DIR.
# Usage: scripts/wasm-host.sh [FILTER.wasm] [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
wasm="${1:-target/wasm32-wasip1/release/mcp_gateway.wasm}"
requests="${2:-50000}"
mcpgw=target/release/mcpgw
[ -x "$mcpgw" ] || cargo build --quiet --release -p mcpgw
keys="$(mktemp -d)"
trap 'rm -rf "$keys"' EXIT
"$mcpgw" keygen --dir "$keys" >/dev/null
MCPGW_DEMO_JWK="$(cat "$keys/public-key.jwk")"
MCPGW_TOKEN="$("$mcpgw" token --sub alice --roles developer --key "$keys/signing-key.jwk")"
export MCPGW_DEMO_JWK MCPGW_TOKEN
profile=()
if [ -n "${PROFILE:-}" ]; then
  mkdir -p "$PROFILE"
  profile=(--cpu-prof --cpu-prof-interval 25 --cpu-prof-dir "$PROFILE")
fi
exec node "${profile[@]}" scripts/wasm-host.mjs "$wasm" "$requests"
