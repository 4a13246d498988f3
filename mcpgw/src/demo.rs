//! The demo MCP servers the gateway fronts: a sandboxed filesystem and a GitHub look-alike.

pub mod filesystem;
pub mod github;

use rmcp::model::{CallToolResult, ContentBlock};

/// A failed tool call: an MCP result with `isError: true`, not a JSON-RPC error, so the
/// caller's model sees the message.
pub(crate) fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}
