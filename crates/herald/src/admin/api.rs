//! The console's JSON API under `/api/v1/admin`: what it shows (overview, connection samples, sockets, rooms
//! and what they retain, a user's devices and their pending entries) and what it does (publish, disconnect,
//! join and leave). The actions are the v1 API's own operations (`api/v1.rs`) and the one publish pipeline,
//! counted as `admin`.
//!
//! Listings cover the cluster: a node asks its peers' admin API with the admin token and `x-herald-local`, so
//! the nodes must share the token; disconnect, join and leave reach a peer's v1 API with the site's key.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{site_named, AdminAuth, AdminState};
use crate::api::v1::{self, Peers};
use crate::api::{read_body, ApiError, ApiPath, ApiQuery, PublishRequest};
use crate::cluster::peers::escape;
use crate::mailbox::DeviceKey;
use crate::metrics::Source;
use crate::sites::{describe_socket, ClientInfo, Site};
use crate::socketio::Socket;

/// Most sockets or rooms a listing returns (the busiest rooms, the newest sockets); `total` says how many
/// there are.
pub const MAX_LISTED: usize = 500;
/// Pending entries shown per device, and the payload bytes they may take together.
pub const PENDING_SHOWN: usize = 20;
const PENDING_BYTES: usize = 256 * 1024;

/// Every site at a glance, the cluster's nodes and the bridges.
pub async fn overview(_: AdminAuth, State(state): State<AdminState>) -> Json<Value> {
    let mut sites: Vec<Arc<Site>> = state.api.sites.all();
    sites.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    let sites: Vec<Value> = sites
        .iter()
        .map(|site| {
            let now = super::samples::measure(site);
            json!({
                "name": site.config.name,
                "sockets": now.connections.iter().sum::<u32>(),
                "connections": now.connections,
                "publishes": now.publishes,
                "deliveries": now.deliveries,
                "mailbox": site.mailbox.is_some(),
                "recovery": site.recovery.is_some(),
                "publicChannel": site.config.public_channel,
                "userRoomPrefix": site.config.user_room_prefix,
            })
        })
        .collect();
    let cluster = &state.api.publisher.cluster;
    let mut nodes = vec![json!({"id": &*cluster.node, "url": cluster.url, "self": true})];
    nodes.extend(
        cluster
            .directory
            .peers()
            .into_iter()
            .map(|(id, url)| json!({"id": &*id, "url": url, "self": false})),
    );
    let bridges: Vec<Value> = state
        .api
        .bridges
        .all()
        .iter()
        .map(|b| b.describe())
        .collect();
    Json(json!({
        "node": &*cluster.node,
        "version": env!("CARGO_PKG_VERSION"),
        "startedAt": state.started_at_ms,
        "transports": crate::metrics::TRANSPORTS.map(|t| t.as_str()),
        "tails": state.api.publisher.tap.open_tails(),
        "sites": sites,
        "nodes": nodes,
        "bridges": bridges,
    }))
}

/// The site's samples of the last hour (`samples.rs`).
pub async fn connections(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath(site): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let site = site_named(&state, &site)?;
    Ok(Json(state.samples.of(&site)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Only the sockets in this room.
    room: Option<String>,
    /// Only the sockets (or rooms) whose id, user or device (or name) contains this.
    q: Option<String>,
    limit: Option<usize>,
}

impl ListQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(MAX_LISTED).clamp(1, MAX_LISTED)
    }

    fn matches(&self, texts: &[Option<&str>]) -> bool {
        let Some(q) = self.q.as_deref().filter(|q| !q.is_empty()) else {
            return true;
        };
        let q = q.to_lowercase();
        texts
            .iter()
            .flatten()
            .any(|t| t.to_lowercase().contains(&q))
    }

    /// The query string to pass on to peers.
    fn encoded(&self) -> String {
        let mut parts = vec![format!("limit={}", self.limit())];
        if let Some(room) = &self.room {
            parts.push(format!("room={}", escape(room)));
        }
        if let Some(q) = &self.q {
            parts.push(format!("q={}", escape(q)));
        }
        parts.join("&")
    }
}

/// What a peer's admin API is asked with: the admin token, and whether this request is itself a peer's.
fn admin_peers<'a>(state: &'a AdminState, headers: &HeaderMap) -> Peers<'a> {
    Peers {
        key: state.guard.token(),
        local_only: v1::local_only(headers),
    }
}

/// What a peer's v1 API is asked with for a socket action: the site's key.
fn site_peers<'a>(site: &'a Site, headers: &HeaderMap) -> Peers<'a> {
    Peers {
        key: site
            .config
            .api_keys
            .first()
            .map(|k| k.expose())
            .unwrap_or_default(),
        local_only: v1::local_only(headers),
    }
}

/// A socket with what the console shows of it: the v1 listing's fields (`id`, `user`, `deviceId`, `rooms`),
/// its node, transport, Engine.IO revision, when its connection opened, whether it may recover, its user room.
pub fn detailed(socket: &Socket, node: &str) -> Value {
    let mut described = describe_socket(socket);
    let session = socket.session();
    let opened_ms = session.opened_at().elapsed().as_millis() as u64;
    let info = socket.data::<ClientInfo>();
    described["node"] = json!(node);
    described["transport"] = json!(session.transport().as_str());
    described["eio"] = json!(match session.version() {
        herald_protocol::engineio::Version::V3 => 3,
        herald_protocol::engineio::Version::V4 => 4,
    });
    described["connectedAt"] = json!(crate::mailbox::store::now_ms().saturating_sub(opened_ms));
    described["recovers"] = json!(socket.pid().is_some());
    described["userRoom"] = json!(info.and_then(|i| i.user_room.as_deref()));
    described
}

/// The site's sockets on every node, newest first, with their details; `?room=`, `?q=` and `?limit=` narrow
/// it, and `total` counts every match. Each node sorts and cuts its own before it describes them, so a
/// listing costs `limit` descriptions per node however many sockets there are.
pub async fn sockets(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath(site): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = site_named(&state, &site)?;
    let sockets = match &query.room {
        Some(room) => site.namespace.room_sockets(room),
        None => site.namespace.sockets(),
    };
    let mut matching: Vec<Arc<Socket>> = sockets
        .into_iter()
        .filter(|s| {
            let info = s.data::<ClientInfo>();
            query.matches(&[
                Some(s.id()),
                info.and_then(|i| i.user.as_deref()),
                info.and_then(|i| i.device_id.as_deref()),
            ])
        })
        .collect();
    let here = matching.len() as u64;
    let limit = query.limit();
    matching.sort_by_key(|s| std::cmp::Reverse(s.session().opened_at()));
    matching.truncate(limit);
    let node = &state.api.publisher.cluster.node;
    let listed = matching.iter().map(|s| detailed(s, node)).collect();
    let target = format!(
        "/api/v1/admin/sites/{}/sockets?{}",
        escape(&site.config.name),
        query.encoded()
    );
    let peers = admin_peers(&state, &headers);
    let mut gathered = v1::gather(&state.api, listed, &target, "sockets", &peers).await;
    gathered.items.sort_by(|a, b| {
        let newest = b["connectedAt"].as_u64().cmp(&a["connectedAt"].as_u64());
        newest.then_with(|| a["id"].as_str().cmp(&b["id"].as_str()))
    });
    gathered.items.truncate(limit);
    let total = here + gathered.peer_totals;
    let mut answer = gathered.answer("sockets");
    answer["total"] = json!(total);
    Ok(Json(answer))
}

/// One socket's details, from whichever node holds it.
pub async fn socket(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath((site, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = site_named(&state, &site)?;
    if let Some(socket) = site.namespace.socket(&id) {
        return Ok(Json(detailed(&socket, &state.api.publisher.cluster.node)));
    }
    let target = format!(
        "/api/v1/admin/sites/{}/sockets/{}",
        escape(&site.config.name),
        escape(&id)
    );
    let peers = admin_peers(&state, &headers);
    let found = ask_for_socket(&state, &target, &peers).await;
    found.map(Json).ok_or(ApiError::UnknownSocket(id))
}

/// The answer of the peer that holds the socket, if one does.
async fn ask_for_socket(state: &AdminState, target: &str, peers: &Peers<'_>) -> Option<Value> {
    if peers.local_only {
        return None;
    }
    let request = crate::cluster::peers::PeerRequest {
        method: reqwest::Method::GET,
        target,
        api_key: peers.key,
        body: None,
    };
    let directory = state.api.publisher.cluster.directory.as_ref();
    state
        .api
        .peers
        .ask_all(directory, &request)
        .await
        .into_iter()
        .find_map(|peer| match peer.answer {
            Ok((200, body)) => serde_json::from_slice(&body).ok(),
            _ => None,
        })
}

/// The site's rooms with their member counts on every node, the largest first; `?q=` and `?limit=` narrow
/// it. Each node sends its `limit` largest, so a room that is small on every node but large in all may be
/// missed; `total` counts the rooms each node has (a room on two nodes counts twice).
pub async fn rooms(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath(site): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = site_named(&state, &site)?;
    let mut sizes: Vec<(String, usize)> = site
        .namespace
        .room_sizes()
        .into_iter()
        .filter(|(room, _)| query.matches(&[Some(room)]))
        .collect();
    let here = sizes.len() as u64;
    let limit = query.limit();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sizes.truncate(limit);
    let listed = sizes
        .into_iter()
        .map(|(room, members)| json!({"room": room, "members": members}))
        .collect();
    let target = format!(
        "/api/v1/admin/sites/{}/rooms?{}",
        escape(&site.config.name),
        query.encoded()
    );
    let peers = admin_peers(&state, &headers);
    let mut gathered = v1::gather(&state.api, listed, &target, "rooms", &peers).await;
    let mut merged = merge_rooms(std::mem::take(&mut gathered.items));
    merged.truncate(limit);
    gathered.items = merged;
    let total = here + gathered.peer_totals;
    let mut answer = gathered.answer("rooms");
    answer["total"] = json!(total);
    Ok(Json(answer))
}

/// Rooms listed by several nodes, their members added up; the largest first, then by name.
fn merge_rooms(listed: Vec<Value>) -> Vec<Value> {
    let mut sizes: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for room in listed {
        if let (Some(name), Some(members)) = (room["room"].as_str(), room["members"].as_u64()) {
            *sizes.entry(name.to_string()).or_default() += members;
        }
    }
    let mut merged: Vec<(String, u64)> = sizes.into_iter().collect();
    merged.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    merged
        .into_iter()
        .map(|(room, members)| json!({"room": room, "members": members}))
        .collect()
}

/// What a room retains (the v1 listing).
pub async fn retained(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath((site, room)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let site = site_named(&state, &site)?;
    crate::api::retained::retained_in(&site, &room)
        .await
        .map(Json)
}

/// A user's devices (the v1 listing) and the oldest entries each has pending.
pub async fn user_devices(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath((site, user)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let site = site_named(&state, &site)?;
    let (room, devices) = v1::devices_of(&site, &user).await?;
    let mailbox = v1::mailbox_of(&site)?;
    let mut listed = Vec::with_capacity(devices.len());
    for device in &devices {
        let key = DeviceKey::new(&site.config.name, &room, &device.device);
        let page = mailbox
            .pending(&key, PENDING_SHOWN, PENDING_BYTES)
            .await
            .map_err(ApiError::store)?;
        let mut described = v1::describe_device(device);
        described["entries"] = page.entries.iter().map(describe_entry).collect();
        listed.push(described);
    }
    Ok(Json(json!({ "user": room, "devices": listed })))
}

/// A mailbox entry: `{offset, event, args, resync}`; its payload is `[event, ...args]`.
fn describe_entry(entry: &crate::mailbox::store::Entry) -> Value {
    let args = match serde_json::from_slice::<Vec<Value>>(&entry.payload) {
        Ok(mut array) if !array.is_empty() => Value::Array(array.split_off(1)),
        _ => Value::Null,
    };
    json!({
        "offset": entry.offset,
        "event": entry.event,
        "args": args,
        "resync": entry.resync,
    })
}

/// Publishes through the one pipeline, as source `admin`: the v1 publish body.
pub async fn publish(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath(site): ApiPath<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let site = site_named(&state, &site)?;
    let bytes = read_body(body, &headers, state.api.max_publish_bytes).await?;
    let request: PublishRequest = serde_json::from_slice(&bytes)
        .map_err(|e| e.to_string())
        .and_then(v1::from_object)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    let outcome = state
        .api
        .publisher
        .publish_from(Source::Admin, &site, &request, request.resync)
        .await?;
    Ok(Json(json!(outcome)))
}

/// Disconnects a socket, on whichever node holds it.
pub async fn disconnect(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath((site, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let site = site_named(&state, &site)?;
    v1::disconnect_socket(&state.api, &site, &id, site_peers(&site, &headers)).await
}

/// Joins and leaves rooms for a socket (`{join, leave}`), on whichever node holds it.
pub async fn socket_rooms(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath((site, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let site = site_named(&state, &site)?;
    let bytes = read_body(body, &headers, state.api.max_publish_bytes).await?;
    v1::change_rooms(&state.api, &site, &id, bytes, site_peers(&site, &headers)).await
}

/// `POST /api/v1/admin/reload`: reads the configuration again and applies it, as SIGHUP does. 200 with what
/// changed (`ReloadReport`), or 422 with the one-line reason, the running configuration kept.
pub async fn reload(_: AdminAuth, State(state): State<AdminState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match crate::lifecycle::reload(&state.gateway).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            tracing::error!(reason = %e, "reload refused; the running configuration goes on");
            let body = json!({ "error": e.to_string() });
            (axum::http::StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_of_several_nodes_add_up() {
        let merged = merge_rooms(vec![
            json!({"room": "a", "members": 1}),
            json!({"room": "b", "members": 3}),
            json!({"room": "a", "members": 4}),
            json!({"room": "c", "members": 3}),
        ]);
        assert_eq!(
            merged,
            vec![
                json!({"room": "a", "members": 5}),
                json!({"room": "b", "members": 3}),
                json!({"room": "c", "members": 3}),
            ]
        );
    }

    #[test]
    fn a_listing_query_passes_on_escaped() {
        let query = ListQuery {
            room: Some("a b".into()),
            q: Some("x&y".into()),
            limit: Some(10_000),
        };
        assert_eq!(query.encoded(), "limit=500&room=a%20b&q=x%26y");
        assert!(query.matches(&[None, Some("0X&YZ")]));
        assert!(!query.matches(&[Some("xy")]));
    }
}
