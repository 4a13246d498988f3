//! Role-based access control: which roles may reach which server, send which MCP
//! methods, call which tools (and with which operation: read, write, delete, admin),
//! read which resources and get which prompts.
//!
//! Default deny: a request is allowed only when one of the caller's roles allows all of
//! it (server, method, target and operation together), and no deny rule of any of the
//! caller's roles matches it. Roles a token names but the policy does not define grant
//! nothing.

use crate::config::{err, ConfigError, RawDeny, RawRbac, RawRole};
use crate::jsonrpc::{Kind, Message, Target};
use crate::normalize;
use glob::{MatchOptions, Pattern};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// What a tool does, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Read,
    Write,
    Delete,
    Admin,
}

impl Operation {
    pub fn parse(name: &str) -> Option<Operation> {
        Some(match name {
            "read" => Operation::Read,
            "write" => Operation::Write,
            "delete" => Operation::Delete,
            "admin" => Operation::Admin,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Delete => "delete",
            Operation::Admin => "admin",
        }
    }

    /// From a tool's MCP annotations: `readOnlyHint: true` reads; otherwise
    /// `destructiveHint` (true unless said otherwise, per the MCP spec) deletes, and a
    /// tool that is neither writes. `None` when the tool carries no annotations.
    pub fn from_annotations(tool: &Value) -> Option<Operation> {
        let a = tool.get("annotations")?.as_object()?;
        let flag = |name: &str| a.get(name).and_then(Value::as_bool);
        Some(if flag("readOnlyHint") == Some(true) {
            Operation::Read
        } else if flag("destructiveHint") != Some(false) {
            Operation::Delete
        } else {
            Operation::Write
        })
    }
}

/// Globs that deny, whatever any role allows.
#[derive(Debug, Clone, Default)]
pub struct DenyRules {
    pub servers: Vec<Pattern>,
    pub methods: Vec<Pattern>,
    pub tools: Vec<Pattern>,
    pub resources: Vec<Pattern>,
    pub prompts: Vec<Pattern>,
}

/// A compiled role.
#[derive(Debug, Clone)]
pub struct Role {
    pub servers: Vec<Pattern>,
    pub methods: Vec<Pattern>,
    pub tools: Vec<Pattern>,
    pub resources: Vec<Pattern>,
    pub prompts: Vec<Pattern>,
    /// When set, the tool's operation must be one of these (an unknown operation is
    /// then denied).
    pub operations: Option<Vec<Operation>>,
    pub deny: DenyRules,
}

/// All roles, compiled once at configure time.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub roles: BTreeMap<String, Role>,
    /// Tool-name globs per operation, checked delete, admin, write, read: configuration
    /// wins over what a server's annotations claim.
    pub operations: Vec<(Operation, Vec<Pattern>)>,
    /// Run the whole policy as a dry run: denials are recorded as `would_deny`.
    pub shadow: bool,
    /// A tool the caller may not call is answered as an unknown tool, so policy does
    /// not reveal what exists.
    pub hide_denied_tools: bool,
}

impl Policy {
    /// Compiles the `rbac` section (error fields are relative to it). A role's `servers`
    /// entry that is not a glob must be one of `servers`.
    pub fn compile(raw: RawRbac, servers: &HashSet<&str>) -> Result<Policy, ConfigError> {
        if raw.roles.is_empty() {
            return Err(err("roles", "at least one role is required"));
        }
        let mut roles = BTreeMap::new();
        for (name, r) in raw.roles {
            let role = Role::compile(r, servers).map_err(|e| e.within(&format!("roles.{name}")))?;
            roles.insert(name, role);
        }
        // Most privileged first, so a tool matching several gets the stronger operation.
        let mut operations = Vec::new();
        for (name, list) in &raw.operations {
            let at = format!("operations.{name}");
            operations.push((operation(&at, name)?, globs(&at, list)?));
        }
        operations.sort_by_key(|(op, _)| std::cmp::Reverse(*op));
        Ok(Policy { roles, operations, shadow: raw.shadow, hide_denied_tools: raw.hide_denied_tools })
    }
}

impl Role {
    fn compile(raw: RawRole, servers: &HashSet<&str>) -> Result<Role, ConfigError> {
        for (i, s) in raw.servers.iter().enumerate() {
            let is_glob = s.contains(['*', '?', '[']);
            if !is_glob && !servers.contains(s.as_str()) {
                return Err(err(format!("servers[{i}]"), format!("unknown server {s:?}")));
            }
        }
        let operations = raw
            .operations
            .map(|ops| {
                ops.iter()
                    .enumerate()
                    .map(|(i, op)| operation(&format!("operations[{i}]"), op))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Role {
            servers: globs("servers", &raw.servers)?,
            methods: globs("methods", &raw.methods)?,
            tools: globs("tools", &raw.tools)?,
            resources: globs("resources", &raw.resources)?,
            prompts: globs("prompts", &raw.prompts)?,
            operations,
            deny: DenyRules::try_from(raw.deny).map_err(|e| e.within("deny"))?,
        })
    }
}

impl TryFrom<RawDeny> for DenyRules {
    type Error = ConfigError;

    fn try_from(raw: RawDeny) -> Result<DenyRules, ConfigError> {
        Ok(DenyRules {
            servers: globs("servers", &raw.servers)?,
            methods: globs("methods", &raw.methods)?,
            tools: globs("tools", &raw.tools)?,
            resources: globs("resources", &raw.resources)?,
            prompts: globs("prompts", &raw.prompts)?,
        })
    }
}

/// Compiles a list of globs; an error names the entry (`field[i]`).
fn globs(field: &str, list: &[String]) -> Result<Vec<Pattern>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| Pattern::new(p).map_err(|e| err(format!("{field}[{i}]"), format!("bad glob {p:?}: {e}"))))
        .collect()
}

fn operation(field: &str, name: &str) -> Result<Operation, ConfigError> {
    Operation::parse(name)
        .ok_or_else(|| err(field, format!("unknown operation {name:?}; use read, write, delete or admin")))
}

/// Why a request was denied. Details are for the audit log; the client only learns
/// that it was forbidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// None of the caller's roles is defined in the policy.
    NoKnownRole,
    ServerNotAllowed {
        server: String,
    },
    MethodNotAllowed {
        method: String,
    },
    TargetNotAllowed {
        method: String,
        name: String,
    },
    /// The role allows the tool by name, but not what it does.
    OperationNotAllowed {
        tool: String,
        operation: Option<Operation>,
    },
    /// A deny rule of one of the caller's roles.
    DeniedBy {
        role: String,
        rule: String,
    },
    /// A resource-level policy.
    Resource(crate::resource::ResourceDenial),
    /// A task id the caller did not create through the gateway (or that expired).
    UnknownTask {
        task: String,
    },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::NoKnownRole => write!(f, "no role of the caller is defined in the policy"),
            Denial::ServerNotAllowed { server } => write!(f, "no role allows server {server:?}"),
            Denial::MethodNotAllowed { method } => write!(f, "no role allows method {method:?}"),
            Denial::TargetNotAllowed { method, name } => write!(f, "no role allows {method} on {name:?}"),
            Denial::OperationNotAllowed { tool, operation: Some(op) } => {
                write!(f, "no role allows operation {} (tool {tool:?})", op.name())
            }
            Denial::OperationNotAllowed { tool, operation: None } => {
                write!(f, "tool {tool:?} has no known operation and every role allowing it restricts operations")
            }
            Denial::DeniedBy { role, rule } => write!(f, "denied by role {role}: {rule}"),
            Denial::Resource(d) => write!(f, "{d}"),
            Denial::UnknownTask { task } => {
                write!(f, "task {task:?} was not created by this caller through the gateway")
            }
        }
    }
}

impl Denial {
    /// Denials about a tool the caller may not use at all (to be hidden as unknown).
    pub fn hides_tool(&self) -> bool {
        matches!(self, Denial::TargetNotAllowed { .. } | Denial::OperationNotAllowed { .. } | Denial::DeniedBy { .. })
    }
}

/// Picks one glob list of a role or of its deny rules.
type RoleGlobs = fn(&Role) -> &[Pattern];
type DenyGlobs = fn(&DenyRules) -> &[Pattern];

/// A successful decision explains which role allowed it and how.
pub type Decision = Result<String, Denial>;

fn any_match(patterns: &[Pattern], value: &str) -> bool {
    patterns.iter().any(|p| p.matches(value))
}

fn first_match<'a>(patterns: &'a [Pattern], value: &str) -> Option<&'a Pattern> {
    patterns.iter().find(|p| p.matches(value))
}

/// Operations learned from tools/list replies, per server and tool. Bounded. Workers
/// share it (the adapter stores [`Catalog::to_json`] in shared data).
#[derive(Debug, Default)]
pub struct Catalog {
    ops: HashMap<(String, String), Operation>,
    /// Bumped on every change, so the adapter knows when to publish.
    pub generation: u64,
}

/// Most tools remembered per worker.
const CATALOG_CAPACITY: usize = 4096;

impl Catalog {
    /// Records what a server's tools/list says its tools do.
    pub fn learn(&mut self, server: &str, tools: &[Value]) {
        for tool in tools {
            let (Some(name), Some(op)) = (tool.get("name").and_then(Value::as_str), Operation::from_annotations(tool))
            else {
                continue;
            };
            self.insert(server, name, op);
        }
    }

    fn insert(&mut self, server: &str, tool: &str, op: Operation) {
        let key = (server.to_owned(), tool.to_owned());
        if self.ops.len() >= CATALOG_CAPACITY && !self.ops.contains_key(&key) {
            return;
        }
        if self.ops.insert(key, op) != Some(op) {
            self.generation += 1;
        }
    }

    pub fn operation(&self, server: &str, tool: &str) -> Option<Operation> {
        self.ops.get(&(server.to_owned(), tool.to_owned())).copied()
    }

    /// `{"server": {"tool": "read", ...}, ...}`
    pub fn to_json(&self) -> Value {
        let mut servers = serde_json::Map::new();
        for ((server, tool), op) in &self.ops {
            let entry = servers.entry(server.clone()).or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(tools) = entry {
                tools.insert(tool.clone(), Value::String(op.name().to_owned()));
            }
        }
        Value::Object(servers)
    }

    /// Adds what another worker learned.
    pub fn merge_json(&mut self, json: &Value) {
        let Some(servers) = json.as_object() else { return };
        for (server, tools) in servers {
            for (tool, op) in tools.as_object().into_iter().flatten() {
                if let Some(op) = op.as_str().and_then(Operation::parse) {
                    self.insert(server, tool, op);
                }
            }
        }
    }
}

impl Policy {
    fn known_roles<'a>(&'a self, roles: &'a [String]) -> impl Iterator<Item = (&'a String, &'a Role)> + 'a {
        roles.iter().filter_map(|name| self.roles.get_key_value(name.as_str()))
    }

    /// The operation of a tool: configured globs first, then the server's annotations.
    pub fn operation_of(&self, server: &str, tool: &str, catalog: &Catalog) -> Option<Operation> {
        self.operations
            .iter()
            .find(|(_, globs)| any_match(globs, tool))
            .map(|(op, _)| *op)
            .or_else(|| catalog.operation(server, tool))
    }

    /// May these roles reach this server at all? Used for requests without a body
    /// (GET streams, DELETE of a session).
    pub fn allows_server(&self, roles: &[String], server: &str) -> Decision {
        let mut known = self.known_roles(roles).peekable();
        if known.peek().is_none() {
            return Err(Denial::NoKnownRole);
        }
        let allowed = known
            .find(|(_, role)| any_match(&role.servers, server))
            .map(|(name, _)| format!("role {name}"))
            .ok_or_else(|| Denial::ServerNotAllowed { server: server.to_owned() })?;
        self.check_denies(roles, |d| first_match(&d.servers, server).map(|p| format!("server {}", p.as_str())))?;
        Ok(allowed)
    }

    fn check_denies(&self, roles: &[String], rule: impl Fn(&DenyRules) -> Option<String>) -> Result<(), Denial> {
        match self.known_roles(roles).find_map(|(name, r)| rule(&r.deny).map(|rule| (name, rule))) {
            Some((role, rule)) => Err(Denial::DeniedBy { role: role.clone(), rule }),
            None => Ok(()),
        }
    }

    /// May these roles send this message to this server?
    pub fn allows_message(&self, roles: &[String], server: &str, message: &Message, catalog: &Catalog) -> Decision {
        let server_rule = self.allows_server(roles, server)?;
        self.allows_message_on(roles, server, &server_rule, message, catalog)
    }

    /// [`Policy::allows_message`] for roles [`Policy::allows_server`] already let onto
    /// `server`, saying `server_rule`: the request path checks the server once, when the
    /// headers arrive, not again for the body and for every item of a list reply.
    pub fn allows_message_on(
        &self,
        roles: &[String],
        server: &str,
        server_rule: &str,
        message: &Message,
        catalog: &Catalog,
    ) -> Decision {
        if message.kind == Kind::Response {
            // Answers to the server's own requests (sampling, elicitation) carry no method.
            return Ok(server_rule.to_owned());
        }
        let method = message.method.as_str();
        self.check_denies(roles, |d| first_match(&d.methods, method).map(|p| format!("method {}", p.as_str())))?;
        let on_server = || self.known_roles(roles).filter(|(_, r)| any_match(&r.servers, server));
        let with_method: Vec<(&String, &Role)> = on_server().filter(|(_, r)| any_match(&r.methods, method)).collect();
        if with_method.is_empty() {
            return Err(Denial::MethodNotAllowed { method: method.to_owned() });
        }
        // A task is decided like the call that created it (the gateway re-checks that call);
        // here only its method is.
        let target = match &message.target {
            Some(Target::Task(_)) | None => {
                return Ok(with_method.first().map(|(n, _)| format!("role {n}: method {method}")).unwrap_or_default());
            }
            Some(target) => target,
        };
        let name = target.name();
        // Resource URIs are matched in normalized form, on every reading a server could
        // give them (see `normalize::uri_readings`), with `*` staying within a segment.
        let readings = match target {
            Target::Resource(uri) => normalize::uri_readings(uri)
                .map_err(|_| Denial::TargetNotAllowed { method: method.to_owned(), name: name.to_owned() })?,
            _ => vec![name.to_owned()],
        };
        let literal_separator = matches!(target, Target::Resource(_));
        let matching = |patterns: &'_ [Pattern]| -> Option<Pattern> {
            let mut first = None;
            for reading in &readings {
                let p = patterns.iter().find(|p| {
                    p.matches_with(
                        reading,
                        MatchOptions { require_literal_separator: literal_separator, ..MatchOptions::new() },
                    )
                })?;
                first.get_or_insert_with(|| p.clone());
            }
            first
        };
        let denied_by = |patterns: &'_ [Pattern]| -> Option<String> {
            readings.iter().find_map(|reading| {
                patterns
                    .iter()
                    .find(|p| {
                        p.matches_with(
                            reading,
                            MatchOptions { require_literal_separator: literal_separator, ..MatchOptions::new() },
                        )
                    })
                    .map(|p| p.as_str().to_owned())
            })
        };
        let (patterns_of, deny_of): (RoleGlobs, DenyGlobs) = match target {
            Target::Tool(_) => (|r| &r.tools, |d| &d.tools),
            Target::Resource(_) => (|r| &r.resources, |d| &d.resources),
            Target::Prompt(_) | Target::Task(_) => (|r| &r.prompts, |d| &d.prompts),
        };
        let kind = match target {
            Target::Tool(_) => "tool",
            Target::Resource(_) => "resource",
            Target::Prompt(_) | Target::Task(_) => "prompt",
        };
        self.check_denies(roles, |d| denied_by(deny_of(d)).map(|p| format!("{kind} {p}")))?;
        let by_name: Vec<(&String, &Role, Pattern)> =
            with_method.iter().filter_map(|(n, r)| matching(patterns_of(r)).map(|p| (*n, *r, p))).collect();
        if by_name.is_empty() {
            return Err(Denial::TargetNotAllowed { method: method.to_owned(), name: name.to_owned() });
        }
        let Target::Tool(tool) = target else {
            return Ok(by_name.first().map(|(n, _, p)| format!("role {n}: {kind} {}", p.as_str())).unwrap_or_default());
        };
        let operation = self.operation_of(server, tool, catalog);
        by_name
            .iter()
            .find(|(_, r, _)| match (&r.operations, operation) {
                (None, _) => true,
                (Some(allowed), Some(op)) => allowed.contains(&op),
                (Some(_), None) => false,
            })
            .map(|(n, _, p)| match operation {
                Some(op) => format!("role {n}: tool {} ({})", p.as_str(), op.name()),
                None => format!("role {n}: tool {}", p.as_str()),
            })
            .ok_or_else(|| Denial::OperationNotAllowed { tool: tool.clone(), operation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::parse;
    use serde_json::json;

    fn pats(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|p| Pattern::new(p).unwrap()).collect()
    }

    fn role(servers: &[&str], methods: &[&str], tools: &[&str]) -> Role {
        Role {
            servers: pats(servers),
            methods: pats(methods),
            tools: pats(tools),
            resources: vec![],
            prompts: vec![],
            operations: None,
            deny: DenyRules::default(),
        }
    }

    /// The seed's permission matrix, with operations and a deny rule.
    fn policy() -> Policy {
        let mut roles = BTreeMap::new();
        let mut admin = role(&["*"], &["*"], &["*"]);
        admin.resources = pats(&["*"]);
        admin.prompts = pats(&["*"]);
        roles.insert("admin".into(), admin);
        roles.insert("developer".into(), role(&["github", "filesystem"], &["*"], &["get_*", "list_*", "create_*"]));
        roles.insert(
            "readonly".into(),
            role(
                &["github", "filesystem", "atlassian"],
                &["initialize", "notifications/*", "ping", "tools/list", "tools/call"],
                &["get_*", "list_*"],
            ),
        );
        let mut ops = role(&["*"], &["*"], &["*"]);
        ops.operations = Some(vec![Operation::Read]);
        roles.insert("reader".into(), ops);
        let mut contractor = role(&["github"], &["*"], &["*"]);
        contractor.deny.tools = pats(&["*_secret*"]);
        roles.insert("contractor".into(), contractor);
        Policy {
            roles,
            operations: vec![
                (Operation::Delete, pats(&["delete_*"])),
                (Operation::Write, pats(&["create_*", "write_*"])),
                (Operation::Read, pats(&["get_*", "list_*", "read_*"])),
            ],
            shadow: false,
            hide_denied_tools: false,
        }
    }

    fn call(tool: &str) -> Message {
        parse(
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}"}}}}"#).as_bytes(),
            16,
        )
        .unwrap()
    }

    fn method(m: &str) -> Message {
        parse(format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{m}"}}"#).as_bytes(), 16).unwrap()
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    fn allows(p: &Policy, r: &[&str], server: &str, m: &Message) -> Decision {
        p.allows_message(&roles(r), server, m, &Catalog::default())
    }

    #[test]
    fn tool_matrix() {
        let p = policy();
        let table: &[(&[&str], &str, &str, bool)] = &[
            (&["admin"], "anything", "delete_everything", true),
            (&["developer"], "github", "create_issue", true),
            (&["developer"], "github", "get_repository", true),
            (&["developer"], "github", "delete_repository", false),
            (&["developer"], "atlassian", "get_issue", false),
            (&["readonly"], "github", "list_issues", true),
            (&["readonly"], "github", "create_issue", false),
            (&["readonly"], "atlassian", "get_issue", true),
            (&["readonly", "developer"], "github", "create_issue", true),
            (&["intern"], "github", "get_repository", false),
            (&[], "github", "get_repository", false),
            (&["reader"], "github", "get_repository", true),
            (&["reader"], "github", "create_issue", false),
            (&["reader"], "github", "mystery_tool", false),
            (&["contractor"], "github", "create_issue", true),
            (&["contractor"], "github", "get_secret_token", false),
            // A deny rule of one role overrides the allow of another.
            (&["contractor", "admin"], "github", "get_secret_token", false),
            (&["admin", "contractor"], "github", "get_secret_token", false),
        ];
        for (r, server, tool, allowed) in table {
            let d = allows(&p, r, server, &call(tool));
            assert_eq!(d.is_ok(), *allowed, "{r:?} {server} {tool}: {d:?}");
        }
    }

    #[test]
    fn denies_tool_call_when_role_lacks_server() {
        assert_eq!(
            allows(&policy(), &["developer"], "atlassian", &call("get_issue")),
            Err(Denial::ServerNotAllowed { server: "atlassian".into() })
        );
    }

    #[test]
    fn denies_methods_outside_the_role() {
        let p = policy();
        assert_eq!(
            allows(&p, &["readonly"], "github", &method("resources/list")),
            Err(Denial::MethodNotAllowed { method: "resources/list".into() })
        );
        assert!(allows(&p, &["readonly"], "github", &method("tools/list")).is_ok());
    }

    #[test]
    fn explains_the_rule_that_allowed() {
        let d = allows(&policy(), &["readonly", "developer"], "github", &call("create_issue"));
        assert_eq!(d, Ok("role developer: tool create_* (write)".into()));
        let d = allows(&policy(), &["contractor"], "github", &call("get_secret"));
        assert_eq!(d, Err(Denial::DeniedBy { role: "contractor".into(), rule: "tool *_secret*".into() }));
    }

    #[test]
    fn operations_come_from_configuration_then_annotations() {
        let mut p = policy();
        p.operations.clear();
        let mut catalog = Catalog::default();
        let reader = roles(&["reader"]);
        assert!(
            p.allows_message(&reader, "github", &call("search"), &catalog).is_err(),
            "unknown operation must be denied"
        );
        catalog.learn(
            "github",
            &[
                json!({"name": "search", "annotations": {"readOnlyHint": true}}),
                json!({"name": "purge", "annotations": {"readOnlyHint": false}}),
                json!({"name": "rename", "annotations": {"destructiveHint": false}}),
                json!({"name": "plain"}),
            ],
        );
        assert!(p.allows_message(&reader, "github", &call("search"), &catalog).is_ok());
        assert_eq!(catalog.operation("github", "purge"), Some(Operation::Delete));
        assert_eq!(catalog.operation("github", "rename"), Some(Operation::Write));
        assert_eq!(catalog.operation("github", "plain"), None);
        assert_eq!(catalog.operation("gitlab", "search"), None, "annotations are per server");
        let mut other = Catalog::default();
        other.merge_json(&catalog.to_json());
        assert_eq!(other.operation("github", "purge"), Some(Operation::Delete));
        assert_eq!(other.generation, 3);
        // Configuration wins over what a server claims.
        p.operations = vec![(Operation::Delete, pats(&["search"]))];
        assert!(p.allows_message(&reader, "github", &call("search"), &catalog).is_err());
    }

    #[test]
    fn server_only_checks_for_bodyless_requests() {
        let p = policy();
        assert!(p.allows_server(&roles(&["developer"]), "github").is_ok());
        assert_eq!(p.allows_server(&roles(&["nobody"]), "github"), Err(Denial::NoKnownRole));
    }
}
