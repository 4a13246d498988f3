//! Federated (virtual) servers: one MCP endpoint over several member servers.
//!
//! Each client session of a virtual server is an rmcp server session here, holding one
//! client session per member, opened lazily through the gateway with the caller's
//! delegation (`x-mcp-delegation`, which the filter sets on every request it lets through
//! to the virtual server). So each call dispatched to a member is authenticated,
//! authorized, filtered and audited by the filter like the caller's own call to it, and
//! JSON-RPC ids never collide: each hop is a session of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::{HeaderName, HeaderValue};
use mcp_gateway::config::{Config as GatewayConfig, ServerKind};
use mcp_gateway::federation::{Conflicts, Federation, PartialFailure};
use mcp_gateway::headers::DELEGATION;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorCode, ErrorData, Implementation, ListToolsResult, MetaObject,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, RoleServer, ServerHandler, ServiceExt as _};
use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// A virtual server, as the gateway's configuration describes it.
#[derive(Debug, Clone)]
pub struct Virtual {
    pub name: String,
    /// Its path at the gateway (and here: the route keeps it).
    pub path: String,
    pub federation: Federation,
    /// Each member's MCP endpoint through the gateway.
    pub members: Vec<(String, String)>,
}

/// The virtual servers of a gateway configuration, whose members are reached through the
/// gateway at `gateway_url` (`http://127.0.0.1:10000`).
pub fn virtual_servers(config: &GatewayConfig, gateway_url: &str) -> Vec<Virtual> {
    let base = gateway_url.trim_end_matches('/');
    config
        .servers
        .iter()
        .filter(|s| s.kind == ServerKind::Federation)
        .filter_map(|s| {
            let federation = s.federation.clone()?;
            let members = federation
                .members
                .iter()
                .filter_map(|m| config.servers.iter().find(|o| &o.name == m))
                .map(|m| (m.name.clone(), format!("{base}{}", m.path_prefix)))
                .collect();
            Some(Virtual { name: s.name.clone(), path: s.path_prefix.clone(), federation, members })
        })
        .collect()
}

/// The routes serving `servers` (each at its path), ending their sessions on `cancel`.
pub fn router(servers: Vec<Virtual>, cancel: &CancellationToken) -> Router {
    servers.into_iter().fold(Router::new(), |app, v| {
        let path = v.path.clone();
        let shared = Arc::new(v);
        let config = StreamableHttpServerConfig::default()
            // The filter checked the Host; the sidecar is reached only through it.
            .disable_allowed_hosts()
            .with_cancellation_token(cancel.child_token());
        let service = StreamableHttpService::new(
            move || Ok(Federated::new(Arc::clone(&shared))),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        app.route_service(&path, service)
    })
}

/// The member side of a federated session: messages from a member to its client.
#[derive(Clone, Default)]
struct MemberHandler;

impl ClientHandler for MemberHandler {}

type MemberClient = RunningService<RoleClient, MemberHandler>;

/// One client session of a virtual server.
#[derive(Clone)]
struct Federated {
    shared: Arc<Virtual>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// The newest delegation the filter sent.
    delegation: Option<String>,
    /// Member sessions, opened on first use, with the delegation each was opened with.
    members: HashMap<String, (Arc<MemberClient>, String)>,
    /// The names the last merged tool list offered, and who answers each.
    tools: HashMap<String, Owner>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorData {
    ErrorData::new(code, message.into(), None)
}

impl Federated {
    fn new(shared: Arc<Virtual>) -> Federated {
        Federated { shared, state: Arc::new(Mutex::new(State::default())) }
    }

    /// Keeps the delegation of the request being served (the filter sends a fresh one on
    /// each request).
    async fn take_delegation(&self, context: &RequestContext<RoleServer>) {
        let given = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.headers.get(DELEGATION))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(d) = given {
            self.state.lock().await.delegation = Some(d);
        }
    }

    /// The session with `member`, opened now if it is not open yet. A session opened with
    /// an older delegation (the caller's token was renewed) is replaced: every call carries
    /// the caller's current one.
    async fn member(&self, member: &str) -> Result<Arc<MemberClient>, ErrorData> {
        let (url, delegation) = {
            let state = self.state.lock().await;
            match state.members.get(member) {
                Some((client, opened_with)) if Some(opened_with) == state.delegation.as_ref() => {
                    return Ok(Arc::clone(client))
                }
                _ => {}
            }
            let url = self.shared.members.iter().find(|(m, _)| m == member).map(|(_, u)| u.clone());
            (url, state.delegation.clone())
        };
        let url = url.ok_or_else(|| error(ErrorCode::INVALID_PARAMS, format!("no member {member:?}")))?;
        let delegation =
            delegation.ok_or_else(|| error(ErrorCode::INTERNAL_ERROR, "no delegation from the gateway"))?;
        let value =
            HeaderValue::from_str(&delegation).map_err(|_| error(ErrorCode::INTERNAL_ERROR, "bad delegation"))?;
        let mut config = StreamableHttpClientTransportConfig::with_uri(url);
        config.custom_headers.insert(HeaderName::from_static(DELEGATION), value);
        let timeout = Duration::from_millis(self.shared.federation.member_timeout_ms);
        let opened =
            tokio::time::timeout(timeout, MemberHandler.serve(StreamableHttpClientTransport::from_config(config)))
                .await
                .map_err(|_| error(ErrorCode::INTERNAL_ERROR, format!("member {member} did not answer in time")))?
                .map_err(|e| {
                    // The gateway's refusal (its JSON-RPC error), or no answer at all.
                    let text = e.to_string();
                    quoted_rpc_error(&text).unwrap_or_else(|| {
                        error(ErrorCode::INTERNAL_ERROR, format!("member {member} could not be reached: {text}"))
                    })
                })?;
        // No client-side cache of lists: the member's answer, as the filter filtered it
        // for this caller now, is what the virtual server offers.
        opened.peer().set_response_cache_config(rmcp::ClientCacheConfig::disabled()).await;
        let client = Arc::new(opened);
        // A replaced session ends when its last handle goes.
        self.state.lock().await.members.insert(member.to_owned(), (Arc::clone(&client), delegation));
        Ok(client)
    }

    /// Every member's tools, in `members` order; members that failed are named apart.
    async fn member_tools(&self) -> (Vec<(String, Vec<Tool>)>, Vec<String>) {
        let timeout = Duration::from_millis(self.shared.federation.member_timeout_ms);
        let lists = self.shared.members.iter().map(|(member, _)| async move {
            let listed = async {
                let client = self.member(member).await?;
                client.list_all_tools().await.map_err(|e| error(ErrorCode::INTERNAL_ERROR, e.to_string()))
            };
            let result = match tokio::time::timeout(timeout, listed).await {
                Ok(Ok(tools)) => Some(tools),
                Ok(Err(e)) => {
                    eprintln!(
                        "mcpgw sidecar: {}: member {member} did not list its tools: {}",
                        self.shared.name, e.message
                    );
                    None
                }
                Err(_) => {
                    eprintln!("mcpgw sidecar: {}: member {member} did not list its tools in time", self.shared.name);
                    None
                }
            };
            (member.clone(), result)
        });
        let mut answered = Vec::new();
        let mut missing = Vec::new();
        for (member, tools) in futures::future::join_all(lists).await {
            match tools {
                Some(tools) => answered.push((member, tools)),
                None => missing.push(member),
            }
        }
        (answered, missing)
    }
}

/// Who answers a name the virtual server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This member, under its own name.
    Member(String, String),
    /// The member the routing rules pick for each call (the name is the members' own).
    Routed,
}

/// The merged list: names as the virtual server offers them, per the conflict policy,
/// plus each routed name once, unprefixed (described as its first member describes it).
pub fn merge(lists: &[(String, Vec<Tool>)], federation: &Federation) -> (Vec<Tool>, HashMap<String, Owner>) {
    let separator = federation.separator.as_str();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, tools) in lists {
        for tool in tools {
            *count.entry(tool.name.as_ref()).or_default() += 1;
        }
    }
    let mut merged: Vec<Tool> = Vec::new();
    let mut owners = HashMap::new();
    // Where each routed name sits in `merged`.
    let mut routed_at: HashMap<String, usize> = HashMap::new();
    for (member, tools) in lists {
        for tool in tools {
            let own = tool.name.to_string();
            if federation.is_routed(&own) {
                match routed_at.get(&own).and_then(|&i| merged.get_mut(i)) {
                    // Offered again: its arguments join the routed tool's, none required
                    // (which ones a call needs depends on the member it is routed to).
                    Some(routed) => widen_schema(routed, tool),
                    None => {
                        let mut routed = tool.clone();
                        routed.name = own.clone().into();
                        widen_schema(&mut routed, tool);
                        routed_at.insert(own.clone(), merged.len());
                        merged.push(routed);
                        owners.insert(own.clone(), Owner::Routed);
                    }
                }
            }
            let offered = match federation.conflicts {
                Conflicts::AlwaysPrefix => format!("{member}{separator}{own}"),
                Conflicts::PrefixOnConflict if count.get(own.as_str()).copied().unwrap_or(0) > 1 => {
                    format!("{member}{separator}{own}")
                }
                Conflicts::PrefixOnConflict | Conflicts::FirstWins => own.clone(),
            };
            if owners.contains_key(&offered) {
                // An earlier member has it (first_wins), or it is routed.
                continue;
            }
            let mut tool = tool.clone();
            tool.name = offered.clone().into();
            merged.push(tool);
            owners.insert(offered, Owner::Member(member.clone(), own));
        }
    }
    (merged, owners)
}

/// Adds `other`'s argument properties to `routed`'s input schema and drops `required`.
fn widen_schema(routed: &mut Tool, other: &Tool) {
    let mut schema = (*routed.input_schema).clone();
    let extra = other.input_schema.get("properties").and_then(serde_json::Value::as_object).cloned();
    if let Some(serde_json::Value::Object(properties)) = schema.get_mut("properties") {
        for (k, v) in extra.unwrap_or_default() {
            properties.entry(k).or_insert(v);
        }
    }
    schema.remove("required");
    routed.input_schema = Arc::new(schema);
}

/// A member's error, passed on as it came. The gateway refuses with an HTTP status and a
/// JSON-RPC error body, which rmcp's client reports as a transport error quoting the
/// body: its JSON-RPC error is what the client gets, code and message.
fn passed_on(e: ServiceError) -> ErrorData {
    match e {
        ServiceError::McpError(data) => data,
        other => {
            let text = other.to_string();
            quoted_rpc_error(&text).unwrap_or_else(|| error(ErrorCode::INTERNAL_ERROR, text))
        }
    }
}

/// The JSON-RPC error in the first JSON object quoted in `text`.
fn quoted_rpc_error(text: &str) -> Option<ErrorData> {
    let start = text.find('{')?;
    let body: serde_json::Value = serde_json::Deserializer::from_str(text.get(start..)?).into_iter().next()?.ok()?;
    let code = body.pointer("/error/code")?.as_i64().and_then(|c| i32::try_from(c).ok())?;
    let message = body.pointer("/error/message")?.as_str()?.to_owned();
    Some(ErrorData::new(ErrorCode(code), message, None))
}

impl Federated {
    /// `mcpgw/query`: one JSON-RPC request to several members at once, each through the
    /// gateway as the caller (so each is decided and audited there), in parallel, each
    /// within the timeout. Errors are values: a member that fails is one of the
    /// `individual_results`, and `confidence_score` is the share that answered.
    async fn query(&self, params: Option<serde_json::Value>) -> Result<serde_json::Value, ErrorData> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            request: Request,
            servers: Option<Vec<String>>,
            timeout_ms: Option<u64>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Request {
            method: String,
            #[serde(default)]
            params: Option<serde_json::Value>,
        }
        let bad = |m: String| error(ErrorCode::INVALID_PARAMS, m);
        let p: Params = serde_json::from_value(params.unwrap_or(serde_json::Value::Null))
            .map_err(|e| bad(format!("{QUERY_METHOD} params: {e}")))?;
        let members: Vec<String> = self.shared.members.iter().map(|(m, _)| m.clone()).collect();
        let servers = p.servers.unwrap_or_else(|| members.clone());
        if servers.is_empty() {
            return Err(bad("servers: name at least one member".into()));
        }
        if let Some(unknown) = servers.iter().find(|s| !members.contains(s)) {
            return Err(bad(format!("servers: {unknown:?} is not a member of {}", self.shared.name)));
        }
        let method = p.request.method;
        if method == "initialize" || method.starts_with("notifications/") || method == QUERY_METHOD {
            return Err(bad(format!("request.method: {method} cannot be queried")));
        }
        let limit = self.shared.federation.member_timeout_ms;
        let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(limit).clamp(1, limit));
        let asked = servers.iter().map(|server| {
            let request = rmcp::model::ClientRequest::CustomRequest(rmcp::model::CustomRequest::new(
                method.clone(),
                p.request.params.clone(),
            ));
            async move {
                let answer = async {
                    let client = self.member(server).await?;
                    client.send_request(request).await.map_err(passed_on)
                };
                let outcome = match tokio::time::timeout(timeout, answer).await {
                    Ok(Ok(result)) => Ok(serde_json::to_value(result).unwrap_or_default()),
                    Ok(Err(e)) => Err(json!({"code": e.code.0, "message": e.message})),
                    Err(_) => Err(json!({"code": ErrorCode::INTERNAL_ERROR.0,
                        "message": format!("no answer within {} ms", timeout.as_millis())})),
                };
                (server.clone(), outcome)
            }
        });
        let outcomes = futures::future::join_all(asked).await;
        let answered: Vec<(String, serde_json::Value)> =
            outcomes.iter().filter_map(|(s, o)| o.as_ref().ok().map(|v| (s.clone(), v.clone()))).collect();
        let individual: serde_json::Map<String, serde_json::Value> = outcomes
            .into_iter()
            .map(|(s, o)| {
                let value = match o {
                    Ok(result) => json!({"ok": true, "result": result}),
                    Err(error) => json!({"ok": false, "error": error}),
                };
                (s, value)
            })
            .collect();
        let (aggregated, conflicts) = merge_results(&answered);
        // Only to three places: a share of the servers, not a measurement.
        let confidence = (answered.len() as f64 / servers.len() as f64 * 1000.0).round() / 1000.0;
        Ok(json!({
            "aggregated_result": aggregated,
            "conflicts": conflicts,
            "individual_results": individual,
            "confidence_score": confidence,
        }))
    }
}

impl ServerHandler for Federated {
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, ErrorData> {
        if request.method != QUERY_METHOD {
            return Err(error(ErrorCode::METHOD_NOT_FOUND, format!("Method not found: {}", request.method)));
        }
        self.take_delegation(&context).await;
        self.query(request.params).await.map(rmcp::model::CustomResult::new)
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(self.shared.name.clone(), env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.take_delegation(&context).await;
        let (lists, missing) = self.member_tools().await;
        if !missing.is_empty() && self.shared.federation.partial_failure == PartialFailure::Fail {
            return Err(error(ErrorCode::INTERNAL_ERROR, format!("members did not answer: {}", missing.join(", "))));
        }
        let (tools, owners) = merge(&lists, &self.shared.federation);
        self.state.lock().await.tools = owners;
        let mut result = ListToolsResult::with_all_items(tools);
        if !missing.is_empty() {
            let mut meta = serde_json::Map::new();
            meta.insert("io.mcpgw/missing_members".into(), json!(missing));
            result.meta = Some(MetaObject(meta));
        }
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.take_delegation(&context).await;
        let name = request.name.to_string();
        let mut owner = self.state.lock().await.tools.get(&name).cloned();
        if owner.is_none() {
            // Called before any list in this session: list now.
            let (lists, _) = self.member_tools().await;
            let (_, owners) = merge(&lists, &self.shared.federation);
            owner = owners.get(&name).cloned();
            self.state.lock().await.tools = owners;
        }
        // A prefixed name the list did not offer this caller (the filter hid it) still goes
        // to its member: the filter, not this list, decides, and records the refusal.
        let owner = owner.or_else(|| {
            let (member, own) = self.shared.federation.prefixed(&name)?;
            Some(Owner::Member(member.to_owned(), own.to_owned()))
        });
        let (member, own) = match owner {
            Some(Owner::Member(member, own)) => (member, own),
            Some(Owner::Routed) => {
                let federation = &self.shared.federation;
                let member = federation
                    .route(&name, request.arguments.as_ref())
                    .ok_or_else(|| error(ErrorCode::INVALID_PARAMS, federation.route_hint(&name)))?;
                (member.to_owned(), name.clone())
            }
            None => return Err(error(ErrorCode::INVALID_PARAMS, format!("Unknown tool: {name}"))),
        };
        let client = self.member(&member).await?;
        let mut forwarded = request;
        forwarded.name = own.into();
        let result = client.call_tool(forwarded).await.map_err(passed_on)?;
        Ok(CallToolResponse::Complete(result))
    }
}

/// The JSON-RPC method of the multi-server query (see [`Federated::query`]).
pub const QUERY_METHOD: &str = "mcpgw/query";

/// Merges the results that answered, in the order given: a key only one result has is
/// taken; arrays are concatenated (a tool result's `content`, list items); other equal
/// values are kept once; values that differ are never overwritten: the key then holds
/// each server's value by server name, and is listed in the second return value.
pub fn merge_results(answered: &[(String, serde_json::Value)]) -> (serde_json::Value, Vec<String>) {
    use serde_json::Value;
    // Every server's value of each key, keys in first-seen order.
    let mut keys: Vec<String> = Vec::new();
    let mut values: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    let mut non_objects = serde_json::Map::new();
    for (server, result) in answered {
        let Value::Object(fields) = result else {
            non_objects.insert(server.clone(), result.clone());
            continue;
        };
        for (key, value) in fields {
            if !values.contains_key(key) {
                keys.push(key.clone());
            }
            values.entry(key.clone()).or_default().push((server.clone(), value.clone()));
        }
    }
    let mut merged = serde_json::Map::new();
    let mut conflicts = Vec::new();
    for key in keys {
        let each = values.remove(&key).unwrap_or_default();
        let value = if each.iter().all(|(_, v)| v.is_array()) {
            Value::Array(each.into_iter().flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default()).collect())
        } else if each.windows(2).all(|w| matches!(w, [(_, a), (_, b)] if a == b)) {
            each.into_iter().next().map(|(_, v)| v).unwrap_or_default()
        } else {
            conflicts.push(key.clone());
            Value::Object(each.into_iter().collect())
        };
        merged.insert(key, value);
    }
    if !non_objects.is_empty() {
        merged.insert("non_object_results".into(), Value::Object(non_objects));
    }
    (Value::Object(merged), conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_merge_without_a_silent_overwrite() {
        let answered = vec![
            ("a".to_owned(), json!({"content": [1], "isError": false, "total": 3, "only_a": true})),
            ("b".to_owned(), json!({"content": [2], "isError": false, "total": 5})),
            ("c".to_owned(), json!({"content": [3], "isError": true, "total": 5})),
            ("d".to_owned(), json!("text")),
        ];
        let (merged, conflicts) = merge_results(&answered);
        assert_eq!(merged["content"], json!([1, 2, 3]));
        assert_eq!(merged["only_a"], true);
        assert_eq!(merged["total"], json!({"a": 3, "b": 5, "c": 5}));
        assert_eq!(merged["isError"], json!({"a": false, "b": false, "c": true}));
        assert_eq!(merged["non_object_results"], json!({"d": "text"}));
        assert_eq!(conflicts, vec!["isError".to_owned(), "total".to_owned()]);
    }
}
