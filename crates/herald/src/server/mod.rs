//! The HTTP server under every route: it accepts connections up to a cap, gives each one a deadline in every
//! state (headers, idle, a client that stops reading), and stops in steps with a hard deadline.
//!
//! axum's own `serve` sets no header timeout and waits for every connection at shutdown, so one slowloris
//! client holds a SIGTERM forever; this is the same hyper connection with the deadlines set. With TLS
//! (`tls::ServerTls`) each connection first makes its handshake, within the header deadline.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::limits::Limit;
use crate::tls::ServerTls;

mod direct;

pub(crate) use direct::head_bytes;
pub use direct::{DirectUpgrades, Refused};

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Time to receive a request's headers, counted from when herald starts waiting for them: from the accept,
    /// or from the end of the previous response. It closes idle keep-alive connections too.
    pub header_read_timeout: Duration,
    /// Time an HTTP connection may move no byte in either direction (a stalled body, a client that stops
    /// reading). Upgraded WebSockets leave this watch for their own heartbeat. Must exceed the ping interval,
    /// which a long-polling GET may wait.
    pub idle_timeout: Duration,
    /// Most HTTP connections at once; past it herald stops accepting and the kernel's backlog waits.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; a larger one is answered 431.
    pub max_header_bytes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 64 << 10,
        }
    }
}

/// Where a running server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// No new connections; open ones finish their request and close.
    Draining,
    /// Every connection is dropped now.
    Stopped,
}

/// Controls a running [`serve`]: `drain` stops accepting and winds connections down, `stop` drops them.
#[derive(Debug, Clone)]
pub struct Control {
    phase: Arc<watch::Sender<Phase>>,
}

impl Control {
    fn new() -> (Control, watch::Receiver<Phase>) {
        let (tx, rx) = watch::channel(Phase::Running);
        (
            Control {
                phase: Arc::new(tx),
            },
            rx,
        )
    }

    /// Stops accepting; each open connection ends after its current request.
    pub fn drain(&self) {
        self.phase.send_if_modified(|p| {
            let change = *p == Phase::Running;
            if change {
                *p = Phase::Draining;
            }
            change
        });
    }

    /// Drops every connection now; `serve` returns.
    pub fn stop(&self) {
        self.phase.send_replace(Phase::Stopped);
    }
}

/// A server ready to run on `listener`; `control` drives its shutdown.
pub struct Server {
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    tls: Option<ServerTls>,
    direct: Option<Arc<dyn DirectUpgrades>>,
    control: Control,
    phase: watch::Receiver<Phase>,
}

impl Server {
    pub fn new(listener: TcpListener, router: Router, config: ServeConfig) -> Self {
        let (control, phase) = Control::new();
        Server {
            listener,
            router,
            config,
            tls: None,
            direct: None,
            control,
            phase,
        }
    }

    /// Serves HTTPS (and WSS) with `tls` instead of plain HTTP, when given.
    pub fn with_tls(mut self, tls: Option<ServerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Answers the upgrades `direct` takes itself, before hyper, on plain TCP (`direct.rs`).
    pub fn with_direct_upgrades(mut self, direct: Option<Arc<dyn DirectUpgrades>>) -> Self {
        self.direct = direct;
        self
    }

    /// The handle that drains or stops this server.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Accepts and serves until drained (every connection ended) or stopped.
    pub async fn run(self) {
        let Server {
            listener,
            router,
            config,
            tls,
            direct,
            mut phase,
            ..
        } = self;
        let config = Arc::new(config);
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let nodelay = Nodelay::of(&listener);
        let mut connections = JoinSet::new();
        loop {
            if *phase.borrow() != Phase::Running {
                break;
            }
            tokio::select! {
                changed = phase.changed() => if changed.is_err() { break },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = accept(&listener, &permits, nodelay) => {
                    let Some((stream, peer, permit)) = accepted else { continue };
                    let slot = ConnectionSlot(Arc::new(parking_lot::Mutex::new(Some(permit))));
                    let served = Served {
                        router: router.clone(),
                        config: Arc::clone(&config),
                        phase: phase.clone(),
                        slot: slot.clone(),
                        direct: direct.clone(),
                    };
                    // Boxed: the connection's future is large, and spawning moves it (tokio copies a task's
                    // future into its cell, then its output over it): unboxed, those copies were over half the
                    // instructions of a socket.io connect (scripts/instructions.sh: 254k -> 116k per connect).
                    let task = Box::pin(connection(stream, peer, tls.clone(), served));
                    connections.spawn(async move {
                        task.await;
                        slot.release();
                    });
                }
            }
        }
        drop(listener);
        // Draining: connections wind down by themselves, until `stop`.
        while !connections.is_empty() && *phase.borrow() != Phase::Stopped {
            tokio::select! {
                _ = connections.join_next() => {}
                changed = phase.changed() => if changed.is_err() { break },
            }
        }
        if !connections.is_empty() {
            tracing::info!(
                connections = connections.len(),
                "dropping the connections left at the hard deadline"
            );
        }
        connections.abort_all();
    }
}

/// How accepted connections get `TCP_NODELAY` (every write of herald's is a whole message).
#[derive(Clone, Copy)]
enum Nodelay {
    /// From the listening socket: Linux copies it to each connection it accepts.
    Inherited,
    /// With a `setsockopt` per accepted connection.
    PerConnection,
}

impl Nodelay {
    /// Sets it on `listener` where accepted connections inherit it: one call per server instead of one per
    /// connection (a syscall of every connect).
    fn of(listener: &TcpListener) -> Nodelay {
        let inherited =
            cfg!(target_os = "linux") && SockRef::from(listener).set_tcp_nodelay(true).is_ok();
        if inherited {
            Nodelay::Inherited
        } else {
            Nodelay::PerConnection
        }
    }
}

/// The next connection and its peer's address, once a permit is free. `None` when the accept failed (logged;
/// the loop goes on).
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    nodelay: Nodelay,
) -> Option<(
    TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let permit = match Arc::clone(permits).try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            Limit::HttpConnections.hit();
            tracing::warn!(
                "max_http_connections reached: waiting for a connection to close before accepting"
            );
            Arc::clone(permits).acquire_owned().await.ok()?
        }
    };
    match listener.accept().await {
        Ok((stream, peer)) => {
            if let Nodelay::PerConnection = nodelay {
                let _ = stream.set_nodelay(true);
            }
            Some((stream, peer, permit))
        }
        Err(e) => {
            // Out of file handles, most likely: wait rather than spin; idle connections time out meanwhile.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// A connection's place among `max_http_connections`, in each of its requests' extensions. An upgraded
/// WebSocket leaves it when its HTTP part ends; an event stream, whose HTTP response lasts as long as its
/// session, leaves it with [`ConnectionSlot::release`]: `max_connections` bounds sessions, and without this
/// `max_http_connections` event streams would keep every other request (publishes, health checks) from being
/// accepted.
#[derive(Clone)]
pub struct ConnectionSlot(Arc<parking_lot::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl ConnectionSlot {
    /// The connection no longer counts against `max_http_connections`.
    pub fn release(&self) {
        self.0.lock().take();
    }
}

/// What serving one connection needs besides its stream.
struct Served {
    router: Router,
    config: Arc<ServeConfig>,
    phase: watch::Receiver<Phase>,
    slot: ConnectionSlot,
    direct: Option<Arc<dyn DirectUpgrades>>,
}

/// Serves one connection: over TLS when `tls` is given, once its handshake is done. `peer` is the client's
/// address as the accept gave it (no `getpeername` call), for the connect rate and the `X-Forwarded-For` of a
/// request forwarded to another node.
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<ServerTls>,
    mut served: Served,
) {
    let Some(tls) = tls else {
        let (stream, read) = match served.direct.take() {
            Some(direct) => {
                let (config, phase) = (&served.config, &mut served.phase);
                match direct::first_request(stream, peer, &*direct, config, phase).await {
                    direct::First::Served => return,
                    direct::First::Http(stream, read) => (stream, read),
                }
            }
            None => (stream, Bytes::new()),
        };
        return serve(stream, Some(ConnectInfo(peer)), Held::Armed, read, served).await;
    };
    let peer = Some(ConnectInfo(peer));
    let mut phase = served.phase.clone();
    // The handshake is the start of the first request: a client that sends nothing, or too little, is gone when
    // its head would have been due.
    let deadline = served.config.header_read_timeout;
    tokio::select! {
        handshake = tokio::time::timeout(deadline, tls.accept(stream)) => match handshake {
            Ok(Some(stream)) => serve(stream, peer, Held::Never, Bytes::new(), served).await,
            Ok(None) => {}
            Err(_) => {
                Limit::HeaderReadTimeout.hit();
                tracing::debug!("closed a connection whose TLS handshake did not finish in time");
            }
        },
        () = stopped(&mut phase) => {}
    }
}

/// Resolves once the server stops (or is gone).
async fn stopped(phase: &mut watch::Receiver<Phase>) {
    // The guard `wait_for` returns is not `Send`: dropped here, never held by the caller.
    let _ = phase.wait_for(|p| *p == Phase::Stopped).await.is_ok();
}

/// Serves HTTP on `stream` until it ends, idles past `idle_timeout`, or the server stops. `held`: whether a 101
/// is held back for the upgraded connection's first write (plain TCP) or not (TLS). `read`: the connection's
/// first bytes, read already.
async fn serve<S>(
    stream: S,
    peer: Option<ConnectInfo<std::net::SocketAddr>>,
    held: Held,
    read: Bytes,
    served: Served,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Served {
        router,
        config,
        mut phase,
        slot,
        ..
    } = served;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
        held,
        read,
    });
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        let mut request = request.map(Body::new);
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        request.extensions_mut().insert(slot.clone());
        async move { router.oneshot(request).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        if *phase.borrow() == Phase::Draining && !draining {
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        let idle_check = tokio::time::sleep(activity.until_idle(config.idle_timeout));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        Limit::HeaderReadTimeout.hit();
                    } else if e.is_parse_too_large() {
                        Limit::HeaderBytes.hit();
                    }
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = idle_check => {
                if activity.idle_for() >= config.idle_timeout {
                    Limit::IdleTimeout.hit();
                    tracing::debug!(idle_ms = config.idle_timeout.as_millis() as u64, "closed an idle connection");
                    break;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Stopped {
                    break;
                }
            }
        }
    }
    // An upgraded WebSocket keeps the stream: its own task and heartbeat own it from here.
    activity.retire();
}

/// When a connection last moved a byte (also a forwarded WebSocket's tunnel, `cluster/forward.rs`).
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// Set once the HTTP part of the connection is over (an upgrade took the stream): no more bookkeeping.
    retired: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }

    pub(crate) fn touch(&self) {
        if !self.retired.load(Ordering::Relaxed) {
            let now = self.start.elapsed().as_millis() as u64;
            self.last_ms.store(now, Ordering::Relaxed);
        }
    }

    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Time until the connection would be idle for `limit`, at least a little so the check does not spin.
    fn until_idle(&self, limit: Duration) -> Duration {
        limit
            .saturating_sub(self.idle_for())
            .max(Duration::from_millis(10))
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }
}

/// One non-blocking read of `tcp`, done by `read` into room for `capacity` bytes. A read that returns fewer bytes
/// than it had room for took all the socket held, so the socket's readiness is cleared with it, as tokio's own
/// `poll_read` does: readiness is edge-triggered, and bytes that come later raise a new edge. Without that the
/// next read would find the socket empty with one more `recv` (one per connect, and one per burst a client
/// sends). `read` reads through tokio (`try_read`, `try_read_buf`), whose readiness check inside this one
/// agrees with it.
pub(crate) fn try_read_draining(
    tcp: &TcpStream,
    capacity: usize,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut got = 0;
    let drained = tcp.try_io(tokio::io::Interest::READABLE, || {
        got = read()?;
        if got > 0 && got < capacity {
            // Not an error: `try_io` clears the readiness it saw when its closure says the socket is empty.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match drained {
        // The would-block that only cleared the readiness after a read.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        drained => drained.map(|()| got),
    }
}

/// A stream that notes when bytes move, and that can hold hyper's `101 Switching Protocols` back.
pub(crate) struct Watched<T = TcpStream> {
    pub(crate) inner: T,
    pub(crate) activity: Arc<Activity>,
    pub(crate) held: Held,
    /// Bytes of the stream read before hyper took it (`direct.rs`), read first.
    pub(crate) read: Bytes,
}

/// hyper's `101 Switching Protocols` on a plain TCP connection, held back so that it leaves in one write with
/// the upgraded connection's first bytes (the Engine.IO open packet): one send and one loopback packet fewer per
/// WebSocket connect. A socket.io WebSocket takes the held bytes with the stream (`engine::wire`); any other
/// reader or writer of the upgraded stream sends them first. hyper's flush of the 101 does not send them: it
/// is its last act on the connection.
#[derive(Debug, Default)]
pub(crate) enum Held {
    /// Never holds: TLS (its records are written by the TLS stream), or a forwarded WebSocket's tunnel.
    #[default]
    Never,
    /// Holds a 101 when hyper writes one.
    Armed,
    /// A 101 not sent yet.
    Switch(Vec<u8>),
}

const SWITCHING_PROTOCOLS: &[u8] = b"HTTP/1.1 101 ";

impl<T> Watched<T> {
    /// The held 101, for whoever writes the upgraded connection's first bytes.
    pub(crate) fn take_held(&mut self) -> Option<bytes::Bytes> {
        match std::mem::take(&mut self.held) {
            Held::Switch(bytes) => Some(bytes.into()),
            Held::Never | Held::Armed => None,
        }
    }

    /// Holds `bufs` when they are a 101 and the stream is armed; true when held.
    fn hold(&mut self, bufs: &[io::IoSlice<'_>]) -> bool {
        if !matches!(self.held, Held::Armed) {
            return false;
        }
        let is_switch = bufs
            .iter()
            .find(|b| !b.is_empty())
            .is_some_and(|b| b.starts_with(SWITCHING_PROTOCOLS));
        if !is_switch {
            return false;
        }
        let mut held = Vec::with_capacity(bufs.iter().map(|b| b.len()).sum());
        for buf in bufs {
            held.extend_from_slice(buf);
        }
        self.held = Held::Switch(held);
        true
    }
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// Sends the held 101, if any, before anything else moves.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Held::Switch(bytes) = &mut self.held {
            if bytes.is_empty() {
                self.held = Held::Never;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, bytes))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            bytes.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A reader of the upgraded stream may be waiting for the peer, which waits for the 101.
        std::task::ready!(self.poll_send_held(cx))?;
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hold(&[io::IoSlice::new(data)]) {
            return Poll::Ready(Ok(data.len()));
        }
        std::task::ready!(self.poll_send_held(cx))?;
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.hold(bufs) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        std::task::ready!(self.poll_send_held(cx))?;
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_send_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";

    /// A connection whose client sent `bytes`, once the server's side is readable.
    async fn sent(bytes: &[u8]) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(bytes).await.unwrap();
        server.readable().await.unwrap();
        (client, server)
    }

    /// Whether tokio still holds `tcp` readable: `try_io` calls its closure only then.
    fn held_readable(tcp: &TcpStream) -> bool {
        let mut called = false;
        let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
            called = true;
            Ok(())
        });
        called
    }

    #[tokio::test]
    async fn a_read_that_empties_the_socket_clears_its_readiness_and_the_next_bytes_raise_it() {
        let (mut client, server) = sent(b"hello").await;
        let mut buf = [0u8; 64];
        let n = try_read_draining(&server, buf.len(), || server.try_read(&mut buf)).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(!held_readable(&server), "a short read took all there was");
        client.write_all(b"again").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.readable())
            .await
            .expect("the next bytes make the socket readable again")
            .unwrap();
        let n = try_read_draining(&server, buf.len(), || server.try_read(&mut buf)).unwrap();
        assert_eq!(&buf[..n], b"again");
    }

    #[tokio::test]
    async fn a_full_read_keeps_the_readiness_and_an_empty_socket_would_block() {
        let (client, server) = sent(b"0123456789").await;
        let mut buf = [0u8; 4];
        let n = try_read_draining(&server, buf.len(), || server.try_read(&mut buf)).unwrap();
        assert_eq!((n, &buf), (4, b"0123"), "a full read");
        assert!(held_readable(&server), "more may be there");
        let mut rest = [0u8; 64];
        let n = try_read_draining(&server, rest.len(), || server.try_read(&mut rest)).unwrap();
        assert_eq!(&rest[..n], b"456789");
        let blocked = try_read_draining(&server, rest.len(), || server.try_read(&mut rest));
        assert_eq!(blocked.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(client);
        server.readable().await.unwrap();
        let eof = try_read_draining(&server, rest.len(), || server.try_read(&mut rest)).unwrap();
        assert_eq!(eof, 0, "the end of the stream is read as 0");
    }

    #[tokio::test]
    async fn accepted_connections_have_nodelay_without_a_call_each() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nodelay = Nodelay::of(&listener);
        if cfg!(target_os = "linux") {
            assert!(matches!(nodelay, Nodelay::Inherited));
        }
        let permits = Arc::new(Semaphore::new(1));
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _, _) = accept(&listener, &permits, nodelay).await.unwrap();
        assert!(stream.nodelay().unwrap());
    }

    fn watched(held: Held) -> (Watched<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let watched = Watched {
            inner: ours,
            activity: Arc::new(Activity::new()),
            held,
            read: Bytes::new(),
        };
        (watched, theirs)
    }

    #[tokio::test]
    async fn an_armed_stream_holds_a_101_until_the_next_write_and_sends_both_in_order() {
        let (mut stream, mut peer) = watched(Held::Armed);
        stream.write_all(SWITCH).await.unwrap();
        stream.flush().await.unwrap();
        let mut byte = [0; 1];
        let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut byte)).await;
        assert!(early.is_err(), "nothing is sent before the next write");
        stream.write_all(b"first").await.unwrap();
        let mut got = vec![0; SWITCH.len() + 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..SWITCH.len()], SWITCH);
        assert_eq!(&got[SWITCH.len()..], b"first");
    }

    #[tokio::test]
    async fn a_read_of_the_upgraded_stream_sends_the_held_101_first() {
        let (mut stream, mut peer) = watched(Held::Armed);
        stream.write_all(SWITCH).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = [0; 5];
            stream.read_exact(&mut got).await.unwrap();
            got
        });
        let mut got = vec![0; SWITCH.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, SWITCH);
        peer.write_all(b"hello").await.unwrap();
        assert_eq!(&reader.await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn only_a_101_on_an_armed_stream_is_held() {
        let (mut stream, mut peer) = watched(Held::Armed);
        stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let mut got = [0; 19];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\n");

        let (mut stream, mut peer) = watched(Held::Never);
        stream.write_all(SWITCH).await.unwrap();
        let mut got = vec![0; SWITCH.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, SWITCH, "a TLS stream or a tunnel never holds");
        assert!(stream.take_held().is_none());
    }
}
