//! Audit records from the filter to the sidecar through a real Envoy: every request, allowed
//! or denied, lands in the store exactly once; while the sidecar is down the filter keeps
//! its records and sends them when it is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use common::envoy::Address;
use common::{post_in_session, post_json, tool_call, Gateway};
use mcpgw::audit_store::{AuditStore as _, Query, SqliteStore};
use mcpgw::sidecar::{self, Config, Sidecar};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET_ENV: &str = "MCPGW_TEST_SIDECAR_SECRET";
const SECRET: &str = "sidecar-test-secret-42";

/// The sidecar in this process, on a fixed address so it can be stopped and started again.
struct RunningSidecar {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_sidecar(addr: SocketAddr, dir: &Path) -> RunningSidecar {
    start_sidecar_on(tokio::net::TcpListener::bind(addr).await.unwrap(), dir)
}

fn start_sidecar_on(listener: impl Into<sidecar::Listener>, dir: &Path) -> RunningSidecar {
    let config = Config {
        checkpoint_every: Duration::from_secs(3600),
        retention_every: Duration::from_secs(3600),
        ..Config::new(dir.join("audit.db"), dir.join("checkpoint.key"), SECRET.to_owned())
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sidecar::run(listener.into(), Sidecar::open(config).unwrap(), async {
        let _ = stopped.await;
    }));
    RunningSidecar { stop, task }
}

impl RunningSidecar {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn gateway(sidecar: SocketAddr) -> Gateway {
    gateway_with_routes(sidecar, &[]).await
}

/// The gateway sending records to `sidecar`, with sidecar routes (server name, path prefix).
async fn gateway_with_routes(sidecar: impl Into<Address>, routes: &[(&str, &str)]) -> Gateway {
    let sidecar: Address = sidecar.into();
    Gateway::start_routed(
        |c| {
            c["audit"] = json!({"sidecar": {"cluster": "sidecar", "secret_env": SECRET_ENV, "flush_ms": 50}});
            for (name, prefix) in routes {
                c["servers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": name, "path_prefix": prefix, "kind": "sidecar"}));
            }
        },
        // As in envoy/demo.yaml: /events has a cluster of its own, so each subscription
        // has a connection of its own.
        vec![("sidecar".into(), sidecar.clone()), ("sidecar_events".into(), sidecar)],
        vec![(SECRET_ENV.into(), SECRET.into())],
        Vec::new(),
        routes
            .iter()
            .map(|(_, prefix)| {
                let cluster = if *prefix == "/events" { "sidecar_events" } else { "sidecar" };
                ((*prefix).to_owned(), cluster.to_owned())
            })
            .collect(),
    )
    .await
}

fn stored(db: &Path) -> Vec<Value> {
    let store = SqliteStore::open_existing(db).unwrap();
    let mut all = store.after(0, 100_000).unwrap();
    all.sort_by_key(|c| c.seq);
    all.iter().map(|c| c.value()).collect()
}

/// Waits until the store holds `n` records (the filter sends every 50 ms, and retries
/// with backoff while the sidecar is away).
async fn wait_for_records(db: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let records = if db.exists() { stored(db) } else { Vec::new() };
        if records.len() >= n {
            return records;
        }
        assert!(Instant::now() < deadline, "{} of {n} records in the store", records.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stat(gw: &Gateway, name: &str) -> u64 {
    let url = format!("http://127.0.0.1:{}/stats?filter={name}", gw.envoy.admin_port);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines().filter_map(|l| l.rsplit_once(": ")).filter_map(|(_, v)| v.trim().parse::<u64>().ok()).sum()
}

#[tokio::test]
async fn every_request_is_stored_once_with_its_decision_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let sidecar = start_sidecar(addr, dir.path()).await;
    let gw = gateway(addr).await;
    let admin = gw.token("alice", &["admin"]);
    let readonly = gw.token("bob", &["readonly"]);
    let url = gw.url("testjson");
    let allowed = post_json(
        &url,
        Some(&admin),
        &tool_call(1, "echo", json!({"text": "hi", "api_key": "sk-live-123456789012345678901"})),
    )
    .await;
    assert_eq!(allowed.status, 200);
    let denied = post_json(&url, Some(&readonly), &tool_call(2, "echo", json!({"text": "no"}))).await;
    assert_eq!(denied.status, 403);
    let unauthenticated = post_json(&url, None, &tool_call(3, "echo", json!({}))).await;
    assert_eq!(unauthenticated.status, 401);

    let records = wait_for_records(&dir.path().join("audit.db"), 3).await;
    assert_eq!(records.len(), 3, "{records:#?}");
    let decisions: Vec<(&str, u64)> =
        records.iter().map(|r| (r["decision"].as_str().unwrap_or("none"), r["status"].as_u64().unwrap())).collect();
    assert!(decisions.contains(&("allow", 200)) && decisions.contains(&("deny", 403)), "{decisions:?}");
    assert!(records.iter().any(|r| r["status"] == 401));
    // The same records as Envoy's log, by record_id.
    let logged: Vec<String> =
        gw.envoy.audit_records().iter().map(|r| r["record_id"].as_str().unwrap().to_owned()).collect();
    for r in &records {
        assert!(logged.contains(&r["record_id"].as_str().unwrap().to_owned()), "{r}");
    }
    // Each record carries the trace the gateway started; the upstream got the same one.
    let traced: Vec<&str> = records.iter().map(|r| r["trace_id"].as_str().unwrap()).collect();
    assert!(traced.iter().all(|t| t.len() == 32), "{traced:?}");
    let received = gw.testjson.requests.with_rpc_method("tools/call");
    assert_eq!(received.len(), 1);
    let traceparent = received[0].headers.iter().find(|(n, _)| n == "traceparent").map(|(_, v)| v.as_str()).unwrap();
    let allowed_record = records.iter().find(|r| r["decision"] == "allow").unwrap();
    assert_eq!(traceparent.split('-').nth(1), allowed_record["trace_id"].as_str(), "{traceparent}");
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(&admin) && !text.contains(&readonly) && !text.contains("sk-live"), "{text}");
    assert!(!text.contains(SECRET));
    // Nothing is sent twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored(&dir.path().join("audit.db")).len(), 3);
    assert_eq!(stat(&gw, "audit_records_acknowledged").await, 3);
    drop(gw);
    sidecar.stop().await;
}

#[tokio::test]
async fn records_made_while_the_sidecar_is_down_arrive_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let db: PathBuf = dir.path().join("audit.db");
    let sidecar = start_sidecar(addr, dir.path()).await;
    let gw = gateway(addr).await;
    let token = gw.token("alice", &["admin"]);
    let url = gw.url("testjson");
    let mut made = 0;
    for i in 0..5 {
        assert_eq!(post_json(&url, Some(&token), &tool_call(i, "echo", json!({"text": "up"}))).await.status, 200);
        made += 1;
    }
    wait_for_records(&db, made).await;
    sidecar.stop().await;
    // Down: calls still succeed, and their records wait in the filter.
    for i in 0..20 {
        assert_eq!(
            post_json(&url, Some(&token), &tool_call(100 + i, "echo", json!({"text": "down"}))).await.status,
            200
        );
        made += 1;
    }
    // Wait until the filter has tried and failed at least once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stat(&gw, "audit_records_retried").await == 0 {
        assert!(Instant::now() < deadline, "the filter never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sidecar = start_sidecar(addr, dir.path()).await;
    for i in 0..5 {
        assert_eq!(
            post_json(&url, Some(&token), &tool_call(200 + i, "echo", json!({"text": "back"}))).await.status,
            200
        );
        made += 1;
    }
    let records = wait_for_records(&db, made).await;
    assert_eq!(records.len(), made, "every call once");
    let mut ids: Vec<&str> = records.iter().map(|r| r["record_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), made);
    assert_eq!(stat(&gw, "audit_records_dropped").await, 0);
    let store = SqliteStore::open_existing(&db).unwrap();
    let downs = store.query(&Query { limit: 1000, ..Query::default() }).unwrap();
    assert_eq!(downs.iter().filter(|c| c.record.contains("\"down\"")).count(), 20);
    drop(gw);
    sidecar.stop().await;
}

/// `/audit` is a sidecar route: authenticated and role-checked by the filter, which adds
/// the sidecar's secret (and replaces a client's copy of it).
#[tokio::test]
async fn the_audit_api_is_reached_through_the_gateway_by_its_role_only() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let sidecar = start_sidecar(addr, dir.path()).await;
    let gw = gateway_with_routes(addr, &[("audit", "/audit")]).await;
    let admin = gw.token("carol", &["admin"]);
    let developer = gw.token("alice", &["developer"]);
    assert_eq!(
        post_json(&gw.url("testjson"), Some(&admin), &tool_call(1, "echo", json!({"text": "x"}))).await.status,
        200
    );
    wait_for_records(&dir.path().join("audit.db"), 1).await;

    let url = gw.envoy.url("/audit?user=carol&method=tools/call");
    let get = |token: Option<String>, extra: Vec<(&'static str, &'static str)>| {
        let url = url.clone();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers: Vec<(&str, &str)> = extra;
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            common::send("GET", &url, &headers, Vec::new()).await
        }
    };
    let page = get(Some(admin.clone()), vec![("x-mcp-sidecar-secret", "a-client-guess-000000")]).await;
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    let page: Value = serde_json::from_slice(&page.body).unwrap();
    let records = page["records"].as_array().unwrap();
    assert!(!records.is_empty() && records.iter().all(|r| r["user_id"] == "carol"), "{page}");
    assert_eq!(get(Some(developer), vec![]).await.status, 403);
    assert_eq!(get(None, vec![]).await.status, 401);
    let post = common::send(
        "POST",
        &url,
        &[("authorization", &format!("Bearer {admin}")), ("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(post.status, 405);
    // Straight to the sidecar, around Envoy: refused.
    let direct = reqwest::get(format!("http://{addr}/audit")).await.unwrap();
    assert_eq!(direct.status(), 401);
    drop(gw);
    sidecar.stop().await;
}

/// `/events` through Envoy: an admin's subscription sees a call it did not make, as it is
/// committed; the stream passes the filter unchanged.
#[tokio::test]
async fn live_events_reach_a_subscriber_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let sidecar = start_sidecar(addr, dir.path()).await;
    let gw = gateway_with_routes(addr, &[("events", "/events")]).await;
    an_admin_watching_events_sees_erins_call(&gw).await;
    drop(gw);
    sidecar.stop().await;
}

/// The sidecar on a Unix socket (Envoy's `pipe` address): records arrive and are committed,
/// and `/events` streams through the gateway, as over TCP.
#[tokio::test]
async fn the_sidecar_serves_the_gateway_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.sock");
    let sidecar = start_sidecar_on(tokio::net::UnixListener::bind(&path).unwrap(), dir.path());
    let gw = gateway_with_routes(Address::Pipe(path.clone()), &[("events", "/events")]).await;
    an_admin_watching_events_sees_erins_call(&gw).await;
    drop(gw);
    sidecar.stop().await;
    let records = stored(&dir.path().join("audit.db"));
    assert!(records.iter().any(|r| r["user_id"] == "erin" && r["target"] == "echo"), "{records:?}");
}

/// carol (admin) subscribes to `/events` through the gateway; erin calls `echo`; carol's
/// stream shows erin's call as an `allow` event.
async fn an_admin_watching_events_sees_erins_call(gw: &Gateway) {
    let admin = gw.token("carol", &["admin"]);
    let caller = gw.token("erin", &["admin"]);
    let mut stream = reqwest::Client::new()
        .get(gw.envoy.url("/events?methods=tools/call"))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(
        post_json(&gw.url("testjson"), Some(&caller), &tool_call(7, "echo", json!({"text": "live"}))).await.status,
        200
    );
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains("\"user_id\":\"erin\"") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk()).await.expect("no event").unwrap().expect("stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: allow") && text.contains("\"target\":\"echo\""), "{text}");
}

#[tokio::test]
async fn each_record_states_the_outcome_at_three_levels() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let sidecar = start_sidecar(addr, dir.path()).await;
    let gw = Gateway::start_routed(
        |c| {
            c["audit"] = json!({
                "sidecar": {"cluster": "sidecar", "secret_env": SECRET_ENV, "flush_ms": 50},
                "reply_read_bytes": 4096,
            });
        },
        vec![("sidecar".into(), addr.into())],
        vec![(SECRET_ENV.into(), SECRET.into())],
        Vec::new(),
        Vec::new(),
    )
    .await;
    let admin = gw.token("alice", &["admin"]);
    let readonly = gw.token("bob", &["readonly"]);
    let json_url = gw.url("testjson");
    // JSON replies: a result, a JSON-RPC error (bad arguments), a failed tool, a reply
    // longer than the read limit, and a refusal by the gateway.
    let calls = [
        (1, &admin, tool_call(1, "echo", json!({"text": "hi", "password": "hunter2"}))),
        (2, &admin, tool_call(2, "no_such_tool", json!({}))),
        (3, &admin, tool_call(3, "stepped", json!({"steps": 1}))),
        (4, &admin, tool_call(4, "echo", json!({"text": "x".repeat(8000)}))),
        (5, &readonly, tool_call(5, "echo", json!({"text": "no"}))),
    ];
    for (_, token, call) in &calls {
        post_json(&json_url, Some(token), call).await;
    }
    // SSE replies, in a session on the streaming server.
    let sse_url = gw.url("test");
    let init = json!({"jsonrpc": "2.0", "id": 10, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let opened = post_json(&sse_url, Some(&admin), &init).await;
    assert_eq!(opened.status, 200);
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post_in_session(&sse_url, &admin, &session, &initialized).await.status, 202);
    let failed = post_in_session(&sse_url, &admin, &session, &tool_call(11, "stepped", json!({"steps": 1}))).await;
    assert!(String::from_utf8_lossy(&failed.body).contains("isError"), "{:?}", failed.body);
    post_in_session(&sse_url, &admin, &session, &tool_call(12, "echo", json!({"text": "sse"}))).await;

    let records = wait_for_records(&dir.path().join("audit.db"), 9).await;
    assert_eq!(records.len(), 9, "{records:#?}");
    let by_id = |id: i64| {
        let found: Vec<&Value> = records.iter().filter(|r| r["jsonrpc_id"] == id).collect();
        assert_eq!(found.len(), 1, "one record for id {id}: {records:#?}");
        found[0].clone()
    };
    let ok = by_id(1);
    assert_eq!(
        (ok["outcome"].as_str(), ok["status"].as_u64(), ok["success"].as_bool()),
        (Some("ok"), Some(200), Some(true))
    );
    assert_eq!(ok["is_error"], false);
    assert_eq!(ok["upstream_cluster"], "testjson", "{ok}");
    assert!(ok["upstream_host"].as_str().unwrap().starts_with("127.0.0.1:"), "{ok}");
    assert!(ok["bytes_in"].as_u64().unwrap() > 50 && ok["bytes_out"].as_u64().unwrap() > 20, "{ok}");
    let error = by_id(2);
    assert_eq!(error["outcome"], "error", "{error}");
    assert_eq!(error["error_code"], -32602, "{error}");
    assert!(error["error_message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    assert_eq!(error["success"], false);
    let tool_error = by_id(3);
    assert_eq!((tool_error["outcome"].as_str(), tool_error["is_error"].as_bool()), (Some("tool_error"), Some(true)));
    assert_eq!(tool_error["status"], 200);
    let large = by_id(4);
    assert_eq!(large["outcome"], "unknown", "{large}");
    assert_eq!(large["outcome_detail"], "reply over the read limit");
    // Refused at headers time (bob may not use this server): the body was never read.
    let refused = records.iter().find(|r| r["user_id"] == "bob").unwrap();
    assert_eq!((refused["decision"].as_str(), refused["outcome"].as_str()), (Some("deny"), Some("error")));
    assert_eq!(refused["error_code"], -32003);
    assert!(refused["upstream_cluster"].is_null() && refused["upstream_host"].is_null(), "{refused}");
    let sse_failed = by_id(11);
    assert_eq!(sse_failed["outcome"], "tool_error", "{sse_failed}");
    assert_eq!(sse_failed["upstream_cluster"], "test");
    let sse_ok = by_id(12);
    assert_eq!(sse_ok["outcome"], "ok", "{sse_ok}");
    let notification = records.iter().find(|r| r["method"] == "notifications/initialized").unwrap();
    assert_eq!((notification["outcome"].as_str(), notification["status"].as_u64()), (Some("ok"), Some(202)));
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("hunter2") && !text.contains(&admin) && !text.contains(SECRET), "{text}");
    drop(gw);
    sidecar.stop().await;
}

/// The real sidecar binary on `addr`; it is killed (SIGKILL) when dropped.
struct SidecarProcess(std::process::Child);

impl SidecarProcess {
    fn start(addr: SocketAddr, dir: &Path) -> SidecarProcess {
        let mut child = std::process::Command::new(common::envoy::mcpgw_binary())
            .args(["sidecar", "--listen", &addr.to_string(), "--db"])
            .arg(dir.join("audit.db"))
            .arg("--checkpoint-key")
            .arg(dir.join("checkpoint.key"))
            .args(["--checkpoint-records", "10"])
            .env("MCPGW_SIDECAR_SECRET", SECRET)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It says when it listens.
        let mut line = String::new();
        let stderr = child.stderr.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line).unwrap();
        assert!(line.contains("listening"), "{line}");
        SidecarProcess(child)
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sidecar process is killed without warning while a client keeps calling, then
/// started again on the same database: every call the client made is in the store once
/// (a batch committed but not acknowledged before the kill is resent and not stored
/// twice), nothing was dropped, and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_killed_under_load_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let db = dir.path().join("audit.db");
    let sidecar = SidecarProcess::start(addr, dir.path());
    let gw = gateway(addr).await;
    let token = gw.token("alice", &["admin"]);
    let url = gw.url("testjson");
    // The client calls without pause until told to stop, counting what it made.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = {
        let (url, token, made) = (url.clone(), token.clone(), Arc::clone(&made));
        tokio::spawn(async move {
            let mut i = 0;
            while !*stopped.borrow_and_update() {
                let reply = post_json(&url, Some(&token), &tool_call(i, "echo", json!({"text": "load"}))).await;
                assert_eq!(reply.status, 200, "a call failed while the sidecar was away");
                made.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    let calls = || made.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = |what: &str| assert!(Instant::now() < deadline, "still waiting: {what}");
    // Up: records are committing.
    while stored_count(&db) < 20 {
        waiting("records committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sidecar);
    let at_kill = calls();
    // Down: the client goes on; the filter fails to send and retries.
    while stat(&gw, "audit_records_retried").await == 0 || calls() < at_kill + 20 {
        waiting("a failed send retried, 20 calls made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sidecar = SidecarProcess::start(addr, dir.path());
    let at_restart = calls();
    while calls() < at_restart + 20 {
        waiting("20 calls after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    client.await.unwrap();
    let made = calls();
    let records = wait_for_records(&db, made).await;
    assert_eq!(records.len(), made, "every call once: {} stored of {made}", records.len());
    let mut ids: Vec<&str> = records.iter().map(|r| r["record_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), made);
    assert_eq!(stat(&gw, "audit_records_dropped").await, 0);
    drop(sidecar);
    let out = std::process::Command::new(common::envoy::mcpgw_binary())
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .arg("--public-key")
        .arg(dir.path().join("checkpoint.key.pub"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("({made} records)")), "{said}");
}

fn stored_count(db: &Path) -> usize {
    if db.exists() {
        stored(db).len()
    } else {
        0
    }
}
