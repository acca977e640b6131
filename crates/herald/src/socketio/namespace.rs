//! A namespace: its sockets, its rooms, and broadcast. The gateway maps each site onto one.
//!
//! Locks: `rooms` may be held while `sockets` is read (broadcast); nothing holds `sockets` and then takes
//! `rooms`, and writers take one lock at a time, so the order cannot deadlock. No lock is held across an await
//! or a handler call.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::engineio::OutFrame;
use parking_lot::RwLock;
use serde_json::Value;

use super::frames::{self, EncodeError};
use super::handler::NamespaceHandler;
use super::pacer::Pacer;
use super::plain::{Plain, PlainCache};
use super::socket::{Send, Socket};
use crate::engine::Framed;
use crate::prefetch::prefetch;

/// How many recipients ahead of its delivery a broadcast fetches a session (and twice as far, the socket): enough
/// for a load from memory to land while the deliveries between run, even the cheapest (a push onto an outbox).
const PREFETCH_AHEAD: usize = 4;

/// A broadcast's frames: `plain` for every socket, and, when the packet is in its site's recovery log, the
/// same frames with the offset as last argument for the sockets that may recover.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub plain: &'a [OutFrame],
    pub logged: Option<(&'a Arc<str>, &'a [OutFrame])>,
}

/// Which of a broadcast's frames a socket gets.
#[derive(Clone, Copy)]
enum Source {
    Plain,
    Logged,
    Converted(Plain),
}

/// A broadcast's frames encoded for direct writes ([`Framed`]), each source at most once, when the first direct
/// write needs them.
#[derive(Default)]
struct FramedCache {
    plain: OnceCell<Framed>,
    logged: OnceCell<Framed>,
    websocket: OnceCell<Framed>,
}

impl FramedCache {
    /// `None` for an event stream, which has no socket a publisher writes to: nothing is encoded for it.
    fn get(&self, source: Source, frames: &[OutFrame]) -> Option<&Framed> {
        let cell = match source {
            Source::Plain => &self.plain,
            Source::Logged => &self.logged,
            Source::Converted(Plain::WebSocket) => &self.websocket,
            Source::Converted(Plain::EventStream) => return None,
        };
        Some(cell.get_or_init(|| Framed::encode(frames)))
    }
}

/// Who a broadcast reaches: the members of `rooms` (everyone when empty) minus the members of `except_rooms`
/// and the sockets `except_sockets`. A socket id counts as a room holding just that socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub rooms: &'a [&'a str],
    pub except_rooms: &'a [&'a str],
    pub except_sockets: &'a [&'a str],
    /// Skip sockets whose outbox is already half full instead of queueing (socket.io's `volatile`).
    pub volatile: bool,
}

type Members = HashMap<u64, Arc<Socket>>;

/// What [`Namespace::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    Yes,
    /// The socket was disconnected before it could be added.
    Disconnected,
    /// The namespace holds its most sockets.
    Full(usize),
    /// The namespace is no longer served (its site was removed).
    Closed,
}

/// One namespace. Handles are `Arc<Namespace>`.
pub struct Namespace {
    name: Arc<str>,
    /// The rule clients are let in by and their events go to; a reload swaps it with clients connected.
    handler: RwLock<Arc<dyn NamespaceHandler>>,
    sockets: RwLock<HashMap<Arc<str>, Arc<Socket>>>,
    /// Set under the sockets' lock by `close`: no socket is added after.
    closed: std::sync::atomic::AtomicBool,
    rooms: RwLock<HashMap<Arc<str>, Members>>,
    /// Connects answered and sockets that left (`herald_connects_total`, `herald_disconnects_total`).
    pub(crate) metrics: crate::metrics::NamespaceMetrics,
    /// Whether broadcasts write straight to idle sockets or queue.
    pacer: Pacer,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .finish()
    }
}

impl Namespace {
    pub(crate) fn new(name: &str, handler: Arc<dyn NamespaceHandler>) -> Self {
        Namespace {
            name: name.into(),
            handler: RwLock::new(handler),
            sockets: RwLock::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            rooms: RwLock::new(HashMap::new()),
            metrics: crate::metrics::NamespaceMetrics::new(name),
            pacer: Pacer::new(),
        }
    }

    /// The namespace's handler now. Callers hold it for one call: a reload may put another in its place.
    pub(crate) fn handler(&self) -> Arc<dyn NamespaceHandler> {
        Arc::clone(&self.handler.read())
    }

    /// Puts `handler` in place for what comes next (connects, events, disconnects), keeping every socket.
    pub(crate) fn set_handler(&self, handler: Arc<dyn NamespaceHandler>) {
        *self.handler.write() = handler;
    }

    /// The namespace name, `/` or `/<name>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many sockets are connected.
    pub fn len(&self) -> usize {
        self.sockets.read().len()
    }

    /// Whether no socket is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The socket with id `id`.
    pub fn socket(&self, id: &str) -> Option<Arc<Socket>> {
        self.sockets.read().get(id).cloned()
    }

    /// Every connected socket.
    pub fn sockets(&self) -> Vec<Arc<Socket>> {
        self.sockets.read().values().cloned().collect()
    }

    /// Takes no socket from now on (a connect in flight is refused); returns the sockets it has.
    pub(crate) fn close(&self) -> Vec<Arc<Socket>> {
        let sockets = self.sockets.write();
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        sockets.values().cloned().collect()
    }

    /// Calls `f` with every connected socket, under the sockets' read lock, without copying the list (counts at
    /// scrape time). `f` must take no namespace lock.
    pub fn for_each_socket(&self, f: impl FnMut(&Arc<Socket>)) {
        self.sockets.read().values().for_each(f);
    }

    /// Every room with its member count, under the rooms' read lock (the admin console's listing). Socket ids
    /// are not among them.
    pub fn room_sizes(&self) -> Vec<(String, usize)> {
        self.rooms
            .read()
            .iter()
            .map(|(room, members)| (room.to_string(), members.len()))
            .collect()
    }

    /// The sockets in `room`.
    pub fn room_sockets(&self, room: &str) -> Vec<Arc<Socket>> {
        let mut found: Vec<_> = self
            .rooms
            .read()
            .get(room)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        if found.is_empty() {
            found.extend(self.socket(room));
        }
        found
    }

    /// Emits `event(...args)` to `target`, encoding it once; returns how many sockets it was queued for.
    pub fn broadcast(
        &self,
        target: &Target<'_>,
        event: &str,
        args: &[Value],
        binaries: &[Bytes],
    ) -> Result<usize, EncodeError> {
        let frames = frames::event(&self.name, None, event, args, binaries)?;
        let outgoing = Outgoing {
            plain: &frames,
            logged: None,
        };
        Ok(self.broadcast_frames(target, outgoing))
    }

    /// Queues already-encoded frames for every socket of `target`.
    pub fn broadcast_frames(&self, target: &Target<'_>, outgoing: Outgoing<'_>) -> usize {
        let rooms = self.rooms.read();
        let sockets = self.sockets.read();
        let mut excluded: HashSet<u64> = HashSet::new();
        for room in target.except_rooms.iter().chain(target.except_sockets) {
            if let Some(members) = rooms.get(*room) {
                excluded.extend(members.keys());
            }
            if let Some(socket) = sockets.get(*room) {
                excluded.insert(socket.key);
            }
        }
        let mut delivered = 0;
        let mut direct = if target.volatile {
            0
        } else {
            self.pacer.direct_budget()
        };
        let cache = PlainCache::default();
        let wire_frames = FramedCache::default();
        let mut deliver = |socket: &Arc<Socket>| {
            if excluded.contains(&socket.key) {
                return;
            }
            let offset = outgoing.logged.map(|(offset, _)| offset);
            let (offset, frames, source) = match (socket.session.conn.plain(), outgoing.logged) {
                (Some(kind), _) => match cache.frame(kind, &outgoing) {
                    Some(frame) => (offset, std::slice::from_ref(frame), Source::Converted(kind)),
                    None => return,
                },
                (None, Some((offset, frames))) if socket.pid().is_some() => {
                    (Some(offset), frames, Source::Logged)
                }
                _ => (None, outgoing.plain, Source::Plain),
            };
            let how = if target.volatile {
                Send::Volatile
            } else if let Some(framed) = (direct > 0)
                .then(|| wire_frames.get(source, frames))
                .flatten()
            {
                direct -= 1;
                Send::Direct(framed)
            } else {
                Send::Queued
            };
            if socket.deliver(offset, frames, how) {
                delivered += 1;
            }
        };
        let recipients: Vec<&Arc<Socket>> = match target.rooms {
            [] => sockets.values().collect(),
            [room] => {
                let members = rooms.get(*room);
                // Sized up front: collecting the members of a large room one by one grew it a dozen times.
                let mut found = Vec::with_capacity(members.map_or(0, HashMap::len) + 1);
                found.extend(members.into_iter().flat_map(HashMap::values));
                if let Some(socket) = sockets.get(*room) {
                    if !members.is_some_and(|m| m.contains_key(&socket.key)) {
                        found.push(socket);
                    }
                }
                found
            }
            many => {
                let mut seen = HashSet::new();
                let mut found = Vec::new();
                for room in many {
                    let members = rooms.get(*room).into_iter().flat_map(HashMap::values);
                    for socket in members.chain(sockets.get(*room)) {
                        if seen.insert(socket.key) {
                            found.push(socket);
                        }
                    }
                }
                found
            }
        };
        // The sockets and sessions of a large room are not in cache when a broadcast comes: each is fetched a
        // few recipients ahead of its delivery (the socket first, then, once it is in, the session it points to).
        for (i, socket) in recipients.iter().enumerate() {
            if let Some(ahead) = recipients.get(i + 2 * PREFETCH_AHEAD) {
                prefetch::<Socket>(ahead);
            }
            if let Some(near) = recipients.get(i + PREFETCH_AHEAD) {
                prefetch(&*near.session);
            }
            deliver(socket);
        }
        self.pacer.delivered(delivered);
        delivered
    }

    /// Adds a socket, unless it was disconnected meanwhile or the namespace is full. The check and the insert
    /// share the lock that `remove` takes after marking the socket, so a socket is never left behind.
    pub(crate) fn add(&self, socket: &Arc<Socket>) -> Added {
        let limit = self.handler().max_sockets();
        let mut sockets = self.sockets.write();
        if !socket.connected() {
            return Added::Disconnected;
        }
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Added::Closed;
        }
        if let Some(limit) = limit.filter(|&l| sockets.len() >= l) {
            return Added::Full(limit);
        }
        sockets.insert(Arc::clone(socket.id_arc()), Arc::clone(socket));
        Added::Yes
    }

    pub(crate) fn join(&self, socket: &Arc<Socket>, room: &str) {
        let mut rooms = self.rooms.write();
        // Checked under the rooms lock, which `remove` holds while it takes the socket's rooms: a socket that
        // is being removed never joins a room it would not leave.
        if !socket.connected() {
            return;
        }
        let (room, members) = match rooms.get_key_value(room) {
            Some((name, _)) => (Arc::clone(name), rooms.get_mut(room)),
            None => {
                let name: Arc<str> = room.into();
                rooms.insert(Arc::clone(&name), HashMap::new());
                (Arc::clone(&name), rooms.get_mut(&*name))
            }
        };
        if let Some(members) = members {
            if members.insert(socket.key, Arc::clone(socket)).is_none() {
                socket.rooms.lock().push(room);
            }
        }
    }

    pub(crate) fn leave(&self, socket: &Arc<Socket>, room: &str) {
        let mut rooms = self.rooms.write();
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&socket.key);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
        drop(rooms);
        socket.rooms.lock().retain(|r| &**r != room);
    }

    /// Takes the socket out of the namespace and its rooms, then tells the handler (once).
    pub(crate) fn remove(&self, socket: &Arc<Socket>, reason: &'static str) {
        if !socket.mark_disconnected() {
            return;
        }
        {
            let mut rooms = self.rooms.write();
            // The socket keeps its list, so the handler still sees the rooms it was in (recovery saves them).
            let joined = socket.rooms.lock().clone();
            for room in &joined {
                if let Some(members) = rooms.get_mut(room) {
                    members.remove(&socket.key);
                    if members.is_empty() {
                        rooms.remove(room);
                    }
                }
            }
        }
        let was_added = {
            let mut sockets = self.sockets.write();
            // A resumed socket may have taken this id over already: only this socket's own entry goes.
            let own = sockets
                .get(socket.id())
                .is_some_and(|s| s.key == socket.key);
            own && sockets.remove(socket.id()).is_some()
        };
        socket.acks.lock().clear();
        // A socket whose connect lost the race with its session's close was never added nor announced.
        if was_added {
            self.metrics.disconnected(reason);
        }
        if was_added && socket.leaving(reason) {
            self.handler().on_disconnect(socket, reason);
        }
    }
}
