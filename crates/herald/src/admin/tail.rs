//! `GET /api/v1/admin/sites/{site}/tail[?room=R]`: the live tail, an event stream of the publishes to a site
//! or a room on this node (`publish/tap.rs`). It starts with `event: ready`; each publish is `event: publish`
//! with the record as data; `event: lagged` with `{"dropped": n}` says the viewer lost `n` records.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::Extensions;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;

use super::{site_named, AdminAuth, AdminState};
use crate::api::{ApiError, ApiPath, ApiQuery};
use crate::publish::tap::{Tail, Tailed};

#[derive(Debug, Deserialize)]
pub struct TailQuery {
    room: Option<String>,
}

pub async fn tail(
    _: AdminAuth,
    State(state): State<AdminState>,
    ApiPath(site): ApiPath<String>,
    ApiQuery(query): ApiQuery<TailQuery>,
    extensions: Extensions,
) -> Result<impl IntoResponse, ApiError> {
    let site = site_named(&state, &site)?;
    let room = query.room.as_deref().filter(|r| !r.is_empty());
    let tail = state
        .api
        .publisher
        .tap
        .open(&site.config.name, room)
        .map_err(|e| ApiError::Busy(e.to_string()))?;
    // A tail lasts as long as someone watches: it must not hold one of `max_http_connections` meanwhile
    // (`MAX_TAILS` bounds them instead).
    if let Some(slot) = extensions.get::<crate::server::ConnectionSlot>() {
        slot.release();
    }
    let ready = json!({"site": site.config.name, "room": room}).to_string();
    Ok(Sse::new(events(ready, tail)).keep_alive(KeepAlive::new().interval(state.keep_alive)))
}

/// `ready`, then the tail's records until it closes.
fn events(ready: String, tail: Tail) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = stream::once(async move { Ok(Event::default().event("ready").data(ready)) });
    let rest = stream::unfold(tail, |mut tail| async move {
        let event = match tail.next().await? {
            Tailed::Publish(record) => Event::default().event("publish").data(&*record),
            Tailed::Lagged(dropped) => Event::default()
                .event("lagged")
                .data(json!({ "dropped": dropped }).to_string()),
        };
        Some((Ok(event), tail))
    });
    futures_util::StreamExt::chain(first, rest)
}
