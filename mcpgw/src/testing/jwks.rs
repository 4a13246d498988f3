//! A pretend identity provider that publishes a JWKS, under the test's control.
//!
//! Routes:
//! - `GET /jwks.json` ([`JWKS_PATH`]): `{"keys": [...]}` with the public JWKs of the keys given
//!   to [`JwksServer::set_keys`] (none at first), `Content-Type: application/json`, and
//!   `Cache-Control: max-age=N` when [`JwksServer::set_max_age`] set one. Answers 503 while
//!   [`JwksServer::set_failing`] is on, after the delay of [`JwksServer::set_delay`], and not
//!   before [`JwksServer::set_held`] lets it go.
//! - `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata whose `issuer` is
//!   [`JwksServer::url`] and whose `jwks_uri` is [`JwksServer::jwks_url`], so that a gateway's
//!   protected resource metadata can name this server and an MCP client's discovery completes.
//!
//! [`JwksServer::stop`] closes the listening socket and every connection (a fetch is refused,
//! not hung), and [`JwksServer::restart`] listens again on the same address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::testing::keys::TestKey;

/// Where the key set is published.
pub const JWKS_PATH: &str = "/jwks.json";
/// Where the authorization server metadata is published.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// How long [`JwksServer::stop`] waits for open connections before aborting the server.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Backlog of the socket [`JwksServer::restart`] binds.
const LISTEN_BACKLOG: u32 = 1024;

/// What `GET /jwks.json` answers; changed by the setters, read by every request.
#[derive(Debug, Default)]
struct Publication {
    keys: Vec<Value>,
    /// Replaces the key set document, for malformed-JWKS tests.
    raw_body: Option<String>,
    max_age: Option<u64>,
    failing: bool,
    delay: Duration,
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    publication: Mutex<Publication>,
    /// Requests to [`JWKS_PATH`] so far; a watch so tests can wait for the next fetch.
    fetches: watch::Sender<u64>,
    /// While true, answers to [`JWKS_PATH`] wait; a watch so they go as soon as it turns false.
    held: watch::Sender<bool>,
}

impl Shared {
    fn publication(&self) -> MutexGuard<'_, Publication> {
        // The lock is never held across a panic that matters: every writer sets plain fields.
        self.publication.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    /// Cancelled by `stop`, so a delayed answer does not hold the shutdown up.
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Serving {
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

/// A JWKS server running in the background; dropping it stops it.
#[derive(Debug)]
pub struct JwksServer {
    shared: Arc<Shared>,
    serving: Option<Serving>,
}

impl JwksServer {
    /// Serves on `listener` (bind it to loopback, e.g. `127.0.0.1:0`).
    pub async fn start(listener: TcpListener) -> anyhow::Result<JwksServer> {
        let addr = listener.local_addr().context("listener has no local address")?;
        let (fetches, _) = watch::channel(0);
        let (held, _) = watch::channel(false);
        let shared = Arc::new(Shared { addr, publication: Mutex::new(Publication::default()), fetches, held });
        let serving = serve(shared.clone(), listener);
        Ok(JwksServer { shared, serving: Some(serving) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://<addr>`: the issuer URL of the authorization server metadata.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `http://<addr>/jwks.json`.
    pub fn jwks_url(&self) -> String {
        format!("http://{}{JWKS_PATH}", self.shared.addr)
    }

    /// Publishes exactly these keys, in this order (rotation: add the new key, later drop
    /// the old one). Also ends a [`JwksServer::set_raw_body`].
    pub fn set_keys(&self, keys: &[&TestKey]) {
        let mut publication = self.shared.publication();
        publication.keys = keys.iter().map(|key| key.public_jwk()).collect();
        publication.raw_body = None;
    }

    /// Publishes `body` verbatim instead of the key set (say `{"keys": 1}` or `<html>`);
    /// `None` goes back to the key set.
    pub fn set_raw_body(&self, body: Option<String>) {
        self.shared.publication().raw_body = body;
    }

    /// `Some(n)` sends `Cache-Control: max-age=n`; `None` (the default) sends no
    /// `Cache-Control`.
    pub fn set_max_age(&self, max_age: Option<u64>) {
        self.shared.publication().max_age = max_age;
    }

    /// While on, `GET /jwks.json` answers 503.
    pub fn set_failing(&self, failing: bool) {
        self.shared.publication().failing = failing;
    }

    /// Waits this long before answering `GET /jwks.json` (zero, the default, for no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.publication().delay = delay;
    }

    /// While on, `GET /jwks.json` is received (and counted) but not answered until it is
    /// turned off again: a test can line requests up behind a fetch it controls, then let
    /// the answer (keys, or 503 while failing) go at a moment it chooses.
    pub fn set_held(&self, held: bool) {
        self.shared.held.send_replace(held);
    }

    /// Requests to `GET /jwks.json` received so far, whatever they were answered (503, or
    /// cut short by `stop`, included).
    pub fn fetch_count(&self) -> u64 {
        *self.shared.fetches.borrow()
    }

    /// Waits until [`JwksServer::fetch_count`] reaches `count`; returns the count then.
    pub async fn wait_for_fetches(&self, count: u64, timeout: Duration) -> anyhow::Result<u64> {
        let mut fetches = self.shared.fetches.subscribe();
        let reached = tokio::time::timeout(timeout, fetches.wait_for(|n| *n >= count)).await;
        match reached {
            Ok(Ok(n)) => Ok(*n),
            Ok(Err(_)) => bail!("JWKS server is gone"),
            Err(_) => bail!("JWKS was fetched {} times within {timeout:?}, expected {count}", self.fetch_count()),
        }
    }

    pub fn is_running(&self) -> bool {
        self.serving.is_some()
    }

    /// Stops listening and closes every connection; afterwards connections are refused.
    /// Stopping a stopped server does nothing.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(Serving { cancel, mut task }) = self.serving.take() else {
            return Ok(());
        };
        cancel.cancel();
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(finished) => Ok(finished.context("JWKS server task failed")??),
            Err(_) => {
                // Connections Envoy keeps open hold up a graceful stop. Abort, and wait until
                // the task (and with it the listening socket) is gone, so `restart` can bind.
                task.abort();
                let _ = task.await;
                Ok(())
            }
        }
    }

    /// Listens again on the same address (with `SO_REUSEADDR`, so connections of the previous
    /// run in `TIME_WAIT` do not block it). Fails if the server is running, or if something
    /// else took the port meanwhile.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.serving.is_some() {
            bail!("JWKS server is already running");
        }
        let addr = self.shared.addr;
        let socket =
            if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.context("cannot create socket")?;
        socket.set_reuseaddr(true).context("cannot set SO_REUSEADDR")?;
        socket.bind(addr).with_context(|| format!("cannot bind {addr} again"))?;
        let listener = socket.listen(LISTEN_BACKLOG).with_context(|| format!("cannot listen on {addr}"))?;
        self.serving = Some(serve(self.shared.clone(), listener));
        Ok(())
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(serving) = &self.serving {
            serving.cancel.cancel();
        }
    }
}

fn serve(shared: Arc<Shared>, listener: TcpListener) -> Serving {
    let cancel = CancellationToken::new();
    let app = Router::new()
        .route(JWKS_PATH, get(jwks))
        .route(METADATA_PATH, get(metadata))
        .with_state(AppState { shared, cancel: cancel.clone() });
    let shutdown = cancel.clone().cancelled_owned();
    let task = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await });
    Serving { cancel, task }
}

async fn jwks(State(state): State<AppState>) -> Response {
    state.shared.fetches.send_modify(|n| *n += 1);
    let mut held = state.shared.held.subscribe();
    tokio::select! {
        // The sender lives as long as `shared`, which this handler holds.
        _ = held.wait_for(|held| !*held) => {}
        () = state.cancel.cancelled() => {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let (delay, failing, body, max_age) = {
        let publication = state.shared.publication();
        let body = match &publication.raw_body {
            Some(raw) => raw.clone(),
            None => json!({ "keys": publication.keys }).to_string(),
        };
        (publication.delay, publication.failing, body, publication.max_age)
    };
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = state.cancel.cancelled() => {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        }
    }
    if failing {
        return (StatusCode::SERVICE_UNAVAILABLE, "identity provider unavailable").into_response();
    }
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(max_age) = max_age {
        if let Ok(value) = format!("max-age={max_age}").parse() {
            response.headers_mut().insert(header::CACHE_CONTROL, value);
        }
    }
    response
}

async fn metadata(State(state): State<AppState>) -> Json<Value> {
    let issuer = format!("http://{}", state.shared.addr);
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::keys::Alg;

    async fn server() -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        JwksServer::start(listener).await.unwrap()
    }

    async fn fetch(server: &JwksServer) -> reqwest::Result<reqwest::Response> {
        reqwest::Client::new().get(server.jwks_url()).send().await
    }

    fn kids(document: &Value) -> Vec<&str> {
        document["keys"].as_array().unwrap().iter().map(|key| key["kid"].as_str().unwrap()).collect()
    }

    #[tokio::test]
    async fn publishes_the_current_key_set_and_counts_fetches() {
        let server = server().await;
        let old = TestKey::generate(Alg::Es256, "old").unwrap();
        let new = TestKey::generate(Alg::EdDsa, "new").unwrap();

        let empty: Value = fetch(&server).await.unwrap().json().await.unwrap();
        assert_eq!(empty, json!({ "keys": [] }));

        server.set_keys(&[&old, &new]);
        let response = fetch(&server).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(response.headers().get("cache-control").is_none());
        let document: Value = response.json().await.unwrap();
        assert_eq!(kids(&document), ["old", "new"]);
        assert_eq!(document["keys"][1], new.public_jwk());

        server.set_keys(&[&new]);
        let document: Value = fetch(&server).await.unwrap().json().await.unwrap();
        assert_eq!(kids(&document), ["new"]);
        assert_eq!(server.fetch_count(), 3);
    }

    #[tokio::test]
    async fn sends_the_configured_max_age() {
        let server = server().await;
        server.set_max_age(Some(300));
        let response = fetch(&server).await.unwrap();
        assert_eq!(response.headers()["cache-control"], "max-age=300");
    }

    #[tokio::test]
    async fn answers_503_while_failing_and_counts_those_fetches_too() {
        let server = server().await;
        server.set_failing(true);
        assert_eq!(fetch(&server).await.unwrap().status(), 503);
        server.set_failing(false);
        assert_eq!(fetch(&server).await.unwrap().status(), 200);
        assert_eq!(server.wait_for_fetches(2, Duration::from_secs(1)).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn serves_a_raw_body_until_keys_are_set_again() {
        let server = server().await;
        server.set_raw_body(Some("{\"keys\": 1}".into()));
        assert_eq!(fetch(&server).await.unwrap().text().await.unwrap(), "{\"keys\": 1}");
        server.set_keys(&[]);
        assert_eq!(fetch(&server).await.unwrap().text().await.unwrap(), "{\"keys\":[]}");
    }

    #[tokio::test]
    async fn delays_answers() {
        let server = server().await;
        server.set_delay(Duration::from_millis(300));
        let started = std::time::Instant::now();
        assert_eq!(fetch(&server).await.unwrap().status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn holds_answers_until_released() {
        let server = server().await;
        server.set_held(true);
        let url = server.jwks_url();
        let pending = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
        server.wait_for_fetches(1, Duration::from_secs(5)).await.unwrap();
        assert!(!pending.is_finished());
        server.set_held(false);
        assert_eq!(pending.await.unwrap().unwrap(), 200);
    }

    #[tokio::test]
    async fn stop_refuses_connections_and_restart_listens_on_the_same_port() {
        let mut server = server().await;
        let addr = server.addr();
        // A kept-alive connection must not outlive the stop.
        let client = reqwest::Client::new();
        assert_eq!(client.get(server.jwks_url()).send().await.unwrap().status(), 200);

        server.stop().await.unwrap();
        assert!(!server.is_running());
        let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(client.get(server.jwks_url()).send().await.is_err());

        server.restart().await.unwrap();
        assert_eq!(server.addr(), addr);
        assert_eq!(client.get(server.jwks_url()).send().await.unwrap().status(), 200);
        assert!(server.restart().await.is_err());
        assert_eq!(server.fetch_count(), 2);
    }

    #[tokio::test]
    async fn stop_does_not_wait_for_a_delayed_answer() {
        let mut server = server().await;
        server.set_delay(Duration::from_secs(30));
        let url = server.jwks_url();
        let pending = tokio::spawn(async move { reqwest::get(url).await });
        server.wait_for_fetches(1, Duration::from_secs(5)).await.unwrap();
        let started = std::time::Instant::now();
        server.stop().await.unwrap();
        assert!(started.elapsed() < STOP_GRACE);
        let answer = pending.await.unwrap();
        assert!(answer.map(|r| r.status() == 503).unwrap_or(true));
    }

    #[tokio::test]
    async fn publishes_authorization_server_metadata_naming_itself() {
        let server = server().await;
        let metadata: Value =
            reqwest::get(format!("{}{METADATA_PATH}", server.url())).await.unwrap().json().await.unwrap();
        assert_eq!(metadata["issuer"], server.url());
        assert_eq!(metadata["jwks_uri"], server.jwks_url());
        assert_eq!(server.fetch_count(), 0);
    }
}
