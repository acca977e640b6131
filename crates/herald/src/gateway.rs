//! The gateway: every configured site becomes a socket.io namespace whose clients are let in by the site's auth
//! rule, into the rooms that rule names, and the publish API drives those namespaces. `build` wires it all from
//! a `Config`; `router` serves it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use herald_protocol::engineio::Version;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{self, ApiState};
use crate::auth::{self, AuthError, AuthRequest, Authenticator, Identity};
use crate::cluster::forward::{ForwardConfig, Forwarder};
use crate::cluster::redis::{RedisBus, RedisBusOptions};
use crate::cluster::redis_sessions::{RedisSessions, SessionReaper};
use crate::cluster::registry::{DeviceReaper, PresenceReaper, Registry};
use crate::cluster::Cluster;
use crate::config::{Config, MailboxStoreKind, SiteConfig};
use crate::engine::{Engine, EngineConfig};
use crate::events::{Brokers, ClientEvents, SocketHooks};
use crate::mailbox::embedded::EmbeddedStore;
use crate::mailbox::redis::RedisStore;
use crate::mailbox::store::valid_name;
use crate::mailbox::{
    DeviceKey, Mailbox, MailboxStore, Presence, PresenceTarget, PresenceUser, StoreError,
};
use crate::metrics::{SiteMetrics, Source, Webhook};
use crate::publish::Publisher;
use crate::rate::{ConnectRate, PublishRate, Rate};
use crate::recovery::{Comeback, SiteRecovery};
use crate::retained::{RetainedStore, SiteRetained};
use crate::secret::Secret;
use crate::sites::{ClientInfo, RoomFilter, Sites};
mod factory;
mod reload;

use factory::{MailboxSlot, Rules, SiteFactory};
pub use reload::{ReloadError, ReloadReport};
use reload::{Reloader, Running};

use crate::socketio::{
    Accepted, ConnectRequest, Decision, IncomingEvent, Namespace, NamespaceHandler, PendingCatchUp,
    Refusal, Socket, SocketIo, SocketIoConfig,
};
use crate::tls::{ServerTls, Trust};

/// A site's configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("site '{site}': {source}")]
    Auth { site: String, source: AuthError },
    #[error("cannot create an HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot open the mailbox store: {0}")]
    Mailbox(#[from] StoreError),
    #[error("cannot read retained state: {0}")]
    Retained(#[from] crate::retained::RetainedError),
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] crate::cluster::BusError),
    #[error(transparent)]
    Emitter(#[from] crate::bridges::emitter::EmitterError),
}

/// The running gateway: its socket.io server, engine and sites.
#[derive(Clone)]
pub struct Gateway {
    pub io: SocketIo,
    pub engine: Engine<SocketIo>,
    pub sites: Sites,
    /// The publish pipeline: every source publishes through it.
    pub publisher: Publisher,
    pub max_publish_bytes: usize,
    /// The node registry, in a cluster (with `redis_url`).
    pub registry: Option<Arc<Registry>>,
    /// The socket.io Redis emitter bridge, when it runs.
    pub emitter: Option<crate::bridges::emitter::Emitter>,
    /// The broker bridges' states, then the event routes to brokers'.
    pub bridges: crate::bridges::status::Statuses,
    /// `GET /metrics`, unless `server.metrics` is off.
    pub metrics: Option<crate::metrics::Endpoint>,
    /// `limits.publishes_per_key_per_sec`, when set (the connect rate is the engine's).
    publish_rate: Option<Arc<PublishRate>>,
    /// The admin console, when `server.admin_token` is set.
    pub admin: Option<crate::admin::Admin>,
    /// The certificate served, with `server.tls`; `lifecycle::reload` re-reads it.
    pub tls: Option<ServerTls>,
    /// The client the socket API asks other nodes with.
    peers: crate::cluster::peers::Peers,
    /// Time between an event stream's keep-alive comments.
    sse_ping: Duration,
    /// Tells the broker bridges the process stops (`stop_bridges`).
    bridge_stop: crate::bridges::Stop,
    ready: Arc<AtomicBool>,
    /// Reads the configuration again and applies its sites (`reload`).
    reloader: Arc<Reloader>,
}

/// The page `/` serves: a live view of the demo site's public room, with a publish form.
const DEMO_PAGE: &str = include_str!("ui/demo.html");

/// `setting` of each site, as the registry holds them when it is asked.
fn per_site<T: 'static>(
    sites: &Sites,
    setting: fn(&SiteConfig) -> Option<T>,
) -> crate::cluster::PerSite<T> {
    let sites = sites.clone();
    Box::new(move |name| setting(&sites.get(name)?.config))
}

/// Whether `site` keeps durable mailboxes: it knows its users (a user-room prefix) and keeps them (a TTL).
fn keeps_mailboxes(site: &SiteConfig) -> bool {
    site.user_room_prefix
        .as_deref()
        .is_some_and(|p| !p.is_empty())
        && site.device_ttl_secs > 0
}

/// The store under mailboxes and retained state: redb in the data directory, or the cluster's Redis.
struct Stores {
    mailbox: Arc<dyn MailboxStore>,
    retained: Arc<dyn RetainedStore>,
}

/// Opens the configured store. The embedded one first marks the devices a killed herald left connected as
/// disconnected: none is connected before we serve.
async fn open_stores(config: &Config, trust: &Trust) -> Result<Stores, GatewayError> {
    let server = &config.server;
    if let (MailboxStoreKind::Redis, Some(url)) = (server.mailbox_store(), &server.redis_url) {
        let store = Arc::new(RedisStore::connect(url, trust).await?);
        return Ok(Stores {
            mailbox: store.clone(),
            retained: store,
        });
    }
    let store = Arc::new(EmbeddedStore::open(&server.data_dir.join("mailbox.redb"))?);
    let ttls: Vec<_> = config
        .sites
        .iter()
        .map(|s| (s.name.clone(), Duration::from_secs(s.device_ttl_secs)))
        .collect();
    let released = store.release_connected(&ttls).await?;
    if released > 0 {
        tracing::info!(
            devices = released,
            "marked the devices a previous run left connected as disconnected"
        );
    }
    Ok(Stores {
        mailbox: store.clone(),
        retained: store,
    })
}

/// Builds the gateway for `config` (already validated), opening its mailbox store.
pub async fn build(config: &Config) -> Result<Gateway, GatewayError> {
    build_in(config, None).await
}

/// [`build`], as node `cluster.node` of `cluster` when given (nodes that know each other without Redis, in
/// tests), else as a node alone. Its sids start with its node id, and requests for sessions of the other nodes
/// of `cluster.directory` are forwarded to them.
pub async fn build_in(config: &Config, cluster: Option<Cluster>) -> Result<Gateway, GatewayError> {
    // Before any handle is made: a handle made without a recorder records nothing, for ever.
    let recorder = config
        .server
        .metrics
        .then(crate::metrics::install)
        .flatten();
    let limits = &config.server.limits;
    let io = SocketIo::new(SocketIoConfig {
        max_connect_attempts: limits.max_auth_attempts,
        ..SocketIoConfig::default()
    });
    let sites = Sites::default();
    io.add_namespace(
        "/",
        RootNamespace {
            sites: sites.clone(),
        },
    );
    // The files first: a bad certificate is reported before anything connects.
    let (tls, trust) = crate::tls::load(&config.server)?;
    let http = trust
        .http_client()
        .build()
        .map_err(|e| GatewayError::Http(e.to_string()))?;
    let peers =
        crate::cluster::peers::Peers::new(&trust).map_err(|e| GatewayError::Http(e.to_string()))?;
    let stores = open_stores(config, &trust).await?;
    let node = crate::cluster::new_node_id();
    let registry = match &config.server.redis_url {
        Some(url) => Some(
            Registry::connect(
                url,
                &trust,
                Arc::clone(&node),
                config.server.node_url(),
                Duration::from_millis(config.server.cluster.node_ttl_ms),
            )
            .await?,
        ),
        None => None,
    };
    let mut presence = Presence::new(
        http.clone(),
        Duration::from_millis(config.server.mailbox.presence_debounce_ms),
    );
    if let Some(registry) = &registry {
        presence = presence.recording(registry.records());
    }
    let presence = Arc::new(presence);
    // Devices on a shared store are released by a survivor if this node dies.
    let shared_store = config.server.mailbox_store() == MailboxStoreKind::Redis;
    let mailbox = MailboxSlot::new(
        Arc::clone(&stores.mailbox),
        config.server.mailbox.clone(),
        registry
            .as_ref()
            .filter(|_| shared_store)
            .map(|r| r.records()),
    );
    let cluster = match (&config.server.redis_url, &registry) {
        (Some(url), Some(registry)) => {
            let options = RedisBusOptions {
                timeout: Duration::from_millis(config.server.mailbox.store_timeout_ms),
                max_packets: config.server.cluster.recovery_max_packets,
            };
            let bus = RedisBus::connect(url, &trust, options).await?;
            registry.add_reaper(Arc::new(PresenceReaper {
                presence: Arc::clone(&presence),
                targets: per_site(&sites, presence_target),
            }));
            if shared_store {
                registry.add_reaper(Arc::new(DeviceReaper {
                    store: Arc::clone(&stores.mailbox),
                    ttls: per_site(&sites, |s| {
                        keeps_mailboxes(s).then(|| Duration::from_secs(s.device_ttl_secs))
                    }),
                }));
            }
            let sessions = RedisSessions::connect(url, &trust, &node).await?;
            registry.add_reaper(Arc::new(SessionReaper {
                sessions: sessions.clone(),
                windows: per_site(&sites, |s| {
                    (s.recovery_window_ms > 0).then(|| Duration::from_millis(s.recovery_window_ms))
                }),
            }));
            registry.start().await?;
            Arc::new(Cluster {
                node,
                url: config.server.node_url(),
                bus: Arc::new(bus),
                directory: Arc::clone(registry) as Arc<dyn crate::cluster::Directory>,
                sessions: Arc::new(sessions),
            })
        }
        _ => Arc::new(cluster.unwrap_or_else(|| {
            Cluster::single(
                config.server.node_url(),
                config.server.cluster.recovery_max_packets,
            )
        })),
    };
    // The sites' event routes publish through the publisher, which needs the sites first.
    let publisher_slot = Arc::new(OnceLock::new());
    let factory = SiteFactory {
        http: http.clone(),
        trust: trust.clone(),
        retained: Arc::clone(&stores.retained),
        mailbox,
        presence: Arc::clone(&presence),
        device_locks: Arc::new(DeviceLocks::new()),
        cluster: Arc::clone(&cluster),
        publisher: Arc::clone(&publisher_slot),
    };
    let rules = Rules {
        // Event routes to brokers: one connection per URL, made at the first event.
        brokers: Brokers::new(config, &cluster.node),
        limits: limits.clone(),
    };
    let mut made = Vec::with_capacity(config.sites.len());
    for site in &config.sites {
        made.push(factory.create(site, &rules).await?.serve(&io));
    }
    sites.replace(made.into_iter().map(Arc::new));
    let engine = Engine::new(engine_config(config, &cluster.node), io.clone());
    engine.set_forward(Arc::new(Forwarder::new(
        Arc::clone(&cluster.directory),
        forward_config(config, &trust),
    )?));
    let publisher = Publisher {
        sites: sites.clone(),
        cluster,
        source: Source::Api,
        tap: Default::default(),
    };
    let _ = publisher_slot.set(publisher.with_source(Source::Client));
    publisher.start().await?;
    let emitter =
        crate::bridges::start(config, &publisher.with_source(Source::Emitter), &trust).await?;
    let bridge_context = crate::bridges::BridgeContext {
        node: Arc::clone(&publisher.cluster.node),
        redis_url: config.server.redis_url.clone(),
        trust: trust.clone(),
        stop: crate::bridges::Stop::default(),
    };
    let bridge_stop = bridge_context.stop.clone();
    let bridges = crate::bridges::status::Statuses::new(
        crate::bridges::start_inbound(
            config,
            &publisher.with_source(Source::Bridge),
            &bridge_context,
        ),
        rules.brokers.statuses(),
    );
    let metrics = recorder.map(|handle| crate::metrics::Endpoint {
        handle,
        token: config.server.metrics_token.clone(),
        sites: sites.clone(),
        bridges: bridges.clone(),
        directory: Arc::clone(&publisher.cluster.directory),
    });
    let admin = config
        .server
        .admin_token
        .clone()
        .map(|token| crate::admin::Admin::start(token, sites.clone()));
    Ok(Gateway {
        io,
        engine,
        sites,
        publisher,
        max_publish_bytes: config.server.limits.max_publish_bytes,
        registry,
        emitter,
        bridges,
        metrics,
        publish_rate: Rate::from_settings(
            config.server.limits.publishes_per_key_per_sec,
            config.server.limits.publishes_per_key_burst,
        )
        .map(PublishRate::start),
        admin,
        tls,
        peers,
        // An idle stream moves a byte only with its keep-alive comment, which must come before the idle timeout.
        sse_ping: Duration::from_millis(
            config
                .server
                .engine
                .sse_ping_ms
                .min(config.server.limits.idle_timeout_ms / 2)
                .max(1),
        ),
        bridge_stop,
        ready: Arc::new(AtomicBool::new(true)),
        reloader: Arc::new(Reloader {
            factory,
            started: config.clone(),
            running: tokio::sync::Mutex::new(Running {
                config: config.clone(),
                rules,
            }),
            sources: parking_lot::Mutex::new(None),
        }),
    })
}

fn engine_config(config: &Config, node: &str) -> EngineConfig {
    let server = &config.server;
    EngineConfig {
        sid_prefix: node.to_string(),
        path: server.engine.path.clone(),
        ping_interval: Duration::from_millis(server.engine.ping_interval_ms),
        ping_timeout: Duration::from_millis(server.engine.ping_timeout_ms),
        max_payload: server.limits.max_payload_bytes,
        max_sessions: server.limits.max_connections,
        outbox_frames: server.limits.outbox_frames,
        allowed_origins: server.engine.allowed_origins.clone(),
        max_handshake_bytes: server.limits.max_handshake_bytes,
        connect_rate: Rate::from_settings(
            server.limits.connects_per_ip_per_sec,
            server.limits.connects_per_ip_burst,
        )
        .map(ConnectRate::start),
        ..EngineConfig::default()
    }
}

/// How this node forwards requests for other nodes' sessions: bodies up to `max_payload_bytes`, an answer
/// within `idle_timeout_ms` (above the ping interval a long poll waits), pooled connections dropped well before
/// the peer's `header_read_timeout_ms` closes them, as many tunnels as sessions, and peers' certificates checked
/// against herald's roots.
fn forward_config(config: &Config, trust: &Trust) -> ForwardConfig {
    let limits = &config.server.limits;
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    ForwardConfig {
        max_body: limits.max_payload_bytes,
        timeout: idle,
        pool_idle: Duration::from_millis(limits.header_read_timeout_ms / 2),
        tunnel_idle: idle,
        max_tunnels: limits.max_connections,
        trust: trust.clone(),
        ..ForwardConfig::default()
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("node", &self.publisher.cluster.node)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Every route: socket.io, the publish API, the plain endpoints, the browser client kit, health and
    /// readiness, the demo page, and the admin console when it is on.
    pub fn router(&self) -> axum::Router {
        let api_state = ApiState {
            sites: self.sites.clone(),
            publisher: self.publisher.clone(),
            max_publish_bytes: self.max_publish_bytes,
            bridges: self.bridges.clone(),
            peers: self.peers.clone(),
            publish_rate: self.publish_rate.clone(),
        };
        let admin = self.admin.as_ref().map(|admin| {
            crate::admin::router(crate::admin::AdminState {
                guard: Arc::clone(&admin.guard),
                api: api_state.clone(),
                samples: Arc::clone(&admin.samples),
                keep_alive: self.sse_ping,
                started_at_ms: admin.started_at_ms,
                gateway: self.clone(),
            })
        });
        let api = api::router(api_state);
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
        let plain = crate::plain::router(crate::plain::PlainState {
            engine: self.engine.clone(),
            io: self.io.clone(),
            sites: self.sites.clone(),
            sse_ping: self.sse_ping,
        });
        let kit = crate::kit::router(&self.engine.config().path);
        let mut router = self.engine.router().merge(api).merge(plain).merge(kit);
        // Off (`server.metrics: false`): no route, so `/metrics` is a 404.
        if let Some(metrics) = &self.metrics {
            router = router.merge(metrics.clone().router());
        }
        // Off (no `server.admin_token`): no route, so `/admin` and `/api/v1/admin` are 404.
        if let Some(admin) = admin {
            router = router.merge(admin);
        }
        router
            .route("/readyz", axum::routing::get(readiness))
            .route(
                "/limits",
                axum::routing::get(|| async {
                    let mut counts = crate::limits::snapshot();
                    counts["unrouted_client_events"] = crate::events::unrouted_count().into();
                    axum::Json(counts)
                }),
            )
            .route(
                "/",
                axum::routing::get(|| async { axum::response::Html(DEMO_PAGE) }),
            )
    }

    /// Closes every client's session with a close packet, so clients reconnect (to another node); sessions
    /// that joined no site are closed too. The admin console's tails end.
    pub fn close_all(&self) {
        self.engine
            .close_all(crate::engine::CloseReason::ServerClose);
        self.publisher.tap.close_all();
    }

    /// Stops the broker bridges, waiting at most `within` for those that clean up on their broker (the MQTT
    /// bridge's persistent session).
    pub async fn stop_bridges(&self, within: Duration) {
        self.bridge_stop.stop(within).await;
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

    /// Marks the gateway as draining: `/readyz` answers 503 so load balancers stop sending clients, and new
    /// sessions are refused with 503 while the open ones go on; this node stops leading the emitter bridge.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::Release);
        self.engine.refuse_new_sessions();
        // Another node takes the emitter's broadcasts over now, rather than after this node's lease lapses.
        if let (Some(emitter), Ok(runtime)) =
            (self.emitter.clone(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move { emitter.resign().await });
        }
    }
}

/// Where the site reports its users' comings and goings, if it does.
fn presence_target(site: &SiteConfig) -> Option<PresenceTarget> {
    let url = site.update_user_url.clone()?;
    let scheme = match &site.auth {
        auth::AuthConfig::Webhook(webhook) => webhook.scheme.clone(),
        _ => "Bearer".to_string(),
    };
    Some(PresenceTarget {
        url,
        scheme,
        duration: crate::metrics::webhook_duration(&site.name, Webhook::Presence),
    })
}

/// Lets clients into one site's namespace by the site's rule; clients never pick their own rooms.
struct SiteHandler {
    site: Arc<SiteConfig>,
    auth: Authenticator,
    /// The site's own namespace, for its connection count.
    namespace: Arc<OnceLock<Weak<Namespace>>>,
    mailbox: Option<Arc<Mailbox>>,
    presence: Option<(Arc<Presence>, PresenceTarget)>,
    /// Auth checks of this site in flight (`limits.max_concurrent_auth`): a connect storm cannot turn into a
    /// storm of webhook calls.
    auth_slots: Arc<Semaphore>,
    /// Checks new devices against `limits.max_devices_per_user`, on mailbox sites.
    devices: Option<Arc<DeviceCheck>>,
    /// Connection-state recovery, unless the site's window is 0.
    recovery: Option<Arc<SiteRecovery>>,
    /// What the site's rooms retain, sent to a socket first when it joins them.
    retained: Arc<SiteRetained>,
    /// Where the events its clients emit go.
    events: Arc<ClientEvents>,
    /// `hooks.connect` and `hooks.disconnect`, when the site has them.
    hooks: Option<SocketHooks>,
    /// The site's metric handles (the auth webhook's durations, mailbox deliveries).
    metrics: Arc<SiteMetrics>,
}

/// The root namespace `/`, which no site serves: it refuses socket.io 3+ clients with the namespaces that exist,
/// so a client that connected to `io(url)` instead of `io(url + "/site")` hears why it gets nothing. Engine.IO
/// v3 (socket.io 2.x) clients join `/` implicitly whatever they asked for, and their client hands an error on
/// `/` to every namespace socket, so theirs is let in, into no room.
struct RootNamespace {
    sites: Sites,
}

impl NamespaceHandler for RootNamespace {
    fn authorize(&self, request: ConnectRequest) -> Decision {
        match request.version {
            Version::V3 => Decision::Now(Ok(Accepted::default())),
            Version::V4 => {
                let mut names: Vec<String> = self
                    .sites
                    .all()
                    .iter()
                    .map(|s| format!("/{}", s.config.name))
                    .collect();
                names.sort();
                Decision::Now(Err(Refusal(format!(
                    "herald serves no root namespace: connect to a site's namespace ({})",
                    names.join(", ")
                ))))
            }
        }
    }
}

/// Waits for one of the site's auth slots, as long as the auth check itself may take.
async fn auth_slot(
    slots: &Arc<Semaphore>,
    site: &SiteConfig,
) -> Result<OwnedSemaphorePermit, Refusal> {
    let wait = match &site.auth {
        auth::AuthConfig::Webhook(webhook) => webhook.timeout(),
        _ => Duration::from_secs(5),
    };
    match tokio::time::timeout(wait, Arc::clone(slots).acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            crate::limits::Limit::ConcurrentAuth.hit();
            tracing::warn!(site = %site.name, "refused a client: every auth slot stayed busy");
            Err(Refusal("authentication is busy; retry later".into()))
        }
    }
}

/// Stripes of locks that serialize the device checks of one user on this node, so that a burst of connects
/// with one token cannot all pass the devices-per-user check before any of them is registered.
struct DeviceLocks(Vec<tokio::sync::Mutex<()>>);

impl DeviceLocks {
    fn new() -> Self {
        DeviceLocks((0..64).map(|_| tokio::sync::Mutex::new(())).collect())
    }

    fn of(&self, user_room: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(user_room);
        &self.0[hash as usize % self.0.len()]
    }
}

/// What a new device needs to be let in on a mailbox site.
struct DeviceCheck {
    mailbox: Arc<Mailbox>,
    locks: Arc<DeviceLocks>,
    max_devices: usize,
    ttl: Duration,
}

impl DeviceCheck {
    /// Lets `device` in when the user has it already or has fewer than `max_devices`; a new device is
    /// registered (as disconnected, expiring after the TTL unless its connect completes) before the next check
    /// of the same user on this node runs.
    async fn admit(
        &self,
        site: &SiteConfig,
        user_room: &str,
        device: &str,
        shared_rooms: &[String],
    ) -> Result<(), Refusal> {
        let unavailable = |e: StoreError| {
            tracing::warn!(site = %site.name, error = %e, "refused a client: the mailbox store is unavailable");
            Refusal("the mailbox store is unavailable; retry".into())
        };
        let _serialized = self.locks.of(user_room).lock().await;
        let devices = self
            .mailbox
            .devices(&site.name, user_room)
            .await
            .map_err(unavailable)?;
        if devices.iter().any(|d| d.device == device) {
            return Ok(());
        }
        if devices.len() >= self.max_devices {
            crate::limits::Limit::DevicesPerUser.hit();
            tracing::info!(site = %site.name, limit = self.max_devices, "refused a client: too many devices for one user");
            return Err(Refusal(format!(
                "this user already has {} devices, the limit; an unused device's mailbox expires device_ttl \
                 after it disconnected",
                self.max_devices
            )));
        }
        let key = DeviceKey::new(&site.name, user_room, device);
        let store = self.mailbox.store();
        store
            .connect(&key, shared_rooms)
            .await
            .map_err(unavailable)?;
        store.disconnect(&key, self.ttl).await.map_err(unavailable)
    }
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

/// The socket `comeback` names, back with its rooms and what it missed, when it can be; else a fresh socket
/// in `rooms`, with a new `pid`.
async fn resume_or_fresh(
    recovery: &SiteRecovery,
    comeback: Comeback,
    rooms: Vec<String>,
    info: ClientInfo,
) -> Accepted {
    let (recovery, rooms) = match recovery.resume(&comeback, info.user.as_deref()).await {
        Some((resumed, saved_rooms)) => (resumed, saved_rooms),
        None => (SiteRecovery::fresh(), rooms),
    };
    Accepted {
        rooms,
        data: Some(Box::new(info)),
        recovery: Some(recovery),
        after: None,
    }
}

/// Where a plain client (plain WebSocket, event stream) continues from, by the id of the last event it got
/// (`Last-Event-ID`, or `lastEventId` in the query): a recovery offset (`<ms>-<seq>`) on a recovering site, or
/// the number of a mailbox entry, which acks the entries up to it.
struct PlainResume {
    after: Option<String>,
    acked_through: Option<u64>,
}

impl PlainResume {
    fn of(request: &ConnectRequest, recovers: bool) -> Self {
        let last = credential(request, "lastEventId")
            .filter(|_| request.plain.is_some())
            .filter(|id| id.len() <= 64);
        PlainResume {
            after: last.clone().filter(|id| recovers && id.contains('-')),
            acked_through: last.and_then(|id| id.parse().ok()),
        }
    }
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
    fn max_sockets(&self) -> Option<usize> {
        self.site.max_connections
    }

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
        // A cookie is a credential only where the site's rule reads it: browsers send cookies with every
        // request, and an anonymous visitor of a site with a public channel must not be asked for a token.
        let forwards_cookie =
            matches!(&site.auth, auth::AuthConfig::Webhook(webhook) if webhook.forward_cookie);
        let credential_given =
            auth_request.token.is_some() || (forwards_cookie && auth_request.cookie.is_some());
        let public_only = matches!(site.auth, auth::AuthConfig::Public)
            || (!credential_given && site.public_channel.is_some());
        // Only socket.io 3+ clients (revision 5) can recover; 4.6+ clients do.
        let recovery = self
            .recovery
            .clone()
            .filter(|_| request.version == Version::V4);
        let comeback = recovery
            .as_ref()
            .and_then(|_| Comeback::from_auth(request.auth.as_ref()));
        let resume = PlainResume::of(&request, self.recovery.is_some());
        let after = resume.after.clone();
        if public_only {
            let rooms: Vec<String> = site.public_channel.iter().cloned().collect();
            let info = ClientInfo {
                device_id,
                acked_through: resume.acked_through,
                ..ClientInfo::default()
            };
            let Some((recovery, comeback)) = recovery.zip(comeback) else {
                return Decision::Now(Ok(Accepted {
                    rooms,
                    data: Some(Box::new(info)),
                    recovery: self.recovery.as_ref().map(|_| SiteRecovery::fresh()),
                    after,
                }));
            };
            return Decision::Later(Box::pin(async move {
                Ok(resume_or_fresh(&recovery, comeback, rooms, info).await)
            }));
        }
        let auth = self.auth.clone();
        let slots = Arc::clone(&self.auth_slots);
        let devices = self.devices.clone();
        let auth_duration = matches!(site.auth, auth::AuthConfig::Webhook(_))
            .then(|| self.metrics.webhook(Webhook::Auth).clone());
        Decision::Later(Box::pin(async move {
            let slot = auth_slot(&slots, &site).await?;
            let started = std::time::Instant::now();
            let identity = auth.authenticate(&auth_request).await;
            if let Some(duration) = &auth_duration {
                duration.record(started.elapsed());
            }
            let identity = identity.map_err(|e| {
                tracing::info!(site = %site.name, reason = %e, "refused a client");
                Refusal(e.to_string())
            })?;
            drop(slot);
            let Admission {
                user,
                user_room,
                rooms,
            } = admit(&site, identity)?;
            if let (Some(devices), Some(user_room)) = (devices, user_room.as_deref()) {
                let device = device_id.as_deref().unwrap_or("");
                let shared = RoomFilter::for_site(&site).shared(&rooms);
                devices.admit(&site, user_room, device, &shared).await?;
            }
            let info = ClientInfo {
                user,
                device_id,
                user_room,
                token: auth_request.token.map(Secret::new),
                acked_through: resume.acked_through,
                ..ClientInfo::default()
            };
            Ok(match (recovery, comeback) {
                (Some(recovery), Some(comeback)) => {
                    resume_or_fresh(&recovery, comeback, rooms, info).await
                }
                (recovery, _) => Accepted {
                    rooms,
                    data: Some(Box::new(info)),
                    recovery: recovery.map(|_| SiteRecovery::fresh()),
                    after,
                },
            })
        }))
    }

    fn on_join(&self, _socket: &Arc<Socket>, rooms: &[String]) -> Option<PendingCatchUp> {
        self.retained.first_for(rooms.to_vec())
    }

    fn catch_up(&self, socket: &Arc<Socket>, after: &str) -> PendingCatchUp {
        match &self.recovery {
            // A plain client whose id the log no longer reaches gets its rooms' retained state instead.
            Some(recovery) if socket.session().conn.plain().is_some() => {
                let retained = Arc::clone(&self.retained);
                let joined = Arc::clone(socket);
                let otherwise = Box::new(move || retained.first_for(joined.rooms().split_off(1)));
                recovery.continue_from(socket, after, otherwise)
            }
            Some(recovery) => recovery.catch_up(socket, after),
            None => Box::pin(async { Vec::new() }),
        }
    }

    fn on_connect(&self, socket: &Arc<Socket>) {
        if let Some(recovery) = &self.recovery {
            recovery.remember_later(socket);
        }
        if let Some(hooks) = &self.hooks {
            hooks.connected(socket);
        }
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
                self.metrics.deliveries.clone(),
            );
        }
        if let (Some((presence, target)), Some(user)) = (&self.presence, self.presence_user(info)) {
            presence.connected(target, user);
        }
    }

    fn on_disconnect(&self, socket: &Arc<Socket>, reason: &'static str) {
        if let Some(recovery) = &self.recovery {
            recovery.left(socket, reason);
        }
        if let Some(hooks) = &self.hooks {
            hooks.disconnected(socket, reason);
        }
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
        self.events.handle(socket, event);
    }
}
