//! One reading of every request, through a real Envoy: what the gateway authorized is
//! exactly what reached the upstream. The demo's filesystem server and the recording test
//! servers show it from the other side: files on disk, requests as received.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{post_json, send, tool_call, Gateway};
use mcpgw::client::{connect, text};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// The demo's filesystem policy: public for all, private for admins, each user's folder
/// for that user.
fn policy(c: &mut Value) {
    c["rbac"]["roles"]["developer"]["servers"] = json!(["*"]);
    c["rbac"]["roles"]["developer"]["tools"] = json!(["*"]);
    c["resource_policies"] = json!({
        "filesystem": {"arguments": ["file_path"], "rules": [
            {"pattern": "/", "roles": ["*"]},
            {"pattern": "/public", "roles": ["*"]},
            {"pattern": "/public/**", "roles": ["*"]},
            {"pattern": "/private/**", "roles": ["admin"]},
            {"pattern": "/user/{user_id}", "users": ["{user_id}"], "roles": ["admin"]},
            {"pattern": "/user/{user_id}/**", "users": ["{user_id}"], "roles": ["admin"]},
            {"pattern": "/user/**", "roles": ["admin"]}
        ]},
        "testjson": {"arguments": [{"argument": "text", "optional": true}], "rules": [{"pattern": "**", "roles": ["*"]}]}
    });
}

/// Every file under the sandbox, relative, with `/` separators.
fn files(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Spellings of a path outside bob's trees that a server reading `%2f`, `%5c` and `\`
/// literally resolves to `target`, while decoding them makes it look like `/public/...`
/// or `/user/bob/...`. `target` is relative to the root (`private/salaries.csv`).
fn spellings(target: &str) -> Vec<String> {
    vec![
        format!("/public/a%2fb/../../{target}"),
        format!("/public/a%2Fb/../../{target}"),
        format!("/public/a%252fb/../../{target}"),
        format!("/public/a%5cb/../../{target}"),
        format!("/public/a\\b/../../{target}"),
        format!("/public/a%2F..%5C/../../{target}"),
        format!("/user/bob/x%2fy/../../../{target}"),
        format!("/public/../{target}"),
        format!("/public/%2e%2e/{target}"),
        format!("/public/..%2f{target}"),
        format!("\\public\\..\\{target}"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn private_files_stay_private_however_the_path_is_spelled() {
    let gw = Gateway::start_with(policy).await;
    let before = files(&gw.sandbox);
    let salaries = std::fs::read_to_string(gw.sandbox.join("private/salaries.csv")).unwrap();
    let bob = connect(&gw.url("filesystem"), Some(&gw.token("bob", &["developer"]))).await.unwrap();

    // The caller can use what is theirs, so a denial below is the policy, not a broken setup.
    let own = bob.call_tool("read_file", json!({"file_path": "/user/bob/notes.md"})).await.unwrap();
    assert!(text(&own).contains("Bob's notes"), "{}", text(&own));
    let wrote = bob.call_tool("write_file", json!({"file_path": "/user/bob/ok.txt", "content": "mine"})).await.unwrap();
    assert_ne!(wrote.is_error, Some(true), "{}", text(&wrote));

    let mut attempts = 0;
    for target in ["private/salaries.csv", "user/alice/notes.md"] {
        for path in spellings(target) {
            let read = bob.call_tool("read_file", json!({"file_path": path})).await;
            assert!(read.is_err(), "read_file {path:?} was allowed: {:?}", read.map(|r| text(&r)));
            let write = bob.call_tool("write_file", json!({"file_path": path, "content": "owned"})).await;
            assert!(write.is_err(), "write_file {path:?} was allowed");
            attempts += 2;
        }
    }
    for dir in ["private", "user/alice"] {
        for path in spellings(dir) {
            let list = bob.call_tool("list_directory", json!({"file_path": path})).await;
            assert!(list.is_err(), "list_directory {path:?} was allowed: {:?}", list.map(|r| text(&r)));
            attempts += 1;
        }
    }
    for target in ["private/new.txt", "user/alice/new.txt"] {
        for path in spellings(target) {
            let write = bob.call_tool("write_file", json!({"file_path": path, "content": "owned"})).await;
            assert!(write.is_err(), "write_file {path:?} was allowed");
            attempts += 1;
        }
    }

    // On disk: the seed files and bob's own, nothing else; the private file untouched.
    let mut expected = before.clone();
    expected.insert("user/bob/ok.txt".into());
    assert_eq!(files(&gw.sandbox), expected);
    assert_eq!(std::fs::read_to_string(gw.sandbox.join("private/salaries.csv")).unwrap(), salaries);
    // No denied call reached the server.
    let calls = gw.filesystem.requests.with_rpc_method("tools/call").len();
    assert_eq!(calls, 2, "{attempts} denied calls, yet the server saw {calls} calls");
}

const ECHO: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

fn json_headers(auth: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("accept", "application/json, text/event-stream".into()),
        ("authorization", format!("Bearer {auth}")),
    ]
}

async fn post(url: &str, headers: &[(&str, String)], body: impl Into<reqwest::Body>) -> common::Raw {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    send("POST", url, &headers, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_with_two_readings_never_reach_the_upstream() {
    let gw = Gateway::start_with(policy).await;
    let url = gw.url("testjson");
    let token = gw.token("dave", &["developer"]);
    let headers = json_headers(&token);
    let bodies: Vec<(&str, Vec<u8>, u16, i64)> = vec![
        ("duplicate method", br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}}}"#.to_vec(), 400, -32600),
        ("duplicate name", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_item","arguments":{"text":"a"}}}"#.to_vec(), 400, -32600),
        ("duplicate argument", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a","text":"b"}}}"#.to_vec(), 400, -32600),
        ("nested duplicate", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a","x":[{"y":1,"y":2}]}}}"#.to_vec(), 400, -32600),
        ("case variant envelope", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","Method":"tools/list","params":{"name":"echo","arguments":{"text":"a"}}}"#.to_vec(), 400, -32600),
        ("case variant name", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_item","arguments":{"text":"a"}}}"#.to_vec(), 400, -32600),
        ("long s params", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"param\u{17f}\":{\"name\":\"delete_item\"}}".as_bytes().to_vec(), 400, -32600),
        ("kelvin argument", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"a\",\"\u{212a}\":1,\"k\":2}}}".as_bytes().to_vec(), 400, -32600),
        ("method case", br#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"delete_item","arguments":{"id":"1"}}}"#.to_vec(), 400, -32600),
        ("not utf-8", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\xff\"}}".to_vec(), 400, -32700),
    ];
    for (what, body, status, code) in bodies {
        let r = post(&url, &headers, body).await;
        assert_eq!(r.status, status, "{what}: {:?}", String::from_utf8_lossy(&r.body));
        r.assert_rpc_error(status, code);
    }
    let mut utf16 = headers.clone();
    utf16[0].1 = "application/json; charset=utf-16".into();
    post(&url, &utf16, ECHO).await.assert_rpc_error(415, -32600);
    assert!(gw.testjson.requests.is_empty(), "{:?}", gw.testjson.requests.all());

    // The same call, spelled once, goes through: the refusals above were about spelling.
    let r = post(&url, &headers, ECHO).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    for received in gw.testjson.requests.all() {
        let body = std::str::from_utf8(&received.body).expect("upstream got UTF-8");
        assert_eq!(body, ECHO, "the upstream got the authorized bytes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_with_two_readings_are_refused_or_removed() {
    let gw = Gateway::start_with(policy).await;
    let url = gw.url("testjson");
    let token = gw.token("dave", &["developer"]);
    let with = |extra: &[(&'static str, &str)]| {
        let mut h = json_headers(&token);
        h.extend(extra.iter().map(|(n, v)| (*n, v.to_string())));
        h
    };
    let refused: Vec<(Vec<(&str, String)>, i64)> = vec![
        (with(&[("mcp_session_id", "stolen")]), -32600),
        (with(&[("Mcp_Method", "tools/call")]), -32600),
        (with(&[("content_type", "text/plain")]), -32600),
        (with(&[("x-http-method-override", "DELETE")]), -32600),
        (with(&[("mcp-name", "echo"), ("mcp-name", "delete_item")]), -32600),
        (with(&[("mcp-method", "tools/call"), ("Mcp-Method", "tools/call")]), -32600),
        (with(&[("mcp-name", "delete_item")]), -32020),
        (with(&[("mcp-method", "tools/list")]), -32020),
        (with(&[("mcp-name", "=?base64?not base64?=")]), -32020),
        (with(&[("mcp-param-text", "bye")]), -32020),
    ];
    for (headers, code) in refused {
        let r = post(&url, &headers, ECHO).await;
        r.assert_rpc_error(400, code);
    }
    let auth = format!("Bearer {token}");
    for method in ["GET", "DELETE"] {
        let r =
            send(method, &url, &[("authorization", auth.as_str()), ("content-type", "application/json")], ECHO).await;
        r.assert_rpc_error(400, -32600);
    }
    assert!(gw.testjson.requests.is_empty(), "{:?}", gw.testjson.requests.all());

    // Allowed: base64-wrapped names are decoded, identity look-alikes and proxy
    // credentials are removed on the way.
    let allowed = with(&[
        ("mcp-method", "tools/call"),
        ("mcp-name", "=?base64?ZWNobw==?="),
        ("Mcp-Param-Text", "hi"),
        ("x_mcp_user_id", "mallory"),
        ("X_MCP_Roles", "admin"),
        ("proxy-authorization", "Basic c2VjcmV0"),
    ]);
    let r = post(&url, &allowed, ECHO).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let received = gw.testjson.requests.last().unwrap();
    assert!(received.headers.iter().all(|(n, _)| !n.contains('_')), "{:?}", received.headers);
    assert_eq!(received.header("x-mcp-user-id"), Some("dave"));
    assert_eq!(received.header("x-mcp-roles"), Some("developer"));
    assert_eq!(received.header("proxy-authorization"), None);
    assert_eq!(received.header("authorization"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_uris_and_arguments_read_every_way_are_checked() {
    let gw = Gateway::start_with(policy).await;
    let url = gw.url("testjson");
    let token = gw.token("dave", &["developer"]);
    // A configured resource argument that is there but not a string, or spelled in
    // another case, is denied (403), not ignored.
    for args in [json!({"text": 5}), json!({"text": null}), json!({"text": ["a", 1]})] {
        let r = post_json(&url, Some(&token), &tool_call(3, "echo", args.clone())).await;
        r.assert_rpc_error(403, -32003);
    }
    let r = post_json(&url, Some(&token), &tool_call(4, "echo", json!({"Text": "a"}))).await;
    r.assert_rpc_error(403, -32003);
    assert!(gw.testjson.requests.is_empty(), "{:?}", gw.testjson.requests.all());
    let r = post_json(&url, Some(&token), &tool_call(5, "echo", json!({"text": "a"}))).await;
    assert_eq!(r.status, 200);
}
