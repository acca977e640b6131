//! Sessions without Engine.IO framing, for clients that speak herald's plain protocol: a browser's own
//! `WebSocket` (JSON text frames) or `EventSource` (Server-Sent Events). They are opened, written and closed
//! here, so the session limit, drains and close handlers treat them as any session; the layer above turns
//! what it queued into their frames ([`EngineHandler::plain_frames`]) and reads what they send
//! ([`EngineHandler::on_plain_text`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{self, HeaderValue};
use ::http::{Request, Response, StatusCode};
use axum::body::Body;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_protocol::engineio::{OutFrame, Version};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::heartbeat::{Due, Heartbeat};
use super::http::{allow_origin, handshake_bytes, handshake_too_large, respond};
use super::session::{CloseReason, Session, Transport};
use super::websocket::{
    accept_key, open_wire, switching_protocols, upgraded, ws_error_reason, Source, Written, Ws,
};
use super::{new_sid, Engine, EngineHandler, SessionRefused};

/// What goes on a plain session's wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainFrame {
    /// One frame: a WebSocket text message, or an event block of a stream.
    Text(Bytes),
    /// The session ends here: the layer above refused or disconnected the client, for this reason.
    Close(Refused),
}

/// Why the layer above ended a plain session, as a WebSocket close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 1008 (policy) for a refused connection, 1000 for a disconnect by the server.
    pub code: u16,
    pub reason: String,
}

impl Refused {
    /// The connection was refused (auth, limits): close code 1008.
    pub fn policy(reason: impl Into<String>) -> Self {
        Refused {
            code: 1008,
            reason: reason.into(),
        }
    }

    /// The server ended the connection on purpose: close code 1000.
    pub fn normal(reason: impl Into<String>) -> Self {
        Refused {
            code: 1000,
            reason: reason.into(),
        }
    }
}

/// Why a plain request cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainError {
    /// Not a valid WebSocket handshake.
    NotUpgrade,
    /// The engine is draining or at its session limit.
    Unavailable,
}

impl<H: EngineHandler> Engine<H> {
    /// Opens a plain session (`transport` is a plain one) from its request, unless the engine refuses a new
    /// session.
    pub fn open_plain(
        &self,
        parts: &::http::request::Parts,
        transport: Transport,
    ) -> Result<Arc<Session<H::Conn>>, SessionRefused> {
        debug_assert!(
            transport.is_plain(),
            "{transport:?} is not a plain transport"
        );
        self.admit_session(parts)?;
        let inner = &self.inner;
        let conn = inner.handler.new_conn(parts, Version::V4, transport);
        let session = Arc::new(Session::new(
            new_sid(&inner.config.sid_prefix),
            Version::V4,
            transport,
            self.outbox_limits(),
            conn,
        ));
        self.track(&session);
        inner.handler.on_open(&session);
        Ok(session)
    }

    /// Whether a request's `Origin` may connect (every origin, unless `allowed_origins` lists them).
    pub fn origin_allowed(&self, headers: &::http::HeaderMap) -> bool {
        match (
            &self.inner.config.allowed_origins,
            headers.get(header::ORIGIN),
        ) {
            (Some(allowed), Some(origin)) => {
                allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
            }
            _ => true,
        }
    }

    /// The 431 answer for a request whose query and cookie, which its session would keep, are over
    /// `max_handshake_bytes`; `None` when they are within it.
    pub fn oversize_handshake(&self, request: &Request<Body>) -> Option<Response<Body>> {
        let size = handshake_bytes(request);
        let limit = self.inner.config.max_handshake_bytes;
        (size > limit).then(|| handshake_too_large(size, limit))
    }

    /// Checks that `request` is a WebSocket handshake, before a session is opened for it.
    pub fn plain_websocket_check(&self, request: &Request<Body>) -> Result<(), PlainError> {
        accept_key(request)
            .map(|_| ())
            .ok_or(PlainError::NotUpgrade)
    }

    /// Answers a WebSocket handshake for `session` (opened with [`Transport::PlainWebSocket`]) and runs the
    /// connection on its own task until it closes.
    pub fn serve_plain_websocket(
        &self,
        session: Arc<Session<H::Conn>>,
        mut request: Request<Body>,
    ) -> Response<Body> {
        let accept = accept_key(&request);
        let on_upgrade = request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>();
        let (Some(accept), Some(on_upgrade)) = (accept, on_upgrade) else {
            session.close(CloseReason::TransportError);
            self.finalize(&session);
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "expected a WebSocket handshake",
            );
        };
        let engine = self.clone();
        tokio::spawn(async move {
            match upgraded(&engine, Source::Hyper(on_upgrade)).await {
                Some(ws) => Box::pin(run_websocket(&engine, &session, ws)).await,
                None => session.close(CloseReason::TransportError),
            }
            engine.finalize(&session);
        });
        switching_protocols(accept)
    }

    /// Answers a WebSocket handshake with one text `frame` (why it is refused) and a close with `close`'s code
    /// and reason, without opening a session. A browser's `WebSocket` reads a refusal only this way: an HTTP
    /// status before the upgrade reaches its page as close code 1006 and no reason.
    pub fn refuse_plain_websocket(
        &self,
        mut request: Request<Body>,
        frame: String,
        close: Refused,
    ) -> Response<Body> {
        let accept = accept_key(&request);
        let on_upgrade = request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>();
        let (Some(accept), Some(on_upgrade)) = (accept, on_upgrade) else {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "expected a WebSocket handshake",
            );
        };
        let engine = self.clone();
        tokio::spawn(async move {
            if let Some(mut ws) = upgraded(&engine, Source::Hyper(on_upgrade)).await {
                let sent = ws.send(WsMessage::Text(Utf8Bytes::from(frame)));
                let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
                goodbye(&mut ws, close).await;
            }
        });
        switching_protocols(accept)
    }

    /// Answers `session` (opened with [`Transport::EventStream`]) with an event stream, once the layer above
    /// has decided about it: 200 and the stream, or 401 with the reason it refused; a listed `origin` gets
    /// credentialed CORS headers, so a page of another origin can read it. `ping` is the time between keep-alive
    /// comments.
    pub async fn serve_event_stream(
        &self,
        session: Arc<Session<H::Conn>>,
        origin: Option<HeaderValue>,
        ping: Duration,
    ) -> Response<Body> {
        let mut response = self.event_stream(session, ping).await;
        allow_origin(&self.inner.config, origin, &mut response);
        response
    }

    async fn event_stream(&self, session: Arc<Session<H::Conn>>, ping: Duration) -> Response<Body> {
        let mut stream = EventStream {
            engine: self.clone(),
            session,
            pending: VecDeque::new(),
            ping,
            done: false,
        };
        // The first frame says whether the client is in (its welcome) or refused.
        let first = match stream.next_frames().await {
            Some(PlainFrame::Close(refused)) => {
                stream.finish(CloseReason::ServerClose);
                let body = serde_json::json!({ "error": refused.reason }).to_string();
                let mut response = respond(StatusCode::UNAUTHORIZED, "application/json", body);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
            Some(PlainFrame::Text(first)) => first,
            None => {
                stream.finish(CloseReason::TransportClose);
                return respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"error\":\"the connection closed before it was accepted\"}",
                );
            }
        };
        let body = futures_util::stream::once(async move { Ok::<_, Infallible>(first) }).chain(
            futures_util::stream::unfold(stream, |mut stream| async move {
                match stream.next_frames().await {
                    Some(PlainFrame::Text(bytes)) => Some((Ok(bytes), stream)),
                    Some(PlainFrame::Close(_)) | None => None,
                }
            }),
        );
        let mut response = Response::new(Body::from_stream(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Proxies that buffer (nginx) would hold events back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

/// One client's event stream: the outbox, converted, one block at a time, with a keep-alive comment when
/// nothing else was sent for `ping`. Dropping it (the client went away) closes the session.
struct EventStream<H: EngineHandler> {
    engine: Engine<H>,
    session: Arc<Session<H::Conn>>,
    pending: VecDeque<PlainFrame>,
    ping: Duration,
    done: bool,
}

/// The keep-alive an event stream sends when it has been quiet: a comment, which `EventSource` ignores.
const PING_COMMENT: &[u8] = b": ping\n\n";

impl<H: EngineHandler> EventStream<H> {
    /// The next thing to write, waiting for it; `None` once the session is over.
    async fn next_frames(&mut self) -> Option<PlainFrame> {
        loop {
            if let Some(next) = self.pending.pop_front() {
                if matches!(next, PlainFrame::Close(_)) {
                    self.finish(CloseReason::ServerClose);
                }
                return Some(next);
            }
            if self.done {
                return None;
            }
            let session = Arc::clone(&self.session);
            let notified = session.writable.notified();
            let (frames, closed) = {
                let mut state = self.session.state.lock();
                (Session::<H::Conn>::drain(&mut state), state.closed)
            };
            if !frames.is_empty() {
                let mut out = Vec::with_capacity(frames.len());
                self.engine
                    .inner
                    .handler
                    .plain_frames(&self.session, frames, &mut out);
                self.pending.extend(out);
                continue;
            }
            if let Some(reason) = closed {
                self.finish(reason);
                return None;
            }
            if tokio::time::timeout(self.ping, notified).await.is_err() {
                return Some(PlainFrame::Text(Bytes::from_static(PING_COMMENT)));
            }
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        if !self.done {
            self.done = true;
            self.session.close(reason);
            self.engine.finalize(&self.session);
        }
    }
}

impl<H: EngineHandler> Drop for EventStream<H> {
    fn drop(&mut self) {
        // The response body is dropped when the client goes away (or the server stops serving it).
        self.finish(CloseReason::TransportClose);
    }
}

/// A plain WebSocket's whole life after the upgrade: converted outbox frames out, text frames in to the layer
/// above, and a WebSocket ping every `ping_interval` that must be answered within `ping_timeout`.
async fn run_websocket<H: EngineHandler>(
    engine: &Engine<H>,
    session: &Arc<Session<H::Conn>>,
    mut ws: Ws,
) {
    let config = &engine.inner.config;
    let mut heartbeat = Heartbeat::new(Version::V4, config.ping_interval, config.ping_timeout);
    let timer = tokio::time::sleep_until(heartbeat.deadline());
    tokio::pin!(timer);
    let write_limit = config.ping_interval + config.ping_timeout;
    let mut out = Vec::new();
    let mut woken = false;
    let wire = ws.get_ref().wire().cloned();
    session.state.lock().wire.clone_from(&wire);
    // The socket closes once the task and the session both let go of it.
    let _release = ReleaseWire(session);
    loop {
        if std::mem::take(&mut woken) {
            // As the socket.io WebSocket task does: the publishes already on their way queue first, so a burst
            // leaves in one write.
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
            engine.inner.handler.plain_frames(session, frames, &mut out);
            let written = tokio::time::timeout(write_limit, write(&mut ws, &mut out)).await;
            match written {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(refused))) => {
                    session.close(CloseReason::ServerClose);
                    goodbye(&mut ws, refused).await;
                    return;
                }
                Ok(Err(_)) | Err(_) => {
                    session.close(CloseReason::TransportError);
                    return;
                }
            }
        }
        if let Some(reason) = closed {
            goodbye(&mut ws, closing(reason)).await;
            return;
        }
        if let Some(wire) = &wire {
            match open_wire(&mut ws, session, wire, write_limit).await {
                Written::All => {}
                Written::Failed => {
                    session.close(CloseReason::TransportError);
                    return;
                }
                Written::Abandoned => return,
            }
        }
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(WsMessage::Text(text))) => {
                    engine.inner.handler.on_plain_text(session, text.as_str());
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    let _ = session.send(OutFrame::text(
                        r#"{"type":"error","error":"binary frames are not supported: send JSON text frames"}"#,
                    ));
                }
                Some(Ok(WsMessage::Pong(_))) => heartbeat.on_peer_heartbeat(),
                // tungstenite answers pings itself.
                Some(Ok(WsMessage::Ping(_) | WsMessage::Frame(_))) => {}
                Some(Ok(WsMessage::Close(_))) | None => session.close(CloseReason::TransportClose),
                Some(Err(e)) => session.close(ws_error_reason(session, &e)),
            },
            () = session.writable.notified() => woken = true,
            () = &mut timer => match heartbeat.fire() {
                Due::SendPing => {
                    if ws.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                        session.close(CloseReason::TransportError);
                    }
                }
                Due::TimedOut => session.close(CloseReason::PingTimeout),
            },
        }
    }
}

/// Takes the session's wire back when the plain WebSocket's task ends, however it ends.
struct ReleaseWire<'a, C>(&'a Session<C>);

impl<C> Drop for ReleaseWire<'_, C> {
    fn drop(&mut self) {
        self.0.state.lock().wire = None;
    }
}

/// Writes converted frames, then flushes once; stops at a close, which it hands back.
async fn write(
    ws: &mut Ws,
    out: &mut Vec<PlainFrame>,
) -> Result<Option<Refused>, tokio_tungstenite::tungstenite::Error> {
    let mut refused = None;
    for frame in out.drain(..) {
        match frame {
            PlainFrame::Text(bytes) => {
                if let Ok(text) = Utf8Bytes::try_from(bytes) {
                    ws.feed(WsMessage::Text(text)).await?;
                }
            }
            PlainFrame::Close(close) => {
                refused = Some(close);
                break;
            }
        }
    }
    out.clear();
    ws.flush().await?;
    Ok(refused)
}

/// The close code and reason a plain WebSocket gets when its session closes for `reason`.
fn closing(reason: CloseReason) -> Refused {
    let code = match reason {
        CloseReason::PayloadTooLarge => 1009,
        CloseReason::PingTimeout | CloseReason::TransportError => 1011,
        CloseReason::ServerClose => 1001,
        CloseReason::OutboxFull | CloseReason::PolicyViolation | CloseReason::ParseError => 1008,
        CloseReason::TransportClose | CloseReason::RequestOverlap => 1000,
    };
    Refused {
        code,
        reason: reason.as_str().to_string(),
    }
}

/// Sends the close frame (unless the client closed first) and waits a second at most for it to leave.
async fn goodbye(ws: &mut Ws, close: Refused) {
    // A close reason is at most 123 bytes.
    let mut reason = close.reason;
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let frame = CloseFrame {
        code: CloseCode::from(close.code),
        reason: Utf8Bytes::from(reason),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws.close(Some(frame)).await;
        let _ = ws.flush().await;
    })
    .await;
}
