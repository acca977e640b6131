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

use std::sync::Arc;

use crate::config::{BridgeConfig, BridgeKind, Config};
use crate::publish::Publisher;

/// What a broker bridge needs to know of its node: whether it shares the broker with other nodes (then it
/// consumes so that the cluster gets each message once) and the Redis that elects a leader where the broker
/// cannot share.
#[derive(Debug, Clone)]
pub struct BridgeContext {
    pub node: Arc<str>,
    /// Set in a cluster.
    pub redis_url: Option<String>,
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
) -> Result<Option<emitter::Emitter>, emitter::EmitterError> {
    let server = &config.server;
    let (true, Some(url)) = (server.cluster.emitter, server.redis_url.as_deref()) else {
        return Ok(None);
    };
    let settings = emitter::EmitterConfig {
        prefix: server.cluster.emitter_prefix.clone(),
        max_bytes: server.limits.max_publish_bytes,
    };
    emitter::Emitter::start(publisher.clone(), url, settings)
        .await
        .map(Some)
}
