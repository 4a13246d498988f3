//! The audit store on a real SQLite file: the chain, the signed checkpoints, retention and
//! queries, and `mcpgw audit verify` naming the first bad record after someone edits the
//! database directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use mcpgw::audit_store::{chain_hash, verify, AuditStore as _, CheckpointKey, Failure, Query, Retention, SqliteStore};
use rusqlite::params;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const NOW: i64 = 1_780_000_000_000;

fn record(i: u64, user: &str, tool: &str, decision: &str) -> Value {
    json!({
        "record_id": format!("r-{i}"),
        "timestamp": chrono::DateTime::from_timestamp_millis(NOW + i as i64 * 1000).unwrap().to_rfc3339(),
        "user_id": user,
        "server": "github",
        "http_method": "POST",
        "method": "tools/call",
        "target": tool,
        "decision": decision,
        "params": {"repository": format!("acme/r{i}")},
    })
}

struct Trail {
    _dir: tempfile::TempDir,
    db: PathBuf,
    key: CheckpointKey,
    public: PathBuf,
}

/// `n` records, with a checkpoint after every `every`.
fn trail(n: u64, every: u64) -> Trail {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let key_path = dir.path().join("checkpoint.key");
    let key = CheckpointKey::load_or_create(&key_path).unwrap();
    let mut store = SqliteStore::open(&db).unwrap();
    for i in 1..=n {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        let decision = if i % 3 == 0 { "deny" } else { "allow" };
        store
            .append(&[record(i, user, if i % 5 == 0 { "delete_repository" } else { "get_repository" }, decision)], NOW)
            .unwrap();
        if i % every == 0 {
            store.checkpoint(&key, NOW + i as i64).unwrap().unwrap();
        }
    }
    let public = mcpgw::audit_store::public_key_path(&key_path);
    Trail { _dir: dir, db, key, public }
}

fn check(t: &Trail) -> Result<mcpgw::audit_store::Report, Failure> {
    verify(&SqliteStore::open_existing(&t.db).unwrap(), &t.key.public()).unwrap()
}

/// Another connection, as someone with write access to the file would have.
fn tamper(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn cli_verify(t: &Trail) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcpgw"))
        .args(["audit", "verify", "--db"])
        .arg(&t.db)
        .arg("--public-key")
        .arg(&t.public)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn an_untouched_trail_verifies_and_says_what_is_not_signed_yet() {
    let t = trail(25, 10);
    let report = check(&t).unwrap();
    assert_eq!((report.records, report.first_seq, report.last_seq), (25, Some(1), Some(25)));
    assert_eq!((report.checkpoints, report.last_checkpoint, report.unsigned), (2, Some(20), 5));
    let (code, out) = cli_verify(&t);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("records 1 to 25") && out.contains("last 5 record(s)"), "{out}");
}

#[test]
fn a_resent_batch_is_committed_once() {
    let t = trail(3, 10);
    let mut store = SqliteStore::open(&t.db).unwrap();
    let again =
        store.append(&[record(2, "alice", "get_repository", "allow"), record(4, "bob", "x", "allow")], NOW).unwrap();
    assert_eq!(again.iter().map(|c| c.seq).collect::<Vec<_>>(), [4], "only the new record gets a number");
    // Within one batch too.
    let twice = store.append(&[record(5, "a", "x", "allow"), record(5, "a", "x", "allow")], NOW).unwrap();
    assert_eq!(twice.len(), 1);
    assert!(store.append(&[json!({"user_id": "no id"})], NOW).is_err());
    assert_eq!(store.last_seq().unwrap(), 5);
    assert!(check(&t).is_ok());
}

#[test]
fn an_edited_record_is_named() {
    let t = trail(30, 10);
    tamper(&t.db, "UPDATE records SET record = replace(record, 'acme/r17', 'acme/other') WHERE seq = 17");
    assert_eq!(check(&t), Err(Failure::Altered { seq: 17 }));
    let (code, out) = cli_verify(&t);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record 17"), "{out}");
}

#[test]
fn an_edited_query_column_is_named() {
    let t = trail(12, 10);
    tamper(&t.db, "UPDATE records SET decision = 'allow' WHERE seq = 9");
    assert_eq!(check(&t), Err(Failure::Column { seq: 9, column: "decision" }));
    tamper(
        &t.db,
        "UPDATE records SET decision = 'deny' WHERE seq = 9; UPDATE records SET user = 'mallory' WHERE seq = 4",
    );
    assert_eq!(check(&t), Err(Failure::Column { seq: 4, column: "user" }));
}

#[test]
fn a_deleted_record_is_named() {
    let t = trail(30, 10);
    tamper(&t.db, "DELETE FROM records WHERE seq = 14");
    assert_eq!(check(&t), Err(Failure::Missing { from: 14, to: 14 }));
    let (code, out) = cli_verify(&t);
    assert_eq!(code, 1);
    assert!(out.contains("record 14: missing"), "{out}");
}

#[test]
fn an_inserted_record_is_named() {
    let t = trail(30, 10);
    // Make room at 12 and put a forged record there, chained correctly to record 11.
    let conn = rusqlite::Connection::open(&t.db).unwrap();
    conn.execute_batch("UPDATE records SET seq = -seq WHERE seq >= 12; UPDATE records SET seq = 1 - seq WHERE seq < 0")
        .unwrap();
    let prev: Vec<u8> = conn.query_row("SELECT hash FROM records WHERE seq = 11", [], |r| r.get(0)).unwrap();
    let forged = record(99, "alice", "get_repository", "allow").to_string();
    let hash = chain_hash(&prev.try_into().unwrap(), 12, &forged);
    conn.execute(
        "INSERT INTO records (seq, rid, ts_ms, user, server, method, target, decision, record, hash)
         VALUES (12, 'r-99', ?1, 'alice', 'github', 'tools/call', 'get_repository', 'allow', ?2, ?3)",
        params![NOW + 99_000, forged, hash.as_slice()],
    )
    .unwrap();
    drop(conn);
    // The forged one chains, the one it pushed along does not.
    assert_eq!(check(&t), Err(Failure::Altered { seq: 13 }));
}

#[test]
fn swapped_records_are_named() {
    let t = trail(30, 10);
    tamper(
        &t.db,
        "UPDATE records SET seq = -1 WHERE seq = 22; UPDATE records SET seq = 22 WHERE seq = 23;
         UPDATE records SET seq = 23 WHERE seq = -1",
    );
    assert_eq!(check(&t), Err(Failure::Altered { seq: 22 }));
}

/// Whoever edits a record and recomputes every hash after it still cannot sign.
#[test]
fn a_recomputed_chain_fails_on_the_next_checkpoint() {
    let t = trail(30, 10);
    let conn = rusqlite::Connection::open(&t.db).unwrap();
    conn.execute("UPDATE records SET record = replace(record, 'acme/r15', 'acme/evil') WHERE seq = 15", []).unwrap();
    let mut prev: [u8; 32] = conn
        .query_row("SELECT hash FROM records WHERE seq = 14", [], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .try_into()
        .unwrap();
    for seq in 15..=30_u64 {
        let text: String = conn.query_row("SELECT record FROM records WHERE seq = ?1", [seq], |r| r.get(0)).unwrap();
        let hash = chain_hash(&prev, seq, &text);
        conn.execute("UPDATE records SET hash = ?1 WHERE seq = ?2", params![hash.as_slice(), seq]).unwrap();
        prev = hash;
    }
    drop(conn);
    assert_eq!(check(&t), Err(Failure::Recomputed { after: Some(10), checkpoint: 20 }));
    // Re-signing with another key does not help.
    let other = CheckpointKey::generate();
    let forged = other.sign(20, prev, NOW);
    tamper(
        &t.db,
        &format!("UPDATE checkpoints SET signature = x'{}' WHERE seq = 20", mcpgw::audit_store::hex(&forged.signature)),
    );
    assert_eq!(check(&t), Err(Failure::Signature { checkpoint: 20 }));
    let (code, out) = cli_verify(&t);
    assert_eq!(code, 1);
    assert!(out.contains("checkpoint at record 20"), "{out}");
}

#[test]
fn cutting_off_signed_records_is_detected() {
    let t = trail(30, 10);
    tamper(&t.db, "DELETE FROM records WHERE seq > 25");
    assert_eq!(check(&t), Err(Failure::Truncated { checkpoint: 30, last: Some(25) }));
    // Removing the head without an anchoring checkpoint is detected too.
    let t = trail(30, 10);
    tamper(&t.db, "DELETE FROM records WHERE seq <= 5");
    assert_eq!(check(&t), Err(Failure::Unanchored { first: 6 }));
}

#[test]
fn retention_deletes_whole_signed_spans_and_the_rest_still_verifies() {
    let t = trail(35, 10);
    let mut store = SqliteStore::open(&t.db).unwrap();
    // Keep at least 12: the newest checkpoint at or below record 23 is 20.
    assert_eq!(store.retain(&Retention { max_records: Some(12), max_age_ms: None }, NOW).unwrap(), 20);
    let report = check(&t).unwrap();
    assert_eq!((report.first_seq, report.last_seq, report.records), (Some(21), Some(35), 15));
    // New records continue the chain.
    store.append(&[record(36, "alice", "get_repository", "allow")], NOW).unwrap();
    assert_eq!(check(&t).unwrap().last_seq, Some(36));
    // By age: records 1..=35 are older than NOW + 35.5 s - 5 s; only checkpointed spans go.
    let deleted = store.retain(&Retention { max_records: None, max_age_ms: Some(5_000) }, NOW + 35_500).unwrap();
    assert_eq!(deleted, 10, "21..=30 under the checkpoint at 30");
    assert_eq!(check(&t).unwrap().first_seq, Some(31));
    // Everything deleted: the anchor remains and numbering goes on.
    store.checkpoint(&t.key, NOW).unwrap().unwrap();
    store.retain(&Retention { max_records: Some(0), max_age_ms: None }, NOW).unwrap();
    assert_eq!(check(&t).unwrap().records, 0);
    let next = store.append(&[record(37, "bob", "x", "allow")], NOW).unwrap();
    assert_eq!(next[0].seq, 37);
    assert_eq!(check(&t).unwrap().first_seq, Some(37));
}

#[test]
fn queries_filter_and_page() {
    let t = trail(40, 10);
    let store = SqliteStore::open(&t.db).unwrap();
    let seqs = |q: &Query| store.query(q).unwrap().iter().map(|c| c.seq).collect::<Vec<_>>();
    let alice = Query { user: Some("alice".into()), limit: 5, ..Query::default() };
    assert_eq!(seqs(&alice), [40, 38, 36, 34, 32]);
    assert_eq!(seqs(&Query { before: Some(32), ..alice.clone() }), [30, 28, 26, 24, 22]);
    let denied_deletes =
        Query { tool: Some("delete_repository".into()), decision: Some("deny".into()), limit: 100, ..Query::default() };
    assert_eq!(seqs(&denied_deletes), [30, 15]);
    let window = Query { since_ms: Some(NOW + 10_000), until_ms: Some(NOW + 13_000), limit: 100, ..Query::default() };
    assert_eq!(seqs(&window), [12, 11, 10]);
    // A filter value is data, never SQL.
    let injection = Query { user: Some("alice' OR '1'='1".into()), limit: 100, ..Query::default() };
    assert!(seqs(&injection).is_empty());

    let out = Command::new(env!("CARGO_BIN_EXE_mcpgw"))
        .args(["audit", "query", "--user", "alice", "--limit", "2", "--db"])
        .arg(&t.db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["records"][0]["seq"], 40);
    assert_eq!(page["records"][1]["params"]["repository"], "acme/r38");
    assert_eq!(page["next_cursor"], 38);
}
