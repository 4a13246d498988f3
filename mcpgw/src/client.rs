//! A real MCP client (rmcp, Streamable HTTP): `mcpgw call` and the integration tests use it.
//!
//! `connect` performs the MCP handshake, sending the bearer token on every HTTP request. Each
//! call gets a fresh JSON-RPC id and progress token from rmcp, so one client can run calls
//! concurrently. rmcp's client-side response cache is turned off: a test must see what the
//! gateway answers now, not a list remembered from before a denial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context as _};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam, ProgressToken, Request,
    ServerResult, Tool,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientCacheConfig, ClientHandler, Peer, RoleClient, ServiceExt as _};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

/// Notifications kept for progress tokens nobody subscribed to (yet); see [`ProgressRouter`].
const MAX_UNCLAIMED_PROGRESS: usize = 1024;

/// A connected MCP session.
pub struct McpClient {
    service: RunningService<RoleClient, ProgressRouter>,
}

/// Connects to a Streamable HTTP endpoint (e.g. `http://127.0.0.1:10000/mcp`) and initializes
/// the session. `bearer` is sent as `Authorization: Bearer <token>` on every request.
pub async fn connect(url: &str, bearer: Option<&str>) -> anyhow::Result<McpClient> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    if let Some(token) = bearer {
        // rmcp adds the `Bearer ` prefix itself.
        config = config.auth_header(token.to_owned());
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    let service =
        ProgressRouter::default().serve(transport).await.with_context(|| format!("MCP handshake with {url} failed"))?;
    service.peer().set_response_cache_config(ClientCacheConfig::disabled()).await;
    Ok(McpClient { service })
}

impl McpClient {
    /// All tools the server lists (following pagination).
    pub async fn list_tools(&self) -> anyhow::Result<Vec<Tool>> {
        Ok(self.service.list_all_tools().await?)
    }

    /// Names of [`McpClient::list_tools`], sorted.
    pub async fn tool_names(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = self.list_tools().await?.into_iter().map(|tool| tool.name.into_owned()).collect();
        names.sort();
        Ok(names)
    }

    /// Calls a tool. `args` must be a JSON object, or null for no arguments. A tool that
    /// failed is `Ok` with `is_error == Some(true)`; a JSON-RPC error (such as a gateway
    /// denial) or a transport failure is `Err`.
    pub async fn call_tool(&self, name: &str, args: Value) -> anyhow::Result<CallToolResult> {
        Ok(self.service.call_tool(tool_call(name, args)?).await?)
    }

    /// Like [`McpClient::call_tool`], and forwards each progress notification of this call to
    /// `tx` as soon as it arrives. rmcp hands each notification to its own task, so one the
    /// server sent just before its reply may be forwarded after this returns: wait on the
    /// receiver for the notifications expected. Dropping the receiver ends the forwarding.
    pub async fn call_tool_with_progress(
        &self,
        name: &str,
        args: Value,
        tx: UnboundedSender<ProgressNotificationParam>,
    ) -> anyhow::Result<CallToolResult> {
        let request = ClientRequest::CallToolRequest(Request::new(tool_call(name, args)?));
        // rmcp puts a fresh progressToken into the request's _meta.
        let handle = self.service.send_cancellable_request(request, PeerRequestOptions::no_options()).await?;
        let token = handle.progress_token.clone();
        // No unsubscribe after the reply: that would drop notifications still in flight.
        // The route goes when the caller drops the receiver (the token is never reused).
        self.service.service().subscribe(token, tx);
        match handle.await_response().await? {
            ServerResult::CallToolResult(result) => Ok(result),
            other => bail!("unexpected reply to tools/call: {other:?}"),
        }
    }

    /// The underlying rmcp peer, for requests this wrapper does not cover.
    pub fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }

    /// Ends the session (rmcp sends `DELETE` with the session id).
    pub async fn close(self) -> anyhow::Result<()> {
        self.service.cancel().await?;
        Ok(())
    }
}

/// The concatenated text content of a tool result.
pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|block| block.as_text())
        .map(|text| text.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn tool_call(name: &str, args: Value) -> anyhow::Result<CallToolRequestParams> {
    let params = CallToolRequestParams::new(name.to_owned());
    match args {
        Value::Null => Ok(params),
        Value::Object(map) => Ok(params.with_arguments(map)),
        other => bail!("tool arguments must be a JSON object, got {other}"),
    }
}

/// Client handler that routes progress notifications to per-call channels.
///
/// The request is on the wire before its handle (and so its progress token) is known here, and
/// rmcp handles each notification in its own task, so a notification can arrive before the
/// subscription: such notifications wait in `unclaimed` until their subscriber shows up. For
/// the same reason one can arrive after the reply, so a route lives until its receiver is
/// dropped, not until the call returns.
#[derive(Debug, Default)]
struct ProgressRouter {
    routes: Arc<Mutex<Routes>>,
}

#[derive(Debug, Default)]
struct Routes {
    subscribers: HashMap<ProgressToken, UnboundedSender<ProgressNotificationParam>>,
    unclaimed: Vec<ProgressNotificationParam>,
}

impl ProgressRouter {
    fn subscribe(&self, token: ProgressToken, tx: UnboundedSender<ProgressNotificationParam>) {
        let mut routes = self.lock();
        routes.subscribers.retain(|_, tx| !tx.is_closed());
        let (early, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut routes.unclaimed).into_iter().partition(|p| p.progress_token == token);
        routes.unclaimed = rest;
        for progress in early {
            let _ = tx.send(progress);
        }
        routes.subscribers.insert(token, tx);
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientHandler for ProgressRouter {
    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        let mut routes = self.lock();
        if let Some(tx) = routes.subscribers.get(&params.progress_token) {
            if let Err(unsent) = tx.send(params) {
                // The caller stopped listening; nobody else will ask for this token.
                routes.subscribers.remove(&unsent.0.progress_token);
            }
            return;
        }
        if routes.unclaimed.len() >= MAX_UNCLAIMED_PROGRESS {
            routes.unclaimed.remove(0);
        }
        routes.unclaimed.push(params);
    }
}
