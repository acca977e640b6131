//! The HTTP API backends publish through: crossroads' `/send` and herald's `/api/v1`, its OpenAPI document,
//! and the health endpoints. `router(state)` builds it; tests drive it in-process.

mod error;
mod extract;
pub(crate) mod retained;
mod send;
mod status;
pub(crate) mod v1;

use axum::http::{header, HeaderMap};
use axum::routing::{delete, get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;

pub use crate::publish::PublishRequest;
pub use error::{human_size, ApiError};
pub(crate) use extract::{ApiPath, ApiQuery};

use crate::publish::Publisher;
use crate::sites::Sites;

/// The OpenAPI 3.1 document of this API, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the API handlers share; cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub sites: Sites,
    /// The publish pipeline every publish route goes through.
    pub publisher: Publisher,
    /// Largest request body, in bytes.
    pub max_publish_bytes: usize,
    /// The broker bridges' states, for `/api/v1/status`.
    pub bridges: crate::bridges::status::Statuses,
    /// `limits.publishes_per_key_per_sec`, when set.
    /// Asks the other nodes about their sockets.
    pub peers: crate::cluster::peers::Peers,
    pub publish_rate: Option<std::sync::Arc<crate::rate::PublishRate>>,
}

impl ApiState {
    /// Charges `publishes` (a batch's messages, else 1) to the budget of `api_key`, which authenticated for
    /// `site`; refused over `limits.publishes_per_key_per_sec`.
    pub(crate) fn charge(
        &self,
        api_key: &str,
        site: &str,
        publishes: usize,
    ) -> Result<(), ApiError> {
        match &self.publish_rate {
            Some(rate) => Ok(rate.charge(api_key, site, publishes)?),
            None => Ok(()),
        }
    }
}

/// The publish and admin routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/send", post(send::send))
        .route("/healthcheck", get(|| async { "ok" }))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/status", get(status::status))
        .route("/api/v1/sites/{site}/publish", post(v1::publish))
        .route("/api/v1/sites/{site}/batch", post(v1::batch))
        .route("/api/v1/sites/{site}/sockets", get(v1::list_sockets))
        .route("/api/v1/sites/{site}/sockets/{id}", delete(v1::disconnect))
        .route("/api/v1/sites/{site}/sockets/{id}/rooms", post(v1::rooms))
        .route(
            "/api/v1/sites/{site}/rooms/{room}/retained",
            get(retained::list).delete(retained::clear),
        )
        .route(
            "/api/v1/sites/{site}/users/{user}/devices",
            get(v1::user_devices),
        )
        .with_state(state)
}

/// Reads a request body of at most `limit` bytes; a larger one is refused with its size and the limit.
pub(crate) async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let too_large = |size: String| ApiError::PayloadTooLarge {
        size,
        limit: human_size(limit),
    };
    if let Some(length) = declared.filter(|&l| l > limit) {
        return Err(too_large(human_size(length)));
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(format!("over {}", human_size(limit))))
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}
