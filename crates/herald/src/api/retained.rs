//! `/api/v1/sites/{site}/rooms/{room}/retained`: what a room retains (`GET`), and forgetting it (`DELETE`).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::ApiPath;
use super::v1::authorized;
use super::ApiState;
use crate::sites::Site;

/// `{"retained": [{"event", "args", "at"}]}`, by event name.
pub async fn list(
    State(state): State<ApiState>,
    ApiPath((site, room)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = authorized(&state, &headers, &site)?;
    retained_in(&site, &room).await.map(Json)
}

/// What `room` of `site` retains: `{"retained": [{"event", "args", "at"}]}`.
pub(crate) async fn retained_in(site: &Site, room: &str) -> Result<Value, ApiError> {
    let values = site.retained.list(room).await.map_err(ApiError::retained)?;
    let mut retained = Vec::with_capacity(values.len());
    for value in values {
        let args: Value = serde_json::from_str(&value.args)
            .map_err(|e| ApiError::Internal(format!("a retained value is corrupt: {e}")))?;
        retained.push(json!({ "event": value.event, "args": args, "at": value.at }));
    }
    Ok(json!({ "retained": retained }))
}

/// Forgets every value `room` retains: `{"cleared": n}`.
pub async fn clear(
    State(state): State<ApiState>,
    ApiPath((site, room)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let site = authorized(&state, &headers, &site)?;
    let cleared = site
        .retained
        .clear(&room)
        .await
        .map_err(ApiError::retained)?;
    Ok(Json(json!({ "cleared": cleared })))
}
