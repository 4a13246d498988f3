//! `mcpgw sidecar`: the jobs the filter cannot do. This part: audit ingest (batches from
//! the filter, acknowledged only after they are committed), the durable store with its
//! signed checkpoints and retention, and `/audit` queries.
//!
//! The sidecar listens on loopback and trusts nothing a client sends: every request must
//! carry the shared secret the filter adds (`x-mcp-sidecar-secret`, which the filter strips
//! from clients with the rest of `x-mcp-*`), or it gets 401. Identity comes only from the
//! filter's headers. Clients reach `/audit` through Envoy, where the filter authenticates
//! and authorizes them like any other request.

mod events;
mod fanout;
pub mod federation;
mod serve;
pub use serve::Listener;

use crate::audit_store::{self, AuditStore as _, CheckpointKey, Query, Retention, SqliteStore};
use anyhow::{anyhow, Context as _, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use events::Published;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The header carrying the secret shared with the filter.
pub const SECRET_HEADER: &str = "x-mcp-sidecar-secret";
/// The shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;
/// The largest ingest batch, in bytes.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// How the sidecar runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: PathBuf,
    pub checkpoint_key: PathBuf,
    pub secret: String,
    /// Sign a checkpoint once this many records are unsigned...
    pub checkpoint_records: u64,
    /// ...or this long after the last one, when any are.
    pub checkpoint_every: Duration,
    pub retention: Retention,
    /// How often retention runs.
    pub retention_every: Duration,
    /// Roles whose `/events` subscribers see every record (others see their own).
    pub audit_roles: Vec<String>,
    /// How often `/events` sends a `heartbeat` event.
    pub heartbeat: Duration,
    /// Events queued for one subscriber; a subscriber this far behind is dropped.
    pub subscriber_queue: usize,
    /// Committed records the live bus holds for subscribers catching up.
    pub bus_capacity: usize,
    /// Federated servers served here (see [`federation`]).
    pub federation: Vec<federation::Virtual>,
}

impl Config {
    /// A configuration with the defaults `mcpgw sidecar` uses.
    pub fn new(db: PathBuf, checkpoint_key: PathBuf, secret: String) -> Config {
        Config {
            db,
            checkpoint_key,
            secret,
            checkpoint_records: 1000,
            checkpoint_every: Duration::from_secs(10),
            retention: Retention::default(),
            retention_every: Duration::from_secs(60),
            audit_roles: vec!["admin".to_owned()],
            heartbeat: Duration::from_secs(15),
            subscriber_queue: 256,
            bus_capacity: 4096,
            federation: Vec::new(),
        }
    }
}

/// What `/metrics` reports (Prometheus / OpenMetrics, through `prometheus-client`).
#[derive(Debug, Default)]
pub struct Counters {
    pub batches: Counter,
    pub records_ingested: Counter,
    pub records_committed: Counter,
    pub duplicates: Counter,
    pub ingest_errors: Counter,
    pub unauthorized: Counter,
    pub checkpoints: Counter,
    pub retained_deleted: Counter,
    pub lagged: Counter,
    pub subscribers: Gauge,
    /// Set when `/metrics` is read.
    store_bytes: Gauge,
    last_seq: Gauge,
}

impl Counters {
    /// A registry holding (shared handles to) every metric.
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        for (name, help, counter) in [
            ("mcpgw_sidecar_batches", "Ingest batches committed", &self.batches),
            ("mcpgw_sidecar_records_ingested", "Audit records received", &self.records_ingested),
            ("mcpgw_sidecar_records_committed", "Audit records committed", &self.records_committed),
            ("mcpgw_sidecar_records_duplicate", "Records received again and skipped", &self.duplicates),
            ("mcpgw_sidecar_ingest_errors", "Batches refused or not committed", &self.ingest_errors),
            ("mcpgw_sidecar_unauthorized", "Requests without the filter's secret", &self.unauthorized),
            ("mcpgw_sidecar_checkpoints", "Checkpoints signed", &self.checkpoints),
            ("mcpgw_sidecar_retention_deleted", "Records deleted by retention", &self.retained_deleted),
            ("mcpgw_sidecar_lagged", "Event subscribers dropped for falling behind", &self.lagged),
        ] {
            r.register(name, help, counter.clone());
        }
        r.register("mcpgw_sidecar_subscribers", "Event subscribers connected", self.subscribers.clone());
        r.register("mcpgw_sidecar_store_bytes", "Audit database size", self.store_bytes.clone());
        r.register("mcpgw_sidecar_last_seq", "Last sequence number", self.last_seq.clone());
        r
    }
}

/// What the handlers share.
pub struct Sidecar {
    config: Config,
    store: Mutex<SqliteStore>,
    key: CheckpointKey,
    pub counters: Counters,
    registry: Registry,
    /// Committed records (and heartbeats), to `/events` subscribers.
    bus: tokio::sync::broadcast::Sender<Arc<Published>>,
    /// Committed records not yet on the bus, in commit order.
    pending: Mutex<Vec<Published>>,
    /// The last sequence number published on the bus.
    last_published: AtomicU64,
    /// Cancelled when the sidecar shuts down: streams end.
    closing: CancellationToken,
    /// The threads that write live events to subscribers on the sidecar's own
    /// connections; started by [`run`].
    fanout: std::sync::OnceLock<fanout::FanOut>,
}

impl Sidecar {
    /// Opens the store and the checkpoint key (creating them if missing).
    pub fn open(config: Config) -> Result<Arc<Sidecar>> {
        if config.secret.len() < MIN_SECRET_BYTES {
            return Err(anyhow!("the sidecar secret must be at least {MIN_SECRET_BYTES} bytes"));
        }
        let store = SqliteStore::open(&config.db)?;
        let key = CheckpointKey::load_or_create(&config.checkpoint_key)?;
        let (bus, _) = tokio::sync::broadcast::channel(config.bus_capacity.max(1));
        let last_published = AtomicU64::new(store.last_seq()?);
        let counters = Counters::default();
        let registry = counters.registry();
        Ok(Arc::new(Sidecar {
            config,
            store: Mutex::new(store),
            key,
            counters,
            registry,
            bus,
            pending: Mutex::new(Vec::new()),
            last_published,
            closing: CancellationToken::new(),
            fanout: std::sync::OnceLock::new(),
        }))
    }

    /// Puts the committed records waiting for it on the bus, in commit order, and then
    /// `also` (a heartbeat). Called after the commit rather than under the store's lock,
    /// so that waking thousands of subscribers does not hold the batch's acknowledgement.
    fn publish(&self, also: Option<fn(u64) -> Published>) {
        // The lock is held while sending: two callers cannot interleave their records.
        let Ok(mut pending) = self.pending.lock() else { return };
        for p in pending.drain(..) {
            let seq = p.seq();
            let _ = self.bus.send(Arc::new(p));
            if let Some(seq) = seq {
                self.last_published.store(seq, Ordering::Release);
            }
        }
        if let Some(make) = also {
            let _ = self.bus.send(Arc::new(make(self.last_published.load(Ordering::Acquire))));
        }
        drop(pending);
        if let Some(fanout) = self.fanout.get() {
            fanout.wake_all();
        }
    }

    /// Runs `f` on the store off the async threads.
    async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut SqliteStore, &Sidecar) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut store = me.store.lock().map_err(|_| anyhow!("the audit store lock is poisoned"))?;
            f(&mut store, &me)
        })
        .await
        .context("the store task failed")?
    }

    /// Signs a checkpoint if one is due (or `force`d and anything is unsigned).
    pub async fn checkpoint(self: &Arc<Self>, force: bool) -> Result<Option<u64>> {
        self.with_store(move |store, me| {
            let unsigned = store.unsigned()?;
            if unsigned == 0 || (!force && unsigned < me.config.checkpoint_records) {
                return Ok(None);
            }
            let signed = store.checkpoint(&me.key, now_ms())?;
            if signed.is_some() {
                me.counters.checkpoints.inc();
            }
            Ok(signed.map(|c| c.seq))
        })
        .await
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Equal, in time that does not depend on where they differ.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len() && given.iter().zip(secret).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// 401 unless the request carries the filter's secret.
fn from_filter(sidecar: &Sidecar, headers: &HeaderMap) -> Option<Response> {
    let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if same_secret(given, sidecar.config.secret.as_bytes()) {
        None
    } else {
        sidecar.counters.unauthorized.inc();
        Some(error(StatusCode::UNAUTHORIZED, "requests to the sidecar come through the gateway"))
    }
}

/// The sidecar's routes.
pub fn app(sidecar: Arc<Sidecar>) -> Router {
    // Federated servers, behind the same check of the filter's secret as the rest.
    let federated = federation::router(sidecar.config.federation.clone(), &sidecar.closing)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&sidecar), require_filter));
    Router::new()
        .route("/ingest", post(ingest))
        .route("/audit", get(audit))
        .route("/metrics", get(metrics))
        .route("/events", get(events::events))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
        .with_state(sidecar)
        .merge(federated)
}

/// Middleware: 401 unless the request comes from the filter.
async fn require_filter(
    State(sidecar): State<Arc<Sidecar>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match from_filter(&sidecar, request.headers()) {
        Some(denied) => denied,
        None => next.run(request).await,
    }
}

/// `POST /ingest`: a JSON array of records, committed in order; answered only after the
/// commit, with the last sequence number. A record already stored is skipped.
async fn ingest(State(sidecar): State<Arc<Sidecar>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(denied) = from_filter(&sidecar, &headers) {
        return denied;
    }
    let records: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(Value::Array(records)) => records,
        _ => {
            sidecar.counters.ingest_errors.inc();
            return error(StatusCode::BAD_REQUEST, "the body must be a JSON array of audit records");
        }
    };
    if records.iter().any(|r| r.get("record_id").and_then(Value::as_str).is_none_or(str::is_empty)) {
        sidecar.counters.ingest_errors.inc();
        return error(StatusCode::BAD_REQUEST, "every record needs a non-empty record_id");
    }
    let received = records.len() as u64;
    let committed = sidecar
        .with_store(move |store, me| {
            let committed = store.append(&records, now_ms())?;
            let last = store.last_seq()?;
            // Queued under the store's lock, so they reach the bus in commit order.
            if let Ok(mut pending) = me.pending.lock() {
                pending.extend(committed.iter().map(Published::of));
            }
            Ok((committed.len() as u64, last))
        })
        .await;
    // Also when the commit failed: an earlier batch may have left records waiting.
    sidecar.publish(None);
    match committed {
        Ok((n, last_seq)) => {
            let c = &sidecar.counters;
            c.batches.inc();
            c.records_ingested.inc_by(received);
            c.records_committed.inc_by(n);
            c.duplicates.inc_by(received - n);
            if let Err(e) = sidecar.checkpoint(false).await {
                eprintln!("mcpgw sidecar: checkpoint failed: {e:#}");
            }
            Json(json!({ "committed": n, "last_seq": last_seq })).into_response()
        }
        Err(e) => {
            sidecar.counters.ingest_errors.inc();
            eprintln!("mcpgw sidecar: ingest failed: {e:#}");
            error(StatusCode::SERVICE_UNAVAILABLE, "the audit store could not commit the batch")
        }
    }
}

/// `/audit`'s query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    user: Option<String>,
    server: Option<String>,
    method: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    cursor: Option<u64>,
}

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<i64>, String> {
    value
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.timestamp_millis())
                .map_err(|_| format!("{name}: not an RFC 3339 time"))
        })
        .transpose()
}

/// `GET /audit?user=&server=&method=&tool=&decision=&since=&until=&limit=&cursor=`:
/// records newest first, with the cursor of the next page.
async fn audit(
    State(sidecar): State<Arc<Sidecar>>,
    headers: HeaderMap,
    params: Result<QueryParams<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(denied) = from_filter(&sidecar, &headers) {
        return denied;
    }
    let Ok(QueryParams(p)) = params else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameters: user, server, method, tool, decision, since, until, limit, cursor",
        );
    };
    let (since_ms, until_ms) = match (parse_time("since", p.since.as_deref()), parse_time("until", p.until.as_deref()))
    {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, audit_store::MAX_QUERY_LIMIT);
    let query = Query {
        user: p.user,
        server: p.server,
        method: p.method,
        tool: p.tool,
        decision: p.decision,
        since_ms,
        until_ms,
        before: p.cursor,
        limit,
    };
    match sidecar.with_store(move |store, _| store.query(&query)).await {
        Ok(page) => Json(audit_store::page_json(&page, limit)).into_response(),
        Err(e) => {
            eprintln!("mcpgw sidecar: query failed: {e:#}");
            error(StatusCode::SERVICE_UNAVAILABLE, "the audit store could not be read")
        }
    }
}

/// `GET /metrics`: OpenMetrics text (which Prometheus reads).
async fn metrics(State(sidecar): State<Arc<Sidecar>>, headers: HeaderMap) -> Response {
    if let Some(denied) = from_filter(&sidecar, &headers) {
        return denied;
    }
    let size = sidecar.with_store(|store, _| Ok((store.size_bytes()?, store.last_seq()?))).await.unwrap_or((0, 0));
    let c = &sidecar.counters;
    c.store_bytes.set(i64::try_from(size.0).unwrap_or(i64::MAX));
    c.last_seq.set(i64::try_from(size.1).unwrap_or(i64::MAX));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &sidecar.registry).is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded");
    }
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

/// Serves `app` on `listener` until `shutdown` resolves, with the checkpoint and retention
/// timers; signs a last checkpoint on the way out.
pub async fn run(
    listener: impl Into<Listener>,
    sidecar: Arc<Sidecar>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let timers = {
        let sidecar = Arc::clone(&sidecar);
        tokio::spawn(async move {
            let mut checkpoint = tokio::time::interval(sidecar.config.checkpoint_every);
            let mut retention = tokio::time::interval(sidecar.config.retention_every);
            let mut heartbeat = tokio::time::interval(sidecar.config.heartbeat);
            heartbeat.tick().await;
            loop {
                tokio::select! {
                    _ = heartbeat.tick() => sidecar.publish(Some(Published::heartbeat)),
                    _ = checkpoint.tick() => {
                        if let Err(e) = sidecar.checkpoint(true).await {
                            eprintln!("mcpgw sidecar: checkpoint failed: {e:#}");
                        }
                    }
                    _ = retention.tick() => {
                        let policy = sidecar.config.retention;
                        match sidecar.with_store(move |store, _| store.retain(&policy, now_ms())).await {
                            Ok(n) => { sidecar.counters.retained_deleted.inc_by(n); }
                            Err(e) => eprintln!("mcpgw sidecar: retention failed: {e:#}"),
                        }
                    }
                }
            }
        })
    };
    // One fan-out shard per core, as the runtime has workers.
    let shards = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).min(8);
    match fanout::FanOut::start(&sidecar, shards) {
        Ok(f) => {
            let _ = sidecar.fanout.set(f);
        }
        // Without shards, each subscription's own task writes its stream.
        Err(e) => eprintln!("mcpgw sidecar: /events fan-out threads not started ({e}); streams are written per task"),
    }
    serve::serve(listener.into(), Arc::clone(&sidecar), shutdown).await;
    timers.abort();
    sidecar.checkpoint(true).await?;
    Ok(())
}
