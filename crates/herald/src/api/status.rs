//! `GET /api/v1/status`: this node and the broker bridges of the sites the caller's API key publishes to.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::v1::bearer;
use super::ApiState;

/// `{"node", "bridges": [{bridge, site, state, last_error, published, rejected, retried}]}`, the bridges of the
/// sites that accept the key.
pub async fn status(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = bearer(&headers).ok_or(ApiError::MissingKey)?;
    let all = state.sites.all();
    let sites: Vec<&str> = all
        .iter()
        .filter(|site| site.accepts_key(key))
        .map(|site| site.config.name.as_str())
        .collect();
    if sites.is_empty() {
        return Err(ApiError::InvalidKey("any".into()));
    }
    let bridges: Vec<Value> = state
        .bridges
        .all()
        .iter()
        .filter(|b| sites.contains(&b.site.as_str()))
        .map(|b| b.describe())
        .collect();
    Ok(Json(json!({
        "node": &*state.publisher.cluster.node,
        "bridges": bridges,
    })))
}
