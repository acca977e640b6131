//! The admin console: the page at `/admin` and its JSON API under `/api/v1/admin`, for the holder of
//! `server.admin_token`. Without a token the gateway mounts neither, so both answer 404.
//!
//! Every route takes [`AdminAuth`]; a new one is a line in [`router`] and a handler with `_: AdminAuth` as its
//! first argument.

pub mod api;
pub mod auth;
mod page;
pub mod samples;
mod tail;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;

pub use auth::{AdminAuth, Guard};
pub use samples::Samples;

use crate::api::{ApiError, ApiState};
use crate::secret::Secret;
use crate::sites::{Site, Sites};

/// The console's parts that live as long as the gateway: the token's guard and the connection samples.
#[derive(Debug, Clone)]
pub struct Admin {
    pub guard: Arc<Guard>,
    pub samples: Arc<Samples>,
    /// When this process started, Unix milliseconds.
    pub started_at_ms: u64,
}

impl Admin {
    /// The console for `token`, sampling `sites` from now on.
    pub fn start(token: Secret, sites: Sites) -> Admin {
        Admin {
            guard: Arc::new(Guard::new(token)),
            samples: Samples::start(sites),
            started_at_ms: crate::mailbox::store::now_ms(),
        }
    }
}

/// What the console's handlers share; cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub guard: Arc<Guard>,
    /// The v1 API's state: the sites, the publish pipeline, the bridges.
    pub api: ApiState,
    pub samples: Arc<Samples>,
    /// Time between an idle tail's keep-alive comments (below the idle timeout).
    pub keep_alive: Duration,
    pub started_at_ms: u64,
    /// The gateway, for `reload`.
    pub gateway: crate::gateway::Gateway,
}

impl FromRef<AdminState> for Arc<Guard> {
    fn from_ref(state: &AdminState) -> Self {
        Arc::clone(&state.guard)
    }
}

/// The page, its files, login and logout, and the admin API.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin", get(page::console))
        .route("/admin/", get(page::console))
        .route("/admin/assets/{name}", get(page::asset))
        .route("/admin/login", post(page::login))
        .route("/admin/logout", post(page::logout))
        .route("/api/v1/admin/overview", get(api::overview))
        .route(
            "/api/v1/admin/sites/{site}/connections",
            get(api::connections),
        )
        .route("/api/v1/admin/sites/{site}/sockets", get(api::sockets))
        .route(
            "/api/v1/admin/sites/{site}/sockets/{id}",
            get(api::socket).delete(api::disconnect),
        )
        .route(
            "/api/v1/admin/sites/{site}/sockets/{id}/rooms",
            post(api::socket_rooms),
        )
        .route("/api/v1/admin/sites/{site}/rooms", get(api::rooms))
        .route(
            "/api/v1/admin/sites/{site}/rooms/{room}/retained",
            get(api::retained),
        )
        .route(
            "/api/v1/admin/sites/{site}/users/{user}/devices",
            get(api::user_devices),
        )
        .route("/api/v1/admin/sites/{site}/publish", post(api::publish))
        .route("/api/v1/admin/sites/{site}/tail", get(tail::tail))
        .route("/api/v1/admin/reload", post(api::reload))
        .layer(axum::middleware::map_response(page::secured))
        .with_state(state)
}

/// The site named `name`; the admin knows every site, so a missing one is 404 by name.
pub(crate) fn site_named(state: &AdminState, name: &str) -> Result<Arc<Site>, ApiError> {
    state
        .api
        .sites
        .get(name)
        .ok_or_else(|| ApiError::UnknownSite(name.to_string()))
}
