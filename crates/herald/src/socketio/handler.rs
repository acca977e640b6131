//! What an application plugs into a namespace: who may connect, and what to do with events and disconnects.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::engineio::Version;
use serde_json::Value;

use super::ack::AckSender;
use super::socket::{Missed, Socket};

/// A client asking to join a namespace.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The namespace, `/` or `/<name>`.
    pub nsp: String,
    /// The `auth` payload of a v5 CONNECT (socket.io 3+ clients).
    pub auth: Option<Value>,
    /// The handshake query pairs, then for v4 clients the namespace query pairs.
    pub query: Vec<(String, String)>,
    /// The handshake's `Cookie` header, for backends that authenticate by session cookie.
    pub cookie: Option<String>,
    /// The client's Engine.IO revision.
    pub version: Version,
    /// The plain protocol the client speaks, when it is not Socket.IO.
    pub plain: Option<super::plain::Plain>,
}

impl ConnectRequest {
    /// The first value of query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Data the application attaches to an accepted socket.
pub type SocketData = Box<dyn Any + Send + Sync>;

/// A namespace's decision to let a client in.
#[derive(Default)]
pub struct Accepted {
    /// Rooms the socket joins before its CONNECT is answered, so it misses nothing published right after.
    pub rooms: Vec<String>,
    /// Application data, readable through [`Socket::data`].
    pub data: Option<SocketData>,
    /// Connection-state recovery for this socket, when the namespace offers it.
    pub recovery: Option<Recovery>,
    /// The offset a plain client's stream continues from (its `Last-Event-ID`): it gets what was logged after it
    /// (through [`NamespaceHandler::catch_up`]) instead of what its rooms retain.
    pub after: Option<String>,
}

/// Connection-state recovery (socket.io 4.6+): the CONNECT answer carries `pid`, logged packets carry their
/// offset as last argument, and a client that comes back shows both in its `auth`.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The private session id to answer with.
    pub pid: String,
    /// Set when this connect resumes an earlier socket.
    pub resumed: Option<Resumed>,
}

/// What a resumed socket gets back: its id, and what it missed.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The earlier socket's id.
    pub id: String,
    /// The packets logged after the client's offset that reach the socket, oldest first, as read before the
    /// CONNECT was decided. [`NamespaceHandler::catch_up`] reads what was logged after the last of them.
    pub missed: Vec<Missed>,
    /// The offset to catch up from: the last of `missed`, else the client's.
    pub after: String,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("rooms", &self.rooms)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

/// A refusal, sent to the client as a CONNECT_ERROR with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// The packets a resumed socket still has to get, read once it has joined its rooms.
pub type PendingCatchUp = Pin<Box<dyn Future<Output = Vec<Missed>> + Send>>;

/// A future decision, for checks that must wait (an auth webhook).
pub type PendingDecision = Pin<Box<dyn Future<Output = Result<Accepted, Refusal>> + Send>>;

/// The answer to a [`ConnectRequest`]: now, or later.
pub enum Decision {
    Now(Result<Accepted, Refusal>),
    Later(PendingDecision),
}

/// An event from a client.
#[derive(Debug)]
pub struct IncomingEvent {
    pub name: String,
    pub args: Vec<Value>,
    /// Binary attachments; `args` hold `{"_placeholder":true,"num":n}` where each goes.
    pub binaries: Vec<Bytes>,
    /// Present when the client asked for an acknowledgement.
    pub ack: Option<AckSender>,
}

/// A namespace's behaviour. Callbacks run on the connection's task: they must not block.
pub trait NamespaceHandler: Send + Sync + 'static {
    /// Decides whether a client may join. The default lets everyone in, into no room.
    fn authorize(&self, _request: ConnectRequest) -> Decision {
        Decision::Now(Ok(Accepted::default()))
    }

    /// Most sockets the namespace holds at once; a CONNECT decided while it is full is refused. Default none.
    fn max_sockets(&self) -> Option<usize> {
        None
    }

    /// A socket joined the namespace and its CONNECT was answered.
    fn on_connect(&self, _socket: &Arc<Socket>) {}

    /// The packets logged after offset `after` that reach `socket`, a resumed socket that has just joined its
    /// rooms (live packets wait meanwhile). The default has none.
    fn catch_up(&self, _socket: &Arc<Socket>, _after: &str) -> PendingCatchUp {
        Box::pin(async { Vec::new() })
    }

    /// What a socket that has just joined `rooms` gets before any live packet (retained state), for a socket
    /// that is not resumed. Called before the socket joins; the future runs after. `None`: nothing, and live
    /// packets flow at once. The default has none.
    fn on_join(&self, _socket: &Arc<Socket>, _rooms: &[String]) -> Option<PendingCatchUp> {
        None
    }

    /// A client emitted an event.
    fn on_event(&self, _socket: &Arc<Socket>, _event: IncomingEvent) {}

    /// A socket left the namespace; `reason` is socket.io's disconnect reason.
    fn on_disconnect(&self, _socket: &Arc<Socket>, _reason: &'static str) {}
}

/// The handler of a namespace that only accepts connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl NamespaceHandler for AcceptAll {}
