//! MCP gateway filter for Envoy.
//!
//! Everything that decides lives in plain Rust modules with no proxy-wasm dependency
//! (`config`, `jsonrpc`, `jwt`, `rbac`, `audit`, `gateway`), so it is unit-tested
//! natively and reused by the `mcpgw` CLI. The `filter` module is the thin proxy-wasm
//! adapter and only exists when compiling for wasm.

pub mod adapter;
pub mod audit;
pub mod config;
pub mod discovery;
pub mod fast_rsa;
pub mod gateway;
pub mod headers;
pub mod jsonrpc;
pub mod jwks;
pub mod jwt;
pub mod listing;
pub mod normalize;
pub mod rbac;
pub mod reject;
pub mod resource;
pub mod session;
