//! What the gateway costs per request, end to end: the same MCP tool call through Envoy
//! alone and through Envoy with the filter (token cache on, and off). Ignored by `make
//! test` (it measures, it does not assert speed); `make bench` runs it in release mode.

// A benchmark harness: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::envoy::{Envoy, EnvoyOptions};
use common::{plugin_config, tool_call, JWK_ENV};
use mcpgw::token::{keygen, mint, TokenRequest};
use mcpgw::{spawn, ServerKind};
use serde_json::{json, Value};
use std::time::Instant;

const REQUESTS: usize = 2000;
const CONCURRENCY: usize = 8;

struct Run {
    name: &'static str,
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

async fn call(client: &reqwest::Client, url: &str, auth: &str, body: &str) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", auth)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.bytes().await.unwrap();
}

/// Sequential latencies, then throughput with CONCURRENCY clients.
async fn measure(name: &'static str, url: &str, token: &str) -> Run {
    let client = reqwest::Client::new();
    let body = tool_call(1, "echo", json!({"text": "hello"})).to_string();
    let auth = format!("Bearer {token}");
    for _ in 0..200 {
        call(&client, url, &auth, &body).await;
    }
    let mut latencies = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let start = Instant::now();
        call(&client, url, &auth, &body).await;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, url, auth, body) = (client.clone(), url.to_owned(), auth.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..REQUESTS / CONCURRENCY {
                    call(&client, &url, &auth, &body).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rps = (REQUESTS / CONCURRENCY * CONCURRENCY) as f64 / start.elapsed().as_secs_f64();
    Run { name, p50_us: pct(0.5), p99_us: pct(0.99), rps }
}

async fn envoy(plugin: Value, upstream: std::net::SocketAddr, jwk: &str) -> Envoy {
    Envoy::start(EnvoyOptions {
        plugin_config: plugin,
        upstreams: vec![("testjson".into(), "/mcp/testjson".into(), upstream)],
        env: vec![(JWK_ENV.into(), jwk.to_owned())],
        clusters: vec![],
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `make bench`"]
async fn gateway_cost_per_request() {
    let keys = tempfile::tempdir().unwrap();
    let files = keygen(keys.path()).unwrap();
    let signing = std::fs::read_to_string(files.signing_key).unwrap();
    let jwk = std::fs::read_to_string(files.public_key).unwrap();
    let token = mint(&signing, &TokenRequest::new("alice", &["admin"])).unwrap();
    let upstream =
        spawn(ServerKind::TestJson, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();

    let mut runs = Vec::new();
    let plain = envoy(Value::Null, upstream.addr, &jwk).await;
    runs.push(measure("envoy alone", &plain.url("/mcp/testjson"), &token).await);
    drop(plain);
    let gateway = envoy(plugin_config(), upstream.addr, &jwk).await;
    runs.push(measure("envoy + gateway (token cache)", &gateway.url("/mcp/testjson"), &token).await);
    drop(gateway);
    let mut uncached = plugin_config();
    uncached["jwt"]["cache_entries"] = json!(0);
    let gateway = envoy(uncached, upstream.addr, &jwk).await;
    runs.push(measure("envoy + gateway (no cache, ES256)", &gateway.url("/mcp/testjson"), &token).await);
    drop(gateway);

    let base = &runs[0];
    println!("\nMCP tools/call through Envoy ({REQUESTS} requests; rmcp JSON server behind; 2 cores shared by all)");
    println!("{:<36} {:>9} {:>9} {:>10} {:>12}", "setup", "p50 us", "p99 us", "req/s", "p50 added");
    for r in &runs {
        println!(
            "{:<36} {:>9.0} {:>9.0} {:>10.0} {:>+11.0}us",
            r.name,
            r.p50_us,
            r.p99_us,
            r.rps,
            r.p50_us - base.p50_us
        );
    }
}
