//! One Engine.IO session: its bounded outbox, its transport state and why it closed. Cloning the `Arc` is
//! cheap; the transport that currently owns the session (a polling driver or a WebSocket task) drains the
//! outbox, everyone else only pushes to it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use herald_protocol::engineio::{OutFrame, Version};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::wire::{Direct, Framed, Wire};

/// Why a session ended; the strings are socket.io's disconnect reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet or closed its WebSocket.
    TransportClose,
    /// The connection failed (read or write error).
    TransportError,
    /// No heartbeat answer within `pingTimeout`.
    PingTimeout,
    /// The client sent bytes that are not a valid packet.
    ParseError,
    /// The server closed the session (API, shutdown).
    ServerClose,
    /// The client does not read fast enough: its outbox hit the limit.
    OutboxFull,
    /// The client sent a payload larger than `maxPayload`.
    PayloadTooLarge,
    /// Two GET (or two POST) requests were pending at once.
    RequestOverlap,
    /// The client broke a per-session limit of the layer above (too many namespace CONNECTs).
    PolicyViolation,
}

impl CloseReason {
    /// The reason as socket.io names it in a `disconnect` event.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ParseError => "parse error",
            CloseReason::ServerClose => "forced close",
            CloseReason::OutboxFull => "outbox full",
            CloseReason::PayloadTooLarge => "payload too large",
            CloseReason::RequestOverlap => "request overlap",
            CloseReason::PolicyViolation => "policy violation",
        }
    }
}

/// Which transport currently carries the session's outbound frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
    /// A plain WebSocket (`/ws/<site>`): JSON frames, no Engine.IO or Socket.IO framing.
    PlainWebSocket,
    /// Server-Sent Events (`/sse/<site>`): one-way, `text/event-stream`.
    EventStream,
}

impl Transport {
    /// The transport's name, as the admin API and logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
            Transport::PlainWebSocket => "plain-websocket",
            Transport::EventStream => "sse",
        }
    }

    /// Whether the session speaks herald's plain protocol rather than Engine.IO.
    pub fn is_plain(self) -> bool {
        matches!(self, Transport::PlainWebSocket | Transport::EventStream)
    }
}

/// The session's outbox limit was hit, so the session is now closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("session is closed")]
    Closed,
    #[error("outbox is full: the client does not read fast enough")]
    Full,
}

/// Limits every session gets from the engine config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxLimits {
    pub frames: usize,
    pub bytes: usize,
}

#[derive(Debug)]
pub(crate) struct State {
    pub outbox: VecDeque<OutFrame>,
    pub outbox_bytes: usize,
    pub transport: Transport,
    /// A WebSocket answered the upgrade probe; pending and new GETs get a noop so the client can pause polling.
    pub upgrading: bool,
    pub get_pending: bool,
    pub post_pending: bool,
    pub closed: Option<CloseReason>,
    /// A polling response told the client the session is over; later requests get `Session ID unknown`.
    pub close_delivered: bool,
    /// The socket of the session's WebSocket, while its task runs, for direct writes (`wire.rs`).
    pub wire: Option<Arc<Wire>>,
}

impl State {
    fn push(&mut self, frames: impl IntoIterator<Item = OutFrame>) {
        for frame in frames {
            self.outbox_bytes += frame.len();
            self.outbox.push_back(frame);
        }
    }
}

/// An Engine.IO session; `C` is the state of the layer above (socket.io's namespaces on this connection).
pub struct Session<C> {
    sid: Box<str>,
    version: Version,
    limits: OutboxLimits,
    pub(crate) state: Mutex<State>,
    /// Wakes whoever writes the outbox to the client: the WebSocket task or the pending GET.
    pub(crate) writable: Notify,
    /// Wakes the heartbeat owner when a heartbeat arrives or the session changes hands or closes.
    pub(crate) heartbeat: Notify,
    /// Set when a heartbeat arrived over polling, for the driver task to note.
    pub(crate) heard: AtomicBool,
    /// Milliseconds after `opened_at` by which a heartbeat must arrive; `u64::MAX` when none is awaited.
    /// Requests check it themselves, so a late timer never lets a dead session answer.
    heartbeat_deadline_ms: AtomicU64,
    finalized: AtomicBool,
    opened_at: Instant,
    /// The state of the protocol layer above, owned by the session so it lives exactly as long.
    pub conn: C,
}

impl<C> std::fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .field("version", &self.version)
            .finish()
    }
}

impl<C> Session<C> {
    pub(crate) fn new(
        sid: Box<str>,
        version: Version,
        transport: Transport,
        limits: OutboxLimits,
        conn: C,
    ) -> Self {
        Session {
            sid,
            version,
            limits,
            state: Mutex::new(State {
                outbox: VecDeque::new(),
                outbox_bytes: 0,
                transport,
                upgrading: false,
                get_pending: false,
                post_pending: false,
                closed: None,
                close_delivered: false,
                wire: None,
            }),
            writable: Notify::new(),
            heartbeat: Notify::new(),
            heard: AtomicBool::new(false),
            heartbeat_deadline_ms: AtomicU64::new(u64::MAX),
            finalized: AtomicBool::new(false),
            opened_at: Instant::now(),
            conn,
        }
    }

    /// The session id the client sends back as `sid`.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The Engine.IO revision the client speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// When the handshake happened.
    pub fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// Which transport carries the session now.
    pub fn transport(&self) -> Transport {
        self.state.lock().transport
    }

    /// Queues one frame. When the outbox is full the session is closed with [`CloseReason::OutboxFull`]: a client
    /// that cannot keep up is disconnected, never buffered without limit.
    pub fn send(&self, frame: OutFrame) -> Result<(), SendError> {
        self.send_all(std::iter::once(frame))
    }

    /// Queues frames that belong together (a packet and its binary attachments) all or none.
    pub fn send_all(&self, frames: impl IntoIterator<Item = OutFrame>) -> Result<(), SendError> {
        self.queue(self.state.lock(), frames)
    }

    /// Queues `frames` under the state lock the caller took.
    fn queue(
        &self,
        mut state: parking_lot::MutexGuard<'_, State>,
        frames: impl IntoIterator<Item = OutFrame>,
    ) -> Result<(), SendError> {
        if state.closed.is_some() {
            return Err(SendError::Closed);
        }
        let was_empty = state.outbox.is_empty();
        state.push(frames);
        if state.outbox.len() > self.limits.frames || state.outbox_bytes > self.limits.bytes {
            // The session is over: like Node's engine.io, drop what it could not take, freeing it now.
            state.outbox = VecDeque::new();
            state.outbox_bytes = 0;
            state.closed = Some(CloseReason::OutboxFull);
            drop(state);
            crate::limits::Limit::Outbox.hit();
            tracing::info!(
                sid = self.sid(),
                frames = self.limits.frames,
                bytes = self.limits.bytes,
                "closed a session: outbox full, the client does not read fast enough"
            );
            self.wake_all();
            return Err(SendError::Full);
        }
        drop(state);
        self.wake_writer(was_empty);
        Ok(())
    }

    /// Wakes the transport for frames just queued, when the outbox was empty before them. Transports take the
    /// whole outbox at once ([`Session::drain`]), so frames queued behind others leave with them: the push that
    /// filled the empty outbox woke the transport, which has not drained since. Waking it again would only leave
    /// a permit that sends it round its loop once more for nothing, in every burst.
    fn wake_writer(&self, was_empty: bool) {
        if was_empty {
            self.writable.notify_one();
        }
    }

    /// Sends frames that belong together: straight to the socket when the session's WebSocket task is idle
    /// with nothing queued (one write of `framed`, the same frames as the broadcast encoded them for the wire;
    /// no wake-up), else through the outbox as [`Session::send_all`] does. For broadcasts at a pace the writers
    /// keep up with; under load, queueing lets a burst leave in one write.
    pub(crate) fn send_direct(
        &self,
        frames: &[OutFrame],
        framed: &Framed,
    ) -> Result<(), SendError> {
        let state = self.state.lock();
        if state.closed.is_some() {
            return Err(SendError::Closed);
        }
        if let (Some(wire), true) = (&state.wire, state.outbox.is_empty()) {
            match wire.write_direct(framed, self.version) {
                Direct::Written { spilled } => {
                    drop(state);
                    if spilled {
                        self.writable.notify_one();
                    }
                    return Ok(());
                }
                Direct::Queue => {}
            }
        }
        self.queue(state, frames.iter().cloned())
    }

    /// Queues frames only while the outbox is at most half full, dropping them otherwise: for messages that are
    /// worthless late. Never closes the session. True when queued.
    pub fn send_volatile(&self, frames: impl IntoIterator<Item = OutFrame>) -> bool {
        let mut state = self.state.lock();
        if state.closed.is_some()
            || state.outbox.len() * 2 > self.limits.frames
            || state.outbox_bytes * 2 > self.limits.bytes
        {
            return false;
        }
        let was_empty = state.outbox.is_empty();
        state.push(frames);
        drop(state);
        self.wake_writer(was_empty);
        true
    }

    /// Closes the session; the transport that owns it tells the client (when it still can) and cleans up.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        drop(state);
        self.wake_all();
    }

    /// Closes the session with an error the client is being told right now (an HTTP error answer), so no
    /// polling response needs to tell it again.
    pub(crate) fn close_told(&self, reason: CloseReason) {
        {
            let mut state = self.state.lock();
            state.closed.get_or_insert(reason);
            state.close_delivered = true;
        }
        self.wake_all();
    }

    /// Why the session closed, if it did.
    pub fn closed(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Records when the awaited heartbeat is due (`None`: nothing awaited).
    pub(crate) fn set_heartbeat_deadline(&self, deadline: Option<std::time::Instant>) {
        let ms = deadline.map_or(u64::MAX, |d| {
            d.saturating_duration_since(self.opened_at).as_millis() as u64
        });
        self.heartbeat_deadline_ms.store(ms, Ordering::Release);
    }

    /// Closes the session if its awaited heartbeat is overdue; true when it is closed for any reason.
    pub(crate) fn check_heartbeat(&self) -> bool {
        let due = self.heartbeat_deadline_ms.load(Ordering::Acquire);
        if due != u64::MAX && self.opened_at.elapsed().as_millis() as u64 >= due {
            self.close(CloseReason::PingTimeout);
        }
        self.closed().is_some()
    }

    pub(crate) fn wake_all(&self) {
        self.writable.notify_one();
        self.heartbeat.notify_one();
    }

    /// Takes every queued frame, for one write; publishers write no more to the socket until the task opens the
    /// gate again.
    pub(crate) fn drain(state: &mut State) -> VecDeque<OutFrame> {
        if let Some(wire) = &state.wire {
            wire.close_gate();
        }
        state.outbox_bytes = 0;
        std::mem::take(&mut state.outbox)
    }

    /// True exactly once: for the caller that must run the close handlers.
    pub(crate) fn take_finalization(&self) -> bool {
        !self.finalized.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_util::FutureExt;

    fn session() -> Session<()> {
        let limits = OutboxLimits {
            frames: 16,
            bytes: 1 << 16,
        };
        Session::new("sid".into(), Version::V4, Transport::WebSocket, limits, ())
    }

    #[test]
    fn a_burst_wakes_the_writer_once_and_leaves_no_permit() {
        let session = session();
        let waiting = session.writable.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        session.send(OutFrame::text("1")).unwrap();
        session.send(OutFrame::text("2")).unwrap();
        assert!(
            waiting.now_or_never().is_some(),
            "the first frame woke the writer"
        );
        let frames = Session::<()>::drain(&mut session.state.lock());
        assert_eq!(frames.len(), 2, "the drain takes the burst whole");
        assert!(
            session.writable.notified().now_or_never().is_none(),
            "the second frame left no permit to send the writer round again"
        );
        session.send(OutFrame::text("3")).unwrap();
        assert!(
            session.writable.notified().now_or_never().is_some(),
            "a frame after the drain wakes the writer"
        );
    }

    #[test]
    fn a_volatile_frame_wakes_the_writer_when_the_outbox_was_empty() {
        let session = session();
        assert!(session.send_volatile([OutFrame::text("1")]));
        assert!(session.writable.notified().now_or_never().is_some());
        assert!(session.send_volatile([OutFrame::text("2")]));
        assert!(session.writable.notified().now_or_never().is_none());
    }
}
