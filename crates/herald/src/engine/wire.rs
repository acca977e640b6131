//! A socket.io WebSocket's TCP socket, shared by the connection's task and by publishers: while the task has
//! nothing queued, half written or buffered, a broadcast writes its frames straight to the socket, one `send`
//! from the publishing task, with no wake-up of the connection's task. A broadcast encodes its WebSocket frames
//! once, headers included ([`Framed`]), so every direct write is one buffer: a `write` of one slice costs
//! measurably less than a `writev` of a header and a payload (BENCHMARKS.md). The task sends what it drains from
//! the outbox the same way, framed into one buffer ([`Wire::send_frames`]); tungstenite writes only its own
//! frames (pongs, close) and what the wire leaves to it.
//!
//! The gate keeps one writer at a time and the order of bytes on the wire. It is open only while the task is
//! idle and clean; the task closes it when it drains the outbox and with every write of its own (tungstenite's
//! pongs and close frames included), and opens it again once a flush has put everything on the wire. A
//! publisher's partial write leaves the rest as the *spill*, which the next write or flush of the task sends
//! before anything else.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herald_protocol::engineio::{OutFrame, Version};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::server::{try_read_draining, Watched};

/// The TCP socket of one WebSocket connection and who may write to it now.
pub(crate) struct Wire {
    tcp: TcpStream,
    gate: Mutex<Gate>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Gate {
    /// Publishers may write: the task has nothing queued, half written or buffered.
    open: bool,
    /// Everything the task wrote is on the wire: set by a finished flush, cleared by any write of the task.
    clean: bool,
    /// The rest of a publisher's partial write: the next bytes on the wire.
    spill: Option<Bytes>,
}

/// What a direct write did with the frames.
pub(crate) enum Direct {
    /// On the wire (or spilled, for the task to finish): nothing to queue.
    Written { spilled: bool },
    /// The gate is closed or the frames cannot go directly: queue them.
    Queue,
}

impl Wire {
    /// A wire whose first bytes are `first` (the HTTP server's held 101), sent with the task's first write.
    fn new(tcp: TcpStream, first: Option<Bytes>) -> Wire {
        Wire {
            tcp,
            // The task has written nothing yet.
            gate: Mutex::new(Gate {
                clean: true,
                spill: first,
                ..Gate::default()
            }),
        }
    }

    /// Writes a broadcast's frames when the gate is open. The caller holds the session's state lock and has
    /// checked that its outbox is empty, so nothing queued can be overtaken.
    pub(crate) fn write_direct(&self, framed: &Framed, version: Version) -> Direct {
        if framed.v4_only && version != Version::V4 {
            return Direct::Queue;
        }
        let mut gate = self.gate.lock();
        if !gate.open {
            return Direct::Queue;
        }
        match self.send(&framed.bytes) {
            Ok(n) if n == framed.bytes.len() => Direct::Written { spilled: false },
            Ok(n) => {
                // Rare (a full socket buffer): the rest waits for the task, which the caller wakes.
                gate.spill = Some(framed.bytes.slice(n..));
                gate.open = false;
                Direct::Written { spilled: true }
            }
            Err(_) => {
                // Would block, or the socket failed: the task writes (or finds the error) from here.
                gate.open = false;
                Direct::Queue
            }
        }
    }

    /// The task's write of the frames it drained, past tungstenite: framed once into one buffer, as a broadcast
    /// is, and sent with one `send`; what the socket does not take becomes the spill, which the flush that
    /// follows sends. Only while everything the task wrote through tungstenite is on the wire and nothing is
    /// spilled, so no byte of its own is overtaken; false leaves the frames to tungstenite (a v3 session's
    /// binary frames too). tungstenite would copy each frame into the connection's own write buffer: cold memory
    /// for every connection a burst reaches, and a buffer that keeps its largest size.
    pub(crate) fn send_frames(
        &self,
        frames: &mut VecDeque<OutFrame>,
        version: Version,
    ) -> io::Result<bool> {
        let mut gate = self.gate.lock();
        if !gate.clean || gate.spill.is_some() {
            return Ok(false);
        }
        let framed = Framed::encode(frames.make_contiguous());
        if framed.v4_only && version != Version::V4 {
            return Ok(false);
        }
        frames.clear();
        let sent = match self.send(&framed.bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if sent < framed.bytes.len() {
            gate.spill = Some(framed.bytes.slice(sent..));
        }
        Ok(true)
    }

    /// `send` on the socket itself, not tokio's `try_write`: that reads and, on a full socket, clears the
    /// socket's readiness in tokio's registration, one more cache line per socket a broadcast touches. A
    /// would-block here is rare (the gate opens only once the socket took everything), and the task's next write
    /// through tokio finds the full socket as before.
    fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(&self.tcp).send(bytes)
    }

    /// Closes the gate: the task is about to write what it drained.
    pub(crate) fn close_gate(&self) {
        self.gate.lock().open = false;
    }

    /// Whether the task has nothing buffered or spilled, so the gate may open.
    pub(crate) fn is_clean(&self) -> bool {
        let gate = self.gate.lock();
        gate.clean && gate.spill.is_none()
    }

    /// Opens the gate if the task has nothing buffered or spilled; true when open. The caller holds the
    /// session's state lock and has checked that its outbox is empty.
    pub(crate) fn open_gate(&self) -> bool {
        let mut gate = self.gate.lock();
        gate.open = gate.clean && gate.spill.is_none();
        gate.open
    }

    /// A write of the task: the spill first, then `data`, under one hold of the gate so that no publisher's
    /// write comes between.
    fn poll_task_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut gate = self.gate.lock();
            gate.open = false;
            gate.clean = false;
            match self.write_after_spill(&mut gate, data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
            drop(gate);
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }

    /// Writes the spill and then `data`, the two in one `writev` when there is a spill (a connect's 101 and
    /// open packet leave as one packet); returns how much of `data` went, or `WouldBlock`.
    fn write_after_spill(&self, gate: &mut Gate, data: &[u8]) -> io::Result<usize> {
        while let Some(spill) = gate.spill.as_mut() {
            let n = self
                .tcp
                .try_write_vectored(&[io::IoSlice::new(spill), io::IoSlice::new(data)])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            if n < spill.len() {
                spill.advance(n);
                continue;
            }
            let written = n - spill.len();
            gate.spill = None;
            if written > 0 {
                return Ok(written);
            }
        }
        if data.is_empty() {
            return Ok(0);
        }
        self.tcp.try_write(data)
    }

    /// A flush of the task: everything tungstenite buffered is written by now; the spill goes too.
    fn poll_task_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut gate = self.gate.lock();
            if self.write_spill(&mut gate)? {
                gate.clean = true;
                return Poll::Ready(Ok(()));
            }
            drop(gate);
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }

    /// Writes what a publisher's partial write left; true once nothing is left, false when the socket is full.
    fn write_spill(&self, gate: &mut Gate) -> io::Result<bool> {
        while let Some(spill) = gate.spill.as_mut() {
            match self.tcp.try_write(spill) {
                Ok(n) => {
                    spill.advance(n);
                    if spill.is_empty() {
                        gate.spill = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn poll_task_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // A task that reads before it writes (a polling session's upgrade probe, a plain WebSocket) sends the
        // held 101 first: its client waits for it. Should the socket be full, the task wakes when it drains.
        loop {
            if self.write_spill(&mut self.gate.lock())?
                || self.tcp.poll_write_ready(cx)?.is_pending()
            {
                break;
            }
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match try_read_draining(&self.tcp, room, || self.tcp.try_read(unfilled)) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A broadcast's frames as the bytes of unmasked server WebSocket frames, headers included: encoded once per
/// broadcast, shared by every direct write of it (a partial write's spill is a slice, not a copy).
#[derive(Debug, Clone)]
pub(crate) struct Framed {
    bytes: Bytes,
    /// Binary frames are encoded as Engine.IO v4 sends them; a v3 session (a type byte first) queues them.
    v4_only: bool,
}

impl Framed {
    pub(crate) fn encode(frames: &[OutFrame]) -> Framed {
        let size = frames.iter().map(|f| MAX_HEADER + f.len()).sum();
        let mut bytes = BytesMut::with_capacity(size);
        let mut header = [0u8; MAX_HEADER];
        let mut v4_only = false;
        for frame in frames {
            let (opcode, payload) = match frame {
                OutFrame::Text(payload) => (OPCODE_TEXT, payload),
                OutFrame::Binary(payload) => {
                    v4_only = true;
                    (OPCODE_BINARY, payload)
                }
            };
            let len = frame_header(opcode, payload.len(), &mut header);
            bytes.put_slice(&header[..len]);
            bytes.put_slice(payload);
        }
        Framed {
            bytes: bytes.freeze(),
            v4_only,
        }
    }
}

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const MAX_HEADER: usize = 10;

/// Writes the header of an unmasked, final server frame into `out`; returns its length.
fn frame_header(opcode: u8, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The wire of an upgraded plain TCP connection. Its first bytes are the 101 that hyper wrote and `Watched` held.
fn wire_of(mut watched: Watched<TcpStream>) -> Wire {
    let first = watched.take_held();
    Wire::new(watched.inner, first)
}

/// The IO under a WebSocket: a plain TCP connection shared through a [`Wire`], or any other stream (TLS), which
/// stays the task's alone.
pub(crate) enum WsIo {
    Tcp {
        wire: Arc<Wire>,
        /// Bytes the client sent right after its upgrade request, which the HTTP server had already read.
        early: Bytes,
    },
    Other(TokioIo<hyper::upgrade::Upgraded>),
}

impl WsIo {
    pub(crate) fn new(upgraded: hyper::upgrade::Upgraded) -> WsIo {
        match upgraded.downcast::<TokioIo<Watched<TcpStream>>>() {
            Ok(parts) => {
                let watched = parts.io.into_inner();
                // A copy: the slice would keep the HTTP server's whole read buffer alive with the connection.
                // Then any bytes read before hyper took the connection that hyper left (none, in practice).
                let mut early = BytesMut::from(&parts.read_buf[..]);
                early.extend_from_slice(&watched.read);
                WsIo::Tcp {
                    wire: Arc::new(wire_of(watched)),
                    early: early.freeze(),
                }
            }
            Err(upgraded) => WsIo::Other(TokioIo::new(upgraded)),
        }
    }

    /// A connection the server took before hyper (`server/direct.rs`): `switch` is its 101, the first bytes to
    /// write, and `early` what the client sent after its request.
    pub(crate) fn direct(tcp: TcpStream, switch: Bytes, early: Bytes) -> WsIo {
        WsIo::Tcp {
            wire: Arc::new(Wire::new(tcp, Some(switch))),
            early,
        }
    }

    /// The shared socket, when publishers can write to it.
    pub(crate) fn wire(&self) -> Option<&Arc<Wire>> {
        match self {
            WsIo::Tcp { wire, .. } => Some(wire),
            WsIo::Other(_) => None,
        }
    }
}

impl AsyncRead for WsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsIo::Tcp { wire, early } => {
                if early.is_empty() {
                    return wire.poll_task_read(cx, buf);
                }
                let n = early.len().min(buf.remaining());
                buf.put_slice(&early[..n]);
                early.advance(n);
                if early.is_empty() {
                    *early = Bytes::new();
                }
                Poll::Ready(Ok(()))
            }
            WsIo::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WsIo::Tcp { wire, .. } => wire.poll_task_write(cx, data),
            WsIo::Other(io) => Pin::new(io).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsIo::Tcp { wire, .. } => wire.poll_task_flush(cx),
            WsIo::Other(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // The socket closes when the task and its session let go of the wire; tungstenite never shuts the
            // write side down before that.
            WsIo::Tcp { wire, .. } => wire.poll_task_flush(cx),
            WsIo::Other(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback connection: the server's end and the client's.
    async fn loopback() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// A wire over a loopback connection, its gate open, and the client's end.
    async fn open_wire() -> (Arc<Wire>, TcpStream) {
        let (server, client) = loopback().await;
        let wire = Arc::new(Wire::new(server, None));
        wire.gate.lock().clean = true;
        assert!(wire.open_gate());
        (wire, client)
    }

    /// The task's IO over `wire`.
    fn task_io(wire: &Arc<Wire>) -> WsIo {
        WsIo::Tcp {
            wire: Arc::clone(wire),
            early: Bytes::new(),
        }
    }

    /// Everything the client gets until the server's end closes.
    fn read_to_end(mut client: TcpStream) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        })
    }

    fn frame(i: usize) -> Framed {
        Framed::encode(&[OutFrame::Text(Bytes::from(vec![
            b'a' + (i % 26) as u8;
            64 << 10
        ]))])
    }

    #[tokio::test]
    async fn a_partial_direct_write_spills_and_the_task_sends_the_rest_before_its_own() {
        let (wire, client) = open_wire().await;
        // Nobody reads yet: the socket fills, and one write goes in part.
        let mut written = 0;
        loop {
            match wire.write_direct(&frame(written), Version::V4) {
                Direct::Written { spilled } => {
                    written += 1;
                    if spilled {
                        break;
                    }
                }
                Direct::Queue => panic!("the gate closed before any write spilled"),
            }
            assert!(written < 10_000, "64 KiB frames never filled the socket");
        }
        assert!(!wire.is_clean(), "a spill is waiting");
        assert!(
            matches!(wire.write_direct(&frame(0), Version::V4), Direct::Queue),
            "the gate is closed until the task has written the spill"
        );
        let reader = read_to_end(client);
        let mut io = task_io(&wire);
        io.write_all(b"TASK").await.unwrap();
        io.flush().await.unwrap();
        assert!(wire.is_clean());
        drop(io);
        drop(wire);
        let all = reader.await.unwrap();
        let mut rest = &all[..];
        for i in 0..written {
            assert_eq!(&rest[..4], &[0x81, 127, 0, 0], "frame {i}'s header");
            assert_eq!(&rest[4..10], &[0, 0, 0, 1, 0, 0], "frame {i}'s length");
            let payload = &rest[10..10 + (64 << 10)];
            assert!(
                payload.iter().all(|&b| b == b'a' + (i % 26) as u8),
                "frame {i}"
            );
            rest = &rest[10 + (64 << 10)..];
        }
        assert_eq!(
            rest, b"TASK",
            "the task's bytes come after every direct frame"
        );
    }

    /// A wire whose held first bytes are a 101, and the client's end.
    async fn wire_with_101() -> (Arc<Wire>, TcpStream) {
        let (server, client) = loopback().await;
        let first = Bytes::from_static(SWITCH);
        (Arc::new(Wire::new(server, Some(first))), client)
    }

    const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";

    #[tokio::test]
    async fn the_held_101_leaves_before_the_tasks_first_write_and_no_broadcast_overtakes_it() {
        let (wire, mut client) = wire_with_101().await;
        assert!(!wire.open_gate(), "the 101 is not on the wire yet");
        assert!(matches!(
            wire.write_direct(&frame(0), Version::V4),
            Direct::Queue
        ));
        let mut io = task_io(&wire);
        io.write_all(b"OPEN").await.unwrap();
        io.flush().await.unwrap();
        assert!(wire.open_gate(), "everything is on the wire");
        let mut got = vec![0; SWITCH.len() + 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..SWITCH.len()], SWITCH);
        assert_eq!(&got[SWITCH.len()..], b"OPEN");
    }

    #[tokio::test]
    async fn a_task_that_reads_first_sends_the_held_101_its_client_waits_for() {
        let (wire, mut client) = wire_with_101().await;
        let mut io = task_io(&wire);
        let task = tokio::spawn(async move {
            let mut probe = [0; 6];
            io.read_exact(&mut probe).await.unwrap();
            probe
        });
        let mut got = vec![0; SWITCH.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, SWITCH);
        client.write_all(b"2probe").await.unwrap();
        assert_eq!(&task.await.unwrap(), b"2probe");
    }

    #[tokio::test]
    async fn any_write_of_the_task_closes_the_gate_until_a_flush() {
        let (wire, _client) = open_wire().await;
        let mut io = task_io(&wire);
        io.write_all(b"pong").await.unwrap();
        assert!(matches!(
            wire.write_direct(&frame(0), Version::V4),
            Direct::Queue
        ));
        assert!(!wire.open_gate(), "not before the task's bytes are flushed");
        io.flush().await.unwrap();
        assert!(wire.open_gate());
        assert!(matches!(
            wire.write_direct(&frame(0), Version::V4),
            Direct::Written { spilled: false }
        ));
    }

    fn texts(sizes: &[usize]) -> VecDeque<OutFrame> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| OutFrame::Text(Bytes::from(vec![b'a' + i as u8; n])))
            .collect()
    }

    #[tokio::test]
    async fn the_task_sends_its_frames_past_tungstenite_and_a_full_socket_leaves_them_to_its_flush()
    {
        let (wire, mut client) = open_wire().await;
        wire.close_gate();
        let mut frames = texts(&[3, 200]);
        assert!(wire.send_frames(&mut frames, Version::V4).unwrap());
        assert!(frames.is_empty(), "taken");
        assert!(wire.is_clean(), "all of it is on the wire");
        let mut got = vec![0; 2 + 3 + 4 + 200];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..5], &[0x81, 3, b'a', b'a', b'a']);
        assert_eq!(&got[5..9], &[0x81, 126, 0, 200]);
        assert!(got[9..].iter().all(|&b| b == b'b'));

        // Nobody reads: the socket fills, the rest is spilled, and the flush after it sends it in order.
        let mut sent = 0usize;
        while wire.is_clean() {
            let mut frames = texts(&[64 << 10]);
            assert!(wire.send_frames(&mut frames, Version::V4).unwrap());
            sent += 1;
            assert!(sent < 10_000, "64 KiB frames never filled the socket");
        }
        let mut more = texts(&[1]);
        assert!(
            !wire.send_frames(&mut more, Version::V4).unwrap(),
            "nothing overtakes a spill"
        );
        let reader = read_to_end(client);
        let mut io = task_io(&wire);
        io.flush().await.unwrap();
        assert!(wire.is_clean());
        drop(io);
        drop(wire);
        let all = reader.await.unwrap();
        assert_eq!(all.len(), sent * (10 + (64 << 10)), "every byte, once");
        for frame in all.chunks(10 + (64 << 10)) {
            assert_eq!(&frame[..4], &[0x81, 127, 0, 0]);
            assert!(frame[10..].iter().all(|&b| b == b'a'));
        }
    }

    #[tokio::test]
    async fn what_tungstenite_has_not_flushed_and_v3_binary_frames_stay_with_tungstenite() {
        let (wire, _client) = open_wire().await;
        let mut binary: VecDeque<OutFrame> = [OutFrame::Binary(Bytes::from_static(b"\x01"))].into();
        assert!(!wire.send_frames(&mut binary, Version::V3).unwrap());
        assert_eq!(
            binary.len(),
            1,
            "left for tungstenite, which adds v3's type byte"
        );
        assert!(wire.send_frames(&mut binary, Version::V4).unwrap());
        let mut io = task_io(&wire);
        io.write_all(b"pong").await.unwrap();
        let mut frames = texts(&[1]);
        assert!(
            !wire.send_frames(&mut frames, Version::V4).unwrap(),
            "a write of tungstenite's own is not flushed yet"
        );
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn a_broadcast_is_framed_once_with_its_attachments_and_v3_sessions_queue_binary() {
        let framed = Framed::encode(&[
            OutFrame::text("451-[\"a\",{\"_placeholder\":true,\"num\":0}]"),
            OutFrame::Binary(Bytes::from_static(b"\x01\x02")),
        ]);
        let text = b"451-[\"a\",{\"_placeholder\":true,\"num\":0}]";
        let mut expected = vec![0x81, text.len() as u8];
        expected.extend_from_slice(text);
        expected.extend_from_slice(&[0x82, 2, 1, 2]);
        assert_eq!(&framed.bytes[..], &expected[..]);
        assert!(framed.v4_only);
        assert!(!Framed::encode(&[OutFrame::text("42[\"a\"]")]).v4_only);
    }

    #[tokio::test]
    async fn a_v3_session_queues_binary_frames() {
        let (wire, _client) = open_wire().await;
        let binary = Framed::encode(&[OutFrame::Binary(Bytes::from_static(b"\x01"))]);
        assert!(matches!(
            wire.write_direct(&binary, Version::V3),
            Direct::Queue
        ));
        assert!(wire.open_gate(), "a refusal leaves the gate as it was");
    }

    #[test]
    fn frame_headers_follow_rfc_6455_lengths() {
        let mut out = [0u8; MAX_HEADER];
        assert_eq!(frame_header(OPCODE_TEXT, 5, &mut out), 2);
        assert_eq!(&out[..2], &[0x81, 5]);
        assert_eq!(frame_header(OPCODE_BINARY, 300, &mut out), 4);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        assert_eq!(frame_header(OPCODE_TEXT, 70_000, &mut out), 10);
        assert_eq!(&out[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}
