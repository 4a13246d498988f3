#!/usr/bin/env bash
# JWT verification cost per algorithm, inside wasm on V8 (Node's WASI; Envoy runs filters
# on V8 too) and natively for comparison. Builds and runs jwt-bench/ in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
# Its own target directory: jwt-bench is another workspace with its own Cargo.lock and
# profile, and building it into target/ replaced the filter's .wasm (and the gateway's
# rlibs) with its own builds of the same crates.
export CARGO_TARGET_DIR="${JWT_BENCH_TARGET_DIR:-$PWD/target/jwt-bench}"
manifest=jwt-bench/Cargo.toml

cargo build --quiet --release --manifest-path "$manifest"
cargo build --quiet --release --manifest-path "$manifest" --target wasm32-wasip1
wasm="$CARGO_TARGET_DIR/wasm32-wasip1/release/jwt-bench.wasm"

echo "== native =="
"$CARGO_TARGET_DIR/release/jwt-bench"
echo
echo "== wasm32-wasip1 on node $(node --version) (V8) =="
node --no-warnings --input-type=module - "$wasm" <<'JS'
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
const path = process.argv[2];
const wasi = new WASI({ version: 'preview1', args: ['jwt-bench'], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(path));
// The gateway library links its proxy-wasm filter, which imports Envoy's host functions
// and exports `_initialize`; the benchmark never calls into it, so stub the imports and
// hand WASI only what a command needs.
const env = Object.fromEntries(WebAssembly.Module.imports(module)
  .filter((i) => i.module === 'env')
  .map((i) => [i.name, () => { throw new Error(`${i.name} is not available outside Envoy`); }]));
const instance = await WebAssembly.instantiate(module, { ...wasi.getImportObject(), env });
const { memory, _start } = instance.exports;
process.exitCode = wasi.start({ exports: { memory, _start } });
JS
