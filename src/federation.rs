//! Federated (virtual) servers: one MCP endpoint over several member servers, served by
//! the sidecar. The filter authenticates the caller of the virtual server and hands the
//! sidecar a delegation ([`crate::delegation`]); every call the sidecar dispatches to a
//! member comes back through the gateway with it, and is decided there like a call to
//! the member itself. This module holds the configuration both sides read.

use crate::config::{err, ConfigError};
use serde::Deserialize;

/// `servers[].federation` as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFederation {
    /// The member servers (names of MCP servers in `servers`), in order: the order of
    /// merged lists, and who wins a name under `first_wins`.
    pub members: Vec<String>,
    /// Between the member's name and the tool's, prompt's or resource template's
    /// (`github__create_issue`).
    #[serde(default = "default_separator")]
    pub separator: String,
    /// When names are prefixed with their member.
    #[serde(default)]
    pub conflicts: Conflicts,
    /// A member that fails a list: `partial` returns what the others answered and names
    /// the missing members in `_meta`; `fail` fails the whole list.
    #[serde(default)]
    pub partial_failure: PartialFailure,
    /// How long one member may take to answer, in milliseconds.
    #[serde(default = "default_member_timeout_ms")]
    pub member_timeout_ms: u64,
    /// Content-based routing: tools several members offer under one name (`search`,
    /// `get_issue`) are offered once, under that name, and each call goes to the member
    /// of the first rule that matches it.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Where a routed call that matches no rule goes; without it, such a call gets a
    /// JSON-RPC error naming what would route it.
    pub default_member: Option<String>,
}

/// One content-based routing rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The tool names it routes (a glob: `search`, `jira_*`).
    pub tool: String,
    /// Arguments the call must have (present and not null), all of them.
    #[serde(default)]
    pub arguments: Vec<String>,
    /// The scheme a `uri` argument must have (`file`, `github`).
    pub uri_scheme: Option<String>,
    /// The member that gets the call.
    pub member: String,
}

fn default_separator() -> String {
    "__".into()
}

fn default_member_timeout_ms() -> u64 {
    10_000
}

/// When a name offered through the virtual server is prefixed with its member.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflicts {
    /// Always: `github__create_issue`.
    #[default]
    AlwaysPrefix,
    /// Only names two members offer; the others keep their own.
    PrefixOnConflict,
    /// No prefixes: the first member (in `members` order) offering a name owns it.
    FirstWins,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialFailure {
    #[default]
    Partial,
    Fail,
}

/// A compiled `federation` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    pub members: Vec<String>,
    pub separator: String,
    pub conflicts: Conflicts,
    pub partial_failure: PartialFailure,
    pub member_timeout_ms: u64,
    pub routes: Vec<Route>,
    pub default_member: Option<String>,
}

/// A compiled [`RawRoute`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub tool: glob::Pattern,
    pub arguments: Vec<String>,
    pub uri_scheme: Option<String>,
    pub member: String,
}

impl Route {
    fn matches(&self, tool: &str, arguments: Option<&serde_json::Map<String, serde_json::Value>>) -> bool {
        let has = |name: &str| arguments.and_then(|a| a.get(name)).is_some_and(|v| !v.is_null());
        let scheme_ok = self.uri_scheme.as_ref().is_none_or(|want| {
            let uri = arguments.and_then(|a| a.get("uri")).and_then(serde_json::Value::as_str);
            uri.and_then(|u| u.split_once(':')).is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case(want))
        });
        self.tool.matches(tool) && self.arguments.iter().all(|a| has(a)) && scheme_ok
    }
}

impl Federation {
    /// Compiles the section (errors relative to it); `mcp_servers` are the names of the
    /// configuration's MCP servers.
    pub fn compile(raw: RawFederation, own_name: &str, mcp_servers: &[&str]) -> Result<Federation, ConfigError> {
        if raw.members.is_empty() {
            return Err(err("members", "name at least one member server"));
        }
        for (i, m) in raw.members.iter().enumerate() {
            if m == own_name || !mcp_servers.contains(&m.as_str()) {
                return Err(err(format!("members[{i}]"), format!("{m:?} is not an MCP server of this configuration")));
            }
            if raw.members.iter().take(i).any(|o| o == m) {
                return Err(err(format!("members[{i}]"), format!("{m:?} is listed twice")));
            }
        }
        let separator_ok = !raw.separator.is_empty()
            && raw.separator.len() <= 8
            && raw.separator.bytes().all(|b| b.is_ascii_punctuation() && b != b'/' && b != b'*');
        if !separator_ok {
            return Err(err("separator", "1 to 8 ASCII punctuation characters other than / and *"));
        }
        if !(100..=300_000).contains(&raw.member_timeout_ms) {
            return Err(err("member_timeout_ms", "must be between 100 and 300000"));
        }
        let member = |at: String, m: &str| {
            if raw.members.iter().any(|x| x == m) {
                Ok(m.to_owned())
            } else {
                Err(err(at, format!("{m:?} is not one of members")))
            }
        };
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let tool = glob::Pattern::new(&r.tool)
                    .map_err(|e| err(format!("routes[{i}].tool"), format!("{:?}: {e}", r.tool)))?;
                if r.arguments.iter().any(String::is_empty) {
                    return Err(err(format!("routes[{i}].arguments"), "argument names are non-empty"));
                }
                Ok(Route {
                    tool,
                    arguments: r.arguments.clone(),
                    uri_scheme: r.uri_scheme.clone(),
                    member: member(format!("routes[{i}].member"), &r.member)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let default_member = raw.default_member.as_deref().map(|m| member("default_member".into(), m)).transpose()?;
        Ok(Federation {
            members: raw.members,
            separator: raw.separator,
            conflicts: raw.conflicts,
            partial_failure: raw.partial_failure,
            member_timeout_ms: raw.member_timeout_ms,
            routes,
            default_member,
        })
    }

    pub fn has_member(&self, server: &str) -> bool {
        self.members.iter().any(|m| m == server)
    }

    /// `member{separator}name` split into a member and its own name, when names carry
    /// prefixes (not under `first_wins`).
    pub fn prefixed<'a>(&self, name: &'a str) -> Option<(&'a str, &'a str)> {
        if self.conflicts == Conflicts::FirstWins {
            return None;
        }
        let (member, own) = name.split_once(self.separator.as_str())?;
        (self.has_member(member) && !own.is_empty()).then_some((member, own))
    }

    /// True when calls to `tool` are routed by content (some rule names it).
    pub fn is_routed(&self, tool: &str) -> bool {
        self.routes.iter().any(|r| r.tool.matches(tool))
    }

    /// The member a call to a routed `tool` goes to: the first rule that matches, else
    /// the default member.
    pub fn route(&self, tool: &str, arguments: Option<&serde_json::Map<String, serde_json::Value>>) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.matches(tool, arguments))
            .map(|r| r.member.as_str())
            .or(self.default_member.as_deref())
    }

    /// What would route a call to `tool`, for the error when nothing does.
    pub fn route_hint(&self, tool: &str) -> String {
        let ways: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.tool.matches(tool))
            .map(|r| {
                let mut what: Vec<String> = r.arguments.iter().map(|a| format!("argument {a}")).collect();
                if let Some(s) = &r.uri_scheme {
                    what.push(format!("a {s}: uri"));
                }
                format!("{} for {}", if what.is_empty() { "any call".into() } else { what.join(" and ") }, r.member)
            })
            .collect();
        format!("no member for this call to {tool}: give {}", ways.join(", or "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn federation(v: Value) -> Result<Federation, ConfigError> {
        Federation::compile(serde_json::from_value(v).unwrap(), "all", &["github", "filesystem", "atlassian"])
    }

    fn seed() -> Federation {
        federation(json!({
            "members": ["github", "filesystem", "atlassian"],
            "routes": [
                {"tool": "search", "arguments": ["repository"], "member": "github"},
                {"tool": "search", "arguments": ["file_path"], "member": "filesystem"},
                {"tool": "search", "arguments": ["issue_key"], "member": "atlassian"},
                {"tool": "read", "uri_scheme": "file", "member": "filesystem"},
                {"tool": "jira_*", "member": "atlassian"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_first_rule_that_matches_picks_the_member() {
        let f = seed();
        let args = |v: Value| v.as_object().cloned();
        let route = |tool: &str, v: Value| f.route(tool, args(v).as_ref()).map(str::to_owned);
        assert_eq!(route("search", json!({"repository": "acme/website"})).as_deref(), Some("github"));
        assert_eq!(route("search", json!({"file_path": "/public"})).as_deref(), Some("filesystem"));
        assert_eq!(route("search", json!({"issue_key": "OPS-1", "repository": "x"})).as_deref(), Some("github"));
        assert_eq!(route("search", json!({"issue_key": "OPS-1"})).as_deref(), Some("atlassian"));
        assert_eq!(route("search", json!({"repository": null})), None, "a null argument is no argument");
        assert_eq!(route("read", json!({"uri": "FILE:///x"})).as_deref(), Some("filesystem"));
        assert_eq!(route("read", json!({"uri": "github://x"})), None);
        assert_eq!(route("jira_search", json!({})).as_deref(), Some("atlassian"));
        assert!(f.is_routed("search") && f.is_routed("jira_x") && !f.is_routed("get_repository"));
        assert_eq!(
            f.route_hint("search"),
            "no member for this call to search: give argument repository for github, or argument file_path for filesystem, or argument issue_key for atlassian"
        );
        let mut with_default = seed();
        with_default.default_member = Some("github".into());
        assert_eq!(with_default.route("search", None), Some("github"));
    }

    #[test]
    fn bad_federations_name_the_field() {
        let field = |v: Value| federation(v).unwrap_err().field;
        assert_eq!(field(json!({"members": []})), "members");
        assert_eq!(field(json!({"members": ["gitlab"]})), "members[0]");
        assert_eq!(field(json!({"members": ["all"]})), "members[0]");
        assert_eq!(field(json!({"members": ["github", "github"]})), "members[1]");
        assert_eq!(field(json!({"members": ["github"], "separator": "/"})), "separator");
        assert_eq!(field(json!({"members": ["github"], "member_timeout_ms": 5})), "member_timeout_ms");
        assert_eq!(
            field(json!({"members": ["github"], "routes": [{"tool": "[", "member": "github"}]})),
            "routes[0].tool"
        );
        assert_eq!(
            field(json!({"members": ["github"], "routes": [{"tool": "s", "member": "filesystem"}]})),
            "routes[0].member"
        );
        assert_eq!(field(json!({"members": ["github"], "default_member": "atlassian"})), "default_member");
    }
}
