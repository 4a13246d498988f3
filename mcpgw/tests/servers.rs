//! The demo and test MCP servers, driven by a real rmcp client over Streamable HTTP.

use mcpgw::{spawn, RunningServer, ServerKind};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt as _};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

type Client = RunningService<RoleClient, ()>;

async fn start(kind: ServerKind) -> anyhow::Result<(RunningServer, Client)> {
    let server = spawn(kind, TcpListener::bind("127.0.0.1:0").await?).await?;
    let client = ().serve(StreamableHttpClientTransport::from_uri(server.url())).await?;
    Ok((server, client))
}

async fn call(client: &Client, tool: &'static str, args: Value) -> anyhow::Result<CallToolResult> {
    let Value::Object(args) = args else {
        anyhow::bail!("arguments must be an object");
    };
    Ok(client.call_tool(CallToolRequestParams::new(tool).with_arguments(args)).await?)
}

fn text(result: &CallToolResult) -> String {
    result.content.iter().filter_map(|c| c.as_text()).map(|t| t.text.clone()).collect()
}

/// Sends an `initialize` POST with the given `Host` and returns the HTTP status code.
async fn initialize_status(server: &RunningServer, host: &str) -> anyhow::Result<u16> {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "0"}}
    })
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(server.addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    let status = std::str::from_utf8(&head)?.get(9..12).ok_or_else(|| anyhow::anyhow!("short status line"))?;
    Ok(status.parse()?)
}

#[tokio::test]
async fn filesystem_reads_lists_and_writes_inside_the_sandbox() -> anyhow::Result<()> {
    let sandbox = tempfile::tempdir()?;
    let (server, client) = start(ServerKind::Filesystem { sandbox: sandbox.path().join("box") }).await?;

    let readme = call(&client, "read_file", json!({"file_path": "/public/readme.md"})).await?;
    assert_eq!(readme.is_error, Some(false));
    assert!(text(&readme).contains("Acme handbook"));

    let root = call(&client, "list_directory", json!({"file_path": "/"})).await?;
    assert_eq!(text(&root), "private/\npublic/\nuser/");

    let written =
        call(&client, "write_file", json!({"file_path": "/user/alice/todo.md", "content": "ship it"})).await?;
    assert_eq!(written.is_error, Some(false));
    assert_eq!(std::fs::read_to_string(sandbox.path().join("box/user/alice/todo.md"))?, "ship it");

    client.cancel().await?;
    server.shutdown().await
}

#[tokio::test]
async fn filesystem_refuses_escapes_with_a_tool_error() -> anyhow::Result<()> {
    let sandbox = tempfile::tempdir()?;
    std::fs::write(sandbox.path().join("outside.txt"), "secret")?;
    let (server, client) = start(ServerKind::Filesystem { sandbox: sandbox.path().join("box") }).await?;

    let escaped = call(&client, "read_file", json!({"file_path": "/../outside.txt"})).await?;
    assert_eq!(escaped.is_error, Some(true));
    assert!(text(&escaped).contains("escapes the sandbox"));
    assert!(!text(&escaped).contains("secret"));

    client.cancel().await?;
    server.shutdown().await
}

#[tokio::test]
async fn github_keeps_created_issues_across_sessions() -> anyhow::Result<()> {
    let (server, client) = start(ServerKind::Github).await?;

    let payroll = call(&client, "get_repository", json!({"repository": "acme/payroll"})).await?;
    let payroll: Value = serde_json::from_str(&text(&payroll))?;
    assert_eq!(payroll["private"], true);

    let created = call(&client, "create_issue", json!({"repository": "acme/website", "title": "Typo"})).await?;
    let created: Value = serde_json::from_str(&text(&created))?;
    assert_eq!(created["number"], 3);

    let other = ().serve(StreamableHttpClientTransport::from_uri(server.url())).await?;
    let issues = call(&other, "list_issues", json!({"repository": "acme/website"})).await?;
    assert!(text(&issues).contains("Typo"));

    let missing = call(&other, "list_issues", json!({"repository": "acme/nope"})).await?;
    assert_eq!(missing.is_error, Some(true));

    client.cancel().await?;
    other.cancel().await?;
    server.shutdown().await
}

#[tokio::test]
async fn request_log_records_every_request_with_headers_and_body() -> anyhow::Result<()> {
    let (server, client) = start(ServerKind::Test).await?;
    call(&client, "echo", json!({"text": "hello"})).await?;

    let calls = server.requests.tool_calls("echo");
    assert_eq!(calls.len(), 1);
    let echo = &calls[0];
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/mcp");
    assert!(echo.header("Mcp-Session-Id").is_some());
    assert_eq!(echo.json().map(|b| b["params"]["arguments"]["text"].clone()), Some(json!("hello")));
    assert_eq!(server.requests.with_rpc_method("initialize").len(), 1, "{:?}", server.requests.all());
    assert!(!server.requests.any_header("x-mcp-user"));

    server.requests.clear();
    assert!(server.requests.is_empty());
    client.cancel().await?;
    server.shutdown().await
}

#[tokio::test]
async fn loopback_hosts_with_any_port_are_accepted_others_are_refused() -> anyhow::Result<()> {
    let server = spawn(ServerKind::Test, TcpListener::bind("127.0.0.1:0").await?).await?;
    for host in ["127.0.0.1:10000", "localhost:10000", "127.0.0.1", "[::1]:8080"] {
        assert_eq!(initialize_status(&server, host).await?, 200, "{host}");
    }
    assert_eq!(initialize_status(&server, "evil.example:10000").await?, 403);
    // Refused requests are logged too: the log sits in front of rmcp's checks.
    assert_eq!(server.requests.len(), 5);
    server.shutdown().await
}
