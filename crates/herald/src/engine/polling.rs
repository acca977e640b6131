//! HTTP long-polling: the handshake GET, the one pending GET that carries the outbox, the POST that carries
//! packets in, and the per-session driver task that owns the heartbeat until an upgrade hands it over.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ::http::{header, Method, Request, Response, StatusCode};
use axum::body::Body;
use bytes::Bytes;
use herald_protocol::engineio::{
    decode_binary_payload_v3, decode_payload, encode_payload, Packet, Version,
};
use http_body_util::BodyExt;

use super::heartbeat::{Due, Heartbeat};
use super::http::{error, refused, respond, EngineQuery, ErrorCode};
use super::inbound::Heard;
use super::session::{CloseReason, Session, Transport};
use super::{Engine, EngineHandler};

const TEXT: &str = "text/plain; charset=UTF-8";

pub(super) async fn handle<H: EngineHandler>(
    engine: &Engine<H>,
    request: Request<Body>,
    query: EngineQuery,
    version: Version,
) -> Response<Body> {
    let Some(sid) = query.sid else {
        if request.method() != Method::GET {
            return error(ErrorCode::BadHandshakeMethod);
        }
        let (parts, _) = request.into_parts();
        let session = match engine.open_session(&parts, version, Transport::Polling) {
            Ok(session) => session,
            Err(why) => return refused(why),
        };
        tokio::spawn(drive(engine.clone(), Arc::clone(&session)));
        return poll(&session).await;
    };
    let session = engine.inner.polling.read().get(sid.as_str()).cloned();
    let Some(session) = session else {
        return error(ErrorCode::UnknownSid);
    };
    if session.check_heartbeat() && session.closed() == Some(CloseReason::PingTimeout) {
        return error(ErrorCode::UnknownSid);
    }
    match *request.method() {
        // A closed session takes nothing more in, even while its last GET may still be answered.
        Method::POST if session.closed().is_some() => error(ErrorCode::UnknownSid),
        Method::GET => poll(&session).await,
        Method::POST => post(engine, &session, request).await,
        _ => error(ErrorCode::BadRequest),
    }
}

/// Clears a pending-request flag however the request ends, including when the client goes away.
struct Pending<'a, C> {
    session: &'a Session<C>,
    get: bool,
}

impl<C> Drop for Pending<'_, C> {
    fn drop(&mut self) {
        let mut state = self.session.state.lock();
        if self.get {
            state.get_pending = false;
        } else {
            state.post_pending = false;
        }
    }
}

/// Claims the session's one GET (or POST) slot; a second concurrent request closes the session.
fn claim<C>(session: &Session<C>, get: bool) -> Result<Pending<'_, C>, ErrorCode> {
    let mut state = session.state.lock();
    if state.transport != Transport::Polling {
        return Err(ErrorCode::BadRequest);
    }
    let slot = if get {
        &mut state.get_pending
    } else {
        &mut state.post_pending
    };
    if *slot {
        state.closed.get_or_insert(CloseReason::RequestOverlap);
        drop(state);
        session.wake_all();
        tracing::info!(
            sid = session.sid(),
            "closed a session: two concurrent polling requests"
        );
        return Err(ErrorCode::BadRequest);
    }
    *slot = true;
    Ok(Pending { session, get })
}

/// Waits until there is something to send, then sends the whole outbox as one payload.
async fn poll<C>(session: &Session<C>) -> Response<Body> {
    let _pending = match claim(session, true) {
        Ok(pending) => pending,
        Err(code) => return error(code),
    };
    // A client stops starting GETs once its probe is answered, so a GET that arrives mid-upgrade raced the
    // client's `5`: give the upgrade a moment to settle before choosing between a noop and "after upgrade".
    let arrived_mid_upgrade = session.state.lock().upgrading;
    let settle = tokio::time::sleep(UPGRADE_SETTLE);
    tokio::pin!(settle);
    let mut settled = !arrived_mid_upgrade;
    loop {
        let notified = session.writable.notified();
        {
            let mut state = session.state.lock();
            if !state.outbox.is_empty() {
                let frames = Session::<C>::drain(&mut state);
                drop(state);
                let mut body = String::new();
                encode_payload(&frames, session.version(), &mut body);
                return respond(StatusCode::OK, TEXT, body);
            }
            if let Some(reason) = state.closed {
                if state.close_delivered {
                    return error(ErrorCode::UnknownSid);
                }
                state.close_delivered = true;
                drop(state);
                session.heartbeat.notify_one();
                // The client closed it: release its GET. We closed it: tell the client.
                let packet = if reason == CloseReason::TransportClose {
                    "6"
                } else {
                    "1"
                };
                return payload_of_one(session.version(), packet);
            }
            if state.transport != Transport::Polling {
                return if arrived_mid_upgrade {
                    error(ErrorCode::BadRequest)
                } else {
                    payload_of_one(session.version(), "6")
                };
            }
            if state.upgrading && settled {
                return payload_of_one(session.version(), "6");
            }
        }
        tokio::select! {
            () = notified => {}
            () = &mut settle, if !settled => settled = true,
        }
    }
}

/// How long a GET that arrives during an upgrade waits for it to complete.
const UPGRADE_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

fn payload_of_one(version: Version, packet: &'static str) -> Response<Body> {
    let body = match version {
        Version::V4 => packet.to_string(),
        Version::V3 => format!("{}:{packet}", packet.len()),
    };
    respond(StatusCode::OK, TEXT, body)
}

async fn post<H: EngineHandler>(
    engine: &Engine<H>,
    session: &Arc<Session<H::Conn>>,
    request: Request<Body>,
) -> Response<Body> {
    let _pending = match claim(session, false) {
        Ok(pending) => pending,
        Err(code) => return error(code),
    };
    let max = engine.inner.config.max_payload;
    let binary = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    let body = match http_body_util::Limited::new(request.into_body(), max)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let reason = if too_large {
                crate::limits::Limit::Payload.hit();
                CloseReason::PayloadTooLarge
            } else {
                CloseReason::TransportError
            };
            tracing::info!(
                sid = session.sid(),
                limit = max,
                reason = reason.as_str(),
                "closed a polling session"
            );
            session.close_told(reason);
            return if too_large {
                respond(StatusCode::PAYLOAD_TOO_LARGE, TEXT, "payload too large")
            } else {
                error(ErrorCode::BadRequest)
            };
        }
    };
    match apply_payload(engine, session, &body, binary) {
        Ok(()) => respond(StatusCode::OK, "text/html", "ok"),
        Err(CloseReason::TransportClose) => {
            session.close(CloseReason::TransportClose);
            respond(StatusCode::OK, "text/html", "ok")
        }
        // Closed by a packet of this POST (the layer above refused it), or by the server meanwhile: already
        // logged where it closed, and its last GET tells the client.
        Err(_) if session.closed().is_some() => respond(StatusCode::OK, "text/html", "ok"),
        Err(reason) => {
            tracing::info!(
                sid = session.sid(),
                reason = reason.as_str(),
                "closed a polling session"
            );
            session.close_told(reason);
            error(ErrorCode::BadRequest)
        }
    }
}

fn apply_payload<H: EngineHandler>(
    engine: &Engine<H>,
    session: &Arc<Session<H::Conn>>,
    body: &Bytes,
    binary: bool,
) -> Result<(), CloseReason> {
    let mut heard = false;
    let mut apply = |packet: Packet<'_>| -> Result<(), CloseReason> {
        // Nothing after close: the rest of a POST whose packets closed the session is not read.
        if let Some(reason) = session.closed() {
            return Err(reason);
        }
        heard |= engine.on_packet(session, packet)? == Heard::Heartbeat;
        Ok(())
    };
    let result = if binary && session.version() == Version::V3 {
        let packets = decode_binary_payload_v3(body).map_err(|_| CloseReason::ParseError)?;
        packets.into_iter().try_for_each(&mut apply)
    } else {
        let text = std::str::from_utf8(body).map_err(|_| CloseReason::ParseError)?;
        decode_payload(text, session.version())
            .try_for_each(|packet| apply(packet.map_err(|_| CloseReason::ParseError)?))
    };
    if heard {
        session.heard.store(true, Ordering::Release);
        session.heartbeat.notify_one();
    }
    result
}

/// The session's task while it polls: heartbeats and timeouts. It exits without closing when a WebSocket takes
/// the session over, and runs the close handlers when the session ends on polling.
async fn drive<H: EngineHandler>(engine: Engine<H>, session: Arc<Session<H::Conn>>) {
    let config = &engine.inner.config;
    let mut heartbeat = Heartbeat::starting_at(
        tokio::time::Instant::from_std(session.opened_at()),
        session.version(),
        config.ping_interval,
        config.ping_timeout,
    );
    loop {
        let notified = session.heartbeat.notified();
        {
            let state = session.state.lock();
            if state.closed.is_some() {
                break;
            }
            if state.transport == Transport::WebSocket {
                return;
            }
        }
        if session.heard.swap(false, Ordering::AcqRel) {
            heartbeat.on_peer_heartbeat();
        }
        session.set_heartbeat_deadline(heartbeat.awaited());
        tokio::select! {
            () = tokio::time::sleep_until(heartbeat.deadline()) => match heartbeat.fire() {
                Due::SendPing => {
                    let _ = session.send(herald_protocol::engineio::OutFrame::text("2"));
                    engine.inner.handler.on_heartbeat(&session);
                }
                Due::TimedOut => session.close(CloseReason::PingTimeout),
            },
            () = notified => {}
        }
    }
    engine.finalize(&session);
    // A GET racing with the close still gets the closing packet; then the sid is forgotten.
    let grace = tokio::time::sleep(CLOSE_GRACE);
    tokio::pin!(grace);
    loop {
        let notified = session.heartbeat.notified();
        if session.state.lock().close_delivered {
            break;
        }
        tokio::select! {
            () = &mut grace => break,
            () = notified => {}
        }
    }
    engine.forget(&session);
}

/// How long a closed polling session waits for a last GET to tell the client.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
