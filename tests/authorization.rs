//! Authorization through a real Envoy: operations, deny rules, resource policies on
//! normalized paths, per-caller lists (SSE and JSON replies), hidden tools, shadow mode,
//! and the MCP 2026-07-28 method headers.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{post_json, send, tool_call, Gateway};
use mcpgw::client::{connect, text};
use mcpgw::token::TokenRequest;
use serde_json::{json, Value};

/// The policy under test: operations by name, roles restricted by operation, a deny
/// rule, and the demo's resource policies.
fn policy(c: &mut Value) {
    c["rbac"] = json!({
        "operations": {
            "read": ["get_*", "list_*", "read_*", "echo", "whoami"],
            "write": ["create_*", "write_*"],
            "delete": ["delete_*"]
        },
        "roles": {
            "admin": {"servers": ["*"], "tools": ["*"], "resources": ["**"], "prompts": ["*"]},
            "developer": {"servers": ["*"], "tools": ["*"], "operations": ["read", "write"]},
            "readonly": {"servers": ["*"], "tools": ["*"], "operations": ["read"]},
            "contractor": {"servers": ["test", "testjson"], "tools": ["*"], "deny": {"tools": ["create_*"]}}
        }
    });
    c["resource_policies"] = json!({
        "filesystem": {"arguments": ["file_path"], "rules": [
            {"pattern": "/public/**", "roles": ["*"]},
            {"pattern": "/private/**", "roles": ["admin"]},
            {"pattern": "/user/{user_id}/**", "users": ["{user_id}"], "roles": ["admin"]},
            {"pattern": "/user/**", "roles": ["admin"]}
        ]},
        "github": {"arguments": ["repository"], "case_insensitive": true, "rules": [
            {"pattern": "acme/website", "roles": ["*"]},
            {"pattern": "acme/payroll", "roles": ["admin"], "claim": {"name": "repos", "value": "{resource}"}}
        ]}
    });
}

fn tools_list(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"})
}

/// Tool names in a tools/list reply body (JSON or SSE).
fn tool_names(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let json: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).unwrap()
    } else {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m.get("result").is_some())
            .unwrap_or_else(|| panic!("no result event in {text:?}"))
    };
    let mut names: Vec<String> =
        json["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_are_filtered_per_caller_in_sse_and_json_replies() {
    let gw = Gateway::start_with(policy).await;
    let all = [
        "create_item",
        "delete_item",
        "echo",
        "get_item",
        "list_items",
        "purge_items",
        "search_items",
        "stepped",
        "whoami",
    ];

    // SSE replies (session server), through a real client.
    let admin = connect(&gw.url("test"), Some(&gw.token("root", &["admin"]))).await.unwrap();
    assert_eq!(admin.tool_names().await.unwrap(), all, "admin sees everything");
    let readonly = connect(&gw.url("test"), Some(&gw.token("rita", &["readonly"]))).await.unwrap();
    // Operations come from configuration (get_*, list_*, echo, whoami) and, for
    // search_items, from the server's readOnlyHint annotation.
    assert_eq!(readonly.tool_names().await.unwrap(), ["echo", "get_item", "list_items", "search_items", "whoami"]);
    let developer = connect(&gw.url("test"), Some(&gw.token("dave", &["developer"]))).await.unwrap();
    assert_eq!(
        developer.tool_names().await.unwrap(),
        ["create_item", "echo", "get_item", "list_items", "search_items", "whoami"],
        "delete_* and destructive tools are not for developers"
    );
    let contractor = connect(&gw.url("test"), Some(&gw.token("cora", &["contractor"]))).await.unwrap();
    assert!(!contractor.tool_names().await.unwrap().contains(&"create_item".to_string()), "deny rule ignored");

    // Plain application/json replies.
    let r = post_json(&gw.url("testjson"), Some(&gw.token("rita", &["readonly"])), &tools_list(1)).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("application/json"), "{:?}", r.headers);
    assert_eq!(tool_names(&r.body), ["echo", "get_item", "list_items", "search_items", "whoami"]);
    let r = post_json(&gw.url("testjson"), Some(&gw.token("root", &["admin"])), &tools_list(2)).await;
    assert_eq!(tool_names(&r.body), all);

    let rec = gw.envoy.wait_for_audit(|r| r["user_id"] == "rita" && r["hidden"].is_array()).await;
    assert!(rec["hidden"].as_array().unwrap().iter().any(|t| t == "delete_item"), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_and_deny_rules_decide_calls() {
    let gw = Gateway::start_with(policy).await;
    // Operations from annotations are known once the gateway has seen a tools/list
    // (on any worker: workers share what they learn).
    let lister = connect(&gw.url("test"), Some(&gw.token("root", &["admin"]))).await.unwrap();
    lister.list_tools().await.unwrap();
    let readonly = connect(&gw.url("test"), Some(&gw.token("rita", &["readonly"]))).await.unwrap();
    assert!(readonly.call_tool("search_items", json!({})).await.is_ok(), "annotated read-only tool refused");
    assert!(readonly.call_tool("create_item", json!({"name": "x"})).await.is_err());
    let developer = connect(&gw.url("test"), Some(&gw.token("dave", &["developer"]))).await.unwrap();
    assert!(developer.call_tool("create_item", json!({"name": "x"})).await.is_ok());
    assert!(developer.call_tool("purge_items", json!({})).await.is_err(), "destructive annotation ignored");
    assert!(developer.call_tool("delete_item", json!({"id": 1})).await.is_err());
    let contractor = connect(&gw.url("test"), Some(&gw.token("cora", &["contractor"]))).await.unwrap();
    assert!(contractor.call_tool("delete_item", json!({"id": 1})).await.is_ok());
    // A deny rule wins over another role's allow.
    let both = gw.token("cora", &["contractor", "admin"]);
    let r = post_json(&gw.url("test"), Some(&both), &tool_call(5, "create_item", json!({"name": "x"}))).await;
    assert_eq!(r.assert_rpc_error(403, -32003)["id"], 5);
    for name in ["create_item", "purge_items", "delete_item"] {
        let reached = gw.test.requests.all().iter().filter(|r| r.rpc_name().as_deref() == Some(name)).count();
        let expected = usize::from(name != "purge_items");
        assert_eq!(reached, expected, "{name} reached the server {reached} times");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn users_reach_their_own_folder_and_traversal_is_normalized() {
    let gw = Gateway::start_with(policy).await;
    let alice = connect(&gw.url("filesystem"), Some(&gw.token("alice", &["developer"]))).await.unwrap();
    let read = |path: &str| json!({"file_path": path});
    let ok = alice.call_tool("read_file", read("/user/alice/notes.md")).await.unwrap();
    assert_ne!(ok.is_error, Some(true), "{}", text(&ok));
    assert!(alice.call_tool("read_file", read("/public/readme.md")).await.is_ok());
    for denied in [
        "/user/bob/notes.md",
        "/private/salaries.csv",
        "/public/../private/salaries.csv",
        "/public/%2e%2e/private/salaries.csv",
        "/public/%252e%252e/private/salaries.csv",
        "/public/..%2fprivate/salaries.csv",
        "\\public\\..\\private\\salaries.csv",
        "/user/alice/../bob/notes.md",
        "//private//salaries.csv",
        "/public/../../etc/passwd",
    ] {
        let err = alice.call_tool("read_file", read(denied)).await;
        assert!(err.is_err(), "{denied} was allowed: {:?}", err.map(|r| text(&r)));
    }
    let reached: Vec<String> = gw
        .filesystem
        .requests
        .all()
        .iter()
        .filter(|r| r.rpc_name().as_deref() == Some("read_file"))
        .map(|r| r.json().unwrap()["params"]["arguments"]["file_path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reached, ["/user/alice/notes.md", "/public/readme.md"]);
    let admin = connect(&gw.url("filesystem"), Some(&gw.token("root", &["admin"]))).await.unwrap();
    let salaries = admin.call_tool("read_file", read("/private/salaries.csv")).await.unwrap();
    assert_ne!(salaries.is_error, Some(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_repository_needs_the_collaborator_claim() {
    let gw = Gateway::start_with(policy).await;
    let dev = connect(&gw.url("github"), Some(&gw.token("dave", &["developer"]))).await.unwrap();
    assert!(dev.call_tool("get_repository", json!({"repository": "acme/website"})).await.is_ok());
    assert!(dev.call_tool("get_repository", json!({"repository": "acme/payroll"})).await.is_err());
    assert!(dev.call_tool("list_issues", json!({"repository": "ACME/Payroll"})).await.is_err(), "case folding");
    let collaborator = gw.mint(TokenRequest::new("carol", &["developer"]).claim("repos", json!(["acme/payroll"])));
    let carol = connect(&gw.url("github"), Some(&collaborator)).await.unwrap();
    let repo = carol.call_tool("get_repository", json!({"repository": "acme/payroll"})).await.unwrap();
    assert!(text(&repo).contains("payroll"), "{}", text(&repo));
    let denied = gw.envoy.wait_for_audit(|r| r["user_id"] == "dave" && r["decision"] == "deny").await;
    assert!(denied["reason"].as_str().unwrap().contains("acme/payroll"), "{denied}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_lets_would_be_denials_through_and_records_them() {
    let gw = Gateway::start_with(|c| {
        policy(c);
        c["rbac"]["shadow"] = json!(true);
    })
    .await;
    let readonly = connect(&gw.url("test"), Some(&gw.token("rita", &["readonly"]))).await.unwrap();
    let created = readonly.call_tool("create_item", json!({"name": "shadowed"})).await.unwrap();
    assert!(text(&created).contains("shadowed"));
    assert!(gw.test.requests.all().iter().any(|r| r.rpc_name().as_deref() == Some("create_item")));
    let rec = gw.envoy.wait_for_audit(|r| r["target"] == "create_item").await;
    assert_eq!(rec["decision"], "would_deny");
    assert!(rec["reason"].as_str().unwrap().contains("operation write"), "{rec}");
    assert_eq!(rec["success"], true);

    // One rule in shadow mode, the rest enforced.
    let gw = Gateway::start_with(|c| {
        policy(c);
        c["resource_policies"]["filesystem"]["rules"][1]["shadow"] = json!(true);
    })
    .await;
    let alice = connect(&gw.url("filesystem"), Some(&gw.token("alice", &["developer"]))).await.unwrap();
    assert!(alice.call_tool("read_file", json!({"file_path": "/private/salaries.csv"})).await.is_ok());
    assert!(alice.call_tool("read_file", json!({"file_path": "/user/bob/notes.md"})).await.is_err());
    let rec = gw.envoy.wait_for_audit(|r| r["decision"] == "would_deny").await;
    assert_eq!(rec["params"]["file_path"], "/private/salaries.csv");
}

#[tokio::test(flavor = "multi_thread")]
async fn hidden_tools_look_unknown() {
    let gw = Gateway::start_with(|c| {
        policy(c);
        c["rbac"]["hide_denied_tools"] = json!(true);
    })
    .await;
    let token = gw.token("rita", &["readonly"]);
    let r = post_json(&gw.url("testjson"), Some(&token), &tool_call(8, "delete_item", json!({"id": 1}))).await;
    let body = r.assert_rpc_error(200, -32602);
    assert_eq!(body["error"]["message"], "Unknown tool: delete_item");
    assert_eq!(body["id"], 8);
    // Indistinguishable from a tool that really does not exist... as far as the status
    // and code go; and the server never saw the call.
    assert!(!gw.testjson.requests.all().iter().any(|r| r.rpc_name().as_deref() == Some("delete_item")));
    let rec = gw.envoy.wait_for_audit(|r| r["jsonrpc_id"] == 8).await;
    assert_eq!(rec["decision"], "deny");
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_method_and_name_headers_must_agree_with_the_body() {
    let gw = Gateway::start_with(policy).await;
    let auth = format!("Bearer {}", gw.token("root", &["admin"]));
    let call = tool_call(3, "get_item", json!({"id": 1})).to_string();
    let base = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("authorization", auth.as_str()),
        ("mcp-protocol-version", "2026-07-28"),
    ];
    let with = |extra: Vec<(&'static str, &'static str)>| {
        let mut h: Vec<(&str, &str)> = base.to_vec();
        h.extend(extra);
        h
    };
    let url = gw.url("testjson");
    let r = send("POST", &url, &with(vec![("mcp-method", "tools/list")]), call.clone()).await;
    assert_eq!(r.assert_rpc_error(400, -32020)["id"], 3);
    let r =
        send("POST", &url, &with(vec![("mcp-method", "tools/call"), ("mcp-name", "delete_item")]), call.clone()).await;
    r.assert_rpc_error(400, -32020);
    assert_eq!(gw.upstream_requests(), 0);
    // Agreeing headers pass the gateway (the server then judges the message itself).
    send("POST", &url, &with(vec![("mcp-method", "tools/call"), ("mcp-name", "get_item")]), call).await;
    assert!(gw.testjson.requests.all().iter().any(|r| r.rpc_name().as_deref() == Some("get_item")));
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_agrees_with_what_the_filter_did() {
    let mut plugin = common::plugin_config();
    policy(&mut plugin);
    let edited = plugin.clone();
    let gw = Gateway::start_with(move |c| *c = edited).await;
    let env = |name: &str| (name == common::JWK_ENV).then(|| gw.public_jwk().to_owned());
    let config = mcpgw::explain::load_config(&plugin.to_string(), &env).unwrap();

    let cases: Vec<(&str, &[&str], &str, &str, Value)> = vec![
        ("alice", &["developer"], "filesystem", "read_file", json!({"file_path": "/user/alice/notes.md"})),
        ("alice", &["developer"], "filesystem", "read_file", json!({"file_path": "/user/bob/notes.md"})),
        (
            "alice",
            &["developer"],
            "filesystem",
            "read_file",
            json!({"file_path": "/public/%2e%2e/private/salaries.csv"}),
        ),
        ("root", &["admin"], "filesystem", "read_file", json!({"file_path": "/private/salaries.csv"})),
        ("dave", &["developer"], "github", "create_issue", json!({"repository": "acme/website", "title": "t"})),
        ("dave", &["developer"], "github", "get_repository", json!({"repository": "acme/payroll"})),
        ("rita", &["readonly"], "github", "create_issue", json!({"repository": "acme/website", "title": "t"})),
        ("rita", &["readonly"], "testjson", "get_item", json!({"id": 1})),
        ("cora", &["contractor"], "testjson", "create_item", json!({"name": "x"})),
        ("cora", &["contractor"], "testjson", "delete_item", json!({"id": 2})),
        ("ivan", &["intern"], "testjson", "get_item", json!({"id": 1})),
    ];
    for (i, (user, roles, server, tool, args)) in cases.into_iter().enumerate() {
        let id = 100 + i64::try_from(i).unwrap();
        let request = tool_call(id, tool, args);
        let token = gw.token(user, roles);
        let r = post_json(&gw.url(server), Some(&token), &request).await;
        let filter_allowed = r.status != 403;
        // Refusals at headers time (no known role) are audited before the body is read.
        let audit = gw
            .envoy
            .wait_for_audit(|rec| rec["jsonrpc_id"] == id || (rec["user_id"] == *user && rec["method"].is_null()))
            .await;

        let claims = json!({"iss": "mcpgw-demo", "aud": "mcp-gateway", "sub": user, "roles": roles});
        let principal = mcpgw::explain::principal_from_claims(&config, &claims, None).unwrap();
        let message = mcp_gateway::jsonrpc::parse(request.to_string().as_bytes(), 32).unwrap();
        let explained = mcpgw::explain::explain(&config, &principal, server, Some(&message), None).unwrap();
        let explained_allowed = serde_json::to_value(explained.decision).unwrap() == "allow";
        assert_eq!(
            explained_allowed, filter_allowed,
            "{user} {server} {tool}: filter {audit} vs explain {explained:?}"
        );
        assert_eq!(serde_json::to_value(explained.decision).unwrap(), audit["decision"], "{user} {tool}");
        if let Some(reason) = &explained.reason {
            assert!(audit["reason"].as_str().unwrap().contains(reason.as_str()), "audit {audit} vs explain {reason}");
        }
    }
}
