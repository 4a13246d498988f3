//! The live part of `/events` on the sidecar's own connections: a few threads (shards),
//! each owning its share of the subscribers' sockets and polling them with mio. A record
//! on the bus wakes every shard once; a shard then writes its chunk to each of its
//! subscribers in one pass (a `writev` each, no task to schedule per subscriber), and
//! waits for a socket only when it does not take what it is given.
//!
//! A subscription comes here once it has caught up (its replay from the store read and
//! written) and leaves when its client closes, it falls `subscriber_queue` events behind
//! (`lagged`), or the sidecar shuts down.

use super::events::{lagged_chunk, write_queue, Published, Selection, SubscriberGuard, LAST_CHUNK};
use super::Sidecar;
use axum::body::Bytes;
use std::collections::VecDeque;
use std::io::{IoSlice, Read as _, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::broadcast::Receiver;

/// The token of a shard's waker; subscriber `i` is token `i + 1`.
const WAKER: mio::Token = mio::Token(0);

/// A subscriber's socket, taken from tokio.
pub(super) enum Conn {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Conn {
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write_vectored(bufs),
            Conn::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Conn::Tcp(s) => s,
            Conn::Unix(s) => s,
        }
    }
}

/// A caught-up subscription handed to a shard.
pub(super) struct Adopt {
    pub(super) conn: Conn,
    pub(super) selection: Selection,
    /// The last sequence number it is past.
    pub(super) sent: u64,
    /// Its own place on the bus: what it has not read there yet, the shard may have
    /// passed already.
    pub(super) live: Receiver<Arc<Published>>,
    pub(super) counted: SubscriberGuard,
}

struct Shard {
    inbox: mpsc::Sender<Adopt>,
    waker: mio::Waker,
}

/// The shards, started with the server.
pub(super) struct FanOut {
    shards: Vec<Shard>,
    next: AtomicUsize,
}

impl FanOut {
    /// Starts `threads` shards for `sidecar`; they end when it closes.
    pub(super) fn start(sidecar: &Arc<Sidecar>, threads: usize) -> std::io::Result<FanOut> {
        let mut shards = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKER)?;
            let (inbox, adopted) = mpsc::channel();
            // Subscribe here, before anything is handed over: nothing published from now
            // on is missed, and `passed` below is at most where this receiver starts.
            let rx = sidecar.bus.subscribe();
            let passed = sidecar.last_published.load(Ordering::Acquire);
            let sidecar = Arc::clone(sidecar);
            std::thread::Builder::new()
                .name(format!("mcpgw-events-{i}"))
                .spawn(move || ShardLoop::new(sidecar, poll, adopted, rx, passed).run())?;
            shards.push(Shard { inbox, waker });
        }
        Ok(FanOut { shards, next: AtomicUsize::new(0) })
    }

    /// Hands a subscription to the next shard. False if the shards are gone (the sidecar
    /// is closing); the subscription is dropped, which closes its connection.
    pub(super) fn adopt(&self, a: Adopt) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len().max(1);
        let Some(shard) = self.shards.get(i) else { return false };
        if shard.inbox.send(a).is_err() {
            return false;
        }
        let _ = shard.waker.wake();
        true
    }

    /// Something is on the bus (or the sidecar is closing): every shard looks.
    pub(super) fn wake_all(&self) {
        for shard in &self.shards {
            let _ = shard.waker.wake();
        }
    }
}

/// One subscriber in a shard.
struct Live {
    conn: Conn,
    selection: Selection,
    sent: u64,
    /// Chunks the socket has not taken yet (the first possibly in part).
    queue: VecDeque<Bytes>,
    /// Its stream is over: once `queue` is written, it is closed.
    done: bool,
    /// Registered for writability too: only while `queue` waits for the socket (a
    /// socket that is always writable would otherwise wake the shard at every read of
    /// its client's).
    watching_writes: bool,
    _counted: SubscriberGuard,
}

impl Live {
    /// Writes what the socket takes now. Err: the connection is gone.
    fn flush(&mut self) -> std::io::Result<()> {
        let conn = &mut self.conn;
        write_queue(&mut self.queue, |slices| conn.write_vectored(slices))
    }

    /// Reads (and ignores) what the client sent. False once it has closed.
    fn drain_input(&mut self, scratch: &mut [u8]) -> bool {
        loop {
            match self.conn.read(scratch) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Ends the stream: `last` (if any), the body's last chunk, then close once written.
    fn end(&mut self, last: Option<Bytes>) {
        if self.done {
            return;
        }
        self.done = true;
        self.queue.extend(last);
        self.queue.push_back(Bytes::from_static(LAST_CHUNK));
    }

    /// One message from the bus. False: drop this subscriber now.
    fn deliver(&mut self, p: &Published, limit: usize, sidecar: &Sidecar) -> bool {
        if self.done {
            return true;
        }
        if let Some(seq) = p.seq() {
            if seq <= self.sent {
                return true;
            }
            self.sent = seq;
            if !self.selection.wants(p.value()) {
                return true;
            }
        }
        let chunk = p.chunk();
        if self.queue.is_empty() {
            // Nothing waiting: write straight from the shared bytes, and queue only what
            // the socket does not take.
            let written = loop {
                match self.conn.write_vectored(&[IoSlice::new(chunk)]) {
                    Ok(0) => return false,
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break 0,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            };
            if written < chunk.len() {
                self.queue.push_back(chunk.slice(written..));
            }
            return true;
        }
        self.queue.push_back(chunk.clone());
        if self.flush().is_err() {
            return false;
        }
        if self.queue.len() > limit {
            // More than its queue unsent: the client does not keep up.
            sidecar.counters.lagged.inc();
            self.end(Some(lagged_chunk()));
            return self.flush().is_ok();
        }
        true
    }
}

struct ShardLoop {
    sidecar: Arc<Sidecar>,
    poll: mio::Poll,
    adopted: mpsc::Receiver<Adopt>,
    rx: Receiver<Arc<Published>>,
    /// The highest sequence number this shard has taken from the bus (or was past when
    /// it subscribed): a subscriber handed over must get everything up to here from its
    /// own receiver, and the shard gives it everything after.
    passed: u64,
    subs: Vec<Option<Live>>,
    free: Vec<usize>,
    limit: usize,
}

impl ShardLoop {
    fn new(
        sidecar: Arc<Sidecar>,
        poll: mio::Poll,
        adopted: mpsc::Receiver<Adopt>,
        rx: Receiver<Arc<Published>>,
        passed: u64,
    ) -> ShardLoop {
        let limit = sidecar.config.subscriber_queue.max(1);
        ShardLoop { sidecar, poll, adopted, rx, passed, subs: Vec::new(), free: Vec::new(), limit }
    }

    fn run(mut self) {
        let mut events = mio::Events::with_capacity(1024);
        let mut scratch = [0_u8; 512];
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("mcpgw sidecar: an /events shard cannot poll: {e}");
                break;
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let i = event.token().0 - 1;
                let Some(live) = self.subs.get_mut(i).and_then(Option::as_mut) else { continue };
                let mut keep = true;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    keep = live.drain_input(&mut scratch);
                }
                if keep && event.is_writable() {
                    keep = live.flush().is_ok();
                }
                self.settle(i, keep);
            }
            if self.sidecar.closing.is_cancelled() {
                break;
            }
            while let Ok(a) = self.adopted.try_recv() {
                self.adopt(a);
            }
            if !self.take_bus() {
                break;
            }
        }
        // Closing: end every stream, as far as the sockets take it now.
        for live in self.subs.iter_mut().flatten() {
            live.end(None);
            let _ = live.flush();
        }
    }

    /// Everything on the bus, to every subscriber. False once the bus is closed.
    fn take_bus(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(p) => {
                    if let Some(seq) = p.seq() {
                        self.passed = self.passed.max(seq);
                    }
                    for i in 0..self.subs.len() {
                        let Some(live) = self.subs.get_mut(i).and_then(Option::as_mut) else { continue };
                        let keep = live.deliver(&p, self.limit, &self.sidecar);
                        self.settle(i, keep);
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Lagged(_)) => {
                    // This shard fell more than the bus behind (the machine is overloaded):
                    // its subscribers missed records and end with `lagged`.
                    for i in 0..self.subs.len() {
                        let Some(live) = self.subs.get_mut(i).and_then(Option::as_mut) else { continue };
                        if !live.done {
                            self.sidecar.counters.lagged.inc();
                            live.end(Some(lagged_chunk()));
                        }
                        let keep = live.flush().is_ok();
                        self.settle(i, keep);
                    }
                }
                Err(TryRecvError::Closed) => return false,
            }
        }
    }

    /// Takes a caught-up subscription: first what it has not read of the bus up to where
    /// this shard is, from its own receiver; from then on the shard's.
    fn adopt(&mut self, a: Adopt) {
        let Adopt { mut conn, selection, sent, mut live, counted } = a;
        let i = self.free.pop().unwrap_or(self.subs.len());
        let token = mio::Token(i + 1);
        if self.poll.registry().register(conn.source(), token, mio::Interest::READABLE).is_err() {
            self.release(i);
            return;
        }
        let mut sub = Live {
            conn,
            selection,
            sent,
            queue: VecDeque::new(),
            done: false,
            watching_writes: false,
            _counted: counted,
        };
        let mut keep = true;
        while keep {
            match live.try_recv() {
                Ok(p) => match p.seq() {
                    Some(seq) if seq <= self.passed => keep = sub.deliver(&p, self.limit, &self.sidecar),
                    Some(_) => break, // the shard has this one still to come
                    None => {}        // a heartbeat: the next one will do
                },
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                Err(TryRecvError::Lagged(_)) => {
                    self.sidecar.counters.lagged.inc();
                    sub.end(Some(lagged_chunk()));
                    break;
                }
            }
        }
        drop(live);
        let keep = keep && sub.flush().is_ok();
        if i == self.subs.len() {
            self.subs.push(Some(sub));
        } else if let Some(slot) = self.subs.get_mut(i) {
            *slot = Some(sub);
        }
        self.settle(i, keep);
    }

    /// After writing to subscriber `i`: drops it if `!keep` or its stream is over and
    /// written, else watches its socket for writability while anything waits for it.
    fn settle(&mut self, i: usize, keep: bool) {
        let Some(live) = self.subs.get_mut(i).and_then(Option::as_mut) else { return };
        if !keep || (live.done && live.queue.is_empty()) {
            self.remove(i);
            return;
        }
        let waiting = !live.queue.is_empty();
        if waiting != live.watching_writes {
            let interest =
                if waiting { mio::Interest::READABLE | mio::Interest::WRITABLE } else { mio::Interest::READABLE };
            if self.poll.registry().reregister(live.conn.source(), mio::Token(i + 1), interest).is_err() {
                self.remove(i);
                return;
            }
            live.watching_writes = waiting;
        }
    }

    /// A slot taken for a subscriber that did not stay.
    fn release(&mut self, i: usize) {
        if i < self.subs.len() {
            self.free.push(i);
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(mut live) = self.subs.get_mut(i).and_then(Option::take) {
            let _ = self.poll.registry().deregister(live.conn.source());
            self.free.push(i);
        }
    }
}
