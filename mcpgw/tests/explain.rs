//! `mcpgw explain`, run as the real binary against envoy/demo.yaml and inline configurations.
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header, TimeOptions};
use serde_json::{json, Map, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn demo_yaml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo.yaml")
}

/// The demo's verification key, as `--env MCPGW_DEMO_JWK=<public JWK>`.
fn demo_env(dir: &Path) -> String {
    let keys = mcpgw::token::keygen(dir).unwrap();
    format!("MCPGW_DEMO_JWK={}", std::fs::read_to_string(keys.public_key).unwrap())
}

/// An inline configuration with an HS256 provider and two roles.
fn inline_config() -> Value {
    json!({
        "servers": [{"name": "github", "path_prefix": "/mcp/github"}],
        "jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example", "audiences": ["mcp"],
                               "keys": [{"kid": "k", "alg": "HS256", "secret": SECRET}]}]},
        "rbac": {
            "operations": {"read": ["get_*", "list_*"], "write": ["create_*"]},
            "roles": {
                "developer": {"servers": ["github"], "tools": ["get_*", "list_*", "create_*"]},
                "readonly": {"servers": ["github"], "tools": ["*"], "operations": ["read"]}
            }
        }
    })
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": tool, "arguments": {"repository": "acme/website"}}})
    .to_string()
}

fn claims(sub: &str, roles: &[&str]) -> String {
    json!({"iss": "mcpgw-demo", "sub": sub, "roles": roles}).to_string()
}

fn mcpgw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcpgw")).args(args).stdin(Stdio::null()).output().unwrap()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn explain(args: &[&str]) -> Run {
    let out = mcpgw(&[&["explain"], args].concat());
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", run.stdout, run.stderr))
}

fn hs256_token(sub: &str, roles: &[&str], secret: &str) -> String {
    let mut custom = Map::new();
    custom.insert("iss".into(), json!("https://idp.example"));
    custom.insert("aud".into(), json!("mcp"));
    custom.insert("sub".into(), json!(sub));
    custom.insert("roles".into(), json!(roles));
    let now = TimeOptions::new(chrono::Duration::zero(), chrono::Utc::now);
    let claims = Claims::new(custom).set_duration(&now, chrono::Duration::minutes(5));
    Hs256.token(&Header::empty().with_key_id("k"), &claims, &Hs256Key::new(secret)).unwrap()
}

#[test]
fn demo_readonly_may_get_but_not_create_an_issue() {
    let dir = tempfile::tempdir().unwrap();
    let env = demo_env(dir.path());
    let config = demo_yaml();
    let config = config.to_str().unwrap();
    let bob = claims("bob", &["readonly"]);

    let get = call("get_issue");
    let run =
        explain(&["--config", config, "--env", &env, "--claims", &bob, "--path", "/mcp/github", "--request", &get]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("decision: allow\n"), "{}", run.stdout);
    assert!(run.stdout.contains("rule: role readonly"), "{}", run.stdout);

    let create = call("create_issue");
    let run =
        explain(&["--config", config, "--env", &env, "--claims", &bob, "--server", "github", "--request", &create]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("decision: deny\n"), "{}", run.stdout);
    assert!(run.stdout.contains("\nreason: "), "{}", run.stdout);
    assert!(run.stdout.contains("caller's roles: readonly ("), "{}", run.stdout);

    let alice = claims("alice", &["developer"]);
    let run =
        explain(&["--config", config, "--env", &env, "--claims", &alice, "--server", "github", "--request", &create]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("rule: role developer"), "{}", run.stdout);
}

/// A call to the demo's federated server `all` is explained as the call the member gets:
/// `github__create_issue` is github's `create_issue`, decided by github's policy.
#[test]
fn a_call_to_the_federated_server_is_explained_as_its_members() {
    let dir = tempfile::tempdir().unwrap();
    let env = demo_env(dir.path());
    let config = demo_yaml();
    let config = config.to_str().unwrap();
    let run_as = |who: &str, roles: &[&str], tool: &str| {
        let who = claims(who, roles);
        explain(&["--config", config, "--env", &env, "--claims", &who, "--path", "/mcp/all", "--request", &call(tool)])
    };
    let run = run_as("bob", &["readonly"], "github__create_issue");
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("server: github (through the federated server all)\n"), "{}", run.stdout);
    assert!(run.stdout.contains("request: tools/call \"create_issue\""), "{}", run.stdout);
    let run = run_as("alice", &["developer"], "github__create_issue");
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("rule: role developer"), "{}", run.stdout);
    let run = run_as("alice", &["developer"], "create_issue");
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("no prefix or routing rule names the member"), "{}", run.stderr);
}

#[test]
fn denial_names_the_reason_the_roles_and_who_would_be_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "gateway.json", &inline_config().to_string());
    let config = config.to_str().unwrap();
    let claims = json!({"iss": "https://idp.example", "sub": "bob", "roles": ["readonly", "intern"]}).to_string();
    let request = call("delete_repo");

    let run = explain(&["--config", config, "--claims", &claims, "--server", "github", "--request", &request]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("decision: deny\n"));
    assert!(run.stdout.contains("reason: tool \"delete_repo\" has no known operation"), "{}", run.stdout);
    assert!(run.stdout.contains("client sees: HTTP 403, JSON-RPC error -32003"), "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "caller's roles: readonly (servers github; tools *; operations read); intern (not defined in the policy"
        ),
        "{}",
        run.stdout
    );

    let developer = json!({"iss": "https://idp.example", "sub": "carol", "roles": ["developer"]}).to_string();
    let run =
        explain(&["--config", config, "--claims", &developer, "--server", "github", "--request", &request, "--json"]);
    assert_eq!(run.code, 1);
    let out = json_of(&run);
    assert_eq!(out["decision"], "deny");
    assert_eq!(out["reason"], "no role allows tools/call on \"delete_repo\"");
    assert_eq!(out["user_id"], "carol");
    assert_eq!(out["roles"], json!(["developer"]));
    assert_eq!(out["server"], "github");
    assert_eq!(out["role_rules"][0]["tools"], json!(["get_*", "list_*", "create_*"]));
    assert_eq!(out["allowed_for_roles"], json!([]));
    assert!(out.get("rule").is_none());

    let run = explain(&[
        "--config",
        config,
        "--claims",
        &developer,
        "--server",
        "github",
        "--request",
        &call("create_issue"),
        "--json",
    ]);
    assert_eq!(run.code, 0);
    assert_eq!(json_of(&run)["rule"], "role developer: tool create_* (write)");
}

#[test]
fn shadow_mode_would_deny_and_hidden_tools_look_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let claims = json!({"iss": "https://idp.example", "sub": "bob", "roles": ["readonly"]}).to_string();
    let request = call("create_issue");

    let mut shadow = inline_config();
    shadow["rbac"]["shadow"] = json!(true);
    let config = write(dir.path(), "shadow.json", &shadow.to_string());
    let run = explain(&[
        "--config",
        config.to_str().unwrap(),
        "--claims",
        &claims,
        "--server",
        "github",
        "--request",
        &request,
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("decision: would_deny (shadow: let through)\n"), "{}", run.stdout);
    assert!(!run.stdout.contains("client sees"), "{}", run.stdout);

    let mut hide = inline_config();
    hide["rbac"]["hide_denied_tools"] = json!(true);
    let config = write(dir.path(), "hide.json", &hide.to_string());
    let run = explain(&[
        "--config",
        config.to_str().unwrap(),
        "--claims",
        &claims,
        "--server",
        "github",
        "--request",
        &request,
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("client sees: HTTP 200, JSON-RPC error -32602: Unknown tool: create_issue"),
        "{}",
        run.stdout
    );
}

#[test]
fn tools_list_over_sse_shows_what_the_caller_sees() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "gateway.json", &inline_config().to_string());
    let reply = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": "get_issue", "inputSchema": {"type": "object"}},
        {"name": "search_code", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
        {"name": "create_issue", "inputSchema": {"type": "object"}},
        {"name": "purge_cache", "inputSchema": {"type": "object"}, "annotations": {"destructiveHint": true}}
    ]}});
    let sse = write(dir.path(), "tools.sse", &format!("event: message\nid: 1\ndata: {reply}\n\n"));
    let claims = json!({"iss": "https://idp.example", "sub": "bob", "roles": ["readonly"]}).to_string();
    let args = ["--config", config.to_str().unwrap(), "--claims", &claims, "--path", "/mcp/github/", "--tools-list"];

    let run = explain(&[&args[..], &[sse.to_str().unwrap(), "--json"]].concat());
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let out = json_of(&run);
    // search_code is a read by its annotations, learned from this very reply.
    assert_eq!(out["visible"], json!(["get_issue", "search_code"]));
    assert_eq!(out["hidden"], json!(["create_issue", "purge_cache"]));
    assert_eq!(out["list"], "tools");

    let run = explain(&[&args[..], &[sse.to_str().unwrap()]].concat());
    assert!(run.stdout.contains("visible tools (2): get_issue, search_code\n"), "{}", run.stdout);
    assert!(run.stdout.contains("hidden tools (2): create_issue, purge_cache\n"), "{}", run.stdout);

    // The annotations also decide a later call, as in the filter.
    let run = explain(&[&args[..], &[sse.to_str().unwrap(), "--request", &call("search_code")]].concat());
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("rule: role readonly: tool * (read)"), "{}", run.stdout);

    let garbage = write(dir.path(), "garbage.sse", "data: {not json\n\n");
    let run = explain(&[&args[..], &[garbage.to_str().unwrap()]].concat());
    assert_eq!(run.code, 2);
}

#[test]
fn tokens_are_verified_with_the_configured_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "gateway.json", &inline_config().to_string());
    let config = config.to_str().unwrap();

    let token = hs256_token("alice", &["developer"], SECRET);
    let run =
        explain(&["--config", config, "--token", &token, "--server", "github", "--request", &call("create_issue")]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("user: alice (roles: developer)\n"), "{}", run.stdout);

    let forged = hs256_token("alice", &["developer"], "another secret, just as long....");
    let run = explain(&["--config", config, "--token", &forged, "--server", "github"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("token refused: invalid token signature"), "{}", run.stderr);

    let mut remote = inline_config();
    remote["jwt"]["providers"][0]["keys"] = json!([]);
    remote["jwt"]["providers"][0]["algorithms"] = json!(["ES256"]);
    remote["jwt"]["providers"][0]["jwks"] = json!({"cluster": "idp", "path": "/certs"});
    let remote = write(dir.path(), "remote.json", &remote.to_string());
    let keys = mcpgw::token::keygen(dir.path()).unwrap();
    let request = mcpgw::token::TokenRequest::new("alice", &["developer"])
        .claim("iss", "https://idp.example")
        .claim("aud", "mcp");
    let es256 = mcpgw::token::mint(&std::fs::read_to_string(keys.signing_key).unwrap(), &request).unwrap();
    let run = explain(&["--config", remote.to_str().unwrap(), "--token", &es256, "--server", "github"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--claims"), "{}", run.stderr);
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = inline_config();
    bad["jwt"]["providers"][0]["keys"][0]["alg"] = json!("none");
    let config = write(dir.path(), "bad.json", &bad.to_string());
    let claims = json!({"sub": "bob", "roles": ["readonly"]}).to_string();
    let run = explain(&["--config", config.to_str().unwrap(), "--claims", &claims, "--server", "github"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("`jwt.providers[0].keys[0].alg`"), "{}", run.stderr);

    // The demo's key comes from the environment; without it the field is named too.
    let demo = demo_yaml();
    let run = explain(&[
        "--config",
        demo.to_str().unwrap(),
        "--env",
        "MCPGW_DEMO_JWK=",
        "--claims",
        &claims,
        "--server",
        "github",
    ]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("`jwt.providers[0].keys[0].jwk_env`"), "{}", run.stderr);

    let yaml = write(dir.path(), "envoy.yaml", "static_resources:\n  listeners: []\n");
    let run = explain(&["--config", yaml.to_str().unwrap(), "--claims", &claims, "--server", "github"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("mcp_gateway"), "{}", run.stderr);
}

#[test]
fn server_access_alone_and_requests_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "gateway.json", &inline_config().to_string());
    let claims = json!({"sub": "eve", "roles": ["intern"]}).to_string();
    let run = explain(&["--config", config.to_str().unwrap(), "--claims", &claims, "--server", "github"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("reason: no role of the caller is defined in the policy\n"), "{}", run.stdout);

    let run = explain(&["--config", config.to_str().unwrap(), "--claims", &claims, "--path", "/mcp/gitlab"]);
    assert_eq!(run.code, 2);

    let claims = json!({"sub": "alice", "roles": ["developer"]}).to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcpgw"))
        .args(["explain", "--config", config.to_str().unwrap(), "--claims", &claims, "--server", "github"])
        .args(["--request", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(call("get_issue").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["rule"], "role developer: tool get_* (read)");
}

#[test]
fn help_documents_every_flag() {
    let out = mcpgw(&["explain", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--env",
        "--token",
        "--claims",
        "--provider",
        "--server",
        "--path",
        "--request",
        "--tools-list",
        "--list-kind",
        "--content-type",
        "--json",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("Exit status"), "{help}");
}
