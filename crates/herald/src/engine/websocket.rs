//! The WebSocket transport: the HTTP upgrade, the probe that moves a polling session over, and the one task per
//! connection that reads frames, writes the outbox (coalesced into one flush) and keeps the heartbeat.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use ::http::header::{self, HeaderValue};
use ::http::{Method, Request, Response, StatusCode};
use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, StreamExt};
use herald_protocol::engineio::{OutFrame, Packet, Version};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::heartbeat::{Due, Heartbeat};
use super::http::{error, refused, EngineQuery, ErrorCode, Refusal};
use super::inbound::Heard;
use super::session::{CloseReason, Session, Transport};
use super::wire::{Wire, WsIo};
use super::{Engine, EngineHandler};

pub(super) type Ws = WebSocketStream<WsIo>;

pub(super) fn handle<H: EngineHandler>(
    engine: &Engine<H>,
    mut request: Request<Body>,
    query: EngineQuery,
    version: Version,
) -> Response<Body> {
    let Some(accept) = accept_key(&request) else {
        return error(ErrorCode::BadRequest);
    };
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return error(ErrorCode::BadRequest);
    };
    match query.sid {
        Some(sid) => {
            let engine = engine.clone();
            let session = engine.inner.polling.read().get(sid.as_str()).cloned();
            let Some(session) = session else {
                return error(ErrorCode::UnknownSid);
            };
            let taken = {
                let state = session.state.lock();
                state.transport != Transport::Polling || state.upgrading
            };
            if taken {
                // As Node's engine.io does: accept the socket, then close it, leaving the session alone.
                tokio::spawn(async move {
                    if let Some(mut ws) = upgraded(&engine, Source::Hyper(on_upgrade)).await {
                        let _ = ws.close(None).await;
                    }
                });
                return switching_protocols(accept);
            }
            tokio::spawn(upgrade_task(engine, session, on_upgrade));
            switching_protocols(accept)
        }
        None => match open(engine, request, accept, version) {
            Ok((switch, opening)) => {
                opening.start(Source::Hyper(on_upgrade));
                switch
            }
            Err(refused) => *refused,
        },
    }
}

/// A new WebSocket session's upgrade, admitted: the 101 to answer, and the session to start on the connection.
/// Admitted before the upgrade, so a refusal is an HTTP answer (429, 503) the client can read.
pub(super) fn open<H: EngineHandler>(
    engine: &Engine<H>,
    request: Request<Body>,
    accept: HeaderValue,
    version: Version,
) -> Result<(Response<Body>, Opening<H>), Refusal> {
    let (parts, _) = request.into_parts();
    if let Err(why) = engine.admit_session(&parts) {
        return Err(Box::new(refused(why)));
    }
    let opening = Opening {
        engine: engine.clone(),
        parts: Box::new(parts),
        version,
    };
    Ok((switching_protocols(accept), opening))
}

/// An admitted session, waiting for its connection.
pub(super) struct Opening<H: EngineHandler> {
    engine: Engine<H>,
    parts: Box<::http::request::Parts>,
    version: Version,
}

impl<H: EngineHandler> Opening<H> {
    /// Starts the session's task on the connection `source` gives.
    pub(super) fn start(self, source: Source) {
        tokio::spawn(connect_task(self.engine, source, self.parts, self.version));
    }
}

/// Where an upgraded connection comes from.
pub(super) enum Source {
    /// From hyper, once it has written the 101.
    Hyper(hyper::upgrade::OnUpgrade),
    /// Taken by the server before hyper (`server/direct.rs`), its 101 the first bytes to write. Boxed: it would
    /// make every connection's task larger.
    Direct(Box<WsIo>),
}

impl Source {
    pub(super) fn direct(stream: tokio::net::TcpStream, switch: Bytes, early: Bytes) -> Source {
        Source::Direct(Box::new(WsIo::direct(stream, switch, early)))
    }
}

// The connection tasks below live as long as their connection, and their futures are most of an idle
// connection's memory. They are written so that the futures stay small (a test holds them to a budget): an
// `async` block uses what it captured in place, where an `async fn` would keep a second copy of each argument;
// what is needed only before the upgrade (the request) is boxed and freed; and every large state that is
// rarely entered (a blocked write, the goodbye) is boxed when it is entered. Hence `fn … -> impl Future` with an
// `async move` body where clippy would suggest `async fn`: as `async fn`s, `run` and `connect_task` measured
// 1080 and 1128 bytes instead of 736 and 768.

/// A WebSocket that opens a new session, admitted before its upgrade: the task of its whole life.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn connect_task<H: EngineHandler>(
    engine: Engine<H>,
    source: Source,
    parts: Box<::http::request::Parts>,
    version: Version,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let ws = upgraded(&engine, source).await;
        // A drain that began during the upgrade refuses it, as it refuses any new session.
        let Some(ws) = ws.filter(|_| !engine.is_draining()) else {
            engine.release_admission();
            return;
        };
        let session = engine.start_session(&parts, version, Transport::WebSocket);
        drop(parts);
        run(engine, session, ws).await;
    }
}

/// A WebSocket that takes over a polling session: the probe, then the task of the session's remaining life.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn upgrade_task<H: EngineHandler>(
    engine: Engine<H>,
    session: Arc<Session<H::Conn>>,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let Some(ws) = upgraded(&engine, Source::Hyper(on_upgrade)).await else {
            return;
        };
        // Boxed: the probe lasts seconds at most, and its state would otherwise stay in the task for good.
        // (`let … else`, not `if let`: the latter keeps the probe's result alive, unused, for the whole run.)
        let Some(ws) = Box::pin(upgrade(&engine, &session, ws)).await else {
            return;
        };
        run(engine, session, ws).await;
    }
}

pub(super) fn switching_protocols(accept: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Validates the WebSocket handshake headers and derives the accept key.
pub(super) fn accept_key(request: &Request<Body>) -> Option<HeaderValue> {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if request.method() != Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
        || headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
    {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes())).ok()
}

pub(super) async fn upgraded<H: EngineHandler>(engine: &Engine<H>, source: Source) -> Option<Ws> {
    let io = match source {
        Source::Hyper(on_upgrade) => match on_upgrade.await {
            Ok(io) => WsIo::new(io),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return None;
            }
        },
        Source::Direct(io) => *io,
    };
    let config = &engine.inner.config;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(config.ws_write_buffer)
        .max_message_size(Some(config.max_payload))
        .max_frame_size(Some(config.max_payload));
    Some(WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await)
}

/// Moves a polling session onto this WebSocket: answer `2probe` with `3probe`, release the pending GET with a
/// noop, and switch over when the client sends `5`. Gives the WebSocket back when the session is now on it.
async fn upgrade<H: EngineHandler>(
    engine: &Engine<H>,
    session: &Arc<Session<H::Conn>>,
    mut ws: Ws,
) -> Option<Ws> {
    let probe = tokio::time::timeout(engine.inner.config.upgrade_timeout, async {
        loop {
            let Some(Ok(WsMessage::Text(text))) = ws.next().await else {
                return false;
            };
            match Packet::decode_text(text.as_str(), session.version()) {
                Ok(Packet::Ping("probe")) => {
                    if ws
                        .send(WsMessage::Text(Utf8Bytes::from_static("3probe")))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    session.state.lock().upgrading = true;
                    session.writable.notify_one();
                }
                Ok(Packet::Upgrade) => return session.state.lock().upgrading,
                Ok(Packet::Noop) => {}
                _ => return false,
            }
        }
    })
    .await;
    let upgraded = {
        let mut state = session.state.lock();
        state.upgrading = false;
        let upgraded = probe == Ok(true);
        if upgraded {
            state.transport = Transport::WebSocket;
        }
        upgraded
    };
    if !upgraded {
        tracing::debug!(sid = session.sid(), "WebSocket upgrade abandoned");
        return None;
    }
    // The polling driver exits and any pending GET returns a noop.
    session.wake_all();
    Some(ws)
}

/// The session's one task once it is on WebSocket.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn run<H: EngineHandler>(
    engine: Engine<H>,
    session: Arc<Session<H::Conn>>,
    mut ws: Ws,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let config = &engine.inner.config;
        let mut heartbeat =
            Heartbeat::new(session.version(), config.ping_interval, config.ping_timeout);
        // One timer for the connection's life, moved only when the deadline does: a fresh timer per wake-up would
        // cost a timer-wheel insert and cancel for every message delivered.
        let timer = tokio::time::sleep_until(heartbeat.deadline());
        tokio::pin!(timer);
        let wire = ws.get_ref().wire().cloned();
        session.state.lock().wire.clone_from(&wire);
        let write_limit = config.ping_interval + config.ping_timeout;
        let mut woken = false;
        loop {
            if std::mem::take(&mut woken) {
                // Under load, let the rest of this tick's publishes queue up first: tokio runs a yielding task
                // again only after it has polled for IO, so a burst of broadcasts leaves in one write per
                // client instead of one per broadcast. At low rates it costs one extra poll per wake-up. (Awaited
                // here rather than in the `select!` arm, where it would grow every connection's future.)
                tokio::task::yield_now().await;
            }
            if timer.deadline() != heartbeat.deadline() {
                timer.as_mut().reset(heartbeat.deadline());
            }
            let (frames, closed) = {
                let mut state = session.state.lock();
                (Session::<H::Conn>::drain(&mut state), state.closed)
            };
            if !frames.is_empty() {
                match write_or_abandon(&mut ws, &session, frames, write_limit).await {
                    Written::All => {}
                    Written::Failed => {
                        session.close(CloseReason::TransportError);
                        break;
                    }
                    // The session closed while the client was not reading: drop the connection, say nothing.
                    Written::Abandoned => break,
                }
            }
            if let Some(reason) = closed {
                // Boxed: entered once, and it would otherwise grow every connection's idle state.
                Box::pin(say_goodbye(&mut ws, reason)).await;
                break;
            }
            if let Some(wire) = &wire {
                match open_wire(&mut ws, &session, wire, write_limit).await {
                    Written::All => {}
                    Written::Failed => {
                        session.close(CloseReason::TransportError);
                        break;
                    }
                    Written::Abandoned => break,
                }
            }
            tokio::select! {
                message = ws.next() => {
                    let outcome = match message {
                        Some(Ok(message)) => on_ws_message(&engine, &session, message),
                        Some(Err(e)) => Err(ws_error_reason(&session, &e)),
                        None => Err(CloseReason::TransportClose),
                    };
                    match outcome {
                        Ok(Heard::Heartbeat) => heartbeat.on_peer_heartbeat(),
                        Ok(Heard::Nothing) => {}
                        Err(reason) => session.close(reason),
                    }
                }
                () = session.writable.notified() => woken = true,
                () = &mut timer => match heartbeat.fire() {
                    Due::SendPing => {
                        let _ = session.send(OutFrame::text("2"));
                        engine.inner.handler.on_heartbeat(&session);
                    }
                    Due::TimedOut => session.close(CloseReason::PingTimeout),
                },
            }
        }
        // The socket closes once the task and the session both let go of it.
        session.state.lock().wire = None;
        engine.finalize(&session);
        engine.forget(&session);
    }
}

fn on_ws_message<H: EngineHandler>(
    engine: &Engine<H>,
    session: &Arc<Session<H::Conn>>,
    message: WsMessage,
) -> Result<Heard, CloseReason> {
    let packet = match &message {
        WsMessage::Text(text) => Packet::decode_text(text.as_str(), session.version()),
        WsMessage::Binary(data) => Packet::decode_binary_frame(data.clone(), session.version()),
        WsMessage::Close(_) => return Err(CloseReason::TransportClose),
        // tungstenite answers pings itself; pongs and raw frames carry nothing for us.
        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return Ok(Heard::Nothing),
    };
    match packet {
        Ok(packet) => engine.on_packet(session, packet),
        Err(e) => {
            tracing::info!(sid = session.sid(), error = %e, "closed a session: malformed packet");
            Err(CloseReason::ParseError)
        }
    }
}

pub(super) fn ws_error_reason<C>(session: &Session<C>, error: &tungstenite::Error) -> CloseReason {
    match error {
        tungstenite::Error::Capacity(e) => {
            crate::limits::Limit::Payload.hit();
            tracing::info!(sid = session.sid(), error = %e, "closed a session: message over maxPayload");
            CloseReason::PayloadTooLarge
        }
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            CloseReason::TransportClose
        }
        e => {
            tracing::debug!(sid = session.sid(), error = %e, "WebSocket error");
            CloseReason::TransportError
        }
    }
}

/// Idle now: lets publishers write to the socket themselves (`wire.rs`) once everything the task wrote is on
/// the wire, flushing what is not, and while nothing is queued.
pub(super) async fn open_wire<C>(
    ws: &mut Ws,
    session: &Session<C>,
    wire: &Wire,
    limit: std::time::Duration,
) -> Written {
    if !wire.is_clean() {
        // Boxed: only a write of the task's own left unflushed (a pong) leads here, and its state would otherwise
        // grow every connection's idle future.
        let flushed = Box::pin(write_or_abandon(ws, session, VecDeque::new(), limit)).await;
        if !matches!(flushed, Written::All) {
            return flushed;
        }
    }
    let state = session.state.lock();
    if state.outbox.is_empty() && state.closed.is_none() {
        wire.open_gate();
    }
    Written::All
}

pub(super) enum Written {
    All,
    Failed,
    Abandoned,
}

/// Writes `frames` unless the session closes first or the client takes longer than `limit` to take them: a
/// client that stops reading blocks this write, and must not keep its task, socket and rooms alive.
async fn write_or_abandon<C>(
    ws: &mut Ws,
    session: &Session<C>,
    mut frames: VecDeque<OutFrame>,
    limit: std::time::Duration,
) -> Written {
    let version = session.version();
    let mut write = std::future::poll_fn(move |cx| poll_write(ws, &mut frames, version, cx));
    // Nearly every write completes at once; only one that blocks pays for a deadline timer and a close watch,
    // boxed so that their room is not part of every idle connection.
    let result = match futures_util::FutureExt::now_or_never(&mut write) {
        Some(result) => Ok(result),
        None => {
            let blocked = Box::pin(async move {
                let closed = async {
                    loop {
                        let notified = session.writable.notified();
                        if session.closed().is_some() {
                            return;
                        }
                        notified.await;
                    }
                };
                tokio::select! {
                    result = tokio::time::timeout(limit, write) => Some(result),
                    () = closed => None,
                }
            });
            let result = blocked.await;
            // The close watch took the wake-ups of the frames queued meanwhile: hand one back, or they would wait
            // in the outbox for the next publish or the next heartbeat.
            session.writable.notify_one();
            match result {
                Some(result) => result,
                None => return Written::Abandoned,
            }
        }
    };
    match result {
        Ok(Ok(())) => Written::All,
        Ok(Err(e)) => {
            tracing::debug!(sid = session.sid(), error = %e, "WebSocket write failed");
            Written::Failed
        }
        Err(_) => {
            tracing::info!(
                sid = session.sid(),
                "closed a session: the client took no data for too long"
            );
            Written::Failed
        }
    }
}

/// Feeds every queued frame, then flushes once: a burst of messages costs one write call. The frames not yet
/// taken stay in `frames`, so the state of a write in progress is the queue itself. On plain TCP the wire
/// sends them itself when it can (`Wire::send_frames`), and the flush sends what the socket did not take.
fn poll_write(
    ws: &mut Ws,
    frames: &mut VecDeque<OutFrame>,
    version: Version,
    cx: &mut Context<'_>,
) -> Poll<Result<(), tungstenite::Error>> {
    if let (Some(wire), false) = (ws.get_ref().wire(), frames.is_empty()) {
        wire.send_frames(frames, version)?;
    }
    while !frames.is_empty() {
        ready!(Pin::new(&mut *ws).poll_ready(cx))?;
        let Some(frame) = frames.pop_front() else {
            break;
        };
        let message = match frame {
            OutFrame::Text(bytes) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => WsMessage::Text(text),
                Err(_) => continue,
            },
            OutFrame::Binary(bytes) => WsMessage::Binary(binary_frame(bytes, version)),
        };
        Pin::new(&mut *ws).start_send(message)?;
    }
    Pin::new(&mut *ws).poll_flush(cx)
}

/// v3 binary frames start with the message type byte; v4 frames are the raw data.
fn binary_frame(data: Bytes, version: Version) -> Bytes {
    match version {
        Version::V4 => data,
        Version::V3 => {
            let mut framed = BytesMut::with_capacity(data.len() + 1);
            framed.put_u8(4);
            framed.put_slice(&data);
            framed.freeze()
        }
    }
}

/// Tells the client the session is over when we are the ones ending it, answers its close frame when it is,
/// and closes the socket; all of it within a second, since the client may not be reading.
async fn say_goodbye(ws: &mut Ws, reason: CloseReason) {
    let goodbye = async {
        if !matches!(
            reason,
            CloseReason::TransportClose | CloseReason::TransportError | CloseReason::OutboxFull
        ) {
            let _ = ws.feed(WsMessage::Text(Utf8Bytes::from_static("1"))).await;
        }
        // Sends our close frame, or the reply tungstenite queued to the client's, and flushes.
        let _ = ws.close(None).await;
        let _ = ws.flush().await;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), goodbye).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socketio::SocketIo;

    fn size3<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn size4<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The connection tasks are most of an idle connection's memory (BENCHMARKS.md); this keeps a change from
    /// growing them unnoticed.
    #[test]
    fn connection_futures_stay_small() {
        let run = size3(run::<SocketIo>);
        let connect = size4(connect_task::<SocketIo>);
        let upgrade = size3(upgrade_task::<SocketIo>);
        let ws = std::mem::size_of::<Ws>();
        println!(
            "run {run} B, connect task {connect} B, upgrade task {upgrade} B, WebSocket {ws} B"
        );
        // 768 B when written; as `async fn`s holding the probe and the write inline they were over 1.7 KiB.
        assert!(
            connect <= 800 && upgrade <= 800,
            "connect {connect} B, upgrade {upgrade} B"
        );
    }
}
