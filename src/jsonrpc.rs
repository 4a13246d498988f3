//! JSON-RPC 2.0 / MCP message parsing: just enough to decide on a message.
//!
//! The gateway needs the message kind, its `id`, its `method` and the thing the method
//! acts on (tool name, resource URI, prompt name). Anything that is not exactly one
//! well-formed JSON-RPC message is refused: batches were removed from MCP in 2025-06-18
//! and a gateway that checked only one element of a batch could be bypassed.

use serde_json::{Map, Value};
use std::fmt;

/// Why a body is not an acceptable MCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The body is empty.
    Empty,
    /// The body is not JSON (or not UTF-8). Maps to JSON-RPC -32700.
    NotJson(String),
    /// The body nests deeper than the configured limit.
    TooDeep { limit: usize },
    /// The body is a JSON array: a JSON-RPC batch.
    Batch,
    /// JSON, but not a valid JSON-RPC message. Maps to -32600.
    Invalid(&'static str),
    /// A valid message whose `params` do not fit its method. Maps to -32602.
    InvalidParams(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => write!(f, "empty request body"),
            ParseError::NotJson(e) => write!(f, "body is not valid JSON: {e}"),
            ParseError::TooDeep { limit } => {
                write!(f, "JSON nesting deeper than {limit} levels")
            }
            ParseError::Batch => write!(
                f,
                "JSON-RPC batches are not supported (removed in MCP 2025-06-18); send one message per request"
            ),
            ParseError::Invalid(why) => write!(f, "invalid JSON-RPC message: {why}"),
            ParseError::InvalidParams(why) => write!(f, "invalid params: {why}"),
        }
    }
}

/// What kind of JSON-RPC message the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a reply.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `result` or `error`: the client answering a server request (sampling, elicitation).
    Response,
}

/// The object of an MCP method: what policy is evaluated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tool(String),
    Resource(String),
    Prompt(String),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Tool(n) | Target::Resource(n) | Target::Prompt(n) => n,
        }
    }
}

/// One parsed MCP message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    /// The JSON-RPC id, when present (string or number).
    pub id: Option<Value>,
    /// The method, empty for responses.
    pub method: String,
    pub target: Option<Target>,
    /// `params.arguments` of a `tools/call` / `prompts/get` (for the audit record).
    pub arguments: Option<Value>,
}

/// Best effort: the `id` of a body that failed to parse as a whole, so even error
/// replies can carry it. Only looks at a top-level object.
pub fn salvage_id(body: &[u8], max_depth: usize) -> Option<Value> {
    if check_depth(body, max_depth).is_err() {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("id").filter(|id| is_valid_id(id)).cloned()
}

/// Parses one MCP message from a request body.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Message, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    check_depth(body, max_depth)?;
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => return Err(ParseError::Batch),
        _ => return Err(ParseError::Invalid("not a JSON object")),
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(ParseError::Invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let id = match obj.get("id") {
        None => None,
        Some(id) if is_valid_id(id) => Some(id.clone()),
        Some(_) => return Err(ParseError::Invalid("\"id\" must be a string or a number")),
    };
    match obj.get("method") {
        Some(Value::String(method)) => {
            if obj.contains_key("result") || obj.contains_key("error") {
                return Err(ParseError::Invalid("a message cannot carry both \"method\" and \"result\"/\"error\""));
            }
            let params = match obj.get("params") {
                None => None,
                Some(Value::Object(p)) => Some(p),
                Some(_) => return Err(ParseError::Invalid("\"params\" must be an object")),
            };
            let (target, arguments) = target_of(method, params)?;
            Ok(Message {
                kind: if id.is_some() { Kind::Request } else { Kind::Notification },
                id,
                method: method.clone(),
                target,
                arguments,
            })
        }
        Some(_) => Err(ParseError::Invalid("\"method\" must be a string")),
        None => {
            let has_result = obj.contains_key("result");
            let has_error = obj.contains_key("error");
            if has_result == has_error {
                return Err(ParseError::Invalid(
                    "a message needs \"method\", or exactly one of \"result\" and \"error\"",
                ));
            }
            if id.is_none() {
                return Err(ParseError::Invalid("a response needs an \"id\""));
            }
            Ok(Message { kind: Kind::Response, id, method: String::new(), target: None, arguments: None })
        }
    }
}

fn is_valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_))
}

type TargetAndArgs = (Option<Target>, Option<Value>);

/// Extracts what a method acts on. Methods that name a tool, resource or prompt must
/// name it; otherwise policy could not be evaluated and the call is refused.
fn target_of(method: &str, params: Option<&Map<String, Value>>) -> Result<TargetAndArgs, ParseError> {
    let field = |name: &'static str, why: &'static str| -> Result<String, ParseError> {
        params
            .and_then(|p| p.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(ParseError::InvalidParams(why))
    };
    let arguments = || params.and_then(|p| p.get("arguments")).cloned();
    Ok(match method {
        "tools/call" => (Some(Target::Tool(field("name", "tools/call needs a string \"name\"")?)), arguments()),
        "prompts/get" => (Some(Target::Prompt(field("name", "prompts/get needs a string \"name\"")?)), arguments()),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            (Some(Target::Resource(field("uri", "this method needs a string \"uri\"")?)), None)
        }
        _ => (None, None),
    })
}

/// Rejects JSON nested deeper than `limit` before handing it to the parser, in one pass
/// that tracks strings so brackets inside them do not count.
fn check_depth(body: &[u8], limit: usize) -> Result<(), ParseError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return Err(ParseError::TooDeep { limit });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_str(s: &str) -> Result<Message, ParseError> {
        parse(s.as_bytes(), 32)
    }

    #[test]
    fn parses_tool_call_with_name_and_arguments() {
        let m = parse_str(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"file_path":"/public/a"}}}"#,
        )
        .unwrap();
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.id, Some(json!(7)));
        assert_eq!(m.method, "tools/call");
        assert_eq!(m.target, Some(Target::Tool("read_file".into())));
        assert_eq!(m.arguments, Some(json!({"file_path": "/public/a"})));
    }

    #[test]
    fn parses_resource_read_and_prompt_get() {
        let m =
            parse_str(r#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///x"}}"#).unwrap();
        assert_eq!(m.target, Some(Target::Resource("file:///x".into())));
        let m = parse_str(r#"{"jsonrpc":"2.0","id":"b","method":"prompts/get","params":{"name":"p"}}"#).unwrap();
        assert_eq!(m.target, Some(Target::Prompt("p".into())));
    }

    #[test]
    fn notifications_and_responses_are_recognised() {
        let m = parse_str(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(m.kind, Kind::Notification);
        let m = parse_str(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#).unwrap();
        assert_eq!(m.kind, Kind::Response);
    }

    #[test]
    fn refuses_bad_input_with_the_right_error() {
        type Expect = fn(&ParseError) -> bool;
        let cases: &[(&[u8], Expect)] = &[
            (b"", |e| *e == ParseError::Empty),
            (b"  \n", |e| *e == ParseError::Empty),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth", |e| matches!(e, ParseError::NotJson(_))),
            (b"\xff\xfe{}", |e| matches!(e, ParseError::NotJson(_))),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xc3\x28\"}", |e| matches!(e, ParseError::NotJson(_))),
            (b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]", |e| *e == ParseError::Batch),
            (b"[]", |e| *e == ParseError::Batch),
            (b"42", |e| matches!(e, ParseError::Invalid(_))),
            (b"{\"id\":1,\"method\":\"ping\"}", |e| matches!(e, ParseError::Invalid(_))),
            (b"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"ping\"}", |e| matches!(e, ParseError::Invalid(_))),
            (b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}", |e| matches!(e, ParseError::Invalid(_))),
            (b"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"ping\"}", |e| matches!(e, ParseError::Invalid(_))),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}", |e| matches!(e, ParseError::Invalid(_))),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":[1]}", |e| {
                matches!(e, ParseError::Invalid(_))
            }),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1}", |e| matches!(e, ParseError::Invalid(_))),
            (b"{\"jsonrpc\":\"2.0\",\"result\":{}}", |e| matches!(e, ParseError::Invalid(_))),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{}}", |e| {
                matches!(e, ParseError::InvalidParams(_))
            }),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"}", |e| {
                matches!(e, ParseError::InvalidParams(_))
            }),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"resources/read\",\"params\":{\"uri\":3}}", |e| {
                matches!(e, ParseError::InvalidParams(_))
            }),
        ];
        for (body, expected) in cases {
            let err = parse(body, 32).expect_err(&String::from_utf8_lossy(body));
            assert!(expected(&err), "{:?} gave {err:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn refuses_deep_nesting_before_parsing() {
        let deep = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{{\"a\":{}{}}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(parse(deep.as_bytes(), 32), Err(ParseError::TooDeep { limit: 32 }));
        // Brackets inside strings do not count.
        let quoted = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{{\"a\":\"{}\\\"\"}}}}",
            "[".repeat(100)
        );
        assert!(parse(quoted.as_bytes(), 32).is_ok());
    }

    #[test]
    fn salvages_the_id_of_an_invalid_message() {
        assert_eq!(salvage_id(br#"{"jsonrpc":"2.0","id":9,"method":"tools/call"}"#, 32), Some(json!(9)));
        assert_eq!(salvage_id(b"{not json", 32), None);
    }
}
