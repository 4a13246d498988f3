//! What the filter's own code costs per MCP call, natively: `gateway::Exchange` from the
//! request headers to the audit line, with the demo policy (envoy/demo.yaml) and a cached
//! ES256 token, as the adapter drives it. No Envoy, no host calls: this isolates the
//! decision code, so a change to it shows up here before it is lost in Envoy's noise.
//! Ignored by `make test`; `make bench` runs it in release mode.

// A benchmark harness: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use mcp_gateway::gateway::{Exchange, Head, Step};
use mcp_gateway::jwt::KeyStore;
use mcp_gateway::rbac::Catalog;
use mcpgw::explain::{load_config, plugin_configuration};
use mcpgw::token::{keygen, mint, TokenRequest};
use std::time::{Instant, SystemTime};

/// Calls per round; `BENCH_CALLS` sets another number (fewer, under a profiler).
fn calls_per_round() -> usize {
    std::env::var("BENCH_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(200_000)
}
const ROUNDS: usize = 5;

fn head(token: &str, path: &str) -> Head {
    let h = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    Head::new(vec![
        h(":authority", "127.0.0.1:10000"),
        h(":path", path),
        h(":method", "POST"),
        h(":scheme", "http"),
        h("user-agent", "bench/1.0"),
        h("accept", "application/json, text/event-stream"),
        h("content-type", "application/json"),
        h("content-length", "133"),
        h("authorization", &format!("Bearer {token}")),
        h("mcp-protocol-version", "2025-06-18"),
        h("x-forwarded-proto", "http"),
        h("x-request-id", "5f0c8a9e-3b1d-4c2e-9a7f-1e2d3c4b5a69"),
    ])
}

#[test]
#[ignore = "benchmark: run with `make bench`"]
fn decision_code_cost_per_call() {
    let keys = tempfile::tempdir().unwrap();
    let files = keygen(keys.path()).unwrap();
    let signing = std::fs::read_to_string(files.signing_key).unwrap();
    let jwk = std::fs::read_to_string(files.public_key).unwrap();
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/demo.yaml")).unwrap();
    let text = plugin_configuration(&yaml).unwrap();
    let config = load_config(&text, &|name| (name == "MCPGW_DEMO_JWK").then(|| jwk.clone())).unwrap();
    let token = mint(&signing, &TokenRequest::new("alice", &["developer"])).unwrap();
    let mut store = KeyStore::new(config.verifier.providers.len(), config.cache_entries);
    let catalog = Catalog::default();
    // (server path, tool, arguments): a literal resource rule, and rules with `{user_id}`.
    let calls = [
        ("/mcp/github", "get_repository", r#"{"repository":"acme/website"}"#),
        ("/mcp/filesystem", "read_file", r#"{"file_path":"/user/alice/notes.md"}"#),
    ];
    let n = calls_per_round();
    for (path, tool, arguments) in calls {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for id in 0..n {
                let now = SystemTime::now();
                let mut ex = Exchange::new(now);
                let (step, _edits) = ex.on_request_headers(&config, &mut store, head(&token, path), false, now);
                assert_eq!(step, Step::WaitForBody);
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
                );
                assert_eq!(ex.on_request_body(&config, &catalog, body.as_bytes()), Step::Continue, "{tool}");
                let line = ex.finish(200, SystemTime::now(), Some("127.0.0.1".into())).to_line();
                std::hint::black_box(line);
            }
            rounds.push(start.elapsed().as_secs_f64() * 1e9 / n as f64);
        }
        rounds.sort_by(f64::total_cmp);
        println!(
            "\ndecision code per tools/call {tool} (native, demo policy, cached ES256 token): median {:.0} ns, min {:.0} ns over {ROUNDS} rounds of {n}",
            rounds[ROUNDS / 2],
            rounds[0]
        );
    }
}
