//! What an MCP call costs in Envoy, with and without the filter.
//!
//! Each configuration runs in its own Envoy (`--concurrency 1`, pinned to core 0 when the
//! machine has two or more; wrk and the upstream run on the others). All are started up
//! front and warmed up; then every round measures each of them in turn, in a rotating
//! order, so that a change in the machine's load hits all alike. Envoy's CPU time per
//! request comes from `/proc/<pid>/stat`; requests/s and latency from wrk. Each request
//! carries a unique JSON-RPC id, and MCP upstreams get a session opened beforehand.
//!
//! Ignored by `make test` (it measures, it does not assert speed); `make bench` runs it
//! in release mode and it writes `bench/results/latest.md` and `BENCHMARKS.md`.

// A benchmark harness: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::envoy::{envoy_binary, root, wasm_path};
use mcpgw::token::{keygen, mint, TokenRequest};
use mcpgw::{spawn, ServerKind};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Measured rounds and their length; `BENCH_ROUNDS` / `BENCH_SECONDS` override them for a
/// quick look (a run with fewer than `ROUNDS` rounds leaves BENCHMARKS.md alone).
const ROUNDS: usize = 3;
const SECONDS: u64 = 10;

fn from_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
const WARMUP_SECONDS: u64 = 3;
const CONNECTIONS: usize = 16;

/// One Envoy configuration under test.
struct Setup {
    name: &'static str,
    /// `e2e` (through the rmcp github server) or `isolated` (`direct_response`).
    group: &'static str,
    /// What the group's ratios are relative to.
    base: bool,
    bootstrap: Value,
}

struct Running {
    setup: Setup,
    child: Child,
    port: u16,
    session: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One measured run of one setup.
struct Sample {
    /// Answers by status, when the script counts them (the flood).
    statuses: Vec<(u16, u64)>,
    seconds: f64,
    requests: u64,
    cpu_ticks: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The machine's cores, as seen before this process pins itself to some of them.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `command`, pinned to `cpus` when the machine has more than one core.
fn pinned(cpus: &str, program: &Path) -> Command {
    if cores() >= 2 && have("taskset") {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpus).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// envoy/demo.yaml as JSON, with its wasm path made absolute and its rate limit removed
/// (the bench measures policy, not the limiter).
fn demo(upstream: u16) -> Value {
    let mut config = demo_as_shipped(upstream);
    let filters = hcm(&mut config)["http_filters"].as_array_mut().unwrap();
    filters.retain(|f| !f["name"].as_str().unwrap().contains("ratelimit"));
    config
}

/// envoy/demo.yaml as JSON, with its local rate limit, without its audit sidecar (the
/// setups that send records add one: [`with_sidecar`]).
fn demo_as_shipped(upstream: u16) -> Value {
    let yaml = std::fs::read_to_string(root().join("envoy/demo.yaml")).unwrap();
    let mut config: Value = serde_norway::from_str(&yaml).unwrap();
    config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != "sidecar" && c["name"] != "sidecar_events");
    hcm(&mut config)["route_config"]["virtual_hosts"][0]["routes"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["route"]["cluster"] != "sidecar" && r["route"]["cluster"] != "sidecar_events");
    let wasm = filter_named(&mut config, "envoy.filters.http.wasm").unwrap();
    let vm = &mut wasm["typed_config"]["config"]["vm_config"]["environment_variables"]["host_env_keys"];
    vm.as_array_mut().unwrap().retain(|k| k != "MCPGW_SIDECAR_SECRET");
    let value = &mut wasm["typed_config"]["config"]["configuration"]["value"];
    let mut plugin: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    plugin.as_object_mut().unwrap().remove("audit");
    // The sidecar's routes and the federated server it serves.
    plugin["servers"].as_array_mut().unwrap().retain(|s| s["kind"] != "sidecar" && s["kind"] != "federation");
    for role in plugin["rbac"]["roles"].as_object_mut().unwrap().values_mut() {
        role["servers"].as_array_mut().unwrap().retain(|s| s != "events" && s != "audit" && s != "all");
    }
    *value = json!(plugin.to_string());
    // Every replica of every region is the bench's upstream. It is not health-checked (a
    // check every 5 s is no cost to measure, and the bench's upstream is no MCP server).
    for cluster in config["static_resources"]["clusters"].as_array_mut().unwrap() {
        let cluster = cluster.as_object_mut().unwrap();
        cluster.remove("health_checks");
        cluster.remove("outlier_detection");
        for locality in cluster["load_assignment"]["endpoints"].as_array_mut().unwrap() {
            for endpoint in locality["lb_endpoints"].as_array_mut().unwrap() {
                endpoint["endpoint"]["address"]["socket_address"]["port_value"] = json!(upstream);
            }
        }
    }
    // Routes that take their cluster from the filter (`x-mcp-cluster`) name the eu-west
    // one, so the setups without the filter route the same calls to the same place.
    for route in hcm(&mut config)["route_config"]["virtual_hosts"][0]["routes"].as_array_mut().unwrap() {
        if let Some(action) = route["route"].as_object_mut().filter(|a| a.contains_key("cluster_header")) {
            action.remove("cluster_header");
            action.insert("cluster".into(), json!("github_eu_west"));
        }
    }
    let filters = hcm(&mut config)["http_filters"].as_array_mut().unwrap();
    let wasm = filters.iter_mut().find(|f| f["name"] == "envoy.filters.http.wasm").unwrap();
    wasm["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = json!(wasm_path().to_string_lossy());
    config
}

fn hcm(config: &mut Value) -> &mut Value {
    &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn filter_named<'a>(config: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    hcm(config)["http_filters"].as_array_mut().unwrap().iter_mut().find(|f| f["name"] == name)
}

/// Keeps only the HTTP filters named, in the order given.
fn with_filters(mut config: Value, names: &[&str]) -> Value {
    let mut all = hcm(&mut config)["http_filters"].as_array().unwrap().clone();
    let buffer = json!({"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 1048576}});
    all.push(buffer);
    let chosen: Vec<Value> = names.iter().map(|n| all.iter().find(|f| f["name"] == *n).cloned().unwrap()).collect();
    hcm(&mut config)["http_filters"] = Value::Array(chosen);
    config
}

/// Every route answers locally: what remains is Envoy and the filters.
fn isolated(mut config: Value) -> Value {
    let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;
    for route in hcm(&mut config)["route_config"]["virtual_hosts"][0]["routes"].as_array_mut().unwrap() {
        let route = route.as_object_mut().unwrap();
        route.remove("route");
        route.insert("direct_response".into(), json!({"status": 200, "body": {"inline_string": answer}}));
    }
    config
}

/// The secret the bench's sidecar and filter share.
const SIDECAR_SECRET_ENV: &str = "MCPGW_BENCH_SIDECAR_SECRET";
const SIDECAR_SECRET: &str = "bench-sidecar-secret-0123";

/// The filter also sends its audit records to the sidecar listening on `port`.
fn with_sidecar(mut config: Value, port: u16) -> Value {
    let wasm = filter_named(&mut config, "envoy.filters.http.wasm").unwrap();
    wasm["typed_config"]["config"]["vm_config"]["environment_variables"]["host_env_keys"]
        .as_array_mut()
        .unwrap()
        .push(json!(SIDECAR_SECRET_ENV));
    let value = &mut wasm["typed_config"]["config"]["configuration"]["value"];
    let mut plugin: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    plugin["audit"]["sidecar"] = json!({"cluster": "sidecar", "secret_env": SIDECAR_SECRET_ENV});
    *value = json!(plugin.to_string());
    config["static_resources"]["clusters"].as_array_mut().unwrap().push(json!({
        "name": "sidecar", "connect_timeout": "1s", "type": "STATIC",
        "load_assignment": {"cluster_name": "sidecar", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
    }));
    config
}

fn token_cache_off(mut config: Value) -> Value {
    let wasm = filter_named(&mut config, "envoy.filters.http.wasm").unwrap();
    let value = &mut wasm["typed_config"]["config"]["configuration"]["value"];
    let mut plugin: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    plugin["jwt"]["cache_entries"] = json!(0);
    *value = json!(plugin.to_string());
    config
}

/// The demo's plugin configuration without `regions` (and the servers' region fields):
/// what placing callers in regions costs.
fn without_regions(mut config: Value) -> Value {
    let wasm = filter_named(&mut config, "envoy.filters.http.wasm").unwrap();
    let value = &mut wasm["typed_config"]["config"]["configuration"]["value"];
    let mut plugin: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    plugin.as_object_mut().unwrap().remove("regions");
    for server in plugin["servers"].as_array_mut().unwrap() {
        for field in ["region", "regional_clusters", "residency_clusters"] {
            server.as_object_mut().unwrap().remove(field);
        }
    }
    *value = json!(plugin.to_string());
    config
}

/// Envoy's own chain for the same call, as a user of stock Envoy would set it up:
/// `jwt_authn` (the demo issuer and audience, the key inline, its JWT cache on) puts the
/// payload in dynamic metadata, `mcp` parses the JSON-RPC body into metadata, and `rbac`
/// allows a `developer` the tool prefixes the demo's `read` and `write` operations name
/// (and any authenticated caller the session's lifecycle methods).
fn native_chain(mut config: Value, jwk: &str) -> Value {
    // An RBAC matcher on the dynamic metadata a filter set.
    let meta = |filter: &str, path: &[&str], value: Value| {
        let path: Vec<Value> = path.iter().map(|k| json!({"key": k})).collect();
        json!({"sourced_metadata": {"metadata_matcher": {"filter": filter, "path": path, "value": value}}})
    };
    let jwt = "envoy.filters.http.jwt_authn";
    let mcp = "envoy.filters.http.mcp";
    let role = meta(
        jwt,
        &["jwt_payload", "roles"],
        json!({"list_match": {"one_of": {"string_match": {"exact": "developer"}}}}),
    );
    let signed_in = meta(jwt, &["jwt_payload", "sub"], json!({"present_match": true}));
    let method = |m: &str| meta(mcp, &["method"], json!({"string_match": {"exact": m}}));
    let prefixes: Vec<Value> = ["get_", "list_", "read_", "create_", "write_", "update_"]
        .iter()
        .map(|p| meta(mcp, &["params", "name"], json!({"string_match": {"prefix": p}})))
        .collect();
    let lifecycle: Vec<Value> =
        ["initialize", "notifications/initialized", "ping", "tools/list"].iter().map(|m| method(m)).collect();
    let chain = json!([
        {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"demo": {
                "issuer": "mcpgw-demo",
                "audiences": ["mcp-gateway"],
                "local_jwks": {"inline_string": json!({"keys": [serde_json::from_str::<Value>(jwk).unwrap()]}).to_string()},
                "payload_in_metadata": "jwt_payload",
                "jwt_cache_config": {"jwt_cache_size": 1000}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "demo"}}]}},
        {"name": "envoy.filters.http.mcp", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp"}},
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {
                "developer-tools": {
                    "permissions": [{"and_rules": {"rules": [method("tools/call"), {"or_rules": {"rules": prefixes}}]}}],
                    "principals": [role]},
                "lifecycle": {
                    "permissions": [{"or_rules": {"rules": lifecycle}}],
                    "principals": [signed_in]}}}}}
    ]);
    let filters = hcm(&mut config)["http_filters"].as_array_mut().unwrap();
    let at = filters.iter().position(|f| f["name"] == "envoy.filters.http.router").unwrap();
    for (k, f) in chain.as_array().unwrap().iter().enumerate() {
        filters.insert(at + k, f.clone());
    }
    config
}

fn setups(upstream: u16, sidecar: u16, jwk: &str) -> Vec<Setup> {
    let gateway = ["envoy.filters.http.wasm", "envoy.filters.http.router"];
    let router = ["envoy.filters.http.router"];
    let mut all = vec![
        Setup { name: "plain router", group: "e2e", base: true, bootstrap: with_filters(demo(upstream), &router) },
        Setup {
            name: "native chain (jwt_authn + mcp + rbac)",
            group: "e2e",
            base: false,
            bootstrap: native_chain(with_filters(demo(upstream), &router), jwk),
        },
        Setup {
            name: "ours (demo policy)",
            group: "e2e",
            base: false,
            bootstrap: with_filters(demo(upstream), &gateway),
        },
        Setup {
            name: "ours + session affinity (demo chain)",
            group: "e2e",
            base: false,
            bootstrap: with_filters(
                demo(upstream),
                &["envoy.filters.http.stateful_session", "envoy.filters.http.wasm", "envoy.filters.http.router"],
            ),
        },
        Setup {
            name: "ours, token cache off",
            group: "e2e",
            base: false,
            bootstrap: token_cache_off(with_filters(demo(upstream), &gateway)),
        },
        Setup {
            name: "floor (buffer)",
            group: "isolated",
            base: true,
            bootstrap: isolated(with_filters(
                demo(upstream),
                &["envoy.filters.http.buffer", "envoy.filters.http.router"],
            )),
        },
        Setup {
            name: "native chain (buffer + jwt_authn + mcp + rbac)",
            group: "isolated",
            base: false,
            bootstrap: native_chain(
                isolated(with_filters(demo(upstream), &["envoy.filters.http.buffer", "envoy.filters.http.router"])),
                jwk,
            ),
        },
        Setup {
            name: "ours (buffer + filter)",
            group: "isolated",
            base: false,
            bootstrap: isolated(with_filters(
                demo(upstream),
                &["envoy.filters.http.buffer", "envoy.filters.http.wasm", "envoy.filters.http.router"],
            )),
        },
        Setup {
            name: "ours (buffer + filter), no regions",
            group: "isolated",
            base: false,
            bootstrap: without_regions(isolated(with_filters(
                demo(upstream),
                &["envoy.filters.http.buffer", "envoy.filters.http.wasm", "envoy.filters.http.router"],
            ))),
        },
        Setup {
            name: "ours + records to the sidecar",
            group: "isolated",
            base: false,
            bootstrap: with_sidecar(
                isolated(with_filters(
                    demo(upstream),
                    &["envoy.filters.http.buffer", "envoy.filters.http.wasm", "envoy.filters.http.router"],
                )),
                sidecar,
            ),
        },
    ];
    // A flood of tokens with bad signatures (each one different, so none is cached):
    // what it costs with no limit, and with the demo's local rate limit before the filter.
    let ours_isolated = |config: Value| {
        let names = ["envoy.filters.http.local_ratelimit", "envoy.filters.http.wasm", "envoy.filters.http.router"];
        let keep: Vec<&str> = names.into_iter().filter(|n| filter_named(&mut config.clone(), n).is_some()).collect();
        isolated(with_filters(config, &keep))
    };
    all.push(Setup {
        name: "ours, bad signatures, no limit",
        group: "flood",
        base: true,
        bootstrap: ours_isolated(demo(upstream)),
    });
    all.push(Setup {
        name: "ours, bad signatures, demo's local rate limit",
        group: "flood",
        base: false,
        bootstrap: ours_isolated(demo_as_shipped(upstream)),
    });
    // Experiments: other builds of the filter, measured in the same rounds.
    for (label, wasm) in variants() {
        let mut bootstrap = isolated(with_filters(
            demo(upstream),
            &["envoy.filters.http.buffer", "envoy.filters.http.wasm", "envoy.filters.http.router"],
        ));
        filter_named(&mut bootstrap, "envoy.filters.http.wasm").unwrap()["typed_config"]["config"]["vm_config"]
            ["code"]["local"]["filename"] = json!(wasm);
        all.push(Setup {
            name: Box::leak(format!("ours, {label}").into_boxed_str()),
            group: "isolated",
            base: false,
            bootstrap,
        });
    }
    let groups = std::env::var("BENCH_GROUPS").unwrap_or_default();
    all.retain(|s| groups.is_empty() || groups.split(',').any(|g| g == s.group));
    all
}

/// `BENCH_VARIANTS=label=/path/a.wasm,label2=/path/b.wasm`: builds to compare with ours
/// (isolated); `BENCH_GROUPS=isolated` (or `e2e`) measures only that group.
fn variants() -> Vec<(String, String)> {
    std::env::var("BENCH_VARIANTS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.split_once('=').map(|(l, p)| (l.to_owned(), p.to_owned())))
        .collect()
}

/// Starts Envoy with `setup` (not waiting for it) and returns it with its admin port.
fn launch(mut setup: Setup, jwk: &str) -> (Running, u16) {
    let dir = tempfile::Builder::new()
        .prefix("bench-envoy")
        .disable_cleanup(std::env::var_os("BENCH_KEEP").is_some())
        .tempdir()
        .unwrap();
    let (port, admin) = (free_port(), free_port());
    setup.bootstrap["admin"]["address"]["socket_address"]["port_value"] = json!(admin);
    setup.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = json!(port);
    let path = dir.path().join("envoy.json");
    std::fs::write(&path, setup.bootstrap.to_string()).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = pinned("0", &envoy_binary())
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "--component-log-level",
            "wasm:info",
        ])
        // Envoy's own log file is written in the background by its flush thread, as in a
        // deployment; stderr would cost each audit line a write(2) on the worker.
        .arg("--log-path")
        .arg(dir.path().join("envoy.log"))
        .env("MCPGW_DEMO_JWK", jwk)
        .env("MCPGW_SESSION_KEY", "the bench's session binding key, 32+ bytes")
        .env(SIDECAR_SECRET_ENV, SIDECAR_SECRET)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (Running { setup, child, port, session: None, _dir: dir }, admin)
}

async fn start(setup: Setup, jwk: &str) -> Running {
    let (running, admin) = launch(setup, jwk);
    let logs = [running._dir.path().join("envoy.log"), running._dir.path().join("stderr.log")];
    let ready = format!("http://127.0.0.1:{admin}/ready");
    for _ in 0..300 {
        if reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said: Vec<String> = logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect();
    panic!("{} not ready: {}", running.setup.name, said.join("\n"));
}

/// Opens an MCP session through `envoy` (e2e setups), so calls carry its id.
async fn open_session(envoy: &mut Running, token: &str) {
    if envoy.setup.group != "e2e" {
        return;
    }
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}});
    let reply = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/mcp/github", envoy.port))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{}", envoy.setup.name);
    envoy.session = reply.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
    reply.bytes().await.unwrap();
}

/// A setup that checks policy must let `get_repository` through and refuse a tool the
/// role does not have; one that does not (the base) lets both through. Guards against
/// measuring a chain that quietly allows everything (or nothing).
async fn check_policy(envoy: &Running, token: &str) {
    let checks_policy = !envoy.setup.base || envoy.setup.group == "flood";
    for (tool, allowed) in [("get_repository", true), ("delete_repository", !checks_policy)] {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {"repository": "acme/website"}}});
        let mut request = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/mcp/github", envoy.port))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call.to_string());
        if let Some(session) = &envoy.session {
            request = request.header("mcp-session-id", session);
        }
        let status = request.send().await.unwrap().status();
        assert_eq!(status.is_success(), allowed, "{}: {tool} answered {status}", envoy.setup.name);
    }
}

/// A wrk script: `tools/call get_repository`, each with its own id.
/// A wrk script for the flood: the token's signature has its first 8 characters replaced
/// by the request's number, so every token is new and fails verification. It counts the
/// answers by status and prints them when done (`status 401 N`).
fn flood_script(dir: &Path, token: &str) -> std::path::PathBuf {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let lua = format!(
        r#"local n = 0
local threads = {{}}
setup = function(thread) table.insert(threads, thread) end
request = function()
  n = n + 1
  local token = "{signed}." .. string.format("%08x", n) .. string.sub("{signature}", 9)
  local body = '{{"jsonrpc":"2.0","id":' .. n .. ',"method":"tools/call","params":{{"name":"get_repository","arguments":{{"repository":"acme/website"}}}}}}'
  return wrk.format("POST", "/mcp/github", {{ ["content-type"] = "application/json", ["accept"] = "application/json, text/event-stream", ["authorization"] = "Bearer " .. token }}, body)
end
response = function(status, headers, body)
  local k = "c" .. status
  _G[k] = (_G[k] or 0) + 1
end
done = function(summary, latency, requests)
  for _, t in ipairs(threads) do
    for _, code in ipairs({{200, 401, 429, 503}}) do
      io.write(string.format("status %d %d\n", code, t:get("c" .. code) or 0))
    end
  end
end
"#
    );
    let path = dir.join(format!("flood-{}.lua", rand_suffix()));
    std::fs::write(&path, lua).unwrap();
    path
}

/// A wrk script: `tools/call get_repository`, each with its own id; with `delay_ms`, each
/// connection waits that long before each request (a paced load).
fn script(dir: &Path, token: &str, session: Option<&str>, delay_ms: Option<u64>) -> std::path::PathBuf {
    let session = session.map(|s| format!(r#"["mcp-session-id"] = "{s}","#)).unwrap_or_default();
    let delay = delay_ms.map(|ms| format!("delay = function() return {ms} end\n")).unwrap_or_default();
    let lua = format!(
        r#"local n = 0
{delay}request = function()
  n = n + 1
  local body = '{{"jsonrpc":"2.0","id":' .. n .. ',"method":"tools/call","params":{{"name":"get_repository","arguments":{{"repository":"acme/website"}}}}}}'
  return wrk.format("POST", "/mcp/github", {{ ["content-type"] = "application/json", ["accept"] = "application/json, text/event-stream", ["authorization"] = "Bearer {token}", {session} }}, body)
end
"#
    );
    let path = dir.join(format!("call-{}.lua", rand_suffix()));
    std::fs::write(&path, lua).unwrap();
    path
}

fn rand_suffix() -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(0_u8)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> f64 {
    let out =
        Command::new("getconf").arg("CLK_TCK").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    out.ok().and_then(|s| s.parse().ok()).unwrap_or(100.0)
}

/// `812.00us`, `1.20ms`, `2.00s` -> microseconds.
fn micros(text: &str) -> f64 {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => f64::NAN,
    }
}

fn run_wrk(envoy: &Running, script: &Path, seconds: u64) -> Sample {
    let pid = envoy.child.id();
    let before = cpu_ticks(pid);
    let out = pinned("1", Path::new("wrk"))
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(format!("http://127.0.0.1:{}", envoy.port))
        .output()
        .unwrap();
    let after = cpu_ticks(pid);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |prefix: &str| text.lines().map(str::trim).find(|l| l.starts_with(prefix)).map(str::to_owned);
    let word = |l: Option<String>, i: usize| l.and_then(|l| l.split_whitespace().nth(i).map(str::to_owned));
    let requests =
        text.lines().find(|l| l.contains("requests in")).and_then(|l| l.split_whitespace().next()?.parse().ok());
    Sample {
        requests: requests.unwrap_or_else(|| panic!("wrk said:\n{text}\n{}", String::from_utf8_lossy(&out.stderr))),
        cpu_ticks: after - before,
        rps: word(line("Requests/sec:"), 1).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
        p50_us: micros(&word(line("50%"), 1).unwrap_or_default()),
        p99_us: micros(&word(line("99%"), 1).unwrap_or_default()),
        errors: word(line("Non-2xx or 3xx responses:"), 4).and_then(|v| v.parse().ok()).unwrap_or(0),
        statuses: text
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("status ")?.split_whitespace();
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            })
            .collect(),
        seconds: seconds as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark: run with `make bench`"]
async fn cost_of_a_call_in_envoy() {
    assert!(have("wrk"), "wrk is needed: `make bench` installs it (apt-get install wrk)");
    // This process (the upstream server, wrk) stays off Envoy's core.
    if cores() >= 2 && have("taskset") {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", &format!("1-{}", cores() - 1), &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }
    let tick_us = 1e6 / clock_ticks_per_second();
    let keys = tempfile::tempdir().unwrap();
    let files = keygen(keys.path()).unwrap();
    let signing = std::fs::read_to_string(files.signing_key).unwrap();
    let jwk = std::fs::read_to_string(files.public_key).unwrap();
    let token = mint(&signing, &TokenRequest::new("alice", &["developer"])).unwrap();
    let upstream =
        spawn(ServerKind::Github, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();

    let mut envoys = Vec::new();
    // The sidecar, for the setup that sends it audit records (on the load generator's core).
    let sidecar_dir = tempfile::tempdir().unwrap();
    let sidecar = mcpgw::sidecar::Sidecar::open(mcpgw::sidecar::Config::new(
        sidecar_dir.path().join("audit.db"),
        sidecar_dir.path().join("checkpoint.key"),
        SIDECAR_SECRET.to_owned(),
    ))
    .unwrap();
    let sidecar_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sidecar_port = sidecar_listener.local_addr().unwrap().port();
    tokio::spawn(mcpgw::sidecar::run(sidecar_listener, sidecar.clone(), std::future::pending()));
    for setup in setups(upstream.addr.port(), sidecar_port, &jwk) {
        envoys.push(start(setup, &jwk).await);
    }
    let scripts = tempfile::tempdir().unwrap();
    let mut lua = Vec::new();
    for envoy in &mut envoys {
        open_session(envoy, &token).await;
        check_policy(envoy, &token).await;
        lua.push(if envoy.setup.group == "flood" {
            flood_script(scripts.path(), &token)
        } else {
            script(scripts.path(), &token, envoy.session.as_deref(), None)
        });
    }
    // wrk blocks: run it off the runtime that serves the upstream.
    let envoys = std::sync::Arc::new(envoys);
    let lua = std::sync::Arc::new(lua);
    let samples = tokio::task::spawn_blocking({
        let (envoys, lua, token) = (envoys.clone(), lua.clone(), token.clone());
        move || {
            for (envoy, script) in envoys.iter().zip(lua.iter()) {
                run_wrk(envoy, script, WARMUP_SECONDS);
            }
            let mut samples: Vec<Vec<Sample>> = envoys.iter().map(|_| Vec::new()).collect();
            for round in 0..from_env("BENCH_ROUNDS", ROUNDS) {
                for k in 0..envoys.len() {
                    let i = (k + round) % envoys.len();
                    let s = run_wrk(&envoys[i], &lua[i], from_env("BENCH_SECONDS", SECONDS));
                    let cpu = s.cpu_ticks as f64 * tick_us / s.requests as f64;
                    eprintln!(
                        "round {} {:<26} {:>8} req {cpu:>7.1} µs CPU/req",
                        round + 1,
                        envoys[i].setup.name,
                        s.requests
                    );
                    samples[i].push(s);
                }
            }
            // Latency at half of what ours sustains, the same pace for each e2e setup.
            let ours = envoys.iter().position(|e| e.setup.name == "ours (demo policy)");
            let paced = ours.map(|o| {
                let half = 0.5 * median(samples[o].iter().map(|x| x.rps).collect());
                let delay_ms = (CONNECTIONS as f64 * 1e3 / half).round().max(1.0) as u64;
                let dir = tempfile::tempdir().unwrap();
                let runs: Vec<(usize, Sample)> = (0..envoys.len())
                    .filter(|i| envoys[*i].setup.group == "e2e" && !envoys[*i].setup.name.contains("cache off"))
                    .map(|i| {
                        let lua = script(dir.path(), &token, envoys[i].session.as_deref(), Some(delay_ms));
                        (i, run_wrk(&envoys[i], &lua, from_env("BENCH_SECONDS", SECONDS)))
                    })
                    .collect();
                (half, delay_ms, runs)
            });
            (samples, paced)
        }
    })
    .await
    .unwrap();
    let (samples, paced) = samples;

    let per_request = |s: &Sample| s.cpu_ticks as f64 * tick_us / s.requests as f64;
    let cpu = |i: usize| {
        let s = &samples[i];
        s.iter().map(|x| x.cpu_ticks).sum::<u64>() as f64 * tick_us / s.iter().map(|x| x.requests).sum::<u64>() as f64
    };
    let mut rows = Vec::new();
    for group in ["e2e", "isolated"] {
        let in_group: Vec<usize> = (0..envoys.len()).filter(|i| envoys[*i].setup.group == group).collect();
        let Some(base) = in_group.iter().find(|i| envoys[**i].setup.base).map(|i| cpu(*i)) else { continue };
        let native = in_group.iter().find(|i| envoys[**i].setup.name.starts_with("native")).map(|i| cpu(*i));
        for &i in &in_group {
            let s = &samples[i];
            let per: Vec<f64> = s.iter().map(per_request).collect();
            rows.push(Row {
                group,
                name: envoys[i].setup.name,
                cpu: cpu(i),
                lo: per.iter().copied().fold(f64::MAX, f64::min),
                hi: per.iter().copied().fold(0.0, f64::max),
                base,
                native,
                rps: median(s.iter().map(|x| x.rps).collect()),
                p50: median(s.iter().map(|x| x.p50_us).collect()),
                p99: median(s.iter().map(|x| x.p99_us).collect()),
                errors: s.iter().map(|x| x.errors).sum(),
            });
        }
    }
    let mut table = markdown(&rows);
    table.push_str(&flood_table(&envoys, &samples, tick_us));
    if let Some((half, delay_ms, runs)) = &paced {
        table.push_str(&format!(
            "\nEnd to end at half of the rate ours sustains ({half:.0}/s; each of {CONNECTIONS} connections \
             waits {delay_ms} ms between requests):\n\n| setup | req/s | p50 | p99 | p99 added to the router |\n|---|---|---|---|---|\n"
        ));
        let router = runs.iter().find(|(i, _)| envoys[*i].setup.base).map(|(_, s)| s.p99_us);
        for (i, s) in runs {
            let added = match router {
                Some(r) if !envoys[*i].setup.base => format!("{:+.0} µs", s.p99_us - r),
                _ => String::new(),
            };
            table.push_str(&format!(
                "| e2e {} | {:.0} | {:.0} µs | {:.0} µs | {added} |\n",
                envoys[*i].setup.name, s.rps, s.p50_us, s.p99_us
            ));
        }
    }
    let c = &sidecar.counters;
    let (committed, batches) = (c.records_committed.get(), c.batches.get());
    let measured = from_env("BENCH_ROUNDS", ROUNDS) as f64 * from_env("BENCH_SECONDS", SECONDS) as f64;
    table.push_str(&format!(
        "\nThe sidecar committed {committed} audit records from *ours + records to the sidecar* in {batches} \
         batches ({:.0} records per second of that setup's measured time, warm-up included), on the load \
         generator's core.\n",
        committed as f64 / measured
    ));
    table.push_str(&other_figures(upstream.addr.port(), &jwk, &token).await);
    println!("\n{table}");
    let results = root().join("bench/results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("latest.md"), &table).unwrap();
    chart(&rows, &results);
    if from_env("BENCH_ROUNDS", ROUNDS) >= ROUNDS && from_env("BENCH_SECONDS", SECONDS) >= SECONDS {
        write_benchmarks_md(&table);
    }
}

/// The flood of bad signatures: how much of its core Envoy spent, and what it answered.
fn flood_table(envoys: &[Running], samples: &[Vec<Sample>], tick_us: f64) -> String {
    let mut table = String::from(
        "\nA flood of tokens with bad ES256 signatures (each one new), isolated, 16 connections:\n\n\
         | setup | Envoy CPU (share of its core) | answers/s | 401/s (verified, refused) | 429/s (rate limited) |\n\
         |---|---|---|---|---|\n",
    );
    let mut any = false;
    for (envoy, s) in envoys.iter().zip(samples).filter(|(e, _)| e.setup.group == "flood") {
        any = true;
        let seconds: f64 = s.iter().map(|x| x.seconds).sum();
        let status = |code: u16| {
            s.iter().flat_map(|x| &x.statuses).filter(|(c, _)| *c == code).map(|(_, n)| *n).sum::<u64>() as f64
                / seconds
        };
        let busy = s.iter().map(|x| x.cpu_ticks).sum::<u64>() as f64 * tick_us / (seconds * 1e6);
        table.push_str(&format!(
            "| {} | {:.0}% | {:.0} | {:.0} | {:.0} |\n",
            envoy.setup.name,
            busy * 100.0,
            s.iter().map(|x| x.requests).sum::<u64>() as f64 / seconds,
            status(401),
            status(429),
        ));
    }
    if any {
        table
    } else {
        String::new()
    }
}

/// How long from starting Envoy until it answers `tools/call` with 200, median of 5 starts
/// (the setup's first call, polled every 2 ms). With our filter this includes compiling
/// the .wasm, configuring it and loading the keys.
async fn first_allowed_call(make: impl Fn() -> Setup, jwk: &str, token: &str) -> Duration {
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "get_repository", "arguments": {"repository": "acme/website"}}})
    .to_string();
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let (envoy, _) = launch(make(), jwk);
        let url = format!("http://127.0.0.1:{}/mcp/github", envoy.port);
        loop {
            let reply = client
                .post(&url)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(call.clone())
                .send()
                .await;
            if reply.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{}: no allowed call within 30 s", envoy.setup.name);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(started.elapsed().as_secs_f64());
    }
    Duration::from_secs_f64(median(times))
}

/// The .wasm's size and the time to the first allowed call, ours against Envoy alone.
async fn other_figures(upstream: u16, jwk: &str, token: &str) -> String {
    let size = std::fs::metadata(wasm_path()).unwrap().len();
    let floor = || isolated(with_filters(demo(upstream), &["envoy.filters.http.buffer", "envoy.filters.http.router"]));
    let ours = || {
        isolated(with_filters(
            demo(upstream),
            &["envoy.filters.http.buffer", "envoy.filters.http.wasm", "envoy.filters.http.router"],
        ))
    };
    let envoy_alone =
        first_allowed_call(|| Setup { name: "floor", group: "isolated", base: true, bootstrap: floor() }, jwk, token)
            .await;
    let with_filter =
        first_allowed_call(|| Setup { name: "ours", group: "isolated", base: false, bootstrap: ours() }, jwk, token)
            .await;
    format!(
        "\nThe release .wasm: {} KB. From starting Envoy to the first allowed call (median of 5): \
         {:.0} ms with our filter, {:.0} ms for Envoy alone.\n",
        size / 1000,
        with_filter.as_secs_f64() * 1e3,
        envoy_alone.as_secs_f64() * 1e3,
    )
}

/// One setup's figures over all rounds, with its group's base (and native chain).
struct Row {
    group: &'static str,
    name: &'static str,
    /// Envoy CPU µs per request over all rounds, and the lowest and highest round.
    cpu: f64,
    lo: f64,
    hi: f64,
    base: f64,
    native: Option<f64>,
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

fn markdown(rows: &[Row]) -> String {
    let mut table = String::from(
        "| setup | Envoy CPU µs/call | × base | added to base | × native chain | spread over rounds | req/s | p50 | p99 | non-2xx |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let native = match r.native {
            Some(n) if !r.name.starts_with("native") && r.cpu != r.base => format!("{:.2}", r.cpu / n),
            _ => "".into(),
        };
        let added = if r.cpu == r.base { String::new() } else { format!("{:+.1} µs", r.cpu - r.base) };
        table.push_str(&format!(
            "| {} {} | {:.1} | {:.2} | {added} | {native} | {:.1}–{:.1} | {:.0} | {:.0} µs | {:.0} µs | {} |\n",
            r.group,
            r.name,
            r.cpu,
            r.cpu / r.base,
            r.lo,
            r.hi,
            r.rps,
            r.p50,
            r.p99,
            r.errors,
        ));
    }
    table
}

/// `bench/results/latest.png`: Envoy CPU per call for each setup with its spread over the
/// rounds, drawn by gnuplot (`make bench` installs it). Setups over ten times their base
/// (the token cache off) would flatten the rest and are left to the table.
fn chart(rows: &[Row], results: &Path) {
    if rows.is_empty() {
        return;
    }
    if !have("gnuplot") {
        eprintln!("gnuplot is not installed: no chart (`make bench` installs it)");
        return;
    }
    let shown: Vec<&Row> = rows.iter().filter(|r| r.cpu < 10.0 * r.base).collect();
    let mut data = String::new();
    for r in &shown {
        // Colour: grey for a base, blue for Envoy's native chain, orange for ours.
        let colour = if r.cpu == r.base {
            0x9e9e9e
        } else if r.name.starts_with("native") {
            0x3b75af
        } else {
            0xef8636
        };
        data.push_str(&format!("\"{} {}\" {:.2} {:.2} {:.2} {colour}\n", r.group, r.name, r.cpu, r.lo, r.hi));
    }
    let dat = results.join("latest.dat");
    std::fs::write(&dat, data).unwrap();
    let script = format!(
        "set terminal pngcairo noenhanced size 1100,{} font 'sans,10'\n\
         set output '{}'\n\
         set title 'Envoy CPU per MCP call (one worker; bars: lowest to highest round)'\n\
         set xlabel 'µs of Envoy CPU per call'\n\
         set yrange [{}:-0.6]\n\
         set xrange [0:*]\n\
         set style fill solid 0.6\n\
         set grid xtics\n\
         unset key\n\
         set lmargin 48\n\
         plot '{}' using ($2/2):0:($2/2):(0.35):5:yticlabels(1) with boxxyerror lc rgb variable, \
         '' using 2:0:3:4 with xerrorbars pt 7 ps 0.6 lc rgb 'black'\n",
        120 + 48 * shown.len(),
        results.join("latest.png").display(),
        shown.len() as f64 - 0.4,
        dat.display(),
    );
    let plot = results.join("latest.gnuplot");
    std::fs::write(&plot, &script).unwrap();
    let out = Command::new("gnuplot").arg(&plot).output().unwrap();
    assert!(out.status.success(), "gnuplot: {}", String::from_utf8_lossy(&out.stderr));
}

/// Replaces the generated part of BENCHMARKS.md (between its markers) with this run.
fn write_benchmarks_md(table: &str) {
    let generated = format!(
        "{START}\nLatest run: {}; `make bench` \
         (`cargo test --release --test bench_gateway -- --ignored --nocapture`). Envoy 1.40 with \
         `--concurrency 1`{}, wrk with {CONNECTIONS} connections, {ROUNDS} interleaved rounds of {SECONDS} s, \
         `tools/call get_repository` with the demo's ES256 token and policy.\n\n{table}{END}",
        mcpgw::testing::bench::run_line(root()),
        if cores() >= 2 { " pinned to core 0 (wrk and the upstream on the others)" } else { "" },
    );
    let path = root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let text = mcpgw::testing::bench::replace_section(&text, START, END, &generated)
        .unwrap_or_else(|| format!("# Benchmarks\n\n{generated}\n{text}"));
    std::fs::write(path, text).unwrap();
}

const START: &str = "<!-- bench:latest:start -->";
const END: &str = "<!-- bench:latest:end -->";
