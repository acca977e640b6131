//! The leader lease: one key in the cluster's Redis that names the one node of the cluster that acts on a
//! source every node hears (the socket.io emitter's broadcasts, a Redis or Postgres bridge's messages). A node
//! takes it with `SET NX PX`, keeps it by renewing it every [`RENEW_EVERY`], and counts itself the leader only
//! until [`LEASE`] − [`MARGIN`] after it *sent* its last successful renewal, so it stops before Redis lets the
//! key lapse and another node can take it: two nodes are never leaders at once (as long as their clocks run at
//! nearly the same rate).
//!
//! The failover gap: when a leader dies, its key lives out its lease (at most [`LEASE`]) and the next node takes
//! it at its next attempt (at most [`RENEW_EVERY`] later); messages published meanwhile reach no client (Redis
//! pub/sub and `NOTIFY` keep nothing). A node that resigns (its subscription broke, or it drains) deletes the
//! key at once, so another takes over within [`RENEW_EVERY`].
//!
//! [`BridgeLeader`] is a broker bridge's use of it: one lease per bridge (key [`bridge_key`]) in a cluster, and
//! always the leader on a node alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use sha2::{Digest, Sha256};

use super::backoff::{redact, Backoff};
use super::status::{BridgeStatus, State};
use super::BridgeContext;
use crate::config::BridgeConfig;

/// How long the key lives without a renewal.
pub const LEASE: Duration = Duration::from_millis(3000);
/// How often the leader renews it, and how often the others try to take it.
pub const RENEW_EVERY: Duration = Duration::from_millis(1000);
/// How much earlier than Redis the leader stops counting itself the leader.
pub const MARGIN: Duration = Duration::from_millis(500);

/// Takes the key when it is free, or renews it when this node holds it: 1 when this node holds it afterwards.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes the key if this node holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// This node's side of the lease. Cheap to share.
pub struct Lease {
    key: String,
    node: Arc<str>,
    con: ConnectionManager,
    /// When this node stops counting itself the leader, in milliseconds after `base` (0: not the leader).
    until_ms: AtomicU64,
    base: Instant,
    /// Whether this node may lead: its subscription is live and it is not draining.
    eligible: AtomicBool,
    resigned: AtomicBool,
    acquire: Script,
    release: Script,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("node", &self.node)
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub fn new(key: String, node: Arc<str>, con: ConnectionManager) -> Self {
        Lease {
            key,
            node,
            con,
            until_ms: AtomicU64::new(0),
            base: Instant::now(),
            eligible: AtomicBool::new(false),
            resigned: AtomicBool::new(false),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Whether this node is the leader now.
    pub fn held(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Acquire)
    }

    /// Whether this node may lead; a node that may not gives the lease up at once.
    pub async fn set_eligible(&self, eligible: bool) {
        let eligible = eligible && !self.resigned.load(Ordering::Acquire);
        let was = self.eligible.swap(eligible, Ordering::AcqRel);
        if was && !eligible {
            self.give_up().await;
        }
    }

    /// Gives the lease up for good (the node drains): another node takes over at its next attempt.
    pub async fn resign(&self) {
        self.resigned.store(true, Ordering::Release);
        self.eligible.store(false, Ordering::Release);
        self.give_up().await;
    }

    async fn give_up(&self) {
        let was_held = self.until_ms.swap(0, Ordering::AcqRel) > self.now_ms();
        let mut con = self.con.clone();
        let released: redis::RedisResult<i64> = self
            .release
            .key(&self.key)
            .arg(&*self.node)
            .invoke_async(&mut con)
            .await;
        if was_held {
            match released {
                Ok(_) => tracing::info!(lease = %self.key, "this node gave up leading"),
                Err(e) => tracing::warn!(
                    lease = %self.key,
                    error = %e,
                    "gave up leading, but could not free the lease (it lapses by itself)"
                ),
            }
        }
    }

    /// One attempt to take or renew the lease.
    pub async fn attempt(&self) {
        if !self.eligible.load(Ordering::Acquire) {
            return;
        }
        let sent = self.now_ms();
        let mut con = self.con.clone();
        let result: redis::RedisResult<i64> = self
            .acquire
            .key(&self.key)
            .arg(&*self.node)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(&mut con)
            .await;
        let was_held = self.held();
        match result {
            // Still eligible: a resignation while the call was out must not be undone.
            Ok(1) if self.eligible.load(Ordering::Acquire) => {
                let until = sent + (LEASE - MARGIN).as_millis() as u64;
                self.until_ms.store(until, Ordering::Release);
                if !was_held {
                    tracing::info!(lease = %self.key, "this node now leads");
                }
            }
            Ok(_) => {
                self.until_ms.store(0, Ordering::Release);
                if was_held {
                    tracing::warn!(lease = %self.key, "another node took the lease");
                }
            }
            // The lease lapses by itself here before it does in Redis.
            Err(e) => {
                tracing::warn!(lease = %self.key, error = %e, "cannot renew the leader lease")
            }
        }
    }

    /// Takes or renews the lease every [`RENEW_EVERY`] for as long as `alive` holds.
    pub async fn run(self: Arc<Self>, alive: impl Fn() -> bool) {
        let mut every = tokio::time::interval(RENEW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while alive() {
            every.tick().await;
            self.attempt().await;
        }
        self.give_up().await;
    }
}

/// How long a bridge waits for the cluster's Redis when it opens the lease's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a bridge cannot take part in its lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The cluster's Redis (`server.redis_url`, not the bridge's) did not answer; no URL in the text.
    #[error("the cluster's Redis (for the bridge's leader lease): {0}")]
    Redis(String),
}

/// The lease key of `bridge`: `herald:bridge:<kind>:<hash>:leader`, the hash over its kind, broker (URL without
/// credentials), source and site, so every node with the same bridge competes for the same key whatever the
/// order of its `bridges:` list, and no password reaches Redis, even hashed.
pub fn bridge_key(bridge: &BridgeConfig) -> String {
    let mut hash = Sha256::new();
    for part in [
        bridge.kind.name(),
        &without_credentials(&bridge.url),
        bridge.source().unwrap_or_default(),
        &bridge.site,
    ] {
        // The length first, so no two different lists of parts hash the same text.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("herald:bridge:{}:{hex}:leader", bridge.kind.name())
}

/// `url` without the `user:password@` of its authority.
pub fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Whether this node publishes a bridge's messages: in a cluster, only while it holds the bridge's lease; alone,
/// always. Every node stays subscribed either way, so a follower takes over within a lease's failover gap.
#[derive(Debug, Clone)]
pub struct BridgeLeader {
    lease: Option<Arc<Lease>>,
}

impl BridgeLeader {
    /// The leader of a node alone.
    pub fn alone() -> Self {
        BridgeLeader { lease: None }
    }

    /// `bridge`'s lease in the cluster of `context`, renewed on its own task; a node alone always leads.
    pub async fn new(bridge: &BridgeConfig, context: &BridgeContext) -> Result<Self, LeaseError> {
        let Some(url) = context.redis_url.as_deref() else {
            return Ok(Self::alone());
        };
        let client = context
            .trust
            .redis_client(url)
            .map_err(|_| LeaseError::Redis("the Redis URL is not valid".into()))?;
        let settings = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let con = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, settings),
        )
        .await
        .map_err(|_| LeaseError::Redis("no answer in time".into()))?
        .map_err(|e| LeaseError::Redis(redact(&e.to_string(), url)))?;
        let lease = Arc::new(Lease::new(
            bridge_key(bridge),
            Arc::clone(&context.node),
            con,
        ));
        // Bridges run as long as the process: the lease is renewed as long.
        tokio::spawn(Arc::clone(&lease).run(|| true));
        Ok(BridgeLeader { lease: Some(lease) })
    }

    /// [`BridgeLeader::new`], retried with backoff until the cluster's Redis answers (the bridge is down
    /// meanwhile: a node that cannot tell whether it leads must not publish, nor stay silent for good).
    pub async fn join(
        bridge: &BridgeConfig,
        context: &BridgeContext,
        status: &BridgeStatus,
    ) -> BridgeLeader {
        let mut backoff = Backoff::default();
        loop {
            match Self::new(bridge, context).await {
                Ok(leader) => return leader,
                Err(e) => {
                    tracing::warn!(bridge = %status.label, error = %e, "bridge: no leader lease yet; retrying");
                    status.set(State::Down, Some(e.to_string()));
                }
            }
            backoff.wait().await;
        }
    }

    /// Whether this node publishes the bridge's messages now.
    pub fn leads(&self) -> bool {
        self.lease.as_ref().is_none_or(|lease| lease.held())
    }

    /// The bridge's state while its subscription is live: up when it publishes, standby when another node does.
    pub fn state(&self) -> State {
        if self.leads() {
            State::Up
        } else {
            State::Standby
        }
    }

    /// The subscription is live (or not): only a node that hears every message may lead. A live one tries to
    /// take a free lease at once rather than at the next renewal.
    pub async fn set_subscribed(&self, subscribed: bool) {
        if let Some(lease) = &self.lease {
            lease.set_eligible(subscribed).await;
            if subscribed {
                lease.attempt().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connection() -> ConnectionManager {
        let client = redis::Client::open("redis://127.0.0.1:6379/").expect("a valid URL");
        ConnectionManager::new(client)
            .await
            .expect("these tests need Redis on 127.0.0.1:6379 (bash scripts/services.sh)")
    }

    fn key() -> String {
        format!("herald:test:lease:{}", crate::cluster::new_node_id())
    }

    #[tokio::test]
    async fn one_node_leads_and_another_takes_over_when_it_resigns() {
        let key = key();
        let a = Lease::new(key.clone(), "node-a".into(), connection().await);
        let b = Lease::new(key.clone(), "node-b".into(), connection().await);
        a.set_eligible(true).await;
        b.set_eligible(true).await;
        a.attempt().await;
        b.attempt().await;
        assert!(a.held());
        assert!(!b.held());
        a.attempt().await;
        b.attempt().await;
        assert!(a.held() && !b.held(), "renewed, not stolen");
        a.resign().await;
        assert!(!a.held());
        b.attempt().await;
        assert!(b.held(), "a resigned lease is free at once");
        a.attempt().await;
        assert!(!a.held(), "a resigned node never leads again");
        b.set_eligible(false).await;
        assert!(!b.held());
    }

    #[tokio::test]
    async fn a_lease_stops_counting_before_redis_lets_it_go() {
        let key = key();
        let a = Lease::new(key.clone(), "node-a".into(), connection().await);
        a.set_eligible(true).await;
        a.attempt().await;
        assert!(a.held());
        let mut con = connection().await;
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .expect("PTTL");
        assert!(ttl > 2000 && ttl <= 3000, "{ttl}");
        let until = a.until_ms.load(Ordering::Acquire);
        assert!(until <= a.now_ms() + (LEASE - MARGIN).as_millis() as u64);
        a.resign().await;
    }

    fn bridge(url: &str) -> BridgeConfig {
        BridgeConfig {
            kind: crate::config::BridgeKind::Redis,
            url: url.into(),
            queue: None,
            topic: None,
            subject: None,
            channel: Some("orders".into()),
            site: "shop".into(),
            room: None,
            event: None,
            retain: false,
            if_changed: false,
        }
    }

    #[test]
    fn credentials_never_reach_the_key() {
        assert_eq!(
            without_credentials("redis://user:s3cret@host:6379/0"),
            "redis://host:6379/0"
        );
        assert_eq!(
            without_credentials("postgres://postgres@127.0.0.1/db?x=a@b"),
            "postgres://127.0.0.1/db?x=a@b"
        );
        assert_eq!(without_credentials("nats://host"), "nats://host");
        assert_eq!(without_credentials("not a url"), "not a url");
        assert_eq!(
            bridge_key(&bridge("redis://user:s3cret@host:6379/0")),
            bridge_key(&bridge("redis://host:6379/0")),
        );
    }

    #[test]
    fn each_bridge_has_its_own_key() {
        let key = bridge_key(&bridge("redis://host/0"));
        assert!(key.starts_with("herald:bridge:redis:") && key.ends_with(":leader"));
        assert_eq!(key.len(), "herald:bridge:redis::leader".len() + 16);
        let mut other = bridge("redis://host/0");
        other.channel = Some("invoices".into());
        assert_ne!(key, bridge_key(&other));
        other = bridge("redis://host/0");
        other.site = "blog".into();
        assert_ne!(key, bridge_key(&other));
        assert_ne!(key, bridge_key(&bridge("redis://other/0")));
        other = bridge("redis://host/0");
        other.kind = crate::config::BridgeKind::Postgres;
        assert!(bridge_key(&other).starts_with("herald:bridge:postgres:"));
    }

    #[tokio::test]
    async fn a_node_alone_always_leads() {
        let context = BridgeContext {
            node: "node-a".into(),
            redis_url: None,
            trust: crate::tls::Trust::system(),
            stop: Default::default(),
        };
        let leader = BridgeLeader::new(&bridge("redis://host/0"), &context)
            .await
            .expect("no Redis needed");
        assert!(leader.leads());
        leader.set_subscribed(false).await;
        assert_eq!(leader.state(), State::Up);
    }

    #[tokio::test]
    async fn one_node_of_a_cluster_leads_a_bridge_and_another_takes_over() {
        let mut config = bridge("redis://127.0.0.1:6379/");
        config.channel = Some(format!("lease-test-{}", crate::cluster::new_node_id()));
        let context = |node: &str| BridgeContext {
            node: node.into(),
            redis_url: Some("redis://127.0.0.1:6379/".into()),
            trust: crate::tls::Trust::system(),
            stop: Default::default(),
        };
        let a = BridgeLeader::new(&config, &context("node-a"))
            .await
            .expect("these tests need Redis on 127.0.0.1:6379 (bash scripts/services.sh)");
        let b = BridgeLeader::new(&config, &context("node-b"))
            .await
            .expect("Redis");
        assert_eq!(a.state(), State::Standby, "not subscribed yet");
        a.set_subscribed(true).await;
        b.set_subscribed(true).await;
        assert_eq!((a.state(), b.state()), (State::Up, State::Standby));
        a.set_subscribed(false).await;
        assert!(
            !a.leads(),
            "a node that may miss messages gives the lease up"
        );
        // b's renewal task takes the freed lease at its next attempt.
        tokio::time::timeout(RENEW_EVERY * 3, async {
            while !b.leads() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("b took over within a renewal");
        assert!(!a.leads());
        b.set_subscribed(false).await;
    }
}
