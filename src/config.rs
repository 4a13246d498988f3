//! Plugin configuration: raw JSON types, then a validated, compiled [`Config`].
//!
//! Parsing rejects unknown fields and reports the path of the offending field;
//! compiling decodes keys and compiles globs once, so requests never pay for it. Every
//! field below is part of the user's manual (README "Configuration").

use crate::audit::{Redactor, DEFAULT_REDACT_FIELDS};
use crate::jwt::{Alg, Key, Verifier};
use crate::rbac::{Policy, Role};
use glob::Pattern;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A configuration error, naming the field (as a JSON path) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration at `{}`: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// The plugin configuration as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Largest POST body buffered for inspection; larger bodies get 413. Keep it below
    /// Envoy's `per_connection_buffer_limit_bytes` (1 MiB by default).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in a body.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// The MCP servers behind the gateway, by path prefix.
    pub servers: Vec<RawServer>,
    pub jwt: RawJwt,
    pub rbac: RawRbac,
    #[serde(default)]
    pub audit: RawAudit,
}

fn default_max_body_bytes() -> usize {
    256 * 1024
}
fn default_max_json_depth() -> usize {
    32
}

/// One upstream MCP server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Name used in policy (`rbac.roles.*.servers`) and audit.
    pub name: String,
    /// Requests whose path is this prefix, or this prefix followed by `/` or `?`, are
    /// for this server. Must match the Envoy route that sends them to its cluster.
    pub path_prefix: String,
}

/// Token verification for one issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Required `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// Clock skew tolerated for `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u32,
    /// Longest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Dotted path of the claim holding the user id.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Dotted path of the claim holding roles: an array of strings, or a
    /// space-separated string (`realm_access.roles`, `groups`, `scope`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Verification keys; each is bound to one algorithm.
    pub keys: Vec<RawKey>,
}

fn default_leeway() -> u32 {
    60
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}

/// A verification key. Give exactly one of `secret`, `secret_env`, `jwk`, `jwk_env`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Matched against the token header's `kid`. Defaults to the JWK's `kid`.
    pub kid: Option<String>,
    /// The only algorithm this key verifies: HS256/384/512, RS256/384/512,
    /// PS256/384/512, ES256, EdDSA.
    pub alg: String,
    /// HMAC shared secret, inline (UTF-8). Prefer `secret_env`.
    pub secret: Option<String>,
    /// Name of an environment variable (exposed to the VM through
    /// `vm_config.environment_variables`) holding the HMAC secret.
    pub secret_env: Option<String>,
    /// A public JWK (RFC 7517), inline.
    pub jwk: Option<Value>,
    /// Name of an environment variable holding a JWK as JSON.
    pub jwk_env: Option<String>,
}

/// Role definitions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRbac {
    pub roles: BTreeMap<String, RawRole>,
}

/// What one role may do. All lists are globs (`*`, `?`, `[a-z]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    /// Server names this role may reach.
    pub servers: Vec<String>,
    /// MCP methods this role may send (`initialize`, `tools/*`...). Defaults to all;
    /// what a method acts on is then limited by `tools`, `resources`, `prompts`.
    #[serde(default = "all")]
    pub methods: Vec<String>,
    /// Tool names this role may call (`tools/call`).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Resource URIs this role may read or subscribe to.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Prompt names this role may get.
    #[serde(default)]
    pub prompts: Vec<String>,
}

fn all() -> Vec<String> {
    vec!["*".into()]
}

/// What goes into audit records.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Argument keys whose values are replaced by `[REDACTED]` (see README).
    #[serde(default = "default_redact_fields")]
    pub redact_fields: Vec<String>,
    /// Longer argument strings are cut to this many bytes.
    #[serde(default = "default_max_string_bytes")]
    pub max_string_bytes: usize,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            redact_fields: default_redact_fields(),
            max_string_bytes: default_max_string_bytes(),
        }
    }
}

fn default_redact_fields() -> Vec<String> {
    DEFAULT_REDACT_FIELDS
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_max_string_bytes() -> usize {
    256
}

/// An MCP server, compiled.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub path_prefix: String,
}

/// The validated configuration the filter runs on.
#[derive(Debug)]
pub struct Config {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub servers: Vec<Server>,
    pub verifier: Verifier,
    pub policy: Policy,
    pub redactor: Redactor,
}

impl Config {
    /// Parses and compiles plugin configuration JSON. `env` looks up environment
    /// variables named by `*_env` fields.
    pub fn from_json(
        json: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(
                if path == "." { "$".into() } else { path },
                e.into_inner().to_string(),
            )
        })?;
        raw.compile(env)
    }

    /// The server a request path is for.
    pub fn server_for(&self, path: &str) -> Option<&Server> {
        let path = path.split('?').next().unwrap_or_default();
        self.servers.iter().find(|s| {
            path.strip_prefix(s.path_prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

impl RawConfig {
    pub fn compile(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(err("max_body_bytes", "must be greater than 0"));
        }
        if !(1..=128).contains(&self.max_json_depth) {
            return Err(err(
                "max_json_depth",
                format!("must be between 1 and 128, got {}", self.max_json_depth),
            ));
        }
        let servers = compile_servers(self.servers)?;
        let names: HashSet<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        let verifier = compile_jwt(self.jwt, env)?;
        let policy = compile_rbac(self.rbac, &names)?;
        Ok(Config {
            max_body_bytes: self.max_body_bytes,
            max_json_depth: self.max_json_depth,
            servers,
            verifier,
            policy,
            redactor: Redactor::new(&self.audit.redact_fields, self.audit.max_string_bytes),
        })
    }
}

fn compile_servers(raw: Vec<RawServer>) -> Result<Vec<Server>, ConfigError> {
    if raw.is_empty() {
        return Err(err("servers", "at least one server is required"));
    }
    let mut seen_names = HashSet::new();
    let mut seen_prefixes = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let at = |f: &str| format!("servers[{i}].{f}");
            let valid_name = !s.name.is_empty()
                && s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(err(at("name"), format!("{:?} must be non-empty [A-Za-z0-9_-]", s.name)));
            }
            if !s.path_prefix.starts_with('/') || s.path_prefix.ends_with('/') || s.path_prefix.contains(['?', '#', '%', '\\']) {
                return Err(err(
                    at("path_prefix"),
                    format!("{:?} must start with '/', not end with '/', and hold no '?', '#', '%' or '\\'", s.path_prefix),
                ));
            }
            if !seen_names.insert(s.name.clone()) {
                return Err(err(at("name"), format!("duplicate server name {:?}", s.name)));
            }
            if !seen_prefixes.insert(s.path_prefix.clone()) {
                return Err(err(at("path_prefix"), format!("duplicate path prefix {:?}", s.path_prefix)));
            }
            Ok(Server { name: s.name, path_prefix: s.path_prefix })
        })
        .collect()
}

fn compile_jwt(raw: RawJwt, env: &dyn Fn(&str) -> Option<String>) -> Result<Verifier, ConfigError> {
    if raw.issuer.is_empty() {
        return Err(err("jwt.issuer", "must not be empty"));
    }
    if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
        return Err(err(
            "jwt.audiences",
            "needs at least one non-empty audience",
        ));
    }
    if raw.keys.is_empty() {
        return Err(err("jwt.keys", "at least one key is required"));
    }
    let claim_path = |field: &str, path: &str| -> Result<Vec<String>, ConfigError> {
        let segs: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segs.iter().any(String::is_empty) {
            return Err(err(
                format!("jwt.{field}"),
                format!("{path:?} is not a dotted claim path"),
            ));
        }
        Ok(segs)
    };
    let keys = raw
        .keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| compile_key(i, k, env))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Verifier {
        issuer: raw.issuer,
        audiences: raw.audiences,
        leeway_secs: raw.leeway_secs,
        max_token_bytes: raw.max_token_bytes,
        user_claim: claim_path("user_claim", &raw.user_claim)?,
        roles_claim: claim_path("roles_claim", &raw.roles_claim)?,
        keys,
    })
}

fn compile_key(
    i: usize,
    k: RawKey,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Key, ConfigError> {
    let at = |f: &str| format!("jwt.keys[{i}].{f}");
    let alg = Alg::parse(&k.alg).ok_or_else(|| {
        err(
            at("alg"),
            format!("unsupported algorithm {:?}; use one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, EdDSA", k.alg),
        )
    })?;
    let from_env = |field: &str, var: &str| {
        env(var).ok_or_else(|| {
            err(
                at(field),
                format!("environment variable {var:?} is not set in the VM"),
            )
        })
    };
    let sources = [
        k.secret.is_some(),
        k.secret_env.is_some(),
        k.jwk.is_some(),
        k.jwk_env.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(err(
            at("secret"),
            "give exactly one of secret, secret_env, jwk, jwk_env",
        ));
    }
    // Errors below never echo key material.
    if let Some(secret) = &k.secret {
        return Key::from_secret(k.kid, alg, secret.as_bytes()).map_err(|m| err(at("secret"), m));
    }
    if let Some(var) = &k.secret_env {
        let secret = from_env("secret_env", var)?;
        return Key::from_secret(k.kid, alg, secret.as_bytes())
            .map_err(|m| err(at("secret_env"), m));
    }
    let (field, jwk) = match (k.jwk, &k.jwk_env) {
        (Some(jwk), _) => ("jwk", jwk),
        (None, Some(var)) => {
            let text = from_env("jwk_env", var)?;
            let jwk = serde_json::from_str(&text)
                .map_err(|e| err(at("jwk_env"), format!("{var:?} does not hold JSON: {e}")))?;
            ("jwk_env", jwk)
        }
        (None, None) => return Err(err(at("jwk"), "missing key source")),
    };
    Key::from_jwk(k.kid, alg, &jwk).map_err(|m| err(at(field), m))
}

fn compile_rbac(raw: RawRbac, servers: &HashSet<&str>) -> Result<Policy, ConfigError> {
    if raw.roles.is_empty() {
        return Err(err("rbac.roles", "at least one role is required"));
    }
    let mut roles = BTreeMap::new();
    for (name, r) in raw.roles {
        let at = |f: &str| format!("rbac.roles.{name}.{f}");
        let globs = |field: &str, list: &[String]| -> Result<Vec<Pattern>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    Pattern::new(p).map_err(|e| {
                        err(
                            format!("{}[{i}]", at(field)),
                            format!("bad glob {p:?}: {e}"),
                        )
                    })
                })
                .collect()
        };
        for (i, s) in r.servers.iter().enumerate() {
            let is_glob = s.contains(['*', '?', '[']);
            if !is_glob && !servers.contains(s.as_str()) {
                return Err(err(
                    format!("{}[{i}]", at("servers")),
                    format!("unknown server {s:?}"),
                ));
            }
        }
        let role = Role {
            servers: globs("servers", &r.servers)?,
            methods: globs("methods", &r.methods)?,
            tools: globs("tools", &r.tools)?,
            resources: globs("resources", &r.resources)?,
            prompts: globs("prompts", &r.prompts)?,
        };
        roles.insert(name, role);
    }
    Ok(Policy { roles })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn base() -> Value {
        json!({
            "servers": [{"name": "github", "path_prefix": "/mcp/github"}, {"name": "filesystem", "path_prefix": "/mcp/filesystem"}],
            "jwt": {"issuer": "i", "audiences": ["a"], "keys": [{"kid": "k", "alg": "HS256", "secret": SECRET}]},
            "rbac": {"roles": {"developer": {"servers": ["github"], "tools": ["get_*"]}}},
        })
    }

    fn compile(v: &Value) -> Result<Config, ConfigError> {
        Config::from_json(v.to_string().as_bytes(), &|_| None)
    }

    fn field_of(v: Value) -> String {
        compile(&v).unwrap_err().field
    }

    #[test]
    fn compiles_a_minimal_config_with_defaults() {
        let c = compile(&base()).unwrap();
        assert_eq!(c.max_body_bytes, 256 * 1024);
        assert_eq!(c.verifier.leeway_secs, 60);
        assert_eq!(c.policy.roles["developer"].methods.len(), 1);
    }

    #[test]
    fn errors_name_the_offending_field() {
        let mut v = base();
        v["jwt"]["keys"][0]["alg"] = json!("none");
        assert_eq!(field_of(v), "jwt.keys[0].alg");

        let mut v = base();
        v["rbac"]["roles"]["developer"]["tools"] = json!(["get_*", "[oops"]);
        assert_eq!(field_of(v), "rbac.roles.developer.tools[1]");

        let mut v = base();
        v["rbac"]["roles"]["developer"]["servers"] = json!(["gitlab"]);
        assert_eq!(field_of(v), "rbac.roles.developer.servers[0]");

        let mut v = base();
        v["servers"][1]["path_prefix"] = json!("mcp/fs/");
        assert_eq!(field_of(v), "servers[1].path_prefix");

        let mut v = base();
        v["jwt"]["keys"][0]["secret"] = json!("short");
        assert_eq!(field_of(v), "jwt.keys[0].secret");

        let mut v = base();
        v["jwt"]["audiences"] = json!([]);
        assert_eq!(field_of(v), "jwt.audiences");
    }

    #[test]
    fn unknown_and_mistyped_fields_are_errors_with_paths() {
        let mut v = base();
        v["jwt"]["isuer"] = json!("typo");
        let e = compile(&v).unwrap_err();
        assert_eq!(e.field, "jwt.isuer");
        assert!(e.message.contains("isuer"), "{e}");

        let mut v = base();
        v["max_body_bytes"] = json!("big");
        assert_eq!(field_of(v), "max_body_bytes");

        let e = Config::from_json(b"{not json", &|_| None).unwrap_err();
        assert!(e.to_string().contains("invalid plugin configuration"));
    }

    #[test]
    fn key_errors_never_echo_secrets() {
        let mut v = base();
        v["jwt"]["keys"][0]["secret"] = json!("tooshort-secret");
        let e = compile(&v).unwrap_err().to_string();
        assert!(!e.contains("tooshort-secret"), "{e}");
    }

    #[test]
    fn keys_can_come_from_the_environment() {
        let mut v = base();
        v["jwt"]["keys"][0] = json!({"alg": "HS256", "secret_env": "GW_SECRET"});
        let env = |name: &str| (name == "GW_SECRET").then(|| SECRET.to_owned());
        assert!(Config::from_json(v.to_string().as_bytes(), &env).is_ok());
        assert_eq!(field_of(v), "jwt.keys[0].secret_env");
    }

    #[test]
    fn a_key_needs_exactly_one_source() {
        let mut v = base();
        v["jwt"]["keys"][0]["secret_env"] = json!("X");
        assert_eq!(field_of(v), "jwt.keys[0].secret");
    }

    #[test]
    fn finds_the_server_by_path_prefix() {
        let c = compile(&base()).unwrap();
        let name = |p: &str| c.server_for(p).map(|s| s.name.clone());
        assert_eq!(name("/mcp/github"), Some("github".into()));
        assert_eq!(name("/mcp/github/x?y=1"), Some("github".into()));
        assert_eq!(name("/mcp/github?session=1"), Some("github".into()));
        assert_eq!(name("/mcp/githubx"), None);
        assert_eq!(name("/mcp"), None);
        assert_eq!(name("/mcp/filesystem"), Some("filesystem".into()));
    }
}
