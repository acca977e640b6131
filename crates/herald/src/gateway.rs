//! The gateway: every configured site becomes a socket.io namespace whose clients are let in by the site's auth
//! rule, into the rooms that rule names, and the publish API drives those namespaces. `build` wires it all from
//! a `Config`; `router` serves it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde_json::Value;

use crate::api::{self, ApiState};
use crate::auth::{self, AuthError, AuthRequest, Authenticator, Identity};
use crate::config::{Config, MailboxStoreKind, SiteConfig};
use crate::engine::{Engine, EngineConfig};
use crate::mailbox::embedded::EmbeddedStore;
use crate::mailbox::redis::RedisStore;
use crate::mailbox::store::valid_name;
use crate::mailbox::{
    DeviceKey, Mailbox, MailboxStore, Presence, PresenceTarget, PresenceUser, StoreError,
};
use crate::secret::Secret;
use crate::sites::{ClientInfo, RoomFilter, Site, Sites};
use crate::socketio::{
    Accepted, ConnectRequest, Decision, IncomingEvent, Namespace, NamespaceHandler, Refusal,
    Socket, SocketIo, SocketIoConfig,
};

/// A site's configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("site '{site}': {source}")]
    Auth { site: String, source: AuthError },
    #[error("cannot create the HTTP client for auth webhooks: {0}")]
    Http(String),
    #[error("cannot open the mailbox store: {0}")]
    Mailbox(#[from] StoreError),
}

/// The running gateway: its socket.io server, engine and sites.
#[derive(Clone)]
pub struct Gateway {
    pub io: SocketIo,
    pub engine: Engine<SocketIo>,
    pub sites: Sites,
    pub max_publish_bytes: usize,
    ready: Arc<AtomicBool>,
}

/// The page `/` serves: a live view of the demo site's public room, with a publish form.
const DEMO_PAGE: &str = include_str!("ui/demo.html");

/// Whether `site` keeps durable mailboxes: it knows its users (a user-room prefix) and keeps them (a TTL).
fn keeps_mailboxes(site: &SiteConfig) -> bool {
    site.user_room_prefix
        .as_deref()
        .is_some_and(|p| !p.is_empty())
        && site.device_ttl_secs > 0
}

/// Opens the configured mailbox store and starts the service, when some site keeps mailboxes.
async fn open_mailbox(config: &Config) -> Result<Option<Arc<Mailbox>>, GatewayError> {
    if !config.sites.iter().any(keeps_mailboxes) {
        return Ok(None);
    }
    let server = &config.server;
    let store: Arc<dyn MailboxStore> = match (server.mailbox_store(), &server.redis_url) {
        (MailboxStoreKind::Redis, Some(url)) => Arc::new(RedisStore::connect(url).await?),
        _ => Arc::new(EmbeddedStore::open(&server.data_dir.join("mailbox.redb"))?),
    };
    Ok(Some(Mailbox::start(store, server.mailbox.clone()).await?))
}

/// Builds the gateway for `config` (already validated), opening its mailbox store.
pub async fn build(config: &Config) -> Result<Gateway, GatewayError> {
    let io = SocketIo::new(SocketIoConfig::default());
    let http = reqwest::Client::builder()
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| GatewayError::Http(e.to_string()))?;
    let mailbox = open_mailbox(config).await?;
    let presence = Arc::new(Presence::new(
        http.clone(),
        Duration::from_millis(config.server.mailbox.presence_debounce_ms),
    ));
    let mut sites = Vec::with_capacity(config.sites.len());
    for site in &config.sites {
        let auth =
            Authenticator::new(&site.auth, http.clone()).map_err(|source| GatewayError::Auth {
                site: site.name.clone(),
                source,
            })?;
        let own_namespace = Arc::new(OnceLock::new());
        let site_mailbox = mailbox.clone().filter(|_| keeps_mailboxes(site));
        let handler = SiteHandler {
            site: Arc::new(site.clone()),
            auth,
            namespace: Arc::clone(&own_namespace),
            mailbox: site_mailbox.clone(),
            presence: presence_target(site).map(|t| (Arc::clone(&presence), t)),
        };
        let namespace = io.add_namespace(&format!("/{}", site.name), handler);
        // Weak: the namespace owns its handler, so a strong link back would be a cycle.
        let _ = own_namespace.set(Arc::downgrade(&namespace));
        sites.push(Site {
            config: site.clone(),
            namespace,
            mailbox: site_mailbox,
        });
    }
    let engine = Engine::new(engine_config(config), io.clone());
    Ok(Gateway {
        io,
        engine,
        sites: Sites::new(sites),
        max_publish_bytes: config.server.limits.max_publish_bytes,
        ready: Arc::new(AtomicBool::new(true)),
    })
}

fn engine_config(config: &Config) -> EngineConfig {
    let server = &config.server;
    EngineConfig {
        path: server.engine.path.clone(),
        ping_interval: Duration::from_millis(server.engine.ping_interval_ms),
        ping_timeout: Duration::from_millis(server.engine.ping_timeout_ms),
        max_payload: server.limits.max_payload_bytes,
        max_sessions: server.limits.max_connections,
        outbox_frames: server.limits.outbox_frames,
        allowed_origins: server.engine.allowed_origins.clone(),
        ..EngineConfig::default()
    }
}

impl Gateway {
    /// Every route: socket.io, the publish API, health and readiness, and the demo page.
    pub fn router(&self) -> axum::Router {
        let api = api::router(ApiState {
            sites: self.sites.clone(),
            max_publish_bytes: self.max_publish_bytes,
        });
        let ready = Arc::clone(&self.ready);
        let readiness = move || {
            let ready = ready.load(Ordering::Acquire);
            async move {
                if ready {
                    (axum::http::StatusCode::OK, "ready")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining")
                }
            }
        };
        self.engine
            .router()
            .merge(api)
            .route("/readyz", axum::routing::get(readiness))
            .route(
                "/",
                axum::routing::get(|| async { axum::response::Html(DEMO_PAGE) }),
            )
    }

    /// Closes every client's session with a close packet, so clients reconnect (to another node).
    pub fn close_all(&self) {
        for site in self.sites.iter() {
            for socket in site.namespace.sockets() {
                socket
                    .session()
                    .close(crate::engine::CloseReason::ServerClose);
            }
        }
    }

    /// Waits until every session has closed, or `grace` has passed.
    pub async fn drained(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.engine.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.engine.session_count();
        if left > 0 {
            tracing::warn!(
                sessions = left,
                "shutdown grace period over; dropping the remaining sessions"
            );
        }
    }

    /// Marks the gateway as draining: `/readyz` answers 503 so load balancers stop sending clients.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::Release);
    }
}

/// Where the site reports its users' comings and goings, if it does.
fn presence_target(site: &SiteConfig) -> Option<PresenceTarget> {
    let url = site.update_user_url.clone()?;
    let scheme = match &site.auth {
        auth::AuthConfig::Webhook(webhook) => webhook.scheme.clone(),
        _ => "Bearer".to_string(),
    };
    Some(PresenceTarget { url, scheme })
}

/// Lets clients into one site's namespace by the site's rule; clients never pick their own rooms.
struct SiteHandler {
    site: Arc<SiteConfig>,
    auth: Authenticator,
    /// The site's own namespace, for its connection count.
    namespace: Arc<OnceLock<Weak<Namespace>>>,
    mailbox: Option<Arc<Mailbox>>,
    presence: Option<(Arc<Presence>, PresenceTarget)>,
}

impl SiteHandler {
    fn connected(&self) -> usize {
        self.namespace
            .get()
            .and_then(Weak::upgrade)
            .map_or(0, |ns| ns.len())
    }

    /// The mailbox `socket` reads, when the site keeps them and the client is a user.
    fn device_key(&self, info: &ClientInfo) -> Option<DeviceKey> {
        self.mailbox.as_ref()?;
        Some(DeviceKey::new(
            &self.site.name,
            info.user_room.as_deref()?,
            info.device_id.as_deref().unwrap_or(""),
        ))
    }

    fn presence_user(&self, info: &ClientInfo) -> Option<PresenceUser> {
        let room = info.user_room.as_deref()?;
        let prefix = self.site.user_room_prefix.as_deref().unwrap_or_default();
        Some(PresenceUser {
            site: self.site.name.clone(),
            id: room.strip_prefix(prefix).unwrap_or(room).to_string(),
            token: info.token.clone(),
        })
    }
}

/// What a site lets an authenticated client have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admission {
    /// The identity's user, else the one its user room names.
    pub(crate) user: Option<String>,
    /// The user room (`<prefix><user>`), for a site with a user-room prefix.
    pub(crate) user_room: Option<String>,
    /// The identity's rooms, and the site's public channel.
    pub(crate) rooms: Vec<String>,
}

/// The site's rules over the identity its auth rule answered: the user room its prefix requires, room names a
/// store key can hold, and the public channel added.
pub(crate) fn admit(site: &SiteConfig, identity: Identity) -> Result<Admission, Refusal> {
    let mut user = identity.user.clone();
    let mut user_room = None;
    if let Some(prefix) = site.user_room_prefix.as_deref().filter(|p| !p.is_empty()) {
        auth::require_user_room(&identity, prefix).map_err(|e| Refusal(e.to_string()))?;
        let id = auth::user_room_user(&identity, prefix);
        user = user.or_else(|| id.map(str::to_string));
        user_room = id.map(|id| format!("{prefix}{id}"));
    }
    if let Some(bad) = identity.rooms.iter().find(|r| !valid_name(r)) {
        tracing::info!(site = %site.name, "refused a client: the auth answer named an invalid room");
        return Err(Refusal(format!(
            "the auth answer named an invalid room '{}'",
            bad.escape_debug()
        )));
    }
    let mut rooms = identity.rooms;
    if let Some(public) = site.public_channel.as_ref().filter(|p| !rooms.contains(p)) {
        rooms.push(public.clone());
    }
    Ok(Admission {
        user,
        user_room,
        rooms,
    })
}

/// A string from the auth payload, else from the handshake query.
fn credential(request: &ConnectRequest, key: &str) -> Option<String> {
    let from_auth = request
        .auth
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(Value::as_str);
    from_auth
        .or_else(|| request.query_param(key))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

impl NamespaceHandler for SiteHandler {
    fn authorize(&self, request: ConnectRequest) -> Decision {
        let site = Arc::clone(&self.site);
        if site
            .max_connections
            .is_some_and(|max| self.connected() >= max)
        {
            let message = format!("site '{}' is at its connection limit", site.name);
            return Decision::Now(Err(Refusal(message)));
        }
        let device_id = credential(&request, "deviceId");
        if device_id.as_deref().is_some_and(|d| !valid_name(d)) {
            let message = "deviceId must be at most 256 bytes, without control characters";
            return Decision::Now(Err(Refusal(message.into())));
        }
        let auth_request = AuthRequest {
            token: credential(&request, "token"),
            meta: request.query_param("meta").map(str::to_string),
            cookie: request.cookie.clone(),
        };
        let public_only = matches!(site.auth, auth::AuthConfig::Public)
            || (auth_request.token.is_none()
                && auth_request.cookie.is_none()
                && site.public_channel.is_some());
        if public_only {
            let rooms = site.public_channel.iter().cloned().collect();
            let data = ClientInfo {
                device_id,
                ..ClientInfo::default()
            };
            return Decision::Now(Ok(Accepted {
                rooms,
                data: Some(Box::new(data)),
            }));
        }
        let auth = self.auth.clone();
        Decision::Later(Box::pin(async move {
            let identity = auth.authenticate(&auth_request).await.map_err(|e| {
                tracing::info!(site = %site.name, reason = %e, "refused a client");
                Refusal(e.to_string())
            })?;
            let Admission {
                user,
                user_room,
                rooms,
            } = admit(&site, identity)?;
            Ok(Accepted {
                rooms,
                data: Some(Box::new(ClientInfo {
                    user,
                    device_id,
                    user_room,
                    token: auth_request.token.map(Secret::new),
                })),
            })
        }))
    }

    fn on_connect(&self, socket: &Arc<Socket>) {
        let Some(info) = socket.data::<ClientInfo>() else {
            return;
        };
        if let (Some(mailbox), Some(key)) = (&self.mailbox, self.device_key(info)) {
            let ttl = Duration::from_secs(self.site.device_ttl_secs);
            mailbox.attach(
                Arc::clone(socket),
                key,
                RoomFilter::for_site(&self.site),
                ttl,
            );
        }
        if let (Some((presence, target)), Some(user)) = (&self.presence, self.presence_user(info)) {
            presence.connected(target, user);
        }
    }

    fn on_disconnect(&self, socket: &Arc<Socket>, _reason: &'static str) {
        let Some(info) = socket.data::<ClientInfo>() else {
            return;
        };
        if let (Some(mailbox), Some(key)) = (&self.mailbox, self.device_key(info)) {
            mailbox.detach(&key, socket.id());
        }
        if let (Some((presence, target)), Some(user)) = (&self.presence, self.presence_user(info)) {
            presence.disconnected(target, user);
        }
    }

    fn on_event(&self, socket: &Arc<Socket>, event: IncomingEvent) {
        // Clients only listen: rooms come from the auth answer or the API, never from a client's request.
        tracing::debug!(socket = socket.id(), event = %event.name, "ignored a client event");
    }
}
