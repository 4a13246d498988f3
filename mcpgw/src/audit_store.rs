//! The sidecar's audit store: records in sequence, chained by hash, with signed checkpoints.
//!
//! Every record gets the next sequence number and `hash = SHA-256(previous hash || seq as 8
//! big-endian bytes || record JSON)`, the first one chained to 32 zero bytes. Every so often
//! the sidecar signs the latest `(seq, hash)` with an Ed25519 key kept outside the database
//! (a [`Checkpoint`]). [`verify`] recomputes the chain from the stored JSON:
//! - an edited, moved or inserted record no longer matches its stored hash, or, if whoever
//!   edited it also recomputed every hash after it, no longer matches the next checkpoint,
//!   which cannot be re-signed without the key;
//! - a deleted record leaves a gap in the sequence;
//! - an edited query column (user, server, ...) no longer matches the record it came from.
//!
//! What it cannot detect: records after the last checkpoint being cut off, or replaced by
//! a recomputed chain, together with that part of the chain (nothing signed covers them);
//! and whole checkpointed spans at the start being deleted as if by retention. Shipping
//! each checkpoint somewhere the database's writers cannot reach closes both gaps.
//!
//! The default store is SQLite ([`SqliteStore`], WAL, every commit synced); the
//! [`AuditStore`] trait is what a server database for many replicas would implement.

use anyhow::{anyhow, bail, Context as _, Result};
use ed25519_compact::{KeyPair, PublicKey, Seed, Signature};
use rusqlite::{params, Connection, OptionalExtension as _, ToSql};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// What the first record is chained to.
pub const GENESIS: [u8; 32] = [0; 32];

/// What a checkpoint signature covers, before `seq`, `hash` and `created_ms`.
const CHECKPOINT_CONTEXT: &[u8] = b"mcpgw audit checkpoint v1\n";

/// A record as committed: its sequence number, its JSON (exactly as hashed) and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub seq: u64,
    pub record: String,
    pub hash: [u8; 32],
}

impl Committed {
    /// The record's JSON value.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.record).unwrap_or(Value::Null)
    }
}

/// The hash of the record at `seq` chained after `prev`.
pub fn chain_hash(prev: &[u8; 32], seq: u64, record: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(record.as_bytes());
    h.finalize().into()
}

/// A signed `(seq, hash)`: the chain up to `seq` as it was when the sidecar signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: [u8; 32],
    pub created_ms: i64,
    pub signature: Vec<u8>,
}

impl Checkpoint {
    fn message(seq: u64, hash: &[u8; 32], created_ms: i64) -> Vec<u8> {
        let mut m = CHECKPOINT_CONTEXT.to_vec();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(hash);
        m.extend_from_slice(&created_ms.to_be_bytes());
        m
    }

    /// Whether `key` signed this checkpoint.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let Ok(signature) = Signature::from_slice(&self.signature) else {
            return false;
        };
        key.verify(Self::message(self.seq, &self.hash, self.created_ms), &signature).is_ok()
    }
}

/// The Ed25519 key that signs checkpoints. Its file holds the 32-byte seed in hex (mode
/// 0600); the public key, in hex, goes beside it with `.pub` appended, for `audit verify`.
pub struct CheckpointKey {
    pair: KeyPair,
}

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointKey").field("public", &hex(self.pair.pk.as_ref())).finish_non_exhaustive()
    }
}

impl CheckpointKey {
    pub fn from_seed(seed: [u8; 32]) -> CheckpointKey {
        CheckpointKey { pair: KeyPair::from_seed(Seed::new(seed)) }
    }

    /// A new random key.
    pub fn generate() -> CheckpointKey {
        let mut seed = [0; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        CheckpointKey::from_seed(seed)
    }

    /// Reads the key at `path`, or creates it (and `<path>.pub`) if there is none.
    pub fn load_or_create(path: &Path) -> Result<CheckpointKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let seed = unhex(text.trim())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| anyhow!("{}: not a 32-byte Ed25519 seed in hex", path.display()))?;
                Ok(CheckpointKey::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = CheckpointKey::generate();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                writeln!(file, "{}", hex(key.pair.sk.seed().as_ref()))?;
                let public = public_key_path(path);
                std::fs::write(&public, format!("{}\n", key.public_hex()))
                    .with_context(|| format!("cannot write {}", public.display()))?;
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn public(&self) -> PublicKey {
        self.pair.pk
    }

    pub fn public_hex(&self) -> String {
        hex(self.pair.pk.as_ref())
    }

    /// Signs `(seq, hash)` at `created_ms`.
    pub fn sign(&self, seq: u64, hash: [u8; 32], created_ms: i64) -> Checkpoint {
        let signature = self.pair.sk.sign(Checkpoint::message(seq, &hash, created_ms), None);
        Checkpoint { seq, hash, created_ms, signature: signature.to_vec() }
    }
}

/// Where the public key of the checkpoint key at `path` is written.
pub fn public_key_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

/// A public key from its hex form (a `.pub` file's content).
pub fn parse_public_key(text: &str) -> Result<PublicKey> {
    let bytes = unhex(text.trim()).ok_or_else(|| anyhow!("the public key is not hex"))?;
    PublicKey::from_slice(&bytes).map_err(|_| anyhow!("the public key is not 32 bytes"))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

/// What `/audit` and `mcpgw audit query` select. Empty fields select everything; results
/// come newest first.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub user: Option<String>,
    pub server: Option<String>,
    pub method: Option<String>,
    /// A tool name: `tools/call` records for that tool.
    pub tool: Option<String>,
    pub decision: Option<String>,
    /// Milliseconds since the epoch, inclusive.
    pub since_ms: Option<i64>,
    /// Milliseconds since the epoch, exclusive.
    pub until_ms: Option<i64>,
    /// Only records before this sequence number (the cursor of the previous page).
    pub before: Option<u64>,
    pub limit: usize,
}

/// Most records one query returns.
pub const MAX_QUERY_LIMIT: usize = 1000;

/// Deletes old records, in whole checkpointed spans so that what remains still verifies:
/// records up to the newest checkpoint that every removed record lies under.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub max_age_ms: Option<i64>,
    pub max_records: Option<u64>,
}

/// Where an audit trail lives.
pub trait AuditStore {
    /// Commits `records` (JSON objects, each with a unique non-empty `record_id`) in order.
    /// A record whose `record_id` is already stored is skipped: the filter resends a batch
    /// whose acknowledgement it did not get. Returns what was committed.
    fn append(&mut self, records: &[Value], now_ms: i64) -> Result<Vec<Committed>>;
    /// Records after `seq`, in order, at most `limit`.
    fn after(&self, seq: u64, limit: usize) -> Result<Vec<Committed>>;
    fn query(&self, query: &Query) -> Result<Vec<Committed>>;
    /// The last sequence number given out (0 when none).
    fn last_seq(&self) -> Result<u64>;
    /// Records since the last checkpoint.
    fn unsigned(&self) -> Result<u64>;
    /// Signs the latest record, unless it is signed already.
    fn checkpoint(&mut self, key: &CheckpointKey, now_ms: i64) -> Result<Option<Checkpoint>>;
    /// Applies `retention`; returns how many records were deleted.
    fn retain(&mut self, retention: &Retention, now_ms: i64) -> Result<u64>;
}

/// The query columns of a record, taken from its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Columns {
    rid: String,
    ts_ms: i64,
    user: Option<String>,
    server: Option<String>,
    method: Option<String>,
    target: Option<String>,
    decision: Option<String>,
}

impl Columns {
    fn of(record: &Value, now_ms: i64) -> Result<Columns> {
        let text = |k: &str| record.get(k).and_then(Value::as_str).map(str::to_owned);
        let rid = text("record_id").filter(|r| !r.is_empty()).ok_or_else(|| anyhow!("a record has no record_id"))?;
        let ts_ms = record
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(now_ms, |t| t.timestamp_millis());
        Ok(Columns {
            rid,
            ts_ms,
            user: text("user_id"),
            server: text("server"),
            method: text("method"),
            target: text("target"),
            decision: text("decision"),
        })
    }
}

/// SQLite, in WAL mode with every commit synced.
pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    rid TEXT NOT NULL UNIQUE,
    ts_ms INTEGER NOT NULL,
    user TEXT,
    server TEXT,
    method TEXT,
    target TEXT,
    decision TEXT,
    record TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_user ON records (user, seq);
CREATE INDEX IF NOT EXISTS records_server ON records (server, seq);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts_ms);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    signature BLOB NOT NULL
);
";

fn hash_of(blob: Vec<u8>) -> [u8; 32] {
    <[u8; 32]>::try_from(blob).unwrap_or([0xff; 32])
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA).context("cannot create the audit schema")?;
        Ok(SqliteStore { conn })
    }

    /// Opens an existing database without creating anything (for `audit verify`/`query`).
    pub fn open_existing(path: &Path) -> Result<SqliteStore> {
        if !path.exists() {
            bail!("{}: no such audit database", path.display());
        }
        SqliteStore::open(path)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The last `(seq, hash)` the chain continues from: the last record, or the checkpoint
    /// retention kept when it deleted every record, or the genesis.
    fn head(conn: &Connection) -> Result<(u64, [u8; 32])> {
        let last = |sql: &str| -> Result<Option<(u64, [u8; 32])>> {
            Ok(conn.query_row(sql, [], |r| Ok((r.get::<_, u64>(0)?, hash_of(r.get(1)?)))).optional()?)
        };
        let record = last("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")?;
        let checkpoint = last("SELECT seq, hash FROM checkpoints ORDER BY seq DESC LIMIT 1")?;
        Ok(match (record, checkpoint) {
            (Some(r), Some(c)) => std::cmp::max_by_key(r, c, |x| x.0),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => (0, GENESIS),
        })
    }

    fn rows(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Committed>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows =
            stmt.query_map(params, |r| Ok(Committed { seq: r.get(0)?, record: r.get(1)?, hash: hash_of(r.get(2)?) }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let mut stmt = self.conn.prepare("SELECT seq, hash, created_ms, signature FROM checkpoints ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(Checkpoint { seq: r.get(0)?, hash: hash_of(r.get(1)?), created_ms: r.get(2)?, signature: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Bytes the database takes on disk (main file and WAL).
    pub fn size_bytes(&self) -> Result<u64> {
        let pages: u64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: u64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(pages * size)
    }
}

impl AuditStore for SqliteStore {
    fn append(&mut self, records: &[Value], now_ms: i64) -> Result<Vec<Committed>> {
        let tx = self.conn.transaction()?;
        let (mut seq, mut prev) = SqliteStore::head(&tx)?;
        let mut committed = Vec::with_capacity(records.len());
        let mut batch_ids = std::collections::HashSet::new();
        {
            let mut seen = tx.prepare_cached("SELECT 1 FROM records WHERE rid = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (seq, rid, ts_ms, user, server, method, target, decision, record, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for value in records {
                let c = Columns::of(value, now_ms)?;
                if seen.exists([&c.rid])? || !batch_ids.insert(c.rid.clone()) {
                    continue;
                }
                let record = serde_json::to_string(value)?;
                seq += 1;
                let hash = chain_hash(&prev, seq, &record);
                insert.execute(params![
                    seq,
                    c.rid,
                    c.ts_ms,
                    c.user,
                    c.server,
                    c.method,
                    c.target,
                    c.decision,
                    record,
                    hash.as_slice()
                ])?;
                prev = hash;
                committed.push(Committed { seq, record, hash });
            }
        }
        tx.commit().context("cannot commit audit records")?;
        Ok(committed)
    }

    fn after(&self, seq: u64, limit: usize) -> Result<Vec<Committed>> {
        self.rows(
            "SELECT seq, record, hash FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            &[&seq, &(limit as u64)],
        )
    }

    fn query(&self, q: &Query) -> Result<Vec<Committed>> {
        // Each filter is bound, never spliced into the SQL.
        let tools_call = "tools/call".to_owned();
        let limit = q.limit.clamp(1, MAX_QUERY_LIMIT) as u64;
        let mut filters: Vec<(&str, &dyn ToSql)> = Vec::new();
        if let Some(v) = &q.user {
            filters.push((" AND user = ?", v));
        }
        if let Some(v) = &q.server {
            filters.push((" AND server = ?", v));
        }
        if let Some(v) = &q.method {
            filters.push((" AND method = ?", v));
        }
        if let Some(v) = &q.tool {
            filters.push((" AND method = ?", &tools_call));
            filters.push((" AND target = ?", v));
        }
        if let Some(v) = &q.decision {
            filters.push((" AND decision = ?", v));
        }
        if let Some(v) = &q.since_ms {
            filters.push((" AND ts_ms >= ?", v));
        }
        if let Some(v) = &q.until_ms {
            filters.push((" AND ts_ms < ?", v));
        }
        if let Some(v) = &q.before {
            filters.push((" AND seq < ?", v));
        }
        filters.push((" ORDER BY seq DESC LIMIT ?", &limit));
        let sql: String = std::iter::once("SELECT seq, record, hash FROM records WHERE 1 = 1")
            .chain(filters.iter().map(|f| f.0))
            .collect();
        let args: Vec<&dyn ToSql> = filters.iter().map(|f| f.1).collect();
        self.rows(&sql, &args)
    }

    fn last_seq(&self) -> Result<u64> {
        Ok(SqliteStore::head(&self.conn)?.0)
    }

    fn unsigned(&self) -> Result<u64> {
        let signed: Option<u64> = self.conn.query_row("SELECT MAX(seq) FROM checkpoints", [], |r| r.get(0))?;
        Ok(self.last_seq()?.saturating_sub(signed.unwrap_or(0)))
    }

    fn checkpoint(&mut self, key: &CheckpointKey, now_ms: i64) -> Result<Option<Checkpoint>> {
        let tx = self.conn.transaction()?;
        let (seq, hash) = SqliteStore::head(&tx)?;
        let signed: Option<u64> = tx.query_row("SELECT MAX(seq) FROM checkpoints", [], |r| r.get(0))?;
        if seq == 0 || signed == Some(seq) {
            return Ok(None);
        }
        let checkpoint = key.sign(seq, hash, now_ms);
        tx.execute(
            "INSERT INTO checkpoints (seq, hash, created_ms, signature) VALUES (?1, ?2, ?3, ?4)",
            params![checkpoint.seq, checkpoint.hash.as_slice(), checkpoint.created_ms, checkpoint.signature],
        )?;
        tx.commit()?;
        Ok(Some(checkpoint))
    }

    fn retain(&mut self, retention: &Retention, now_ms: i64) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let last: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM records", [], |r| r.get(0))?;
        let mut cutoff = 0;
        if let Some(max) = retention.max_records {
            cutoff = cutoff.max(last.saturating_sub(max));
        }
        if let Some(age) = retention.max_age_ms {
            // Everything before the first record young enough to keep.
            let young: Option<u64> =
                tx.query_row("SELECT MIN(seq) FROM records WHERE ts_ms >= ?1", [now_ms - age], |r| r.get(0))?;
            cutoff = cutoff.max(young.map_or(last, |s| s.saturating_sub(1)));
        }
        let anchor: Option<u64> =
            tx.query_row("SELECT MAX(seq) FROM checkpoints WHERE seq <= ?1", [cutoff], |r| r.get(0))?;
        let Some(anchor) = anchor else {
            return Ok(0);
        };
        let deleted = tx.execute("DELETE FROM records WHERE seq <= ?1", [anchor])?;
        // The anchor stays: the first record left is chained to its hash.
        tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [anchor])?;
        tx.commit()?;
        Ok(deleted as u64)
    }
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint: chained, not yet covered by a signature.
    pub unsigned: u64,
}

/// Why a trail does not verify. Each names the first record (or checkpoint) found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A checkpoint's signature is not the key's.
    Signature { checkpoint: u64 },
    /// The first record left is neither the first ever nor right after a checkpoint.
    Unanchored { first: u64 },
    /// Records `from..=to` are missing.
    Missing { from: u64, to: u64 },
    /// A record no longer matches its stored hash.
    Altered { seq: u64 },
    /// A query column differs from the record it was taken from.
    Column { seq: u64, column: &'static str },
    /// The chain is consistent but not the one that was signed: a record after `after`
    /// and up to `checkpoint` was changed and every hash after it recomputed.
    Recomputed { after: Option<u64>, checkpoint: u64 },
    /// A checkpoint signs records that are no longer there (the end was cut off).
    Truncated { checkpoint: u64, last: Option<u64> },
    /// A stored value is not what the store writes (not JSON, wrong type).
    Malformed { seq: u64, why: String },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Signature { checkpoint } => {
                write!(f, "checkpoint at record {checkpoint}: the signature is not the checkpoint key's")
            }
            Failure::Unanchored { first } => write!(
                f,
                "record {first}: records before it are missing and no checkpoint at record {} anchors it",
                first - 1
            ),
            Failure::Missing { from, to } if from == to => write!(f, "record {from}: missing (deleted)"),
            Failure::Missing { from, to } => write!(f, "records {from} to {to}: missing (deleted)"),
            Failure::Altered { seq } => {
                write!(f, "record {seq}: does not match its hash (edited, inserted or moved)")
            }
            Failure::Column { seq, column } => {
                write!(f, "record {seq}: column `{column}` differs from the record (edited)")
            }
            Failure::Recomputed { after, checkpoint } => write!(
                f,
                "checkpoint at record {checkpoint}: the chain no longer matches what was signed; a record {} and up \
                 to {checkpoint} was changed and the hashes after it recomputed",
                after.map_or("from the start".to_owned(), |a| format!("after {a}"))
            ),
            Failure::Truncated { checkpoint, last } => write!(
                f,
                "checkpoint at record {checkpoint}: signs records that are gone (the last record is {})",
                last.map_or("none".to_owned(), |l| l.to_string())
            ),
            Failure::Malformed { seq, why } => write!(f, "record {seq}: {why}"),
        }
    }
}

/// One line saying what verified.
pub fn describe(r: &Report) -> String {
    let span = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!("records {a} to {b} ({} records)", r.records),
        _ => "no records".to_owned(),
    };
    let signed = match r.last_checkpoint {
        Some(c) => format!("{} checkpoint(s), the last at record {c}", r.checkpoints),
        None => "no checkpoint yet".to_owned(),
    };
    let mut line = format!("ok: {span}, {signed}");
    if r.unsigned > 0 {
        line.push_str(&format!(
            "; the last {} record(s) are chained but not yet covered by a signed checkpoint",
            r.unsigned
        ));
    }
    line
}

/// A page of query results as `/audit` and `mcpgw audit query` print it: the records
/// (each with its `seq`) and the cursor of the next page, if the page was full.
pub fn page_json(page: &[Committed], limit: usize) -> Value {
    let records: Vec<Value> = page
        .iter()
        .map(|c| {
            let mut v = c.value();
            if let Some(map) = v.as_object_mut() {
                map.insert("seq".to_owned(), c.seq.into());
            }
            v
        })
        .collect();
    let full = page.len() >= limit.clamp(1, MAX_QUERY_LIMIT);
    let next = page.last().filter(|_| full).map(|c| c.seq);
    serde_json::json!({ "records": records, "next_cursor": next })
}

/// Checks the whole trail in `store` against the checkpoint public key.
pub fn verify(store: &SqliteStore, key: &PublicKey) -> Result<std::result::Result<Report, Failure>> {
    let checkpoints = store.checkpoints()?;
    if let Some(bad) = checkpoints.iter().find(|c| !c.verify(key)) {
        return Ok(Err(Failure::Signature { checkpoint: bad.seq }));
    }
    let by_seq: std::collections::BTreeMap<u64, &Checkpoint> = checkpoints.iter().map(|c| (c.seq, c)).collect();
    let at = |seq: u64| by_seq.get(&seq).copied();
    let mut stmt = store.connection().prepare(
        "SELECT seq, rid, ts_ms, user, server, method, target, decision, record, hash FROM records ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut report = Report {
        records: 0,
        first_seq: None,
        last_seq: None,
        checkpoints: checkpoints.len() as u64,
        last_checkpoint: checkpoints.last().map(|c| c.seq),
        unsigned: 0,
    };
    let mut prev = GENESIS;
    let mut expected = 1;
    let mut last_signed = None;
    while let Some(row) = rows.next()? {
        let seq: u64 = row.get(0)?;
        if report.first_seq.is_none() {
            report.first_seq = Some(seq);
            if seq != 1 {
                let Some(anchor) = at(seq - 1) else {
                    return Ok(Err(Failure::Unanchored { first: seq }));
                };
                prev = anchor.hash;
                last_signed = Some(anchor.seq);
            }
            expected = seq;
        }
        if seq != expected {
            return Ok(Err(Failure::Missing { from: expected, to: seq - 1 }));
        }
        let record: String = match row.get(8) {
            Ok(r) => r,
            Err(e) => return Ok(Err(Failure::Malformed { seq, why: format!("the record is not text: {e}") })),
        };
        let stored = match row.get::<_, Vec<u8>>(9) {
            Ok(h) if h.len() == 32 => hash_of(h),
            _ => return Ok(Err(Failure::Malformed { seq, why: "the stored hash is not 32 bytes".to_owned() })),
        };
        let hash = chain_hash(&prev, seq, &record);
        if hash != stored {
            return Ok(Err(Failure::Altered { seq }));
        }
        let value: Value = match serde_json::from_str(&record) {
            Ok(v) => v,
            Err(e) => return Ok(Err(Failure::Malformed { seq, why: format!("the record is not JSON: {e}") })),
        };
        let ts_ms: i64 = row.get(2)?;
        let derived = match Columns::of(&value, ts_ms) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Failure::Malformed { seq, why: e.to_string() })),
        };
        let text = |i: usize| row.get::<_, Option<String>>(i);
        let columns: [(&'static str, bool); 7] = [
            ("rid", row.get::<_, String>(1)? == derived.rid),
            ("ts_ms", ts_ms == derived.ts_ms),
            ("user", text(3)? == derived.user),
            ("server", text(4)? == derived.server),
            ("method", text(5)? == derived.method),
            ("target", text(6)? == derived.target),
            ("decision", text(7)? == derived.decision),
        ];
        if let Some((column, _)) = columns.iter().find(|(_, same)| !same) {
            return Ok(Err(Failure::Column { seq, column }));
        }
        if let Some(c) = at(seq) {
            if c.hash != hash {
                return Ok(Err(Failure::Recomputed { after: last_signed, checkpoint: seq }));
            }
            last_signed = Some(seq);
        }
        prev = hash;
        expected = seq + 1;
        report.records += 1;
        report.last_seq = Some(seq);
    }
    // A checkpoint past the last record (other than the anchor retention keeps when it
    // deleted everything) signs records that were cut off.
    let last = report.last_seq;
    if let Some(c) = checkpoints.iter().find(|c| match last {
        Some(l) => c.seq > l,
        None => checkpoints.len() > 1,
    }) {
        return Ok(Err(Failure::Truncated { checkpoint: c.seq, last }));
    }
    report.unsigned = last.map_or(0, |l| l - last_signed.unwrap_or(0).min(l));
    Ok(Ok(report))
}
