//! `ApiError`: every way a publish or admin request fails, and its one mapping to an HTTP answer. 4xx bodies
//! say exactly what was wrong; 5xx bodies hide internals.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Missing query param 'site' or 'apiKey'.")]
    MissingSiteOrKey,
    #[error("ApiKey invalid.")]
    InvalidLegacyKey,
    #[error("missing API key: send 'Authorization: Bearer <key>'")]
    MissingKey,
    #[error("invalid API key for site '{0}'")]
    InvalidKey(String),
    #[error("unknown socket '{0}'")]
    UnknownSocket(String),
    #[error("payload is {size}, limit is {limit}")]
    PayloadTooLarge { size: String, limit: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("internal error")]
    Internal(String),
    /// The mailbox store failed: nothing was promised durable, the publisher should retry.
    #[error("the mailbox store is unavailable: {reason}; retry")]
    StoreUnavailable {
        /// The store's own error, logged, never sent.
        detail: String,
        /// Why, in words the publisher may see (`StoreError::public_reason`).
        reason: &'static str,
    },
    /// The socket asked about is not on this node, and some other nodes did not answer.
    /// The site keeps as much retained state as its limits allow; clear some rooms or raise the limit.
    #[error("{0}")]
    RetainedFull(String),
    /// Over `limits.publishes_per_key_per_sec`: answered 429 with `Retry-After`.
    #[error(
        "rate limited: this API key may publish {per_sec} times a second (bursts of {burst}); retry in \
         {retry_after} s"
    )]
    RateLimited {
        per_sec: u32,
        burst: u32,
        retry_after: u64,
    },
    /// A batch of more messages than the key's burst, which no wait lets through.
    #[error(
        "a batch of {publishes} messages is over this API key's burst of {burst} publishes; send smaller batches"
    )]
    BatchOverBurst { publishes: u32, burst: u32 },
    /// No admin token, or a wrong one (`/api/v1/admin`).
    #[error(
        "the admin token is missing or wrong: send 'Authorization: Bearer <server.admin_token>', or log in at /admin"
    )]
    AdminUnauthorized,
    /// Too many wrong admin tokens are being answered at once.
    #[error("too many wrong admin tokens at once; retry in a second")]
    AdminSlowDown,
    /// A cookie-authenticated change asked from another origin.
    #[error("the admin API takes changes from its own origin only")]
    CrossOrigin,
    /// The admin API knows every site, so it names the missing one (the v1 API answers 401 instead).
    #[error("unknown site '{0}'")]
    UnknownSite(String),
    /// Something the node has a fixed number of (tails) is all in use.
    #[error("{0}")]
    Busy(String),
    #[error("the socket is not on this node and {0} other node(s) did not answer; retry")]
    NodesUnavailable(usize),
    /// The cluster bus failed: the publish may have reached some nodes and not others; retry.
    #[error("{reason}; retry")]
    BusUnavailable {
        /// The bus's own error, logged, never sent.
        detail: String,
        /// Why, in words the publisher may see (`BusError::public_reason`).
        reason: &'static str,
    },
}

impl From<crate::publish::PublishError> for ApiError {
    fn from(error: crate::publish::PublishError) -> Self {
        use crate::publish::PublishError;
        match error {
            PublishError::BadRequest(message) => ApiError::BadRequest(message),
            PublishError::Store(e) => ApiError::store(e),
            PublishError::Bus(e) => ApiError::BusUnavailable {
                reason: e.public_reason(),
                detail: e.to_string(),
            },
            PublishError::Retained(e) => ApiError::retained(e),
        }
    }
}

impl From<crate::rate::PublishRefused> for ApiError {
    fn from(refused: crate::rate::PublishRefused) -> Self {
        use crate::rate::PublishRefused;
        match refused {
            PublishRefused::Wait { retry_after, rate } => ApiError::RateLimited {
                per_sec: rate.per_sec.get(),
                burst: rate.burst.get(),
                retry_after: retry_after.secs(),
            },
            PublishRefused::OverBurst { publishes, burst } => {
                ApiError::BatchOverBurst { publishes, burst }
            }
        }
    }
}

impl ApiError {
    /// A mailbox store failure: a name the store cannot hold is the request's fault (400), anything else is the
    /// store's (503, retry).
    pub(crate) fn retained(error: crate::retained::RetainedError) -> ApiError {
        match error {
            full @ crate::retained::RetainedError::Full { .. } => {
                ApiError::RetainedFull(full.to_string())
            }
            crate::retained::RetainedError::Store(e) => ApiError::store(e),
        }
    }

    pub(crate) fn store(error: crate::mailbox::StoreError) -> ApiError {
        match error {
            crate::mailbox::StoreError::BadName(_) => ApiError::BadRequest(error.to_string()),
            other => ApiError::StoreUnavailable {
                reason: other.public_reason(),
                detail: other.to_string(),
            },
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingSiteOrKey
            | ApiError::BadRequest(_)
            | ApiError::BatchOverBurst { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidLegacyKey
            | ApiError::MissingKey
            | ApiError::InvalidKey(_)
            | ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::AdminSlowDown | ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::CrossOrigin => StatusCode::FORBIDDEN,
            ApiError::UnknownSocket(_) | ApiError::UnknownSite(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RetainedFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::StoreUnavailable { .. }
            | ApiError::BusUnavailable { .. }
            | ApiError::NodesUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail)
        | ApiError::StoreUnavailable { detail, .. }
        | ApiError::BusUnavailable { detail, .. } = &self
        {
            tracing::error!(detail = %detail, "publish API error");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            ApiError::AdminUnauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::AdminSlowDown | ApiError::Busy(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A byte count as people read it: `2.1 MB`, `512 KB`, `300 bytes`.
pub fn human_size(bytes: usize) -> String {
    let units = [
        (1_000_000_000.0, "GB"),
        (1_000_000.0, "MB"),
        (1_000.0, "KB"),
    ];
    for (scale, unit) in units {
        let value = bytes as f64 / scale;
        if value >= 1.0 {
            let text = format!("{value:.1}");
            return format!("{} {unit}", text.trim_end_matches(".0"));
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_issue_says() {
        assert_eq!(human_size(2_100_000), "2.1 MB");
        assert_eq!(human_size(1_000_000), "1 MB");
        assert_eq!(human_size(1_500), "1.5 KB");
        assert_eq!(human_size(300), "300 bytes");
    }

    #[test]
    fn a_name_the_store_cannot_hold_is_the_requests_fault() {
        use crate::mailbox::StoreError;
        let bad = ApiError::store(StoreError::BadName("a\u{7}".into()));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let down = ApiError::store(StoreError::Redis("connection refused".into()));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            down.to_string(),
            "the mailbox store is unavailable: Redis failed; retry"
        );
        let full = ApiError::store(StoreError::DiskFull);
        assert_eq!(
            full.to_string(),
            "the mailbox store is unavailable: the disk is full; retry"
        );
    }
}
