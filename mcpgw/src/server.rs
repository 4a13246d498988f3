//! Serving an MCP server over Streamable HTTP on a listener, for demos and tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServerHandler;
use tokio::net::TcpListener;
#[cfg(feature = "testing")]
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::demo::filesystem::{self, FilesystemServer};
use crate::demo::github::{GithubData, GithubServer};
#[cfg(feature = "testing")]
use crate::request_log::{self, RequestLog};
#[cfg(feature = "testing")]
use crate::testing::TestServer;

/// Where the MCP endpoint is mounted on every server.
pub const MCP_PATH: &str = "/mcp";

/// How long `shutdown` lets open connections finish before cutting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Which MCP server to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerKind {
    /// The sandboxed filesystem; the sandbox is created (with seed files) if missing.
    Filesystem {
        sandbox: PathBuf,
    },
    Github,
    /// The integration-test server (see `crate::testing`; feature `testing`).
    #[cfg(feature = "testing")]
    Test,
    /// The test server without sessions, answering plain `application/json` where it can
    /// (as MCP servers without streaming do).
    #[cfg(feature = "testing")]
    TestJson,
}

/// A server running in the background. Dropping it stops it too; [`RunningServer::shutdown`]
/// also waits until it has stopped.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Every HTTP request that reached this server (tests only: the demo keeps no log).
    #[cfg(feature = "testing")]
    pub requests: RequestLog,
    /// Gate of the test server's `stepped` tool; starts with no permits.
    #[cfg(feature = "testing")]
    pub gate: Arc<Semaphore>,
    cancel: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// `http://<addr>/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}{MCP_PATH}", self.addr)
    }

    /// Ends open sessions and streams, stops accepting, and waits (at most
    /// [`SHUTDOWN_GRACE`]) for open connections to finish; then the server is aborted.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(finished) => Ok(finished.context("server task failed")??),
            Err(_) => {
                task.abort();
                Ok(())
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Serves `kind` on `listener` in a background task.
pub async fn spawn(kind: ServerKind, listener: TcpListener) -> anyhow::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let app = router(&kind, cancel.clone())?;
    #[cfg(feature = "testing")]
    let (app, requests, gate) = {
        let requests = RequestLog::new();
        let gate = Arc::new(Semaphore::new(0));
        let app = match kind {
            ServerKind::Test => mcp_router(test_server(&gate), cancel.clone()),
            ServerKind::TestJson => mcp_router_with(test_server(&gate), cancel.clone(), true),
            _ => app,
        };
        (app.layer(axum::middleware::from_fn_with_state(requests.clone(), request_log::record)), requests, gate)
    };

    // Without TCP_NODELAY every SSE reply waits ~40 ms (Nagle against delayed ACK).
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let shutdown = cancel.clone().cancelled_owned();
    let task = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await });
    Ok(RunningServer {
        addr,
        #[cfg(feature = "testing")]
        requests,
        #[cfg(feature = "testing")]
        gate,
        cancel,
        task: Some(task),
    })
}

#[cfg(feature = "testing")]
fn test_server(gate: &Arc<Semaphore>) -> impl Fn() -> TestServer + Send + Sync + 'static {
    let gate = gate.clone();
    move || TestServer::new(gate.clone())
}

/// The HTTP application of a demo server: the MCP service at [`MCP_PATH`]. Cancelling
/// `cancel` ends its sessions (so graceful shutdown is not held up by open streams). The
/// test servers are set up by [`spawn`] (feature `testing`); here they get an empty router.
pub fn router(kind: &ServerKind, cancel: CancellationToken) -> anyhow::Result<Router> {
    let app = match kind {
        ServerKind::Filesystem { sandbox } => {
            filesystem::ensure_sandbox(sandbox)
                .with_context(|| format!("cannot create sandbox {}", sandbox.display()))?;
            let server =
                FilesystemServer::new(sandbox).with_context(|| format!("cannot open sandbox {}", sandbox.display()))?;
            mcp_router(move || server.clone(), cancel)
        }
        ServerKind::Github => {
            let data = GithubData::default();
            mcp_router(move || GithubServer::new(data.clone()), cancel)
        }
        #[cfg(feature = "testing")]
        ServerKind::Test | ServerKind::TestJson => Router::new(),
    };
    Ok(app)
}

fn mcp_router<S>(new_session: impl Fn() -> S + Send + Sync + 'static, cancel: CancellationToken) -> Router
where
    S: ServerHandler + Send + 'static,
{
    mcp_router_with(new_session, cancel, false)
}

/// `json`: no sessions, and `application/json` replies instead of SSE when possible.
fn mcp_router_with<S>(
    new_session: impl Fn() -> S + Send + Sync + 'static,
    cancel: CancellationToken,
    json: bool,
) -> Router
where
    S: ServerHandler + Send + 'static,
{
    // rmcp rejects a `Host` outside this list with 403 (DNS-rebinding defence). Entries without
    // a port match any port, so `127.0.0.1:10000` (the gateway keeps the client's Host) passes.
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(["localhost", "127.0.0.1", "::1"])
        .with_cancellation_token(cancel);
    let config = if json { config.with_legacy_session_mode(false).with_json_response(true) } else { config };
    let service =
        StreamableHttpService::new(move || Ok(new_session()), Arc::new(LocalSessionManager::default()), config);
    Router::new().route_service(MCP_PATH, service)
}
