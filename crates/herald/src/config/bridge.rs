//! The broker bridges of the configuration (`bridges:`): where inbound messages come from (an AMQP queue, an
//! MQTT topic filter, a NATS subject, a Redis or Postgres channel), the site they publish to, and how a message
//! becomes a publish.

use serde::{Deserialize, Serialize};

/// A broker herald consumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeKind {
    /// RabbitMQ (AMQP 0-9-1): a queue, declared when missing; acked once published.
    Amqp,
    /// MQTT 3.1.1: a topic filter at QoS 1, PUBACKed once published (or rejected).
    Mqtt,
    /// NATS core: a subject (queue group `herald`, so a cluster gets each message once); at most once, as NATS
    /// core delivers.
    Nats,
    /// Redis pub/sub: a channel (on the cluster's bridge leader only).
    Redis,
    /// PostgreSQL `LISTEN`: a channel of `NOTIFY` (on the cluster's bridge leader only).
    Postgres,
}

impl BridgeKind {
    pub fn name(self) -> &'static str {
        match self {
            BridgeKind::Amqp => "amqp",
            BridgeKind::Mqtt => "mqtt",
            BridgeKind::Nats => "nats",
            BridgeKind::Redis => "redis",
            BridgeKind::Postgres => "postgres",
        }
    }

    /// The field that names what to consume, which this kind requires and no other kind takes.
    pub fn source_field(self) -> &'static str {
        match self {
            BridgeKind::Amqp => "queue",
            BridgeKind::Mqtt => "topic",
            BridgeKind::Nats => "subject",
            BridgeKind::Redis | BridgeKind::Postgres => "channel",
        }
    }
}

/// One inbound bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub kind: BridgeKind,
    /// The broker's URL (`amqp://`, `mqtt://`, `nats://`, `redis://`, `postgres://`); credentials in it are
    /// masked by `check-config` and never logged.
    pub url: String,
    /// AMQP: the queue to consume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// MQTT: the topic filter (`+` and `#` allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// NATS: the subject (`*` and `>` allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Redis and Postgres: the channel (Redis: a `*` makes it a `PSUBSCRIBE` pattern; Postgres: the exact,
    /// case-sensitive name `pg_notify` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The site every message publishes to.
    pub site: String,
    /// With `event`: each message's body (JSON when it parses, else a string) is the one argument of `event` in
    /// this room. `{N}` is the Nth level of the MQTT topic (the Nth token of the NATS subject, the Nth word of the
    /// AMQP routing key), from 0. Without both, a body is the v1 publish JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// With `room` and `event`: retain each message's value in the room (and skip unchanged ones with
    /// `if_changed`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_changed: bool,
}

impl BridgeConfig {
    /// What the bridge consumes: its queue, topic, subject or channel.
    pub fn source(&self) -> Option<&str> {
        match self.kind {
            BridgeKind::Amqp => self.queue.as_deref(),
            BridgeKind::Mqtt => self.topic.as_deref(),
            BridgeKind::Nats => self.subject.as_deref(),
            BridgeKind::Redis | BridgeKind::Postgres => self.channel.as_deref(),
        }
    }

    /// A name for logs and the status page, without the URL: `amqp herald.acme → acme`.
    pub fn label(&self) -> String {
        format!(
            "{} {} → {}",
            self.kind.name(),
            self.source().unwrap_or_default(),
            self.site
        )
    }

    /// The source fields that are set, by name.
    pub(crate) fn sources_set(&self) -> Vec<&'static str> {
        [
            ("queue", self.queue.is_some()),
            ("topic", self.topic.is_some()),
            ("subject", self.subject.is_some()),
            ("channel", self.channel.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}
