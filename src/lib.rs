//! MCP gateway filter for Envoy.
//!
//! How a request flows through the code, outside in:
//!
//! 1. **Hooks** (`adapter/wasm.rs`): Envoy calls the proxy-wasm hooks; each is one line
//!    handing a [`adapter::host::Host`] to the state machine. Only this file names
//!    proxy-wasm, and it is only compiled for wasm.
//! 2. **Host trait** ([`adapter::host`]): everything the adapter asks of Envoy (headers,
//!    bodies, replies, shared data, HTTP calls, clock, logs, counters). The wasm build
//!    implements it with host calls; native tests with a mock that records every call.
//! 3. **State machine** ([`adapter`]): one [`adapter::Root`] per worker (configuration,
//!    JWKS lifecycle, requests waiting for keys, tick) and one [`adapter::Filter`] per
//!    request. It moves data and keeps the worker's shared state; `cargo test` drives it.
//! 4. **[`gateway::Exchange`]**: one request's decisions, from headers to audit record,
//!    with no host at all.
//! 5. **Policy modules**: pure functions of configuration and request, below.
//!
//! - `adapter`: the proxy-wasm adapter (host trait, root and HTTP contexts, shared data)
//! - `audit`: the audit record and the redaction of arguments copied into it
//! - `claims`: dotted claim paths, parsed at configure time and looked up in tokens
//! - `config`: the raw plugin configuration; its compile step hands each section to the
//!   module that uses it (`jwt`, `rbac`, `resource`, `discovery`, `audit`)
//! - `delegation`: the caller of a federated server, vouched for to the sidecar and back
//! - `discovery`: RFC 9728 protected resource metadata
//! - `fast_p256`: the ES256 signature verifier
//! - `fast_rsa`: the RS* signature verifier
//! - `federation`: federated (virtual) servers' configuration
//! - `gateway`: the per-request pipeline the adapter drives
//! - `headers`: identity headers, headers with two readings, MCP header values
//! - `jsonrpc`: JSON-RPC / MCP message parsing
//! - `jwks`: the JWKS refresh schedule shared by workers
//! - `jwt`: token verification, keys and providers, the verified-token cache
//! - `listing`: filtering of MCP list replies
//! - `outcome`: what a reply said (result, JSON-RPC error, tool error), read as it streams
//! - `normalize`: canonical form of resources before policies match them
//! - `rbac`: role-based access control
//! - `region`: where a caller is, which cluster serves them, data residency
//! - `reject`: the one place refusals become HTTP + JSON-RPC errors
//! - `resource`: resource-level policies
//! - `session`: who opened each MCP session and created each task
//! - `stats`: names and labels of the filter's Envoy stats
//! - `template`: `{placeholder}` templates of resource rules, split once
//! - `time`: millisecond conversions

pub mod adapter;
pub mod audit;
pub mod claims;
pub mod config;
pub mod delegation;
pub mod discovery;
pub mod fast_p256;
pub mod fast_rsa;
pub mod federation;
pub mod gateway;
pub mod headers;
pub mod jsonrpc;
pub mod jwks;
pub mod jwt;
pub mod listing;
pub mod normalize;
pub mod outbox;
pub mod outcome;
pub mod rbac;
pub mod region;
pub mod reject;
pub mod resource;
pub mod session;
pub mod stats;
pub mod template;
pub mod time;
