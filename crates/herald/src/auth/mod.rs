//! Client authentication, per site: who a connecting client is and which rooms it may be in. The gateway asks;
//! the site's rule answers with an [`Identity`] or an [`AuthError`] whose message the client sees.

pub mod jwt;
mod pool;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::tls::Trust;

/// The webhook calls in flight of an [`Authenticator::new`]: `limits.max_concurrent_auth`'s default.
const DEFAULT_MAX_IN_FLIGHT: usize = 64;

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

/// A site's auth rule, ready to answer: URLs parsed, keys loaded, the JWKS cache in place. Cloning is cheap (an
/// `Arc`), so every connect can hold one without copying keys.
#[derive(Debug, Clone)]
pub struct Authenticator {
    rule: Arc<Rule>,
}

#[derive(Debug)]
enum Rule {
    Public,
    /// Boxed, as the JWT rule: the webhook holds its URL parts and its connection pool.
    Webhook(Box<webhook::Webhook>),
    /// Boxed: the JWT rule (keys, validation, JWKS cache) is much larger than the others.
    Jwt(Box<jwt::JwtVerifier>),
}

impl Authenticator {
    /// Checks the config and prepares the rule. `http` is shared by all sites so webhook and JWKS calls reuse
    /// connections. Bad URLs, keys or algorithms are [`AuthError::Config`], reported when the config loads rather
    /// than at the first connect.
    pub fn new(config: &AuthConfig, http: reqwest::Client) -> Result<Authenticator, AuthError> {
        Authenticator::for_site(config, http, &Trust::system(), DEFAULT_MAX_IN_FLIGHT)
    }

    /// [`Authenticator::new`] for a site: a webhook is called at most `max_in_flight` times at once (the site's
    /// `limits.max_concurrent_auth`), over as many keep-alive connections at most, verified against `trust`.
    pub fn for_site(
        config: &AuthConfig,
        http: reqwest::Client,
        trust: &Trust,
        max_in_flight: usize,
    ) -> Result<Authenticator, AuthError> {
        let rule = match config {
            AuthConfig::Public => Rule::Public,
            AuthConfig::Webhook(webhook) => Rule::Webhook(Box::new(webhook::Webhook::new(
                webhook,
                trust,
                max_in_flight,
            )?)),
            AuthConfig::Jwt(jwt) => Rule::Jwt(Box::new(jwt::JwtVerifier::new(jwt, http)?)),
        };
        Ok(Authenticator {
            rule: Arc::new(rule),
        })
    }

    /// Who the client is. A public site answers an empty identity: the gateway adds the public room itself.
    pub async fn authenticate(&self, request: &AuthRequest) -> Result<Identity, AuthError> {
        match &*self.rule {
            Rule::Public => Ok(Identity::default()),
            Rule::Webhook(webhook) => webhook.authenticate(request).await,
            Rule::Jwt(jwt) => jwt.authenticate(request).await,
        }
    }
}

/// crossroads' user-room rule, for sites with a user-room prefix: the answer must hold a room that starts with
/// `prefix` and names someone after it, or the client is refused with [`AuthError::NoUserRoom`]. An empty prefix
/// means the site has no such rule. When the answer named no user, the user is [`user_room_user`].
pub fn require_user_room(identity: &Identity, prefix: &str) -> Result<(), AuthError> {
    if prefix.is_empty() || user_room_user(identity, prefix).is_some() {
        Ok(())
    } else {
        Err(AuthError::NoUserRoom)
    }
}

/// The user named by the first user room: `user_42` with prefix `user_` is user `42`. The bare prefix names no
/// one.
pub fn user_room_user<'a>(identity: &'a Identity, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return None;
    }
    identity
        .rooms
        .iter()
        .filter_map(|room| room.strip_prefix(prefix))
        .find(|user| !user.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn identity(user: Option<&str>, rooms: &[&str]) -> Identity {
        Identity {
            user: user.map(str::to_owned),
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn auth_user_room() {
        let check = |id: Identity, prefix: &str| {
            require_user_room(&id, prefix).map(|()| user_room_user(&id, prefix).map(str::to_owned))
        };
        assert_eq!(
            check(identity(None, &["news", "user_42"]), "user_"),
            Ok(Some("42".into()))
        );
        assert_eq!(
            check(identity(None, &["user_1", "user_2"]), "user_"),
            Ok(Some("1".into()))
        );
        // An explicit user does not excuse a missing user room.
        assert_eq!(
            check(identity(Some("ann"), &["news"]), "user_"),
            Err(AuthError::NoUserRoom)
        );
        assert_eq!(
            check(identity(None, &["news"]), "user_"),
            Err(AuthError::NoUserRoom)
        );
        // The bare prefix names no user; a later room may.
        assert_eq!(
            check(identity(None, &["user_"]), "user_"),
            Err(AuthError::NoUserRoom)
        );
        assert_eq!(
            check(identity(None, &["user_", "user_7"]), "user_"),
            Ok(Some("7".into()))
        );
        assert_eq!(
            check(identity(None, &[]), "user_"),
            Err(AuthError::NoUserRoom)
        );
        // No prefix: no rule, and no user from rooms.
        assert_eq!(check(identity(None, &["user_1"]), ""), Ok(None));
    }

    #[tokio::test]
    async fn auth_public_needs_nothing() {
        let auth = Authenticator::new(&AuthConfig::Public, reqwest::Client::new()).unwrap();
        let anyone = auth.authenticate(&AuthRequest::default()).await;
        assert_eq!(anyone, Ok(Identity::default()));
    }

    #[test]
    fn auth_bad_config_is_refused_at_load() {
        let config = AuthConfig::Jwt(JwtConfig {
            algorithm: "none".into(),
            secret: None,
            public_key_pem: None,
            jwks_url: None,
            jwks_cache_secs: 300,
            issuer: None,
            audience: None,
        });
        assert!(matches!(
            Authenticator::new(&config, reqwest::Client::new()),
            Err(AuthError::Config(_))
        ));
    }
}
