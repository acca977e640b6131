//! The plain endpoints, for clients without a socket.io library: `GET /ws/{site}` (a plain WebSocket, JSON
//! frames both ways) and `GET /sse/{site}` (Server-Sent Events). Each is a thin adapter: its client becomes a
//! socket of the site's namespace like any socket.io client, let in by the same auth rule into the same rooms,
//! fed by the same broadcasts, mailboxes, retained state and recovery log, and its events go through the same
//! client-event pipeline. The frames are in `socketio/plain.rs`, the transports in `engine/plain.rs`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::engine::{Engine, Refused, SessionRefused, Transport};
use crate::rate::RetryAfter;
use crate::sites::Sites;
use crate::socketio::SocketIo;

/// What the plain endpoints need.
#[derive(Clone)]
pub struct PlainState {
    pub engine: Engine<SocketIo>,
    pub io: SocketIo,
    pub sites: Sites,
    /// Time between an event stream's keep-alive comments.
    pub sse_ping: Duration,
}

/// `/ws/{site}` and `/sse/{site}`.
pub fn router(state: PlainState) -> axum::Router {
    axum::Router::new()
        .route("/ws/{site}", axum::routing::get(websocket))
        .route("/sse/{site}", axum::routing::get(event_stream))
        .with_state(state)
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

/// The checks both endpoints make before a session is opened (the site exists, the origin may connect, the
/// handshake is not too large): the answer when one fails.
fn refusal(state: &PlainState, site: &str, request: &Request<Body>) -> Option<Response> {
    if state.sites.get(site).is_none() {
        return Some(refuse(
            StatusCode::NOT_FOUND,
            &format!("unknown site '{}'", site.escape_debug()),
        ));
    }
    if !state.engine.origin_allowed(request.headers()) {
        tracing::info!(site, "refused a plain client from a disallowed origin");
        return Some(refuse(StatusCode::FORBIDDEN, "this origin may not connect"));
    }
    state.engine.oversize_handshake(request)
}

/// The CONNECT auth payload of a plain client: its bearer token, and for an event stream the id of the last
/// event it got. The query's `token`, `deviceId` and `lastEventId` are read from the handshake query as for
/// socket.io clients.
fn auth_payload(headers: &HeaderMap, last_event_id: bool) -> Option<Value> {
    let mut auth = Map::new();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    if let Some(token) = bearer {
        auth.insert("token".into(), token.into());
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| last_event_id && !v.is_empty());
    if let Some(last) = last {
        auth.insert("lastEventId".into(), last.into());
    }
    (!auth.is_empty()).then_some(Value::Object(auth))
}

/// Opens a plain session for the request and asks the site's namespace to let its client in, with `auth`.
fn connect(
    state: &PlainState,
    site: &str,
    parts: &axum::http::request::Parts,
    transport: Transport,
    auth: Option<Value>,
) -> Result<std::sync::Arc<crate::engine::Session<crate::socketio::Conn>>, SessionRefused> {
    let session = state.engine.open_plain(parts, transport)?;
    state.io.connect_plain(&session, &format!("/{site}"), auth);
    Ok(session)
}

/// The answer when no session could be opened: 503 while draining or full, 429 with `Retry-After` over the
/// connect rate (what an event stream gets; a plain WebSocket gets [`rate_limited_websocket`]).
fn unavailable(why: SessionRefused) -> Response {
    let SessionRefused::RateLimited(retry_after) = why else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "herald is full or draining",
        );
    };
    let body = serde_json::json!({ "error": RATE_LIMITED, "retryAfter": retry_after.secs() });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, retry_after.secs().into());
    response
}

/// What a client over `limits.connects_per_ip_per_sec` is told, with the seconds to wait as `retryAfter`.
const RATE_LIMITED: &str = "rate limited";

/// A plain WebSocket over the connect rate: upgraded, then an error frame `{"type":"error","error":"rate
/// limited","retryAfter":n}` and close 1008 "rate limited", the shape of any refusal, which a browser can read.
fn rate_limited_websocket(
    state: &PlainState,
    request: Request<Body>,
    retry_after: RetryAfter,
) -> Response {
    let frame = serde_json::json!({
        "type": "error",
        "error": RATE_LIMITED,
        "retryAfter": retry_after.secs(),
    });
    state
        .engine
        .refuse_plain_websocket(request, frame.to_string(), Refused::policy(RATE_LIMITED))
}

async fn websocket(
    State(state): State<PlainState>,
    Path(site): Path<String>,
    request: Request<Body>,
) -> Response {
    if let Some(refused) = refusal(&state, &site, &request) {
        return refused;
    }
    if state.engine.plain_websocket_check(&request).is_err() {
        let mut response = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "expected a WebSocket handshake (Upgrade: websocket)",
        );
        response.headers_mut().insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        return response;
    }
    let auth = auth_payload(request.headers(), false);
    let (parts, body) = request.into_parts();
    let session = match connect(&state, &site, &parts, Transport::PlainWebSocket, auth) {
        Ok(session) => session,
        Err(SessionRefused::RateLimited(retry_after)) => {
            return rate_limited_websocket(&state, Request::from_parts(parts, body), retry_after)
        }
        Err(why) => return unavailable(why),
    };
    state
        .engine
        .serve_plain_websocket(session, Request::from_parts(parts, body))
}

async fn event_stream(
    State(state): State<PlainState>,
    Path(site): Path<String>,
    request: Request<Body>,
) -> Response {
    if let Some(refused) = refusal(&state, &site, &request) {
        return refused;
    }
    let auth = auth_payload(request.headers(), true);
    let origin = request.headers().get(header::ORIGIN).cloned();
    let slot = request
        .extensions()
        .get::<crate::server::ConnectionSlot>()
        .cloned();
    let (parts, _) = request.into_parts();
    let session = match connect(&state, &site, &parts, Transport::EventStream, auth) {
        Ok(session) => session,
        Err(why) => return unavailable(why),
    };
    drop(parts);
    let response = state
        .engine
        .serve_event_stream(session, origin, state.sse_ping)
        .await;
    // The stream lasts as long as its session, which `max_connections` bounds: it leaves its HTTP slot.
    if let (StatusCode::OK, Some(slot)) = (response.status(), slot) {
        slot.release();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_and_last_event_id_go_into_the_auth_payload() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("header"));
        headers.insert("last-event-id", "12".parse().expect("header"));
        assert_eq!(
            auth_payload(&headers, true),
            Some(serde_json::json!({"token": "abc", "lastEventId": "12"}))
        );
        assert_eq!(
            auth_payload(&headers, false),
            Some(serde_json::json!({"token": "abc"}))
        );
        headers.insert(header::AUTHORIZATION, "Basic eHk=".parse().expect("header"));
        assert_eq!(auth_payload(&headers, false), None);
    }
}
