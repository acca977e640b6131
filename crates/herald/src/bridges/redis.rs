//! The Redis pub/sub bridge: a subscription to `channel` on the bridge's Redis (a pattern through `PSUBSCRIBE`
//! when the channel holds a `*`), each message handed to the bridge's `Inbound` with the channel's parts (split
//! on `:`) for the room and event templates.
//!
//! ```text
//! PUBLISH orders:42 <body> ─► every node's subscription ─► the bridge's leader only (lease.rs, in a cluster)
//!     ─► Inbound::handle(body, ["orders", "42"]) ─► Publisher::publish
//! ```
//!
//! Redis pub/sub has no ack and keeps nothing: a message is published, rejected or could not be published now
//! (`Retry`), and each outcome is only counted and logged. Every node of a cluster hears every message, so only
//! the holder of the bridge's lease (in the cluster's Redis, which may not be the bridge's) publishes it; the
//! others stay subscribed in standby and drop it, so one takes over within the lease's failover gap when the
//! leader goes. This module owns the subscription, its health check and reconnection.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use super::backoff::{redact, Backoff};
use super::inbound::Inbound;
use super::lease::{BridgeLeader, RENEW_EVERY};
use super::status::State;
use super::BridgeContext;
use crate::config::BridgeConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A subscribed connection reads nothing while the channel is quiet: a ping shows it still works.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a subscription could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedisBridgeError {
    /// The URL does not parse, or asks for what this build lacks (`rediss://`: no TLS).
    #[error("the bridge's Redis URL is not usable: {0}")]
    BadUrl(String),
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
    #[error("Redis did not answer the subscription in time")]
    Timeout,
    #[error("the Redis connection was lost")]
    Lost,
    #[error("Redis stopped answering pings")]
    Silent,
}

type Subscription = (PubSubSink, PubSubStream);

/// Runs the bridge for good: joins the cluster's lease, subscribes, hands the leader's messages to `inbound`,
/// and subscribes again with backoff whenever the connection breaks.
pub async fn run(bridge: BridgeConfig, inbound: Inbound, context: BridgeContext) {
    let status = &inbound.status;
    let client = match context.trust.redis_client(&bridge.url) {
        Ok(client) => client,
        Err(e) => {
            // Validation checks the scheme only; no retry makes a bad URL good.
            let e = RedisBridgeError::BadUrl(e.to_string());
            tracing::error!(bridge = %status.label, error = %redact(&e.to_string(), &bridge.url), "bridge: not started");
            status.set(State::Down, Some(redact(&e.to_string(), &bridge.url)));
            return;
        }
    };
    let channel = bridge.channel.clone().unwrap_or_default();
    let leader = BridgeLeader::join(&bridge, &context, status).await;
    let mut backoff = Backoff::default();
    loop {
        let stopped = match subscribe(&client, &channel).await {
            Ok(subscription) => {
                backoff.reset();
                leader.set_subscribed(true).await;
                status.set(leader.state(), None);
                tracing::info!(bridge = %status.label, "bridge: subscribed");
                let stopped = read(subscription, &inbound, &leader).await;
                // A node that may miss messages must not lead.
                leader.set_subscribed(false).await;
                stopped
            }
            Err(e) => e,
        };
        let reason = redact(&stopped.to_string(), &bridge.url);
        tracing::warn!(bridge = %status.label, error = %reason, "bridge: not subscribed; retrying");
        status.set(State::Down, Some(reason));
        backoff.wait().await;
    }
}

/// Whether `channel` is a pattern, for `PSUBSCRIBE`: herald takes a `*` as the sign (a `?` or `[` alone is part
/// of an exact channel's name).
pub fn is_pattern(channel: &str) -> bool {
    channel.contains('*')
}

/// A channel's parts, for the `{N}` of room and event templates: `orders:42` → `[orders, 42]`.
pub fn tokens(channel: &str) -> Vec<&str> {
    channel.split(':').collect()
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<Subscription, RedisBridgeError> {
    let open = async {
        let mut pubsub = client.get_async_pubsub().await?;
        if is_pattern(channel) {
            pubsub.psubscribe(channel).await?;
        } else {
            pubsub.subscribe(channel).await?;
        }
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(Ok(subscription)) => Ok(subscription),
        Ok(Err(e)) => Err(RedisBridgeError::Subscribe(e.to_string())),
        Err(_) => Err(RedisBridgeError::Timeout),
    }
}

/// Reads the subscription until the connection breaks: the leader publishes each message, a follower drops it;
/// the state follows the lease between messages.
async fn read(
    (mut sink, mut messages): Subscription,
    inbound: &Inbound,
    leader: &BridgeLeader,
) -> RedisBridgeError {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut lease = tokio::time::interval(RENEW_EVERY);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return RedisBridgeError::Lost;
                };
                if !leader.leads() {
                    // Another node publishes it.
                    continue;
                }
                let tokens = tokens(message.get_channel_name());
                inbound.handle(message.get_payload_bytes(), &tokens).await;
            }
            _ = ping.tick() => {
                if !matches!(tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await, Ok(Ok(_))) {
                    return RedisBridgeError::Silent;
                }
            }
            _ = lease.tick() => inbound.status.set(leader.state(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_split_on_colons_and_stars_make_patterns() {
        assert_eq!(tokens("orders:42:paid"), ["orders", "42", "paid"]);
        assert_eq!(tokens("orders"), ["orders"]);
        assert!(is_pattern("orders:*"));
        assert!(!is_pattern("orders:42"));
        assert!(!is_pattern("what?"));
    }
}
