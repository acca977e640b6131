//! `Path` and `Query` extractors whose rejections are `ApiError`s, so a malformed URL (a path segment that is
//! not UTF-8 once decoded, a repeated query parameter) is answered with the API's JSON error body, as the
//! OpenAPI document says, instead of axum's plain-text one.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// An axum rejection as an `ApiError`: its 4xx become 400 with the same message, anything else is internal.
fn rejected(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
    let message = rejection.to_string();
    if rejection.into_response().status().is_client_error() {
        ApiError::BadRequest(message)
    } else {
        ApiError::Internal(message)
    }
}

/// `Path<T>` answering a rejection with `ApiError`.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(rejected)
    }
}

/// `Query<T>` answering a rejection with `ApiError`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(rejected)
    }
}
