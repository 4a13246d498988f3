//! Every way a request is refused, through a real Envoy: the right HTTP status, a
//! JSON-RPC error body, and nothing reaching the upstream server.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{post_json, send, tool_call, Gateway};
use mcpgw::token::TokenRequest;
use serde_json::json;
use std::time::Duration;

fn initialize() -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_paths_return_json_rpc_errors_and_never_reach_upstream() {
    let gw = Gateway::start().await;
    let url = gw.url("github");
    let call = tool_call(9, "create_issue", json!({"repository": "acme/website", "title": "t"}));

    // No token: 401 with a Bearer challenge.
    let r = post_json(&url, None, &call).await;
    r.assert_rpc_error(401, -32001);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"mcp-gateway\""));

    // Bad signature: a token from another key pair.
    let other = tempfile::tempdir().unwrap();
    let files = mcpgw::token::keygen(other.path()).unwrap();
    let foreign = std::fs::read_to_string(files.signing_key).unwrap();
    let forged = mcpgw::token::mint(&foreign, &TokenRequest::new("alice", &["admin"])).unwrap();
    let r = post_json(&url, Some(&forged), &call).await;
    r.assert_rpc_error(401, -32001);
    assert!(r.header("www-authenticate").unwrap().contains("invalid_token"));

    // Tampered payload: our signature, someone else's claims.
    let good = gw.token("alice", &["readonly"]);
    let admin = gw.token("alice", &["admin"]);
    let parts: Vec<&str> = good.split('.').collect();
    let admin_payload = admin.split('.').nth(1).unwrap();
    let tampered = format!("{}.{}.{}", parts[0], admin_payload, parts[2]);
    post_json(&url, Some(&tampered), &call).await.assert_rpc_error(401, -32001);

    // Expired (beyond the 60 s leeway), and not yet valid.
    let now = chrono::Utc::now().timestamp();
    let expired = gw.mint(TokenRequest::new("alice", &["developer"]).claim("exp", now - 3600));
    post_json(&url, Some(&expired), &call).await.assert_rpc_error(401, -32001);
    let early = gw.mint(TokenRequest::new("alice", &["developer"]).claim("nbf", now + 3600));
    post_json(&url, Some(&early), &call).await.assert_rpc_error(401, -32001);

    // Wrong issuer and audience.
    let iss = gw.mint(TokenRequest::new("alice", &["developer"]).claim("iss", "https://evil.example"));
    post_json(&url, Some(&iss), &call).await.assert_rpc_error(401, -32001);
    let aud = gw.mint(TokenRequest::new("alice", &["developer"]).claim("aud", "another-api"));
    post_json(&url, Some(&aud), &call).await.assert_rpc_error(401, -32001);

    // Wrong role: readonly may not create issues; 403 carries the request's id and does
    // not say which rule refused it.
    let r = post_json(&url, Some(&good), &call).await;
    let body = r.assert_rpc_error(403, -32003);
    assert_eq!(body["id"], 9);
    assert!(!String::from_utf8_lossy(&r.body).contains("readonly"));

    // A role the policy does not know, and a server the role does not cover.
    let intern = gw.token("ivan", &["intern"]);
    post_json(&url, Some(&intern), &call).await.assert_rpc_error(403, -32003);

    assert_eq!(gw.upstream_requests(), 0, "a refused request reached an upstream");
    let denied = gw.envoy.wait_for_audit(|r| r["status"] == 403 && r["user_id"] == "alice").await;
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["target"], "create_issue");
    assert!(denied["reason"].as_str().unwrap().contains("create_issue"), "{denied}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_the_filter_keeps_serving() {
    let gw = Gateway::start().await;
    let url = gw.url("github");
    let token = gw.token("alice", &["developer"]);
    let auth = format!("Bearer {token}");
    let json_headers = [("content-type", "application/json"), ("authorization", auth.as_str())];

    let cases: Vec<(&str, Vec<u8>, u16, i64)> = vec![
        ("empty body", vec![], 400, -32700),
        ("truncated JSON", br#"{"jsonrpc":"2.0","id":1,"method":"tools/ca"#.to_vec(), 400, -32700),
        ("non-UTF-8", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}".to_vec(), 400, -32700),
        ("not JSON-RPC", br#"{"hello":"world"}"#.to_vec(), 400, -32600),
        (
            "batch",
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all"}}]"#.to_vec(),
            400,
            -32600,
        ),
        (
            "deep nesting",
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":{}{}}}}}"#, "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            400,
            -32600,
        ),
        ("tool call without a name", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#.to_vec(), 400, -32602),
        ("over the size limit", format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#, "x".repeat(70_000)).into_bytes(), 413, -32600),
    ];
    for (what, body, status, code) in cases {
        let r = send("POST", &url, &json_headers, body).await;
        assert_eq!(r.status, status, "{what}: {:?}", String::from_utf8_lossy(&r.body));
        r.assert_rpc_error(status, code);
    }

    // Over the limit without a Content-Length (chunked): still 413, from the filter.
    let chunks = futures_stream(vec![vec![b' '; 40_000], vec![b' '; 40_000]]);
    send("POST", &url, &json_headers, reqwest::Body::wrap_stream(chunks)).await.assert_rpc_error(413, -32600);

    // The id survives into errors about params.
    let r = send("POST", &url, &json_headers, br#"{"jsonrpc":"2.0","id":"abc","method":"tools/call"}"#.to_vec()).await;
    assert_eq!(r.assert_rpc_error(400, -32602)["id"], "abc");

    // Wrong content type.
    let r =
        send("POST", &url, &[("content-type", "text/plain"), ("authorization", &auth)], initialize().to_string()).await;
    r.assert_rpc_error(415, -32600);

    // Authorization problems.
    let ct = ("content-type", "application/json");
    let auth_cases: Vec<Vec<(&str, &str)>> = vec![
        vec![ct, ("authorization", &auth), ("authorization", &auth)],
        vec![ct, ("authorization", "Bearer ")],
        vec![ct, ("authorization", "Bearer")],
        vec![ct, ("authorization", "Basic YWxpY2U6cGFzcw==")],
        vec![ct, ("authorization", "Bearer not-a-jwt")],
    ];
    for headers in auth_cases {
        let r = send("POST", &url, &headers, initialize().to_string()).await;
        r.assert_rpc_error(401, -32001);
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")));
    }
    // A token in the query string is not a credential.
    let r = send("POST", &format!("{url}?access_token={token}"), &[ct], initialize().to_string()).await;
    r.assert_rpc_error(401, -32001);

    // Unknown server and unsupported HTTP methods.
    send("POST", &gw.url("gitlab"), &json_headers, initialize().to_string()).await.assert_rpc_error(404, -32004);
    let r = send("PUT", &url, &json_headers, initialize().to_string()).await;
    r.assert_rpc_error(405, -32600);

    assert_eq!(gw.upstream_requests(), 0, "bad input reached an upstream");

    // `bearer` in lower case is a valid scheme (RFC 7235); the filter is still serving.
    let lower = format!("bearer {token}");
    let r = send(
        "POST",
        &url,
        &[ct, ("accept", "application/json, text/event-stream"), ("authorization", &lower)],
        initialize().to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(gw.github.requests.len(), 1);
    assert!(!gw.envoy.log().contains("panicked"), "the filter panicked:\n{}", gw.envoy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_and_delete_are_authenticated_too() {
    let gw = Gateway::start().await;
    let url = gw.url("test");
    for method in ["GET", "DELETE"] {
        let r = send(method, &url, &[("accept", "text/event-stream")], Vec::new()).await;
        r.assert_rpc_error(401, -32001);
        let intern = format!("Bearer {}", gw.token("ivan", &["intern"]));
        let r = send(method, &url, &[("authorization", &intern)], Vec::new()).await;
        r.assert_rpc_error(403, -32003);
    }
    assert_eq!(gw.upstream_requests(), 0);

    // With a good token they reach the server (which answers for itself: no session). A
    // session id the gateway never saw opened would be refused as unknown (see
    // one_reading.rs).
    let auth = format!("Bearer {}", gw.token("alice", &["developer"]));
    let r = send("DELETE", &url, &[("authorization", &auth)], Vec::new()).await;
    assert_ne!(r.status, 401);
    assert_ne!(r.status, 403);
    let seen = gw.test.requests.last().expect("DELETE reached the upstream");
    assert_eq!(seen.method, "DELETE");
    assert_eq!(seen.header("x-mcp-user-id"), Some("alice"));
    assert_eq!(seen.header("authorization"), None, "the client's token was passed through");
}

/// A body stream sent in separate chunks (no Content-Length).
fn futures_stream(chunks: Vec<Vec<u8>>) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(c)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
