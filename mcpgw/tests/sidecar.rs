//! The sidecar over HTTP on loopback: only the filter's secret gets in, batches are
//! acknowledged after they are committed (and once, however often they are resent), and
//! `/audit` answers queries from the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use mcpgw::audit_store::{self, Retention, SqliteStore};
use mcpgw::sidecar::{self, Config, Sidecar, SECRET_HEADER};
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "test-secret-0123456789";

struct Running {
    url: String,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
}

async fn start(checkpoint_records: u64) -> Running {
    let dir = tempfile::tempdir().unwrap();
    start_with(
        Config {
            checkpoint_records,
            checkpoint_every: Duration::from_secs(3600),
            retention: Retention::default(),
            retention_every: Duration::from_secs(3600),
            ..Config::new(dir.path().join("audit.db"), dir.path().join("checkpoint.key"), SECRET.to_owned())
        },
        dir,
    )
    .await
}

/// A sidecar whose subscribers may leave 8 events unsent and whose bus holds 64.
async fn start_with_small_queues() -> Running {
    let dir = tempfile::tempdir().unwrap();
    start_with(
        Config {
            subscriber_queue: 8,
            bus_capacity: 64,
            checkpoint_every: Duration::from_secs(3600),
            retention_every: Duration::from_secs(3600),
            ..Config::new(dir.path().join("audit.db"), dir.path().join("checkpoint.key"), SECRET.to_owned())
        },
        dir,
    )
    .await
}

async fn start_with(config: Config, dir: tempfile::TempDir) -> Running {
    let sidecar = Sidecar::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sidecar::run(listener, sidecar, async {
        let _ = stopped.await;
    }));
    Running { url, dir, stop: Some(stop), task, client: reqwest::Client::new() }
}

fn record(i: u64, user: &str) -> Value {
    json!({"record_id": format!("r-{i}"), "timestamp": "2026-12-02T06:00:00.000Z", "user_id": user,
           "server": "github", "method": "tools/call", "target": "get_repository", "decision": "allow"})
}

impl Running {
    async fn ingest(&self, secret: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.client.post(format!("{}/ingest", self.url)).json(body);
        if let Some(s) = secret {
            req = req.header(SECRET_HEADER, s);
        }
        let reply = req.send().await.unwrap();
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let reply = self.client.get(format!("{}{path}", self.url)).header(SECRET_HEADER, SECRET).send().await.unwrap();
        (reply.status().as_u16(), reply.text().await.unwrap())
    }

    async fn stop(mut self) -> tempfile::TempDir {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
        self.dir
    }
}

#[tokio::test]
async fn only_the_filters_secret_gets_in() {
    let s = start(1000).await;
    let batch = json!([record(1, "alice")]);
    assert_eq!(s.ingest(None, &batch).await.0, 401);
    assert_eq!(s.ingest(Some("test-secret-0123456788"), &batch).await.0, 401);
    assert_eq!(s.ingest(Some("test-secret"), &batch).await.0, 401);
    for path in ["/audit", "/metrics"] {
        let reply = s.client.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(reply.status(), 401, "{path}");
    }
    let (status, body) = s.ingest(Some(SECRET), &batch).await;
    assert_eq!((status, body["committed"].as_u64()), (200, Some(1)));
    let (_, metrics) = s.get("/metrics").await;
    assert!(metrics.contains("mcpgw_sidecar_unauthorized_total 5"), "{metrics}");
    assert!(metrics.contains("mcpgw_sidecar_records_committed_total 1"), "{metrics}");
    // OpenMetrics text: typed families, gauges read from the store, the closing EOF.
    assert!(metrics.contains("# TYPE mcpgw_sidecar_subscribers gauge\nmcpgw_sidecar_subscribers 0"), "{metrics}");
    assert!(metrics.contains("mcpgw_sidecar_last_seq 1\n"), "{metrics}");
    let size = metrics.lines().find_map(|l| l.strip_prefix("mcpgw_sidecar_store_bytes ")).unwrap();
    assert!(size.parse::<u64>().unwrap() > 0, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn a_batch_is_acknowledged_once_committed_and_committed_once() {
    let s = start(1000).await;
    let batch = json!([record(1, "alice"), record(2, "bob"), record(3, "alice")]);
    let (status, body) = s.ingest(Some(SECRET), &batch).await;
    assert_eq!((status, body["committed"].as_u64(), body["last_seq"].as_u64()), (200, Some(3), Some(3)));
    // The filter did not get the answer and sends the batch again, with one more record.
    let again = json!([record(2, "bob"), record(3, "alice"), record(4, "bob")]);
    let (status, body) = s.ingest(Some(SECRET), &again).await;
    assert_eq!((status, body["committed"].as_u64(), body["last_seq"].as_u64()), (200, Some(1), Some(4)));
    // Refused batches change nothing.
    for bad in
        [json!({"not": "an array"}), json!([{"user_id": "no record_id"}]), json!([record(5, "x"), {"record_id": ""}])]
    {
        assert_eq!(s.ingest(Some(SECRET), &bad).await.0, 400, "{bad}");
    }
    let (status, page) = s.get("/audit?user=alice").await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&page).unwrap();
    let seqs: Vec<u64> = page["records"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 1]);
    let (_, next) = s.get("/audit?limit=1&cursor=3").await;
    let next: Value = serde_json::from_str(&next).unwrap();
    assert_eq!((next["records"][0]["seq"].as_u64(), next["next_cursor"].as_u64()), (Some(2), Some(2)));
    assert_eq!(s.get("/audit?colour=red").await.0, 400);
    assert_eq!(s.get("/audit?since=yesterday").await.0, 400);
    let dir = s.stop().await;
    // Shutting down signs what was not signed yet.
    let store = SqliteStore::open_existing(&dir.path().join("audit.db")).unwrap();
    let key = audit_store::parse_public_key(&std::fs::read_to_string(dir.path().join("checkpoint.key.pub")).unwrap())
        .unwrap();
    let report = audit_store::verify(&store, &key).unwrap().unwrap();
    assert_eq!((report.records, report.last_checkpoint, report.unsigned), (4, Some(4), 0));
}

#[tokio::test]
async fn checkpoints_are_signed_every_n_records() {
    let s = start(5).await;
    for i in 0..4 {
        let batch: Vec<Value> = (1..=3).map(|j| record(i * 3 + j, "alice")).collect();
        assert_eq!(s.ingest(Some(SECRET), &Value::Array(batch)).await.0, 200);
    }
    let (_, metrics) = s.get("/metrics").await;
    // After 6 (unsigned 6 >= 5) and after 12 (unsigned 6): two checkpoints.
    assert!(metrics.contains("mcpgw_sidecar_checkpoints_total 2"), "{metrics}");
    s.stop().await;
}

/// The real binary: killed without warning between batches and started again on the same
/// database, it has every acknowledged record once, and the chain verifies.
#[tokio::test]
async fn the_sidecar_process_survives_a_kill_without_losing_acknowledged_records() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let spawn = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mcpgw"))
            .args(["sidecar", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(dir.path().join("audit.db"))
            .arg("--checkpoint-key")
            .arg(dir.path().join("checkpoint.key"))
            .args(["--checkpoint-records", "7"])
            .env("MCPGW_SIDECAR_SECRET", SECRET)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut acknowledged = 0;
    for life in 0..3_u64 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = spawn(port);
        // It says when it listens.
        let stderr = child.stderr.take().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line).unwrap();
        assert!(line.contains("listening"), "{line}");
        for batch in 0..5_u64 {
            let records: Vec<Value> = (0..4).map(|i| record(life * 100 + batch * 10 + i, "alice")).collect();
            let reply = client
                .post(format!("http://127.0.0.1:{port}/ingest"))
                .header(SECRET_HEADER, SECRET)
                .json(&records)
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 200);
            acknowledged += 4;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let store = SqliteStore::open_existing(&dir.path().join("audit.db")).unwrap();
    let key = audit_store::parse_public_key(&std::fs::read_to_string(dir.path().join("checkpoint.key.pub")).unwrap())
        .unwrap();
    let report = audit_store::verify(&store, &key).unwrap().unwrap();
    assert_eq!(report.records, acknowledged);
    assert!(report.checkpoints >= 2, "{report:?}");
}

/// An `/events` subscription read as SSE: (event, id, data) triples.
struct Subscription {
    reply: reqwest::Response,
    buffer: String,
}

async fn subscribe(s: &Running, query: &str, user: &str, roles: &str, last_event_id: Option<u64>) -> Subscription {
    subscribe_on(&s.client, s, query, user, roles, last_event_id).await
}

async fn subscribe_on(
    client: &reqwest::Client,
    s: &Running,
    query: &str,
    user: &str,
    roles: &str,
    last_event_id: Option<u64>,
) -> Subscription {
    let mut req = client
        .get(format!("{}/events{query}", s.url))
        .header(SECRET_HEADER, SECRET)
        .header("x-mcp-user-id", user)
        .header("x-mcp-roles", roles);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let reply = req.send().await.unwrap();
    assert_eq!(reply.status(), 200);
    Subscription { reply, buffer: String::new() }
}

impl Subscription {
    /// The next event other than a heartbeat; `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, Option<u64>, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event == "heartbeat" || data.is_empty() {
                    continue;
                }
                return Some((event, id, serde_json::from_str(&data).unwrap()));
            }
            let chunk =
                tokio::time::timeout(Duration::from_secs(10), self.reply.chunk()).await.expect("no event within 10 s");
            match chunk.unwrap() {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    async fn ids(&mut self, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < n {
            let (event, id, record) = self.next().await.expect("stream ended");
            let Some(id) = id else { panic!("a `{event}` event without an id: {record}") };
            assert_eq!(record["seq"].as_u64(), Some(id));
            out.push(id);
        }
        out
    }
}

fn decided(i: u64, user: &str, decision: &str) -> Value {
    let mut r = record(i, user);
    r["decision"] = json!(decision);
    r
}

#[tokio::test]
async fn events_follow_filters_and_identity() {
    let s = start(1000).await;
    let mut admin = subscribe(&s, "", "carol", "admin", None).await;
    let mut alice = subscribe(&s, "", "alice", "developer", None).await;
    let mut denials = subscribe(&s, "?decisions=deny&servers=github", "dave", "admin,ops", None).await;
    let batch = json!([
        decided(1, "alice", "allow"),
        decided(2, "bob", "deny"),
        decided(3, "alice", "deny"),
        decided(4, "bob", "allow")
    ]);
    assert_eq!(s.ingest(Some(SECRET), &batch).await.0, 200);
    assert_eq!(admin.ids(4).await, [1, 2, 3, 4]);
    assert_eq!(alice.ids(2).await, [1, 3], "not an audit role: only its own records");
    let (event, id, record) = denials.next().await.unwrap();
    assert_eq!((event.as_str(), id, record["user_id"].as_str()), ("deny", Some(2), Some("bob")));
    assert_eq!(denials.ids(1).await, [3]);
    // Without the gateway's identity: refused.
    let anonymous = s.client.get(format!("{}/events", s.url)).header(SECRET_HEADER, SECRET).send().await.unwrap();
    assert_eq!(anonymous.status(), 403);
    let unknown = s
        .client
        .get(format!("{}/events?colour=red", s.url))
        .header(SECRET_HEADER, SECRET)
        .header("x-mcp-user-id", "carol")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
}

#[tokio::test]
async fn last_event_id_resumes_from_the_store_without_gap_or_duplicate() {
    let s = start(1000).await;
    let batch: Vec<Value> = (1..=6).map(|i| record(i, "alice")).collect();
    assert_eq!(s.ingest(Some(SECRET), &Value::Array(batch)).await.0, 200);
    // Saw up to 2 before it went away; 3..=6 come from the store, then 7.. live.
    let mut again = subscribe(&s, "", "carol", "admin", Some(2)).await;
    assert_eq!(again.ids(4).await, [3, 4, 5, 6]);
    let batch: Vec<Value> = (7..=9).map(|i| record(i, "alice")).collect();
    assert_eq!(s.ingest(Some(SECRET), &Value::Array(batch)).await.0, 200);
    assert_eq!(again.ids(3).await, [7, 8, 9]);
    // Records committed while a resuming subscriber replays are not delivered twice.
    let mut racing = subscribe(&s, "", "carol", "admin", Some(0)).await;
    let batch: Vec<Value> = (10..=12).map(|i| record(i, "alice")).collect();
    assert_eq!(s.ingest(Some(SECRET), &Value::Array(batch)).await.0, 200);
    assert_eq!(racing.ids(12).await, (1..=12).collect::<Vec<_>>());
    let bad = s
        .client
        .get(format!("{}/events", s.url))
        .header(SECRET_HEADER, SECRET)
        .header("x-mcp-user-id", "carol")
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// A subscriber reading the store slowly while more than the live bus holds is committed
/// goes back to the store for what the bus no longer has: no gap, no `lagged`.
#[tokio::test]
async fn a_replay_outrun_by_the_bus_goes_on_from_the_store() {
    let s = start_with_small_queues().await;
    let filler = "x".repeat(16 * 1024);
    let mut next = 1;
    let mut ingest = |n: u64| {
        let batch: Vec<Value> = (next..next + n)
            .map(|i| {
                let mut r = record(i, "alice");
                r["params"] = json!({ "text": filler });
                r
            })
            .collect();
        next += n;
        Value::Array(batch)
    };
    // More than the socket buffers take (the kernel caps them at a few MiB): the replay
    // waits for the client with these still to send.
    for _ in 0..30 {
        assert_eq!(s.ingest(Some(SECRET), &ingest(16)).await.0, 200);
    }
    let mut slow = subscribe(&s, "", "carol", "admin", Some(0)).await;
    // Meanwhile more than the bus holds is committed.
    for _ in 0..8 {
        assert_eq!(s.ingest(Some(SECRET), &ingest(16)).await.0, 200);
    }
    let total = 38 * 16;
    assert_eq!(slow.ids(total).await, (1..=total as u64).collect::<Vec<_>>());
    let (_, metrics) = s.get("/metrics").await;
    assert!(metrics.contains("mcpgw_sidecar_lagged_total 0"), "{metrics}");
}

#[tokio::test]
async fn a_stalled_subscriber_is_dropped_without_delaying_another() {
    let s = start_with_small_queues().await;
    let mut stalled = subscribe(&s, "", "carol", "admin", None).await;
    let mut reader = subscribe(&s, "", "dave", "admin", None).await;
    // Large records fill the stalled one's socket buffers, then its queue.
    let filler = "x".repeat(16 * 1024);
    let mut total = 0;
    for b in 0..20_u64 {
        let batch: Vec<Value> = (0..16)
            .map(|i| {
                let mut r = record(b * 100 + i, "alice");
                r["params"] = json!({ "text": filler });
                r
            })
            .collect();
        assert_eq!(s.ingest(Some(SECRET), &Value::Array(batch)).await.0, 200);
        total += 16;
        assert_eq!(reader.ids(16).await.len(), 16, "the reader keeps up");
    }
    // Its task drops it as soon as its queue is full; wait for that, not for a time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = s.get("/metrics").await;
        if metrics.contains("mcpgw_sidecar_lagged_total 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stalled one, read at last: what was queued, then `lagged`, then the end.
    let mut seen = 0;
    let mut last = None;
    while let Some((event, _, _)) = stalled.next().await {
        seen += 1;
        last = Some(event);
    }
    assert_eq!(last.as_deref(), Some("lagged"));
    assert!(seen < total, "{seen} of {total}");
}

/// Both of the sidecar's ways of writing a stream deliver the same events: its own writer
/// on a connection whose first request is the subscription (answered `connection:
/// close`), and hyper on a keep-alive connection that served a request before.
#[tokio::test]
async fn a_subscription_on_a_used_connection_gets_the_same_events() {
    let s = start(1000).await;
    let fresh = reqwest::Client::new();
    let mut own = subscribe_on(&fresh, &s, "", "carol", "admin", None).await;
    assert_eq!(own.reply.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    let used = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let metrics = used.get(format!("{}/metrics", s.url)).header(SECRET_HEADER, SECRET).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    metrics.text().await.unwrap();
    let mut reused = subscribe_on(&used, &s, "?decisions=deny", "carol", "admin", None).await;
    assert_eq!(reused.reply.headers().get("connection"), None, "served by hyper, kept alive");
    let batch = json!([decided(1, "alice", "allow"), decided(2, "bob", "deny"), decided(3, "alice", "deny")]);
    assert_eq!(s.ingest(Some(SECRET), &batch).await.0, 200);
    assert_eq!(own.ids(3).await, [1, 2, 3]);
    assert_eq!(reused.ids(2).await, [2, 3]);
    // Resuming on a used connection replays from the store as well.
    let again = used.get(format!("{}/metrics", s.url)).header(SECRET_HEADER, SECRET).send().await.unwrap();
    again.text().await.unwrap();
    let mut resumed = subscribe_on(&used, &s, "", "carol", "admin", Some(1)).await;
    assert_eq!(resumed.reply.headers().get("connection"), None);
    assert_eq!(resumed.ids(2).await, [2, 3]);
}

/// Stopping the sidecar ends every stream cleanly (the body's last chunk), on both ways of
/// writing one, after what was already committed.
#[tokio::test]
async fn stopping_the_sidecar_ends_every_stream() {
    let s = start(1000).await;
    let mut own = subscribe(&s, "", "carol", "admin", None).await;
    let used = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    used.get(format!("{}/metrics", s.url)).header(SECRET_HEADER, SECRET).send().await.unwrap().text().await.unwrap();
    let mut reused = subscribe_on(&used, &s, "", "carol", "admin", None).await;
    assert_eq!(s.ingest(Some(SECRET), &json!([record(1, "alice")])).await.0, 200);
    assert_eq!(own.ids(1).await, [1]);
    assert_eq!(reused.ids(1).await, [1]);
    s.stop().await;
    assert!(own.next().await.is_none(), "the sidecar's own stream ended");
    assert!(reused.next().await.is_none(), "hyper's stream ended");
}
