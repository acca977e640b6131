//! The socket.io Redis emitter protocol (`@socket.io/redis-emitter`, and the PHP, Python, Java and Go emitters
//! that speak it): a backend publishes on Redis, herald's clients receive.
//!
//! ```text
//! PUBLISH <prefix>#/<site>#[<room>#]  msgpack [uid, {type, data, nsp}, {rooms, except, flags}]
//!     ─► every node receives it ─► the lease holder alone: PublishRequest ─► Publisher::publish
//!        (mailboxes of user and shared rooms, the bus to the other nodes, its own sockets)
//! PUBLISH <prefix>-request#/<site>#   JSON {type: 2|3|4, opts: {rooms, except}, rooms | close}
//!     ─► every node applies it to its own sockets (join, leave, disconnect)
//! ```
//!
//! Exactly once: every node is subscribed, and only the node holding the leader lease (`bridges/lease.rs`) hands a
//! broadcast to the publish pipeline, which carries it to the others over the cluster bus. Requests act on
//! sockets, which live on one node each, so every node applies them to its own.

pub mod decode;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::mpsc;

use self::decode::{Action, Channel, DecodeError, EmittedEvent, Request, Selector};
use super::lease::Lease;
use crate::engine::CloseReason;
use crate::mailbox::store::valid_name;
use crate::publish::{PublishRequest, Publisher};
use crate::sites::Site;
use crate::socketio::Socket;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages waiting for the worker; more are dropped (and counted) rather than queued without limit.
const QUEUE: usize = 4096;

/// What the bridge needs to run.
#[derive(Debug, Clone)]
pub struct EmitterConfig {
    /// The emitter's key prefix (`socket.io`).
    pub prefix: String,
    /// Larger payloads are dropped (`limits.max_publish_bytes`, as for an API publish).
    pub max_bytes: usize,
}

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EmitterError {
    #[error("the socket.io emitter bridge: the Redis URL is not valid")]
    BadUrl,
    #[error("the socket.io emitter bridge cannot reach Redis: {0}")]
    Redis(String),
}

/// What the bridge did since the process started, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Broadcasts this node handed to the publish pipeline (as the leader).
    pub published: AtomicU64,
    /// Broadcasts another node led (not this node's to publish).
    pub followed: AtomicU64,
    /// Requests (join, leave, disconnect) applied here.
    pub requests: AtomicU64,
    /// Messages that could not be read or that the publish pipeline refused.
    pub malformed: AtomicU64,
    /// Well-formed messages herald does not act on: the root namespace, a namespace no site serves, another
    /// packet or request type.
    pub ignored: AtomicU64,
    /// Messages dropped because the worker was too far behind, or over `max_bytes`.
    pub dropped: AtomicU64,
}

impl Counters {
    fn hit(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The running bridge. Dropping it (with the gateway) stops its tasks.
#[derive(Debug, Clone)]
pub struct Emitter {
    lease: Arc<Lease>,
    counters: Arc<Counters>,
    _alive: Arc<()>,
}

impl Emitter {
    /// Subscribes to the emitter's channels on `url` and starts taking part in the leader lease. The first
    /// subscription is made before this returns when Redis answers in time; otherwise it is retried with
    /// backoff in the background.
    pub async fn start(
        publisher: Publisher,
        url: &str,
        trust: &crate::tls::Trust,
        config: EmitterConfig,
    ) -> Result<Emitter, EmitterError> {
        let client = trust.redis_client(url).map_err(|_| EmitterError::BadUrl)?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let con = ConnectionManager::new_with_config(client.clone(), manager)
            .await
            .map_err(|e| EmitterError::Redis(redact(&e, url)))?;
        let key = format!("herald:emitter:{}:leader", config.prefix);
        let lease = Arc::new(Lease::new(key, Arc::clone(&publisher.cluster.node), con));
        let counters = Arc::new(Counters::default());
        let alive = Arc::new(());
        let (tx, rx) = mpsc::channel(QUEUE);
        let relay = Relay {
            client,
            config: config.clone(),
            lease: Arc::clone(&lease),
            counters: Arc::clone(&counters),
            tx,
            alive: Arc::downgrade(&alive),
        };
        let first = match tokio::time::timeout(CONNECT_TIMEOUT, relay.subscribe()).await {
            Ok(Ok(subscription)) => {
                lease.set_eligible(true).await;
                lease.attempt().await;
                Some(subscription)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %redact(&e, url), "emitter: cannot subscribe yet; retrying");
                None
            }
            Err(_) => {
                tracing::warn!("emitter: Redis did not answer the subscription in time; retrying");
                None
            }
        };
        tokio::spawn(relay.run(first));
        tokio::spawn(work(
            publisher,
            rx,
            Arc::clone(&lease),
            Arc::clone(&counters),
        ));
        let weak = Arc::downgrade(&alive);
        tokio::spawn(Arc::clone(&lease).run(move || weak.strong_count() > 0));
        tracing::info!(prefix = %config.prefix, "emitter: listening for the socket.io Redis emitter");
        Ok(Emitter {
            lease,
            counters,
            _alive: alive,
        })
    }

    /// Whether this node hands emitter broadcasts to the publish pipeline now.
    pub fn leads(&self) -> bool {
        self.lease.held()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops leading for good (the node drains): another node takes over within a second.
    pub async fn resign(&self) {
        self.lease.resign().await;
    }
}

type Subscription = (PubSubSink, PubSubStream);

/// A message for the worker, in the order Redis delivered them.
enum Job {
    /// A broadcast this node leads; the channel for logs.
    Broadcast(String, EmittedEvent),
    /// A request for this node's sockets of `nsp`.
    Request(String, Request),
}

/// Reads the subscription and hands messages to the worker.
struct Relay {
    client: redis::Client,
    config: EmitterConfig,
    lease: Arc<Lease>,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Job>,
    alive: Weak<()>,
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    Gone,
    ConnectionLost,
}

impl Relay {
    async fn subscribe(&self) -> redis::RedisResult<Subscription> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        let prefix = &self.config.prefix;
        pubsub
            .psubscribe(decode::glob_prefix(&format!("{prefix}#")))
            .await?;
        pubsub
            .psubscribe(decode::glob_prefix(&format!("{prefix}-request#")))
            .await?;
        Ok(pubsub.split())
    }

    fn alive(&self) -> bool {
        self.alive.strong_count() > 0 && !self.tx.is_closed()
    }

    async fn run(self, mut subscription: Option<Subscription>) {
        loop {
            if let Some(open) = subscription.take() {
                self.lease.set_eligible(true).await;
                // Take a free lease now rather than at the next renewal.
                self.lease.attempt().await;
                let stopped = self.read(open).await;
                // A node that may miss messages must not lead.
                self.lease.set_eligible(false).await;
                if stopped == Stopped::Gone {
                    return;
                }
            }
            let mut backoff = BACKOFF_MIN;
            subscription = loop {
                tokio::time::sleep(backoff).await;
                if !self.alive() {
                    return;
                }
                match tokio::time::timeout(CONNECT_TIMEOUT, self.subscribe()).await {
                    Ok(Ok(open)) => {
                        tracing::info!("emitter: subscribed again");
                        break Some(open);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "emitter: cannot subscribe")
                    }
                    Err(_) => tracing::warn!(retry_in = ?backoff, "emitter: subscribing timed out"),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            };
        }
    }

    async fn read(&self, (mut sink, mut messages): Subscription) -> Stopped {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut dropping = false;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        tracing::warn!("emitter: connection lost");
                        return Stopped::ConnectionLost;
                    };
                    let Some(job) = self.job(message.get_channel_name(), message.get_payload_bytes()) else {
                        continue;
                    };
                    match self.tx.try_send(job) {
                        Ok(()) => dropping = false,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let n = Counters::hit(&self.counters.dropped);
                            if !dropping {
                                tracing::warn!(dropped = n, "emitter: the worker is behind; dropping messages");
                            }
                            dropping = true;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return Stopped::Gone,
                    }
                }
                _ = ping.tick() => {
                    if !self.alive() {
                        return Stopped::Gone;
                    }
                    if !matches!(tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await, Ok(Ok(_))) {
                        tracing::warn!("emitter: Redis stopped answering pings");
                        return Stopped::ConnectionLost;
                    }
                }
            }
        }
    }

    /// What a message asks of this node, if anything.
    fn job(&self, channel: &str, payload: &[u8]) -> Option<Job> {
        let kind = decode::parse_channel(&self.config.prefix, channel)?;
        if let Channel::Broadcast { .. } = kind {
            // Only the leader reads broadcasts: the others would drop them anyway.
            if !self.lease.held() {
                Counters::hit(&self.counters.followed);
                return None;
            }
        }
        if payload.len() > self.config.max_bytes {
            let n = Counters::hit(&self.counters.dropped);
            tracing::warn!(
                channel,
                bytes = payload.len(),
                limit = self.config.max_bytes,
                dropped = n,
                "emitter: dropped a message over max_publish_bytes"
            );
            return None;
        }
        let decoded = match kind {
            Channel::Broadcast { .. } => {
                decode::decode_broadcast(payload).map(|e| Job::Broadcast(channel.to_string(), e))
            }
            Channel::Request { nsp } => {
                decode::decode_request(payload).map(|r| Job::Request(nsp.to_string(), r))
            }
        };
        match decoded {
            Ok(job) => Some(job),
            Err(DecodeError::Unsupported(reason)) => {
                Counters::hit(&self.counters.ignored);
                tracing::debug!(channel, %reason, "emitter: ignored a message");
                None
            }
            Err(DecodeError::Malformed(reason)) => {
                let n = Counters::hit(&self.counters.malformed);
                tracing::warn!(channel, %reason, malformed = n, "emitter: ignored a malformed message");
                None
            }
        }
    }
}

/// Applies the jobs in order: broadcasts through the publish pipeline, requests to this node's sockets.
async fn work(
    publisher: Publisher,
    mut rx: mpsc::Receiver<Job>,
    lease: Arc<Lease>,
    counters: Arc<Counters>,
) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Broadcast(channel, event) => {
                // Checked again: the lease may have lapsed while the message waited.
                if !lease.held() {
                    Counters::hit(&counters.followed);
                    continue;
                }
                publish(&publisher, &channel, event, &counters).await;
            }
            Job::Request(nsp, request) => {
                let Some(site) = site_of(&publisher, &nsp, &counters) else {
                    continue;
                };
                Counters::hit(&counters.requests);
                apply(&site, request).await;
            }
        }
    }
}

/// The site serving namespace `nsp`.
fn site_of(publisher: &Publisher, nsp: &str, counters: &Counters) -> Option<Arc<Site>> {
    let site = nsp
        .strip_prefix('/')
        .and_then(|name| publisher.sites.get(name));
    if site.is_none() {
        Counters::hit(&counters.ignored);
        if nsp == "/" {
            tracing::debug!(
                "emitter: ignored a message to the root namespace, which no site serves (use emitter.of(\"/<site>\"))"
            );
        } else {
            tracing::debug!(
                nsp,
                "emitter: ignored a message to a namespace no site serves"
            );
        }
    }
    site
}

async fn publish(publisher: &Publisher, channel: &str, event: EmittedEvent, counters: &Counters) {
    let Some(site) = site_of(publisher, &event.nsp, counters) else {
        return;
    };
    let request = PublishRequest {
        all: event.rooms.is_empty(),
        rooms: event.rooms,
        sockets: Vec::new(),
        except: event.except,
        event: event.event,
        args: event.args,
        volatile: event.volatile,
        binaries: event.binaries,
        ..PublishRequest::default()
    };
    match publisher.publish(&site, &request, false).await {
        Ok(_) => {
            Counters::hit(&counters.published);
        }
        Err(crate::publish::PublishError::BadRequest(reason)) => {
            let n = Counters::hit(&counters.malformed);
            tracing::warn!(site = %site.config.name, channel, %reason, malformed = n, "emitter: refused a broadcast");
        }
        Err(e) => {
            tracing::warn!(site = %site.config.name, channel, error = %e, "emitter: a broadcast failed");
        }
    }
}

/// The sockets of this node that `selector` names.
fn selected(site: &Site, selector: &Selector) -> Vec<Arc<Socket>> {
    match selector {
        Selector::Socket(id) => site.namespace.socket(id).into_iter().collect(),
        Selector::Rooms { rooms, except } => {
            let mut found = if rooms.is_empty() {
                site.namespace.sockets()
            } else {
                let mut found: Vec<Arc<Socket>> = Vec::new();
                for room in rooms {
                    for socket in site.namespace.room_sockets(room) {
                        if !found.iter().any(|s| s.id() == socket.id()) {
                            found.push(socket);
                        }
                    }
                }
                found
            };
            if !except.is_empty() {
                let excluded: Vec<Arc<Socket>> = except
                    .iter()
                    .flat_map(|room| site.namespace.room_sockets(room))
                    .collect();
                found.retain(|s| !excluded.iter().any(|x| x.id() == s.id()));
            }
            found
        }
    }
}

/// Applies a request to this node's sockets of `site`.
async fn apply(site: &Site, request: Request) {
    let sockets = selected(site, &request.selector);
    if sockets.is_empty() {
        return;
    }
    match request.action {
        Action::Join(rooms) | Action::Leave(rooms) if rooms.iter().any(|r| !valid_name(r)) => {
            tracing::info!(site = %site.config.name, "emitter: refused to change rooms: an invalid room name");
        }
        Action::Join(rooms) => {
            for socket in &sockets {
                site.join(socket, &rooms);
                record(site, socket).await;
            }
        }
        Action::Leave(rooms) => {
            for socket in &sockets {
                for room in &rooms {
                    socket.leave(room);
                }
                record(site, socket).await;
            }
        }
        Action::Disconnect { close } => {
            for socket in &sockets {
                socket.disconnect();
                if close {
                    socket.session().close(CloseReason::ServerClose);
                }
            }
        }
    }
}

/// Keeps the user's shared-room index true after a join or leave, as the API's does.
async fn record(site: &Site, socket: &Arc<Socket>) {
    if let Err(e) = site.rooms_changed(socket).await {
        tracing::warn!(site = %site.config.name, error = %e, "emitter: cannot record a user's shared rooms");
    }
}

/// `e` as text with `url` cut out (it may hold a password).
fn redact(e: &redis::RedisError, url: &str) -> String {
    e.to_string().replace(url, "<url>")
}
