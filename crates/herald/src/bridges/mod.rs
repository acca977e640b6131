//! Bridges: other publishers' protocols that herald speaks, each feeding the one publish pipeline
//! (`publish::Publisher`). `emitter` is the socket.io Redis emitter's; the broker bridges of `bridges:` (`amqp`,
//! `mqtt`) share `inbound` (a message to a publish, and what to tell the broker), `status` (their state for
//! `/api/v1/status`) and `backoff` (waits between attempts, errors without the URL).

pub mod amqp;
pub mod backoff;
pub mod emitter;
pub mod inbound;
pub mod mqtt;
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
        _ => {
            // BRANCH PLACEHOLDER: each kind's module replaces its arm; this never lands on main.
            let _ = context;
            inbound.status.set(
                status::State::Down,
                Some(format!("{} bridges are not built yet", bridge.kind.name())),
            );
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
