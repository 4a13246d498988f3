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
        Ok(Federation {
            members: raw.members,
            separator: raw.separator,
            conflicts: raw.conflicts,
            partial_failure: raw.partial_failure,
            member_timeout_ms: raw.member_timeout_ms,
        })
    }

    pub fn has_member(&self, server: &str) -> bool {
        self.members.iter().any(|m| m == server)
    }
}
