//! A socket: one client in one namespace. It emits to its client, waits for acks, and joins or leaves rooms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::engineio::OutFrame;
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
    /// Connection-state recovery: the private id the client was given (`pid`); such a socket gets each logged
    /// packet with its offset as the last argument.
    pid: Option<Box<str>>,
    /// Set while a resumed socket's missed packets are being read: live packets wait in `held` so that they
    /// follow the missed ones.
    holding: AtomicBool,
    held: Mutex<Vec<Held>>,
}

/// Most live packets a resumed socket holds while it catches up.
const MAX_HELD: usize = 1024;

/// A live packet held back while a resumed socket catches up.
pub(crate) struct Held {
    pub(crate) offset: Option<Arc<str>>,
    pub(crate) frames: Vec<OutFrame>,
}

/// A packet from a site's recovery log, ready for one socket.
#[derive(Debug, Clone)]
pub struct Missed {
    /// Its offset in the log.
    pub offset: Arc<str>,
    /// Its frames, the offset already the last argument.
    pub frames: Vec<OutFrame>,
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
        pid: Option<Box<str>>,
        holding: bool,
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
            pid,
            holding: AtomicBool::new(holding),
            held: Mutex::new(Vec::new()),
        }
    }

    /// The private id of connection-state recovery, when the socket may recover.
    pub fn pid(&self) -> Option<&str> {
        self.pid.as_deref()
    }

    /// Queues a broadcast's frames, or holds them while the socket catches up. `Err` when the outbox is full.
    pub(crate) fn deliver(
        &self,
        offset: Option<&Arc<str>>,
        frames: &[OutFrame],
        volatile: bool,
    ) -> bool {
        if self.holding.load(Ordering::Acquire) {
            let mut held = self.held.lock();
            // Checked again under the lock `release` takes, so nothing is held after the release.
            if self.holding.load(Ordering::Acquire) {
                // Bounded like an outbox: a catch-up that takes too long closes the client, which comes back.
                if held.len() >= MAX_HELD {
                    drop(held);
                    self.session.close(crate::engine::CloseReason::OutboxFull);
                    return false;
                }
                held.push(Held {
                    offset: offset.cloned(),
                    frames: frames.to_vec(),
                });
                return true;
            }
        }
        if volatile {
            self.session.send_volatile(frames.iter().cloned())
        } else {
            self.session.send_all(frames.iter().cloned()).is_ok()
        }
    }

    /// Sends the packets a resumed socket missed, oldest first, then the live ones held meanwhile (those the
    /// missed list already holds are sent once), and delivers live from then on.
    pub(crate) fn release(&self, missed: Vec<Missed>) {
        let mut held = self.held.lock();
        let mut frames: Vec<OutFrame> = Vec::new();
        for packet in &missed {
            let live_too = held
                .iter()
                .any(|h| h.offset.as_deref() == Some(&*packet.offset));
            if !live_too {
                frames.extend(packet.frames.iter().cloned());
            }
        }
        for packet in held.drain(..) {
            frames.extend(packet.frames);
        }
        self.holding.store(false, Ordering::Release);
        drop(held);
        if self.session.send_all(frames).is_err() {
            tracing::debug!(socket = %self.id, "a resumed socket's outbox filled with its missed packets");
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
