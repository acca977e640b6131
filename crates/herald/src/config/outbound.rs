//! Event routes that publish to a broker (`events.<name>.amqp`, `.mqtt`, `.nats`): where a client event goes,
//! and the placeholders (`{user}`, `{event}`, `{socket}`, `{site}`) its routing key, topic or subject holds.
//! `events/brokers/` runs them.

use serde::{Deserialize, Serialize};

/// RabbitMQ (AMQP 0-9-1): the event is published to `exchange` with `routing_key`, `mandatory` and persistent,
/// and the ack waits for the broker's publisher confirm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpRoute {
    /// `amqp://user:password@host:port/vhost`; masked by `check-config`, never logged.
    pub url: String,
    /// The exchange, declared (topic, durable) when missing, taken as it is otherwise. Default `""`, the
    /// default exchange, where the routing key names a queue.
    #[serde(default)]
    pub exchange: String,
    /// With placeholders; each fills exactly one word (no `.`, `*`, `#`).
    pub routing_key: String,
}

/// MQTT 3.1.1: the event is published at QoS 1 to `topic`, and the ack waits for the broker's PUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttRoute {
    /// `mqtt://` or `tcp://`, with `user:password@` when the broker asks; masked by `check-config`.
    pub url: String,
    /// With placeholders; each fills exactly one level (no `/`, `+`, `#`).
    pub topic: String,
}

/// NATS: the event is published to `subject`; the ack waits for JetStream's ack when a stream covers the
/// subject, else for the server to have it (a publish and a flush).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsRoute {
    /// `nats://`, with credentials when the server asks; masked by `check-config`.
    pub url: String,
    /// With placeholders; each fills exactly one token (no `.`, `*`, `>`).
    pub subject: String,
}

/// The broker kinds an event route may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokerKind {
    Amqp,
    Mqtt,
    Nats,
}

impl BrokerKind {
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Amqp => "amqp",
            BrokerKind::Mqtt => "mqtt",
            BrokerKind::Nats => "nats",
        }
    }

    /// The URL schemes herald connects with.
    pub fn schemes(self) -> &'static [&'static str] {
        match self {
            BrokerKind::Amqp => &["amqp"],
            BrokerKind::Mqtt => &["mqtt", "tcp"],
            BrokerKind::Nats => &["nats"],
        }
    }

    /// The field of the route that holds the template.
    pub fn target_field(self) -> &'static str {
        match self {
            BrokerKind::Amqp => "routing_key",
            BrokerKind::Mqtt => "topic",
            BrokerKind::Nats => "subject",
        }
    }

    /// Characters a placeholder's value must not hold: what would split the word, level or token it fills,
    /// or make it a wildcard.
    pub fn separators(self) -> &'static [char] {
        match self {
            BrokerKind::Amqp => &['.', '*', '#'],
            BrokerKind::Mqtt => &['/', '+', '#'],
            BrokerKind::Nats => &['.', '*', '>'],
        }
    }
}

/// One broker route, whichever its kind: the URL and the template of its routing key, topic or subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerTarget<'a> {
    pub kind: BrokerKind,
    pub url: &'a str,
    /// The routing key, topic or subject, with placeholders.
    pub template: &'a str,
    /// AMQP only: the exchange.
    pub exchange: &'a str,
}

impl super::EventRoute {
    /// The broker routes of this route that are set: one on a valid route, none on a webhook, relay or
    /// retained route.
    pub fn brokers(&self) -> Vec<BrokerTarget<'_>> {
        let mut set = Vec::new();
        if let Some(amqp) = &self.amqp {
            set.push(BrokerTarget {
                kind: BrokerKind::Amqp,
                url: &amqp.url,
                template: &amqp.routing_key,
                exchange: &amqp.exchange,
            });
        }
        if let Some(mqtt) = &self.mqtt {
            set.push(BrokerTarget {
                kind: BrokerKind::Mqtt,
                url: &mqtt.url,
                template: &mqtt.topic,
                exchange: "",
            });
        }
        if let Some(nats) = &self.nats {
            set.push(BrokerTarget {
                kind: BrokerKind::Nats,
                url: &nats.url,
                template: &nats.subject,
                exchange: "",
            });
        }
        set
    }

    /// The one broker this route publishes to, when it is a broker route.
    pub fn broker(&self) -> Option<BrokerTarget<'_>> {
        self.brokers().into_iter().next()
    }
}
