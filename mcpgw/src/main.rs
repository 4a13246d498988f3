//! `mcpgw`: the operator's CLI for the MCP gateway (dev keys, tokens, demo servers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
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
        /// Address of the github server (Streamable HTTP at /mcp).
        #[arg(long, default_value = "127.0.0.1:10002")]
        github: SocketAddr,
        /// Directory the filesystem server serves; created with sample files if missing.
        #[arg(long, default_value = ".dev/sandbox")]
        sandbox: PathBuf,
    },
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
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the context chain on one line, without a backtrace.
            eprintln!("mcpgw: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen { dir } => keygen(&dir),
        Command::Token(args) => mint(args),
        Command::Call { token, url, tool, arguments } => call(token.as_deref(), &url, &tool, &arguments).await,
        Command::Demo { filesystem, github, sandbox } => demo(filesystem, github, sandbox).await,
    }
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

async fn demo(filesystem: SocketAddr, github: SocketAddr, sandbox: PathBuf) -> anyhow::Result<()> {
    let filesystem = start(ServerKind::Filesystem { sandbox: sandbox.clone() }, filesystem).await?;
    let github = start(ServerKind::Github, github).await?;
    println!("filesystem MCP server on {} (sandbox {})", filesystem.url(), sandbox.display());
    println!("github MCP server on {}", github.url());
    println!("press Ctrl-C to stop");

    wait_for_stop_signal().await?;
    let (filesystem, github) = tokio::join!(filesystem.shutdown(), github.shutdown());
    filesystem.and(github)
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
