//! The one place where a refusal becomes an HTTP status and a JSON-RPC error body.
//!
//! Client-facing messages say what was wrong with the request, never which policy rule
//! refused it (operators read that in the audit record).

use crate::headers::HeaderProblem;
use crate::jsonrpc::ParseError;
use crate::jwt::AuthError;
use crate::rbac::Denial;
use serde_json::{json, Value};
use std::fmt;

/// JSON-RPC error codes used by the gateway. -32700..-32600 are JSON-RPC's own; the
/// -3200x range is implementation-defined server errors.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const UNAUTHORIZED: i64 = -32001;
    pub const FORBIDDEN: i64 = -32003;
    pub const NOT_FOUND: i64 = -32004;
    pub const UNAVAILABLE: i64 = -32000;
    /// MCP 2026-07-28: an `Mcp-*` request header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
}

/// Everything the gateway refuses a request for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Auth(AuthError),
    Parse(ParseError),
    Forbidden(Denial),
    /// The path names no configured MCP server.
    UnknownServer,
    /// An HTTP method MCP's Streamable HTTP transport does not use.
    HttpMethod(String),
    /// A POST whose Content-Type is not JSON, or JSON in a charset other than UTF-8.
    ContentType,
    /// Request headers a server could read differently from the gateway.
    Header(HeaderProblem),
    BodyTooLarge {
        limit: usize,
    },
    /// A tool the caller may not use, answered as if it did not exist.
    UnknownTool {
        name: String,
        denial: Denial,
    },
    /// `Mcp-Method`, `Mcp-Name` or `Mcp-Param-*` disagree with the body (or cannot be
    /// decoded).
    HeaderMismatch {
        header: String,
    },
    /// The token lacks scopes every request needs.
    InsufficientScope {
        required: Vec<String>,
    },
    /// The `Mcp-Session-Id` is not one this caller opened through the gateway.
    UnknownSession {
        id: String,
        /// The session exists but another caller opened it.
        another_callers: bool,
    },
    /// The token's provider has no keys loaded yet (JWKS not fetched).
    KeysUnavailable {
        provider: String,
    },
    /// A caller pinned by a data residency rule, on a server with no replica inside it.
    OutsideResidency(crate::region::OutsideResidency),
}

impl fmt::Display for Refusal {
    /// The detailed reason, for the audit record.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Auth(e) => write!(f, "unauthenticated: {e}"),
            Refusal::Parse(e) => write!(f, "bad request: {e}"),
            Refusal::Forbidden(d) => write!(f, "forbidden: {d}"),
            Refusal::UnknownServer => write!(f, "no MCP server at this path"),
            Refusal::UnknownSession { id, another_callers } => {
                let id: String = id.chars().take(64).collect();
                let whose = if *another_callers {
                    "opened by another caller"
                } else {
                    "not opened through the gateway, or expired"
                };
                write!(f, "session {id:?} {whose}")
            }
            Refusal::HttpMethod(m) => write!(f, "HTTP method {m} not allowed"),
            Refusal::ContentType => write!(f, "Content-Type must be application/json (UTF-8)"),
            Refusal::Header(problem) => write!(f, "bad request: {problem}"),
            Refusal::BodyTooLarge { limit } => write!(f, "request body larger than {limit} bytes"),
            Refusal::InsufficientScope { required } => {
                write!(f, "token lacks scope {:?}", required.join(" "))
            }
            Refusal::KeysUnavailable { provider } => {
                write!(f, "no signing keys loaded for provider {provider:?}")
            }
            Refusal::UnknownTool { denial, .. } => write!(f, "forbidden (hidden as unknown tool): {denial}"),
            Refusal::HeaderMismatch { header } => write!(f, "{header} header disagrees with the body"),
            Refusal::OutsideResidency(outside) => write!(f, "outside data residency: {outside}"),
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal::Auth(e)
    }
}

impl From<ParseError> for Refusal {
    fn from(e: ParseError) -> Self {
        Refusal::Parse(e)
    }
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Self {
        Refusal::Forbidden(d)
    }
}

/// A complete local reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// Turns a refusal into the reply the client sees. `id` is the JSON-RPC id of the
/// refused message when it is known; `metadata_url` is the RFC 9728 protected resource
/// metadata URL that 401 and insufficient-scope challenges point to.
pub fn reply(refusal: &Refusal, id: Option<Value>, metadata_url: Option<&str>) -> Reply {
    let (status, code, message) = status_and_error(refusal);
    reply_with(refusal, status, code, &message, id, metadata_url)
}

/// [`reply`] with the status and error [`status_and_error`] gave for `refusal`.
pub fn reply_with(
    refusal: &Refusal,
    status: u32,
    code: i64,
    message: &str,
    id: Option<Value>,
    metadata_url: Option<&str>,
) -> Reply {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id.unwrap_or(Value::Null),
        "error": {"code": code, "message": message},
    });
    let mut headers = vec![("content-type", "application/json".to_owned())];
    let metadata = metadata_url.map(|url| format!(", resource_metadata=\"{url}\"")).unwrap_or_default();
    match refusal {
        Refusal::Auth(e) => headers.push(("www-authenticate", format!("{}{metadata}", www_authenticate(e)))),
        Refusal::InsufficientScope { required } => headers.push((
            "www-authenticate",
            format!(
                "Bearer realm=\"mcp-gateway\", error=\"insufficient_scope\", scope=\"{}\"{metadata}",
                required.join(" ")
            ),
        )),
        Refusal::KeysUnavailable { .. } => headers.push(("retry-after", "1".to_owned())),
        _ => {}
    }
    if let Refusal::HttpMethod(_) = refusal {
        headers.push(("allow", "POST, GET, DELETE".to_owned()));
    }
    Reply { status, headers, body: serde_json::to_vec(&body).unwrap_or_default() }
}

/// The HTTP status, JSON-RPC error code and message a refusal is answered with.
pub fn status_and_error(refusal: &Refusal) -> (u32, i64, String) {
    match refusal {
        Refusal::Auth(e) => (401, code::UNAUTHORIZED, format!("Unauthorized: {e}")),
        Refusal::Parse(e @ (ParseError::NotJson(_) | ParseError::Empty)) => {
            (400, code::PARSE_ERROR, format!("Parse error: {e}"))
        }
        Refusal::Parse(e @ ParseError::InvalidParams(_)) => (400, code::INVALID_PARAMS, format!("Invalid params: {e}")),
        Refusal::Parse(e) => (400, code::INVALID_REQUEST, format!("Invalid Request: {e}")),
        Refusal::Forbidden(_) => (403, code::FORBIDDEN, "Forbidden: not permitted by gateway policy".to_owned()),
        Refusal::UnknownServer => (404, code::NOT_FOUND, "Not Found: no MCP server at this path".to_owned()),
        // What an MCP server answers for a session it does not know: the client opens a
        // new one.
        Refusal::UnknownSession { .. } => (404, code::NOT_FOUND, "Not Found: session not found".to_owned()),
        Refusal::HttpMethod(m) => {
            (405, code::INVALID_REQUEST, format!("Method Not Allowed: {m}; MCP uses POST, GET and DELETE"))
        }
        Refusal::ContentType => (
            415,
            code::INVALID_REQUEST,
            "Unsupported Media Type: POST bodies must be application/json in UTF-8".to_owned(),
        ),
        Refusal::Header(problem) => (400, code::INVALID_REQUEST, format!("Invalid Request: {problem}")),
        Refusal::BodyTooLarge { limit } => {
            (413, code::INVALID_REQUEST, format!("Payload Too Large: request body exceeds {limit} bytes"))
        }
        Refusal::InsufficientScope { required } => {
            (403, code::FORBIDDEN, format!("Forbidden: token lacks required scope {:?}", required.join(" ")))
        }
        // What an MCP server says for a tool it does not have (HTTP 200, -32602).
        Refusal::UnknownTool { name, .. } => (200, code::INVALID_PARAMS, format!("Unknown tool: {name}")),
        Refusal::HeaderMismatch { header } => {
            (400, code::HEADER_MISMATCH, format!("Header mismatch: {header} header does not match the request body"))
        }
        Refusal::KeysUnavailable { .. } => {
            (503, code::UNAVAILABLE, "Service Unavailable: cannot verify tokens yet, retry shortly".to_owned())
        }
        // Never served elsewhere: the caller's data may not leave these regions.
        Refusal::OutsideResidency(outside) => {
            (503, code::UNAVAILABLE, format!("Service Unavailable: {outside}; the request is not sent elsewhere"))
        }
    }
}

/// RFC 6750 section 3: no error code when no credentials were sent at all.
fn www_authenticate(e: &AuthError) -> String {
    // A quoted-string parameter: no quotes or backslashes inside.
    let description = e.to_string().replace(['"', '\\'], "'");
    match e {
        AuthError::MissingToken => "Bearer realm=\"mcp-gateway\"".to_owned(),
        AuthError::MultipleAuthorizationHeaders | AuthError::NotBearer => {
            format!("Bearer realm=\"mcp-gateway\", error=\"invalid_request\", error_description=\"{description}\"")
        }
        _ => format!("Bearer realm=\"mcp-gateway\", error=\"invalid_token\", error_description=\"{description}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Reply) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn statuses_and_codes() {
        let table: Vec<(Refusal, u32, i64)> = vec![
            (Refusal::Auth(AuthError::MissingToken), 401, code::UNAUTHORIZED),
            (Refusal::Parse(ParseError::NotJson("x".into())), 400, -32700),
            (Refusal::Parse(ParseError::Empty), 400, -32700),
            (Refusal::Parse(ParseError::Batch), 400, -32600),
            (Refusal::Parse(ParseError::Invalid("x")), 400, -32600),
            (Refusal::Parse(ParseError::TooDeep { limit: 3 }), 400, -32600),
            (Refusal::Parse(ParseError::InvalidParams("x")), 400, -32602),
            (Refusal::Forbidden(Denial::NoKnownRole), 403, code::FORBIDDEN),
            (Refusal::UnknownServer, 404, code::NOT_FOUND),
            (Refusal::HttpMethod("PUT".into()), 405, -32600),
            (Refusal::ContentType, 415, -32600),
            (Refusal::BodyTooLarge { limit: 10 }, 413, -32600),
            (Refusal::InsufficientScope { required: vec!["mcp".into()] }, 403, code::FORBIDDEN),
            (Refusal::KeysUnavailable { provider: "idp".into() }, 503, code::UNAVAILABLE),
            (
                Refusal::OutsideResidency(crate::region::OutsideResidency {
                    rule: "eu".into(),
                    allowed: vec!["eu-west".into()],
                    server_region: None,
                }),
                503,
                code::UNAVAILABLE,
            ),
        ];
        for (refusal, status, code) in table {
            let r = reply(&refusal, None, None);
            assert_eq!(r.status, status, "{refusal:?}");
            assert_eq!(body(&r)["error"]["code"], code, "{refusal:?}");
            assert_eq!(body(&r)["jsonrpc"], "2.0");
            assert_eq!(r.header("content-type"), Some("application/json"));
        }
    }

    #[test]
    fn forbidden_carries_the_id_and_hides_the_rule() {
        let r = reply(
            &Refusal::Forbidden(Denial::TargetNotAllowed { method: "tools/call".into(), name: "create_issue".into() }),
            Some(json!(42)),
            None,
        );
        assert_eq!(body(&r)["id"], 42);
        assert!(!String::from_utf8_lossy(&r.body).contains("create_issue"));
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token() {
        let r = reply(&Refusal::Auth(AuthError::MissingToken), None, None);
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"mcp-gateway\""));
        let r = reply(&Refusal::Auth(AuthError::Expired), None, None);
        assert!(r.header("www-authenticate").unwrap().contains("error=\"invalid_token\""));
        assert_eq!(body(&r)["id"], Value::Null);
    }

    #[test]
    fn challenges_point_to_the_resource_metadata() {
        let url = "https://gw/.well-known/oauth-protected-resource/mcp/github";
        let r = reply(&Refusal::Auth(AuthError::MissingToken), None, Some(url));
        assert_eq!(
            r.header("www-authenticate"),
            Some(format!("Bearer realm=\"mcp-gateway\", resource_metadata=\"{url}\"").as_str())
        );
        let r = reply(
            &Refusal::InsufficientScope { required: vec!["mcp:read".into(), "mcp:write".into()] },
            Some(json!(3)),
            Some(url),
        );
        let h = r.header("www-authenticate").unwrap();
        assert!(h.contains("error=\"insufficient_scope\"") && h.contains("scope=\"mcp:read mcp:write\""), "{h}");
        assert!(h.contains(url));
        assert_eq!(body(&r)["id"], 3);
    }
}
