//! Socket.IO's state for one Engine.IO session: its handshake, the sockets it has in each namespace, and a
//! binary packet waiting for its attachments.

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::socketio::PacketType;
use parking_lot::Mutex;
use serde_json::Value;

use super::plain::Plain;
use super::socket::Socket;

/// Per-session state, stored in the engine session.
#[derive(Debug)]
pub struct Conn {
    query: Box<str>,
    cookie: Option<Box<str>>,
    /// Set for a plain WebSocket or event-stream session, whose packets are converted as they leave.
    plain: Option<Plain>,
    sockets: Mutex<Sockets>,
    /// Boxed: it is rare and 112 bytes inline, which every idle connection would carry.
    pub(crate) partial: Mutex<Option<Box<Partial>>>,
}

#[derive(Debug, Default)]
struct Sockets {
    list: Vec<Arc<Socket>>,
    /// Namespaces whose CONNECT is being decided (an auth webhook or a JWT check is in flight).
    connecting: Vec<Box<str>>,
    /// CONNECTs this session has had decided or is having decided, for `max_connect_attempts`.
    attempts: u32,
    /// Set when the session closed; no socket may attach after that.
    closed: bool,
}

/// Whether a CONNECT may go on to the namespace's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// Go on: the namespace is now marked as connecting.
    Go,
    /// The session already has a socket in this namespace, or a CONNECT for it is being decided.
    Duplicate,
    /// The session used up its CONNECT attempts.
    TooMany,
    /// The session closed.
    Closed,
}

/// A binary packet whose attachments are still arriving.
#[derive(Debug)]
pub(crate) struct Partial {
    pub kind: PacketType,
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<Value>,
    pub expected: usize,
    pub binaries: Vec<Bytes>,
}

impl Conn {
    pub(crate) fn new(
        query: &str,
        cookie: Option<&str>,
        transport: crate::engine::Transport,
    ) -> Self {
        Conn {
            query: query.into(),
            cookie: cookie.map(Into::into),
            plain: Plain::of(transport),
            sockets: Mutex::new(Sockets::default()),
            partial: Mutex::new(None),
        }
    }

    /// The handshake's raw query string.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The plain protocol the session speaks, when it is not Socket.IO.
    pub fn plain(&self) -> Option<Plain> {
        self.plain
    }

    /// The handshake's `Cookie` header.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// This session's socket in namespace `nsp`.
    pub fn socket(&self, nsp: &str) -> Option<Arc<Socket>> {
        self.sockets
            .lock()
            .list
            .iter()
            .find(|s| s.namespace().name() == nsp)
            .cloned()
    }

    /// The session's first socket: a plain session's only one.
    pub fn first_socket(&self) -> Option<Arc<Socket>> {
        self.sockets.lock().list.first().cloned()
    }

    /// Whether any namespace is joined.
    pub fn has_sockets(&self) -> bool {
        !self.sockets.lock().list.is_empty()
    }

    /// Claims namespace `nsp` for one CONNECT: at most one socket per session and namespace exists or is being
    /// decided at any moment, and a session gets at most `max_attempts` decisions.
    pub(crate) fn begin_connect(&self, nsp: &str, max_attempts: u32) -> Begin {
        let mut sockets = self.sockets.lock();
        if sockets.closed {
            return Begin::Closed;
        }
        let connected = sockets.list.iter().any(|s| s.namespace().name() == nsp);
        if connected || sockets.connecting.iter().any(|n| &**n == nsp) {
            return Begin::Duplicate;
        }
        if sockets.attempts >= max_attempts {
            return Begin::TooMany;
        }
        sockets.attempts += 1;
        sockets.connecting.push(nsp.into());
        Begin::Go
    }

    /// The CONNECT for `nsp` was refused: the namespace may be asked again.
    pub(crate) fn abandon_connect(&self, nsp: &str) {
        self.sockets.lock().connecting.retain(|n| &**n != nsp);
    }

    /// Records a new socket, ending its CONNECT; false when the session already closed.
    pub(crate) fn attach(&self, socket: &Arc<Socket>) -> bool {
        let mut sockets = self.sockets.lock();
        let nsp = socket.namespace().name();
        sockets.connecting.retain(|n| &**n != nsp);
        if sockets.closed {
            return false;
        }
        sockets.list.push(Arc::clone(socket));
        true
    }

    pub(crate) fn detach(&self, socket: &Arc<Socket>) {
        self.sockets.lock().list.retain(|s| !Arc::ptr_eq(s, socket));
    }

    /// Closes the list and returns every socket, for the session's close.
    pub(crate) fn take_all(&self) -> Vec<Arc<Socket>> {
        let mut sockets = self.sockets.lock();
        sockets.closed = true;
        std::mem::take(&mut sockets.list)
    }
}
