//! `mcpgw`: the operator's CLI for the MCP gateway (dev keys, tokens, demo servers, explain).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use mcp_gateway::audit::Outcome;
use mcp_gateway::listing::ListKind;
use mcpgw::explain::{self, Explanation};
use mcpgw::token::{self, TokenRequest};
use mcpgw::{RunningServer, ServerKind};
use serde_json::{Map, Value};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "mcpgw", version, about = "Operator CLI for the MCP gateway for Envoy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a development ES256 key pair (kept if it already exists).
    ///
    /// Writes <dir>/signing-key.jwk (private, mode 0600) and <dir>/public-key.jwk (the key the
    /// gateway verifies tokens with).
    Keygen {
        /// Directory for the key files.
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
    },
    /// Mint a signed bearer token (ES256) and print it on stdout.
    Token(TokenArgs),
    /// Call one tool on an MCP server (through the gateway) and print the result.
    ///
    /// Performs the MCP handshake over Streamable HTTP, sending the token as
    /// `Authorization: Bearer`, then `tools/call`. Exits 1 when the call is refused or the
    /// tool reports an error.
    Call {
        /// Bearer token (for example from `mcpgw token`).
        #[arg(long, env = "MCPGW_TOKEN")]
        token: Option<String>,
        /// MCP endpoint, e.g. http://127.0.0.1:10000/mcp/github
        url: String,
        /// Tool name.
        tool: String,
        /// Tool arguments as a JSON object.
        #[arg(default_value = "{}")]
        arguments: String,
    },
    /// Run the demo MCP servers (filesystem and github) until Ctrl-C or SIGTERM.
    Demo {
        /// Address of the filesystem server (Streamable HTTP at /mcp).
        #[arg(long, default_value = "127.0.0.1:10001")]
        filesystem: SocketAddr,
        /// Address of a github server replica (Streamable HTTP at /mcp); repeat for more
        /// replicas (each keeps its own issues, as replicas without a shared store do).
        #[arg(long, default_value = "127.0.0.1:10002")]
        github: Vec<SocketAddr>,
        /// Directory the filesystem server serves; created with sample files if missing.
        #[arg(long, default_value = ".dev/sandbox")]
        sandbox: PathBuf,
    },
    /// Explain why the gateway allows or denies a request (offline, with the filter's own code).
    ///
    /// Runs the filter's decision code on its configuration for one identity, server and
    /// (optionally) MCP message, and prints the decision with the rule that allowed it or the
    /// reason it was denied, what the client receives, and what each of the caller's roles
    /// allows. With --tools-list it also says which items of a list reply the caller sees.
    ///
    /// Exit status: 0 allowed (or would_deny in shadow mode), 1 denied, 2 bad input
    /// (configuration, token, claims, request, list reply).
    #[command(after_long_help = EXPLAIN_EXAMPLES)]
    Explain(ExplainArgs),
    /// Run the sidecar: audit ingest from the filter, the audit store, /audit, /metrics.
    ///
    /// Listens on loopback; every request must carry the secret the filter adds
    /// (x-mcp-sidecar-secret), or it gets 401.
    Sidecar(SidecarArgs),
    /// Check or search the sidecar's audit database.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Args)]
struct SidecarArgs {
    /// Where to listen: a loopback address, or `unix:PATH` for a Unix socket (made
    /// owner-only; a stale socket file at PATH is replaced, a live one refused).
    #[arg(long, default_value = "127.0.0.1:10100", value_parser = parse_listen)]
    listen: Listen,
    /// The audit database (SQLite), created if missing.
    #[arg(long, default_value = ".dev/audit.db")]
    db: PathBuf,
    /// The Ed25519 key that signs checkpoints (hex seed), created with <key>.pub if missing.
    /// Keep it where those who can write the database cannot read it.
    #[arg(long, default_value = ".dev/audit-checkpoint.key")]
    checkpoint_key: PathBuf,
    /// Environment variable holding the secret shared with the filter (at least 16 bytes).
    #[arg(long, default_value = "MCPGW_SIDECAR_SECRET")]
    secret_env: String,
    /// Sign a checkpoint once this many records are unsigned.
    #[arg(long, default_value_t = 1000)]
    checkpoint_records: u64,
    /// Sign a checkpoint this often (seconds) when any record is unsigned.
    #[arg(long, default_value_t = 10)]
    checkpoint_secs: u64,
    /// Delete records older than this many seconds (in whole signed spans).
    #[arg(long)]
    max_age_secs: Option<u64>,
    /// Keep at most about this many records (in whole signed spans).
    #[arg(long)]
    max_records: Option<u64>,
    /// Roles whose /events subscribers see every record (comma-separated); others see
    /// only their own.
    #[arg(long, default_value = "admin", value_delimiter = ',')]
    audit_roles: Vec<String>,
    /// Seconds between /events heartbeats.
    #[arg(long, default_value_t = 15)]
    heartbeat_secs: u64,
    /// Events an /events subscriber's connection may leave unsent; one more and it gets
    /// `lagged` and is closed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    subscriber_queue: u32,
    /// The gateway's configuration (Envoy YAML holding the filter's, or the filter's JSON):
    /// its federated servers (`kind: federation`) are served here. Its `*_env` fields are
    /// read from this process's environment.
    #[arg(long, requires = "gateway_url")]
    gateway_config: Option<PathBuf>,
    /// Where federated servers reach their members: the gateway's listener
    /// (`http://127.0.0.1:10000`), so each dispatched call is decided by the filter.
    #[arg(long, requires = "gateway_config")]
    gateway_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; name the first bad record.
    ///
    /// Exit status: 0 the trail verifies, 1 it does not (the first bad record or checkpoint
    /// is named), 2 the database or key cannot be read.
    Verify {
        /// The audit database.
        #[arg(long, default_value = ".dev/audit.db")]
        db: PathBuf,
        /// The checkpoint key's public half, in hex (the `.pub` file the sidecar writes
        /// beside its key).
        #[arg(long, default_value = ".dev/audit-checkpoint.key.pub")]
        public_key: PathBuf,
    },
    /// Print matching records as JSON, newest first.
    Query {
        #[arg(long, default_value = ".dev/audit.db")]
        db: PathBuf,
        #[command(flatten)]
        filters: AuditFilters,
    },
}

/// The filters `/audit` takes too.
#[derive(Debug, Args)]
struct AuditFilters {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    server: Option<String>,
    /// JSON-RPC method, e.g. tools/call.
    #[arg(long)]
    method: Option<String>,
    /// Tool name (tools/call records for it).
    #[arg(long)]
    tool: Option<String>,
    /// allow, deny or would_deny.
    #[arg(long)]
    decision: Option<String>,
    /// RFC 3339 time, inclusive.
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339 time, exclusive.
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// The `next_cursor` of the previous page.
    #[arg(long)]
    cursor: Option<u64>,
}

const EXPLAIN_EXAMPLES: &str = "\
Examples:
  # May a readonly user create an issue on the demo's github server?
  mcpgw explain --config envoy/demo.yaml --env MCPGW_DEMO_JWK=\"$(cat .dev/public-key.jwk)\" \\
    --claims '{\"iss\":\"mcpgw-demo\",\"sub\":\"bob\",\"roles\":[\"readonly\"]}' \\
    --path /mcp/github \\
    --request '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"create_issue\"}}'

  # Which tools of this tools/list reply does the token's holder see?
  mcpgw explain --config gateway.json --token \"$TOKEN\" --server github --tools-list reply.sse --json";

/// Inputs of `mcpgw explain`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("identity").required(true).args(["token", "claims"])))]
#[command(group(ArgGroup::new("target").required(true).args(["server", "path"])))]
struct ExplainArgs {
    /// Plugin configuration: its JSON, or an Envoy YAML configuration whose
    /// `envoy.filters.http.wasm` filter with `config.name: mcp_gateway` holds it (as
    /// `configuration.value`), such as envoy/demo.yaml.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Environment variable for `*_env` configuration fields (`jwk_env`, `secret_env`,
    /// `value_env`), overriding this process's environment; repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Bearer token of the caller, verified as the gateway does (signature, issuer,
    /// audience, expiry, now). Providers whose keys come from a JWKS fetch cannot verify
    /// offline: use --claims for them.
    #[arg(long, value_name = "JWT")]
    token: Option<String>,
    /// The caller's token claims (unverified), as JSON or @FILE; mapped to user and roles by
    /// the claim mapping of the provider whose issuer is their `iss`.
    #[arg(long, value_name = "JSON|@FILE")]
    claims: Option<String>,
    /// Provider whose claim mapping reads --claims (default: by `iss`, or the only one).
    #[arg(long, value_name = "NAME", requires = "claims")]
    provider: Option<String>,
    /// Server name, as in the configuration's `servers[].name`.
    #[arg(long, value_name = "NAME")]
    server: Option<String>,
    /// Request path (e.g. /mcp/github); the server is the one whose `path_prefix` it falls under.
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// One MCP JSON-RPC message, as JSON, @FILE, or - for standard input. Without it only
    /// server access is checked (as for GET and DELETE requests).
    #[arg(long, value_name = "JSON|@FILE|-")]
    request: Option<String>,
    /// A list reply as the server sends it (JSON or SSE body): prints which items the caller
    /// sees and which the gateway removes. Tool annotations in a tools/list reply are learned
    /// first (read, write, delete operations), as the gateway does.
    #[arg(long, value_name = "FILE")]
    tools_list: Option<PathBuf>,
    /// What the --tools-list reply lists.
    #[arg(long, value_name = "KIND", value_enum, default_value_t = ListArg::Tools, requires = "tools_list")]
    list_kind: ListArg,
    /// Content type of the --tools-list reply (default: application/json when it starts with
    /// `{`, else text/event-stream).
    #[arg(long, value_name = "TYPE", requires = "tools_list")]
    content_type: Option<String>,
    /// Print one JSON object (decision, rule or reason, user_id, roles, server, visible,
    /// hidden, ...) instead of text.
    #[arg(long)]
    json: bool,
}

/// The list a --tools-list reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ListArg {
    /// tools/list
    Tools,
    /// prompts/list
    Prompts,
    /// resources/list
    Resources,
    /// resources/templates/list
    ResourceTemplates,
}

impl From<ListArg> for ListKind {
    fn from(arg: ListArg) -> ListKind {
        match arg {
            ListArg::Tools => ListKind::Tools,
            ListArg::Prompts => ListKind::Prompts,
            ListArg::Resources => ListKind::Resources,
            ListArg::ResourceTemplates => ListKind::ResourceTemplates,
        }
    }
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// Subject (`sub`): the user the token speaks for.
    #[arg(long)]
    sub: String,
    /// Roles (`roles` claim); repeat the flag or separate with commas.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Issuer (`iss`).
    #[arg(long, default_value = token::DEFAULT_ISSUER)]
    iss: String,
    /// Audience (`aud`).
    #[arg(long, default_value = token::DEFAULT_AUDIENCE)]
    aud: String,
    /// Lifetime in seconds (`exp` = `iat` + ttl).
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// Private key made by `mcpgw keygen`.
    #[arg(long, default_value = ".dev/signing-key.jwk")]
    key: PathBuf,
    /// Extra claim as name=value; the value is read as JSON when it parses (numbers, arrays,
    /// objects), else as a string. Replaces a standard claim of the same name.
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = parse_claim)]
    claims: Vec<(String, Value)>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` prints the context chain on one line, without a backtrace.
            eprintln!("mcpgw: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `mcpgw sidecar --listen`.
#[derive(Debug, Clone)]
enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path".to_owned());
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    let addr: SocketAddr = s.parse().map_err(|e| format!("{e}: expected IP:PORT or unix:PATH"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("the sidecar listens on loopback only (got {addr})"));
    }
    Ok(Listen::Tcp(addr))
}

/// Binds a Unix socket at `path`, owner-only. A socket file nobody answers on is a
/// leftover and replaced; anything else at `path` is an error.
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("--listen: {} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("--listen: another process listens on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", path.display()))?;
    Ok(listener)
}

async fn sidecar(args: SidecarArgs) -> anyhow::Result<()> {
    use mcpgw::audit_store::Retention;
    use mcpgw::sidecar::{Config, Sidecar};
    let secret = std::env::var(&args.secret_env)
        .with_context(|| format!("--secret-env: environment variable {} is not set", args.secret_env))?;
    let secs = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let config = Config {
        checkpoint_records: args.checkpoint_records.max(1),
        checkpoint_every: Duration::from_secs(args.checkpoint_secs.max(1)),
        retention: Retention { max_age_ms: args.max_age_secs.map(secs), max_records: args.max_records },
        audit_roles: args.audit_roles,
        heartbeat: Duration::from_secs(args.heartbeat_secs.max(1)),
        subscriber_queue: args.subscriber_queue as usize,
        ..Config::new(args.db, args.checkpoint_key, secret)
    };
    let mut config = config;
    if let (Some(path), Some(url)) = (&args.gateway_config, &args.gateway_url) {
        let text = std::fs::read_to_string(path).with_context(|| format!("--gateway-config {}", path.display()))?;
        let gateway = mcpgw::explain::load_config(&text, &|name| std::env::var(name).ok())
            .map_err(|e| anyhow::anyhow!("--gateway-config {}: {e}", path.display()))?;
        config.federation = mcpgw::sidecar::federation::virtual_servers(&gateway, url);
        for v in &config.federation {
            eprintln!(
                "mcpgw sidecar: federated server {} at {} over {}",
                v.name,
                v.path,
                v.federation.members.join(", ")
            );
        }
    }
    let sidecar = Sidecar::open(config)?;
    let listener: mcpgw::sidecar::Listener = match &args.listen {
        Listen::Tcp(addr) => TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?.into(),
        Listen::Unix(path) => bind_unix(path)?.into(),
    };
    eprintln!("mcpgw sidecar: listening on {}", args.listen);
    let served = mcpgw::sidecar::run(listener, sidecar, async {
        if let Err(e) = wait_for_stop_signal().await {
            // Without signals it runs until killed, rather than stopping now.
            eprintln!("mcpgw sidecar: cannot wait for signals: {e:#}");
            std::future::pending::<()>().await;
        }
    })
    .await;
    if let Listen::Unix(path) = &args.listen {
        let _ = std::fs::remove_file(path);
    }
    served
}

fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    use mcpgw::audit_store::{self, AuditStore as _, SqliteStore};
    match command {
        AuditCommand::Verify { db, public_key } => {
            let checked = (|| {
                let text = std::fs::read_to_string(&public_key)
                    .with_context(|| format!("cannot read {}", public_key.display()))?;
                let key = audit_store::parse_public_key(&text)?;
                let store = SqliteStore::open_existing(&db)?;
                audit_store::verify(&store, &key)
            })();
            Ok(match checked {
                Ok(Ok(report)) => {
                    println!("{}", audit_store::describe(&report));
                    ExitCode::SUCCESS
                }
                Ok(Err(failure)) => {
                    println!("FAILED: {failure}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    eprintln!("mcpgw audit verify: {error:#}");
                    ExitCode::from(2)
                }
            })
        }
        AuditCommand::Query { db, filters: f } => {
            let time = |t: &Option<String>, name: &str| -> anyhow::Result<Option<i64>> {
                t.as_deref()
                    .map(|t| {
                        chrono::DateTime::parse_from_rfc3339(t)
                            .map(|t| t.timestamp_millis())
                            .with_context(|| format!("--{name}: not an RFC 3339 time: {t:?}"))
                    })
                    .transpose()
            };
            let query = audit_store::Query {
                user: f.user,
                server: f.server,
                method: f.method,
                tool: f.tool,
                decision: f.decision,
                since_ms: time(&f.since, "since")?,
                until_ms: time(&f.until, "until")?,
                before: f.cursor,
                limit: f.limit,
            };
            let store = SqliteStore::open_existing(&db)?;
            let page = store.query(&query)?;
            println!("{}", serde_json::to_string_pretty(&audit_store::page_json(&page, query.limit))?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Keygen { dir } => keygen(&dir)?,
        Command::Token(args) => mint(args)?,
        Command::Call { token, url, tool, arguments } => call(token.as_deref(), &url, &tool, &arguments).await?,
        Command::Demo { filesystem, github, sandbox } => demo(filesystem, github, sandbox).await?,
        // Its exit status tells allowed (0) from denied (1) and bad input (2).
        Command::Audit { command } => return audit(command),
        Command::Sidecar(args) => sidecar(args).await?,
        Command::Explain(args) => {
            return Ok(match explain_request(&args) {
                Ok(explanation) => print_explanation(&explanation, args.json),
                Err(error) => {
                    eprintln!("mcpgw explain: {error:#}");
                    ExitCode::from(2)
                }
            })
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn keygen(dir: &Path) -> anyhow::Result<()> {
    let files = token::keygen(dir)?;
    let verb = if files.created { "created" } else { "kept existing" };
    println!("{verb} signing key {}", files.signing_key.display());
    println!("public key {} (kid {})", files.public_key.display(), files.kid);
    Ok(())
}

fn mint(args: TokenArgs) -> anyhow::Result<()> {
    let signing_jwk = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read signing key {} (run `mcpgw keygen` first)", args.key.display()))?;
    let request = TokenRequest {
        sub: args.sub,
        roles: args.roles,
        iss: args.iss,
        aud: args.aud,
        ttl: Duration::from_secs(args.ttl_secs),
        extra_claims: args.claims.into_iter().collect::<Map<_, _>>(),
    };
    println!("{}", token::mint(&signing_jwk, &request)?);
    Ok(())
}

async fn call(token: Option<&str>, url: &str, tool: &str, arguments: &str) -> anyhow::Result<()> {
    let arguments: Value = serde_json::from_str(arguments).context("tool arguments must be a JSON object")?;
    if !arguments.is_object() {
        bail!("tool arguments must be a JSON object, got {arguments}");
    }
    // rmcp nests the same transport error several times; its root cause (for example
    // "HTTP 403 Forbidden: {...}") is what a user needs to see.
    let root = |e: anyhow::Error| anyhow::anyhow!("{}", e.root_cause());
    let client = mcpgw::client::connect(url, token).await.map_err(root)?;
    let result = client.call_tool(tool, arguments).await;
    client.close().await.ok();
    let result = result.map_err(root)?;
    println!("{}", mcpgw::client::text(&result));
    if result.is_error == Some(true) {
        bail!("tool {tool} reported an error");
    }
    Ok(())
}

fn explain_request(args: &ExplainArgs) -> anyhow::Result<Explanation> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read configuration {}", args.config.display()))?;
    let env = |name: &str| {
        let set = args.env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        set.or_else(|| std::env::var(name).ok())
    };
    let config = explain::load_config(&text, &env)?;
    let principal = match (&args.token, &args.claims) {
        (Some(token), _) => explain::principal_from_token(&config, token.trim(), SystemTime::now())?,
        (None, Some(claims)) => {
            let claims = read_input(claims, "--claims")?;
            let claims = serde_json::from_slice(&claims).map_err(|e| explain::ExplainError::Claims(e.to_string()))?;
            explain::principal_from_claims(&config, &claims, args.provider.as_deref())?
        }
        (None, None) => bail!("give --token or --claims"),
    };
    let server = match (&args.server, &args.path) {
        (Some(name), _) => explain::server_named(&config, name)?,
        (None, Some(path)) => explain::server_at(&config, path)?,
        (None, None) => bail!("give --server or --path"),
    };
    let request = match &args.request {
        Some(raw) => {
            let body = read_input(raw, "--request")?;
            Some(mcp_gateway::jsonrpc::parse(&body, config.max_json_depth).map_err(explain::ExplainError::Request)?)
        }
        None => None,
    };
    let list_body = match &args.tools_list {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?),
        None => None,
    };
    let list = list_body.as_deref().map(|body| {
        let guessed = if body.trim_ascii_start().starts_with(b"{") { "application/json" } else { "text/event-stream" };
        (body, args.content_type.as_deref().unwrap_or(guessed), ListKind::from(args.list_kind))
    });
    // A call to a federated server is decided as the sidecar dispatches it: to its member.
    if let Some((member, call)) = explain::through_federation(&config, server, request.as_ref())? {
        let mut explanation = explain::explain(&config, &principal, &member, Some(&call), list)?;
        explanation.via = Some(server.to_owned());
        return Ok(explanation);
    }
    Ok(explain::explain(&config, &principal, server, request.as_ref(), list)?)
}

/// Prints the explanation; the exit status says allowed (0) or denied (1).
fn print_explanation(explanation: &Explanation, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string(explanation) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("mcpgw explain: cannot encode JSON: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{explanation}");
    }
    match explanation.decision {
        Outcome::Allow | Outcome::WouldDeny => ExitCode::SUCCESS,
        Outcome::Deny => ExitCode::FAILURE,
    }
}

/// Inline text, `@FILE`, or `-` for standard input.
fn read_input(raw: &str, flag: &str) -> anyhow::Result<Vec<u8>> {
    if raw == "-" {
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input).with_context(|| format!("{flag}: cannot read standard input"))?;
        Ok(input)
    } else if let Some(path) = raw.strip_prefix('@') {
        std::fs::read(path).with_context(|| format!("{flag}: cannot read {path}"))
    } else {
        Ok(raw.as_bytes().to_vec())
    }
}

fn parse_env(raw: &str) -> anyhow::Result<(String, String)> {
    match raw.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => bail!("expected NAME=VALUE, got {raw:?}"),
    }
}

fn parse_claim(raw: &str) -> anyhow::Result<(String, Value)> {
    let Some((name, value)) = raw.split_once('=') else {
        bail!("expected NAME=VALUE, got {raw:?}");
    };
    if name.is_empty() {
        bail!("claim name is empty in {raw:?}");
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

async fn demo(filesystem: SocketAddr, github: Vec<SocketAddr>, sandbox: PathBuf) -> anyhow::Result<()> {
    let filesystem = start(ServerKind::Filesystem { sandbox: sandbox.clone() }, filesystem).await?;
    println!("filesystem MCP server on {} (sandbox {})", filesystem.url(), sandbox.display());
    let mut replicas = Vec::new();
    for addr in github {
        let replica = start(ServerKind::Github, addr).await?;
        println!("github MCP server on {}", replica.url());
        replicas.push(replica);
    }
    println!("press Ctrl-C to stop");

    wait_for_stop_signal().await?;
    let mut result = filesystem.shutdown().await;
    for replica in replicas {
        result = result.and(replica.shutdown().await);
    }
    result
}

async fn start(kind: ServerKind, addr: SocketAddr) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    mcpgw::spawn(kind, listener).await
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn token_defaults_match_the_demo_configuration() {
        let cli = Cli::try_parse_from(["mcpgw", "token", "--sub", "alice", "--roles", "a,b", "--roles", "c"]).unwrap();
        let Command::Token(args) = cli.command else { unreachable!() };
        assert_eq!(args.roles, ["a", "b", "c"]);
        assert_eq!(args.iss, "mcpgw-demo");
        assert_eq!(args.aud, "mcp-gateway");
        assert_eq!(args.key, PathBuf::from(".dev/signing-key.jwk"));
        assert_eq!(args.ttl_secs, 3600);
    }

    #[test]
    fn claims_are_json_when_they_parse_else_strings() {
        assert_eq!(parse_claim("n=3").unwrap(), ("n".into(), Value::from(3)));
        assert_eq!(parse_claim("t=acme").unwrap(), ("t".into(), Value::from("acme")));
        assert_eq!(parse_claim("g=[\"x\"]").unwrap(), ("g".into(), serde_json::json!(["x"])));
        assert_eq!(parse_claim("e=a=b").unwrap(), ("e".into(), Value::from("a=b")));
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=x").is_err());
    }
}
