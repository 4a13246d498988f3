//! JSON-RPC 2.0 / MCP message parsing: just enough to decide on a message.
//!
//! The gateway needs the message kind, its `id`, its `method` and the thing the method
//! acts on (tool name, resource URI, prompt name). Anything that is not exactly one
//! well-formed JSON-RPC message is refused: batches were removed from MCP in 2025-06-18
//! and a gateway that checked only one element of a batch could be bypassed.
//!
//! Parsing is strict so that the message the gateway authorizes has one reading only:
//! a key repeated in any object is refused (parsers disagree on which copy wins), and in
//! the envelope, in `params` and in the objects policy reads (`arguments`, `ref`), keys
//! that are equal under Unicode case folding are refused, as is a key that only folds to
//! a field the gateway reads (`Params`, `paramſ`, `nameK`): servers written with Go's
//! `encoding/json` match field names that way. Method names that differ from a known MCP
//! method only by case are refused too.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;
use unicase::UniCase;

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
    /// A key appears twice in one object. Maps to -32600.
    DuplicateKey(String),
    /// A key that other parsers would read as another one (case or Unicode folding).
    /// Maps to -32600.
    AmbiguousKey { at: &'static str, key: String },
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
            ParseError::DuplicateKey(key) => write!(f, "duplicate key {key:?} in a JSON object"),
            ParseError::AmbiguousKey { at, key } => {
                write!(f, "key {key:?} in {at} differs from another field only by letter case")
            }
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
    /// A task (`tasks/get`, `tasks/result`, `tasks/cancel`), decided like the tool call
    /// that created it.
    Task(String),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Tool(n) | Target::Resource(n) | Target::Prompt(n) | Target::Task(n) => n,
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
    /// A `tools/call` that asks to run as a task (`params.task`): its reply names the task.
    pub creates_task: bool,
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

/// The members of the JSON-RPC envelope.
pub const ENVELOPE_FIELDS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];

/// Members of `params` the gateway reads (or that name what a call acts on).
const PARAMS_FIELDS: &[&str] = &["name", "arguments", "uri", "ref", "argument", "context", "_meta", "taskId", "task"];

/// Members of a `completion/complete` reference.
const REF_FIELDS: &[&str] = &["type", "name", "uri"];

/// Every method of MCP 2025-06-18, 2025-11-25 and 2026-07-28. A method that equals one of
/// these only under case folding is refused, since a case-insensitive server would run it
/// while policy looked up another name.
pub const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "tasks/get",
    "tasks/result",
    "tasks/cancel",
    "tasks/list",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/resources/updated",
    "notifications/resources/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/elicitation/complete",
    "notifications/tasks/status",
];

/// Equality under Unicode case folding (`ſ` = `s`, `K` = `k`, `ß` = `ss`).
pub fn folds_equal(a: &str, b: &str) -> bool {
    // Two ASCII strings fold equal exactly when they are equal ignoring ASCII case; a
    // non-ASCII one can fold to ASCII (the Kelvin sign folds to `k`), so it goes the
    // full way.
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        UniCase::unicode(a) == UniCase::unicode(b)
    }
}

/// Objects up to this many keys are checked pair by pair (no hashing, no allocation);
/// larger ones through a set of folded keys, so the cost stays linear.
const PAIRWISE_KEYS: usize = 16;

/// Refuses an object whose keys could be read as other keys: two keys equal under case
/// folding, or a key that folds to one of `known` without being it.
pub fn check_keys(object: &Map<String, Value>, known: &[&str], at: &'static str) -> Result<(), ParseError> {
    let ambiguous = |key: &String| ParseError::AmbiguousKey { at, key: key.chars().take(64).collect() };
    for key in object.keys() {
        if !known.contains(&key.as_str()) && known.iter().any(|k| folds_equal(k, key)) {
            return Err(ambiguous(key));
        }
    }
    match first_folded_duplicate(object.keys().map(String::as_str), object.len()) {
        Some(key) => Err(ParseError::AmbiguousKey { at, key: key.chars().take(64).collect() }),
        None => Ok(()),
    }
}

/// The first key that folds equal to an earlier one.
fn first_folded_duplicate<'a>(keys: impl Iterator<Item = &'a str> + Clone, len: usize) -> Option<&'a str> {
    if len <= PAIRWISE_KEYS {
        duplicate_pairwise(keys)
    } else {
        duplicate_hashed(keys, len)
    }
}

fn duplicate_pairwise<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    keys.clone()
        .enumerate()
        .find(|(i, key)| keys.clone().take(*i).any(|earlier| folds_equal(earlier, key)))
        .map(|(_, k)| k)
}

fn duplicate_hashed<'a>(mut keys: impl Iterator<Item = &'a str>, len: usize) -> Option<&'a str> {
    let mut seen = HashSet::with_capacity(len);
    keys.find(|key| !seen.insert(UniCase::unicode(*key)))
}

/// A JSON value read with duplicate keys refused at every depth.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(de::Error::custom(format_args!("{DUPLICATE}{shown}")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Marks the duplicate-key error inside serde_json's error message.
const DUPLICATE: &str = "duplicate key: ";

/// Reads JSON strictly: UTF-8, no duplicate keys anywhere.
pub fn parse_strict(body: &[u8]) -> Result<Value, ParseError> {
    match serde_json::from_slice::<Strict>(body) {
        Ok(Strict(value)) => Ok(value),
        Err(e) => {
            let text = e.to_string();
            match text.strip_prefix(DUPLICATE) {
                Some(rest) => {
                    // serde_json appends " at line L column C".
                    let key = rest.rsplit_once(" at line ").map_or(rest, |(k, _)| k);
                    Err(ParseError::DuplicateKey(key.to_owned()))
                }
                None => Err(ParseError::NotJson(text)),
            }
        }
    }
}

/// Parses one MCP message from a request body.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Message, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    check_depth(body, max_depth)?;
    let value = parse_strict(body)?;
    let mut obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => return Err(ParseError::Batch),
        _ => return Err(ParseError::Invalid("not a JSON object")),
    };
    check_keys(&obj, ENVELOPE_FIELDS, "the JSON-RPC message")?;
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
            if !KNOWN_METHODS.contains(&method.as_str()) && KNOWN_METHODS.iter().any(|m| folds_equal(m, method)) {
                return Err(ParseError::Invalid("method differs from an MCP method only by letter case"));
            }
            if obj.contains_key("result") || obj.contains_key("error") {
                return Err(ParseError::Invalid("a message cannot carry both \"method\" and \"result\"/\"error\""));
            }
            let params = match obj.get("params") {
                None => None,
                Some(Value::Object(p)) => {
                    check_keys(p, PARAMS_FIELDS, "params")?;
                    Some(p)
                }
                Some(_) => return Err(ParseError::Invalid("\"params\" must be an object")),
            };
            let (target, takes_arguments) = target_of(method, params)?;
            let creates_task = method == "tools/call" && params.is_some_and(|p| p.contains_key("task"));
            let method = method.clone();
            // Moved out of the parsed message, not copied: they can be large.
            let arguments = if takes_arguments { take_arguments(&mut obj) } else { None };
            Ok(Message {
                kind: if id.is_some() { Kind::Request } else { Kind::Notification },
                id,
                method,
                target,
                arguments,
                creates_task,
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
            Ok(Message {
                kind: Kind::Response,
                id,
                method: String::new(),
                target: None,
                arguments: None,
                creates_task: false,
            })
        }
    }
}

fn is_valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_))
}

/// What a method acts on, and whether it takes `arguments` (already checked).
type TargetAndArgs = (Option<Target>, bool);

/// `params.arguments`, when it is an object, moved out of the message.
fn take_arguments(obj: &mut Map<String, Value>) -> Option<Value> {
    let Some(Value::Object(params)) = obj.get_mut("params") else { return None };
    params.remove("arguments").filter(Value::is_object)
}

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
    let arguments = || -> Result<bool, ParseError> {
        match params.and_then(|p| p.get("arguments")) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Object(args)) => {
                check_keys(args, &[], "arguments")?;
                Ok(true)
            }
            Some(_) => Err(ParseError::InvalidParams("\"arguments\" must be an object")),
        }
    };
    Ok(match method {
        "tools/call" => (Some(Target::Tool(field("name", "tools/call needs a string \"name\"")?)), arguments()?),
        "prompts/get" => (Some(Target::Prompt(field("name", "prompts/get needs a string \"name\"")?)), arguments()?),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            (Some(Target::Resource(field("uri", "this method needs a string \"uri\"")?)), false)
        }
        // A completion reveals values of a prompt's arguments or a resource template's
        // variables: it is decided like getting that prompt or reading that resource.
        "completion/complete" => {
            let Some(Value::Object(r)) = params.and_then(|p| p.get("ref")) else {
                return Err(ParseError::InvalidParams("completion/complete needs a \"ref\" object"));
            };
            check_keys(r, REF_FIELDS, "params.ref")?;
            let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
            let target = match r.get("type").and_then(Value::as_str) {
                Some("ref/prompt") => Target::Prompt(
                    text("name").ok_or(ParseError::InvalidParams("a ref/prompt needs a string \"name\""))?,
                ),
                Some("ref/resource") => Target::Resource(
                    text("uri").ok_or(ParseError::InvalidParams("a ref/resource needs a string \"uri\""))?,
                ),
                _ => return Err(ParseError::InvalidParams("\"ref.type\" must be ref/prompt or ref/resource")),
            };
            (Some(target), false)
        }
        "tasks/get" | "tasks/result" | "tasks/cancel" => {
            (Some(Target::Task(field("taskId", "this method needs a string \"taskId\"")?)), false)
        }
        _ => (None, false),
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
    /// The pair-by-pair check and the hashed one find the same duplicates, over key sets
    /// mixing ASCII case, characters that fold to ASCII, and multi-character folds.
    #[test]
    fn both_duplicate_checks_agree() {
        let variants = [
            "k",
            "K",
            "\u{212A}",
            "s",
            "S",
            "\u{17F}",
            "ss",
            "SS",
            "\u{DF}",
            "\u{1E9E}",
            "name",
            "NAME",
            "Name",
            "na\u{212A}e",
            "i",
            "I",
            "\u{130}",
            "\u{131}",
            "file_path",
            "FILE_PATH",
            "file_pat\u{210C}",
            "a",
            "b",
        ];
        let mut state = 0x2545_f491_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut found, mut clean) = (0, 0);
        for _ in 0..20_000 {
            let len = (next() % 20) as usize;
            let keys: Vec<&str> = (0..len).map(|_| variants[(next() % variants.len() as u64) as usize]).collect();
            let pairwise = duplicate_pairwise(keys.iter().copied());
            let hashed = duplicate_hashed(keys.iter().copied(), keys.len());
            assert_eq!(pairwise, hashed, "{keys:?}");
            if pairwise.is_some() {
                found += 1
            } else {
                clean += 1
            }
        }
        assert!(found > 1000 && clean > 1000, "{found} {clean}");
        assert!(folds_equal("\u{212A}", "k") && folds_equal("NAME", "name") && !folds_equal("name", "names"));
    }

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
    fn refuses_duplicate_keys_at_any_depth() {
        let cases: &[&str] = &[
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x","name":"delete_x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"p":"/public","p":"/private"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":[{"b":{"c":1,"c":2}}]}}"#,
            // Escapes spell the same key.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
        ];
        for body in cases {
            let err = parse_str(body).unwrap_err();
            assert!(matches!(err, ParseError::DuplicateKey(_)), "{body}: {err:?}");
        }
        assert_eq!(
            parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1,"a":2}}"#),
            Err(ParseError::DuplicateKey("a".into()))
        );
    }

    #[test]
    fn refuses_keys_that_fold_to_a_field() {
        let cases: &[&str] = &[
            r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call","method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Params":{"name":"x"}}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"param\u{17f}\":{\"name\":\"x\"}}",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x","NAME":"delete_x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x","Arguments":{}}}"#,
            // Kelvin sign: folds to `k`.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"arguments\":{\"k\":1,\"\u{212a}\":2}}}",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"path":"/a","Path":"/b"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a","Name":"b"},"argument":{}}}"#,
        ];
        for body in cases {
            let err = parse_str(body).unwrap_err();
            assert!(matches!(err, ParseError::AmbiguousKey { .. }), "{body}: {err:?}");
        }
        // Unknown keys that fold to nothing known are fine, so are distinct ones.
        assert!(parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"Path":"/b","path2":1}}}"#).is_ok());
    }

    #[test]
    fn refuses_case_variants_of_known_methods() {
        for method in ["Tools/Call", "TOOLS/CALL", "tools/Call", "resources/READ", "Initialize"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"name":"x","uri":"x"}}}}"#);
            assert!(matches!(parse_str(&body), Err(ParseError::Invalid(_))), "{method}");
        }
        // An unknown method is not this parser's business (RBAC decides).
        assert!(parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"vendor/thing"}"#).is_ok());
    }

    #[test]
    fn completions_target_the_prompt_or_resource_they_complete() {
        let m = parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"code_review"},"argument":{"name":"language","value":"py"}}}"#).unwrap();
        assert_eq!(m.target, Some(Target::Prompt("code_review".into())));
        let m = parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{path}"},"argument":{"name":"path","value":"/pri"}}}"#).unwrap();
        assert_eq!(m.target, Some(Target::Resource("file:///{path}".into())));
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/other","name":"x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt"}}}"#,
        ] {
            assert!(matches!(parse_str(bad), Err(ParseError::InvalidParams(_))), "{bad}");
        }
    }

    #[test]
    fn tasks_name_their_task_and_task_calls_are_marked() {
        let m = parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":"t-1"}}"#).unwrap();
        assert_eq!(m.target, Some(Target::Task("t-1".into())));
        assert!(matches!(
            parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/cancel","params":{}}"#),
            Err(ParseError::InvalidParams(_))
        ));
        let m = parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","task":{"ttl":1}}}"#)
            .unwrap();
        assert!(m.creates_task);
        let m = parse_str(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#).unwrap();
        assert!(!m.creates_task);
    }

    #[test]
    fn salvages_the_id_of_an_invalid_message() {
        assert_eq!(salvage_id(br#"{"jsonrpc":"2.0","id":9,"method":"tools/call"}"#, 32), Some(json!(9)));
        assert_eq!(salvage_id(b"{not json", 32), None);
    }
}
