//! An MCP server made for gateway integration tests.
//!
//! - `echo` proves a call went through;
//! - `whoami` shows which HTTP headers the upstream really received (identity headers set by
//!   the gateway, spoofed ones that must have been stripped, a bearer token that must not have
//!   been passed through);
//! - `stepped` proves SSE streams through the proxy one event at a time: it sends progress
//!   notification *i*, then waits for a permit on the shared gate, which the test adds only after
//!   it saw notification *i*. A proxy that buffers the stream deadlocks the test.
//! - `get_item`, `list_items`, `create_item`, `delete_item` give RBAC rules a mixed tool list to
//!   filter.
//!
//! Its submodules play the other parties of a gateway test: [`jwks`] an identity provider
//! publishing signing keys, [`keys`] those keys and the tokens (honest or forged) signed with
//! them, [`discovery`] an MCP client discovering protected resource metadata after a 401;
//! [`bench`] what the benchmarks share.

pub mod bench;
pub mod discovery;
pub mod jwks;
pub mod keys;

pub use discovery::{discover, discover_resource_metadata, Discovery};

use std::collections::BTreeMap;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, RequestMetaObject, ServerCapabilities,
    ServerConfig,
};
use rmcp::{tool, tool_handler, tool_router, Peer, RoleServer, ServerHandler};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::demo::tool_error;

/// Upper bound for `stepped`, so a typo cannot park a tool call for ever.
pub const MAX_STEPS: u32 = 1000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    pub text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SteppedArgs {
    /// Number of progress notifications to send (at most 1000).
    pub steps: u32,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ItemArgs {
    pub id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NewItemArgs {
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct TestServer {
    /// Shared by all sessions of one running server; starts with no permits.
    gate: Arc<Semaphore>,
    tool_router: ToolRouter<Self>,
}

impl TestServer {
    pub fn new(gate: Arc<Semaphore>) -> Self {
        Self { gate, tool_router: Self::tool_router() }
    }
}

#[tool_router]
impl TestServer {
    #[tool(description = "Return the text unchanged.")]
    fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }

    #[tool(
        description = "Return the HTTP request headers of this call as a JSON object (lowercase names; repeated headers joined with \", \")."
    )]
    fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> CallToolResult {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        match serde_json::to_string(&headers) {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(e) => tool_error(format!("cannot encode headers: {e}")),
        }
    }

    #[tool(
        description = "For i in 1..=steps: send progress i (needs a progressToken), then wait for one permit of the test's gate. Returns \"done\"."
    )]
    async fn stepped(
        &self,
        Parameters(args): Parameters<SteppedArgs>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> CallToolResult {
        if args.steps > MAX_STEPS {
            return tool_error(format!("steps must be at most {MAX_STEPS}"));
        }
        let Some(token) = meta.get_progress_token() else {
            return tool_error("stepped needs a progressToken in _meta");
        };
        for step in 1..=args.steps {
            let progress = ProgressNotificationParam::new(token.clone(), f64::from(step))
                .with_total(f64::from(args.steps))
                .with_message(format!("step {step} of {}", args.steps));
            if let Err(e) = peer.notify_progress(progress).await {
                return tool_error(format!("cannot send progress {step}: {e}"));
            }
            // Waiting after the last step too keeps the result behind the last notification.
            match self.gate.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return tool_error("gate closed"),
            }
        }
        CallToolResult::success(vec![ContentBlock::text("done")])
    }

    #[tool(description = "Get one item.")]
    fn get_item(&self, Parameters(args): Parameters<ItemArgs>) -> String {
        format!("item {}", args.id)
    }

    #[tool(description = "List all items.")]
    fn list_items(&self) -> String {
        "item 1\nitem 2".to_owned()
    }

    #[tool(description = "Create an item.")]
    fn create_item(&self, Parameters(args): Parameters<NewItemArgs>) -> String {
        format!("created item {}", args.name)
    }

    #[tool(description = "Delete an item.")]
    fn delete_item(&self, Parameters(args): Parameters<ItemArgs>) -> String {
        format!("deleted item {}", args.id)
    }

    /// Named so no operation glob matches: its operation comes from its annotations.
    #[tool(description = "Search items.", annotations(read_only_hint = true))]
    fn search_items(&self) -> String {
        "item 1".to_owned()
    }

    /// Destructive by annotation only.
    #[tool(description = "Remove every item.", annotations(read_only_hint = false, destructive_hint = true))]
    fn purge_items(&self) -> String {
        "purged".to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("test", env!("CARGO_PKG_VERSION")))
    }
}
