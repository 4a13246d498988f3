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
    let config = Config {
        db: dir.path().join("audit.db"),
        checkpoint_key: dir.path().join("checkpoint.key"),
        secret: SECRET.to_owned(),
        checkpoint_records,
        checkpoint_every: Duration::from_secs(3600),
        retention: Retention::default(),
        retention_every: Duration::from_secs(3600),
    };
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
