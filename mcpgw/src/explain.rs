//! `mcpgw explain`: why the gateway allows or denies a request.
//!
//! The answer comes from the filter's own decision code ([`gateway::decide`] and
//! [`gateway::visible`]) run on the filter's own configuration, never from a copy of it, so
//! the explanation and Envoy cannot disagree. The inputs are what the filter sees: its plugin
//! configuration (or the Envoy bootstrap that holds it), who is calling, which server, and
//! optionally one MCP message and a list reply from the server.

use std::fmt;
use std::time::SystemTime;

use mcp_gateway::audit::Outcome;
use mcp_gateway::config::{Config, ConfigError};
use mcp_gateway::gateway::{self, decide};
use mcp_gateway::jsonrpc::{Kind, Message, ParseError};
use mcp_gateway::jwt::{self, AuthError, KeyStore, Principal, Verdict};
use mcp_gateway::listing::{self, ListKind};
use mcp_gateway::rbac::{Catalog, Denial, Role};
use mcp_gateway::reject::{reply, Refusal};
use serde::Serialize;
use serde_json::{Map, Value};

/// The Envoy HTTP filter that runs wasm plugins.
const WASM_FILTER: &str = "envoy.filters.http.wasm";
/// The `config.name` the gateway's wasm filter has in Envoy configurations.
const PLUGIN_NAME: &str = "mcp_gateway";

/// Why an explanation could not be given (bad input, not a denial).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("not plugin configuration JSON nor an Envoy YAML configuration: {0}")]
    Yaml(String),
    #[error("no `{WASM_FILTER}` filter whose `config.name` is `{PLUGIN_NAME}` (with a `configuration.value`) in the Envoy configuration")]
    NoGatewayFilter,
    #[error("the Envoy configuration holds {0} `{PLUGIN_NAME}` filters with different configurations")]
    SeveralGatewayFilters(usize),
    #[error("token refused: {0}")]
    Token(AuthError),
    #[error(
        "provider {provider:?} verifies tokens with keys from its JWKS (cluster {cluster:?}), which explain cannot \
         fetch; pass the token's claims with --claims instead"
    )]
    KeysNotLocal { provider: String, cluster: String },
    #[error("claims must be a JSON object: {0}")]
    Claims(String),
    #[error("no provider named {name:?}; configured: {known}")]
    UnknownProvider { name: String, known: String },
    #[error(
        "no provider has issuer {issuer:?}, so the gateway refuses such tokens (token issuer not accepted); \
         pass --provider to map the claims anyway"
    )]
    UnknownIssuer { issuer: String },
    #[error("the claims carry no `iss` and several providers are configured ({known}); pass --provider")]
    AmbiguousProvider { known: String },
    #[error("claims refused: {0}")]
    Principal(AuthError),
    #[error("no server named {name:?}; configured: {known}")]
    UnknownServer { name: String, known: String },
    #[error(
        "{server} is a federated server and no prefix or routing rule names the member owning {tool:?}; \
         explain the call to one of its members ({members}) with --server"
    )]
    UnknownMember { server: String, tool: String, members: String },
    #[error("no server's path_prefix matches {path:?} (the gateway answers 404); configured: {known}")]
    NoServerForPath { path: String, known: String },
    #[error("request: {0}")]
    Request(ParseError),
    #[error("the list reply is not one JSON-RPC message ({kind} list) nor an SSE stream of them (content type {content_type:?})")]
    UnreadableList { kind: &'static str, content_type: String },
}

/// What the gateway does with a request, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// `allow`, `deny`, or `would_deny` (a denial in shadow mode: audited, let through).
    pub decision: Outcome,
    /// The rule that allowed the request, as the audit record names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why the request was (or, in shadow mode, would be) denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub user_id: String,
    pub roles: Vec<String>,
    pub server: String,
    /// A call to a federated server: that server (the call is decided as the member's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The message explained (`tools/call "create_issue"`); absent: server access only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The reply the client gets instead of the server's, when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_sees: Option<ClientReply>,
    /// When denied: each of the caller's roles and what it allows, to show why none matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub role_rules: Vec<RoleRules>,
    /// When denied: the roles of the policy that would allow this request for this user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_for_roles: Option<Vec<String>>,
    /// The kind of list `visible` and `hidden` come from (`tools`, `prompts`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<&'static str>,
    /// Names (URIs for resources) of the list items the caller sees, in reply order.
    pub visible: Vec<String>,
    /// List items removed from the reply for this caller.
    pub hidden: Vec<String>,
}

/// A refusal as the client receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientReply {
    pub status: u32,
    /// JSON-RPC error code.
    pub code: i64,
    pub message: String,
}

/// One of the caller's roles, as the policy defines it (globs as configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleRules {
    pub role: String,
    /// False when the policy does not define the role: it grants nothing.
    pub defined: bool,
    pub servers: Vec<String>,
    pub methods: Vec<String>,
    pub tools: Vec<String>,
    pub resources: Vec<String>,
    pub prompts: Vec<String>,
    /// Tool operations the role is limited to, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<&'static str>>,
    /// Deny rules, as `<kind> <glob>` (`tool delete_*`).
    pub deny: Vec<String>,
}

/// Explains what the gateway does when `principal` sends `request` to `server` (`None`: a
/// GET or DELETE, where only server access is checked). `list` is a list reply from the
/// server (body, content type, kind): tools/list annotations are learned first, as the filter
/// does, and the explanation says which items this caller sees.
pub fn explain(
    config: &Config,
    principal: &Principal,
    server: &str,
    request: Option<&Message>,
    list: Option<(&[u8], &str, ListKind)>,
) -> Result<Explanation, ExplainError> {
    let mut catalog = Catalog::default();
    let mut explanation = Explanation {
        decision: Outcome::Allow,
        rule: None,
        reason: None,
        user_id: principal.user_id.clone(),
        roles: principal.roles.clone(),
        server: server.to_owned(),
        via: None,
        request: request.map(describe),
        client_sees: None,
        role_rules: Vec::new(),
        allowed_for_roles: None,
        list: None,
        visible: Vec::new(),
        hidden: Vec::new(),
    };
    if let Some((body, content_type, kind)) = list {
        let unreadable = || ExplainError::UnreadableList { kind: kind.field(), content_type: content_type.to_owned() };
        let items = listing::items(body, content_type, kind).ok_or_else(unreadable)?;
        if kind == ListKind::Tools {
            catalog.learn(server, &items);
        }
        let mut shown = Vec::new();
        let mut keep = |item: &Value| {
            let keep = gateway::visible(config, &catalog, principal, server, kind, item);
            if keep {
                shown.push(item_name(kind, item));
            }
            keep
        };
        let (_, filtered) = listing::filter_reply(body, content_type, kind, &mut keep).ok_or_else(unreadable)?;
        explanation.list = Some(kind.field());
        explanation.visible = shown;
        explanation.hidden = filtered.removed;
    }
    match decision(config, &catalog, principal, server, request) {
        Ok(rule) => explanation.rule = Some(rule),
        Err(Refused { denial, at_body }) => {
            // As the filter: shadow mode and hiding apply to body decisions; server access
            // is refused at headers time whatever the mode.
            let outcome = match request.filter(|_| at_body) {
                Some(message) => gateway::refusal_for(config, message, denial.clone()),
                None => Err(Refusal::Forbidden(denial.clone())),
            };
            match outcome {
                Ok(_) => explanation.decision = Outcome::WouldDeny,
                Err(refusal) => {
                    explanation.decision = Outcome::Deny;
                    explanation.client_sees = Some(client_reply(&refusal, request.and_then(|m| m.id.clone())));
                }
            }
            explanation.reason = Some(denial.to_string());
            explanation.role_rules =
                principal.roles.iter().map(|r| role_rules(r, config.policy.roles.get(r))).collect();
            let allowed_for = config
                .policy
                .roles
                .keys()
                .filter(|role| {
                    let as_role = Principal { roles: vec![(*role).clone()], ..principal.clone() };
                    decision(config, &catalog, &as_role, server, request).is_ok()
                })
                .cloned()
                .collect();
            explanation.allowed_for_roles = Some(allowed_for);
        }
    }
    Ok(explanation)
}

/// A denial, and whether it was decided on the body (after server access was granted).
struct Refused {
    denial: Denial,
    at_body: bool,
}

/// The filter's two steps: server access at headers time, then the message.
fn decision(
    config: &Config,
    catalog: &Catalog,
    principal: &Principal,
    server: &str,
    request: Option<&Message>,
) -> Result<String, Refused> {
    let rule =
        config.policy.allows_server(&principal.roles, server).map_err(|denial| Refused { denial, at_body: false })?;
    match request {
        None => Ok(rule),
        Some(message) => {
            decide(config, catalog, principal, server, message).map_err(|denial| Refused { denial, at_body: true })
        }
    }
}

fn describe(message: &Message) -> String {
    match (&message.kind, &message.target) {
        (Kind::Response, _) => "a response to a server request".to_owned(),
        (_, Some(target)) => format!("{} {:?}", message.method, target.name()),
        (_, None) => message.method.clone(),
    }
}

/// The member of a list item policies match against (items without it never reach `keep`).
fn item_name(kind: ListKind, item: &Value) -> String {
    item.get(kind.key()).and_then(Value::as_str).unwrap_or(listing::MALFORMED).to_owned()
}

fn client_reply(refusal: &Refusal, id: Option<Value>) -> ClientReply {
    let reply = reply(refusal, id, None);
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let error = |field: &str| body.get("error").and_then(|e| e.get(field)).cloned().unwrap_or_default();
    ClientReply {
        status: reply.status,
        code: error("code").as_i64().unwrap_or_default(),
        message: error("message").as_str().unwrap_or_default().to_owned(),
    }
}

fn role_rules(name: &str, role: Option<&Role>) -> RoleRules {
    let Some(role) = role else {
        return RoleRules {
            role: name.to_owned(),
            defined: false,
            servers: Vec::new(),
            methods: Vec::new(),
            tools: Vec::new(),
            resources: Vec::new(),
            prompts: Vec::new(),
            operations: None,
            deny: Vec::new(),
        };
    };
    let d = &role.deny;
    let deny = [
        ("server", &d.servers),
        ("method", &d.methods),
        ("tool", &d.tools),
        ("resource", &d.resources),
        ("prompt", &d.prompts),
    ]
    .into_iter()
    .flat_map(|(kind, patterns)| patterns.iter().map(move |p| format!("{kind} {p}")))
    .collect();
    RoleRules {
        role: name.to_owned(),
        defined: true,
        servers: globs(&role.servers),
        methods: globs(&role.methods),
        tools: globs(&role.tools),
        resources: globs(&role.resources),
        prompts: globs(&role.prompts),
        operations: role.operations.as_ref().map(|ops| ops.iter().map(|op| op.name()).collect()),
        deny,
    }
}

impl fmt::Display for Explanation {
    /// The human-readable explanation, one `label: value` line per fact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roles = if self.roles.is_empty() { "none".to_owned() } else { self.roles.join(", ") };
        writeln!(f, "user: {} (roles: {roles})", self.user_id)?;
        match &self.via {
            Some(via) => writeln!(f, "server: {} (through the federated server {via})", self.server)?,
            None => writeln!(f, "server: {}", self.server)?,
        }
        match &self.request {
            Some(request) => writeln!(f, "request: {request}")?,
            None => writeln!(f, "request: none (server access only, as for GET and DELETE)")?,
        }
        match self.decision {
            Outcome::Allow => writeln!(f, "decision: allow")?,
            Outcome::Deny => writeln!(f, "decision: deny")?,
            Outcome::WouldDeny => writeln!(f, "decision: would_deny (shadow: let through)")?,
        }
        if let Some(rule) = &self.rule {
            writeln!(f, "rule: {rule}")?;
        }
        if let Some(reason) = &self.reason {
            writeln!(f, "reason: {reason}")?;
        }
        if let Some(reply) = &self.client_sees {
            let note = if reply.message.starts_with("Unknown tool") {
                " (hide_denied_tools: a denied tool looks like one that does not exist)"
            } else {
                ""
            };
            writeln!(f, "client sees: HTTP {}, JSON-RPC error {}: {}{note}", reply.status, reply.code, reply.message)?;
        }
        if !self.role_rules.is_empty() || self.reason.is_some() {
            let rules: Vec<String> = self.role_rules.iter().map(RoleRules::summary).collect();
            let rules = if rules.is_empty() { "none (the token names no role)".to_owned() } else { rules.join("; ") };
            writeln!(f, "caller's roles: {rules}")?;
        }
        if let Some(roles) = &self.allowed_for_roles {
            match roles.is_empty() {
                true => writeln!(f, "allowed for roles: none of the policy's roles")?,
                false => writeln!(f, "allowed for roles: {}", roles.join(", "))?,
            }
        }
        if let Some(kind) = self.list {
            writeln!(f, "visible {kind} ({}): {}", self.visible.len(), self.visible.join(", "))?;
            writeln!(f, "hidden {kind} ({}): {}", self.hidden.len(), self.hidden.join(", "))?;
        }
        Ok(())
    }
}

impl RoleRules {
    /// `readonly (servers github, filesystem; tools get_*, list_*)`.
    fn summary(&self) -> String {
        if !self.defined {
            return format!("{} (not defined in the policy: grants nothing)", self.role);
        }
        let mut parts = vec![format!("servers {}", list_or_none(&self.servers))];
        let default = mcp_gateway::config::DEFAULT_METHODS;
        if self.methods.len() != default.len() || self.methods.iter().zip(default).any(|(m, d)| m != d) {
            parts.push(format!("methods {}", list_or_none(&self.methods)));
        }
        parts.push(format!("tools {}", list_or_none(&self.tools)));
        for (label, globs) in [("resources", &self.resources), ("prompts", &self.prompts)] {
            if !globs.is_empty() {
                parts.push(format!("{label} {}", globs.join(", ")));
            }
        }
        if let Some(ops) = &self.operations {
            parts.push(format!("operations {}", ops.join(", ")));
        }
        if !self.deny.is_empty() {
            parts.push(format!("deny {}", self.deny.join(", ")));
        }
        format!("{} ({})", self.role, parts.join("; "))
    }
}

/// Globs as configured (a compiled pattern displays as its source).
fn globs<P: fmt::Display>(patterns: &[P]) -> Vec<String> {
    patterns.iter().map(P::to_string).collect()
}

fn list_or_none(globs: &[String]) -> String {
    if globs.is_empty() {
        "none".to_owned()
    } else {
        globs.join(", ")
    }
}

/// Compiles the plugin configuration from `text`: the configuration JSON itself, or an Envoy
/// configuration (YAML) holding it as the `configuration.value` of its `mcp_gateway` wasm
/// filter. `env` resolves `*_env` fields.
///
/// Explaining never sends records nor opens sessions, so the sidecar's secret
/// (`audit.sidecar.secret_env`) and the session binding key (`session_binding_key_env`)
/// need not be given: when `env` does not have them, stand-ins are used.
pub fn load_config(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ExplainError> {
    let plugin = if text.trim_start().starts_with('{') { text.to_owned() } else { plugin_configuration(text)? };
    let parsed = serde_json::from_str::<serde_json::Value>(&plugin).ok();
    let unset = |pointer: &str| {
        parsed.as_ref().and_then(|v| v.pointer(pointer)?.as_str().map(str::to_owned)).filter(|name| env(name).is_none())
    };
    let sidecar_secret = unset("/audit/sidecar/secret_env");
    let session_key = unset("/session_binding_key_env");
    let env = |name: &str| match (&sidecar_secret, &session_key) {
        (Some(secret), _) if secret == name => Some(SIDECAR_SECRET_STAND_IN.to_owned()),
        (_, Some(key)) if key == name => Some(SESSION_KEY_STAND_IN.to_owned()),
        _ => env(name),
    };
    Ok(Config::from_json(plugin.as_bytes(), &env)?)
}

/// What `load_config` gives the filter's configuration for an unset sidecar secret.
const SIDECAR_SECRET_STAND_IN: &str = "explain-sends-no-records";
/// ...and for an unset session binding key.
const SESSION_KEY_STAND_IN: &str = "explain-binds-no-sessions-0123456789";

/// The gateway's plugin configuration in an Envoy configuration (YAML): the
/// `configuration.value` of the `envoy.filters.http.wasm` filter whose `config.name` is
/// `mcp_gateway`, wherever it is (listeners, filter chains).
pub fn plugin_configuration(yaml: &str) -> Result<String, ExplainError> {
    let document: serde_norway::Value = serde_norway::from_str(yaml).map_err(|e| ExplainError::Yaml(e.to_string()))?;
    let mut found = Vec::new();
    find_plugin_configurations(&document, &mut found);
    found.sort_unstable();
    found.dedup();
    match found.as_slice() {
        [] => Err(ExplainError::NoGatewayFilter),
        [one] => Ok((*one).to_owned()),
        several => Err(ExplainError::SeveralGatewayFilters(several.len())),
    }
}

fn find_plugin_configurations<'a>(node: &'a serde_norway::Value, found: &mut Vec<&'a str>) {
    use serde_norway::Value as Yaml;
    match node {
        Yaml::Mapping(map) => {
            if node.get("name").and_then(Yaml::as_str) == Some(WASM_FILTER) {
                let config = node.get("typed_config").and_then(|t| t.get("config"));
                let ours = config.and_then(|c| c.get("name")).and_then(Yaml::as_str) == Some(PLUGIN_NAME);
                let value = config.and_then(|c| c.get("configuration")).and_then(|c| c.get("value"));
                if let (true, Some(value)) = (ours, value.and_then(Yaml::as_str)) {
                    found.push(value);
                }
            }
            map.values().for_each(|v| find_plugin_configurations(v, found));
        }
        Yaml::Sequence(items) => items.iter().for_each(|v| find_plugin_configurations(v, found)),
        Yaml::Tagged(tagged) => find_plugin_configurations(&tagged.value, found),
        _ => {}
    }
}

/// Who a token names, verified as the filter verifies it (now, with the configured keys).
/// Keys that only a JWKS fetch would bring cannot be had offline.
pub fn principal_from_token(config: &Config, token: &str, now: SystemTime) -> Result<Principal, ExplainError> {
    let providers = &config.verifier.providers;
    let mut store = KeyStore::new(providers.len(), 0);
    let verified = config.verifier.verify(token, now, &mut store);
    verified.map(std::rc::Rc::unwrap_or_clone).map_err(|verdict| match verdict {
        Verdict::Invalid(e) => ExplainError::Token(e),
        Verdict::NoKeysYet { provider } | Verdict::UnknownKid { provider } => {
            let p = providers.get(provider);
            ExplainError::KeysNotLocal {
                provider: p.map(|p| p.name.clone()).unwrap_or_default(),
                cluster: p.and_then(|p| p.jwks.as_ref()).map(|j| j.cluster.clone()).unwrap_or_default(),
            }
        }
    })
}

/// Who unverified claims name, by the claim mapping of the provider named `provider`, else
/// of the provider whose issuer is the claims' `iss`, else of the only provider.
pub fn principal_from_claims(
    config: &Config,
    claims: &Value,
    provider: Option<&str>,
) -> Result<Principal, ExplainError> {
    let claims: &Map<String, Value> =
        claims.as_object().ok_or_else(|| ExplainError::Claims(format!("got {}", type_name(claims))))?;
    let providers = &config.verifier.providers;
    let known = || providers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let chosen = match (provider, claims.get("iss").and_then(Value::as_str)) {
        (Some(name), _) => providers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ExplainError::UnknownProvider { name: name.to_owned(), known: known() })?,
        (None, Some(iss)) => providers
            .iter()
            .find(|p| p.issuer == iss)
            .ok_or_else(|| ExplainError::UnknownIssuer { issuer: iss.to_owned() })?,
        (None, None) => match providers.as_slice() {
            [only] => only,
            _ => return Err(ExplainError::AmbiguousProvider { known: known() }),
        },
    };
    jwt::principal(chosen, claims).map_err(ExplainError::Principal)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// For a call to a federated server: the member it reaches and the call as the member
/// gets it (its own tool name), which the filter decides when the sidecar dispatches it.
/// The member comes from the name's prefix (`github__create_issue`) or the federation's
/// routing rules; under `first_wins` the member cannot be told without its list, and the
/// error says to name it. `None`: not a federated server, or not a tool call.
pub fn through_federation(
    config: &Config,
    server: &str,
    request: Option<&Message>,
) -> Result<Option<(String, Message)>, ExplainError> {
    use mcp_gateway::jsonrpc::Target;
    let Some(federation) = config.servers.iter().find(|s| s.name == server).and_then(|s| s.federation.as_ref()) else {
        return Ok(None);
    };
    let Some(message) = request else { return Ok(None) };
    let Some(Target::Tool(name)) = &message.target else { return Ok(None) };
    let arguments = message.arguments.as_ref().and_then(Value::as_object);
    let routed = federation.is_routed(name).then(|| federation.route(name, arguments)).flatten();
    let (member, own) = match (routed, federation.prefixed(name)) {
        (Some(member), _) => (member.to_owned(), name.clone()),
        (None, Some((member, own))) => (member.to_owned(), own.to_owned()),
        (None, None) => {
            return Err(ExplainError::UnknownMember {
                server: server.to_owned(),
                tool: name.clone(),
                members: federation.members.join(", "),
            })
        }
    };
    let mut translated = message.clone();
    translated.target = Some(Target::Tool(own));
    Ok(Some((member, translated)))
}

/// The configured server named `name`.
pub fn server_named<'a>(config: &'a Config, name: &str) -> Result<&'a str, ExplainError> {
    config
        .servers
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.name.as_str())
        .ok_or_else(|| ExplainError::UnknownServer { name: name.to_owned(), known: server_names(config) })
}

/// The server a request path is for, as the filter routes it.
pub fn server_at<'a>(config: &'a Config, path: &str) -> Result<&'a str, ExplainError> {
    config
        .server_for(path)
        .map(|s| s.name.as_str())
        .ok_or_else(|| ExplainError::NoServerForPath { path: path.to_owned(), known: server_prefixes(config) })
}

fn server_names(config: &Config) -> String {
    config.servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn server_prefixes(config: &Config) -> String {
    config.servers.iter().map(|s| s.path_prefix.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_plugin_configuration_in_the_demo_envoy_yaml() {
        let yaml = include_str!("../../envoy/demo.yaml");
        let plugin = plugin_configuration(yaml).unwrap();
        assert!(plugin.contains("\"servers\""));
    }

    #[test]
    fn an_envoy_yaml_without_the_gateway_filter_is_an_error() {
        let yaml = "static_resources:\n  listeners: []\n";
        assert!(matches!(plugin_configuration(yaml), Err(ExplainError::NoGatewayFilter)));
    }
}
