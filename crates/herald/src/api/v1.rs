//! herald's own versioned API under `/api/v1/sites/{site}`: publish, batch, list sockets, disconnect, and room
//! membership. Every request carries `Authorization: Bearer <site API key>`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::{read_body, ApiState};
use crate::cluster::peers::{escape, PeerRequest, LOCAL_HEADER};
use crate::mailbox::store::valid_name;
use crate::publish::PublishRequest;
use crate::sites::{describe_socket, Site};
use crate::socketio::Socket;

/// The site named in the path, if the request's bearer key is one of its keys. An unknown site answers
/// exactly as a wrong key does, so site names cannot be enumerated without a key.
pub(super) fn authorized(
    state: &ApiState,
    headers: &HeaderMap,
    site: &str,
) -> Result<Arc<Site>, ApiError> {
    let key = bearer(headers).ok_or(ApiError::MissingKey)?;
    match state.sites.get(site) {
        Some(found) if found.accepts_key(key) => Ok(Arc::clone(found)),
        _ => Err(ApiError::InvalidKey(site.to_string())),
    }
}

/// The request body as `T`, which must be a JSON object.
async fn json_body<T: DeserializeOwned>(
    state: &ApiState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<T, ApiError> {
    let bytes = read_body(body, headers, state.max_publish_bytes).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| e.to_string())
        .and_then(from_object)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// `value` as `T` if it is a JSON object. serde alone would also read a struct from an array of its fields in
/// order (`[]` as `{}`); the API takes objects only, as its OpenAPI document says.
fn from_object<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    let kind = match &value {
        Value::Object(_) => return T::deserialize(value).map_err(|e| e.to_string()),
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    Err(format!("expected a JSON object, got {kind}"))
}

pub async fn publish(
    State(state): State<ApiState>,
    ApiPath(site): ApiPath<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let site = authorized(&state, &headers, &site)?;
    let request: PublishRequest = json_body(&state, &headers, body).await?;
    let outcome = state
        .publisher
        .publish(&site, &request, request.resync)
        .await?;
    Ok(Json(json!(outcome)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Read one by one, so an error names the message it is about.
    messages: Vec<Value>,
}

pub async fn batch(
    State(state): State<ApiState>,
    ApiPath(site): ApiPath<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let site = authorized(&state, &headers, &site)?;
    let request: BatchRequest = json_body(&state, &headers, body).await?;
    // All or nothing: a batch with one bad message publishes none of them.
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, message) in request.messages.into_iter().enumerate() {
        let message: PublishRequest = from_object(message)
            .map_err(|e| ApiError::BadRequest(format!("messages[{i}]: {e}")))?;
        message
            .validate()
            .map_err(|e| ApiError::BadRequest(format!("messages[{i}]: {e}")))?;
        messages.push(message);
    }
    let mut results = Vec::with_capacity(messages.len());
    for message in &messages {
        results.push(
            state
                .publisher
                .publish(&site, message, message.resync)
                .await?,
        );
    }
    Ok(Json(json!({ "results": results })))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    room: Option<String>,
}

fn describe(socket: &Socket, node: &str) -> Value {
    let mut described = describe_socket(socket);
    described["node"] = json!(node);
    described
}

/// Whether the caller is a peer asking about this node's own sockets only.
fn local_only(headers: &HeaderMap) -> bool {
    headers.contains_key(LOCAL_HEADER)
}

/// The bearer key of an authorized request, to pass on to peers.
/// The key of `Authorization: Bearer <key>`, trimmed.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn api_key(headers: &HeaderMap) -> &str {
    bearer(headers).unwrap_or_default()
}

/// The sockets of the site (or of one room) on every live node, sorted by id, each with its node. A node that
/// does not answer in time leaves its sockets out and is named in `unreachable`, with `partial: true`.
pub async fn list_sockets(
    State(state): State<ApiState>,
    ApiPath(site): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = authorized(&state, &headers, &site)?;
    let cluster = &state.publisher.cluster;
    let sockets = match &query.room {
        Some(room) => site.namespace.room_sockets(room),
        None => site.namespace.sockets(),
    };
    let mut listed: Vec<Value> = sockets.iter().map(|s| describe(s, &cluster.node)).collect();
    let mut unreachable = Vec::new();
    if !local_only(&headers) {
        let mut target = format!("/api/v1/sites/{}/sockets", escape(&site.config.name));
        if let Some(room) = &query.room {
            target.push_str(&format!("?room={}", escape(room)));
        }
        let request = PeerRequest {
            method: reqwest::Method::GET,
            target: &target,
            api_key: api_key(&headers),
            body: None,
        };
        for peer in state
            .peers
            .ask_all(cluster.directory.as_ref(), &request)
            .await
        {
            let theirs = match &peer.answer {
                Ok((200, body)) => serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|mut v| v.get_mut("sockets").map(Value::take))
                    .and_then(|v| match v {
                        Value::Array(sockets) => Some(sockets),
                        _ => None,
                    }),
                _ => None,
            };
            match theirs {
                Some(sockets) => listed.extend(sockets),
                None => {
                    tracing::warn!(node = %peer.node, answer = ?peer.answer.as_ref().map(|(status, _)| status),
                        "a node did not answer a socket listing");
                    unreachable.push(peer.node.to_string());
                }
            }
        }
    }
    listed.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let mut answer = json!({ "sockets": listed });
    if !unreachable.is_empty() {
        answer["partial"] = json!(true);
        answer["unreachable"] = json!(unreachable);
    }
    Ok(Json(answer))
}

/// Passes a request about socket `id`, which is not on this node, to every peer: the answer of the one that
/// has it, else 404 when every peer answered that it does not, else 503.
async fn on_peer(
    state: &ApiState,
    headers: &HeaderMap,
    site: &Site,
    id: &str,
    request: PeerRequest<'_>,
) -> Result<(u16, Bytes), ApiError> {
    if local_only(headers) {
        return Err(ApiError::UnknownSocket(id.to_string()));
    }
    let answers = state
        .peers
        .ask_all(state.publisher.cluster.directory.as_ref(), &request)
        .await;
    let mut silent = 0;
    for peer in answers {
        match peer.answer {
            Ok((404, _)) => {}
            Ok((status, body)) if status < 500 && status != 401 => return Ok((status, body)),
            other => {
                tracing::warn!(node = %peer.node, site = %site.config.name, answer = ?other.as_ref().map(|(s, _)| s),
                    "a node did not answer a socket request");
                silent += 1;
            }
        }
    }
    if silent == 0 {
        Err(ApiError::UnknownSocket(id.to_string()))
    } else {
        Err(ApiError::NodesUnavailable(silent))
    }
}

/// Disconnects socket `id`, on whichever node holds it.
pub async fn disconnect(
    State(state): State<ApiState>,
    ApiPath((site, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let site = authorized(&state, &headers, &site)?;
    if let Some(socket) = site.namespace.socket(&id) {
        socket.disconnect();
        return Ok(StatusCode::NO_CONTENT);
    }
    let target = format!(
        "/api/v1/sites/{}/sockets/{}",
        escape(&site.config.name),
        escape(&id)
    );
    let request = PeerRequest {
        method: reqwest::Method::DELETE,
        target: &target,
        api_key: api_key(&headers),
        body: None,
    };
    let (status, _) = on_peer(&state, &headers, &site, &id, request).await?;
    Ok(StatusCode::from_u16(status).unwrap_or(StatusCode::NO_CONTENT))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipRequest {
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    leave: Vec<String>,
}

pub async fn rooms(
    State(state): State<ApiState>,
    ApiPath((site, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let site = authorized(&state, &headers, &site)?;
    let bytes = read_body(body, &headers, state.max_publish_bytes).await?;
    let request: MembershipRequest = serde_json::from_slice(&bytes)
        .map_err(|e| e.to_string())
        .and_then(from_object)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    // Rooms are names a mailbox store keeps (as an auth answer's rooms are): refuse a bad one before any change.
    if let Some(bad) = request.join.iter().find(|r| !valid_name(r)) {
        return Err(ApiError::BadRequest(format!(
            "cannot join '{}': a room name is at most 256 bytes, without control characters",
            bad.escape_debug()
        )));
    }
    let Some(socket) = site.namespace.socket(&id) else {
        let target = format!(
            "/api/v1/sites/{}/sockets/{}/rooms",
            escape(&site.config.name),
            escape(&id)
        );
        let forwarded = PeerRequest {
            method: reqwest::Method::POST,
            target: &target,
            api_key: api_key(&headers),
            body: Some(bytes),
        };
        let (status, body) = on_peer(&state, &headers, &site, &id, forwarded).await?;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        return Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
    };
    for room in &request.leave {
        socket.leave(room);
    }
    site.join(&socket, &request.join);
    site.rooms_changed(&socket).await.map_err(ApiError::store)?;
    Ok(Json(json!({ "rooms": socket.rooms() })).into_response())
}

/// A user's devices and what each has pending: `user` is the user room (`user_42`) or the id after its prefix.
pub async fn user_devices(
    State(state): State<ApiState>,
    ApiPath((site, user)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = authorized(&state, &headers, &site)?;
    let Some(mailbox) = &site.mailbox else {
        return Err(ApiError::BadRequest(format!(
            "site '{}' keeps no mailboxes: it needs a user_room_prefix and a device_ttl_secs above 0",
            site.config.name
        )));
    };
    let room = match site.user_room(&user) {
        Some(room) => room.to_string(),
        None => format!(
            "{}{user}",
            site.config.user_room_prefix.as_deref().unwrap_or_default()
        ),
    };
    if !valid_name(&room) {
        return Err(ApiError::BadRequest("invalid user name".into()));
    }
    let devices = mailbox
        .devices(&site.config.name, &room)
        .await
        .map_err(ApiError::store)?;
    let listed: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                "deviceId": d.device,
                "connected": d.connected,
                "pending": d.pending,
                "bytes": d.bytes,
                "overflowed": d.overflowed,
                "expiresAtMs": d.expires_at_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "user": room, "devices": listed })))
}
