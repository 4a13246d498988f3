//! End-to-end behaviour through a real Envoy with a real MCP client (rmcp) and real MCP
//! servers (rmcp) behind it.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::envoy::{envoy_binary, root, Envoy, EnvoyOptions};
use common::{plugin_config, post_json, send, tool_call, Gateway, JWK_ENV};
use mcpgw::client::{connect, text};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn allowed_tool_call_end_to_end() {
    let gw = Gateway::start().await;
    let token = gw.token("alice", &["developer"]);
    let client = connect(&gw.url("github"), Some(&token)).await.expect("MCP handshake through the gateway");
    let result = client.call_tool("get_repository", json!({"repository": "acme/website"})).await.expect("tool call");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert!(text(&result).contains("acme/website"), "{}", text(&result));

    let names = client.tool_names().await.unwrap();
    assert!(names.contains(&"create_issue".to_string()), "{names:?}");

    // The upstream saw the gateway's identity headers and not the client's token.
    let call = gw
        .github
        .requests
        .all()
        .into_iter()
        .find(|r| r.rpc_name().as_deref() == Some("get_repository"))
        .expect("tool call reached the server");
    assert_eq!(call.header("x-mcp-user-id"), Some("alice"));
    assert_eq!(call.header("x-mcp-roles"), Some("developer"));
    assert_eq!(call.header("x-mcp-server"), Some("github"));
    assert!(call.header("x-mcp-request-id").is_some_and(|id| !id.is_empty()));
    assert!(call.header("x-mcp-session-id").is_some_and(|id| !id.is_empty()), "session id not propagated");
    assert_eq!(call.header("authorization"), None, "the client's token reached the upstream");

    let rec = gw.envoy.wait_for_audit(|r| r["target"] == "get_repository" && r["decision"] == "allow").await;
    assert_eq!(rec["user_id"], "alice");
    assert_eq!(rec["server"], "github");
    assert_eq!(rec["method"], "tools/call");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["success"], true);
    assert_eq!(rec["params"]["repository"], "acme/website");
    assert_eq!(rec["client_ip"], "127.0.0.1");
    client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn readonly_caller_is_refused_by_a_real_client() {
    let gw = Gateway::start().await;
    let token = gw.token("bob", &["readonly"]);
    let client = connect(&gw.url("github"), Some(&token)).await.unwrap();
    let err = client
        .call_tool("create_issue", json!({"repository": "acme/website", "title": "nope"}))
        .await
        .expect_err("readonly must not create issues");
    assert!(format!("{err:#}").contains("403"), "{err:#}");
    let reached = gw.github.requests.all().iter().any(|r| r.rpc_name().as_deref() == Some("create_issue"));
    assert!(!reached, "denied call reached the upstream");
    // Still usable for what the role allows.
    let ok = client.call_tool("list_issues", json!({"repository": "acme/website"})).await.unwrap();
    assert_ne!(ok.is_error, Some(true));
    assert!(connect(&gw.url("github"), None).await.is_err(), "handshake without a token succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let gw = Gateway::start().await;
    let auth = format!("Bearer {}", gw.token("alice", &["developer"]));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let r = send(
        "POST",
        &gw.url("test"),
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("authorization", &auth),
            ("X-MCP-User-Id", "mallory"),
            ("x-mcp-roles", "admin"),
            ("X-Mcp-Roles", "root"),
            ("x-MCP-anything-else", "spoof"),
            ("x-mcp-request-id", "forged"),
        ],
        init.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let seen = gw.test.requests.last().expect("request reached the upstream");
    let identity: Vec<_> = seen.headers.iter().filter(|(n, _)| n.starts_with("x-mcp-")).collect();
    assert_eq!(seen.header("x-mcp-user-id"), Some("alice"), "{identity:?}");
    assert_eq!(seen.header("x-mcp-roles"), Some("developer"), "{identity:?}");
    assert_ne!(seen.header("x-mcp-request-id"), Some("forged"));
    for (name, value) in &seen.headers {
        assert!(!["mallory", "admin", "root", "spoof", "forged"].contains(&value.as_str()), "{name}: {value} leaked");
    }
    assert_eq!(identity.iter().filter(|(n, _)| n == "x-mcp-user-id").count(), 1);
    assert_eq!(identity.iter().filter(|(n, _)| n == "x-mcp-roles").count(), 1);

    // The same through a real client: the upstream's own view of its request headers.
    let token = gw.token("carol", &["developer"]);
    let client = connect(&gw.url("test"), Some(&token)).await.unwrap();
    let whoami = text(&client.call_tool("whoami", json!({})).await.unwrap());
    assert!(whoami.contains("carol"), "{whoami}");
    assert!(!whoami.to_ascii_lowercase().contains("bearer"), "token reached the upstream: {whoami}");
    client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_progress_notifications_stream_one_by_one() {
    let gw = Gateway::start().await;
    let token = gw.token("alice", &["developer"]);
    let client = connect(&gw.url("test"), Some(&token)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rmcp::model::ProgressNotificationParam>();
    let steps = 3u32;
    let gate = gw.test.gate.clone();
    // The server sends notification i, then waits for the test to open the gate. The
    // test opens it only after notification i arrived, so a proxy that buffered the SSE
    // reply would deadlock here (and the timeout fails the test).
    let receiver = async move {
        let mut seen = Vec::new();
        for _ in 0..steps {
            let p = rx.recv().await.expect("progress notification");
            seen.push(p.progress);
            gate.add_permits(1);
        }
        seen
    };
    let call = client.call_tool_with_progress("stepped", json!({"steps": steps}), tx);
    let (seen, result) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(receiver, call) })
        .await
        .expect("progress did not stream through the gateway (buffered?)");
    assert_eq!(seen, vec![1.0, 2.0, 3.0]);
    assert_eq!(text(&result.expect("stepped result")), "done");
    client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_lines_are_written_and_hold_no_secret() {
    let gw = Gateway::start().await;
    let token = gw.token("alice", &["developer"]);
    let client = connect(&gw.url("test"), Some(&token)).await.unwrap();
    let secret = "hunter2-very-secret";
    client
        .call_tool("echo", json!({"text": "hello", "password": secret, "nested": {"api_key": secret}}))
        .await
        .expect("echo");
    // A denied call with a secret in its arguments is audited too.
    let r = post_json(&gw.url("test"), Some(&token), &tool_call(77, "delete_item", json!({"token": secret}))).await;
    r.assert_rpc_error(403, -32003);

    let allowed = gw.envoy.wait_for_audit(|r| r["target"] == "echo").await;
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["params"]["text"], "hello");
    assert_eq!(allowed["params"]["password"], "[REDACTED]");
    assert_eq!(allowed["params"]["nested"]["api_key"], "[REDACTED]");
    for field in [
        "timestamp",
        "request_id",
        "user_id",
        "server",
        "method",
        "success",
        "status",
        "response_time_ms",
        "client_ip",
        "session_id",
    ] {
        assert!(!allowed[field].is_null(), "audit record lacks {field}: {allowed}");
    }
    let denied = gw.envoy.wait_for_audit(|r| r["jsonrpc_id"] == 77).await;
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["status"], 403);

    let log = gw.envoy.log();
    assert!(!log.contains(secret), "a secret argument reached Envoy's log");
    assert!(!log.contains(&token), "the bearer token reached Envoy's log");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the token signature reached Envoy's log");
    client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_configuration_is_refused_naming_the_field() {
    let cases = [
        ("jwt.providers[0].keys[0].alg", json!({"alg": "none", "jwk_env": JWK_ENV})),
        ("jwt.providers[0].keys[0].jwk_env", json!({"alg": "ES256", "jwk_env": "MCPGW_NOT_SET"})),
    ];
    for (field, key) in cases {
        let mut config = plugin_config();
        config["jwt"]["providers"][0]["keys"][0] = key;
        let log = Envoy::expect_refusal(EnvoyOptions {
            plugin_config: config,
            upstreams: vec![("test".into(), "/mcp/test".into(), "127.0.0.1:9".parse().unwrap())],
            env: vec![(JWK_ENV.into(), "{}".into())],
            clusters: vec![],
            plain_routes: vec![],
            replicas: vec![],
            session_affinity: false,
            regional: vec![],
        })
        .await
        .expect("envoy must refuse the configuration");
        assert!(log.contains(&format!("`{field}`")), "log does not name {field}:\n{log}");
    }

    let mut config = plugin_config();
    config["rbac"]["roles"]["developer"]["toolz"] = json!(["*"]);
    let log = Envoy::expect_refusal(EnvoyOptions {
        plugin_config: config,
        upstreams: vec![("test".into(), "/mcp/test".into(), "127.0.0.1:9".parse().unwrap())],
        env: vec![(JWK_ENV.into(), "{}".into())],
        clusters: vec![],
        plain_routes: vec![],
        replicas: vec![],
        session_affinity: false,
        regional: vec![],
    })
    .await
    .unwrap();
    assert!(log.contains("rbac.roles.developer.toolz"), "{log}");
}

/// Every Envoy configuration under `envoy/` loads: `envoy --mode validate` builds its
/// listeners, routes, clusters (health checks, priorities, retry plugins) and the filter
/// with its plugin configuration.
#[test]
fn every_envoy_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let keys = mcpgw::token::keygen(dir.path()).unwrap();
    let jwk = std::fs::read_to_string(keys.public_key).unwrap();
    let _ = common::envoy::wasm_path();
    let mut files: Vec<_> = std::fs::read_dir(root().join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.iter().any(|p| p.ends_with("envoy/demo.yaml")), "{files:?}");
    for file in files {
        let out = Command::new(envoy_binary())
            .current_dir(root())
            .arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(&file)
            .arg("--use-dynamic-base-id")
            .env("MCPGW_DEMO_JWK", &jwk)
            .env("MCPGW_SIDECAR_SECRET", "demo-validation-secret-0123")
            .env("MCPGW_SESSION_KEY", "a demo validation key of at least 32 bytes")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {log}", file.display());
        if file.ends_with("envoy/demo.yaml") {
            // The two MCP servers, the federated /mcp/all, and the sidecar's /audit and /events.
            assert!(log.contains("configured 5 servers"), "the filter did not load its configuration:\n{log}");
        }
    }
}

/// One Prometheus sample: `name{k="v",...} value`, labels as a sorted list.
fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let mut labels: Vec<(String, String)> = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| kv.split_once("=\""))
                .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
                .collect();
            labels.sort();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

fn sample(all: &[(Vec<(String, String)>, f64)], labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    want.sort();
    all.iter().filter(|(l, _)| *l == want).map(|(_, v)| v).sum()
}

/// `/stats/prometheus` counts requests by decision, MCP method and server (as labels),
/// authentication failures by reason, and has the filter time of every request in its
/// histogram.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_stats_count_requests_by_decision_method_server_and_failure_reason() {
    let gw = Gateway::start().await;
    let admin = gw.token("alice", &["admin"]);
    let readonly = gw.token("bob", &["readonly"]);
    let mut expired = mcpgw::token::TokenRequest::new("carol", &["admin"]);
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 600;
    expired.extra_claims.insert("exp".into(), json!(past));
    let expired = gw.mint(expired);
    let url = gw.url("testjson");
    for id in 1..=2 {
        assert_eq!(post_json(&url, Some(&admin), &tool_call(id, "echo", json!({"text": "x"}))).await.status, 200);
    }
    let refused = tool_call(3, "create_issue", json!({"repository": "acme/website", "title": "x"}));
    assert_eq!(post_json(&gw.url("github"), Some(&readonly), &refused).await.status, 403);
    let list = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"});
    assert_eq!(post_json(&url, Some(&admin), &list).await.status, 200);
    let odd = json!({"jsonrpc": "2.0", "id": 5, "method": "made.up/method"});
    post_json(&url, Some(&admin), &odd).await;
    assert_eq!(post_json(&url, None, &tool_call(6, "echo", json!({}))).await.status, 401);
    assert_eq!(post_json(&url, Some("garbage"), &tool_call(7, "echo", json!({}))).await.status, 401);
    assert_eq!(post_json(&url, Some(&expired), &tool_call(8, "echo", json!({}))).await.status, 401);
    let made = 8.0;
    gw.envoy
        .wait_for_audit(|r| r["status"] == 401 && r["reason"].as_str().is_some_and(|s| s.contains("expired")))
        .await;

    // Envoy drops the `wasmcustom` namespace from Prometheus names.
    // Histograms reach the admin page when Envoy next merges them (every 5 s by default).
    let url = format!("http://127.0.0.1:{}/stats/prometheus", gw.envoy.admin_port);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let count = sample(&samples(&text, "mcp_gateway_filter_time_us_count"), &[]);
        if count >= made {
            break text;
        }
        let ours: Vec<&str> = text.lines().filter(|l| l.contains("mcp_gateway")).collect();
        assert!(std::time::Instant::now() < deadline, "filter time histogram holds {count} of {made}:\n{ours:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let requests = samples(&text, "mcp_gateway_requests");
    let by = |decision: &str, method: &str, server: &str| {
        sample(&requests, &[("mcp_decision", decision), ("mcp_method", method), ("mcp_server", server)])
    };
    assert_eq!(by("allow", "tools/call", "testjson"), 2.0, "{requests:?}");
    assert_eq!(by("deny", "tools/call", "github"), 1.0, "{requests:?}");
    assert_eq!(by("allow", "tools/list", "testjson"), 1.0, "{requests:?}");
    assert_eq!(by("deny", "none", "testjson"), 3.0, "refused before the body: {requests:?}");
    let odd_counted = by("allow", "other", "testjson") + by("deny", "other", "testjson");
    assert_eq!(odd_counted, 1.0, "an unknown method counts as other: {requests:?}");
    assert_eq!(requests.iter().map(|(_, v)| v).sum::<f64>(), made, "{requests:?}");
    assert!(!text.contains("made.up"), "a client's method name became a stat");

    let failures = samples(&text, "mcp_gateway_auth_failures");
    for reason in ["missing_token", "malformed", "expired"] {
        assert_eq!(sample(&failures, &[("mcp_auth_failure", reason)]), 1.0, "{failures:?}");
    }
    assert_eq!(failures.len(), 3, "{failures:?}");
    let time = samples(&text, "mcp_gateway_filter_time_us_sum");
    assert!(sample(&time, &[]) > 0.0, "{time:?}");
    let buckets = samples(&text, "mcp_gateway_filter_time_us_bucket");
    assert_eq!(sample(&buckets, &[("le", "+Inf")]), sample(&samples(&text, "mcp_gateway_filter_time_us_count"), &[]));
}
