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
use crate::engine::{Framed, SendError, Session};

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
    /// Set while something must reach the client before live packets (a resumed socket's missed packets, the
    /// retained state of rooms it just joined): live packets wait in `held` meanwhile.
    holding: AtomicBool,
    held: Mutex<HoldQueue>,
    /// Orders the handler's calls: `on_disconnect` runs only after `on_connect` returned.
    lifecycle: Mutex<Lifecycle>,
}

/// Where a socket is in the handler's eyes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// Added to its namespace; `on_connect` has not returned yet.
    Connecting,
    /// `on_connect` returned.
    Announced,
    /// It left before `on_connect` returned, for this reason: the connect's end announces the leaving.
    LeftEarly(&'static str),
}

/// Most live packets a socket holds while what must come first is read.
const MAX_HELD: usize = 1024;

/// What a holding socket keeps back, in the order it must reach the client.
#[derive(Default)]
pub(crate) struct HoldQueue {
    /// Holds not released yet.
    open: usize,
    next_slot: u64,
    /// Live packets held.
    live: usize,
    items: Vec<HeldItem>,
}

enum HeldItem {
    /// Where the packets of an open hold go when it is released.
    Slot(u64),
    /// A released hold's packets.
    First(Vec<Missed>),
    /// A live packet.
    Live {
        offset: Option<Arc<str>>,
        frames: Vec<OutFrame>,
    },
}

impl HoldQueue {
    /// Every held frame in order, a packet that also arrived live sent once (where it arrived live).
    fn drain(&mut self) -> Vec<OutFrame> {
        let items = std::mem::take(&mut self.items);
        self.live = 0;
        let mut frames = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                HeldItem::Slot(_) => {}
                HeldItem::Live { frames: f, .. } => frames.extend(f.iter().cloned()),
                HeldItem::First(packets) => {
                    for packet in packets {
                        let live_too = packet.offset.as_ref().is_some_and(|offset| {
                            items[i + 1..].iter().any(|later| {
                                matches!(later, HeldItem::Live { offset: Some(o), .. } if o == offset)
                            })
                        });
                        if !live_too {
                            frames.extend(packet.frames.iter().cloned());
                        }
                    }
                }
            }
        }
        frames
    }
}

/// An open hold on a socket's live packets: [`Socket::release`] ends it.
#[derive(Debug)]
#[must_use = "a hold that is never released holds the socket's packets until it closes"]
pub struct Hold(u64);

/// A packet that must reach one socket before the live ones held meanwhile: from a site's recovery log (with
/// its offset), or retained state (without).
#[derive(Debug, Clone)]
pub struct Missed {
    /// Its offset in the log, when it comes from one.
    pub offset: Option<Arc<str>>,
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
            holding: AtomicBool::new(false),
            held: Mutex::new(HoldQueue::default()),
            lifecycle: Mutex::new(Lifecycle::Connecting),
        }
    }

    /// The private id of connection-state recovery, when the socket may recover.
    pub fn pid(&self) -> Option<&str> {
        self.pid.as_deref()
    }

    /// Sends a broadcast's frames as `how` says, or holds them while something must come first. False when they
    /// were not taken (the outbox is full, or volatile frames were dropped).
    pub(crate) fn deliver(
        &self,
        offset: Option<&Arc<str>>,
        frames: &[OutFrame],
        how: Send<'_>,
    ) -> bool {
        if self.holding.load(Ordering::Acquire) {
            let mut held = self.held.lock();
            // Checked again under the lock `release` takes, so nothing is held after the last release.
            if held.open > 0 {
                // Bounded like an outbox: a read that takes too long closes the client, which comes back.
                if held.live >= MAX_HELD {
                    drop(held);
                    self.session.close(crate::engine::CloseReason::OutboxFull);
                    return false;
                }
                held.live += 1;
                held.items.push(HeldItem::Live {
                    offset: offset.cloned(),
                    frames: frames.to_vec(),
                });
                return true;
            }
        }
        match how {
            Send::Queued => self.session.send_all(frames.iter().cloned()).is_ok(),
            Send::Direct(framed) => self.session.send_direct(frames, framed).is_ok(),
            Send::Volatile => self.session.send_volatile(frames.iter().cloned()),
        }
    }

    /// Holds live packets from now until the hold is released with what must reach the client before them.
    /// Holds nest: packets flow again when the last one is released.
    pub fn hold(&self) -> Hold {
        let mut held = self.held.lock();
        held.open += 1;
        held.next_slot += 1;
        let slot = held.next_slot;
        held.items.push(HeldItem::Slot(slot));
        self.holding.store(true, Ordering::Release);
        Hold(slot)
    }

    /// Ends `hold`: `first` goes before the live packets held since it began (a packet of `first` that also
    /// arrived live is sent once), and when no other hold is open everything held is sent.
    pub fn release(&self, hold: Hold, first: Vec<Missed>) {
        let first = match self.session.conn.plain() {
            Some(kind) => super::plain::missed(kind, first),
            None => first,
        };
        let mut held = self.held.lock();
        if let Some(item) = held
            .items
            .iter_mut()
            .find(|item| matches!(item, HeldItem::Slot(s) if *s == hold.0))
        {
            *item = HeldItem::First(first);
        }
        held.open = held.open.saturating_sub(1);
        if held.open > 0 {
            return;
        }
        // Queued before live packets flow again, under the lock a delivery that saw the hold waits on: a
        // broadcast that finds the socket released (and may write straight to its socket) comes after them.
        let frames = held.drain();
        if self.session.send_all(frames).is_err() {
            tracing::debug!(socket = %self.id, "a socket's outbox filled with what it had to get first");
        }
        self.holding.store(false, Ordering::Release);
        drop(held);
    }

    /// `on_connect` returned. Answers the reason when the socket left meanwhile: the caller announces it.
    pub(crate) fn announced(&self) -> Option<&'static str> {
        let mut state = self.lifecycle.lock();
        match *state {
            Lifecycle::LeftEarly(reason) => Some(reason),
            _ => {
                *state = Lifecycle::Announced;
                None
            }
        }
    }

    /// The socket left its namespace: true when its connect was announced, so the caller announces this;
    /// else the connect's end will.
    pub(crate) fn leaving(&self, reason: &'static str) -> bool {
        let mut state = self.lifecycle.lock();
        match *state {
            Lifecycle::Announced => true,
            _ => {
                *state = Lifecycle::LeftEarly(reason);
                false
            }
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

    /// Emits a pre-encoded JSON array `[event, ...args]` numbered `id` without waiting for an ack: an event
    /// stream's mailbox entries, whose numbers the client gives back as its `Last-Event-ID`.
    pub fn emit_json_numbered(
        &self,
        array: &serde_json::value::RawValue,
        id: u64,
    ) -> Result<(), SendError> {
        self.session
            .send(frames::raw_event(self.ns.name(), id, array))
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

/// How a broadcast's frames go to one socket.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Send<'a> {
    /// Through the outbox.
    Queued,
    /// Straight to the socket when its task is idle, as the broadcast encoded them for the wire, else through the
    /// outbox (`Session::send_direct`).
    Direct(&'a Framed),
    /// Through the outbox while it is at most half full, else dropped (socket.io's `volatile`).
    Volatile,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(queue: &mut HoldQueue, text: &'static str, offset: Option<&str>) {
        queue.live += 1;
        queue.items.push(HeldItem::Live {
            offset: offset.map(Arc::from),
            frames: vec![OutFrame::text(text)],
        });
    }

    fn first(text: &'static str, offset: Option<&str>) -> Missed {
        Missed {
            offset: offset.map(Arc::from),
            frames: vec![OutFrame::text(text)],
        }
    }

    fn slot(queue: &mut HoldQueue, id: u64) {
        queue.items.push(HeldItem::Slot(id));
    }

    fn fill(queue: &mut HoldQueue, id: u64, packets: Vec<Missed>) {
        for item in &mut queue.items {
            if matches!(item, HeldItem::Slot(s) if *s == id) {
                *item = HeldItem::First(packets);
                return;
            }
        }
    }

    #[test]
    fn what_a_hold_was_given_goes_before_the_live_packets_held_since_it_began() {
        let mut queue = HoldQueue::default();
        slot(&mut queue, 1);
        live(&mut queue, "live-a", None);
        slot(&mut queue, 2);
        live(&mut queue, "live-b", None);
        // The second hold is released first: its packets still go after live-a, where its slot is.
        fill(&mut queue, 2, vec![first("retained-2", None)]);
        fill(&mut queue, 1, vec![first("retained-1", None)]);
        let order = queue.drain();
        assert_eq!(
            order,
            ["retained-1", "live-a", "retained-2", "live-b"].map(OutFrame::text)
        );
        assert_eq!((queue.live, queue.items.len()), (0, 0));
    }

    #[test]
    fn a_missed_packet_that_also_arrived_live_is_sent_once_where_it_arrived() {
        let mut queue = HoldQueue::default();
        slot(&mut queue, 1);
        live(&mut queue, "p2", Some("2-0"));
        live(&mut queue, "p3", Some("3-0"));
        fill(
            &mut queue,
            1,
            vec![first("p1", Some("1-0")), first("p2", Some("2-0"))],
        );
        assert_eq!(queue.drain(), ["p1", "p2", "p3"].map(OutFrame::text));
    }
}
