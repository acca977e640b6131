//! Client authentication, per site: who a connecting client is and which rooms it may be in. The gateway asks;
//! the site's rule answers with an [`Identity`] or an [`AuthError`] whose message the client sees.

pub mod jwt;
pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// How a site authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AuthConfig {
    /// No token: anyone may connect, into the site's public room only.
    #[default]
    Public,
    /// crossroads' rule: `GET url` with `Authorization: <scheme> <token>`; the answer lists the rooms.
    Webhook(WebhookConfig),
    /// A signed JWT: `sub` is the user, `rooms` the rooms, `exp` enforced.
    Jwt(JwtConfig),
}

/// The auth webhook of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// The `Authorization` scheme before the token. Default `Bearer`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Send the client's `Cookie` header instead of a token (the PHP-session pattern). Default false.
    #[serde(default)]
    pub forward_cookie: bool,
    /// Milliseconds the webhook may take. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl WebhookConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The JWT rule of a site: exactly one of `secret`, `public_key_pem`, `jwks_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `HS384`, `HS512` (with `secret`) or `RS256`…`RS512`, `PS256`…`PS512`, `ES256`, `ES384` (with a
    /// public key or JWKS). Tokens signed with any other algorithm are refused.
    pub algorithm: String,
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub public_key_pem: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Seconds a fetched JWKS is kept. Default 300.
    #[serde(default = "default_jwks_cache_secs")]
    pub jwks_cache_secs: u64,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
}

fn default_scheme() -> String {
    "Bearer".into()
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_jwks_cache_secs() -> u64 {
    300
}

/// What a connecting client presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthRequest {
    /// From the handshake query `token` or the auth payload's `token`.
    pub token: Option<String>,
    /// The `meta` query value, forwarded as `X-META` to webhooks.
    pub meta: Option<String>,
    /// The handshake's `Cookie` header, for webhooks with `forward_cookie`.
    pub cookie: Option<String>,
}

/// Who the client is, as the site's rule says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
    pub rooms: Vec<String>,
}

/// Why a client may not connect. The `Display` text is what the client gets in its `connect_error`, so it says
/// what was wrong without revealing secrets or internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    MissingToken,
    #[error("the token was refused")]
    Refused,
    #[error("authentication is unavailable")]
    Unavailable,
    #[error("authentication timed out")]
    TimedOut,
    #[error("authentication answered with something other than rooms")]
    BadAnswer,
    #[error("the token is invalid")]
    InvalidToken,
    #[error("the token has expired")]
    Expired,
    #[error("the token's algorithm is not the one this site accepts")]
    WrongAlgorithm,
    #[error("the answer holds no user room")]
    NoUserRoom,
    #[error("invalid auth configuration: {0}")]
    Config(String),
}
