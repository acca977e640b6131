//! A socket: one client in one namespace. It emits to its client, waits for acks, and joins or leaves rooms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

use super::ack::{AckError, AckReply, PendingAcks};
use super::conn::Conn;
use super::frames::{self, EncodeError};
use super::handler::SocketData;
use super::namespace::Namespace;
use crate::engine::{SendError, Session};

/// Why an emit failed.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Send(#[from] SendError),
}

/// One client connected to one namespace. Handles are `Arc<Socket>`; cloning them is cheap.
pub struct Socket {
    id: Arc<str>,
    /// Dense key for room membership maps.
    pub(crate) key: u64,
    ns: Arc<Namespace>,
    pub(crate) session: Arc<Session<Conn>>,
    pub(crate) rooms: Mutex<Vec<Arc<str>>>,
    pub(crate) acks: Mutex<PendingAcks>,
    data: Option<SocketData>,
    connected: AtomicBool,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id)
            .field("nsp", &self.ns.name())
            .finish()
    }
}

impl Socket {
    pub(crate) fn new(
        id: Arc<str>,
        key: u64,
        ns: Arc<Namespace>,
        session: Arc<Session<Conn>>,
        data: Option<SocketData>,
    ) -> Self {
        Socket {
            id,
            key,
            ns,
            session,
            rooms: Mutex::new(Vec::new()),
            acks: Mutex::new(PendingAcks::default()),
            data,
            connected: AtomicBool::new(true),
        }
    }

    /// The socket id the client sees.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn id_arc(&self) -> &Arc<str> {
        &self.id
    }

    /// The namespace this socket is in.
    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.ns
    }

    /// The Engine.IO session under this socket.
    pub fn session(&self) -> &Arc<Session<Conn>> {
        &self.session
    }

    /// Application data attached when the connection was accepted.
    pub fn data<T: 'static>(&self) -> Option<&T> {
        self.data.as_ref()?.downcast_ref()
    }

    /// Whether the socket is still in its namespace.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn mark_disconnected(&self) -> bool {
        self.connected.swap(false, Ordering::AcqRel)
    }

    /// Emits `event(...args)` to this client.
    pub fn emit(&self, event: &str, args: &[Value]) -> Result<(), EmitError> {
        self.emit_binary(event, args, &[])
    }

    /// Emits an event with binary attachments referenced by placeholders in `args`.
    pub fn emit_binary(
        &self,
        event: &str,
        args: &[Value],
        binaries: &[Bytes],
    ) -> Result<(), EmitError> {
        let frames = frames::event(self.ns.name(), None, event, args, binaries)?;
        Ok(self.session.send_all(frames)?)
    }

    /// Emits an event and waits up to `timeout` for the client's acknowledgement.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        args: &[Value],
        binaries: &[Bytes],
        timeout: Duration,
    ) -> Result<AckReply, AckError> {
        let (id, reply) = self.acks.lock().register();
        let sent = frames::event(self.ns.name(), Some(id), event, args, binaries)
            .ok()
            .and_then(|f| self.session.send_all(f).ok());
        if sent.is_none() {
            self.acks.lock().forget(id);
            return Err(AckError::NotSent);
        }
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(AckError::Disconnected),
            Err(_) => {
                self.acks.lock().forget(id);
                Err(AckError::Timeout)
            }
        }
    }

    /// Emits a pre-encoded JSON array `[event, ...args]` asking for an ack; the receiver resolves with the
    /// client's answer, or fails when the socket goes. Stored messages are sent this way without re-encoding.
    pub fn emit_json_with_ack(
        &self,
        array: &serde_json::value::RawValue,
    ) -> Result<tokio::sync::oneshot::Receiver<AckReply>, AckError> {
        let (id, reply) = self.acks.lock().register();
        let frame = frames::raw_event(self.ns.name(), id, array);
        if self.session.send(frame).is_err() {
            self.acks.lock().forget(id);
            return Err(AckError::NotSent);
        }
        Ok(reply)
    }

    pub(crate) fn send_ack(&self, id: u64, args: &[Value], binaries: &[Bytes]) -> bool {
        frames::ack(self.ns.name(), id, args, binaries)
            .ok()
            .is_some_and(|f| self.session.send_all(f).is_ok())
    }

    /// Joins `room` (no-op when already in it).
    pub fn join(self: &Arc<Self>, room: &str) {
        self.ns.join(self, room);
    }

    /// Leaves `room` (no-op when not in it).
    pub fn leave(self: &Arc<Self>, room: &str) {
        self.ns.leave(self, room);
    }

    /// The rooms this socket is in, its own id first.
    pub fn rooms(&self) -> Vec<String> {
        let mut rooms = vec![self.id.to_string()];
        rooms.extend(self.rooms.lock().iter().map(|r| r.to_string()));
        rooms
    }

    /// Disconnects the socket from its namespace; the client sees `io server disconnect`.
    pub fn disconnect(self: &Arc<Self>) {
        let nsp = self.ns.name();
        let _ = self.session.send(frames::simple::<Value>(
            herald_protocol::socketio::PacketType::Disconnect,
            nsp,
            None,
        ));
        self.session.conn.detach(self);
        self.ns.remove(self, "server namespace disconnect");
    }
}
