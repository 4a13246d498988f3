//! Routing through a real Envoy: which server a request path reaches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use common::envoy::{Envoy, EnvoyOptions};
use common::{plugin_config, post_json, tool_call, Gateway, JWK_ENV};
use serde_json::json;

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
        })
        .await
        .expect("envoy must refuse the configuration");
        let index = plugin_config()["servers"].as_array().unwrap().len();
        assert!(log.contains(&format!("servers[{index}].path_prefix")), "{second}: {log}");
        assert!(log.contains(&format!("{other:?}")) && log.contains("one server"), "{second}: {log}");
    }
}
