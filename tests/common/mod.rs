//! Shared integration-test setup: real rmcp MCP servers behind a real Envoy running the
//! built filter, a signing key, and helpers to talk to the gateway over raw HTTP.
#![allow(dead_code)] // each test binary uses a different subset
// Test support: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod envoy;

use envoy::{Envoy, EnvoyOptions};
use mcpgw::token::{keygen, mint, TokenRequest};
use mcpgw::{spawn, RunningServer, ServerKind};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

/// Name of the environment variable carrying the test public key into the VM.
pub const JWK_ENV: &str = "MCPGW_TEST_JWK";

/// The plugin configuration the tests run with, unless a test changes it.
pub fn plugin_config() -> Value {
    json!({
        "max_body_bytes": 65536,
        "max_json_depth": 32,
        "servers": [
            {"name": "test", "path_prefix": "/mcp/test"},
            {"name": "github", "path_prefix": "/mcp/github"},
            {"name": "filesystem", "path_prefix": "/mcp/filesystem"},
            {"name": "testjson", "path_prefix": "/mcp/testjson"}
        ],
        "jwt": {
            "providers": [{
                "name": "demo",
                "issuer": "mcpgw-demo",
                "audiences": ["mcp-gateway"],
                "keys": [{"alg": "ES256", "jwk_env": JWK_ENV}]
            }]
        },
        "rbac": {"roles": {
            "admin": {"servers": ["*"], "tools": ["*"], "resources": ["**"], "prompts": ["*"]},
            "developer": {
                "servers": ["test", "github"],
                "tools": ["get_*", "list_*", "create_*", "echo", "whoami", "stepped"]
            },
            "readonly": {"servers": ["test", "github"], "tools": ["get_*", "list_*", "echo", "whoami"]}
        }}
    })
}

/// A running gateway: Envoy with the filter, in front of the test and github servers.
pub struct Gateway {
    pub envoy: Envoy,
    pub test: RunningServer,
    pub github: RunningServer,
    pub filesystem: RunningServer,
    /// The test server answering `application/json` (no sessions).
    pub testjson: RunningServer,
    /// The filesystem server's sandbox directory on disk.
    pub sandbox: std::path::PathBuf,
    signing_jwk: String,
    public_jwk: String,
    _keys: tempfile::TempDir,
}

async fn loopback_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback")
}

impl Gateway {
    pub async fn start() -> Gateway {
        Gateway::start_with(|_| {}).await
    }

    /// Starts with the default plugin configuration, changed by `edit`.
    pub async fn start_with(edit: impl FnOnce(&mut Value)) -> Gateway {
        Gateway::start_full(edit, Vec::new(), Vec::new()).await
    }

    /// Also with extra clusters (an identity provider) and environment variables.
    pub async fn start_full(
        edit: impl FnOnce(&mut Value),
        clusters: Vec<(String, std::net::SocketAddr)>,
        env: Vec<(String, String)>,
    ) -> Gateway {
        Gateway::start_custom(edit, clusters, env, Vec::new()).await
    }

    /// Also with extra routed upstreams: (server name, path prefix, address).
    pub async fn start_custom(
        edit: impl FnOnce(&mut Value),
        clusters: Vec<(String, std::net::SocketAddr)>,
        env: Vec<(String, String)>,
        upstreams: Vec<(String, String, std::net::SocketAddr)>,
    ) -> Gateway {
        let clusters = clusters.into_iter().map(|(name, addr)| (name, addr.into())).collect();
        Gateway::start_routed(edit, clusters, env, upstreams, Vec::new()).await
    }

    /// Also with (path prefix, cluster) routes passed on unchanged (the sidecar's API).
    pub async fn start_routed(
        edit: impl FnOnce(&mut Value),
        clusters: Vec<(String, envoy::Address)>,
        env: Vec<(String, String)>,
        upstreams: Vec<(String, String, std::net::SocketAddr)>,
        plain_routes: Vec<(String, String)>,
    ) -> Gateway {
        let keys = tempfile::tempdir().expect("tempdir");
        let files = keygen(keys.path()).expect("keygen");
        let signing_jwk = std::fs::read_to_string(&files.signing_key).expect("signing key");
        let public_jwk = std::fs::read_to_string(&files.public_key).expect("public key");
        let test = spawn(ServerKind::Test, loopback_listener().await).await.expect("test server");
        let github = spawn(ServerKind::Github, loopback_listener().await).await.expect("github server");
        let testjson = spawn(ServerKind::TestJson, loopback_listener().await).await.expect("json test server");
        let sandbox = keys.path().join("sandbox");
        let filesystem = spawn(ServerKind::Filesystem { sandbox: sandbox.clone() }, loopback_listener().await)
            .await
            .expect("filesystem server");
        let mut config = plugin_config();
        edit(&mut config);
        let envoy = Envoy::start(EnvoyOptions {
            plugin_config: config,
            upstreams: vec![
                ("test".into(), "/mcp/test".into(), test.addr),
                ("github".into(), "/mcp/github".into(), github.addr),
                ("filesystem".into(), "/mcp/filesystem".into(), filesystem.addr),
                ("testjson".into(), "/mcp/testjson".into(), testjson.addr),
            ]
            .into_iter()
            .chain(upstreams)
            .collect(),
            env: std::iter::once((JWK_ENV.into(), public_jwk.clone())).chain(env).collect(),
            clusters,
            plain_routes,
            replicas: Vec::new(),
            session_affinity: false,
            regional: vec![],
        })
        .await
        .expect("start envoy");
        Gateway { envoy, test, github, filesystem, testjson, sandbox, signing_jwk, public_jwk, _keys: keys }
    }

    pub fn public_jwk(&self) -> &str {
        &self.public_jwk
    }

    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.mint(TokenRequest::new(sub, roles))
    }

    pub fn mint(&self, request: TokenRequest) -> String {
        mint(&self.signing_jwk, &request).expect("mint")
    }

    /// `http://127.0.0.1:<port>/mcp/<server>` through Envoy.
    pub fn url(&self, server: &str) -> String {
        self.envoy.url(&format!("/mcp/{server}"))
    }

    /// Total requests that reached any upstream.
    pub fn upstream_requests(&self) -> usize {
        [&self.test, &self.github, &self.filesystem, &self.testjson].iter().map(|s| s.requests.len()).sum()
    }
}

/// A raw HTTP reply.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a JSON-RPC error reply with this HTTP status and error code.
    pub fn assert_rpc_error(&self, status: u16, code: i64) -> Value {
        assert_eq!(self.status, status, "body: {:?}", String::from_utf8_lossy(&self.body));
        let body = self.json();
        assert_eq!(body["jsonrpc"], "2.0", "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        body
    }
}

/// Sends one HTTP request with exactly these headers (repeats allowed).
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Raw {
    send_from(None, method, url, headers, body).await
}

/// [`send`] from a chosen local address (any of 127.0.0.0/8 on Linux), so tests can play
/// several peers.
pub async fn send_from(
    local: Option<std::net::IpAddr>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Raw {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).expect("header name"),
            HeaderValue::from_bytes(v.as_bytes()).expect("header value"),
        );
    }
    let client = reqwest::Client::builder().local_address(local).build().expect("client");
    let resp = client
        .request(method.parse().expect("method"), url)
        .headers(map)
        .body(body)
        .send()
        .await
        .expect("send request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("read body").to_vec();
    Raw { status, headers, body }
}

/// A JSON POST as an MCP client sends it, with an optional bearer token.
pub async fn post_json(url: &str, token: Option<&str>, body: &Value) -> Raw {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json"), ("accept", "application/json, text/event-stream")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    send("POST", url, &headers, body.to_string()).await
}

/// A request as an MCP client sends it, in a session, with a bearer token.
pub async fn post_in_session(url: &str, token: &str, session: &str, body: &Value) -> Raw {
    let auth = format!("Bearer {token}");
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("authorization", auth.as_str()),
        ("mcp-session-id", session),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    send("POST", url, &headers, body.to_string()).await
}

/// An `initialize` request as a raw client sends it.
pub fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
}

pub fn tool_call(id: i64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
}
