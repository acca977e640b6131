//! The HTTP face of the engine: query parsing, Engine.IO's JSON error answers, CORS and Origin checks, and
//! dispatch to the polling or WebSocket transport.

use std::net::SocketAddr;
use std::sync::Arc;

use ::http::header::{self, HeaderValue};
use ::http::{Method, Request, Response, StatusCode};
use axum::body::Body;
use axum::extract::ConnectInfo;
use herald_protocol::engineio::{Handshake, OutFrame, Version};

use super::session::{Session, Transport};
use super::{
    new_sid, polling, websocket, Engine, EngineHandler, ForwardError, SessionRefused, FORWARDED,
};
use crate::rate::RetryAfter;

/// Engine.IO's error codes, sent as `{"code":n,"message":"..."}` with status 400 (403 for `Forbidden`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    fn message(self) -> &'static str {
        match self {
            ErrorCode::UnknownTransport => "Transport unknown",
            ErrorCode::UnknownSid => "Session ID unknown",
            ErrorCode::BadHandshakeMethod => "Bad handshake method",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

/// An answer that refuses a request, boxed: it is the rare outcome, and large.
pub(super) type Refusal = Box<Response<Body>>;

/// The answer for an Engine.IO protocol error.
pub(crate) fn error(code: ErrorCode) -> Response<Body> {
    let status = if code == ErrorCode::Forbidden {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    let body = format!(
        "{{\"code\":{},\"message\":\"{}\"}}",
        code as u8,
        code.message()
    );
    respond(status, "application/json", body)
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The query parameters the engine reads.
#[derive(Debug, Default)]
pub(crate) struct EngineQuery {
    pub eio: Option<String>,
    pub transport: Option<String>,
    pub sid: Option<String>,
}

impl EngineQuery {
    fn parse(query: Option<&str>) -> Self {
        let mut parsed = EngineQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "EIO" => parsed.eio = Some(value.into_owned()),
                "transport" => parsed.transport = Some(value.into_owned()),
                "sid" => parsed.sid = Some(value.into_owned()),
                _ => {}
            }
        }
        parsed
    }
}

pub(super) async fn handle<H: EngineHandler>(
    engine: &Engine<H>,
    request: Request<Body>,
) -> Response<Body> {
    let config = &engine.inner.config;
    let origin = match checked_origin(config, &request) {
        Ok(origin) => origin,
        Err(refused) => return *refused,
    };
    let mut response = if request.method() == Method::OPTIONS {
        preflight(&request)
    } else {
        route(engine, request).await
    };
    allow_origin(config, origin, &mut response);
    response
}

/// The request's `Origin`, when it may have one: a site with a list of origins refuses the others (403).
fn checked_origin(
    config: &super::EngineConfig,
    request: &Request<Body>,
) -> Result<Option<HeaderValue>, Refusal> {
    let origin = request.headers().get(header::ORIGIN).cloned();
    if let (Some(allowed), Some(origin)) = (&config.allowed_origins, &origin) {
        if !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
            tracing::info!(origin = ?origin, "refused a connection from a disallowed origin");
            return Err(Box::new(error(ErrorCode::Forbidden)));
        }
    }
    Ok(origin)
}

/// The engine's new WebSocket sessions, answered by the server before hyper (`server/direct.rs`): the same
/// checks and answers as through [`handle`], with the connection handed over without hyper's upgrade.
impl<H: EngineHandler> crate::server::DirectUpgrades for Engine<H> {
    fn takes(&self, path: &str, query: &str) -> bool {
        let base = self.inner.config.path.trim_end_matches('/');
        if path.strip_suffix('/').unwrap_or(path) != base {
            return false;
        }
        let (mut websocket, mut sid) = (false, false);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "transport" => websocket = value == "websocket",
                "sid" => sid = true,
                _ => {}
            }
        }
        websocket && !sid
    }

    fn upgrade(
        &self,
        request: Request<Body>,
        stream: tokio::net::TcpStream,
        early: bytes::Bytes,
    ) -> Result<(), crate::server::Refused> {
        let config = &self.inner.config;
        let origin = match checked_origin(config, &request) {
            Ok(origin) => origin,
            Err(response) => return Err(crate::server::Refused { response, stream }),
        };
        let opened = checked(self, &request).and_then(|(_, transport, version)| {
            if transport != Transport::WebSocket {
                return Err(Box::new(error(ErrorCode::UnknownTransport)));
            }
            let Some(accept) = websocket::accept_key(&request) else {
                return Err(Box::new(error(ErrorCode::BadRequest)));
            };
            websocket::open(self, request, accept, version)
        });
        match opened {
            Ok((mut switch, opening)) => {
                allow_origin(config, origin, &mut switch);
                let first = crate::server::head_bytes(switch.status(), switch.headers(), None);
                opening.start(websocket::Source::direct(stream, first.into(), early));
                Ok(())
            }
            Err(mut response) => {
                allow_origin(config, origin, &mut response);
                Err(crate::server::Refused { response, stream })
            }
        }
    }
}

/// Credentialed CORS only for listed origins: with no list, a cross-origin page gets no CORS answer, so a
/// browser never lets it read a logged-in user's responses (socket.io's own default has no CORS). `origin` has
/// passed the origin check.
pub(super) fn allow_origin(
    config: &super::EngineConfig,
    origin: Option<HeaderValue>,
    response: &mut Response<Body>,
) {
    if let (Some(origin), Some(_)) = (origin, &config.allowed_origins) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

fn preflight(request: &Request<Body>) -> Response<Body> {
    let mut response = respond(StatusCode::NO_CONTENT, "text/plain", Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(requested) = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    response
}

/// The query, transport and protocol version of a request the engine can serve, or the Engine.IO error.
fn checked<H: EngineHandler>(
    engine: &Engine<H>,
    request: &Request<Body>,
) -> Result<(EngineQuery, Transport, Version), Refusal> {
    let config = &engine.inner.config;
    let query = EngineQuery::parse(request.uri().query());
    let transport = match query.transport.as_deref() {
        Some("polling") if config.allow_polling => Transport::Polling,
        Some("websocket") if config.allow_websocket => Transport::WebSocket,
        _ => return Err(Box::new(error(ErrorCode::UnknownTransport))),
    };
    let Some(version) = query.eio.as_deref().and_then(Version::from_query) else {
        return Err(Box::new(error(ErrorCode::UnsupportedProtocolVersion)));
    };
    if query.sid.is_none() {
        let size = handshake_bytes(request);
        if size > config.max_handshake_bytes {
            return Err(Box::new(handshake_too_large(
                size,
                config.max_handshake_bytes,
            )));
        }
    }
    Ok((query, transport, version))
}

async fn route<H: EngineHandler>(engine: &Engine<H>, request: Request<Body>) -> Response<Body> {
    let (query, transport, version) = match checked(engine, &request) {
        Ok(checked) => checked,
        Err(refused) => return *refused,
    };
    if let Some(sid) = query.sid.as_deref() {
        if !engine.inner.polling.read().contains_key(sid) {
            return foreign(engine, sid, request).await;
        }
    }
    match transport {
        Transport::Polling => polling::handle(engine, request, query, version).await,
        Transport::WebSocket => websocket::handle(engine, request, query, version),
        Transport::PlainWebSocket | Transport::EventStream => error(ErrorCode::UnknownTransport),
    }
}

/// A request for a session this node does not hold: forwarded to the node whose id starts the sid, unless this
/// node issued it (it is over), no node owns it, or a node forwarded the request already.
async fn foreign<H: EngineHandler>(
    engine: &Engine<H>,
    sid: &str,
    request: Request<Body>,
) -> Response<Body> {
    let inner = &engine.inner;
    let ours = !inner.config.sid_prefix.is_empty() && sid.starts_with(&inner.config.sid_prefix);
    let Some(forward) = inner.forward.get().filter(|_| !ours) else {
        return error(ErrorCode::UnknownSid);
    };
    if request.headers().contains_key(FORWARDED) {
        tracing::debug!(sid, "not forwarding a request another node forwarded");
        return error(ErrorCode::UnknownSid);
    }
    let Some(forwarded) = forward.forward(sid, request) else {
        return error(ErrorCode::UnknownSid);
    };
    match forwarded.await {
        Ok(response) => response,
        Err(ForwardError::Unreachable) => error(ErrorCode::UnknownSid),
        Err(ForwardError::Busy) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            "{\"code\":3,\"message\":\"server is at its forwarding limit\"}",
        ),
    }
}

impl<H: EngineHandler> Engine<H> {
    /// Admits and starts a session: queues its `open` packet and tells the handler.
    pub(super) fn open_session(
        &self,
        parts: &::http::request::Parts,
        version: Version,
        transport: Transport,
    ) -> Result<Arc<Session<H::Conn>>, SessionRefused> {
        self.admit_session(parts)?;
        Ok(self.start_session(parts, version, transport))
    }

    /// Starts a session [`admit_session`](Self::admit_session) admitted.
    pub(super) fn start_session(
        &self,
        parts: &::http::request::Parts,
        version: Version,
        transport: Transport,
    ) -> Arc<Session<H::Conn>> {
        let inner = &self.inner;
        let conn = inner.handler.new_conn(parts, version, transport);
        let session = Arc::new(Session::new(
            new_sid(&inner.config.sid_prefix),
            version,
            transport,
            self.outbox_limits(),
            conn,
        ));
        let upgrades: &[&str] = if transport == Transport::Polling && inner.config.allow_websocket {
            &["websocket"]
        } else {
            &[]
        };
        let open = Handshake {
            sid: session.sid(),
            upgrades,
            ping_interval: inner.config.ping_interval.as_millis() as u64,
            ping_timeout: inner.config.ping_timeout.as_millis() as u64,
            max_payload: (version == Version::V4).then_some(inner.config.max_payload as u64),
        };
        // A fresh session's outbox is empty, so this send cannot fail.
        let _ = session.send(OutFrame::text(open.to_packet()));
        if transport == Transport::Polling {
            inner
                .polling
                .write()
                .insert(session.sid().into(), Arc::clone(&session));
        } else {
            self.track(&session);
        }
        inner.handler.on_open(&session);
        session
    }

    /// The one gate of every new session, whatever its transport: refused while draining, over the client
    /// address's connect rate (one keyed limiter call), or at `max_sessions`; otherwise counted, and the caller
    /// starts it or gives the place back ([`release_admission`](Self::release_admission)).
    pub(super) fn admit_session(
        &self,
        parts: &::http::request::Parts,
    ) -> Result<(), SessionRefused> {
        let inner = &self.inner;
        if self.is_draining() {
            return Err(SessionRefused::Draining);
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        if let (Some(rate), Some(ConnectInfo(peer))) = (&inner.config.connect_rate, peer) {
            rate.admit(peer.ip()).map_err(SessionRefused::RateLimited)?;
        }
        let live = inner
            .live
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if live >= inner.config.max_sessions {
            self.release_admission();
            tracing::warn!(
                limit = inner.config.max_sessions,
                "refused a session: the session limit is reached"
            );
            return Err(SessionRefused::Full);
        }
        Ok(())
    }

    /// Gives back the place of an admitted session that was never started (its WebSocket upgrade failed).
    pub(super) fn release_admission(&self) {
        self.inner
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a session no sid lookup needs (WebSocket, plain), so that `close_all` reaches it.
    pub(super) fn track(&self, session: &Arc<Session<H::Conn>>) {
        self.inner
            .websockets
            .lock()
            .insert(Arc::as_ptr(session) as usize, Arc::downgrade(session));
    }
}

/// The answer when no session can be opened: 503 while draining or at the session limit, 429 with
/// `Retry-After` over the connect rate (socket.io clients see a transport error and retry with backoff).
pub(crate) fn refused(why: SessionRefused) -> Response<Body> {
    let message = match why {
        SessionRefused::Draining => "server is shutting down",
        SessionRefused::Full => {
            crate::limits::Limit::Sessions.hit();
            "server is at its session limit"
        }
        SessionRefused::RateLimited(retry_after) => return rate_limited(retry_after),
    };
    let body = format!("{{\"code\":3,\"message\":\"{message}\"}}");
    respond(StatusCode::SERVICE_UNAVAILABLE, "application/json", body)
}

/// 429 for a handshake over the connect rate: `Retry-After` in whole seconds, and Engine.IO's error JSON with
/// the same number as `retryAfter`.
fn rate_limited(retry_after: RetryAfter) -> Response<Body> {
    let secs = retry_after.secs();
    let body = format!("{{\"code\":3,\"message\":\"rate limited\",\"retryAfter\":{secs}}}");
    let mut response = respond(StatusCode::TOO_MANY_REQUESTS, "application/json", body);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// Bytes a new session would keep from its handshake: the query string and the `Cookie` header(s).
pub(super) fn handshake_bytes(request: &Request<Body>) -> usize {
    let cookies: usize = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::len)
        .sum();
    request.uri().query().map_or(0, str::len) + cookies
}

/// The answer to a handshake whose query and cookie are over `max_handshake_bytes`.
pub(super) fn handshake_too_large(size: usize, limit: usize) -> Response<Body> {
    crate::limits::Limit::HandshakeBytes.hit();
    tracing::debug!(
        size,
        limit,
        "refused a handshake: query and cookie too large"
    );
    let body = format!(
        "{{\"code\":3,\"message\":\"handshake query and cookie are {size} bytes, limit is {limit}\"}}"
    );
    respond(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "application/json",
        body,
    )
}
