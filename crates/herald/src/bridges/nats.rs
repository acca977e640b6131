//! The NATS bridge: a NATS core subscription (subject `subject`, wildcards allowed) in the queue group
//! `herald`, each message handed to the bridge's `Inbound` with the subject's tokens (split on `.`) for the
//! room and event templates.
//!
//! ```text
//! PUB sensors.42.temp  ─► NATS ─► one subscriber of queue group "herald" (one node of the cluster)
//!     ─► Inbound::handle(payload, ["sensors", "42", "temp"]) ─► Publisher::publish
//!     ─► a reply subject (request/reply)? answer {"ok":true} or {"error": reason}
//! ```
//!
//! Delivery is NATS core's: at most once. The queue group makes a cluster's nodes share the subject, so each
//! message reaches one node; a message published while no node is subscribed (or one herald could not publish,
//! `Retry`) is not delivered again, since NATS core keeps nothing. A publisher that must know uses request/reply
//! and reads the answer. The client (async-nats) reconnects by itself and restores the subscription; its
//! connection events drive the bridge's state. This module owns the connection, the subscription and the
//! answers; publishing is `Inbound`'s.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;

use super::backoff::{redact, Backoff};
use super::inbound::{Handled, Inbound};
use super::status::{BridgeStatus, State};
use super::BridgeContext;
use crate::config::BridgeConfig;

/// Every herald node subscribes in this queue group, so NATS hands each message to one of them.
pub const QUEUE_GROUP: &str = "herald";

/// Why a NATS session could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("cannot subscribe to the subject: {0}")]
    Subscribe(String),
}

/// Runs the bridge for good: connects (retrying with backoff until NATS first answers), subscribes, and hands
/// every message to `inbound`. async-nats reconnects by itself afterwards; if its client closes for good, the
/// bridge starts over.
pub async fn run(bridge: BridgeConfig, inbound: Inbound, context: BridgeContext) {
    let subject = bridge.subject.clone().unwrap_or_default();
    let mut backoff = Backoff::default();
    loop {
        match subscribe(&bridge.url, &subject, &inbound.status, &context).await {
            Ok((client, subscriber)) => {
                backoff.reset();
                inbound.status.set(State::Up, None);
                tracing::info!(bridge = %inbound.status.label, "bridge: consuming");
                consume(&client, subscriber, &inbound).await;
                tracing::warn!(bridge = %inbound.status.label, "bridge: the NATS client closed; starting over");
                inbound
                    .status
                    .set(State::Down, Some("the NATS client closed".into()));
            }
            Err(e) => {
                tracing::warn!(bridge = %inbound.status.label, error = %e, "bridge: cannot consume; retrying");
                inbound.status.set(State::Down, Some(e.to_string()));
            }
        }
        backoff.wait().await;
    }
}

/// A connected client and its queue subscription to `subject`.
async fn subscribe(
    url: &str,
    subject: &str,
    status: &Arc<BridgeStatus>,
    context: &BridgeContext,
) -> Result<(async_nats::Client, async_nats::Subscriber), NatsError> {
    let events = Arc::clone(status);
    let client = async_nats::ConnectOptions::new()
        .name(format!("herald {}", context.node))
        .event_callback(move |event| {
            let status = Arc::clone(&events);
            async move { on_event(&status, event) }
        })
        .connect(url)
        .await
        .map_err(|e| NatsError::Connect(redact(&e.to_string(), url)))?;
    let subscriber = client
        .queue_subscribe(subject.to_string(), QUEUE_GROUP.to_string())
        .await
        .map_err(|e| NatsError::Subscribe(redact(&e.to_string(), url)))?;
    // A round trip: the server has the subscription before the bridge counts itself up.
    client
        .flush()
        .await
        .map_err(|e| NatsError::Subscribe(redact(&e.to_string(), url)))?;
    Ok((client, subscriber))
}

/// Mirrors the client's connection events in the bridge's state: async-nats reconnects (and resubscribes) by
/// itself, so these are the only signs of an outage.
fn on_event(status: &BridgeStatus, event: async_nats::Event) {
    let label = &status.label;
    match event {
        async_nats::Event::Connected => {
            tracing::info!(bridge = %label, "bridge: connected to NATS");
            status.set(State::Up, None);
        }
        async_nats::Event::Disconnected => {
            tracing::warn!(bridge = %label, "bridge: disconnected from NATS; reconnecting");
            status.set(
                State::Down,
                Some("disconnected from NATS; reconnecting".into()),
            );
        }
        async_nats::Event::Closed => status.set(State::Down, Some("the NATS client closed".into())),
        async_nats::Event::SlowConsumer(_) => {
            // The client's buffer overflowed: NATS core drops what does not fit, at most once.
            tracing::warn!(bridge = %label, "bridge: too slow for NATS; messages were dropped");
            status.set(
                status.state(),
                Some("too slow for NATS: messages were dropped".into()),
            );
        }
        async_nats::Event::ServerError(e) => {
            tracing::warn!(bridge = %label, error = %e, "bridge: NATS reported an error");
            status.set(status.state(), Some(format!("NATS: {e}")));
        }
        async_nats::Event::ClientError(e) => {
            tracing::warn!(bridge = %label, error = %e, "bridge: NATS client error");
            status.set(status.state(), Some(format!("NATS client: {e}")));
        }
        async_nats::Event::LameDuckMode | async_nats::Event::Draining => {
            tracing::info!(bridge = %label, event = %event, "bridge: the NATS server is going away");
        }
    }
}

/// Hands each message to `inbound`, in order, and answers those that ask for an answer. Returns when the
/// subscription ends (the client closed).
async fn consume(
    client: &async_nats::Client,
    mut subscriber: async_nats::Subscriber,
    inbound: &Inbound,
) {
    while let Some(message) = subscriber.next().await {
        let tokens = tokens(message.subject.as_str());
        let handled = inbound.handle(&message.payload, &tokens).await;
        let Some(reply) = message.reply else {
            continue;
        };
        if let Err(e) = client.publish(reply, answer(&handled)).await {
            tracing::warn!(bridge = %inbound.status.label, error = %e, "bridge: cannot answer a NATS request");
        }
    }
}

/// A subject's tokens, for the `{N}` of room and event templates: `sensors.42.temp` → `[sensors, 42, temp]`.
pub fn tokens(subject: &str) -> Vec<&str> {
    subject.split('.').collect()
}

/// The answer to a request: `{"ok":true}` once published, else `{"error": reason}` (with `"retry": true` when
/// herald could not publish it now and the same request may work later).
pub fn answer(handled: &Handled) -> Bytes {
    let body = match handled {
        Handled::Published => json!({"ok": true}),
        Handled::Rejected(reason) => json!({"error": reason}),
        Handled::Retry(reason) => json!({"error": reason, "retry": true}),
    };
    Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_split_on_dots() {
        assert_eq!(tokens("sensors.42.temp"), ["sensors", "42", "temp"]);
        assert_eq!(tokens("one"), ["one"]);
    }

    #[test]
    fn requests_get_an_answer_for_each_outcome() {
        assert_eq!(answer(&Handled::Published), r#"{"ok":true}"#);
        assert_eq!(
            answer(&Handled::Rejected("no event".into())),
            r#"{"error":"no event"}"#
        );
        assert_eq!(
            answer(&Handled::Retry("the store failed".into())),
            r#"{"error":"the store failed","retry":true}"#
        );
    }
}
