//! Role-based access control: which roles may reach which server, send which MCP
//! methods, and call which tools / read which resources / get which prompts.
//!
//! Default deny: a request is allowed only when one of the caller's roles allows all of
//! it (server, method and target together). Roles a token names but the policy does not
//! define grant nothing.

use crate::jsonrpc::{Kind, Message, Target};
use glob::Pattern;
use std::collections::BTreeMap;
use std::fmt;

/// A compiled role.
#[derive(Debug, Clone)]
pub struct Role {
    pub servers: Vec<Pattern>,
    pub methods: Vec<Pattern>,
    pub tools: Vec<Pattern>,
    pub resources: Vec<Pattern>,
    pub prompts: Vec<Pattern>,
}

/// All roles, compiled once at configure time.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub roles: BTreeMap<String, Role>,
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
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::NoKnownRole => write!(f, "no role of the caller is defined in the policy"),
            Denial::ServerNotAllowed { server } => write!(f, "no role allows server {server:?}"),
            Denial::MethodNotAllowed { method } => write!(f, "no role allows method {method:?}"),
            Denial::TargetNotAllowed { method, name } => {
                write!(f, "no role allows {method} on {name:?}")
            }
        }
    }
}

/// A successful decision names the role that allowed the request.
pub type Decision = Result<String, Denial>;

fn any_match(patterns: &[Pattern], value: &str) -> bool {
    patterns.iter().any(|p| p.matches(value))
}

impl Policy {
    fn known_roles<'a>(
        &'a self,
        roles: &'a [String],
    ) -> impl Iterator<Item = (&'a String, &'a Role)> + 'a {
        roles
            .iter()
            .filter_map(|name| self.roles.get_key_value(name.as_str()))
    }

    /// May these roles reach this server at all? Used for requests without a body
    /// (GET streams, DELETE of a session).
    pub fn allows_server(&self, roles: &[String], server: &str) -> Decision {
        let mut known = self.known_roles(roles).peekable();
        if known.peek().is_none() {
            return Err(Denial::NoKnownRole);
        }
        known
            .find(|(_, role)| any_match(&role.servers, server))
            .map(|(name, _)| name.clone())
            .ok_or_else(|| Denial::ServerNotAllowed {
                server: server.to_owned(),
            })
    }

    /// May these roles send this message to this server?
    pub fn allows_message(&self, roles: &[String], server: &str, message: &Message) -> Decision {
        self.allows_server(roles, server)?;
        let on_server = || {
            self.known_roles(roles)
                .filter(|(_, r)| any_match(&r.servers, server))
        };
        if message.kind == Kind::Response {
            // Answers to the server's own requests (sampling, elicitation) carry no method.
            return self.allows_server(roles, server);
        }
        let mut with_method = on_server()
            .filter(|(_, r)| any_match(&r.methods, &message.method))
            .peekable();
        if with_method.peek().is_none() {
            return Err(Denial::MethodNotAllowed {
                method: message.method.clone(),
            });
        }
        let Some(target) = &message.target else {
            return with_method
                .next()
                .map(|(n, _)| n.clone())
                .ok_or(Denial::MethodNotAllowed {
                    method: message.method.clone(),
                });
        };
        with_method
            .find(|(_, r)| {
                let patterns = match target {
                    Target::Tool(_) => &r.tools,
                    Target::Resource(_) => &r.resources,
                    Target::Prompt(_) => &r.prompts,
                };
                any_match(patterns, target.name())
            })
            .map(|(n, _)| n.clone())
            .ok_or_else(|| Denial::TargetNotAllowed {
                method: message.method.clone(),
                name: target.name().to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::parse;

    fn pats(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|p| Pattern::new(p).unwrap()).collect()
    }

    /// The seed's permission matrix.
    fn policy() -> Policy {
        let mut roles = BTreeMap::new();
        roles.insert(
            "admin".into(),
            Role {
                servers: pats(&["*"]),
                methods: pats(&["*"]),
                tools: pats(&["*"]),
                resources: pats(&["*"]),
                prompts: pats(&["*"]),
            },
        );
        roles.insert(
            "developer".into(),
            Role {
                servers: pats(&["github", "filesystem"]),
                methods: pats(&["*"]),
                tools: pats(&["get_*", "list_*", "create_*"]),
                resources: vec![],
                prompts: vec![],
            },
        );
        roles.insert(
            "readonly".into(),
            Role {
                servers: pats(&["github", "filesystem", "atlassian"]),
                methods: pats(&[
                    "initialize",
                    "notifications/*",
                    "ping",
                    "tools/list",
                    "tools/call",
                ]),
                tools: pats(&["get_*", "list_*"]),
                resources: vec![],
                prompts: vec![],
            },
        );
        Policy { roles }
    }

    fn call(tool: &str) -> Message {
        parse(
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}"}}}}"#
            )
            .as_bytes(),
            16,
        )
        .unwrap()
    }

    fn method(m: &str) -> Message {
        parse(
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{m}"}}"#).as_bytes(),
            16,
        )
        .unwrap()
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
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
        ];
        for (r, server, tool, allowed) in table {
            let d = p.allows_message(&roles(r), server, &call(tool));
            assert_eq!(d.is_ok(), *allowed, "{r:?} {server} {tool}: {d:?}");
        }
    }

    #[test]
    fn denies_tool_call_when_role_lacks_server() {
        assert_eq!(
            policy().allows_message(&roles(&["developer"]), "atlassian", &call("get_issue")),
            Err(Denial::ServerNotAllowed {
                server: "atlassian".into()
            })
        );
    }

    #[test]
    fn denies_methods_outside_the_role() {
        let p = policy();
        assert_eq!(
            p.allows_message(&roles(&["readonly"]), "github", &method("resources/list")),
            Err(Denial::MethodNotAllowed {
                method: "resources/list".into()
            })
        );
        assert!(p
            .allows_message(&roles(&["readonly"]), "github", &method("tools/list"))
            .is_ok());
    }

    #[test]
    fn names_the_role_that_allowed() {
        assert_eq!(
            policy().allows_message(
                &roles(&["readonly", "developer"]),
                "github",
                &call("create_issue")
            ),
            Ok("developer".into())
        );
    }

    #[test]
    fn server_only_checks_for_bodyless_requests() {
        let p = policy();
        assert!(p.allows_server(&roles(&["developer"]), "github").is_ok());
        assert_eq!(
            p.allows_server(&roles(&["nobody"]), "github"),
            Err(Denial::NoKnownRole)
        );
    }
}
