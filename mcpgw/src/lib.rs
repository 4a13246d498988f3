//! Native side of the MCP gateway: development keys and tokens, the demo MCP servers,
//! the `call` client and `explain` (the filter's decision, offline). With the `testing`
//! feature, also what the integration tests need and the product must not ship: the test
//! MCP server, the fake identity provider, the token forger and the request log.

pub mod audit_store;
pub mod client;
pub mod demo;
pub mod explain;
#[cfg(feature = "testing")]
pub mod request_log;
pub mod server;
pub mod sidecar;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;

#[cfg(feature = "testing")]
pub use request_log::{RecordedRequest, RequestLog};
pub use server::{spawn, RunningServer, ServerKind, MCP_PATH};
