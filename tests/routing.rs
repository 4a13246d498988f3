//! Routing through a real Envoy: which server a request path reaches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use common::envoy::{Envoy, EnvoyOptions};
use common::{plugin_config, post_json, send, tool_call, Gateway, JWK_ENV};
use mcpgw::client::{connect, text};
use mcpgw::token::{keygen, mint, TokenRequest};
use mcpgw::{spawn, RunningServer, ServerKind};
use serde_json::json;
use std::collections::HashSet;

/// `/mcp/{server}` and the seed's `/proxy/{server}/mcp` reach the same server, which sees
/// its own `/mcp` path and the call as authorized; a path naming no server is a JSON-RPC
/// 404 that reaches no upstream, in either form.
#[tokio::test]
async fn both_path_forms_reach_the_server_and_an_unknown_one_is_a_json_rpc_404() {
    let gw = Gateway::start().await;
    let token = gw.token("alice", &["admin"]);
    for path in ["/mcp/testjson", "/proxy/testjson/mcp"] {
        gw.testjson.requests.clear();
        let reply = post_json(&gw.envoy.url(path), Some(&token), &tool_call(1, "echo", json!({"text": path}))).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["result"]["content"][0]["text"], path, "{path}");
        let seen = gw.testjson.requests.all();
        assert_eq!(seen.len(), 1, "{path}: {seen:?}");
        assert_eq!(seen[0].path, "/mcp", "{path}");
        assert_eq!(seen[0].rpc_name().as_deref(), Some("echo"), "{path}");
    }
    for path in ["/proxy/gitlab/mcp", "/mcp/gitlab", "/proxy/testjson", "/proxy/testjson/mcpx", "/proxy/test/json/mcp"]
    {
        let before = gw.upstream_requests();
        let reply = post_json(&gw.envoy.url(path), Some(&token), &tool_call(2, "echo", json!({"text": "x"}))).await;
        assert_eq!(reply.status, 404, "{path}");
        reply.assert_rpc_error(404, -32004);
        assert_eq!(gw.upstream_requests(), before, "{path} reached an upstream");
    }
}

/// Two servers whose prefixes overlap (one is the other's, or below it) would leave which
/// one a path reaches to route order: Envoy refuses to load such a configuration, and the
/// log names the field and both servers.
#[tokio::test]
async fn overlapping_prefixes_are_refused_when_envoy_loads_the_filter() {
    for (second, other) in [("/mcp/test/inner", "/mcp/test"), ("/proxy/test/mcp", "/proxy/test/mcp")] {
        let mut config = plugin_config();
        config["servers"].as_array_mut().unwrap().push(json!({"name": "inner", "path_prefix": second}));
        let log = Envoy::expect_refusal(EnvoyOptions {
            plugin_config: config,
            upstreams: vec![("test".into(), "/mcp/test".into(), "127.0.0.1:9".parse().unwrap())],
            env: vec![(JWK_ENV.into(), "{}".into())],
            clusters: vec![],
            plain_routes: vec![],
            replicas: vec![],
            session_affinity: false,
        })
        .await
        .expect("envoy must refuse the configuration");
        let index = plugin_config()["servers"].as_array().unwrap().len();
        assert!(log.contains(&format!("servers[{index}].path_prefix")), "{second}: {log}");
        assert!(log.contains(&format!("{other:?}")) && log.contains("one server"), "{second}: {log}");
    }
}

/// A server with two replicas behind Envoy's stateful session filter (the envelope of
/// `Mcp-Session-Id`): new sessions spread over both, every request of a session reaches
/// the replica that issued it, and the replica only ever sees its own session id.
#[tokio::test]
async fn a_session_stays_on_the_replica_that_issued_it() {
    let keys = tempfile::tempdir().unwrap();
    let files = keygen(keys.path()).unwrap();
    let signing = std::fs::read_to_string(&files.signing_key).unwrap();
    let public = std::fs::read_to_string(&files.public_key).unwrap();
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let a = spawn(ServerKind::Test, listener().await).await.unwrap();
    let b = spawn(ServerKind::Test, listener().await).await.unwrap();
    let mut config = plugin_config();
    config["servers"].as_array_mut().unwrap().push(json!({"name": "replicated", "path_prefix": "/mcp/replicated"}));
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: config,
        upstreams: vec![("replicated".into(), "/mcp/replicated".into(), a.addr)],
        env: vec![(JWK_ENV.into(), public)],
        clusters: vec![],
        plain_routes: vec![],
        replicas: vec![("replicated".into(), vec![b.addr])],
        session_affinity: true,
    })
    .await
    .unwrap();
    let token = mint(&signing, &TokenRequest::new("alice", &["admin"])).unwrap();
    let url = envoy.url("/mcp/replicated");
    // 16 sessions: all on one replica by chance is a 1 in 30,000 event.
    const SESSIONS: usize = 16;
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        clients.push(connect(&url, Some(&token)).await.unwrap());
    }
    for (i, client) in clients.iter().enumerate() {
        for k in 0..3 {
            let said = format!("{i}-{k}");
            assert_eq!(text(&client.call_tool("echo", json!({"text": said})).await.unwrap()), said);
        }
    }
    let sessions = |s: &RunningServer| s.requests.header_values("mcp-session-id").into_iter().collect::<HashSet<_>>();
    let (on_a, on_b) = (sessions(&a), sessions(&b));
    assert!(!on_a.is_empty() && !on_b.is_empty(), "new sessions spread: {} on a, {} on b", on_a.len(), on_b.len());
    assert!(on_a.is_disjoint(&on_b), "a session's requests reached both replicas");
    assert_eq!(on_a.len() + on_b.len(), SESSIONS);
    for (replica, ids) in [(&a, &on_a), (&b, &on_b)] {
        // Each replica issued the sessions it served, and saw each id as it issued it.
        assert_eq!(replica.requests.with_rpc_method("initialize").len(), ids.len());
        assert!(ids.iter().all(|id| !id.contains(";UV:")), "{ids:?}");
        let calls = replica.requests.with_rpc_method("tools/call").len();
        assert_eq!(calls, ids.len() * 3, "every call of a session on its replica");
    }
    // The client holds the envelope (the replica's address travels with the id), and a
    // request with it goes to that replica whichever Envoy worker takes it.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let opened = post_json(&url, Some(&token), &init).await;
    assert_eq!(opened.status, 200);
    let enveloped = opened.header("mcp-session-id").unwrap().to_owned();
    assert!(enveloped.contains(";UV:"), "{enveloped}");
    let auth = format!("Bearer {token}");
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("authorization", auth.as_str()),
        ("mcp-session-id", enveloped.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let before = (a.requests.len(), b.requests.len());
    for id in 2..6 {
        let reply = send("POST", &url, &headers, tool_call(id, "echo", json!({"text": "raw"})).to_string()).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    }
    let grew = (a.requests.len() - before.0, b.requests.len() - before.1);
    assert!(grew == (4, 0) || grew == (0, 4), "the raw session's calls went {grew:?}");
}

/// Two gateway replicas (two Envoys, nothing shared but their configuration and the
/// session binding key) in front of the same two server replicas: a session opened
/// through one is served through the other, on the replica that issued it, and the
/// replica sees only its own id. Another caller with the same id gets 404.
#[tokio::test]
async fn a_session_opened_through_one_gateway_is_served_by_another() {
    const KEY_ENV: &str = "MCPGW_TEST_SESSION_KEY";
    let keys = tempfile::tempdir().unwrap();
    let files = keygen(keys.path()).unwrap();
    let signing = std::fs::read_to_string(&files.signing_key).unwrap();
    let public = std::fs::read_to_string(&files.public_key).unwrap();
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let a = spawn(ServerKind::Test, listener().await).await.unwrap();
    let b = spawn(ServerKind::Test, listener().await).await.unwrap();
    let mut config = plugin_config();
    config["servers"].as_array_mut().unwrap().push(json!({"name": "replicated", "path_prefix": "/mcp/replicated"}));
    config["session_binding_key_env"] = json!(KEY_ENV);
    let gateway = || {
        Envoy::start(EnvoyOptions {
            plugin_config: config.clone(),
            upstreams: vec![("replicated".into(), "/mcp/replicated".into(), a.addr)],
            env: vec![
                (JWK_ENV.into(), public.clone()),
                (KEY_ENV.into(), "a key both gateway replicas share, 0123456789".into()),
            ],
            clusters: vec![],
            plain_routes: vec![],
            replicas: vec![("replicated".into(), vec![b.addr])],
            session_affinity: true,
        })
    };
    let (one, two) = (gateway().await.unwrap(), gateway().await.unwrap());
    let alice = mint(&signing, &TokenRequest::new("alice", &["admin"])).unwrap();
    let bob = mint(&signing, &TokenRequest::new("bob", &["admin"])).unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let opened = post_json(&one.url("/mcp/replicated"), Some(&alice), &init).await;
    assert_eq!(opened.status, 200, "{:?}", String::from_utf8_lossy(&opened.body));
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    let in_session = |envoy: &Envoy, token: &str, body: serde_json::Value| {
        let (url, auth, session) = (envoy.url("/mcp/replicated"), format!("Bearer {token}"), session.clone());
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("authorization", auth.as_str()),
                ("mcp-session-id", session.as_str()),
                ("mcp-protocol-version", "2025-06-18"),
            ];
            send("POST", &url, &headers, body.to_string()).await
        }
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(in_session(&two, &alice, initialized).await.status, 202);
    for (id, envoy) in [(2, &two), (3, &one), (4, &two)] {
        let reply = in_session(envoy, &alice, tool_call(id, "echo", json!({"text": "across"}))).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
        assert!(String::from_utf8_lossy(&reply.body).contains("across"));
    }
    let (issuer, other) = if a.requests.with_rpc_method("initialize").is_empty() { (&b, &a) } else { (&a, &b) };
    assert_eq!(issuer.requests.with_rpc_method("tools/call").len(), 3, "every call on the replica that issued it");
    assert!(other.requests.is_empty(), "the other replica saw {:?}", other.requests.all());
    let ids: HashSet<String> = issuer.requests.header_values("mcp-session-id").into_iter().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids.iter().all(|id| !id.contains(";UV:") && !session.ends_with(id.as_str())), "{ids:?} / {session}");
    // Bob holding alice's session id: unknown to him, through either gateway.
    let before = issuer.requests.len();
    for envoy in [&one, &two] {
        in_session(envoy, &bob, tool_call(9, "echo", json!({"text": "x"}))).await.assert_rpc_error(404, -32004);
    }
    assert_eq!(issuer.requests.len(), before);
}

/// When a session's replica is gone, the client gets the spec's 404 with a JSON-RPC error
/// (not Envoy's 503), and its new `initialize` lands on a live replica, even if the
/// balancer first picks the dead one (a refused connection is retried elsewhere).
#[tokio::test]
async fn a_session_whose_replica_died_gets_404_and_a_new_one_lands_on_a_live_replica() {
    let keys = tempfile::tempdir().unwrap();
    let files = keygen(keys.path()).unwrap();
    let signing = std::fs::read_to_string(&files.signing_key).unwrap();
    let public = std::fs::read_to_string(&files.public_key).unwrap();
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let a = spawn(ServerKind::Test, listener().await).await.unwrap();
    let b = spawn(ServerKind::Test, listener().await).await.unwrap();
    let mut config = plugin_config();
    config["servers"].as_array_mut().unwrap().push(json!({"name": "replicated", "path_prefix": "/mcp/replicated"}));
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: config,
        upstreams: vec![("replicated".into(), "/mcp/replicated".into(), a.addr)],
        env: vec![(JWK_ENV.into(), public)],
        clusters: vec![],
        plain_routes: vec![],
        replicas: vec![("replicated".into(), vec![b.addr])],
        session_affinity: true,
    })
    .await
    .unwrap();
    let token = mint(&signing, &TokenRequest::new("alice", &["admin"])).unwrap();
    let url = envoy.url("/mcp/replicated");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let call_in = |session: String, id: i64| {
        let (url, auth) = (url.clone(), format!("Bearer {token}"));
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("authorization", auth.as_str()),
                ("mcp-session-id", session.as_str()),
                ("mcp-protocol-version", "2025-06-18"),
            ];
            send("POST", &url, &headers, tool_call(id, "echo", json!({"text": "hi"})).to_string()).await
        }
    };
    let opened = post_json(&url, Some(&token), &init).await;
    assert_eq!(opened.status, 200);
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    assert_eq!(call_in(session.clone(), 2).await.status, 200);
    // Stop the replica that issued it.
    let (dead, live) = if a.requests.with_rpc_method("initialize").is_empty() { (b, a) } else { (a, b) };
    dead.shutdown().await.unwrap();
    call_in(session, 3).await.assert_rpc_error(404, -32004);
    // New sessions: every one lands on the live replica.
    let before = live.requests.with_rpc_method("initialize").len();
    for _ in 0..6 {
        let reopened = post_json(&url, Some(&token), &init).await;
        assert_eq!(reopened.status, 200, "{:?}", String::from_utf8_lossy(&reopened.body));
        let session = reopened.header("mcp-session-id").unwrap().to_owned();
        assert_eq!(call_in(session, 4).await.status, 200);
    }
    assert_eq!(live.requests.with_rpc_method("initialize").len(), before + 6);
}

/// Traffic without a session (a JSON server, or protocol 2026-07-28) is balanced per
/// request across a server's replicas, with the affinity filter in place.
#[tokio::test]
async fn requests_without_a_session_are_balanced_one_by_one() {
    let keys = tempfile::tempdir().unwrap();
    let files = keygen(keys.path()).unwrap();
    let signing = std::fs::read_to_string(&files.signing_key).unwrap();
    let public = std::fs::read_to_string(&files.public_key).unwrap();
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let a = spawn(ServerKind::TestJson, listener().await).await.unwrap();
    let b = spawn(ServerKind::TestJson, listener().await).await.unwrap();
    let mut config = plugin_config();
    config["servers"].as_array_mut().unwrap().push(json!({"name": "stateless", "path_prefix": "/mcp/stateless"}));
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: config,
        upstreams: vec![("stateless".into(), "/mcp/stateless".into(), a.addr)],
        env: vec![(JWK_ENV.into(), public)],
        clusters: vec![],
        plain_routes: vec![],
        replicas: vec![("stateless".into(), vec![b.addr])],
        session_affinity: true,
    })
    .await
    .unwrap();
    let token = mint(&signing, &TokenRequest::new("alice", &["admin"])).unwrap();
    // 16 calls: all on one replica by chance is a 1 in 30,000 event.
    for id in 0..16 {
        let reply =
            post_json(&envoy.url("/mcp/stateless"), Some(&token), &tool_call(id, "echo", json!({"text": "x"}))).await;
        assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.header("mcp-session-id"), None, "no session was made");
    }
    let (on_a, on_b) = (a.requests.with_rpc_method("tools/call").len(), b.requests.with_rpc_method("tools/call").len());
    assert_eq!(on_a + on_b, 16);
    assert!(on_a > 0 && on_b > 0, "{on_a} on a, {on_b} on b");
}
