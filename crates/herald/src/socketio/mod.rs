//! Socket.IO over the engine: namespaces, the connect handshake of revisions 4 and 5, events, acks, binary
//! attachments and rooms. Applications (and the gateway's sites) drive it through [`SocketIo`] and
//! [`NamespaceHandler`].

mod ack;
mod conn;
mod frames;
mod handler;
mod namespace;
mod pacer;
mod plain;
mod plain_in;
mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::engineio::Version;
use herald_protocol::socketio::{self as sio, PacketType};
use herald_protocol::DecodeError;
use parking_lot::RwLock;
use serde_json::Value;

use crate::engine::{
    CloseReason, Engine, EngineConfig, EngineHandler, Message, Session, Transport,
};

pub use ack::{AckError, AckReply, AckSender};
pub use conn::Conn;
pub use frames::{encode_event, with_offset, EncodeError};
pub use handler::Refusal;
pub use handler::{
    AcceptAll, Accepted, ConnectRequest, Decision, IncomingEvent, NamespaceHandler, PendingCatchUp,
    PendingDecision, Recovery, Resumed, SocketData,
};
pub use namespace::{Namespace, Outgoing, Target};
pub use plain::Plain;
pub use socket::{EmitError, Missed, Socket};

/// Event names socket.io reserves for its own lifecycle: clients may not emit them, nor may publishers.
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Socket.IO settings.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// Time a client has to join a namespace after the handshake before it is closed. Default 45 s.
    pub connect_timeout: Duration,
    /// Most binary attachments in one packet. Default 10.
    pub max_attachments: usize,
    /// Most namespace CONNECTs one session may have decided (each may call an auth webhook); one more closes
    /// the session. Duplicates of a CONNECT already decided or in flight do not count: they are ignored.
    /// Default 8.
    pub max_connect_attempts: u32,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            connect_timeout: Duration::from_secs(45),
            max_attachments: 10,
            max_connect_attempts: 8,
        }
    }
}

/// A protocol violation by a client; it closes the client's session.
#[derive(Debug, thiserror::Error)]
enum ProtocolError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("a text packet arrived while binary attachments were expected")]
    TextDuringAttachments,
    #[error("a binary message arrived without a binary packet announcing it")]
    UnexpectedBinary,
    #[error("event name {0:?} is reserved")]
    ReservedEvent(String),
    #[error("clients may not send {0:?} packets")]
    UnexpectedPacket(PacketType),
}

/// The socket.io server: a cheap-to-clone handle over its namespaces.
#[derive(Clone)]
pub struct SocketIo {
    inner: Arc<Inner>,
}

struct Inner {
    config: SocketIoConfig,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    next_socket_key: AtomicU64,
}

/// A socket.io server and the engine that carries it; serve `engine.router()`.
pub fn server(engine: EngineConfig, config: SocketIoConfig) -> (SocketIo, Engine<SocketIo>) {
    let io = SocketIo::new(config);
    let engine = Engine::new(engine, io.clone());
    (io, engine)
}

impl SocketIo {
    /// A server with only the default namespace `/`, which accepts everyone.
    pub fn new(config: SocketIoConfig) -> Self {
        let io = SocketIo {
            inner: Arc::new(Inner {
                config,
                namespaces: RwLock::new(HashMap::new()),
                next_socket_key: AtomicU64::new(0),
            }),
        };
        io.add_namespace("/", AcceptAll);
        io
    }

    /// Adds (or replaces) namespace `name`, which must start with `/`.
    pub fn add_namespace(&self, name: &str, handler: impl NamespaceHandler) -> Arc<Namespace> {
        let ns = Arc::new(Namespace::new(name, Arc::new(handler)));
        self.inner
            .namespaces
            .write()
            .insert(name.to_string(), Arc::clone(&ns));
        ns
    }

    /// Serves `namespace`, made by the caller, in place of any of the same name.
    pub(crate) fn insert_namespace(&self, namespace: Arc<Namespace>) {
        self.inner
            .namespaces
            .write()
            .insert(namespace.name().to_string(), namespace);
    }

    /// Stops serving namespace `name`: new clients are refused as for any unknown namespace, and its sockets are
    /// disconnected (`io server disconnect`, so socket.io clients do not reconnect to it).
    pub fn remove_namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        let namespace = self.inner.namespaces.write().remove(name)?;
        for socket in namespace.close() {
            socket.disconnect();
        }
        Some(namespace)
    }

    /// Namespace `name`, if it exists.
    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.inner.namespaces.read().get(name).cloned()
    }

    fn on_text(&self, session: &Arc<Session<Conn>>, text: &str) -> Result<(), ProtocolError> {
        if session.conn.partial.lock().is_some() {
            return Err(ProtocolError::TextDuringAttachments);
        }
        let packet = sio::decode(text, self.inner.config.max_attachments)?;
        if packet.kind.is_binary() {
            if let Some(data) = &packet.data {
                sio::check_placeholders(data, packet.attachments)?;
            }
            if packet.attachments > 0 {
                *session.conn.partial.lock() = Some(Box::new(conn::Partial {
                    kind: packet.kind,
                    nsp: packet.nsp.to_string(),
                    id: packet.id,
                    data: packet.data,
                    expected: packet.attachments,
                    binaries: Vec::with_capacity(packet.attachments),
                }));
                return Ok(());
            }
        }
        self.dispatch(session, packet, Vec::new())
    }

    fn on_binary(&self, session: &Arc<Session<Conn>>, data: Bytes) -> Result<(), ProtocolError> {
        let complete = {
            let mut partial = session.conn.partial.lock();
            let pending = partial.as_mut().ok_or(ProtocolError::UnexpectedBinary)?;
            pending.binaries.push(data);
            if pending.binaries.len() < pending.expected {
                return Ok(());
            }
            partial.take()
        };
        let Some(p) = complete.map(|p| *p) else {
            return Ok(());
        };
        let packet = sio::Packet {
            kind: p.kind,
            nsp: &p.nsp,
            query: None,
            attachments: p.expected,
            id: p.id,
            data: p.data,
        };
        self.dispatch(session, packet, p.binaries)
    }

    fn dispatch(
        &self,
        session: &Arc<Session<Conn>>,
        packet: sio::Packet<'_>,
        binaries: Vec<Bytes>,
    ) -> Result<(), ProtocolError> {
        let conn = &session.conn;
        match packet.kind {
            PacketType::Connect => self.connect(session, packet.nsp, packet.data, packet.query),
            PacketType::Disconnect => {
                if let Some(socket) = conn.socket(packet.nsp) {
                    conn.detach(&socket);
                    socket
                        .namespace()
                        .remove(&socket, "client namespace disconnect");
                }
            }
            PacketType::Event | PacketType::BinaryEvent => {
                // Events for a namespace the client has not joined are dropped, as socket.io does.
                let Some(socket) = conn.socket(packet.nsp) else {
                    return Ok(());
                };
                let Some(Value::Array(mut items)) = packet.data else {
                    return Err(ProtocolError::UnexpectedPacket(packet.kind));
                };
                let name = match items.remove(0) {
                    Value::String(name) => name,
                    other => other.to_string(),
                };
                if RESERVED_EVENTS.contains(&name.as_str()) {
                    return Err(ProtocolError::ReservedEvent(name));
                }
                let ack = packet.id.map(|id| AckSender::new(&socket, id));
                let event = IncomingEvent {
                    name,
                    args: items,
                    binaries,
                    ack,
                };
                socket.namespace().handler().on_event(&socket, event);
            }
            PacketType::Ack | PacketType::BinaryAck => {
                let (Some(socket), Some(id), Some(Value::Array(args))) =
                    (conn.socket(packet.nsp), packet.id, packet.data)
                else {
                    return Ok(());
                };
                socket.acks.lock().resolve(id, AckReply { args, binaries });
            }
            PacketType::ConnectError => return Err(ProtocolError::UnexpectedPacket(packet.kind)),
        }
        Ok(())
    }

    fn connect(
        &self,
        session: &Arc<Session<Conn>>,
        nsp: &str,
        auth: Option<Value>,
        nsp_query: Option<&str>,
    ) {
        let Some(ns) = self.namespace(nsp) else {
            connect_error(session, nsp, "Invalid namespace");
            return;
        };
        match session
            .conn
            .begin_connect(nsp, self.inner.config.max_connect_attempts)
        {
            conn::Begin::Go => {}
            conn::Begin::Duplicate => {
                tracing::debug!(
                    sid = session.sid(),
                    nsp,
                    "ignored a CONNECT for a namespace already joined or joining"
                );
                return;
            }
            conn::Begin::TooMany => {
                crate::limits::Limit::AuthAttempts.hit();
                ns.metrics.refused();
                tracing::info!(
                    sid = session.sid(),
                    limit = self.inner.config.max_connect_attempts,
                    "closed a session: too many namespace CONNECTs"
                );
                connect_error(session, nsp, "too many connection attempts on this session");
                session.close(CloseReason::PolicyViolation);
                return;
            }
            conn::Begin::Closed => return,
        }
        let version = session.version();
        let mut query: Vec<(String, String)> =
            form_urlencoded::parse(session.conn.query().as_bytes())
                .into_owned()
                .collect();
        query.extend(form_urlencoded::parse(nsp_query.unwrap_or("").as_bytes()).into_owned());
        let request = ConnectRequest {
            nsp: nsp.to_string(),
            auth: match version {
                Version::V4 => auth,
                // Revision 4 has no auth payload; its namespace query stands in, as socket.io's allowEIO3 does.
                Version::V3 => nsp_query.map(|q| {
                    let pairs = form_urlencoded::parse(q.as_bytes()).into_owned();
                    Value::Object(pairs.map(|(k, v)| (k, Value::String(v))).collect())
                }),
            },
            query,
            cookie: session.conn.cookie().map(str::to_string),
            version,
            plain: session.conn.plain(),
        };
        match ns.handler().authorize(request) {
            Decision::Now(result) => self.finish_connect(session, &ns, result),
            Decision::Later(mut decision) => {
                // Most answers need no wait (a JWT, a free auth slot): taken now, they cost no task.
                if let Some(result) = ready_now(&mut decision) {
                    return self.finish_connect(session, &ns, result);
                }
                let io = self.clone();
                let session = Arc::clone(session);
                tokio::spawn(async move {
                    let result = decision.await;
                    if session.closed().is_none() {
                        io.finish_connect(&session, &ns, result);
                    }
                });
            }
        }
    }

    /// Asks namespace `nsp` to let a plain session's client in, with `auth` as its CONNECT's auth payload; its
    /// answer (welcome or refusal) is queued on the session like any packet.
    pub fn connect_plain(&self, session: &Arc<Session<Conn>>, nsp: &str, auth: Option<Value>) {
        if session.conn.plain().is_some() {
            self.connect(session, nsp, auth, None);
        }
    }

    fn finish_connect(
        &self,
        session: &Arc<Session<Conn>>,
        ns: &Arc<Namespace>,
        decision: Result<Accepted, Refusal>,
    ) {
        let accepted = match decision {
            Ok(accepted) => accepted,
            Err(Refusal(message)) => {
                tracing::debug!(sid = session.sid(), nsp = ns.name(), reason = %message, "refused a namespace connection");
                session.conn.abandon_connect(ns.name());
                ns.metrics.refused();
                connect_error(session, ns.name(), &message);
                return;
            }
        };
        let version = session.version();
        // Only revision 5 clients (socket.io 3+) can recover; 4.6+ clients use it. Plain clients continue from
        // their last event's id instead (`after`).
        let plain = session.conn.plain();
        let recovery = accepted
            .recovery
            .filter(|_| version == Version::V4 && plain.is_none());
        let resumed = recovery.as_ref().and_then(|r| r.resumed.clone());
        let id: Arc<str> = match (&resumed, version) {
            (Some(resumed), _) => resumed.id.as_str().into(),
            (None, Version::V3) if ns.name() == "/" => session.sid().into(),
            (None, Version::V3) => format!("{}#{}", ns.name(), session.sid()).into(),
            (None, Version::V4) => crate::engine::new_sid("").into(),
        };
        if resumed.is_some() {
            // The client came back before this node saw its old connection go: the old socket leaves first.
            if let Some(old) = ns.socket(&id) {
                old.session.conn.detach(&old);
                ns.remove(&old, CloseReason::TransportClose.as_str());
            }
        }
        let key = self.inner.next_socket_key.fetch_add(1, Ordering::Relaxed);
        let pid = recovery.as_ref().map(|r| r.pid.clone().into_boxed_str());
        let socket = Arc::new(Socket::new(
            id,
            key,
            Arc::clone(ns),
            Arc::clone(session),
            accepted.data,
            pid,
        ));
        if !session.conn.attach(&socket) {
            return;
        }
        // What must reach the client before any live packet: a resumed socket's missed packets (live packets
        // wait while what was logged since the first read is read), else what its rooms retain. Asked before the
        // socket is reachable, read once it has joined.
        let first = match &resumed {
            Some(resumed) => {
                let catch_up = ns.handler().catch_up(&socket, &resumed.after);
                let missed = resumed.missed.clone();
                Some(Box::pin(async move {
                    let mut missed = missed;
                    missed.extend(catch_up.await);
                    missed
                }) as PendingCatchUp)
            }
            None => match accepted.after.as_deref().filter(|_| plain.is_some()) {
                Some(after) => Some(ns.handler().catch_up(&socket, after)),
                None => ns.handler().on_join(&socket, &accepted.rooms),
            },
        };
        let hold = first.as_ref().map(|_| socket.hold());
        match ns.add(&socket) {
            namespace::Added::Yes => {}
            // The session closed meanwhile and its close already took the socket out.
            namespace::Added::Disconnected => return,
            namespace::Added::Closed => {
                session.conn.detach(&socket);
                socket.mark_disconnected();
                connect_error(session, ns.name(), "Invalid namespace");
                return;
            }
            namespace::Added::Full(limit) => {
                session.conn.detach(&socket);
                socket.mark_disconnected();
                tracing::debug!(
                    sid = session.sid(),
                    nsp = ns.name(),
                    limit,
                    "refused a namespace connection: full"
                );
                ns.metrics.refused();
                connect_error(
                    session,
                    ns.name(),
                    &format!("'{}' is at its connection limit", ns.name()),
                );
                return;
            }
        }
        for room in &accepted.rooms {
            socket.join(room);
        }
        let reply = match version {
            Version::V4 => {
                let answer = ConnectAnswer {
                    sid: socket.id(),
                    pid: recovery.as_ref().map(|r| r.pid.as_str()),
                };
                frames::simple(PacketType::Connect, ns.name(), Some(&answer))
            }
            Version::V3 => frames::simple::<Value>(PacketType::Connect, ns.name(), None),
        };
        let _ = session.send(reply);
        ns.metrics.accepted();
        if let (Some(first), Some(hold)) = (first, hold) {
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                let first = first.await;
                socket.release(hold, first);
            });
        }
        ns.handler().on_connect(&socket);
        // The client may have left while `on_connect` ran (its CONNECT answer was already out): the handler
        // hears of the leaving now, after the connect, never before it.
        if let Some(reason) = socket.announced() {
            ns.handler().on_disconnect(&socket, reason);
        }
    }
}

/// Polls `future` once, outside any task: its answer when it has one already. A pending future is then moved
/// into a task, whose first poll registers the task's own waker (a future heeds the waker of its latest poll
/// only), so the no-op waker of this poll is never the one that counts.
fn ready_now<T>(future: &mut Pin<Box<dyn Future<Output = T> + Send>>) -> Option<T> {
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

/// The answer to a v5 CONNECT: the socket id, and the private id of connection-state recovery when offered.
#[derive(serde::Serialize)]
struct ConnectAnswer<'a> {
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<&'a str>,
}

fn connect_error(session: &Session<Conn>, nsp: &str, message: &str) {
    let frame = match session.version() {
        Version::V4 => frames::simple(
            PacketType::ConnectError,
            nsp,
            Some(&serde_json::json!({ "message": message })),
        ),
        Version::V3 => frames::simple(PacketType::ConnectError, nsp, Some(message)),
    };
    let _ = session.send(frame);
}

impl EngineHandler for SocketIo {
    type Conn = Conn;

    fn new_conn(
        &self,
        request: &http::request::Parts,
        _version: Version,
        transport: Transport,
    ) -> Conn {
        let cookie = request
            .headers
            .get(http::header::COOKIE)
            .and_then(|v| v.to_str().ok());
        Conn::new(request.uri.query().unwrap_or(""), cookie, transport)
    }

    fn on_open(&self, session: &Arc<Session<Conn>>) {
        // Revision 4 clients are in the default namespace from the start, without a CONNECT of their own.
        if session.version() == Version::V3 {
            self.connect(session, "/", None, None);
        }
    }

    fn on_message(&self, session: &Arc<Session<Conn>>, message: Message<'_>) {
        // No handler call after close: a session closed halfway through a POST (or a WebSocket read) is done.
        if session.closed().is_some() {
            return;
        }
        let result = match message {
            Message::Text(text) => self.on_text(session, text),
            Message::Binary(data) => self.on_binary(session, data),
        };
        if let Err(e) = result {
            tracing::info!(sid = session.sid(), error = %e, "closed a session: socket.io protocol violation");
            session.close(CloseReason::ParseError);
        }
    }

    fn on_close(&self, session: &Arc<Session<Conn>>, reason: CloseReason) {
        for socket in session.conn.take_all() {
            socket.namespace().remove(&socket, reason.as_str());
        }
    }

    fn plain_frames(
        &self,
        session: &Arc<Session<Conn>>,
        frames: std::collections::VecDeque<herald_protocol::engineio::OutFrame>,
        out: &mut Vec<crate::engine::PlainFrame>,
    ) {
        let Some(kind) = session.conn.plain() else {
            return;
        };
        let welcome = |nsp: &str| {
            session
                .conn
                .socket(nsp)
                .map(|socket| socket.rooms().split_off(1))
                .unwrap_or_default()
        };
        plain::convert(kind, frames, welcome, out);
    }

    fn on_plain_text(&self, session: &Arc<Session<Conn>>, text: &str) {
        if session.closed().is_some() {
            return;
        }
        plain_in::on_text(session, text);
    }

    fn on_heartbeat(&self, session: &Arc<Session<Conn>>) {
        if !session.conn.has_sockets()
            && session.opened_at().elapsed() > self.inner.config.connect_timeout
        {
            tracing::debug!(
                sid = session.sid(),
                "closed a session that joined no namespace in time"
            );
            session.close(CloseReason::ServerClose);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    type Pending = Pin<Box<dyn Future<Output = u8> + Send>>;

    #[tokio::test]
    async fn an_answer_ready_at_once_is_taken_now_and_a_pending_one_finishes_in_its_task() {
        let mut ready: Pending = Box::pin(async { 1 });
        assert_eq!(ready_now(&mut ready), Some(1));

        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut later: Pending = Box::pin(async move { rx.await.unwrap() });
        assert_eq!(ready_now(&mut later), None);
        // Moved into a task after a poll with a waker that does nothing: the task's own poll is the one that
        // counts, so the send below wakes it.
        let task = tokio::spawn(later);
        tokio::task::yield_now().await;
        tx.send(2).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert_eq!(answer.unwrap().unwrap(), 2);
    }
}
