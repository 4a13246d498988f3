//! A real Envoy for integration tests: runs the built `.wasm` with a given plugin
//! configuration in front of given upstreams, on free loopback ports, and is killed
//! when dropped.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$ENVOY`, or the one `make envoy` puts in `.envoy/`.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("ENVOY").map(PathBuf::from).unwrap_or_else(|| root().join(".envoy/bin/envoy"));
    assert!(path.exists(), "no Envoy at {}: run `make envoy` or set ENVOY", path.display());
    path
}

/// The filter, built once per test binary (a no-op when it is up to date), so `cargo
/// test` never runs against a stale `.wasm`.
pub fn wasm_path() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        if let Some(path) = std::env::var_os("MCPGW_WASM") {
            return PathBuf::from(path);
        }
        cargo_build(&["--target", "wasm32-wasip1", "--release", "--lib"], "the wasm filter");
        root().join("target/wasm32-wasip1/release/mcp_gateway.wasm")
    })
}

/// The `mcpgw` binary (the sidecar), built once per test binary like the filter.
pub fn mcpgw_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        cargo_build(&["-p", "mcpgw", "--bin", "mcpgw"], "mcpgw");
        root().join("target/debug/mcpgw")
    })
}

/// `cargo build --quiet <args>` in the repository (a no-op when up to date).
fn cargo_build(args: &[&str], what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--quiet"])
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build {what}: {e}"));
    assert!(status.success(), "building {what} failed");
}

/// What to run Envoy with.
pub struct EnvoyOptions {
    /// Plugin configuration (JSON) for the filter; `null` runs Envoy without the filter
    /// (the baseline of the benchmark).
    pub plugin_config: Value,
    /// (server name, path prefix, upstream address). The route strips the prefix to `/mcp`.
    pub upstreams: Vec<(String, String, SocketAddr)>,
    /// Environment variables given to Envoy and exposed to the wasm VM.
    pub env: Vec<(String, String)>,
    /// Clusters without a route (identity providers the filter calls).
    pub clusters: Vec<(String, Address)>,
    /// (path prefix, cluster) routes kept as they are (no rewrite to `/mcp`): the
    /// sidecar's API. The cluster is one of `clusters`.
    pub plain_routes: Vec<(String, String)>,
    /// More replicas of an upstream: (its server name, addresses), beside the one in
    /// `upstreams`. Clusters balance by least request.
    pub replicas: Vec<(String, Vec<SocketAddr>)>,
    /// Envoy's stateful session filter before the gateway's, with the envelope of
    /// `Mcp-Session-Id`, the session routes and the 404 for a gone replica (the README's
    /// "Sessions across gateway replicas"): a session's requests reach the replica that
    /// issued it.
    pub session_affinity: bool,
    /// Servers with replicas in several regions (README "Regions and data residency"),
    /// served with session affinity.
    pub regional: Vec<Regional>,
}

/// A server at `/mcp/{server}` with replicas in several regions. Its routes take the
/// cluster from `x-mcp-cluster` (set by the filter); each region gets a cluster
/// `{server}_{region}` holding every replica, that region's at priority 0 and the others
/// after it in `regions` order, and each residency rule a cluster `{server}_{rule}`
/// holding only the regions it allows. Replicas are health-checked with an MCP `ping`.
/// Such an Envoy runs one worker, so a test that sees a request follow a health change
/// knows every later request will.
pub struct Regional {
    pub server: String,
    /// Regions in failover order, with their replicas.
    pub regions: Vec<(String, Vec<SocketAddr>)>,
    /// Residency rules: name, and the regions it allows in failover order.
    pub pinned: Vec<(String, Vec<String>)>,
}

impl Regional {
    /// The `regional_clusters` and `residency_clusters` of its plugin configuration.
    pub fn server_config(&self) -> Value {
        let by_region: serde_json::Map<String, Value> =
            self.regions.iter().map(|(r, _)| (r.clone(), Value::from(format!("{}_{r}", self.server)))).collect();
        let by_rule: serde_json::Map<String, Value> =
            self.pinned.iter().map(|(n, _)| (n.clone(), Value::from(format!("{}_{n}", self.server)))).collect();
        serde_json::json!({
            "name": self.server,
            "path_prefix": format!("/mcp/{}", self.server),
            "regional_clusters": by_region,
            "residency_clusters": by_rule,
        })
    }

    fn routes(&self) -> String {
        server_routes(&self.server, &format!("/mcp/{}", self.server), "cluster_header: x-mcp-cluster", Some(true))
    }

    fn clusters(&self) -> String {
        let cluster = |name: String, order: Vec<&(String, Vec<SocketAddr>)>| {
            let localities: String = order
                .iter()
                .enumerate()
                .map(|(priority, (region, addrs))| {
                    let endpoints: String = addrs
                        .iter()
                        .map(|a| format!("        - endpoint: {{ address: {} }}\n", Address::Tcp(*a).yaml()))
                        .collect();
                    format!("      - locality: {{ region: {region} }}\n        priority: {priority}\n        lb_endpoints:\n{endpoints}")
                })
                .collect();
            format!(
                "  - name: {name}\n    connect_timeout: 1s\n    type: STATIC\n    lb_policy: LEAST_REQUEST\n{MCP_HEALTH_CHECK}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n{localities}"
            )
        };
        let by_region = self.regions.iter().enumerate().map(|(i, first)| {
            let rest = self.regions.iter().enumerate().filter(|(k, _)| *k != i).map(|(_, r)| r);
            cluster(format!("{}_{}", self.server, first.0), std::iter::once(first).chain(rest).collect())
        });
        let by_rule = self.pinned.iter().map(|(rule, allowed)| {
            let order = allowed.iter().filter_map(|a| self.regions.iter().find(|(r, _)| r == a)).collect();
            cluster(format!("{}_{rule}", self.server), order)
        });
        by_region.chain(by_rule).collect()
    }
}

/// Where a cluster's one endpoint is: a TCP address or a Unix socket (Envoy's `pipe`).
#[derive(Debug, Clone)]
pub enum Address {
    Tcp(SocketAddr),
    Pipe(PathBuf),
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Address {
        Address::Tcp(a)
    }
}

impl Address {
    fn yaml(&self) -> String {
        match self {
            Address::Tcp(a) => format!("{{ socket_address: {{ address: {}, port_value: {} }} }}", a.ip(), a.port()),
            Address::Pipe(p) => format!("{{ pipe: {{ path: {:?} }} }}", p.display().to_string()),
        }
    }
}

pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The Envoy bootstrap used by tests; same shape as `envoy/demo.yaml`.
pub fn bootstrap(opts: &EnvoyOptions) -> String {
    let routes: String = opts
        .upstreams
        .iter()
        .map(|(name, prefix, _)| {
            server_routes(name, prefix, &format!("cluster: {name}"), opts.session_affinity.then_some(false))
        })
        .chain(opts.regional.iter().map(Regional::routes))
        .chain(opts.plain_routes.iter().map(|(prefix, cluster)| {
            format!(
                "              - match: {{ path_separated_prefix: {prefix} }}\n                route: {{ cluster: {cluster}, timeout: 0s }}\n"
            )
        }))
        .collect();
    let clusters: String = opts
        .upstreams
        .iter()
        .map(|(name, _, addr)| {
            let more = opts.replicas.iter().filter(|(n, _)| n == name).flat_map(|(_, a)| a.iter());
            (name, std::iter::once(addr).chain(more).map(|a| Address::Tcp(*a)).collect::<Vec<_>>())
        })
        .chain(opts.clusters.iter().map(|(name, addr)| (name, vec![addr.clone()])))
        .map(|(name, addrs)| {
            let endpoints: String =
                addrs.iter().map(|a| format!("        - endpoint: {{ address: {} }}\n", a.yaml())).collect();
            format!(
                "  - name: {name}\n    connect_timeout: 1s\n    type: STATIC\n    lb_policy: LEAST_REQUEST\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{endpoints}"
            )
        })
        .chain(opts.regional.iter().map(Regional::clusters))
        .collect();
    let affinity = opts.session_affinity || !opts.regional.is_empty();
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{stats}static_resources:
  listeners:
  - name: mcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    per_connection_buffer_limit_bytes: 1048576
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mcp
          use_remote_address: true
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
{session_gone}          route_config:
            name: mcp
            virtual_hosts:
            - name: mcp
              domains: ["*"]
              routes:
{routes}          http_filters:
{affinity}{gateway}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"#,
        affinity = if affinity { SESSION_AFFINITY } else { "" },
        session_gone = if affinity { SESSION_GONE } else { "" },
        gateway = gateway_filter(opts),
        stats = mcp_gateway::stats::STATS_CONFIG_YAML,
    )
}

/// Envoy's stateful session filter keeping each MCP session on the replica that issued it
/// (before the gateway's filter, which then reads session ids without the envelope).
const SESSION_AFFINITY: &str = r#"          - name: envoy.filters.http.stateful_session
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession
              strict: true
              session_state:
                name: envoy.http.stateful_session.envelope
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.stateful_session.envelope.v3.EnvelopeSessionState
                  header: { name: mcp-session-id }
"#;

/// A server's routes at `prefix` and the seed's `/proxy/{name}/mcp`, to `target`
/// (`cluster: x` or `cluster_header: x-mcp-cluster`), rewritten to `/mcp`. With replicas
/// (`replicated` is `Some(next_priority)`), a request without a session that could not
/// reach its replica (refused, or reset before it was sent) is tried on another, never one
/// that may have run (and, with `next_priority`, in the next priority: the next region);
/// a request in a session is not retried: its replica is the only one that knows the
/// session, and when it is gone the client is told so (404).
fn server_routes(name: &str, prefix: &str, target: &str, replicated: Option<bool>) -> String {
    let route = |prefix: &str| {
        let Some(next_priority) = replicated else {
            return format!(
                "              - match: {{ path_separated_prefix: {prefix} }}\n                route: {{ {target}, prefix_rewrite: /mcp, timeout: 0s }}\n"
            );
        };
        let priority = if next_priority { RETRY_NEXT_PRIORITY } else { "" };
        format!(
            "              - match: {{ path_separated_prefix: {prefix}, headers: [{{ name: mcp-session-id, present_match: true }}] }}\n                route: {{ {target}, prefix_rewrite: /mcp, timeout: 0s }}\n              - match: {{ path_separated_prefix: {prefix} }}\n                route: {{ {target}, prefix_rewrite: /mcp, timeout: 0s, retry_policy: {{ {RETRY_ELSEWHERE}{priority} }} }}\n"
        )
    };
    route(prefix) + &route(&format!("/proxy/{name}/mcp"))
}

/// Route retries for replicated servers, on requests without a session.
const RETRY_ELSEWHERE: &str = "retry_on: \"connect-failure,reset-before-request\", num_retries: 2, host_selection_retry_max_attempts: 5, retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }]";

/// For clusters whose priorities are regions: a retry goes to the next region.
const RETRY_NEXT_PRIORITY: &str = ", retry_priority: { name: envoy.retry_priorities.previous_priorities, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig, update_frequency: 1 } }";

/// An MCP `ping` every 100 ms; a replica that refuses it twice is out, one answer brings
/// it back. (`Host` is one the test servers accept.)
const MCP_HEALTH_CHECK: &str = r#"    health_checks:
    - timeout: 2s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check:
        host: 127.0.0.1
        path: /mcp
        method: POST
        send: { text: "7b226a736f6e727063223a22322e30222c226964223a226865616c7468222c226d6574686f64223a2270696e67227d" }
        request_headers_to_add:
        - header: { key: content-type, value: application/json }
        - header: { key: accept, value: "application/json, text/event-stream" }
"#;

/// A request in a session whose replica is gone (no such host, or it refuses
/// connections) gets the spec's 404 with a JSON-RPC error, which makes the client open a
/// new session, instead of Envoy's 503.
const SESSION_GONE: &str = r#"          local_reply_config:
            mappers:
            - filter:
                and_filter:
                  filters:
                  - response_flag_filter: { flags: [UH, UF] }
                  - header_filter: { header: { name: mcp-session-id, present_match: true } }
              status_code: 404
              body: { inline_string: '{"jsonrpc":"2.0","id":null,"error":{"code":-32004,"message":"Not Found: the session ended with its server replica; start a new session"}}' }
              body_format_override:
                text_format_source: { inline_string: "%LOCAL_REPLY_BODY%" }
                content_type: application/json
            - filter:
                and_filter:
                  filters:
                  - response_flag_filter: { flags: [UH, UF] }
                  - header_filter: { header: { name: x-mcp-residency, present_match: true } }
              status_code: 503
              body_format_override:
                text_format_source: { inline_string: '{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Service Unavailable: no replica is up in the regions data residency rule %REQ(X-MCP-RESIDENCY)% allows; the request is not sent elsewhere"}}' }
                content_type: application/json
            - filter:
                response_flag_filter: { flags: [UH, UF, NC] }
              status_code: 503
              body_format_override:
                text_format_source: { inline_string: '{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Service Unavailable: no replica of this server is up"}}' }
                content_type: application/json
"#;

/// The gateway filter's entry in `http_filters` (nothing when the plugin config is null).
fn gateway_filter(opts: &EnvoyOptions) -> String {
    if opts.plugin_config.is_null() {
        return String::new();
    }
    let env_keys: Vec<String> = opts.env.iter().map(|(k, _)| yaml_string(k)).collect();
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: mcp_gateway
                root_id: mcp_gateway
                allow_on_headers_stop_iteration: true
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}
                  environment_variables:
                    host_env_keys: [{env_keys}]
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {config}
"#,
        wasm = yaml_string(&wasm_path().to_string_lossy()),
        env_keys = env_keys.join(", "),
        config = yaml_string(&opts.plugin_config.to_string()),
    )
}

impl Envoy {
    /// Starts Envoy and waits until its listener accepts requests.
    pub async fn start(opts: EnvoyOptions) -> Result<Envoy> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin.txt");
        let log_path = dir.path().join("envoy.log");
        std::fs::write(&config_path, bootstrap(&opts))?;
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--use-dynamic-base-id", "--log-level", "info", "--concurrency"])
            .arg(if opts.regional.is_empty() { "2" } else { "1" })
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawn envoy")?;
        let mut envoy = Envoy { child, port: 0, admin_port: 0, log_path, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = envoy.child.try_wait()? {
                bail!("envoy exited with {status} before becoming ready:\n{}", envoy.log());
            }
            if Instant::now() > deadline {
                bail!("envoy not ready after 30s:\n{}", envoy.log());
            }
            if envoy.admin_port == 0 {
                if let Ok(addr) = std::fs::read_to_string(&admin_path) {
                    envoy.admin_port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                }
            }
            if envoy.admin_port != 0 && envoy.port == 0 {
                envoy.port = envoy.listener_port().await.unwrap_or(0);
            }
            if envoy.port != 0 && envoy.admin_get("/ready").await.is_ok_and(|r| r.trim() == "LIVE") {
                return Ok(envoy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs Envoy expecting it to refuse the configuration; returns its log.
    pub async fn expect_refusal(opts: EnvoyOptions) -> Result<String> {
        match Envoy::start(opts).await {
            Ok(envoy) => Err(anyhow!("envoy started although it should have refused:\n{}", envoy.log())),
            Err(e) => Ok(e.to_string()),
        }
    }

    async fn admin_get(&self, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        Ok(reqwest::get(url).await?.error_for_status()?.text().await?)
    }

    async fn listener_port(&self) -> Result<u16> {
        let listeners: Value = serde_json::from_str(&self.admin_get("/listeners?format=json").await?)?;
        listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| anyhow!("no listener port yet"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The audit records logged so far.
    pub fn audit_records(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("mcp_audit ").map(|(_, json)| json))
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect()
    }

    /// Waits for an audit record matching `pred` (records are written when the
    /// response completes, just after the client has it).
    pub async fn wait_for_audit(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.audit_records().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(Instant::now() < deadline, "no matching audit record in:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until Envoy's health checks see `addr` in `cluster` as healthy, or as failed.
    pub async fn wait_for_health(&self, cluster: &str, addr: SocketAddr, healthy: bool) {
        let line = format!("{cluster}::{addr}::health_flags::");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let clusters = self.admin_get("/clusters").await.unwrap_or_default();
            let flags = clusters.lines().find_map(|l| l.strip_prefix(&line)).map(str::to_owned);
            let is_healthy = flags.as_deref() == Some("healthy");
            if flags.is_some() && is_healthy == healthy {
                return;
            }
            assert!(Instant::now() < deadline, "{addr} in {cluster} never became healthy={healthy}: {flags:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// True while the Envoy process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
