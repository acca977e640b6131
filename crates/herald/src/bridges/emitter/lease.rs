//! The emitter's leader lease: one key in Redis that names the one node of the cluster that hands emitter
//! broadcasts to the publish pipeline. A node takes it with `SET NX PX`, keeps it by renewing it every
//! [`RENEW_EVERY`], and counts itself the leader only until [`LEASE`] − [`MARGIN`] after it *sent* its last
//! successful renewal, so it stops before Redis lets the key lapse and another node can take it: two nodes are
//! never leaders at once (as long as their clocks run at nearly the same rate).
//!
//! The failover gap: when a leader dies, its key lives out its lease (at most [`LEASE`]) and the next node takes
//! it at its next attempt (at most [`RENEW_EVERY`] later); the emitter's messages published meanwhile reach no
//! client (Redis pub/sub keeps nothing). A node that resigns (its subscription broke, or it drains) deletes the
//! key at once, so another takes over within [`RENEW_EVERY`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Script;

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
                Ok(_) => tracing::info!("emitter: this node gave up leading"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "emitter: gave up leading, but could not free the lease (it lapses by itself)"
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
                    tracing::info!(
                        "emitter: this node now leads (it hands emitter broadcasts to the publish pipeline)"
                    );
                }
            }
            Ok(_) => {
                self.until_ms.store(0, Ordering::Release);
                if was_held {
                    tracing::warn!("emitter: another node took the lease");
                }
            }
            // The lease lapses by itself here before it does in Redis.
            Err(e) => tracing::warn!(error = %e, "emitter: cannot renew the leader lease"),
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
        format!(
            "herald:test:emitter-lease:{}",
            crate::cluster::new_node_id()
        )
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
}
