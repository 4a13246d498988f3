//! The sidecar's HTTP/1.1 server. Each connection's first request head is read here: a
//! subscription to `/events` gets the connection to itself ([`events::stream_to_socket`]),
//! anything else goes to hyper and the axum routes, with the bytes already read put back
//! in front. Later requests on a keep-alive connection (an `/events` among them) are all
//! hyper's.

use super::events::{self, Subscription};
use super::fanout::Conn;
use super::Sidecar;
use axum::body::Bytes;
use axum::http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The longest first request head looked at here; a longer one is hyper's to judge.
const MAX_HEAD: usize = 16 << 10;
/// A connection that sends no complete request head in this long is closed.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutting down waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// Headers parsed in a first request head; more, and hyper reads it.
const MAX_HEADERS: usize = 64;

/// Where the sidecar listens: a loopback TCP address or a Unix socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

/// A connected socket of either kind, as the event writer uses it: non-blocking reads and
/// vectored writes, and waiting for readiness.
pub(super) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize>;
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn ready(&self, interest: Interest) -> impl Future<Output = std::io::Result<tokio::io::Ready>> + Send;
    /// The socket, out of tokio's hands, for a fan-out shard.
    fn into_conn(self) -> std::io::Result<Conn>;
}

impl Socket for TcpStream {
    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
    fn ready(&self, interest: Interest) -> impl Future<Output = std::io::Result<tokio::io::Ready>> + Send {
        TcpStream::ready(self, interest)
    }
    fn into_conn(self) -> std::io::Result<Conn> {
        Ok(Conn::Tcp(mio::net::TcpStream::from_std(self.into_std()?)))
    }
}

impl Socket for UnixStream {
    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        UnixStream::try_write_vectored(self, bufs)
    }
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        UnixStream::try_read(self, buf)
    }
    fn ready(&self, interest: Interest) -> impl Future<Output = std::io::Result<tokio::io::Ready>> + Send {
        UnixStream::ready(self, interest)
    }
    fn into_conn(self) -> std::io::Result<Conn> {
        Ok(Conn::Unix(mio::net::UnixStream::from_std(self.into_std()?)))
    }
}

/// Accepts connections until `shutdown`, then ends the streams and waits (a while) for
/// the requests in flight.
pub(super) async fn serve(listener: Listener, sidecar: Arc<Sidecar>, shutdown: impl Future<Output = ()>) {
    let router = super::app(Arc::clone(&sidecar));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        let (router, sidecar, watcher) = (router.clone(), Arc::clone(&sidecar), graceful.watcher());
        match accepted {
            Ok(Accepted::Tcp(stream)) => {
                // Events are written whole, one `writev` each: nothing to gain by waiting.
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, router, sidecar, watcher));
            }
            Ok(Accepted::Unix(stream)) => {
                tokio::spawn(connection(stream, router, sidecar, watcher));
            }
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                eprintln!("mcpgw sidecar: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    sidecar.closing.cancel();
    if let Some(fanout) = sidecar.fanout.get() {
        fanout.wake_all();
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        eprintln!("mcpgw sidecar: requests still in flight after {} s; stopping anyway", DRAIN.as_secs());
    }
}

enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// What the first request head on a connection is.
enum First {
    /// Not all of it has arrived.
    Partial,
    /// `GET /events`, complete, with no body and nothing after it.
    Events { uri: Uri, headers: HeaderMap },
    /// Anything else (or something this reading is not sure of): hyper's.
    Other,
}

fn first_request(head: &[u8]) -> First {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return First::Partial,
        Err(_) => return First::Other,
    };
    let path = request.path.unwrap_or_default();
    if request.method != Some("GET")
        || request.version != Some(1)
        || len != head.len()
        || path.split('?').next() != Some("/events")
    {
        return First::Other;
    }
    let Ok(uri) = path.parse::<Uri>() else { return First::Other };
    let mut map = HeaderMap::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
        else {
            return First::Other;
        };
        map.append(name, value);
    }
    // A body, or a protocol switch, is not a subscription.
    let has_body = map.contains_key(TRANSFER_ENCODING) || map.get_all(CONTENT_LENGTH).iter().any(|v| v != "0");
    if has_body || map.contains_key(UPGRADE) {
        return First::Other;
    }
    First::Events { uri, headers: map }
}

async fn connection<S: Socket>(mut stream: S, router: axum::Router, sidecar: Arc<Sidecar>, watcher: Watcher) {
    let mut head = BytesMut::with_capacity(1024);
    loop {
        match tokio::time::timeout(HEAD_TIMEOUT, stream.read_buf(&mut head)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        match first_request(&head) {
            First::Partial if head.len() < MAX_HEAD => continue,
            First::Events { uri, headers } => {
                drop(watcher);
                match Subscription::open(&sidecar, &uri, &headers) {
                    Ok(subscription) => events::stream_to_socket(stream, subscription).await,
                    Err(refused) => refuse(stream, *refused).await,
                }
                return;
            }
            First::Partial | First::Other => break,
        }
    }
    let io = TokioIo::new(Prefixed { head: head.freeze(), stream });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, TowerToHyperService::new(router));
    let _ = watcher.watch(conn).await;
}

/// Writes a refused subscription's response and closes the connection.
async fn refuse<S: Socket>(mut stream: S, refused: Response) {
    let status = refused.status();
    let content_type =
        refused.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let content_type = content_type.to_owned();
    let body = axum::body::to_bytes(refused.into_body(), 64 << 10).await.unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_ok() && stream.write_all(&body).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// A connection with bytes already read from it put back in front.
struct Prefixed<S> {
    head: Bytes,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.head.is_empty() {
            return Pin::new(&mut me.stream).poll_read(cx, buf);
        }
        let n = me.head.len().min(buf.remaining());
        buf.put_slice(&me.head.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(head: &str) -> &'static str {
        match first_request(head.as_bytes()) {
            First::Partial => "partial",
            First::Events { .. } => "events",
            First::Other => "other",
        }
    }

    #[test]
    fn only_a_complete_bodiless_get_of_events_is_taken_over() {
        assert_eq!(kind("GET /events?servers=github HTTP/1.1\r\nhost: x\r\n\r\n"), "events");
        assert_eq!(kind("GET /events HTTP/1.1\r\nhost: x\r\n"), "partial");
        assert_eq!(kind("GET /events HTTP/1.0\r\n\r\n"), "other");
        assert_eq!(kind("POST /events HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind("GET /events/ HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind("GET /audit HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind("GET /events HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"), "other");
        assert_eq!(kind("GET /events HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"), "other");
        assert_eq!(kind("GET /events HTTP/1.1\r\nupgrade: websocket\r\n\r\n"), "other");
        // A second request behind the first: hyper reads them in turn.
        assert_eq!(kind("GET /events HTTP/1.1\r\n\r\nGET /audit HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind("GET /events HTTP/1.1\r\nbad header\r\n\r\n"), "other");
        assert_eq!(kind("GET /events HTTP/1.1\r\ncontent-length: 0\r\n\r\n"), "events");
    }
}
