//! herald's configuration: one `Config` tree, every field documented with its unit and default. `Default` is
//! the embedded default `herald` runs with out of the box. Loading (file < environment < flags) lives in
//! `load.rs`, the environment in `env.rs`, crossroads' `sites.yml` in `crossroads.rs` and its `config.yml` in
//! `crossroads_config.rs`, what loading notes in `notice.rs`, the rules in `validate.rs`, the demo site's
//! generated key in `demo_key.rs` and `check-config`'s output in `render.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::secret::Secret;

mod bridge;
mod crossroads;
mod crossroads_config;
mod demo_key;
mod env;
mod error;
mod load;
mod notice;
mod outbound;
mod render;
mod validate;

#[cfg(test)]
mod test_support;

pub use bridge::{BridgeConfig, BridgeKind};
pub use demo_key::{ensure_demo_key, DEMO_KEY_FILE};
pub use env::{DEFAULT_ENV_SITE, ENVIRONMENT};
pub(crate) use error::one_line;
pub use error::{ConfigError, KeysFound};
pub(crate) use load::load_from;
pub use load::{
    load, load_with_notices, process_env, Loaded, Overrides, Sources, CROSSROADS_CONFIG_FILE,
    CROSSROADS_SITES_FILE,
};
pub use notice::Notice;
pub use outbound::{AmqpRoute, BrokerKind, BrokerTarget, MqttRoute, NatsRoute};
pub use render::render_masked;
pub use validate::{validate, JWT_ALGORITHMS, MIN_ADMIN_TOKEN};

/// The embedded default's site. A site of this name may start without an API key: `ensure_demo_key` gives it
/// one, kept in the data directory.
pub const DEMO_SITE: &str = "demo";

/// Everything herald needs to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// The sites (tenants); each is the socket.io namespace `/<name>`.
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    /// Brokers whose messages herald publishes (RabbitMQ, MQTT, NATS, Redis, Postgres). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<BridgeConfig>,
}

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:3000`.
    pub listen: SocketAddr,
    /// Where herald keeps its state (the generated demo API key, later the mailboxes). Default `./herald-data`.
    pub data_dir: PathBuf,
    /// Logging. Default: human-readable, level `info`.
    pub log: LogConfig,
    /// Limits on what clients and publishers may send.
    pub limits: LimitsConfig,
    /// Engine.IO settings.
    pub engine: EngineSettings,
    /// Redis for clusters (`REDIS_URL`); none runs embedded, as one node. Default none.
    pub redis_url: Option<String>,
    /// How this node takes part in a cluster (with `redis_url`).
    pub cluster: ClusterSettings,
    /// Durable per-device mailboxes.
    pub mailbox: MailboxSettings,
    /// Milliseconds from SIGTERM to exit, whatever the clients do. Default 10000.
    pub shutdown_grace_ms: u64,
    /// Milliseconds after SIGTERM during which `/readyz` answers 503 and new sessions are refused while the
    /// listener stays open, so load balancers see the drain before connections close. Default 2000.
    pub drain_delay_ms: u64,
    /// Prometheus metrics at `GET /metrics`. Off, no recorder is installed (updates cost nothing) and `/metrics`
    /// answers 404. Default true.
    pub metrics: bool,
    /// The bearer token `GET /metrics` asks for (`HERALD_METRICS_TOKEN`); without one anyone may scrape.
    /// Default none.
    pub metrics_token: Option<Secret>,
    /// The token of the admin console at `/admin` and its API under `/api/v1/admin` (`HERALD_ADMIN_TOKEN`): sent
    /// as `Authorization: Bearer <token>` or typed into the console's login form. At least 16 characters, no
    /// whitespace. Without one the console and its API are off (404). Default none.
    pub admin_token: Option<Secret>,
    /// HTTPS and WSS on `listen` (no plain HTTP there then), with this certificate and key; SIGHUP re-reads
    /// them. Default none: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// A PEM bundle of CA certificates herald trusts besides the system's when it connects out: webhooks, JWKS,
    /// `rediss://`, peers at an https:// node URL (`HERALD_CA_FILE`). Default none.
    pub ca_file: Option<PathBuf>,
}

/// The certificate and key herald serves TLS with (`HERALD_TLS_CERT`, `HERALD_TLS_KEY`: both or neither).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file: the server's certificate first, then the intermediates that lead to a CA clients trust.
    pub cert: PathBuf,
    /// PEM file: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data_dir: PathBuf::from("herald-data"),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
            engine: EngineSettings::default(),
            redis_url: None,
            cluster: ClusterSettings::default(),
            mailbox: MailboxSettings::default(),
            shutdown_grace_ms: 10_000,
            drain_delay_ms: 2000,
            metrics: true,
            metrics_token: None,
            admin_token: None,
            tls: None,
            ca_file: None,
        }
    }
}

/// Logging settings; `RUST_LOG` overrides `level`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One JSON object per line instead of text. Default false.
    pub json: bool,
    /// A `tracing` filter (`info`, `herald=debug`). Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            json: false,
            level: "info".into(),
        }
    }
}

/// Limits; each refusal names the limit it hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest socket.io message from a client, in bytes. Default 1 000 000.
    pub max_payload_bytes: usize,
    /// Largest publish request body, in bytes. Default 1 000 000.
    pub max_publish_bytes: usize,
    /// Most concurrent client sessions on this node. Default 100 000.
    pub max_connections: usize,
    /// Most frames queued for one client before it is dropped as too slow. Default 1024.
    pub outbox_frames: usize,
    /// Milliseconds to receive a request's headers, from the accept or the end of the previous response; it
    /// closes slow-header (slowloris) and idle connections before any handshake. Default 10000.
    pub header_read_timeout_ms: u64,
    /// Milliseconds an HTTP connection may move no byte either way (a stalled body, a client that stops
    /// reading); above `ping_interval_ms`, which a long-polling GET may wait. Default 60000.
    pub idle_timeout_ms: u64,
    /// Most HTTP connections at once (WebSockets once upgraded, and accepted event streams, count as sessions,
    /// `max_connections`); past it herald stops accepting until one closes. Default 10000.
    pub max_http_connections: usize,
    /// Largest request head (request line and headers), in bytes; larger is answered 431. Default 65536.
    pub max_header_bytes: usize,
    /// Most bytes of a handshake's query string and `Cookie` header together, which a session keeps for its
    /// life; larger is answered 431. Default 16384.
    pub max_handshake_bytes: usize,
    /// Most namespace CONNECTs one session may have decided (each may call the auth webhook); one more closes
    /// the session. Default 8.
    pub max_auth_attempts: u32,
    /// Most auth webhook calls (or JWKS-backed checks) in flight per site; more wait up to the webhook's
    /// timeout, then are refused with "authentication is busy". Default 64.
    pub max_concurrent_auth: usize,
    /// Most device mailboxes one user keeps on a mailbox site; a new device past it replaces the user's
    /// longest-idle disconnected device, or is refused when every device is connected. Default 32.
    pub max_devices_per_user: usize,
    /// Most events one socket may emit per second (a burst of as many is allowed); more are refused with an
    /// error in their ack. Default 50.
    pub client_events_per_sec: u32,
    /// Most events of one socket whose route has not answered yet; more are refused. Default 16.
    pub client_events_in_flight: usize,
    /// Largest client event (its JSON arguments), in bytes; a larger one is refused with an error in its ack,
    /// and the client stays connected (`max_payload_bytes` closes it). Default 65536.
    pub max_client_event_bytes: usize,
    /// Most `(room, event)` values one site retains. Default 10000.
    pub max_retained: u64,
    /// Most bytes (room, event and arguments) one site's retained values take. Default 16 MiB.
    pub max_retained_bytes: u64,
    /// New client sessions one address may open per second on this node, on average: socket.io handshakes
    /// (polling or WebSocket), `/ws/<site>` and `/sse/<site>` connects. Past it a handshake is answered 429 with
    /// `Retry-After` (socket.io clients retry by themselves), a plain WebSocket gets an error frame and close
    /// 1008. IPv6 addresses count by their /64. The address is the TCP peer's: behind a proxy or balancer every
    /// client has the proxy's, which is why it is off unless set. Default none (off).
    pub connects_per_ip_per_sec: Option<u32>,
    /// New sessions one address may open at once on top of `connects_per_ip_per_sec`. Default: the rate.
    pub connects_per_ip_burst: Option<u32>,
    /// Publishes one API key may make per second on this node, on average: `/api/v1/sites/{site}/publish`, each
    /// message of a `/batch`, and `/send`. Past it the API answers 429 with `Retry-After`. Default none (off).
    pub publishes_per_key_per_sec: Option<u32>,
    /// Publishes one key may make at once on top of `publishes_per_key_per_sec`; a batch of more messages is
    /// refused (400). Default: the rate.
    pub publishes_per_key_burst: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 1_000_000,
            max_publish_bytes: 1_000_000,
            max_connections: 100_000,
            outbox_frames: 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_http_connections: 10_000,
            max_header_bytes: 64 << 10,
            max_handshake_bytes: 16 << 10,
            max_auth_attempts: 8,
            max_concurrent_auth: 64,
            max_devices_per_user: 32,
            client_events_per_sec: 50,
            client_events_in_flight: 16,
            max_client_event_bytes: 64 << 10,
            max_retained: 10_000,
            max_retained_bytes: 16 << 20,
            connects_per_ip_per_sec: None,
            connects_per_ip_burst: None,
            publishes_per_key_per_sec: None,
            publishes_per_key_burst: None,
        }
    }
}

/// A node's part in a cluster: every node on one Redis serves every client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// The URL other nodes reach this one at, for forwarded polling requests and cluster-wide socket listings
    /// (`HERALD_NODE_URL`). With TLS, a name the certificate holds. Default `http://<listen address>`
    /// (`https://` with `tls`).
    pub node_url: Option<String>,
    /// Milliseconds after its last heartbeat that a node counts as dead: its sockets leave every listing and a
    /// survivor reports its users gone. Under 20000. Default 10000.
    pub node_ttl_ms: u64,
    /// The socket.io Redis emitter protocol (`@socket.io/redis-emitter` and its PHP, Python, Java and Go
    /// siblings): publishes on `<prefix>#/<site>#…` reach the site's clients, and `socketsJoin`, `socketsLeave`
    /// and `disconnectSockets` (`<prefix>-request#/<site>#`) act on them. Needs `redis_url`. Default on.
    pub emitter: bool,
    /// The emitter's key prefix (its `key` option). Redis pub/sub ignores the database number, so every herald
    /// cluster on one Redis server with the same prefix receives the same emits. Default `socket.io`.
    pub emitter_prefix: String,
    /// Most packets one site's recovery log keeps on this node without Redis, whatever the window. Default
    /// 10000.
    pub recovery_max_packets: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_url: None,
            node_ttl_ms: 10_000,
            emitter: true,
            emitter_prefix: "socket.io".into(),
            recovery_max_packets: 10_000,
        }
    }
}

impl ServerConfig {
    /// The URL peers reach this node at: `cluster.node_url`, else `http://<listen address>` (`https://` with
    /// TLS).
    pub fn node_url(&self) -> String {
        self.cluster
            .node_url
            .clone()
            .unwrap_or_else(|| format!("{}://{}", self.scheme(), self.listen))
    }

    /// `https` when herald serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Where mailboxes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailboxStoreKind {
    /// `<data_dir>/mailbox.redb` on this node's disk.
    Embedded,
    /// The Redis at `redis_url`, shared by every node.
    Redis,
}

/// Durable per-device mailboxes (sites with a `user_room_prefix` and a `device_ttl_secs` above 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxSettings {
    /// `embedded` or `redis`. Default: `redis` when `redis_url` is set, else `embedded`.
    pub store: Option<MailboxStoreKind>,
    /// Most entries one device's mailbox keeps; more drop the oldest and end in `_resync`. Default 100 000.
    pub max_entries: u64,
    /// Most payload bytes one device's mailbox keeps. Default 64 MiB.
    pub max_bytes: u64,
    /// Most entries in one `_batch` page of a replay. Default 1000.
    pub page_entries: usize,
    /// Most payload bytes in one `_batch` page. Default 512 KiB.
    pub page_bytes: usize,
    /// Milliseconds a replay waits for a `_batch` ack before it goes on without one. Default 30000.
    pub batch_ack_timeout_ms: u64,
    /// Milliseconds a user must stay away before `updateUserUrl` hears `last_disconnected`. Default 5000.
    pub presence_debounce_ms: u64,
    /// Milliseconds between sweeps of expired mailboxes (embedded store). Default 60000.
    pub sweep_interval_ms: u64,
    /// Milliseconds a publish waits for the store before it answers 503 (a Redis that is down, a disk that
    /// stalls); the append may still land, as a 503 promises nothing. Default 3000.
    pub store_timeout_ms: u64,
}

impl Default for MailboxSettings {
    fn default() -> Self {
        MailboxSettings {
            store: None,
            max_entries: 100_000,
            max_bytes: 64 << 20,
            page_entries: 1000,
            page_bytes: 512 << 10,
            batch_ack_timeout_ms: 30_000,
            presence_debounce_ms: 5000,
            sweep_interval_ms: 60_000,
            store_timeout_ms: 3000,
        }
    }
}

impl ServerConfig {
    /// The mailbox store this configuration runs.
    pub fn mailbox_store(&self) -> MailboxStoreKind {
        self.mailbox.store.unwrap_or(if self.redis_url.is_some() {
            MailboxStoreKind::Redis
        } else {
            MailboxStoreKind::Embedded
        })
    }
}

/// Engine.IO settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// URL path of the socket.io endpoint. Default `/socket.io/`.
    pub path: String,
    /// Milliseconds between heartbeats. Default 25000.
    pub ping_interval_ms: u64,
    /// Milliseconds a heartbeat may take. Default 20000.
    pub ping_timeout_ms: u64,
    /// Milliseconds between the `: ping` comments of an idle event stream (`/sse/<site>`), which keep proxies
    /// and the idle timeout from closing it; at most half of `limits.idle_timeout_ms` is used. Default 15000.
    pub sse_ping_ms: u64,
    /// Browser origins allowed to connect, which get credentialed CORS answers; other origins get 403. None
    /// set lets any origin connect but answers no CORS headers, so no cross-origin page can read the polling
    /// transport. Required by sites that authenticate by forwarded cookie. Default none.
    pub allowed_origins: Option<Vec<String>>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            path: "/socket.io/".into(),
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            sse_ping_ms: 15_000,
            allowed_origins: None,
        }
    }
}

/// One site: a socket.io namespace `/<name>` with its own keys, auth rule and rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The site name: `[A-Za-z0-9_-]+`, the namespace is `/<name>`.
    pub name: String,
    /// Keys that may publish to the site. At least one (validation says so when none is given), except for the
    /// `demo` site, whose key is generated.
    #[serde(default)]
    pub api_keys: Vec<Secret>,
    /// How clients authenticate. Default: public.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Prefix of per-user rooms (`user:`); when set, an auth answer must hold a user room. Default none.
    #[serde(default)]
    pub user_room_prefix: Option<String>,
    /// A room every client of the site may join without a token. Default none.
    #[serde(default)]
    pub public_channel: Option<String>,
    /// URL that gets `PUT {id, user: {last_connected|last_disconnected}}` when a user comes and goes (`:id` is
    /// the user room without its prefix). Default none.
    #[serde(default)]
    pub update_user_url: Option<String>,
    /// Seconds a device's mailbox outlives its last connection; 0 turns mailboxes off (live delivery only, as
    /// crossroads' 0 stores nothing). Default 86400.
    #[serde(default = "default_device_ttl")]
    pub device_ttl_secs: u64,
    /// Most concurrent clients of this site; none means only the server limit. Default none.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Milliseconds within which a socket.io 4.6+ client whose connection dropped may come back with its id,
    /// rooms and every live packet it missed (connection-state recovery); 0 turns it off. Default 120000.
    #[serde(default = "default_recovery_window")]
    pub recovery_window_ms: u64,
    /// Where the events clients emit go, by event name (`"*"`: every other event). An event with no route is
    /// refused. Default none: every client event is refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub events: BTreeMap<String, EventRoute>,
    /// Per-socket webhooks, not debounced. Default none.
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// Signs every event-route and hook call with `X-Herald-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    /// Default none (unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<Secret>,
}

/// Where one client event goes: exactly one of `url`, `amqp`, `mqtt`, `nats`, `retained`, `relay`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRoute {
    /// A webhook that gets the event as JSON; its answer is the ack (`reply`) and may publish, join and leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A RabbitMQ exchange that gets the webhook's JSON body; the ack is `{"queued": true}` once confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpRoute>,
    /// An MQTT topic that gets the webhook's JSON body at QoS 1; the ack is `{"queued": true}` once PUBACKed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttRoute>,
    /// A NATS subject that gets the webhook's JSON body; the ack is `{"queued": true}` once the server (or the
    /// JetStream stream covering the subject) has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsRoute>,
    /// `emit(event, room, retainedEvent, ack)` is answered with the arguments retained for that room and event,
    /// when the socket is in the room.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retained: bool,
    /// `emit(event, room, ...args)` reaches the other sockets in `room` with the same event and arguments, when
    /// the socket is in the room.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
    /// Milliseconds the webhook (or the broker, connecting and confirming) may take; past it the ack gets an
    /// error. Default 5000.
    #[serde(default = "default_event_timeout")]
    pub timeout_ms: u64,
}

fn default_event_timeout() -> u64 {
    5000
}

/// Per-socket webhooks: each gets `{"site", "socket": {"id", "user", "deviceId", "rooms"}}` (and `"reason"` on
/// disconnect), retried with backoff, never holding up a connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Called after a socket joined the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Called after a socket left the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<String>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.connect.is_none() && self.disconnect.is_none()
    }
}

fn default_recovery_window() -> u64 {
    120_000
}

fn default_device_ttl() -> u64 {
    86_400
}

impl SiteConfig {
    /// A public site with no API key and every optional field at its default.
    pub fn new(name: String) -> Self {
        SiteConfig {
            name,
            api_keys: Vec::new(),
            auth: AuthConfig::Public,
            user_room_prefix: None,
            public_channel: None,
            update_user_url: None,
            device_ttl_secs: default_device_ttl(),
            max_connections: None,
            recovery_window_ms: default_recovery_window(),
            events: BTreeMap::new(),
            hooks: Hooks::default(),
            signing_secret: None,
        }
    }
}

impl Default for Config {
    /// The embedded default: one public `demo` site. Its API key is generated at first start (see `demo_key.rs`).
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            sites: vec![SiteConfig {
                public_channel: Some("public".into()),
                events: demo_events(),
                ..SiteConfig::new(DEMO_SITE.into())
            }],
            bridges: Vec::new(),
        }
    }
}

/// The demo site's routes: `chat` is relayed to the other sockets of a room, and `get` reads a retained value.
fn demo_events() -> BTreeMap<String, EventRoute> {
    let route = |retained, relay| EventRoute {
        retained,
        relay,
        timeout_ms: default_event_timeout(),
        ..EventRoute::default()
    };
    BTreeMap::from([
        ("chat".to_string(), route(false, true)),
        ("get".to_string(), route(true, false)),
    ])
}
