//! A third-party MCP server behind the gateway: the official `server-everything`
//! (TypeScript SDK, from npm; `make test` installs it into tests/interop), reached through
//! a real Envoy by rmcp's client. Its tools carry MCP annotations, so per-caller lists are
//! decided by operations the gateway learns from a server it did not write.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::envoy::root;
use common::Gateway;
use mcpgw::client::{connect, text};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// server-everything on a free loopback port, killed on drop.
struct Everything {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn everything() -> Everything {
    let dir = root().join("tests/interop");
    let entry = dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(entry.exists(), "server-everything is not installed: run `make test` (it runs npm ci in tests/interop)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("node")
        .current_dir(&dir)
        .args(["-r", "./loopback.cjs"])
        .arg(&entry)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "server-everything did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Everything { child, addr }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_everything_behind_the_gateway() {
    let server = everything().await;
    let gw = Gateway::start_custom(
        |c| {
            c["servers"].as_array_mut().unwrap().push(json!({"name": "everything", "path_prefix": "/mcp/everything"}));
            c["rbac"] = json!({"roles": {
                "admin": {"servers": ["*"], "tools": ["*"], "resources": ["**"], "prompts": ["*"]},
                "readonly": {"servers": ["everything"], "tools": ["*"], "operations": ["read"]},
                "developer": {"servers": ["everything"], "tools": ["*"], "operations": ["read", "write"]}
            }});
        },
        vec![],
        vec![],
        vec![("everything".into(), "/mcp/everything".into(), server.addr)],
    )
    .await;
    let url = gw.url("everything");

    let admin = connect(&url, Some(&gw.token("root", &["admin"]))).await.expect("handshake through the gateway");
    let all = admin.tool_names().await.unwrap();
    assert!(
        all.contains(&"echo".to_string()) && all.contains(&"trigger-long-running-operation".to_string()),
        "{all:?}"
    );

    // The readonly role sees exactly the tools server-everything marks readOnlyHint.
    let tools = admin.list_tools().await.unwrap();
    let mut read_only: Vec<String> = tools
        .iter()
        .filter(|t| t.annotations.as_ref().and_then(|a| a.read_only_hint) == Some(true))
        .map(|t| t.name.to_string())
        .collect();
    read_only.sort();
    assert!(!read_only.is_empty() && read_only.len() < all.len());
    let readonly = connect(&url, Some(&gw.token("rita", &["readonly"]))).await.unwrap();
    assert_eq!(readonly.tool_names().await.unwrap(), read_only);
    let echoed = readonly.call_tool("echo", json!({"message": "through envoy"})).await.unwrap();
    assert!(text(&echoed).contains("through envoy"), "{}", text(&echoed));
    // toggle-simulated-logging says readOnlyHint: false, destructiveHint: false (a write).
    assert!(!read_only.contains(&"toggle-simulated-logging".to_string()));
    let refused = readonly.call_tool("toggle-simulated-logging", json!({})).await;
    assert!(refused.is_err(), "a write tool was allowed for readonly: {refused:?}");
    let developer = connect(&url, Some(&gw.token("dave", &["developer"]))).await.unwrap();
    assert!(developer.call_tool("toggle-simulated-logging", json!({})).await.is_ok());

    // Progress notifications from a third-party server arrive through the gateway. rmcp
    // handles each notification in a task of its own, so the last one may be delivered
    // after the call returned: wait for all three.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rmcp::model::ProgressNotificationParam>();
    let done = developer
        .call_tool_with_progress("trigger-long-running-operation", json!({"duration": 1, "steps": 3}), tx)
        .await
        .unwrap();
    assert!(text(&done).contains("completed"), "{}", text(&done));
    let mut progress = Vec::new();
    while progress.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(p)) => progress.push(p.progress),
            Ok(None) => break,
            Err(_) => panic!("progress notifications missing after 20 s: got {progress:?}"),
        }
    }
    assert_eq!(progress, vec![1.0, 2.0, 3.0]);
    let rec = gw.envoy.wait_for_audit(|r| r["user_id"] == "rita" && r["hidden"].is_array()).await;
    assert!(rec["hidden"].as_array().unwrap().iter().any(|t| t == "toggle-simulated-logging"), "{rec}");
}
