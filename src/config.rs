//! Plugin configuration: raw JSON types, then a validated, compiled [`Config`].
//!
//! Parsing rejects unknown fields and reports the path of the offending field;
//! compiling decodes keys and compiles globs once, so requests never pay for it. Every
//! field below is part of the user's manual (README "Configuration"). Each section is
//! compiled by the module that uses it (`Verifier::compile`, `Policy::compile`,
//! `ResourcePolicy::try_from`...), with error fields relative to the section; this
//! module says where the section sits (`ConfigError::within`).

use crate::audit::{Redactor, DEFAULT_REDACT_FIELDS};
use crate::discovery::ResourceMetadata;
use crate::jwt::Verifier;
use crate::rbac::Policy;
use crate::resource::ResourcePolicy;
use crate::time;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

/// A configuration error, naming the field (as a JSON path) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plugin configuration at `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The same error seen from the section holding the value: under `jwt`,
    /// `providers[0].keys` becomes `jwt.providers[0].keys`. Each domain compiles its section
    /// with fields relative to it, and the caller names where the section sits. An empty
    /// field is the value itself.
    pub(crate) fn within(self, at: &str) -> ConfigError {
        let field = match self.field.as_str() {
            "" => at.to_owned(),
            f if f.starts_with('[') => format!("{at}{f}"),
            f => format!("{at}.{f}"),
        };
        ConfigError { field, message: self.message }
    }
}

pub(crate) fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), message: message.into() }
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
    /// OAuth protected resource metadata (MCP authorization discovery). Optional.
    pub resource_metadata: Option<RawResourceMetadata>,
    /// Resource-level policies by server name.
    #[serde(default)]
    pub resource_policies: BTreeMap<String, RawResourcePolicy>,
    #[serde(default)]
    pub audit: RawAudit,
    /// How long an MCP session may stay unused before the gateway forgets who opened it
    /// (a request naming a forgotten session gets 404, and the client opens a new one).
    #[serde(default = "default_session_idle_secs")]
    pub session_idle_secs: u64,
    /// Environment variable holding a key (at least 32 bytes) shared by every gateway
    /// replica: session ids are then handed out bound to their caller (`<id>.<tag>`) and
    /// any replica can check one it did not see opened. Without it, the owners of sessions
    /// are kept in this Envoy's memory.
    pub session_binding_key_env: Option<String>,
    /// Where callers are and where their data may be served (README "Regions and data
    /// residency"). Optional.
    pub regions: Option<crate::region::RawRegions>,
}

fn default_session_idle_secs() -> u64 {
    24 * 3600
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
    /// What credential the upstream gets. By default none: the client's token is for the
    /// gateway, never passed through.
    #[serde(default)]
    pub upstream_auth: RawUpstreamAuth,
    /// `mcp` (default): an MCP server. `sidecar`: one of the sidecar's API routes
    /// (`/audit`, `/events`): GET only, authenticated and role-checked like any server, no
    /// JSON-RPC body; the filter adds the sidecar's secret (`audit.sidecar.secret_env`).
    #[serde(default)]
    pub kind: ServerKind,
    /// For `kind: federation`: its members and how their lists merge.
    pub federation: Option<crate::federation::RawFederation>,
    /// The region the server runs in, when all of it runs in one (needs `regions`).
    pub region: Option<String>,
    /// Replicas in several regions: the Envoy cluster serving callers of each region
    /// (every one of `regions.names`), named to Envoy in `x-mcp-cluster`.
    #[serde(default)]
    pub regional_clusters: BTreeMap<String, String>,
    /// The cluster serving callers pinned by each residency rule: it must hold only the
    /// regions the rule allows. A pinned caller whose rule has none here is refused.
    #[serde(default)]
    pub residency_clusters: BTreeMap<String, String>,
}

/// What sits behind a server's path prefix.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerKind {
    #[default]
    Mcp,
    Sidecar,
    /// A virtual MCP server the sidecar serves over member servers (`federation`): the
    /// filter authenticates its callers and hands the sidecar a delegation; each call the
    /// sidecar dispatches to a member comes back through the gateway and is decided there.
    Federation,
}

impl ServerKind {
    /// Served by the sidecar: the gateway adds the sidecar's secret.
    pub fn is_sidecar(self) -> bool {
        matches!(self, ServerKind::Sidecar | ServerKind::Federation)
    }
}

/// Credential for an upstream server. At most one of forwarding and injecting.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamAuth {
    /// Forward the client's `Authorization` header unchanged (opt-in; only for servers
    /// that accept the gateway's tokens themselves).
    #[serde(default)]
    pub forward_client_token: bool,
    /// Header to set on requests to this server (e.g. `authorization`).
    pub header: Option<String>,
    /// Its value, inline. Never logged. Prefer `value_env`.
    pub value: Option<Secret>,
    /// Environment variable holding the value.
    pub value_env: Option<String>,
}

/// Token verification.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Clock skew tolerated for `exp` and `nbf`, in seconds (at most
    /// [`MAX_LEEWAY_SECS`]: more would keep expired tokens, and their cache entries, alive).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u32,
    /// Longest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// How long a request may wait for a provider's first JWKS fetch (or for a refetch
    /// caused by an unknown `kid`) before it is refused (at most [`MAX_KEY_WAIT_MS`]: a
    /// waiting request holds a connection and one of a worker's 1024 waiting places).
    #[serde(default = "default_key_wait_ms")]
    pub key_wait_ms: u64,
    /// Verified tokens remembered per worker (0 disables the cache).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Trusted issuers; a token is checked by the provider whose `issuer` it names.
    pub providers: Vec<RawProvider>,
}

/// Largest `jwt.leeway_secs`.
pub const MAX_LEEWAY_SECS: u32 = 300;
/// Largest `jwt.key_wait_ms`.
pub const MAX_KEY_WAIT_MS: u64 = 10_000;

fn default_leeway() -> u32 {
    60
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_key_wait_ms() -> u64 {
    3000
}
fn default_cache_entries() -> usize {
    4096
}

/// One trusted token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Name for logs, metrics and audit.
    pub name: String,
    /// Required `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// Algorithm allow-list. Defaults to RS256/384/512, PS256/384/512, ES256 and EdDSA,
    /// plus the algorithms of configured HMAC keys. HS* need a configured secret.
    pub algorithms: Option<Vec<String>>,
    /// Which claims say who the caller is.
    #[serde(default)]
    pub claims: RawClaims,
    /// Keys given in the configuration.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// A JWKS document given inline (`{"keys":[...]}`), as an IdP publishes it. Kept
    /// from `Debug` too: a pasted document may hold a symmetric or private key.
    pub jwks_inline: Option<Secret<Value>>,
    /// A JWKS fetched from the identity provider through an Envoy cluster.
    pub jwks: Option<RawJwks>,
}

/// Claim mapping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    /// Dotted path of the claim holding the user id.
    #[serde(default = "default_user_claim")]
    pub user: String,
    /// Dotted path of the claim holding roles: an array of strings, or a
    /// space-separated string (`realm_access.roles`, `groups`, `scope`).
    #[serde(default = "default_roles_claim")]
    pub roles: String,
    /// Maps values of the roles claim to gateway roles (e.g. scope `mcp:write` to
    /// `developer`); when set, unmapped values grant nothing.
    pub role_map: Option<BTreeMap<String, Vec<String>>>,
}

impl Default for RawClaims {
    fn default() -> Self {
        RawClaims { user: default_user_claim(), roles: default_roles_claim(), role_map: None }
    }
}

fn default_user_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}

/// Where and how often to fetch a JWKS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    /// Envoy cluster of the identity provider.
    pub cluster: String,
    /// Path of the JWKS on that cluster (e.g. `/realms/acme/protocol/openid-connect/certs`).
    pub path: String,
    /// `:authority` (Host) of the fetch. Defaults to the cluster name.
    pub authority: Option<String>,
    /// Refresh at least this often; a shorter `Cache-Control: max-age` wins.
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Never fetch more often than this, whatever unknown `kid`s or failures ask for.
    #[serde(default = "default_min_refetch_secs")]
    pub min_refetch_secs: u64,
    /// Timeout of one fetch.
    #[serde(default = "default_fetch_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_refresh_secs() -> u64 {
    300
}
fn default_min_refetch_secs() -> u64 {
    30
}
fn default_fetch_timeout_ms() -> u64 {
    2000
}

/// RFC 9728 protected resource metadata, served at
/// `/.well-known/oauth-protected-resource` and per server at
/// `/.well-known/oauth-protected-resource<path_prefix>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourceMetadata {
    /// Public base URL of the gateway (`https://mcp.example.com`). A server's resource
    /// identifier is this plus its `path_prefix`. Defaults to the request's scheme and
    /// Host.
    pub public_url: Option<String>,
    /// Authorization server issuer URLs clients should get tokens from.
    pub authorization_servers: Vec<String>,
    /// Scopes advertised in the metadata.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Scopes every token must carry; a token without one gets 403 `insufficient_scope`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Human-readable name of the resource.
    pub resource_name: Option<String>,
    /// URL of documentation for developers.
    pub resource_documentation: Option<String>,
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
    pub secret: Option<Secret>,
    /// Name of an environment variable (exposed to the VM through
    /// `vm_config.environment_variables`) holding the HMAC secret.
    pub secret_env: Option<String>,
    /// A public JWK (RFC 7517), inline; a symmetric one (`"kty":"oct"`) is a secret.
    pub jwk: Option<Secret<Value>>,
    /// Name of an environment variable holding a JWK as JSON.
    pub jwk_env: Option<String>,
}

/// Role definitions and policy-wide switches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRbac {
    pub roles: BTreeMap<String, RawRole>,
    /// Tool-name globs per operation (`read`, `write`, `delete`, `admin`), e.g.
    /// `{"read": ["get_*", "list_*"]}`. Tools matching none get their operation from the
    /// server's tool annotations (`readOnlyHint`, `destructiveHint`) once seen.
    #[serde(default)]
    pub operations: BTreeMap<String, Vec<String>>,
    /// Dry run of the whole policy: denials are audited as `would_deny` and the
    /// request goes through.
    #[serde(default)]
    pub shadow: bool,
    /// Answer calls to tools the caller may not use as calls to an unknown tool, and
    /// leave them out of `tools/list`, so policy does not reveal what exists.
    #[serde(default)]
    pub hide_denied_tools: bool,
}

/// What one role may do. All lists are globs (`*`, `?`, `[a-z]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    /// Server names this role may reach.
    pub servers: Vec<String>,
    /// MCP methods this role may send (`initialize`, `tools/*`...). Defaults to the
    /// methods of MCP's core features ([`DEFAULT_METHODS`]); what a method acts on is then
    /// limited by `tools`, `resources`, `prompts`. Methods outside the list (`tasks/*`,
    /// methods of later MCP versions) must be named.
    #[serde(default = "default_methods")]
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
    /// When set, the operations this role may perform with tools; a tool whose
    /// operation is unknown is then denied.
    pub operations: Option<Vec<String>>,
    /// Deny rules: they override every allow of every role the caller has.
    #[serde(default)]
    pub deny: RawDeny,
}

/// Globs that deny.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeny {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub prompts: Vec<String>,
}

/// The methods a role may send unless it names its own.
pub const DEFAULT_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "notifications/*",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
];

fn default_methods() -> Vec<String> {
    DEFAULT_METHODS.iter().map(|m| m.to_string()).collect()
}

/// A server's resource policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourcePolicy {
    /// Tool arguments that name resources: argument names (`file_path`) or JSON
    /// pointers (`/source/path`), or `{"argument": ..., "mode": ..., "optional": ...}`.
    /// `resources/read` URIs are always checked.
    #[serde(default)]
    pub arguments: Vec<RawSelector>,
    /// Compare resources and patterns case-insensitively (placeholder names in patterns
    /// are read as written: `{claims.orgId}` names the claim `orgId`).
    #[serde(default)]
    pub case_insensitive: bool,
    /// Ordered rules: the first whose pattern matches decides; none matching denies.
    pub rules: Vec<RawResourceRule>,
}

/// A tool argument that names a resource.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSelector {
    /// Shorthand: a required argument read literally.
    Argument(String),
    Spec(RawSelectorSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelectorSpec {
    /// Argument name or JSON pointer, as in the shorthand.
    pub argument: String,
    /// How the server reads the value: `literal` (a POSIX path: no percent-decoding,
    /// `\` is an ordinary byte; the default) or `uri` (alias `percent`: decoded). Every
    /// reading is checked either way; the mode says which one leads and whether bad
    /// percent-encoding is refused.
    #[serde(default)]
    pub mode: RawMode,
    /// Allow calls without this argument (by default they are denied).
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawMode {
    #[default]
    Literal,
    #[serde(alias = "percent")]
    Uri,
}

/// One resource rule. The caller passes when any of `roles`, `users`, `claim` holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourceRule {
    /// Glob on the normalized resource (`*` stays within a path segment, `**` spans
    /// segments); may use `{user_id}` and `{claims.<path>}`.
    pub pattern: String,
    /// Roles that pass (`*`: every authenticated caller).
    #[serde(default)]
    pub roles: Vec<String>,
    /// User ids that pass (`{user_id}` means the caller whose id fills the pattern).
    #[serde(default)]
    pub users: Vec<String>,
    /// A claim that must equal (or, as an array, contain) `value`.
    pub claim: Option<RawClaimCondition>,
    /// Dry run of this rule: a denial is audited as `would_deny` and let through.
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimCondition {
    /// Dotted claim path (`repos`, `org.teams`).
    pub name: String,
    /// Value to find; may use `{resource}`, `{user_id}`, `{claims.<path>}`.
    pub value: String,
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
    /// Records also go, in batches, to the sidecar's ingest route.
    #[serde(default)]
    pub sidecar: Option<RawAuditSidecar>,
    /// How much of a reply is read for its outcome; a reply that has not answered within
    /// it is recorded as outcome `unknown` (it still reaches the client whole).
    #[serde(default = "default_reply_read_bytes")]
    pub reply_read_bytes: usize,
    /// A record whose JSON would be longer loses its arguments, then has its other long
    /// fields cut.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            redact_fields: default_redact_fields(),
            max_string_bytes: default_max_string_bytes(),
            sidecar: None,
            reply_read_bytes: default_reply_read_bytes(),
            max_record_bytes: default_max_record_bytes(),
        }
    }
}

/// Where and how audit records are sent to the sidecar.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuditSidecar {
    /// The Envoy cluster of the sidecar.
    pub cluster: String,
    #[serde(default = "default_ingest_path")]
    pub path: String,
    #[serde(default = "default_sidecar_authority")]
    pub authority: String,
    /// Environment variable (in the VM) holding the secret the sidecar requires.
    pub secret_env: String,
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    #[serde(default = "default_max_buffered")]
    pub max_buffered: usize,
    #[serde(default = "default_sidecar_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_ingest_path() -> String {
    "/ingest".to_owned()
}
fn default_sidecar_authority() -> String {
    "mcpgw-sidecar".to_owned()
}
fn default_batch_records() -> usize {
    // Each batch costs Envoy an HTTP call: in `make bench`, batches of 100 added about
    // 17 µs of Envoy CPU per request, batches of 500 about 1 µs (within noise).
    500
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_max_buffered() -> usize {
    10_000
}
fn default_sidecar_timeout_ms() -> u64 {
    5000
}

/// Compiled [`RawAuditSidecar`]. `Debug` does not print the secret.
#[derive(Clone)]
pub struct AuditSidecar {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub secret: String,
    pub batch_records: usize,
    pub flush: Duration,
    pub max_buffered: usize,
    pub timeout: Duration,
}

impl std::fmt::Debug for AuditSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSidecar")
            .field("cluster", &self.cluster)
            .field("path", &self.path)
            .field("batch_records", &self.batch_records)
            .finish_non_exhaustive()
    }
}

impl RawAuditSidecar {
    fn compile(self, env: &dyn Fn(&str) -> Option<String>) -> Result<AuditSidecar, ConfigError> {
        if self.cluster.is_empty() {
            return Err(err("cluster", "must name the sidecar's Envoy cluster"));
        }
        if !self.path.starts_with('/') {
            return Err(err("path", "must start with /"));
        }
        let secret = env(&self.secret_env).ok_or_else(|| {
            err("secret_env", format!("environment variable {:?} is not set in the VM", self.secret_env))
        })?;
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err("secret_env", "the secret must be at least 16 printable ASCII characters"));
        }
        if !(1..=1000).contains(&self.batch_records) {
            return Err(err("batch_records", "must be between 1 and 1000"));
        }
        if !(10..=60_000).contains(&self.flush_ms) {
            return Err(err("flush_ms", "must be between 10 and 60000"));
        }
        if !(self.batch_records..=1_000_000).contains(&self.max_buffered) {
            return Err(err("max_buffered", "must be between batch_records and 1000000"));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err(err("timeout_ms", "must be between 100 and 60000"));
        }
        Ok(AuditSidecar {
            cluster: self.cluster,
            path: self.path,
            authority: self.authority,
            secret,
            batch_records: self.batch_records,
            flush: Duration::from_millis(self.flush_ms),
            max_buffered: self.max_buffered,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

fn default_redact_fields() -> Vec<String> {
    DEFAULT_REDACT_FIELDS.iter().map(|s| s.to_string()).collect()
}
fn default_max_string_bytes() -> usize {
    256
}
fn default_reply_read_bytes() -> usize {
    1024 * 1024
}
fn default_max_record_bytes() -> usize {
    16 * 1024
}

/// A value that must never be printed: `Debug` shows `[redacted]`. Raw fields holding
/// credentials or key material deserialize straight into it, so neither the raw nor the
/// compiled configuration can print them.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What credential an upstream server receives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UpstreamAuth {
    /// Nothing: the client's token is removed (the default).
    #[default]
    None,
    /// The client's `Authorization` header, unchanged.
    ForwardClientToken,
    /// A header with a configured value.
    Inject { header: String, value: Secret },
}

/// An MCP server, compiled.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub path_prefix: String,
    /// Every path prefix that reaches it: `path_prefix`, then for an MCP server the seed's
    /// form `/proxy/{name}/mcp`. No two servers' prefixes overlap.
    pub prefixes: Vec<String>,
    pub upstream_auth: UpstreamAuth,
    pub kind: ServerKind,
    pub regions: crate::region::ServerRegions,
    /// For a federated server, its members.
    pub federation: Option<crate::federation::Federation>,
}

/// The validated configuration the filter runs on.
#[derive(Debug)]
pub struct Config {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub servers: Vec<Server>,
    pub verifier: Verifier,
    /// How long a request may wait for keys.
    pub key_wait: Duration,
    pub cache_entries: usize,
    pub policy: Policy,
    pub redactor: Redactor,
    pub resource_metadata: Option<ResourceMetadata>,
    /// Resource-level policies by server name.
    pub resource_policies: BTreeMap<String, ResourcePolicy>,
    /// Idle time after which a session's owner is forgotten, in milliseconds.
    pub session_idle_ms: u64,
    /// Session ids bound to their caller (`session_binding_key_env`).
    pub session_binding: Option<crate::session::Binding>,
    /// Where audit records are sent besides Envoy's log.
    pub audit_sidecar: Option<AuditSidecar>,
    /// See [`RawAudit::reply_read_bytes`].
    pub reply_read_bytes: usize,
    /// See [`RawAudit::max_record_bytes`].
    pub max_record_bytes: usize,
    /// Where callers are placed (`regions`).
    pub regions: Option<crate::region::Regions>,
    /// Delegations for federated servers (with any such server; keyed by the sidecar's
    /// secret).
    pub delegation: Option<crate::delegation::Delegation>,
}

impl Config {
    /// Parses and compiles plugin configuration JSON. `env` looks up environment
    /// variables named by `*_env` fields.
    pub fn from_json(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(if path == "." { "$".into() } else { path }, e.into_inner().to_string())
        })?;
        raw.compile(env)
    }

    /// The server a request path is for.
    pub fn server_for(&self, path: &str) -> Option<&Server> {
        self.route(path).map(|(server, _)| server)
    }

    /// The server a request path is for, and the prefix of its that the path used. At
    /// most one matches: prefixes never overlap (checked when compiling).
    pub fn route(&self, path: &str) -> Option<(&Server, &str)> {
        let path = path.split('?').next().unwrap_or_default();
        self.servers.iter().find_map(|s| s.prefixes.iter().find(|p| under(path, p)).map(|p| (s, p.as_str())))
    }
}

/// `path` is `prefix` or below it (the next character is `/`), as Envoy's
/// `path_separated_prefix` matches.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The seed's path form for an MCP server: `/proxy/{name}/mcp`.
pub fn proxy_path(name: &str) -> String {
    format!("/proxy/{name}/mcp")
}

impl RawConfig {
    pub fn compile(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(err("max_body_bytes", "must be greater than 0"));
        }
        if !(1..=128).contains(&self.max_json_depth) {
            return Err(err("max_json_depth", format!("must be between 1 and 128, got {}", self.max_json_depth)));
        }
        let regions = self
            .regions
            .map(|raw| crate::region::Regions::compile(raw).map_err(|e| e.within("regions")))
            .transpose()?;
        let servers = compile_servers(self.servers, env, regions.as_ref())?;
        let names: HashSet<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        let key_wait = Duration::from_millis(self.jwt.key_wait_ms);
        let cache_entries = self.jwt.cache_entries;
        let verifier = Verifier::compile(self.jwt, env).map_err(|e| e.within("jwt"))?;
        let policy = Policy::compile(self.rbac, &names).map_err(|e| e.within("rbac"))?;
        let resource_policies = self
            .resource_policies
            .into_iter()
            .map(|(server, raw)| {
                let at = format!("resource_policies.{server}");
                if !names.contains(server.as_str()) {
                    return Err(err(at, format!("unknown server {server:?}")));
                }
                let policy = ResourcePolicy::try_from(raw).map_err(|e| e.within(&at))?;
                Ok((server, policy))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let resource_metadata = self
            .resource_metadata
            .map(|raw| ResourceMetadata::try_from(raw).map_err(|e| e.within("resource_metadata")))
            .transpose()?;
        if !(60..=30 * 24 * 3600).contains(&self.session_idle_secs) {
            return Err(err("session_idle_secs", "must be between 60 and 2592000 (30 days)"));
        }
        let mut audit = self.audit;
        let audit_sidecar =
            audit.sidecar.take().map(|raw| raw.compile(env).map_err(|e| e.within("audit.sidecar"))).transpose()?;
        let mut servers = servers;
        for (i, server) in servers.iter_mut().enumerate().filter(|(_, s)| s.kind.is_sidecar()) {
            let Some(sidecar) = &audit_sidecar else {
                return Err(err(format!("servers[{i}].kind"), "a sidecar server needs audit.sidecar (for its secret)"));
            };
            server.upstream_auth = UpstreamAuth::Inject {
                header: crate::headers::SIDECAR_SECRET.to_owned(),
                value: Secret(sidecar.secret.clone()),
            };
        }
        if audit.max_record_bytes < 1024 {
            return Err(err("audit.max_record_bytes", "must be at least 1024"));
        }
        let session_binding = match &self.session_binding_key_env {
            None => None,
            Some(name) => {
                let Some(key) = env(name) else {
                    return Err(err("session_binding_key_env", format!("environment variable {name} is not set")));
                };
                let Some(binding) = crate::session::Binding::new(key.as_bytes()) else {
                    return Err(err("session_binding_key_env", format!("{name} must hold at least 32 bytes")));
                };
                Some(binding)
            }
        };
        let delegation = match &audit_sidecar {
            Some(sidecar) if servers.iter().any(|s| s.kind == ServerKind::Federation) => Some(
                crate::delegation::Delegation::from_secret(&sidecar.secret)
                    .ok_or_else(|| err("audit.sidecar.secret_env", "the secret cannot key delegations"))?,
            ),
            _ => None,
        };
        Ok(Config {
            delegation,
            audit_sidecar,
            reply_read_bytes: audit.reply_read_bytes,
            max_record_bytes: audit.max_record_bytes,
            max_body_bytes: self.max_body_bytes,
            max_json_depth: self.max_json_depth,
            servers,
            verifier,
            key_wait,
            cache_entries,
            policy,
            redactor: Redactor::from(audit),
            resource_metadata,
            resource_policies,
            session_idle_ms: time::millis(Duration::from_secs(self.session_idle_secs)),
            session_binding,
            regions,
        })
    }
}

fn compile_servers(
    raw: Vec<RawServer>,
    env: &dyn Fn(&str) -> Option<String>,
    regions: Option<&crate::region::Regions>,
) -> Result<Vec<Server>, ConfigError> {
    if raw.is_empty() {
        return Err(err("servers", "at least one server is required"));
    }
    let mut seen_names = HashSet::new();
    // Every prefix so far, with the server it reaches: a path must reach one server only,
    // so neither may be the other or below it.
    let mut taken: Vec<(String, String)> = Vec::new();
    // Members of federated servers are MCP servers; they may come after the federation.
    let mcp_names: Vec<String> = raw.iter().filter(|s| s.kind == ServerKind::Mcp).map(|s| s.name.clone()).collect();
    let mcp_names: Vec<&str> = mcp_names.iter().map(String::as_str).collect();
    raw.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let at = |f: &str| format!("servers[{i}].{f}");
            let valid_name = !s.name.is_empty()
                && s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(err(at("name"), format!("{:?} must be non-empty [A-Za-z0-9_-]", s.name)));
            }
            if !s.path_prefix.starts_with('/')
                || s.path_prefix.ends_with('/')
                || s.path_prefix.contains(['?', '#', '%', '\\'])
                || s.path_prefix.starts_with("/.well-known")
            {
                return Err(err(
                    at("path_prefix"),
                    format!(
                        "{:?} must start with '/', not end with '/', hold no '?', '#', '%' or '\\', and not be under /.well-known",
                        s.path_prefix
                    ),
                ));
            }
            if !seen_names.insert(s.name.clone()) {
                return Err(err(at("name"), format!("duplicate server name {:?}", s.name)));
            }
            let mut prefixes = vec![s.path_prefix.clone()];
            if s.kind != ServerKind::Sidecar {
                prefixes.push(proxy_path(&s.name));
            }
            for prefix in &prefixes {
                if let Some((other, name)) = taken.iter().find(|(t, _)| under(prefix, t) || under(t, prefix)) {
                    let what = if other == prefix { "is also" } else { "overlaps" };
                    return Err(err(
                        at("path_prefix"),
                        format!(
                            "{prefix:?} (server {:?}) {what} {other:?} (server {name:?}): every path must reach one server",
                            s.name
                        ),
                    ));
                }
            }
            taken.extend(prefixes.iter().map(|p| (p.clone(), s.name.clone())));
            let upstream_auth =
                UpstreamAuth::compile(s.upstream_auth, env).map_err(|e| e.within(&at("upstream_auth")))?;
            if s.kind.is_sidecar() && upstream_auth != UpstreamAuth::None {
                return Err(err(at("upstream_auth"), "a sidecar server gets the sidecar's secret, nothing else"));
            }
            let placed = crate::region::ServerRegions::compile(s.region, s.regional_clusters, s.residency_clusters, regions)
                .map_err(|e| e.within(&format!("servers[{i}]")))?;
            if s.kind.is_sidecar() && placed != crate::region::ServerRegions::Unplaced {
                return Err(err(at("region"), "the sidecar's routes are the gateway's own: they have no region"));
            }
            let federation = match (s.kind, s.federation) {
                (ServerKind::Federation, Some(raw)) => Some(
                    crate::federation::Federation::compile(raw, &s.name, &mcp_names)
                        .map_err(|e| e.within(&at("federation")))?,
                ),
                (ServerKind::Federation, None) => {
                    return Err(err(at("federation"), "a federation server names its members here"))
                }
                (_, Some(_)) => return Err(err(at("federation"), "only for kind federation")),
                (_, None) => None,
            };
            Ok(Server {
                name: s.name,
                path_prefix: s.path_prefix,
                prefixes,
                upstream_auth,
                kind: s.kind,
                regions: placed,
                federation,
            })
        })
        .collect()
}

impl UpstreamAuth {
    /// Compiles a server's `upstream_auth` (error fields are relative to it).
    fn compile(raw: RawUpstreamAuth, env: &dyn Fn(&str) -> Option<String>) -> Result<UpstreamAuth, ConfigError> {
        let value = match (raw.value, &raw.value_env) {
            (Some(_), Some(_)) => return Err(err("value", "give value or value_env, not both")),
            (Some(v), None) => Some(v),
            (None, Some(var)) => Some(Secret(
                env(var)
                    .ok_or_else(|| err("value_env", format!("environment variable {var:?} is not set in the VM")))?,
            )),
            (None, None) => None,
        };
        match (raw.forward_client_token, raw.header, value) {
            (false, None, None) => Ok(UpstreamAuth::None),
            (true, None, None) => Ok(UpstreamAuth::ForwardClientToken),
            (false, Some(header), Some(value)) => {
                let header = header.to_ascii_lowercase();
                let valid = !header.is_empty()
                    && header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !crate::headers::is_spoofable(&header);
                if !valid {
                    return Err(err("header", format!("{header:?} is not a header name the gateway may set")));
                }
                if value.expose().bytes().any(|b| !(0x20..0x7f).contains(&b)) {
                    return Err(err("value", "must be printable ASCII"));
                }
                Ok(UpstreamAuth::Inject { header, value })
            }
            (true, _, _) => Err(err("forward_client_token", "cannot be combined with header/value")),
            (false, Some(_), None) => Err(err("value", "header needs value or value_env")),
            (false, None, Some(_)) => Err(err("header", "value needs a header name")),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::jwt::Alg;
    use serde_json::json;

    pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// A small valid configuration, for tests to break one field of.
    pub(crate) fn base() -> Value {
        json!({
            "servers": [{"name": "github", "path_prefix": "/mcp/github"}, {"name": "filesystem", "path_prefix": "/mcp/filesystem"}],
            "jwt": {"providers": [{"name": "p", "issuer": "i", "audiences": ["a"], "keys": [{"kid": "k", "alg": "HS256", "secret": SECRET}]}]},
            "rbac": {"roles": {"developer": {"servers": ["github"], "tools": ["get_*"]}}},
        })
    }

    pub(crate) fn compile(v: &Value) -> Result<Config, ConfigError> {
        Config::from_json(v.to_string().as_bytes(), &|_| None)
    }

    pub(crate) fn field_of(v: Value) -> String {
        compile(&v).unwrap_err().field
    }

    #[test]
    fn compiles_a_minimal_config_with_defaults() {
        let c = compile(&base()).unwrap();
        assert_eq!(c.max_body_bytes, 256 * 1024);
        assert_eq!(c.verifier.leeway_secs, 60);
        assert_eq!(c.key_wait, Duration::from_secs(3));
        // HS256 joins the default allow-list because a secret is configured.
        assert!(c.verifier.providers[0].algorithms.contains(&Alg::Hs256));
        assert!(c.verifier.providers[0].algorithms.contains(&Alg::Rs256));
        let methods = &c.policy.roles["developer"].methods;
        assert_eq!(methods.len(), DEFAULT_METHODS.len());
        assert!(methods.iter().any(|m| m.matches("notifications/initialized")));
        assert!(!methods.iter().any(|m| m.matches("tasks/get")), "an explicit list, not *");
    }

    #[test]
    fn the_audit_sidecar_and_its_routes_are_checked() {
        let env = |name: &str| (name == "SC").then(|| "a-secret-of-20-chars".to_owned());
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut v = base();
            v["servers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "audit", "path_prefix": "/audit", "kind": "sidecar"}));
            v["audit"] = json!({"sidecar": {"cluster": "sidecar", "secret_env": "SC"}});
            edit(&mut v);
            Config::from_json(v.to_string().as_bytes(), &env)
        };
        let c = with(&|_| {}).unwrap();
        let audit = c.servers.iter().find(|s| s.name == "audit").unwrap();
        assert!(matches!(&audit.upstream_auth, UpstreamAuth::Inject { header, value }
            if header == crate::headers::SIDECAR_SECRET && value.expose() == "a-secret-of-20-chars"));
        assert_eq!(c.audit_sidecar.as_ref().unwrap().batch_records, 500);
        assert!(!format!("{c:?}").contains("a-secret-of-20-chars"), "Debug must not print the secret");
        let field = |edit: &dyn Fn(&mut Value)| with(edit).unwrap_err().field;
        assert_eq!(field(&|v| v["audit"] = json!({})), "servers[2].kind");
        assert_eq!(
            field(&|v| v["servers"][2]["upstream_auth"] = json!({"forward_client_token": true})),
            "servers[2].upstream_auth"
        );
        assert_eq!(field(&|v| v["audit"]["sidecar"]["secret_env"] = json!("UNSET")), "audit.sidecar.secret_env");
        assert_eq!(field(&|v| v["audit"]["sidecar"]["batch_records"] = json!(0)), "audit.sidecar.batch_records");
        assert_eq!(field(&|v| v["audit"]["sidecar"]["max_buffered"] = json!(10)), "audit.sidecar.max_buffered");
        assert_eq!(field(&|v| v["audit"]["sidecar"]["path"] = json!("ingest")), "audit.sidecar.path");
        assert_eq!(field(&|v| v["servers"][2]["kind"] = json!("grpc")), "servers[2].kind");
    }

    #[test]
    fn region_fields_are_checked_where_they_sit() {
        let mut v = base();
        v["servers"][0]["region"] = json!("eu-west");
        assert_eq!(field_of(v.clone()), "servers[0].region", "a region needs the regions section");
        v["regions"] = json!({"names": ["eu-west"], "default": "eu-west"});
        assert!(compile(&v).is_ok());
        v["servers"][1]["regional_clusters"] = json!({"eu-west": "fs eu"});
        assert_eq!(field_of(v.clone()), "servers[1].regional_clusters.eu-west");
        v["regions"]["default"] = json!("us");
        assert_eq!(field_of(v), "regions.default");
    }

    #[test]
    fn errors_name_the_offending_field() {
        let mut v = base();
        v["jwt"]["providers"][0]["keys"][0]["alg"] = json!("none");
        assert_eq!(field_of(v), "jwt.providers[0].keys[0].alg");

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
        v["jwt"]["providers"][0]["keys"][0]["secret"] = json!("short");
        assert_eq!(field_of(v), "jwt.providers[0].keys[0].secret");

        let mut v = base();
        v["jwt"]["providers"][0]["audiences"] = json!([]);
        assert_eq!(field_of(v), "jwt.providers[0].audiences");
    }

    #[test]
    fn section_errors_are_named_from_the_root() {
        let e = err("keys[0].alg", "bad").within("providers[1]").within("jwt");
        assert_eq!((e.field.as_str(), e.message.as_str()), ("jwt.providers[1].keys[0].alg", "bad"));
        assert_eq!(err("[2]", "bad").within("tools").field, "tools[2]");
        assert_eq!(err("", "bad").within("arguments[0]").field, "arguments[0]");
    }

    #[test]
    fn unknown_and_mistyped_fields_are_errors_with_paths() {
        let mut v = base();
        v["jwt"]["providers"][0]["isuer"] = json!("typo");
        let e = compile(&v).unwrap_err();
        assert_eq!(e.field, "jwt.providers[0].isuer");
        assert!(e.message.contains("isuer"), "{e}");

        let mut v = base();
        v["max_body_bytes"] = json!("big");
        assert_eq!(field_of(v), "max_body_bytes");

        let e = Config::from_json(b"{not json", &|_| None).unwrap_err();
        assert!(e.to_string().contains("invalid plugin configuration"));
    }

    #[test]
    fn remote_jwks_and_resource_metadata_compile() {
        let mut v = base();
        v["jwt"]["providers"][0]["keys"] = json!([]);
        v["jwt"]["providers"][0]["jwks"] = json!({"cluster": "idp", "path": "/certs"});
        v["resource_metadata"] = json!({"authorization_servers": ["https://idp"], "required_scopes": ["mcp"]});
        let c = compile(&v).unwrap();
        let jwks = c.verifier.providers[0].jwks.as_ref().unwrap();
        assert_eq!((jwks.authority.as_str(), jwks.refresh.as_secs()), ("idp", 300));
        assert_eq!(c.resource_metadata.unwrap().required_scopes, vec!["mcp"]);

        v["jwt"]["providers"][0]["jwks"]["path"] = json!("certs");
        assert_eq!(field_of(v.clone()), "jwt.providers[0].jwks.path");
        v["jwt"]["providers"][0]["jwks"] = Value::Null;
        assert_eq!(field_of(v), "jwt.providers[0].keys");
    }

    #[test]
    fn upstream_credentials_are_validated_and_never_printed() {
        let mut v = base();
        v["servers"][0]["upstream_auth"] = json!({"header": "Authorization", "value_env": "GH_PAT"});
        let env = |name: &str| (name == "GH_PAT").then(|| "ghp_supersecret".to_owned());
        let c = Config::from_json(v.to_string().as_bytes(), &env).unwrap();
        assert!(
            matches!(&c.servers[0].upstream_auth, UpstreamAuth::Inject { header, .. } if header == "authorization")
        );
        assert!(!format!("{c:?}").contains("ghp_supersecret"));

        v["servers"][0]["upstream_auth"] = json!({"header": "x-mcp-user-id", "value": "x"});
        assert_eq!(field_of(v.clone()), "servers[0].upstream_auth.header");
        v["servers"][0]["upstream_auth"] = json!({"forward_client_token": true, "header": "a", "value": "b"});
        assert_eq!(field_of(v), "servers[0].upstream_auth.forward_client_token");
    }

    #[test]
    fn raw_configuration_debug_never_shows_secrets() {
        let hmac = "inline-hmac-secret-0123456789abcdef";
        let oct = "b2N0LWp3ay1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZiE";
        let inline_doc = "aW5saW5lLWp3a3Mtc2VjcmV0LTAxMjM0NTY3ODlhYiE";
        let upstream = "ghp_raw-upstream-credential";
        let mut v = base();
        v["jwt"]["providers"][0]["keys"] = json!([
            {"kid": "plain", "alg": "HS256", "secret": hmac},
            {"kid": "as-jwk", "alg": "HS256", "jwk": {"kty": "oct", "k": oct}},
        ]);
        v["jwt"]["providers"][0]["jwks_inline"] = json!({"keys": [{"kty": "oct", "k": inline_doc},
            {"kty": "EC", "crv": "P-256", "x": "lIVJwqNELuRbCGOV8X8PuX5lK0N2HgUQfUoBHChYo9Q",
             "y": "XK1Zown3qyfKHp-qNqCiXFW6K883AKFMzW4TfILUqyA"}]});
        v["servers"][0]["upstream_auth"] = json!({"header": "authorization", "value": upstream});
        let raw: RawConfig = serde_json::from_value(v.clone()).unwrap();
        let printed = format!("{raw:?}");
        for secret in [hmac, oct, inline_doc, upstream] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("as-jwk") && printed.contains("[redacted]"), "{printed}");
        // The secrets still reach the compiled configuration, which does not print them either.
        let compiled = compile(&v).unwrap();
        assert!(
            matches!(&compiled.servers[0].upstream_auth, UpstreamAuth::Inject { value, .. } if value.expose() == upstream)
        );
        let printed = format!("{compiled:?}");
        for secret in [hmac, oct, inline_doc, upstream] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
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
        // The seed's form reaches the same servers.
        assert_eq!(name("/proxy/github/mcp"), Some("github".into()));
        assert_eq!(name("/proxy/github/mcp?x=1"), Some("github".into()));
        assert_eq!(name("/proxy/filesystem/mcp/x"), Some("filesystem".into()));
        assert_eq!(name("/proxy/github/mcpx"), None);
        assert_eq!(name("/proxy/github"), None);
        assert_eq!(name("/proxy/gitlab/mcp"), None);
        assert_eq!(c.route("/proxy/github/mcp").map(|(_, p)| p), Some("/proxy/github/mcp"));
        assert_eq!(c.route("/mcp/github/x").map(|(_, p)| p), Some("/mcp/github"));
    }

    #[test]
    fn prefixes_that_overlap_are_refused() {
        // Two more servers beside the base's github (/mcp/github) and filesystem.
        let refused = |prefixes: &[(&str, &str)]| {
            let mut v = base();
            for (name, prefix) in prefixes {
                v["servers"].as_array_mut().unwrap().push(json!({"name": name, "path_prefix": prefix}));
            }
            compile(&v).map(|_| ()).map_err(|e| e.to_string())
        };
        for (overlapping, at) in [
            ([("a", "/t"), ("b", "/t/b")], "servers[3]"),
            ([("a", "/t/b/c"), ("b", "/t/b")], "servers[3]"),
            ([("a", "/t"), ("b", "/t")], "servers[3]"),
            ([("a", "/mcp"), ("b", "/t/b")], "servers[2]"),
            // A prefix on another server's seed form, either way round.
            ([("a", "/proxy/b/mcp"), ("b", "/t/b")], "servers[3]"),
            ([("a", "/proxy"), ("b", "/t/b")], "servers[2]"),
        ] {
            let e = refused(&overlapping).unwrap_err();
            assert!(e.contains(&format!("{at}.path_prefix")) && e.contains("one server"), "{overlapping:?}: {e}");
        }
        assert_eq!(refused(&[("a", "/t/git"), ("b", "/t/github")]), Ok(()), "/t/github is not below /t/git");
    }
}
