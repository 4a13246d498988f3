//! MCP gateway filter for Envoy.
//!
//! Everything that decides lives in plain Rust modules with no proxy-wasm dependency, so
//! it is unit-tested natively and reused by the `mcpgw` CLI. The `filter` module is the
//! thin proxy-wasm adapter and only exists when compiling for wasm.
//!
//! - `audit`: the audit record and the redaction of arguments copied into it
//! - `claims`: dotted claim paths, parsed at configure time and looked up in tokens
//! - `config`: the raw plugin configuration; its compile step hands each section to the
//!   module that uses it (`jwt`, `rbac`, `resource`, `discovery`, `audit`)
//! - `discovery`: RFC 9728 protected resource metadata
//! - `fast_rsa`: the RS* signature verifier
//! - `gateway`: the per-request pipeline the adapter drives
//! - `headers`: identity headers, headers with two readings, MCP header values
//! - `jsonrpc`: JSON-RPC / MCP message parsing
//! - `jwks`: the JWKS refresh schedule shared by workers
//! - `jwt`: token verification, keys and providers, the verified-token cache
//! - `listing`: filtering of MCP list replies
//! - `normalize`: canonical form of resources before policies match them
//! - `rbac`: role-based access control
//! - `reject`: the one place refusals become HTTP + JSON-RPC errors
//! - `resource`: resource-level policies
//! - `session`: who opened each MCP session and created each task
//! - `template`: `{placeholder}` templates of resource rules, split once
//! - `time`: millisecond conversions

pub mod audit;
pub mod claims;
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
pub mod template;
pub mod time;

#[cfg(target_arch = "wasm32")]
mod filter;
