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

/// A raw HTTP/1.1 upstream that answers every request with a scripted SSE body, written
/// in the given pieces, and records the request heads it received. `gate` holds the
/// last piece until the test has seen the ones before it.
struct ScriptedSse {
    addr: std::net::SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

type Script = std::sync::Arc<dyn Fn(&str) -> (Vec<(&'static str, String)>, Vec<Vec<u8>>) + Send + Sync>;

impl ScriptedSse {
    async fn start(script: Script, gate: std::sync::Arc<tokio::sync::Semaphore>) -> ScriptedSse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                conn.set_nodelay(true).unwrap();
                let (script, gate, recorded) = (script.clone(), gate.clone(), recorded.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    recorded.lock().unwrap().push(head);
                    let (headers, pieces) = script(&path);
                    let mut out =
                        String::from("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n");
                    for (n, v) in headers {
                        out.push_str(&format!("{n}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    conn.write_all(out.as_bytes()).await.unwrap();
                    let count = pieces.len();
                    for (i, piece) in pieces.into_iter().enumerate() {
                        if i + 1 == count && count > 1 && path.contains("case=streamed") {
                            gate.acquire().await.unwrap().forget();
                        }
                        let chunk = [format!("{:x}\r\n", piece.len()).into_bytes(), piece, b"\r\n".to_vec()].concat();
                        if conn.write_all(&chunk).await.is_err() {
                            return;
                        }
                        conn.flush().await.unwrap();
                    }
                    let _ = conn.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        ScriptedSse { addr, heads }
    }
}

fn tools_event(id: u32, names: &[&str]) -> String {
    let tools: Vec<Value> = names.iter().map(|n| json!({"name": n, "inputSchema": {"type": "object"}})).collect();
    format!("data: {}\n\n", json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}}))
}

#[tokio::test(flavor = "multi_thread")]
async fn list_results_on_get_streams_are_filtered_in_every_framing() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let both = ["echo", "delete_item"];
    let script: Script = std::sync::Arc::new(move |path: &str| {
        let sse = vec![("content-type", "text/event-stream".to_owned())];
        let case = path.split("case=").nth(1).unwrap_or_default().to_owned();
        let event = tools_event(7, &both);
        let body = match case.as_str() {
            "plain" => event,
            "spaces" => event.replacen("data: ", "data:    ", 1),
            "indented" => format!("  {event}"),
            "capital" => event.replacen("data:", "Data:", 1),
            "json-labelled-sse" => event.trim_start_matches("data: ").to_owned(),
            "duplicate" => r#"data: {"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"delete_item"}],"tools":[{"name":"echo"}]}}"#
                .to_owned()
                + "\n\n",
            "case-variant" => event.replacen("\"result\"", "\"Result\":{\"tools\":[{\"name\":\"delete_item\"}]},\"result\"", 1),
            "huge" => format!(
                "data: {{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{{\"tools\":[{{\"name\":\"delete_item\",\"description\":\"{}\"}}]}}}}\n\n",
                "x".repeat(5 * 1024 * 1024)
            ),
            "gzip" => {
                return (
                    vec![("content-type", "text/event-stream".to_owned()), ("content-encoding", "gzip".to_owned())],
                    vec![event.into_bytes()],
                )
            }
            "streamed" => {
                // The first event must reach the client before the server sends the second.
                let first = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"first\"}}\n\n";
                return (sse, vec![first.as_bytes().to_vec(), event.into_bytes()]);
            }
            other => panic!("unknown case {other}"),
        };
        // Written a few bytes at a time, so events arrive split across chunks.
        (sse, body.into_bytes().chunks(4096).map(<[u8]>::to_vec).collect())
    });
    let raw = ScriptedSse::start(script, gate.clone()).await;
    let gw = Gateway::start_custom(
        |c| {
            c["servers"].as_array_mut().unwrap().push(json!({"name": "raw", "path_prefix": "/mcp/raw"}));
            c["rbac"]["roles"]["readonly"]["servers"] = json!(["raw"]);
        },
        vec![],
        vec![],
        vec![("raw".into(), "/mcp/raw".into(), raw.addr)],
    )
    .await;
    let token = gw.token("rita", &["readonly"]);
    let auth = format!("Bearer {token}");
    let get = |case: &str| {
        let url = format!("{}?case={case}", gw.url("raw"));
        let auth = auth.clone();
        async move { send("GET", &url, &[("authorization", auth.as_str()), ("accept", "text/event-stream")], "").await }
    };
    for case in ["plain", "spaces", "duplicate"] {
        let r = get(case).await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 200, "{case}");
        assert!(!body.contains("delete_item"), "{case}: {body}");
        assert!(body.contains("\"echo\""), "{case}: the allowed tool is kept: {body}");
    }
    for case in ["indented", "capital", "json-labelled-sse", "case-variant", "huge", "gzip"] {
        // Possibly cut short (the huge event ends the stream): whatever arrived is checked.
        let url = format!("{}?case={case}", gw.url("raw"));
        let resp = reqwest::Client::new().get(&url).header("authorization", &auth).send().await.unwrap();
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("delete_item"), "{case}: {}", body.chars().take(300).collect::<String>());
    }
    // Every GET went upstream asking for an unencoded stream.
    for head in raw.heads.lock().unwrap().iter() {
        assert!(head.to_ascii_lowercase().contains("accept-encoding: identity"), "{head}");
    }

    // Streaming: the first event arrives while the server still holds the second.
    let url = format!("{}?case=streamed", gw.url("raw"));
    let mut resp = reqwest::Client::new().get(&url).header("authorization", &auth).send().await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), resp.chunk()).await;
        let Ok(chunk) = chunk else {
            panic!(
                "the first event did not arrive: {:?}; envoy log:\n{}",
                String::from_utf8_lossy(&seen),
                gw.envoy.log()
            );
        };
        let chunk = chunk
            .unwrap_or_else(|e| panic!("{e}: {:?}; envoy log:\n{}", String::from_utf8_lossy(&seen), gw.envoy.log()));
        seen.extend_from_slice(&chunk.expect("the first event before the stream ends"));
    }
    gate.add_permits(1);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.extend_from_slice(&chunk);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("\"echo\"") && !seen.contains("delete_item"), "{seen}");
    let rec = gw.envoy.wait_for_audit(|r| r["http_method"] == "GET" && r["hidden"].is_array()).await;
    assert!(rec["hidden"].as_array().unwrap().iter().any(|t| t == "delete_item"), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_belongs_to_the_caller_who_opened_it() {
    let gw = Gateway::start().await;
    let url = gw.url("test");
    let alice = format!("Bearer {}", gw.token("alice", &["developer"]));
    let bob = format!("Bearer {}", gw.token("bob", &["developer"]));
    let base = |auth: &str| -> Vec<(&'static str, String)> {
        vec![
            ("content-type", "application/json".into()),
            ("accept", "application/json, text/event-stream".into()),
            ("authorization", auth.to_owned()),
        ]
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = post(&url, &base(&alice), init.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let session = r.header("mcp-session-id").expect("a session id").to_owned();
    let with_session = |auth: &str, id: &str| {
        let mut h = base(auth);
        h.push(("mcp-session-id", id.to_owned()));
        h
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    assert_eq!(post(&url, &with_session(&alice, &session), initialized.clone()).await.status, 202);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    let before = gw.test.requests.len();

    // Bob presents alice's session: as if it did not exist, and nothing reaches the server.
    post(&url, &with_session(&bob, &session), list.clone()).await.assert_rpc_error(404, -32004);
    let bob_auth = bob.clone();
    let get = send(
        "GET",
        &url,
        &[("authorization", &bob_auth), ("mcp-session-id", &session), ("accept", "text/event-stream")],
        "",
    )
    .await;
    get.assert_rpc_error(404, -32004);
    let delete = send("DELETE", &url, &[("authorization", &bob_auth), ("mcp-session-id", &session)], "").await;
    delete.assert_rpc_error(404, -32004);
    // A session id the gateway never saw opened is unknown too.
    post(&url, &with_session(&alice, "made-up"), list.clone()).await.assert_rpc_error(404, -32004);
    assert_eq!(gw.test.requests.len(), before, "{:?}", gw.test.requests.last());

    // Alice's own session still works, on every worker.
    for id in 3..7 {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}).to_string();
        let r = post(&url, &with_session(&alice, &session), body).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let rec = gw.envoy.wait_for_audit(|r| r["user_id"] == "bob" && r["decision"] == "deny").await;
    assert!(rec["reason"].as_str().unwrap().contains("another caller"), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_are_followed_up_only_by_their_creator() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let script: Script = std::sync::Arc::new(|path: &str| {
        let reply =
            |id: &str| json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": id, "status": "working"}}});
        if path.contains("case=sse") {
            let body = format!("data: {}\n\n", reply("t-sse"));
            (vec![("content-type", "text/event-stream".to_owned())], vec![body.into_bytes()])
        } else {
            (vec![("content-type", "application/json".to_owned())], vec![reply("t-json").to_string().into_bytes()])
        }
    });
    let raw = ScriptedSse::start(script, gate).await;
    let gw = Gateway::start_custom(
        |c| {
            c["servers"].as_array_mut().unwrap().push(json!({"name": "raw", "path_prefix": "/mcp/raw"}));
            for role in ["developer", "readonly"] {
                c["rbac"]["roles"][role]["servers"] = json!(["raw"]);
                c["rbac"]["roles"][role]["methods"] = json!(["tools/call", "tasks/*"]);
            }
        },
        vec![],
        vec![],
        vec![("raw".into(), "/mcp/raw".into(), raw.addr)],
    )
    .await;
    let alice = gw.token("alice", &["developer"]);
    let bob = gw.token("bob", &["developer"]);
    let rita = gw.token("alice", &["readonly"]);
    for (case, task) in [("json", "t-json"), ("sse", "t-sse")] {
        let url = format!("{}?case={case}", gw.url("raw"));
        let create = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "create_item", "arguments": {"name": "x"}, "task": {"ttl": 60000}}});
        let r = post_json(&url, Some(&alice), &create).await;
        assert_eq!(r.status, 200, "{case}: {:?}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains(task), "the reply passes unchanged");
        let before = raw.heads.lock().unwrap().len();
        for method in ["tasks/get", "tasks/result", "tasks/cancel"] {
            let follow = json!({"jsonrpc": "2.0", "id": 2, "method": method, "params": {"taskId": task}});
            post_json(&url, Some(&bob), &follow).await.assert_rpc_error(403, -32003);
            // The same user, without the role that allowed the call, may not either.
            post_json(&url, Some(&rita), &follow).await.assert_rpc_error(403, -32003);
            let unknown = json!({"jsonrpc": "2.0", "id": 3, "method": method, "params": {"taskId": "t-other"}});
            post_json(&url, Some(&alice), &unknown).await.assert_rpc_error(403, -32003);
            assert_eq!(
                raw.heads.lock().unwrap().len(),
                before,
                "{case} {method}: a refused follow-up reached the server"
            );
            assert_eq!(post_json(&url, Some(&alice), &follow).await.status, 200, "{case} {method}");
            assert_eq!(raw.heads.lock().unwrap().len(), before + 1);
            raw.heads.lock().unwrap().pop();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_decodes_gets_only_values_whose_every_reading_is_allowed() {
    // This upstream stands for a server that percent-decodes its `path` argument (a URL
    // library): the policy says so with `"mode": "uri"`.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let script: Script = std::sync::Arc::new(|_: &str| {
        let reply = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "ok"}]}});
        (vec![("content-type", "application/json".to_owned())], vec![reply.to_string().into_bytes()])
    });
    let raw = ScriptedSse::start(script, gate).await;
    let gw = Gateway::start_custom(
        |c| {
            c["servers"].as_array_mut().unwrap().push(json!({"name": "raw", "path_prefix": "/mcp/raw"}));
            c["rbac"]["roles"]["developer"]["servers"] = json!(["raw"]);
            c["resource_policies"] = json!({"raw": {
                "arguments": [{"argument": "path", "mode": "uri"}],
                "rules": [{"pattern": "/public/**", "roles": ["*"]}]
            }});
        },
        vec![],
        vec![],
        vec![("raw".into(), "/mcp/raw".into(), raw.addr)],
    )
    .await;
    let url = gw.url("raw");
    let token = gw.token("dave", &["developer"]);
    let get = |path: &str| tool_call(1, "get_item", json!({"path": path}));
    for path in [
        "/public/a%2f..%2f..%2fprivate/x",
        "/public/%2e%2e/private/x",
        "/public/%252e%252e/private/x",
        "/public/a%5c..%5c..%5cprivate/x",
        "/public/100%",
        "/public/%zz",
        "/public/%EF%BC%8E%EF%BC%8E/x",
    ] {
        post_json(&url, Some(&token), &get(path)).await.assert_rpc_error(403, -32003);
    }
    assert!(raw.heads.lock().unwrap().is_empty(), "a refused call reached the server");
    // Values whose readings all stay in /public pass, encoded as the server expects.
    for path in ["/public/a%20b.txt", "/public/caf%C3%A9", "/public/readme.md"] {
        let r = post_json(&url, Some(&token), &get(path)).await;
        assert_eq!(r.status, 200, "{path}: {:?}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(raw.heads.lock().unwrap().len(), 3);
}
