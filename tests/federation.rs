//! A federated server (`/mcp/all`) through a real Envoy and sidecar, over real rmcp members:
//! merged and filtered lists, calls dispatched to the owning member and decided there by
//! the filter, with the caller's identity and the virtual server named in the audit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use common::envoy::Address;
use common::{plugin_config, post_in_session, Gateway, JWK_ENV};
use mcpgw::client::{connect, text};
use mcpgw::sidecar::{self, Config, Sidecar};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const SECRET_ENV: &str = "MCPGW_TEST_SIDECAR_SECRET";
const SECRET: &str = "federation-test-secret-0123";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The gateway with `all` over test, github and testjson (test and testjson offer the
/// same tools), and the sidecar serving it. `conflicts` is the federation's policy.
struct Federated {
    gw: Gateway,
    stop: tokio::sync::oneshot::Sender<()>,
    sidecar: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Federated {
    async fn start(conflicts: &str) -> Federated {
        Federated::start_with(json!({"members": ["test", "github", "testjson"], "conflicts": conflicts}), vec![]).await
    }

    /// With this `federation` section and more upstreams (name, path prefix, address).
    async fn start_with(federation: serde_json::Value, upstreams: Vec<(String, String, SocketAddr)>) -> Federated {
        let addr = free_addr();
        let mut plugin = plugin_config();
        plugin["servers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "all", "path_prefix": "/mcp/all", "kind": "federation", "federation": federation}));
        plugin["audit"] = json!({"sidecar": {"cluster": "sidecar", "secret_env": SECRET_ENV}});
        for role in ["developer", "readonly"] {
            plugin["rbac"]["roles"][role]["servers"].as_array_mut().unwrap().push(json!("all"));
        }
        // github's repositories: acme/payroll for admins only.
        plugin["resource_policies"] = json!({"github": {"arguments": ["repository"],
            "rules": [{"pattern": "acme/website", "roles": ["*"]}, {"pattern": "acme/payroll", "roles": ["admin"]}]}});
        for (name, prefix, _) in &upstreams {
            plugin["servers"].as_array_mut().unwrap().push(json!({"name": name, "path_prefix": prefix}));
        }
        let gw = Gateway::start_routed(
            |c| *c = plugin.clone(),
            vec![("sidecar".into(), Address::Tcp(addr))],
            vec![(SECRET_ENV.into(), SECRET.into())],
            upstreams,
            vec![("/mcp/all".into(), "sidecar".into())],
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("audit.db"), dir.path().join("checkpoint.key"), SECRET.into());
        config.checkpoint_every = Duration::from_secs(3600);
        config.retention_every = Duration::from_secs(3600);
        let env = |name: &str| match name {
            SECRET_ENV => Some(SECRET.to_owned()),
            JWK_ENV => Some(gw.public_jwk().to_owned()),
            _ => None,
        };
        let gateway = mcp_gateway::config::Config::from_json(plugin.to_string().as_bytes(), &env).unwrap();
        config.federation = sidecar::federation::virtual_servers(&gateway, &gw.envoy.url(""));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sidecar = tokio::spawn(sidecar::run(listener, Sidecar::open(config).unwrap(), async {
            let _ = stopped.await;
        }));
        Federated { gw, stop, sidecar, _dir: dir }
    }

    /// Stops the sidecar (its federated sessions end with it).
    async fn stop(self) {
        let _ = self.stop.send(());
        self.sidecar.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_merge_per_caller_and_calls_reach_their_member_decided_there() {
    let f = Federated::start("always_prefix").await;
    let developer = f.gw.token("dana", &["developer"]);
    let client = connect(&f.gw.envoy.url("/mcp/all"), Some(&developer)).await.expect("a session with /mcp/all");
    let names = client.tool_names().await.unwrap();
    // The developer's own view of each member, prefixed; testjson is not one of their
    // servers, so nothing of it.
    assert!(names.contains(&"github__create_issue".to_owned()), "{names:?}");
    assert!(names.contains(&"test__echo".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("testjson__")), "{names:?}");
    assert!(!names.contains(&"test__delete_item".to_owned()), "not a tool the developer may use: {names:?}");
    let said = client.call_tool("test__echo", json!({"text": "through all"})).await.unwrap();
    assert_eq!(text(&said), "through all");
    let seen = f.gw.test.requests.tool_calls("echo");
    assert_eq!(seen.len(), 1, "the member got the call under its own name");
    assert_eq!(seen[0].header("x-mcp-user-id"), Some("dana"));
    assert_eq!(seen[0].header("x-mcp-delegation"), None, "members never see the delegation");
    let record = f.gw.envoy.wait_for_audit(|r| r["target"] == "echo" && r["server"] == "test").await;
    assert_eq!((record["user_id"].as_str(), record["via"].as_str()), (Some("dana"), Some("all")));
    client.close().await.unwrap();
    // A readonly caller: the member's own policy refuses create_issue.
    let readonly = f.gw.token("rob", &["readonly"]);
    let client = connect(&f.gw.envoy.url("/mcp/all"), Some(&readonly)).await.unwrap();
    let names = client.tool_names().await.unwrap();
    assert!(!names.contains(&"github__create_issue".to_owned()), "{names:?}");
    // Not offered to them, and refused by the filter when called anyway (403, -32003).
    let refused = client.call_tool("github__create_issue", json!({"repository": "acme/website", "title": "x"})).await;
    let message = format!("{:?}", refused.expect_err("readonly may not create issues"));
    assert!(message.contains("-32003") && message.contains("Forbidden"), "{message}");
    assert!(!message.contains("Transport"), "the gateway's JSON-RPC error, not a transport error: {message}");
    assert!(f.gw.github.requests.tool_calls("create_issue").is_empty());
    // A listed tool on a resource the member's policy keeps from them: the filter refuses
    // the dispatched call (403, -32003), and the client gets that error.
    let payroll = client.call_tool("github__get_repository", json!({"repository": "acme/payroll"})).await;
    let message = format!("{:?}", payroll.expect_err("acme/payroll is for admins"));
    assert!(message.contains("-32003") && !message.contains("Transport"), "{message}");
    let record = f.gw.envoy.wait_for_audit(|r| r["target"] == "get_repository" && r["decision"] == "deny").await;
    assert_eq!((record["user_id"].as_str(), record["via"].as_str()), (Some("rob"), Some("all")));
    assert!(f.gw.github.requests.tool_calls("get_repository").is_empty());
    client.close().await.unwrap();
    f.stop().await;
}

/// The three naming policies over members offering the same tools (test and testjson):
/// prefix always, prefix only the names two members offer, or the first member wins. A
/// call goes to the member that owns the name under each.
#[tokio::test(flavor = "multi_thread")]
async fn name_conflicts_follow_the_configured_policy() {
    for (policy, offered, absent, echo_owner) in [
        ("always_prefix", ["test__echo", "testjson__echo", "github__get_repository"], "echo", "test__echo"),
        (
            "prefix_on_conflict",
            ["test__echo", "testjson__echo", "get_repository"],
            "github__get_repository",
            "test__echo",
        ),
        ("first_wins", ["echo", "get_repository", "whoami"], "testjson__echo", "echo"),
    ] {
        let f = Federated::start(policy).await;
        let admin = f.gw.token("ada", &["admin"]);
        let client = connect(&f.gw.envoy.url("/mcp/all"), Some(&admin)).await.unwrap();
        let names = client.tool_names().await.unwrap();
        for name in offered {
            assert!(names.contains(&name.to_owned()), "{policy}: {name} in {names:?}");
        }
        assert!(!names.contains(&absent.to_owned()), "{policy}: {absent} in {names:?}");
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{policy}: a name offered twice: {names:?}");
        assert_eq!(text(&client.call_tool(echo_owner, json!({"text": policy})).await.unwrap()), policy);
        assert_eq!(f.gw.test.requests.tool_calls("echo").len(), 1, "{policy}: the call went to test");
        assert!(f.gw.testjson.requests.tool_calls("echo").is_empty(), "{policy}");
        client.close().await.unwrap();
        f.stop().await;
    }
}

/// A member that is down (its route leads to a closed port): by default the list holds the
/// others' tools and names the missing member in `_meta`; with `partial_failure: fail`
/// the list fails with a JSON-RPC error naming it.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_down_is_named_or_fails_the_list() {
    for mode in ["partial", "fail"] {
        let federation = json!({"members": ["test", "ghost"], "partial_failure": mode});
        let f = Federated::start_with(federation, vec![("ghost".into(), "/mcp/ghost".into(), closed_port())]).await;
        let admin = f.gw.token("ada", &["admin"]);
        let url = f.gw.envoy.url("/mcp/all");
        let session = open_session(&url, &admin).await;
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        let reply = post_in_session(&url, &admin, &session, &list).await;
        assert_eq!(reply.status, 200, "{mode}");
        let message = rpc_message(&reply.body);
        if mode == "partial" {
            let tools = message["result"]["tools"].as_array().unwrap();
            assert!(tools.iter().any(|t| t["name"] == "test__echo"), "{mode}: {message}");
            assert_eq!(message["result"]["_meta"]["io.mcpgw/missing_members"], json!(["ghost"]), "{mode}: {message}");
        } else {
            assert!(message["error"]["message"].as_str().unwrap().contains("ghost"), "{mode}: {message}");
        }
        f.stop().await;
    }
}

/// A caller who renews their token mid-session: the next call carries the new delegation,
/// so the member session opened with the old one is replaced (the member sees a second
/// `initialize`), and the call goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_token_renews_the_member_sessions() {
    let f = Federated::start("always_prefix").await;
    let url = f.gw.envoy.url("/mcp/all");
    let first = f.gw.token("dana", &["developer"]);
    let mut renewal = mcpgw::token::TokenRequest::new("dana", &["developer"]);
    renewal.ttl = Duration::from_secs(7200);
    let renewed = f.gw.mint(renewal);
    let session = open_session(&url, &first).await;
    let call = |id: i64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "test__echo", "arguments": {"text": format!("call {id}")}}})
    };
    let initializes = || f.gw.test.requests.with_rpc_method("initialize").len();
    for (id, token, sessions) in [(2, &first, 1), (3, &first, 1), (4, &renewed, 2), (5, &renewed, 2)] {
        let reply = post_in_session(&url, token, &session, &call(id)).await;
        assert_eq!(reply.status, 200, "call {id}");
        assert_eq!(rpc_message(&reply.body)["result"]["content"][0]["text"], format!("call {id}"));
        assert_eq!(initializes(), sessions, "member sessions after call {id}");
    }
    f.stop().await;
}

/// Content-based routing: `echo`, which two members offer, is offered once under its own
/// name; a call with the argument a rule names goes to that rule's member, one without
/// to the default member, and with no default it gets a JSON-RPC error saying what would
/// route it.
#[tokio::test(flavor = "multi_thread")]
async fn routing_rules_pick_the_member_by_the_arguments() {
    for default in [Some("test"), None] {
        let mut federation = json!({"members": ["test", "github", "testjson"],
            "routes": [{"tool": "echo", "arguments": ["json"], "member": "testjson"}]});
        if let Some(d) = default {
            federation["default_member"] = json!(d);
        }
        let f = Federated::start_with(federation, vec![]).await;
        let admin = f.gw.token("ada", &["admin"]);
        let client = connect(&f.gw.envoy.url("/mcp/all"), Some(&admin)).await.unwrap();
        let tools = client.list_tools().await.unwrap();
        let echo: Vec<_> = tools.iter().filter(|t| t.name == "echo").collect();
        assert_eq!(echo.len(), 1, "{tools:?}");
        assert!(echo[0].input_schema.get("required").is_none(), "{:?}", echo[0].input_schema);
        let said = client.call_tool("echo", json!({"text": "to json", "json": true})).await.unwrap();
        assert_eq!(text(&said), "to json");
        assert_eq!(f.gw.testjson.requests.tool_calls("echo").len(), 1, "the rule's member");
        let plain = client.call_tool("echo", json!({"text": "plain"})).await;
        match default {
            Some(_) => {
                assert_eq!(text(&plain.unwrap()), "plain");
                assert_eq!(f.gw.test.requests.tool_calls("echo").len(), 1, "the default member");
            }
            None => {
                let message = format!("{:?}", plain.expect_err("no rule and no default"));
                assert!(message.contains("argument json for testjson"), "{message}");
                assert!(f.gw.test.requests.tool_calls("echo").is_empty());
            }
        }
        client.close().await.unwrap();
        f.stop().await;
    }
}

/// The multi-server query (`mcpgw/query` on the virtual server): one request fanned out
/// to the servers named, each decided by the filter as the caller's own; errors are
/// values; the confidence score is the share that answered; results merge without a
/// silent overwrite (arrays concatenate, differing values are kept by server).
#[tokio::test(flavor = "multi_thread")]
async fn the_multi_server_query_fans_out_and_scores_who_answered() {
    let federation = json!({"members": ["test", "testjson", "ghost"], "member_timeout_ms": 3000});
    let f = Federated::start_with(federation, vec![("ghost".into(), "/mcp/ghost".into(), closed_port())]).await;
    let admin = f.gw.token("ada", &["admin"]);
    let url = f.gw.envoy.url("/mcp/all");
    let session = open_session(&url, &admin).await;
    let query = |id: i64, servers: serde_json::Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "mcpgw/query", "params": {
            "servers": servers,
            "request": {"method": "tools/call", "params": {"name": "echo", "arguments": {"text": "asked"}}}}})
    };
    let reply = post_in_session(&url, &admin, &session, &query(2, json!(["test", "testjson", "ghost"]))).await;
    let result = rpc_message(&reply.body)["result"].clone();
    assert_eq!(result["confidence_score"], json!(0.667), "{result}");
    assert_eq!(result["individual_results"]["test"]["ok"], true, "{result}");
    assert_eq!(result["individual_results"]["ghost"]["ok"], false, "{result}");
    assert!(result["individual_results"]["ghost"]["error"]["message"].is_string(), "{result}");
    // Both echoes' content, concatenated; their equal isError kept once.
    let content = result["aggregated_result"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2, "{result}");
    assert!(content.iter().all(|c| c["text"] == "asked"), "{result}");
    assert_eq!(result["conflicts"], json!([]), "{result}");
    // Each call was the caller's own through the gateway.
    for server in ["test", "testjson"] {
        let record = f.gw.envoy.wait_for_audit(|r| r["server"] == server && r["target"] == "echo").await;
        assert_eq!((record["user_id"].as_str(), record["via"].as_str()), (Some("ada"), Some("all")), "{server}");
    }
    // A developer may not reach testjson: its refusal is one of the results, not a failure.
    let developer = f.gw.token("dana", &["developer"]);
    let session = open_session(&url, &developer).await;
    let reply = post_in_session(&url, &developer, &session, &query(3, json!(["test", "testjson"]))).await;
    let result = rpc_message(&reply.body)["result"].clone();
    assert_eq!(result["confidence_score"], json!(0.5), "{result}");
    assert_eq!(result["individual_results"]["testjson"]["error"]["code"], -32003, "{result}");
    // Not a member: refused.
    let reply = post_in_session(&url, &admin, &session, &query(4, json!(["github"]))).await;
    assert!(rpc_message(&reply.body)["error"]["message"].is_string());
    f.stop().await;
}

/// A member restarted mid-session (its sessions gone): the virtual server's session with
/// the client goes on; the member session is opened again and the calls go through.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_restarted_mid_session_is_reopened_unnoticed() {
    let mut f = Federated::start("always_prefix").await;
    let developer = f.gw.token("dana", &["developer"]);
    let client = connect(&f.gw.envoy.url("/mcp/all"), Some(&developer)).await.unwrap();
    assert_eq!(text(&client.call_tool("test__echo", json!({"text": "before"})).await.unwrap()), "before");
    // Stop the member, then start a new one on its address (the route stays the same).
    let addr = f.gw.test.addr;
    let loopback = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let stand_in = mcpgw::spawn(mcpgw::ServerKind::Test, loopback().await).await.unwrap();
    std::mem::replace(&mut f.gw.test, stand_in).shutdown().await.unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let restarted = mcpgw::spawn(mcpgw::ServerKind::Test, listener).await.unwrap();
    std::mem::replace(&mut f.gw.test, restarted).shutdown().await.unwrap();
    for list in [true, false] {
        if list {
            let names = client.tool_names().await.unwrap();
            assert!(names.contains(&"test__echo".to_owned()), "{names:?}");
        }
        let said = client.call_tool("test__echo", json!({"text": "after"})).await.unwrap();
        assert_eq!(text(&said), "after");
    }
    assert_eq!(f.gw.test.requests.with_rpc_method("initialize").len(), 1, "the new server saw one initialize");
    client.close().await.unwrap();
    f.stop().await;
}

/// A loopback port nothing listens on (discard; never a port another test binds).
fn closed_port() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

/// Opens a session with raw HTTP; returns its id.
async fn open_session(url: &str, token: &str) -> String {
    let opened = common::post_json(url, Some(token), &common::initialize()).await;
    assert_eq!(opened.status, 200, "{:?}", String::from_utf8_lossy(&opened.body));
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post_in_session(url, token, &session, &initialized).await.status, 202);
    session
}

/// The JSON-RPC message of a reply, JSON or one SSE event.
fn rpc_message(body: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.contains("\"jsonrpc\""))
        .unwrap_or(text.trim());
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"))
}
