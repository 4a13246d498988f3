//! Native side of the MCP gateway: development keys and tokens, the MCP servers that the
//! demo and the integration tests put behind Envoy, and `explain` (the filter's decision,
//! offline).

pub mod client;
pub mod demo;
pub mod explain;
pub mod request_log;
pub mod server;
pub mod testing;
pub mod token;

pub use request_log::{RecordedRequest, RequestLog};
pub use server::{spawn, RunningServer, ServerKind, MCP_PATH};
