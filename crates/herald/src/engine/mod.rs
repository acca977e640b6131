//! Engine.IO server: the handshake, HTTP long-polling, WebSocket (direct or upgraded from polling), heartbeats
//! and close. The layer above plugs in through [`EngineHandler`] and sees messages, never transports.

mod heartbeat;
mod http;
mod inbound;
mod plain;
mod polling;
mod session;
mod websocket;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::body::Body;
use herald_protocol::engineio::Version;
use parking_lot::RwLock;

pub use plain::{PlainError, PlainFrame, Refused};
pub use session::{CloseReason, SendError, Session, Transport};
pub(crate) use wire::Framed;

/// What the layer above does with sessions. Handlers run on the connection's task: they must not block, and
/// they spawn whatever has to wait.
pub trait EngineHandler: Send + Sync + 'static {
    /// Per-session state of the layer above, stored inside the [`Session`].
    type Conn: Send + Sync + 'static;

    /// Builds the state for a new session from its handshake request, on the transport it starts on.
    fn new_conn(
        &self,
        request: &::http::request::Parts,
        version: Version,
        transport: Transport,
    ) -> Self::Conn;

    /// The session is open and its `open` packet queued.
    fn on_open(&self, session: &Arc<Session<Self::Conn>>);

    /// A message arrived from the client.
    fn on_message(&self, session: &Arc<Session<Self::Conn>>, message: Message<'_>);

    /// The session closed; called exactly once, after which nothing more is delivered.
    fn on_close(&self, session: &Arc<Session<Self::Conn>>, reason: CloseReason);

    /// Called on every heartbeat tick, so the layer above can expire what it is waiting for.
    fn on_heartbeat(&self, _session: &Arc<Session<Self::Conn>>) {}

    /// Turns what was queued for a plain session (a plain WebSocket or an event stream) into what goes on its
    /// wire, in order. The default passes text frames through.
    fn plain_frames(
        &self,
        _session: &Arc<Session<Self::Conn>>,
        frames: std::collections::VecDeque<herald_protocol::engineio::OutFrame>,
        out: &mut Vec<PlainFrame>,
    ) {
        out.extend(frames.into_iter().filter_map(|frame| match frame {
            herald_protocol::engineio::OutFrame::Text(text) => Some(PlainFrame::Text(text)),
            herald_protocol::engineio::OutFrame::Binary(_) => None,
        }));
    }

    /// A text frame from a plain WebSocket client.
    fn on_plain_text(&self, _session: &Arc<Session<Self::Conn>>, _text: &str) {}
}

/// Carries requests for sessions this node does not hold to the node that does (no sticky sessions: a
/// balancer may send any request of a session to any node). The engine calls it for a request whose sid it
/// does not know, did not issue (its `sid_prefix` differs) and that no node forwarded yet ([`FORWARDED`]).
pub trait Forward: Send + Sync + 'static {
    /// Sends `request` (a polling GET or POST, or a WebSocket upgrade, still upgradable) for session `sid` to
    /// the node that holds it, and answers what that node answered. `None` when no live node holds `sid`.
    fn forward(&self, sid: &str, request: ::http::Request<Body>) -> Option<Forwarded>;
}

/// The answer of a forwarded request, once the owner answered.
pub type Forwarded =
    Pin<Box<dyn Future<Output = Result<::http::Response<Body>, ForwardError>> + Send>>;

/// Why a request could not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// The owner cannot be reached (or the client went away): answered as an unknown session, so the client
    /// starts a new one.
    Unreachable,
    /// This node carries as many forwarded WebSockets as it may: answered 503.
    Busy,
}

/// The header a node adds to every request it forwards; a request that carries it is never forwarded again,
/// so two nodes that disagree about who holds a session cannot bounce a request between them.
pub const FORWARDED: &str = "x-herald-forwarded";

/// Why no new session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    /// The engine is draining for a shutdown.
    Draining,
    /// `max_sessions` are open.
    Full,
    /// The client's address opened sessions faster than `connect_rate` allows.
    RateLimited(crate::rate::RetryAfter),
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(bytes::Bytes),
}

/// Engine settings; the defaults are socket.io's.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// URL path the engine answers on, with leading and trailing slash. Default `/socket.io/`.
    pub path: String,
    /// Time between heartbeats. Default 25 s.
    pub ping_interval: Duration,
    /// Time a heartbeat may take. Default 20 s.
    pub ping_timeout: Duration,
    /// Largest payload in bytes the server accepts in one HTTP body or WebSocket message. Default 1 MB.
    pub max_payload: usize,
    /// Time a WebSocket may take to finish an upgrade from polling. Default 10 s.
    pub upgrade_timeout: Duration,
    /// Most frames queued for one client before it is disconnected as too slow. Default 1024.
    pub outbox_frames: usize,
    /// Most bytes queued for one client before it is disconnected as too slow. Default 4 MiB.
    pub outbox_bytes: usize,
    /// Read buffer of a WebSocket and the most read per syscall, in bytes; a larger message grows it while it is
    /// read. It is the largest single item of an idle connection's memory (BENCHMARKS.md). Default 1 KiB.
    pub ws_read_buffer: usize,
    /// Bytes of outbound frames a WebSocket gathers before a write syscall; frames queued together leave in one
    /// write up to this size. Default 8 KiB.
    pub ws_write_buffer: usize,
    /// Most concurrent sessions. Default 100 000.
    pub max_sessions: usize,
    /// Whether the polling transport is offered. Default true.
    pub allow_polling: bool,
    /// Whether the WebSocket transport is offered. Default true.
    pub allow_websocket: bool,
    /// Origins allowed to connect (`https://app.example.com`); they get credentialed CORS answers. `None`
    /// allows any origin but answers no CORS headers, so browsers keep cross-origin pages from reading the
    /// polling transport. Default `None`.
    pub allowed_origins: Option<Vec<String>>,
    /// Most bytes of a handshake's query string and `Cookie` header together, which the session keeps for its
    /// life; a larger handshake is refused with 431. Default 16 KiB.
    pub max_handshake_bytes: usize,
    /// Start of every sid this engine issues: the cluster's node id, so any node can tell which node holds a
    /// session from its sid alone. Default empty (a node alone).
    pub sid_prefix: String,
    /// New sessions per client address (`limits.connects_per_ip_per_sec`), checked once per new session; the
    /// address is the peer's `ConnectInfo` (a request without one is not limited). Default `None` (no limit).
    pub connect_rate: Option<Arc<crate::rate::ConnectRate>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            path: "/socket.io/".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            upgrade_timeout: Duration::from_secs(10),
            outbox_frames: 1024,
            outbox_bytes: 4 << 20,
            ws_read_buffer: 1024,
            ws_write_buffer: 8192,
            max_sessions: 100_000,
            allow_polling: true,
            allow_websocket: true,
            allowed_origins: None,
            max_handshake_bytes: 16 << 10,
            sid_prefix: String::new(),
            connect_rate: None,
        }
    }
}

/// The engine: a cheap-to-clone handle shared by every connection.
pub struct Engine<H: EngineHandler> {
    inner: Arc<Inner<H>>,
}

impl<H: EngineHandler> Clone for Engine<H> {
    fn clone(&self) -> Self {
        Engine {
            inner: Arc::clone(&self.inner),
        }
    }
}

type SessionMap<C> = HashMap<Box<str>, Arc<Session<C>>>;

struct Inner<H: EngineHandler> {
    config: EngineConfig,
    handler: H,
    /// Polling sessions by sid. A std-style lock is fine: lookups are short and never held across an await.
    /// Sessions that start on WebSocket never need a lookup and are not stored.
    polling: RwLock<SessionMap<H::Conn>>,
    /// Sessions that started on WebSocket, by address, only so that `close_all` reaches them too.
    websockets: parking_lot::Mutex<HashMap<usize, Weak<Session<H::Conn>>>>,
    live: std::sync::atomic::AtomicUsize,
    /// Set by `close_all`: the engine opens no new session.
    draining: AtomicBool,
    /// Where requests for other nodes' sessions go; unset, they are answered as unknown sessions.
    forward: OnceLock<Arc<dyn Forward>>,
}

impl<H: EngineHandler> Engine<H> {
    pub fn new(config: EngineConfig, handler: H) -> Self {
        Engine {
            inner: Arc::new(Inner {
                config,
                handler,
                polling: RwLock::new(HashMap::new()),
                websockets: parking_lot::Mutex::new(HashMap::new()),
                live: std::sync::atomic::AtomicUsize::new(0),
                draining: AtomicBool::new(false),
                forward: OnceLock::new(),
            }),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Sends requests for sessions of other nodes through `forward` from now on; set once (later calls are
    /// ignored).
    pub fn set_forward(&self, forward: Arc<dyn Forward>) {
        let _ = self.inner.forward.set(forward);
    }

    pub fn handler(&self) -> &H {
        &self.inner.handler
    }

    /// Sessions open right now.
    pub fn session_count(&self) -> usize {
        self.inner.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers one HTTP request under the engine's path.
    pub async fn handle(&self, request: ::http::Request<Body>) -> ::http::Response<Body> {
        http::handle(self, request).await
    }

    /// An axum router that serves the engine on its path.
    pub fn router(&self) -> axum::Router {
        let engine = self.clone();
        let path = self.inner.config.path.trim_end_matches('/').to_string();
        let service = axum::routing::any(move |req: ::http::Request<Body>| {
            let engine = engine.clone();
            async move { engine.handle(req).await }
        });
        axum::Router::new()
            .route(&format!("{path}/"), service.clone())
            .route(&path, service)
    }

    fn outbox_limits(&self) -> session::OutboxLimits {
        session::OutboxLimits {
            frames: self.inner.config.outbox_frames,
            bytes: self.inner.config.outbox_bytes,
        }
    }

    /// Refuses new sessions from now on (503), for a drain.
    pub fn refuse_new_sessions(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether new sessions are refused.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Closes every open session with `reason`, whether or not it joined a namespace, and refuses new ones.
    pub fn close_all(&self, reason: CloseReason) {
        self.refuse_new_sessions();
        let polling: Vec<_> = self.inner.polling.read().values().cloned().collect();
        let websockets: Vec<_> = self
            .inner
            .websockets
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for session in polling.iter().chain(&websockets) {
            session.close(reason);
        }
    }

    /// Drops a polling session from the sid table.
    fn forget(&self, session: &Arc<Session<H::Conn>>) {
        self.inner.polling.write().remove(session.sid());
    }

    /// Runs the close handlers once. Polling sessions are forgotten separately, after their last GET.
    fn finalize(&self, session: &Arc<Session<H::Conn>>) {
        if !session.take_finalization() {
            return;
        }
        self.inner
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // A no-op for sessions that started on polling.
        self.inner
            .websockets
            .lock()
            .remove(&(Arc::as_ptr(session) as usize));
        let reason = session.closed().unwrap_or(CloseReason::TransportClose);
        tracing::debug!(
            sid = session.sid(),
            reason = reason.as_str(),
            "session closed"
        );
        self.inner.handler.on_close(session, reason);
    }
}

/// A fresh session id: `prefix` (the node id), then 16 random bytes in URL-safe base64, which keep it
/// unguessable.
pub(crate) fn new_sid(prefix: &str) -> Box<str> {
    use base64::Engine as _;
    let bytes: [u8; 16] = rand::random();
    let mut sid = String::with_capacity(prefix.len() + 22);
    sid.push_str(prefix);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut sid);
    sid.into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_start_with_the_prefix_and_carry_16_random_bytes() {
        let a = new_sid("node-id8");
        let b = new_sid("node-id8");
        assert_eq!(a.len(), 8 + 22);
        assert!(a.starts_with("node-id8") && b.starts_with("node-id8"));
        assert_ne!(a, b);
        assert_eq!(new_sid("").len(), 22);
    }
}
