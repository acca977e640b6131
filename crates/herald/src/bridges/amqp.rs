//! The AMQP 0-9-1 bridge (RabbitMQ): consumes one queue, declared durable when missing, and hands each message
//! to the bridge's `Inbound`, one at a time in the queue's order, acking it only once it is published.
//!
//! ```text
//! connect ─► declare the queue (or take it as it is) ─► qos 64 ─► consume ─► status up
//!   each delivery ─► Inbound::handle(body, routing key split on '.')
//!     Published ─► ack       Rejected ─► reject, no requeue (the queue's dead-letter exchange, if any)
//!     Retry ─► wait (0.5 s doubling to 10 s), nack with requeue, close the channel, consume again
//!   connection or channel lost ─► status down ─► wait (0.5 s doubling to 10 s) ─► connect again
//! ```
//!
//! A cluster needs nothing more: every node consumes the same queue and RabbitMQ hands each message to one
//! consumer. A message herald could not take (its store failed) stays with the broker, so another node or a
//! later attempt publishes it; one sent while herald was down waits in the durable queue.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};

use super::backoff::{redact, Backoff};
use super::inbound::{Handled, Inbound};
use super::status::State;
use super::BridgeContext;
use crate::config::BridgeConfig;

/// Deliveries RabbitMQ may send ahead of the acks: enough to keep the pipe full while one is published.
const PREFETCH: u16 = 64;
/// A broker that accepts the TCP connection but not the AMQP handshake in this time is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a bridge's connection ended.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The URL is not quoted: it may hold a password.
    #[error("the url is not a valid AMQP URL")]
    BadUrl,
    #[error("the bridge has no queue")]
    NoQueue,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the broker did not complete the connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("cannot use queue '{queue}': {reason}")]
    Queue { queue: String, reason: String },
    #[error("cannot consume: {0}")]
    Consume(String),
    #[error("the connection was lost: {0}")]
    Lost(String),
    #[error("the broker cancelled the consumer (the queue was deleted?)")]
    Cancelled,
}

/// What one bridge connects to, read once from its configuration.
struct Settings {
    uri: AMQPUri,
    url: String,
    queue: String,
    /// `herald-<node>-<random>`: tells the nodes' consumers apart in the RabbitMQ management UI.
    tag: String,
}

impl Settings {
    fn new(bridge: &BridgeConfig, context: &BridgeContext) -> Result<Settings, AmqpError> {
        let queue = bridge.queue.clone().ok_or(AmqpError::NoQueue)?;
        // lapin's parse error quotes the URL: say only that it is wrong.
        let uri = bridge.url.parse().map_err(|_| AmqpError::BadUrl)?;
        Ok(Settings {
            uri,
            url: bridge.url.clone(),
            queue,
            tag: format!("herald-{}-{:06x}", context.node, rand::random::<u32>() >> 8),
        })
    }

    /// A lapin error as text, without the URL or its password.
    fn reason(&self, e: &lapin::Error) -> String {
        redact(&e.to_string(), &self.url)
    }
}

/// Starts the bridge on its own task: it runs until the process ends, reconnecting with backoff.
pub fn spawn(bridge: BridgeConfig, inbound: Inbound, context: BridgeContext) {
    tokio::spawn(async move {
        match Settings::new(&bridge, &context) {
            Ok(settings) => run(settings, inbound).await,
            // Validation checked the scheme and the queue; a URL lapin cannot read still ends here.
            Err(e) => inbound.status.set(State::Down, Some(e.to_string())),
        }
    });
}

/// Connects, consumes until the connection fails, waits, and again.
async fn run(settings: Settings, inbound: Inbound) {
    let label = inbound.status.label.clone();
    let mut reconnect = Backoff::default();
    // Kept across connections: a store that keeps failing is not hammered after each reconnection.
    let mut retry = Backoff::default();
    loop {
        inbound.status.set(State::Connecting, None);
        let error = session(&settings, &inbound, &mut reconnect, &mut retry).await;
        let wait = reconnect.next_wait();
        tracing::warn!(bridge = %label, error = %error, retry_in = ?wait, "amqp bridge: disconnected");
        inbound.status.set(State::Down, Some(error.to_string()));
        tokio::time::sleep(wait).await;
    }
}

/// One connection: consumes on a channel, and on a fresh one after each retry, until something fails.
async fn session(
    settings: &Settings,
    inbound: &Inbound,
    reconnect: &mut Backoff,
    retry: &mut Backoff,
) -> AmqpError {
    let connection = match connect(&settings.uri, &settings.url, "herald").await {
        Ok(connection) => connection,
        Err(e) => return e,
    };
    loop {
        let (channel, consumer) = match open(settings, &connection).await {
            Ok(open) => open,
            Err(e) => return e,
        };
        inbound.status.set(State::Up, None);
        reconnect.reset();
        if let Err(e) = consume(settings, inbound, consumer, retry).await {
            return e;
        }
        // Closing the channel requeues what it still holds (the prefetched deliveries after the one to retry)
        // in their places, so the queue's order survives the retry.
        if let Err(e) = channel.close(200, "herald retries a message".into()).await {
            return AmqpError::Lost(settings.reason(&e));
        }
    }
}

/// A connection to `uri` (read from `url`, which errors leave out) named `name` in the management UI, within
/// `CONNECT_TIMEOUT`. The event routes to RabbitMQ connect with it too.
pub(crate) async fn connect(uri: &AMQPUri, url: &str, name: &str) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = Connection::connect_uri(uri.clone(), properties);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(AmqpError::Connect(redact(&e.to_string(), url))),
        Err(_) => Err(AmqpError::ConnectTimeout(CONNECT_TIMEOUT)),
    }
}

/// A channel consuming the queue, declared first.
async fn open(
    settings: &Settings,
    connection: &Connection,
) -> Result<(Channel, Consumer), AmqpError> {
    let queue_error = |e: &lapin::Error| AmqpError::Queue {
        queue: settings.queue.clone(),
        reason: settings.reason(e),
    };
    let channel = declare(settings, connection).await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| queue_error(&e))?;
    let consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            settings.tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| AmqpError::Consume(settings.reason(&e)))?;
    Ok((channel, consumer))
}

/// A channel on which the queue exists: declared durable when missing; one declared otherwise (a dead-letter
/// exchange, a type, a TTL) or by an operator herald may not configure makes RabbitMQ refuse the declaration and
/// close that channel, so a passive declaration on a new one checks it is there and takes it as it is.
async fn declare(settings: &Settings, connection: &Connection) -> Result<Channel, AmqpError> {
    let queue_error = |e: &lapin::Error| AmqpError::Queue {
        queue: settings.queue.clone(),
        reason: settings.reason(e),
    };
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::Lost(settings.reason(&e)))?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let refused = match channel
        .queue_declare(
            settings.queue.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await
    {
        Ok(_) => return Ok(channel),
        Err(e) if e.is_amqp_soft_error() => e,
        Err(e) => return Err(queue_error(&e)),
    };
    tracing::debug!(queue = %settings.queue, reason = %settings.reason(&refused), "amqp bridge: the queue exists as declared elsewhere");
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| AmqpError::Lost(settings.reason(&e)))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            settings.queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .map_err(|e| queue_error(&e))?;
    Ok(channel)
}

/// Handles deliveries in order until one must be retried (`Ok`, after nacking it) or the channel fails.
async fn consume(
    settings: &Settings,
    inbound: &Inbound,
    mut consumer: Consumer,
    retry: &mut Backoff,
) -> Result<(), AmqpError> {
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| AmqpError::Lost(settings.reason(&e)))?;
        let answered = match inbound.handle(&delivery.data, &tokens(&delivery)).await {
            Handled::Published => {
                retry.reset();
                delivery.ack(Default::default()).await
            }
            Handled::Rejected(_) => {
                // Dead-lettered when the queue has a dead-letter exchange, dropped otherwise: it can never be
                // published, and requeueing it would block the queue.
                delivery.reject(BasicRejectOptions { requeue: false }).await
            }
            Handled::Retry(_) => {
                // Held meanwhile, so a store that is down is not asked again at once (nor by another node).
                retry.wait().await;
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                return delivery
                    .nack(requeue)
                    .await
                    .map(|_| ())
                    .map_err(|e| AmqpError::Lost(settings.reason(&e)));
            }
        };
        answered.map_err(|e| AmqpError::Lost(settings.reason(&e)))?;
    }
    Err(AmqpError::Cancelled)
}

/// The words of a delivery's routing key (`pomodoro.desk.state`), for the `{N}` of the room and event.
fn tokens(delivery: &Delivery) -> Vec<&str> {
    routing_tokens(delivery.routing_key.as_str())
}

fn routing_tokens(routing_key: &str) -> Vec<&str> {
    routing_key.split('.').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> BridgeContext {
        BridgeContext {
            node: "node0001".into(),
            redis_url: None,
            trust: crate::tls::Trust::system(),
            stop: Default::default(),
        }
    }

    fn bridge(url: &str, queue: Option<&str>) -> BridgeConfig {
        BridgeConfig {
            kind: crate::config::BridgeKind::Amqp,
            url: url.into(),
            queue: queue.map(str::to_string),
            topic: None,
            subject: None,
            channel: None,
            site: "acme".into(),
            room: None,
            event: None,
            retain: false,
            if_changed: false,
        }
    }

    #[test]
    fn routing_keys_split_on_dots() {
        assert_eq!(
            routing_tokens("pomodoro.desk.state"),
            ["pomodoro", "desk", "state"]
        );
        assert_eq!(routing_tokens("queue"), ["queue"]);
    }

    #[test]
    fn settings_hide_a_bad_url_and_name_the_consumer_by_node() {
        let secret = "amqp://herald:hunter2@[bad";
        let error = Settings::new(&bridge(secret, Some("q")), &context())
            .err()
            .expect("a bad URL");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let settings = Settings::new(
            &bridge("amqp://guest:guest@127.0.0.1:5672/%2f", Some("q")),
            &context(),
        )
        .expect("a good URL");
        assert!(
            settings.tag.starts_with("herald-node0001-"),
            "{}",
            settings.tag
        );
        assert!(matches!(
            Settings::new(&bridge("amqp://127.0.0.1", None), &context()),
            Err(AmqpError::NoQueue)
        ));
    }
}
