//! What the sidecar sustains: audit records committed per second, and `/events` fanned out
//! to 1,000 and 10,000 subscribers on loopback (delivery latency, resident memory per
//! subscriber).
//!
//! The sidecar is the built `mcpgw sidecar` in a process of its own, so its resident memory
//! (`VmRSS`) and CPU time (`/proc/<pid>/stat`) are its own. Ingest: a few clients post
//! batches as the filter sends them, back to back; every acknowledged record must be in the
//! store afterwards (killed without warning, the chain and checkpoints verify). Fan-out:
//! subscribers are raw HTTP/1.1 connections on one runtime that read only each event's
//! `id:` line; records are posted one at a time, and each delivery's latency is from the
//! post's send to the subscriber reading the event. A lost event or a subscriber that never
//! connects fails the run; timings never do.
//!
//! Ignored by `make test`; `make bench` runs it in release mode and it writes
//! `bench/results/sidecar.md` and the sidecar part of `BENCHMARKS.md`. By hand:
//! `CARGO_PROFILE_RELEASE_PANIC=unwind cargo test --release -p mcpgw --features testing --test bench_sidecar --
//! --ignored --nocapture` (the Makefile says why the panic strategy is set).

// A benchmark harness: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use mcpgw::audit_store::{self, SqliteStore};
use mcpgw::sidecar::SECRET_HEADER;
use mcpgw::testing::bench;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, Semaphore};

const SECRET: &str = "bench-secret-0123456789";

/// Ingest: concurrent clients, batch sizes (500 is the filter's default), seconds each.
const INGEST_CLIENTS: usize = 4;
const BATCH_SIZES: [usize; 4] = [1, 16, 64, 500];
const INGEST_SECONDS: u64 = 3;

/// Fan-out: subscriber counts, events posted to each, and the least time between posts
/// (a post also waits until every subscriber has the previous event, so events never
/// queue up behind each other and the bus cannot lag).
const SUBSCRIBERS: [usize; 2] = [1_000, 10_000];
const EVENTS: usize = 40;
const EVENT_EVERY: Duration = Duration::from_millis(100);
/// Subscribers connecting at once: below the sidecar's accept backlog, so none waits
/// for a SYN retry.
const CONNECTING: usize = 128;
/// Open files each process needs besides one per subscriber connection.
const SPARE_FILES: u64 = 256;

/// The targets for 10,000 subscribers on 2 cores.
const TARGET_KIB: f64 = 20.0;
const TARGET_P99_MS: f64 = 50.0;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// How subscribers (and the poster) reach the sidecar: loopback TCP, or the Unix socket
/// an Envoy beside it would use (`pipe` in a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Unix,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "loopback TCP",
            Transport::Unix => "Unix socket",
        }
    }
}

/// Where the sidecar listens.
#[derive(Debug, Clone)]
enum Endpoint {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

/// A connection of either kind.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Endpoint {
    async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Endpoint::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await?),
            Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }

    fn host(&self) -> String {
        match self {
            Endpoint::Tcp(addr) => addr.to_string(),
            Endpoint::Unix(_) => "sidecar".to_owned(),
        }
    }

    /// One request on a connection of its own (`connection: close`): status and body.
    async fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut conn = self.connect().await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\n{SECRET_HEADER}: {SECRET}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            self.host(),
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(body.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).await.unwrap();
        let text = String::from_utf8_lossy(&reply).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, body.to_owned())
    }
}

/// `mcpgw sidecar` in its own process, on a free loopback port (or a Unix socket) with a
/// fresh store; killed when dropped.
struct SidecarProcess {
    child: Child,
    endpoint: Endpoint,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl SidecarProcess {
    fn start(transport: Transport) -> SidecarProcess {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = match transport {
            Transport::Tcp => Endpoint::Tcp(std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()),
            Transport::Unix => Endpoint::Unix(dir.path().join("sidecar.sock")),
        };
        let listen = match &endpoint {
            Endpoint::Tcp(addr) => addr.to_string(),
            Endpoint::Unix(path) => format!("unix:{}", path.display()),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcpgw"))
            .args(["sidecar", "--listen", &listen, "--db"])
            .arg(dir.path().join("audit.db"))
            .arg("--checkpoint-key")
            .arg(dir.path().join("checkpoint.key"))
            .env("MCPGW_SIDECAR_SECRET", SECRET)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Its first line says it listens; the rest is passed on (and the pipe kept open,
        // so its writes to stderr do not fail).
        let stderr = child.stderr.take().unwrap();
        let (first, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok);
            let _ = first.send(lines.next().unwrap_or_default());
            for line in lines {
                eprintln!("{line}");
            }
        });
        let line = listening.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(line.contains("listening"), "the sidecar did not start: {line}");
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        SidecarProcess { child, endpoint, dir, client }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn ingest(&self, body: String) -> Value {
        let (status, text) = match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let reply = self
                    .client
                    .post(format!("http://{addr}/ingest"))
                    .header(SECRET_HEADER, SECRET)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (reply.status().as_u16(), reply.text().await.unwrap())
            }
            Endpoint::Unix(_) => self.endpoint.request("POST", "/ingest", &body).await,
        };
        assert_eq!(status, 200, "ingest refused: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// One figure from `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let text = match &self.endpoint {
            Endpoint::Tcp(addr) => self
                .client
                .get(format!("http://{addr}/metrics"))
                .header(SECRET_HEADER, SECRET)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            Endpoint::Unix(_) => self.endpoint.request("GET", "/metrics", "").await.1,
        };
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time a process has used, µs.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: f64,
    /// In the kernel: on loopback, sending includes most of the receiving side's work.
    system: f64,
}

impl Cpu {
    fn of(pid: u32) -> Cpu {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The fields after the command name's closing parenthesis, from the third (state).
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
        // SAFETY: sysconf only reads a configuration value.
        let us_per_tick = 1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks = |i: usize| fields[i].parse::<u64>().unwrap() as f64 * us_per_tick;
        Cpu { user: ticks(11), system: ticks(12) }
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu { user: self.user - earlier.user, system: self.system - earlier.system }
    }

    /// Per one of `n` things, with the kernel's part.
    fn per(self, n: f64) -> String {
        format!("{:.1} ({:.1} kernel)", (self.user + self.system) / n, self.system / n)
    }
}

/// Raises the soft limit on open files to the hard one (the sidecar inherits it); returns
/// the limit now in force.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: both calls only read or write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// An audit record as the filter writes it (the README's example, about 750 bytes): its
/// fields after `record_id`, serialized once, so the clients spend little CPU on bodies.
fn record_rest() -> &'static str {
    static REST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REST.get_or_init(|| {
        let rest = json!({
            "timestamp": "2026-12-02T06:00:00.000Z",
            "request_id": "15db1d99-5c1e-4d0a-9d52-1b4e0f0a6c3e", "user_id": "alice", "roles": ["developer"],
            "server": "github", "http_method": "POST", "method": "tools/call", "target": "get_repository",
            "jsonrpc_id": 1, "params": {"repository": "acme/website"}, "decision": "allow", "reason": "role developer",
            "success": true, "status": 200, "outcome": "ok", "is_error": false, "upstream_cluster": "github",
            "upstream_host": "127.0.0.1:10102", "bytes_in": 112, "bytes_out": 230, "response_time_ms": 4,
            "client_ip": "127.0.0.1", "user_agent": "curl/7.88.1",
            "session_id": "ac1c6f0e8b9a4d2f9e7c5b3a1d0f8e6c", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"
        })
        .to_string();
        rest[1..].to_owned()
    })
}

/// A batch as the filter's outbox sends it: the records' JSON in an array. `ids` need no
/// JSON escaping.
fn batch(ids: impl Iterator<Item = String>) -> String {
    let mut body = String::from("[");
    for (i, id) in ids.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"record_id\":\"");
        body.push_str(&id);
        body.push_str("\",");
        body.push_str(record_rest());
    }
    body.push(']');
    body
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

struct IngestRow {
    batch: usize,
    records: u64,
    batches: u64,
    seconds: f64,
    /// Post to acknowledgement, ms, sorted.
    acks: Vec<f64>,
    cpu: Cpu,
}

/// `INGEST_CLIENTS` clients posting batches of `size` back to back for `INGEST_SECONDS`.
async fn ingest_rate(sidecar: &Arc<SidecarProcess>, size: usize) -> IngestRow {
    let cpu = Cpu::of(sidecar.pid());
    let start = Instant::now();
    let until = start + Duration::from_secs(INGEST_SECONDS);
    let clients: Vec<_> = (0..INGEST_CLIENTS)
        .map(|c| {
            let sidecar = Arc::clone(sidecar);
            tokio::spawn(async move {
                let (mut records, mut acks) = (0_u64, Vec::new());
                for b in 0.. {
                    if Instant::now() >= until {
                        break;
                    }
                    let body = batch((0..size).map(|i| format!("ingest-{size}-{c}-{b}-{i}")));
                    let sent = Instant::now();
                    let reply = sidecar.ingest(body).await;
                    acks.push(sent.elapsed().as_secs_f64() * 1e3);
                    // Every id is new, so every record of the batch is committed.
                    assert_eq!(reply["committed"].as_u64(), Some(size as u64), "{reply}");
                    records += size as u64;
                }
                (records, acks)
            })
        })
        .collect();
    let mut row = IngestRow { batch: size, records: 0, batches: 0, seconds: 0.0, acks: Vec::new(), cpu };
    for client in clients {
        let (records, acks) = client.await.unwrap();
        row.records += records;
        row.batches += acks.len() as u64;
        row.acks.extend(acks);
    }
    row.seconds = start.elapsed().as_secs_f64();
    row.cpu = Cpu::of(sidecar.pid()).since(cpu);
    row.acks = sorted(row.acks);
    row
}

/// Ingest at each batch size into one sidecar, then checks that what was acknowledged is
/// what is stored: in `/metrics`, and in the store after a kill without warning.
async fn ingest() -> Vec<IngestRow> {
    let sidecar = Arc::new(SidecarProcess::start(Transport::Tcp));
    let mut rows = Vec::new();
    for size in BATCH_SIZES {
        rows.push(ingest_rate(&sidecar, size).await);
    }
    let acknowledged: u64 = rows.iter().map(|r| r.records).sum();
    assert_eq!(sidecar.metric("mcpgw_sidecar_records_committed_total").await, acknowledged);
    assert_eq!(sidecar.metric("mcpgw_sidecar_last_seq").await, acknowledged);
    assert_eq!(sidecar.metric("mcpgw_sidecar_records_duplicate_total").await, 0);
    let mut sidecar = Arc::into_inner(sidecar).unwrap();
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    let store = SqliteStore::open_existing(&sidecar.dir.path().join("audit.db")).unwrap();
    let key =
        audit_store::parse_public_key(&std::fs::read_to_string(sidecar.dir.path().join("checkpoint.key.pub")).unwrap())
            .unwrap();
    let report = audit_store::verify(&store, &key).unwrap().unwrap_or_else(|f| panic!("the store fails: {f:?}"));
    assert_eq!(report.records, acknowledged, "acknowledged records missing from the store: {report:?}");
    rows
}

/// An HTTP/1.1 chunked body read as SSE lines, from whatever pieces the socket gives.
#[derive(Default)]
struct ChunkedLines {
    /// Data bytes left in the current chunk.
    left: usize,
    /// Bytes of the current chunk's closing CRLF still to skip.
    crlf: usize,
    /// A chunk-size line read in part.
    size_line: Vec<u8>,
    /// An SSE line read in part.
    line: Vec<u8>,
    /// The last (empty) chunk was read.
    done: bool,
}

impl ChunkedLines {
    fn feed(&mut self, mut input: &[u8], on_line: &mut impl FnMut(&[u8])) -> Result<(), String> {
        while !input.is_empty() && !self.done {
            if self.left > 0 {
                let (mut data, rest) = input.split_at(self.left.min(input.len()));
                self.left -= data.len();
                input = rest;
                while let Some(end) = data.iter().position(|&b| b == b'\n') {
                    if self.line.is_empty() {
                        on_line(&data[..end]);
                    } else {
                        self.line.extend_from_slice(&data[..end]);
                        on_line(&self.line);
                        self.line.clear();
                    }
                    data = &data[end + 1..];
                }
                self.line.extend_from_slice(data);
                if self.left == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                let n = self.crlf.min(input.len());
                self.crlf -= n;
                input = &input[n..];
            } else {
                let Some(end) = input.iter().position(|&b| b == b'\n') else {
                    self.size_line.extend_from_slice(input);
                    break;
                };
                self.size_line.extend_from_slice(&input[..end]);
                input = &input[end + 1..];
                let text = String::from_utf8_lossy(&self.size_line);
                let hex = text.split(';').next().unwrap_or_default().trim();
                self.left = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size line {text:?}"))?;
                self.done = self.left == 0;
                self.size_line.clear();
            }
        }
        Ok(())
    }
}

/// What one subscriber read: each event's sequence number and when it arrived.
#[derive(Default)]
struct Received {
    events: Vec<(u64, Instant)>,
    lagged: bool,
    error: Option<String>,
    /// The connection, kept open until every subscriber is done: closing it at once would
    /// add the closes to the last event's fan-out.
    socket: Option<Conn>,
}

/// A count that a task can wait to reach: atomics on the subscribers' side, one wake-up
/// for the waiter. SeqCst: the waiter stores `wanted` then loads `done`, an adder the
/// reverse, and one of them must see the other's write.
#[derive(Default)]
struct Count {
    done: AtomicUsize,
    wanted: AtomicUsize,
    reached: Notify,
}

impl Count {
    fn add(&self, n: usize) {
        let before = self.done.fetch_add(n, Ordering::SeqCst);
        let wanted = self.wanted.load(Ordering::SeqCst);
        if before < wanted && before + n >= wanted {
            self.reached.notify_one();
        }
    }

    /// Waits until the count is at least `wanted`; false after `limit`.
    async fn reach(&self, wanted: usize, limit: Duration) -> bool {
        self.wanted.store(wanted, Ordering::SeqCst);
        tokio::time::timeout(limit, async {
            while self.done.load(Ordering::SeqCst) < wanted {
                self.reached.notified().await;
            }
        })
        .await
        .is_ok()
    }

    fn get(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }
}

/// What subscribers and the poster share.
struct Gates {
    /// Subscribers whose stream is open (or that failed).
    connected: Count,
    /// Events read (or given up on), over all subscribers.
    delivered: Count,
}

/// Subscribers are served by `CLIENT_THREADS` plain threads, each polling its share of
/// the connections with `mio` (epoll): the load generator shares the two cores with the
/// sidecar, so it does as little per event as it can (one `read`, the `id:` line).
const CLIENT_THREADS: usize = 2;
/// How long a client thread polls without sleeping after its last event.
const SPIN: Duration = Duration::from_micros(200);

/// A subscriber's connection, read without blocking.
enum Conn {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Conn {
    /// Connects and sends the subscription (an audit-role caller's, as the filter
    /// forwards it).
    fn open(endpoint: &Endpoint, index: usize) -> std::io::Result<Conn> {
        use std::io::Write as _;
        let request = format!(
            "GET /events HTTP/1.1\r\nhost: {}\r\n{SECRET_HEADER}: {SECRET}\r\nx-mcp-user-id: subscriber-{index}\r\n\
             x-mcp-roles: admin\r\naccept: text/event-stream\r\n\r\n",
            endpoint.host()
        );
        Ok(match endpoint {
            Endpoint::Tcp(addr) => {
                let mut s = std::net::TcpStream::connect(addr)?;
                s.write_all(request.as_bytes())?;
                s.set_nonblocking(true)?;
                Conn::Tcp(mio::net::TcpStream::from_std(s))
            }
            Endpoint::Unix(path) => {
                let mut s = std::os::unix::net::UnixStream::connect(path)?;
                s.write_all(request.as_bytes())?;
                s.set_nonblocking(true)?;
                Conn::Unix(mio::net::UnixStream::from_std(s))
            }
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read as _;
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }

    fn register(&mut self, poll: &mio::Poll, token: mio::Token) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => poll.registry().register(s, token, mio::Interest::READABLE),
            Conn::Unix(s) => poll.registry().register(s, token, mio::Interest::READABLE),
        }
    }
}

/// One subscriber in a client thread.
struct Sub {
    conn: Option<Conn>,
    head: Vec<u8>,
    opened: bool,
    body: ChunkedLines,
    got: Received,
    finished: bool,
}

impl Sub {
    /// Reads what the socket has; true once this subscriber is done (all events, lagged,
    /// or failed).
    fn on_readable(&mut self, buf: &mut [u8], gates: &Gates) -> bool {
        loop {
            let Some(conn) = self.conn.as_mut() else { return true };
            let read = match conn.read(buf) {
                Ok(0) => Err(format!("the connection closed after {} events", self.got.events.len())),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(format!("events: {e}")),
            };
            let now = Instant::now();
            let short = read.as_ref().is_ok_and(|&n| n < buf.len());
            let outcome = read.and_then(|n| self.take(&buf[..n], now, gates));
            match outcome {
                // A short read took all there was: what arrives later is a new edge,
                // so no second `read` just to hear `WouldBlock`.
                Ok(false) if short => return false,
                Ok(false) => {}
                Ok(true) => return true,
                Err(e) => {
                    self.got.error = Some(e);
                    return true;
                }
            }
        }
    }

    /// The bytes read: the response head first, then the body's events.
    fn take(&mut self, mut input: &[u8], now: Instant, gates: &Gates) -> Result<bool, String> {
        if !self.opened {
            self.head.extend_from_slice(input);
            let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(false) };
            let text = String::from_utf8_lossy(&self.head[..end + 4]).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") || !text.contains("transfer-encoding: chunked") {
                return Err(format!("unexpected response head: {text}"));
            }
            self.opened = true;
            gates.connected.add(1);
            let rest = self.head.split_off(end + 4);
            let (body, got) = (&mut self.body, &mut self.got);
            body.feed(&rest, &mut |line| on_line(line, now, got, gates))?;
            input = &[];
        }
        let (body, got) = (&mut self.body, &mut self.got);
        body.feed(input, &mut |line| on_line(line, now, got, gates))?;
        if self.got.events.len() >= EVENTS || self.got.lagged {
            return Ok(true);
        }
        if self.body.done {
            return Err(format!("the stream ended after {} events", self.got.events.len()));
        }
        Ok(false)
    }

    /// Done: the gates stop waiting for what it did not read; the connection stays open
    /// until every subscriber is done (closing it at once would add the closes to the
    /// last event's fan-out).
    fn finish(&mut self, gates: &Gates) {
        self.finished = true;
        if !self.opened {
            gates.connected.add(1);
        }
        gates.delivered.add(EVENTS.saturating_sub(self.got.events.len()));
        self.got.socket = self.conn.take();
    }
}

/// One client thread: opens its subscribers (at most `CONNECTING / CLIENT_THREADS` waiting
/// for their response head at once, below the sidecar's accept backlog) and reads them
/// until each is done.
fn run_subscribers(endpoint: &Endpoint, indices: &[usize], gates: &Gates) -> Vec<Received> {
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(1024);
    let mut subs: Vec<Sub> = Vec::with_capacity(indices.len());
    let mut buf = vec![0_u8; 16 << 10];
    let (mut next, mut unfinished, mut settled) = (0, indices.len(), 0);
    let mut last_busy = Instant::now();
    while unfinished > 0 {
        // Connections still waiting for their response head (`settled`: opened or done).
        let waiting = subs.len() - settled;
        for _ in waiting..CONNECTING / CLIENT_THREADS {
            let Some(&index) = indices.get(next) else { break };
            next += 1;
            let token = mio::Token(subs.len());
            let mut sub = Sub {
                conn: None,
                head: Vec::new(),
                opened: false,
                body: ChunkedLines::default(),
                got: Received::default(),
                finished: false,
            };
            match Conn::open(endpoint, index).and_then(|mut c| c.register(&poll, token).map(|()| c)) {
                Ok(conn) => sub.conn = Some(conn),
                Err(e) => {
                    sub.got.error = Some(format!("connect: {e}"));
                    sub.finish(gates);
                    unfinished -= 1;
                    settled += 1;
                }
            }
            subs.push(sub);
        }
        // While events are coming in, poll without sleeping for a little while: going to
        // sleep between two of them would cost a wake-up each (for the sidecar's writer
        // too). Quiet for `SPIN`, sleep until the next one.
        let quiet = last_busy.elapsed() > SPIN;
        poll.poll(&mut events, Some(if quiet { Duration::from_millis(100) } else { Duration::ZERO })).unwrap();
        if !events.is_empty() {
            last_busy = Instant::now();
        }
        for event in &events {
            let Some(sub) = subs.get_mut(event.token().0) else { continue };
            if sub.finished {
                continue;
            }
            let was_open = sub.opened;
            if sub.on_readable(&mut buf, gates) {
                sub.finish(gates);
                unfinished -= 1;
            }
            if !was_open && (sub.opened || sub.finished) {
                settled += 1;
            }
        }
    }
    subs.into_iter().map(|s| s.got).collect()
}

/// The per-event work of a subscriber: note when an event's id arrived.
fn on_line(line: &[u8], now: Instant, got: &mut Received, gates: &Gates) {
    if let Some(id) = line.strip_prefix(b"id:") {
        let seq = std::str::from_utf8(id).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        got.events.push((seq, now));
        gates.delivered.add(1);
    } else if line.starts_with(b"event: lagged") {
        got.lagged = true;
    }
}

struct FanOutRow {
    transport: Transport,
    subscribers: usize,
    rss_before_kib: u64,
    rss_connected_kib: u64,
    rss_after_kib: u64,
    connect_seconds: f64,
    /// Post to receipt, ms, over every (subscriber, event), sorted.
    latencies: Vec<f64>,
    /// Post to the last subscriber's receipt, ms, per event, sorted.
    spreads: Vec<f64>,
    /// Post to acknowledgement, ms, sorted.
    acks: Vec<f64>,
    lagged: usize,
    lagged_metric: u64,
    sidecar_cpu: Cpu,
    client_cpu: Cpu,
}

impl FanOutRow {
    fn kib_per_subscriber(&self, rss: u64) -> f64 {
        rss.saturating_sub(self.rss_before_kib) as f64 / self.subscribers as f64
    }
}

async fn fan_out(transport: Transport, n: usize) -> FanOutRow {
    let sidecar = SidecarProcess::start(transport);
    // One record first, so the store, its connection and the poster's are warm.
    let mut last_seq = sidecar.ingest(batch(std::iter::once("warm-up".to_owned()))).await["last_seq"].as_u64().unwrap();
    let rss_before_kib = rss_kib(sidecar.pid());
    let gates = Arc::new(Gates { connected: Count::default(), delivered: Count::default() });
    let start = Instant::now();
    let threads: Vec<std::thread::JoinHandle<Vec<Received>>> = (0..CLIENT_THREADS)
        .map(|t| {
            let (endpoint, gates) = (sidecar.endpoint.clone(), Arc::clone(&gates));
            let indices: Vec<usize> = (t..n).step_by(CLIENT_THREADS).collect();
            std::thread::spawn(move || run_subscribers(&endpoint, &indices, &gates))
        })
        .collect();
    assert!(
        gates.connected.reach(n, Duration::from_secs(120)).await,
        "{} of {n} subscribers connected after 120 s",
        gates.connected.get()
    );
    // Every stream the client opened is one the sidecar counts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted = sidecar.metric("mcpgw_sidecar_subscribers").await;
        if counted == n as u64 {
            break;
        }
        if Instant::now() > deadline || threads.iter().any(|t| t.is_finished()) {
            let mut failed = Vec::new();
            for t in threads.into_iter().filter(|t| t.is_finished()) {
                failed.extend(t.join().unwrap().into_iter().filter_map(|g| g.error));
            }
            panic!("the sidecar counts {counted} of {n} subscribers; failures: {:?}", &failed[..failed.len().min(5)]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_seconds = start.elapsed().as_secs_f64();
    let rss_connected_kib = rss_kib(sidecar.pid());
    let (sidecar_cpu, client_cpu) = (Cpu::of(sidecar.pid()), Cpu::of(std::process::id()));
    let mut pace = tokio::time::interval(EVENT_EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Vec::with_capacity(EVENTS);
    let mut acks = Vec::with_capacity(EVENTS);
    for k in 0..EVENTS {
        pace.tick().await;
        let body = batch(std::iter::once(format!("event-{k}")));
        let at = Instant::now();
        let reply = sidecar.ingest(body).await;
        acks.push(at.elapsed().as_secs_f64() * 1e3);
        last_seq += 1;
        assert_eq!(reply["last_seq"].as_u64(), Some(last_seq), "{reply}");
        sent.push((last_seq, at));
        assert!(
            gates.delivered.reach(n * (k + 1), Duration::from_secs(30)).await,
            "event {last_seq} has not reached every subscriber after 30 s"
        );
    }
    let (sidecar_cpu, client_cpu) =
        (Cpu::of(sidecar.pid()).since(sidecar_cpu), Cpu::of(std::process::id()).since(client_cpu));
    let rss_after_kib = rss_kib(sidecar.pid());
    let lagged_metric = sidecar.metric("mcpgw_sidecar_lagged_total").await;
    let mut latencies = Vec::with_capacity(n * EVENTS);
    let mut last_receipt = vec![0.0_f64; EVENTS];
    let mut lagged = 0;
    let received = tokio::task::spawn_blocking(move || {
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect::<Vec<Received>>()
    })
    .await
    .unwrap();
    for got in received {
        if let Some(e) = got.error {
            panic!("a subscriber failed: {e}");
        }
        lagged += usize::from(got.lagged);
        let seqs: Vec<u64> = got.events.iter().map(|(seq, _)| *seq).collect();
        let expected: Vec<u64> = sent.iter().map(|(seq, _)| *seq).collect();
        if got.lagged {
            assert!(expected.starts_with(&seqs), "a lagged subscriber got {seqs:?}");
        } else {
            assert_eq!(seqs, expected, "a subscriber lost or reordered events");
        }
        for ((_, at), (_, got_at)) in sent.iter().zip(&got.events) {
            let ms = got_at.duration_since(*at).as_secs_f64() * 1e3;
            latencies.push(ms);
        }
        for (last, ((_, at), (_, got_at))) in last_receipt.iter_mut().zip(sent.iter().zip(&got.events)) {
            *last = last.max(got_at.duration_since(*at).as_secs_f64() * 1e3);
        }
    }
    FanOutRow {
        transport,
        subscribers: n,
        rss_before_kib,
        rss_connected_kib,
        rss_after_kib,
        connect_seconds,
        latencies: sorted(latencies),
        spreads: sorted(last_receipt),
        acks: sorted(acks),
        lagged,
        lagged_metric,
        sidecar_cpu,
        client_cpu,
    }
}

/// For comparison: what an HTTP connection costs the sidecar without a subscriber, kept
/// alive after one request was answered (a 404). KiB per connection.
async fn idle_connection_kib(n: usize) -> f64 {
    let sidecar = SidecarProcess::start(Transport::Tcp);
    sidecar.ingest(batch(std::iter::once("warm-up".to_owned()))).await;
    let before = rss_kib(sidecar.pid());
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let Endpoint::Tcp(addr) = sidecar.endpoint else { unreachable!("a TCP sidecar") };
    let opened: Vec<_> = (0..n)
        .map(|_| {
            let connecting = Arc::clone(&connecting);
            tokio::spawn(async move {
                let _turn = connecting.acquire().await.unwrap();
                let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
                socket.write_all(format!("GET /idle HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0_u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let read = socket.read(&mut buf).await.unwrap();
                    assert!(read > 0, "closed before the response head");
                    head.extend_from_slice(&buf[..read]);
                }
                assert!(head.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&head));
                socket
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(n);
    for socket in opened {
        sockets.push(socket.await.unwrap());
    }
    rss_kib(sidecar.pid()).saturating_sub(before) as f64 / n as f64
}

/// 10000 as "10,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

fn markdown(ingest: &[IngestRow], fan_out: &[FanOutRow], idle: (usize, f64), skipped: Option<&str>) -> String {
    let mut out = format!(
        "Ingest: {INGEST_CLIENTS} clients post batches back to back, {INGEST_SECONDS} s per batch size; each \
         record about 750 bytes, as the filter writes it.\n\n\
         | records per batch | records/s | batches/s | acknowledged in (p50) | p99 | sidecar CPU µs/record |\n\
         |---|---|---|---|---|---|\n"
    );
    for r in ingest {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {} |\n",
            r.batch,
            r.records as f64 / r.seconds,
            r.batches as f64 / r.seconds,
            percentile(&r.acks, 50.0),
            percentile(&r.acks, 99.0),
            r.cpu.per(r.records as f64),
        ));
    }
    let total = thousands(ingest.iter().map(|r| r.records).sum::<u64>() as usize);
    out.push_str(&format!(
        "\nAll {total} acknowledged records were committed: `/metrics` says so, and after a SIGKILL the store \
         holds {total} records whose chain and checkpoints verify.\n\n\
         Fan-out: {EVENTS} records posted one at a time, at least {} ms apart and each once the last reached \
         every subscriber; latency from the post's send to a subscriber reading the event, over every \
         (subscriber, event).\n\n\
         | connection | subscribers | KiB per subscriber, connected | after the events | delivery p50 | p99 | max | last subscriber (median) | acknowledged in (p50) | lagged | sidecar CPU µs/delivery | client CPU µs/delivery | connect time |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        EVENT_EVERY.as_millis()
    ));
    for r in fan_out {
        let deliveries = (r.subscribers * EVENTS) as f64;
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} ms | {} | {} | {} | {:.1} s |\n",
            r.transport.name(),
            thousands(r.subscribers),
            r.kib_per_subscriber(r.rss_connected_kib),
            r.kib_per_subscriber(r.rss_after_kib),
            percentile(&r.latencies, 50.0),
            percentile(&r.latencies, 99.0),
            r.latencies.last().copied().unwrap_or(f64::NAN),
            percentile(&r.spreads, 50.0),
            percentile(&r.acks, 50.0),
            r.lagged.max(r.lagged_metric as usize),
            r.sidecar_cpu.per(deliveries),
            r.client_cpu.per(deliveries),
            r.connect_seconds,
        ));
    }
    let rss: Vec<String> = fan_out
        .iter()
        .map(|r| {
            format!(
                "{} × {}: {} → {} → {} MiB",
                r.transport.name(),
                thousands(r.subscribers),
                r.rss_before_kib / 1024,
                r.rss_connected_kib / 1024,
                r.rss_after_kib / 1024
            )
        })
        .collect();
    out.push_str(&format!(
        "\nThe sidecar's resident memory before subscribers → connected → after the events: {}. For \
         comparison, {} keep-alive connections with one request answered (a 404) and no subscriber: {:.1} KiB \
         each.\n",
        rss.join("; "),
        thousands(idle.0),
        idle.1
    ));
    let largest: Vec<&FanOutRow> = fan_out.iter().filter(|r| r.subscribers == 10_000).collect();
    match (largest.is_empty(), skipped) {
        (false, _) => {
            out.push_str("\nTargets for 10,000 subscribers on 2 cores (≤ ");
            out.push_str(&format!("{TARGET_KIB:.0} KiB each, delivery p99 ≤ {TARGET_P99_MS:.0} ms, none lagged):"));
            for r in largest {
                let kib = r.kib_per_subscriber(r.rss_after_kib.max(r.rss_connected_kib));
                let p99 = percentile(&r.latencies, 99.0);
                let lagged = r.lagged.max(r.lagged_metric as usize);
                out.push_str(&format!(
                    " {}: {kib:.1} KiB, {}; {p99:.1} ms, {}; {lagged} lagged, {}.",
                    r.transport.name(),
                    met(kib <= TARGET_KIB),
                    met(p99 <= TARGET_P99_MS),
                    met(lagged == 0),
                ));
            }
            out.push('\n');
        }
        (true, Some(why)) => out.push_str(&format!("\nNot run with 10,000 subscribers: {why}.\n")),
        (true, None) => {}
    }
    out
}

/// Replaces the generated part of BENCHMARKS.md's sidecar section with this run.
fn write_benchmarks_md(table: &str) {
    let generated = format!(
        "{START}\nLatest run: {}; `CARGO_PROFILE_RELEASE_PANIC=unwind cargo test --release -p mcpgw --features \
         testing --test bench_sidecar -- --ignored --nocapture` (the last part of `make bench`).\n\n{table}{END}",
        bench::run_line(root()),
    );
    let path = root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    match bench::replace_section(&text, START, END, &generated) {
        Some(text) => std::fs::write(path, text).unwrap(),
        None => eprintln!("BENCHMARKS.md has no {START} ... {END} section; left alone"),
    }
}

const START: &str = "<!-- bench:sidecar:start -->";
const END: &str = "<!-- bench:sidecar:end -->";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (make bench)"]
async fn sidecar_ingest_and_fan_out() {
    let files = raise_open_files();
    let largest = *SUBSCRIBERS.iter().max().unwrap();
    let skipped = (files < largest as u64 + SPARE_FILES).then(|| {
        format!("the open-file limit is {files}, and {largest} subscribers need {}", largest as u64 + SPARE_FILES)
    });
    if let Some(why) = &skipped {
        println!("{why}: running only the smaller fan-out cases (raise `ulimit -Hn` to run them all)");
    }
    // `BENCH_SIDECAR_FAN_OUT_ONLY=1` (while working on /events): the fan-out cases alone,
    // printed, and nothing written.
    let fan_out_only = std::env::var_os("BENCH_SIDECAR_FAN_OUT_ONLY").is_some();
    let ingest = if fan_out_only { Vec::new() } else { ingest().await };
    let mut fan_out_rows = Vec::new();
    for transport in [Transport::Tcp, Transport::Unix] {
        for n in SUBSCRIBERS.into_iter().filter(|&n| n as u64 + SPARE_FILES <= files) {
            fan_out_rows.push(fan_out(transport, n).await);
        }
    }
    let idle = fan_out_rows.iter().map(|r| r.subscribers).max().unwrap_or(0);
    let idle = (idle, if fan_out_only { 0.0 } else { idle_connection_kib(idle).await });
    let table = markdown(&ingest, &fan_out_rows, idle, skipped.as_deref());
    println!("\n{table}");
    if fan_out_only {
        return;
    }
    let results = root().join("bench/results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("sidecar.md"), &table).unwrap();
    if skipped.is_none() {
        write_benchmarks_md(&table);
    }
}
