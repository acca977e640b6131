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
use crate::mailbox::store::{valid_name, DeviceStatus};
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
        Some(found) if found.accepts_key(key) => Ok(found),
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
pub(crate) fn from_object<T: DeserializeOwned>(value: Value) -> Result<T, String> {
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
    // Before the body is read: a key over its rate costs no more than this.
    state.charge(api_key(&headers), &site.config.name, 1)?;
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
    // Each message is a publish, so a batch is no way around the key's rate.
    state.charge(api_key(&headers), &site.config.name, messages.len())?;
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
pub(crate) fn local_only(headers: &HeaderMap) -> bool {
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
    let sockets = match &query.room {
        Some(room) => site.namespace.room_sockets(room),
        None => site.namespace.sockets(),
    };
    let mut target = format!("/api/v1/sites/{}/sockets", escape(&site.config.name));
    if let Some(room) = &query.room {
        target.push_str(&format!("?room={}", escape(room)));
    }
    let peers = Peers::of(&headers);
    let node = &state.publisher.cluster.node;
    let listed = sockets.iter().map(|s| describe(s, node)).collect();
    let mut gathered = gather(&state, listed, &target, "sockets", &peers).await;
    gathered
        .items
        .sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(Json(gathered.answer("sockets")))
}

/// How a request about sockets reaches the other nodes: with which bearer key, and whether it came from a peer
/// (which wants this node's sockets only, so a request never fans out twice).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peers<'a> {
    pub key: &'a str,
    pub local_only: bool,
}

impl<'a> Peers<'a> {
    /// The request's own key, passed on as it came.
    fn of(headers: &'a HeaderMap) -> Self {
        Peers {
            key: api_key(headers),
            local_only: local_only(headers),
        }
    }
}

/// What a listing gathered from this node and its live peers.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    /// This node's items, then each peer's.
    pub items: Vec<Value>,
    /// The peers' `total` fields added up (a peer's item count when it sent none).
    pub peer_totals: u64,
    /// Peers that did not answer in time.
    pub unreachable: Vec<String>,
}

impl Gathered {
    /// `{<field>: items}`, with `partial: true` and the `unreachable` nodes when some did not answer.
    pub(crate) fn answer(self, field: &str) -> Value {
        let mut answer = Value::Object(serde_json::Map::from_iter([(
            field.to_string(),
            Value::Array(self.items),
        )]));
        if !self.unreachable.is_empty() {
            answer["partial"] = json!(true);
            answer["unreachable"] = json!(self.unreachable);
        }
        answer
    }
}

/// This node's `listed` items and every live peer's (the `<field>` array of its answer to `GET target`).
pub(crate) async fn gather(
    state: &ApiState,
    listed: Vec<Value>,
    target: &str,
    field: &str,
    peers: &Peers<'_>,
) -> Gathered {
    let mut gathered = Gathered {
        items: listed,
        ..Gathered::default()
    };
    if peers.local_only {
        return gathered;
    }
    let request = PeerRequest {
        method: reqwest::Method::GET,
        target,
        api_key: peers.key,
        body: None,
    };
    for peer in state
        .peers
        .ask_all(state.publisher.cluster.directory.as_ref(), &request)
        .await
    {
        let mut body = match &peer.answer {
            Ok((200, body)) => serde_json::from_slice::<Value>(body).ok(),
            _ => None,
        };
        let items = body
            .as_mut()
            .and_then(|v| v.get_mut(field).map(Value::take));
        match items {
            Some(Value::Array(items)) => {
                let total = body.as_ref().and_then(|v| v["total"].as_u64());
                gathered.peer_totals += total.unwrap_or(items.len() as u64);
                gathered.items.extend(items);
            }
            _ => {
                tracing::warn!(node = %peer.node, answer = ?peer.answer.as_ref().map(|(status, _)| status),
                    "a node did not answer a listing");
                gathered.unreachable.push(peer.node.to_string());
            }
        }
    }
    gathered
}

/// Passes a request about socket `id`, which is not on this node, to every peer: the answer of the one that
/// has it, else 404 when every peer answered that it does not, else 503.
async fn on_peer(
    state: &ApiState,
    local_only: bool,
    site: &Site,
    id: &str,
    request: PeerRequest<'_>,
) -> Result<(u16, Bytes), ApiError> {
    if local_only {
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
    disconnect_socket(&state, &site, &id, Peers::of(&headers)).await
}

/// Disconnects socket `id` of `site` here, or asks the peers to (`DELETE` on their v1 API, with `peers.key`).
pub(crate) async fn disconnect_socket(
    state: &ApiState,
    site: &Site,
    id: &str,
    peers: Peers<'_>,
) -> Result<StatusCode, ApiError> {
    if let Some(socket) = site.namespace.socket(id) {
        socket.disconnect();
        return Ok(StatusCode::NO_CONTENT);
    }
    let target = format!(
        "/api/v1/sites/{}/sockets/{}",
        escape(&site.config.name),
        escape(id)
    );
    let request = PeerRequest {
        method: reqwest::Method::DELETE,
        target: &target,
        api_key: peers.key,
        body: None,
    };
    let (status, _) = on_peer(state, peers.local_only, site, id, request).await?;
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
    let site = authorized(&state, &headers, &site)?;
    let bytes = read_body(body, &headers, state.max_publish_bytes).await?;
    change_rooms(&state, &site, &id, bytes, Peers::of(&headers)).await
}

/// Applies a `{join, leave}` body to socket `id` of `site` here, or asks the peers to (their v1 API, with
/// `peers.key`); answers the socket's rooms.
pub(crate) async fn change_rooms(
    state: &ApiState,
    site: &Site,
    id: &str,
    bytes: Bytes,
    peers: Peers<'_>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
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
    let Some(socket) = site.namespace.socket(id) else {
        let target = format!(
            "/api/v1/sites/{}/sockets/{}/rooms",
            escape(&site.config.name),
            escape(id)
        );
        let forwarded = PeerRequest {
            method: reqwest::Method::POST,
            target: &target,
            api_key: peers.key,
            body: Some(bytes),
        };
        let (status, body) = on_peer(state, peers.local_only, site, id, forwarded).await?;
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
    let (room, devices) = devices_of(&site, &user).await?;
    let listed: Vec<Value> = devices.iter().map(describe_device).collect();
    Ok(Json(json!({ "user": room, "devices": listed })))
}

/// The mailbox service of `site`, or why it has none.
pub(crate) fn mailbox_of(site: &Site) -> Result<&Arc<crate::mailbox::Mailbox>, ApiError> {
    site.mailbox.as_ref().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "site '{}' keeps no mailboxes: it needs a user_room_prefix and a device_ttl_secs above 0",
            site.config.name
        ))
    })
}

/// `user`'s room on `site` (the user room itself, or the id after the prefix) and its unexpired devices.
pub(crate) async fn devices_of(
    site: &Site,
    user: &str,
) -> Result<(String, Vec<DeviceStatus>), ApiError> {
    let mailbox = mailbox_of(site)?;
    let room = match site.user_room(user) {
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
    Ok((room, devices))
}

/// A device as the API shows it: `{deviceId, connected, pending, bytes, overflowed, expiresAtMs}`.
pub(crate) fn describe_device(device: &DeviceStatus) -> Value {
    json!({
        "deviceId": device.device,
        "connected": device.connected,
        "pending": device.pending,
        "bytes": device.bytes,
        "overflowed": device.overflowed,
        "expiresAtMs": device.expires_at_ms,
    })
}
