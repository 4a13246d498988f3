//! `jsonrpc::parse` and `jsonrpc::salvage_id` on arbitrary bodies: no panic, and whatever
//! `parse` accepts is one well-formed JSON-RPC message as its docs describe it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway::jsonrpc::{self, Kind, ParseError, Target};
use serde_json::Value;

const MAX_DEPTH: usize = 32;

fuzz_target!(|data: &[u8]| {
    let salvaged = jsonrpc::salvage_id(data, MAX_DEPTH);
    let parsed = jsonrpc::parse(data, MAX_DEPTH);
    if let Some(id) = &salvaged {
        assert!(id.is_string() || id.is_number(), "salvaged id {id}");
    }
    let message = match parsed {
        Ok(message) => message,
        Err(ParseError::TooDeep { .. }) => {
            // A deeper limit can only let more through, never less.
            assert!(depth_of(data).is_none_or(|d| d > MAX_DEPTH), "refused as too deep at depth {:?}", depth_of(data));
            return;
        }
        Err(_) => return,
    };

    // What `parse` accepted is a JSON object with `"jsonrpc": "2.0"`, not too deep.
    let value: Value = serde_json::from_slice(data).expect("accepted body is JSON");
    let object = value.as_object().expect("accepted body is an object");
    assert_eq!(object.get("jsonrpc"), Some(&Value::from("2.0")));
    assert!(depth(&value) <= MAX_DEPTH, "accepted a body nested {} deep", depth(&value));
    assert!(jsonrpc::parse(data, MAX_DEPTH + 1).is_ok(), "a deeper limit refused an accepted body");

    // The id `parse` reports is the one an error reply would salvage.
    assert_eq!(salvaged, message.id);
    assert_eq!(message.id.as_ref(), object.get("id"));
    match message.kind {
        Kind::Request => {
            assert!(message.id.is_some() && object.get("method") == Some(&Value::from(message.method.clone())))
        }
        Kind::Notification => assert!(message.id.is_none() && object.contains_key("method")),
        Kind::Response => {
            assert!(message.id.is_some() && message.method.is_empty() && !object.contains_key("method"));
            assert!(object.contains_key("result") != object.contains_key("error"));
        }
    }

    let params = object.get("params");
    let param = |name: &str| params.and_then(|p| p.get(name)).and_then(Value::as_str);
    // For methods that act on something: the target the body names (which they must have),
    // and whether they carry `arguments`.
    let (expected, arguments) = match message.method.as_str() {
        "tools/call" => (Some(param("name").map(|n| Target::Tool(n.to_owned()))), true),
        "prompts/get" => (Some(param("name").map(|n| Target::Prompt(n.to_owned()))), true),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            (Some(param("uri").map(|u| Target::Resource(u.to_owned()))), false)
        }
        "completion/complete" => {
            let r = params.and_then(|p| p.get("ref"));
            let text = |k: &str| r.and_then(|r| r.get(k)).and_then(Value::as_str).map(str::to_owned);
            let target = match r.and_then(|r| r.get("type")).and_then(Value::as_str) {
                Some("ref/prompt") => text("name").map(Target::Prompt),
                Some("ref/resource") => text("uri").map(Target::Resource),
                _ => None,
            };
            (Some(target), false)
        }
        _ => (None, false),
    };
    match expected {
        Some(target) => {
            assert!(target.is_some(), "{} accepted without a target", message.method);
            assert_eq!(message.target, target, "target of {}", message.method);
        }
        None => assert_eq!(message.target, None, "target of {}", message.method),
    }
    let expected_arguments =
        if arguments { params.and_then(|p| p.get("arguments")).filter(|a| !a.is_null()) } else { None };
    assert_eq!(message.arguments.as_ref(), expected_arguments);
});

/// Nesting depth of a JSON value (a scalar is 0, `[]` and `{}` are 1).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The depth of `data` if it is JSON that serde_json can read at all.
fn depth_of(data: &[u8]) -> Option<usize> {
    serde_json::from_slice::<Value>(data).ok().map(|v| depth(&v))
}
