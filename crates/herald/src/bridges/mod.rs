//! Bridges: other publishers' protocols that herald speaks, each feeding the one publish pipeline
//! (`publish::Publisher`). `emitter` is the socket.io Redis emitter's. The broker bridges of `bridges:` (`amqp`,
//! `mqtt`, `nats`, `redis`, `postgres`) share `inbound` (a message to a publish, and what to tell the broker),
//! `status` (their state for `/api/v1/status`) and `backoff` (waits between attempts, errors without the URL);
//! `lease` elects the one node of a cluster that publishes what every node hears (the emitter's broadcasts, a
//! Redis or Postgres bridge's messages).

pub mod amqp;
pub mod backoff;
pub mod emitter;
pub mod inbound;
pub mod lease;
pub mod mqtt;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod status;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{BridgeConfig, BridgeKind, Config};
use crate::publish::Publisher;
use crate::tls::Trust;

/// What a broker bridge needs to know of its node: whether it shares the broker with other nodes (then it
/// consumes so that the cluster gets each message once) and the Redis that elects a leader where the broker
/// cannot share.
#[derive(Debug, Clone)]
pub struct BridgeContext {
    pub node: Arc<str>,
    /// Set in a cluster.
    pub redis_url: Option<String>,
    /// The roots a bridge's `rediss://` connections trust.
    pub trust: Trust,
    /// Says when the process stops.
    pub stop: Stop,
}

/// The process is stopping: a bridge that would leave something behind on its broker (the MQTT bridge's
/// persistent session) removes it, holding the stop until it is done. Cheap to clone (an `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    stopping: AtomicBool,
    requested: Notify,
    /// Bridges still cleaning up (`Holding`s alive).
    holding: AtomicUsize,
    released: Notify,
}

/// A bridge's hold on the stop: `Stop::stop` waits for it to be dropped.
#[derive(Debug)]
pub struct Holding(Stop);

impl Drop for Holding {
    fn drop(&mut self) {
        if self.0 .0.holding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .0.released.notify_waiters();
        }
    }
}

impl Stop {
    /// Resolves once the stop is requested.
    pub async fn requested(&self) {
        let inner = &self.0;
        loop {
            let notified = inner.requested.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if inner.stopping.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Holds the stop until the returned guard is dropped: for a bridge with something to clean up.
    pub fn hold(&self) -> Holding {
        self.0.holding.fetch_add(1, Ordering::AcqRel);
        Holding(self.clone())
    }

    /// Asks every bridge to stop, and waits (at most `within`) for those that clean up.
    pub async fn stop(&self, within: Duration) {
        let inner = &self.0;
        inner.stopping.store(true, Ordering::Release);
        inner.requested.notify_waiters();
        let released = async {
            loop {
                let notified = inner.released.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if inner.holding.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(within, released).await.is_err() {
            tracing::warn!(
                bridges = inner.holding.load(Ordering::Acquire),
                "bridges did not finish stopping in time"
            );
        }
    }
}

/// Starts every broker bridge of `config`, each on its own task that reconnects with backoff; answers their
/// states.
pub fn start_inbound(
    config: &Config,
    publisher: &Publisher,
    context: &BridgeContext,
) -> Vec<Arc<status::BridgeStatus>> {
    let mut states = Vec::with_capacity(config.bridges.len());
    for bridge in &config.bridges {
        let status = status::BridgeStatus::new(bridge.label(), bridge.site.clone());
        let max_bytes = config.server.limits.max_publish_bytes;
        match inbound::Inbound::new(bridge, publisher.clone(), max_bytes, Arc::clone(&status)) {
            Ok(inbound) => spawn(bridge.clone(), inbound, context.clone()),
            // Validation parsed the same templates: this cannot happen with a validated config.
            Err(e) => status.set(status::State::Down, Some(e)),
        }
        states.push(status);
    }
    states
}

/// Runs one bridge of its kind.
fn spawn(bridge: BridgeConfig, inbound: inbound::Inbound, context: BridgeContext) {
    match bridge.kind {
        BridgeKind::Amqp => amqp::spawn(bridge, inbound, context),
        BridgeKind::Mqtt => mqtt::spawn(bridge, inbound, context),
        BridgeKind::Nats => {
            tokio::spawn(nats::run(bridge, inbound, context));
        }
        BridgeKind::Redis => {
            tokio::spawn(redis::run(bridge, inbound, context));
        }
        BridgeKind::Postgres => {
            tokio::spawn(postgres::run(bridge, inbound, context));
        }
    }
}

/// Starts the bridges `config` turns on: the socket.io emitter when Redis is configured and `cluster.emitter`
/// is on (the default).
pub async fn start(
    config: &Config,
    publisher: &Publisher,
    trust: &Trust,
) -> Result<Option<emitter::Emitter>, emitter::EmitterError> {
    let server = &config.server;
    let (true, Some(url)) = (server.cluster.emitter, server.redis_url.as_deref()) else {
        return Ok(None);
    };
    let settings = emitter::EmitterConfig {
        prefix: server.cluster.emitter_prefix.clone(),
        max_bytes: server.limits.max_publish_bytes,
    };
    emitter::Emitter::start(publisher.clone(), url, trust, settings)
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stop_wakes_the_bridges_and_waits_for_those_that_hold_it() {
        let stop = Stop::default();
        let holding = stop.hold();
        let bridge = {
            let stop = stop.clone();
            tokio::spawn(async move {
                stop.requested().await;
                // Cleaning up on the broker.
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(holding);
            })
        };
        let started = tokio::time::Instant::now();
        stop.stop(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        bridge.await.expect("the bridge task");
        // Requested for good: a bridge that asks later is told at once.
        stop.requested().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_waits_no_longer_than_it_is_given() {
        let stop = Stop::default();
        let _stuck = stop.hold();
        let started = tokio::time::Instant::now();
        stop.stop(Duration::from_secs(2)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Nothing held: no wait.
        let free = Stop::default();
        free.stop(Duration::from_secs(2)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
