//! Event routes to RabbitMQ (lapin): one connection per URL and one confirm-mode channel on it, shared by every
//! route naming the URL.
//!
//! ```text
//! first event ─► connect (the bridges' `connect`) ─► channel ─► declare the routes' exchanges ─► confirm.select
//!   each event ─► basic.publish(exchange, routing key, mandatory, persistent, application/json)
//!     ─► the broker's confirm: ack ─► queued; ack with the message returned (no queue bound) or nack ─► refused
//!   channel closed by the broker ─► a new channel on the same connection
//!   connection lost ─► down ─► wait (0.5 s doubling to 10 s) ─► connect again
//! ```
//!
//! An exchange is declared topic and durable when missing, and taken as it is when it exists otherwise (a
//! refused declaration closes the channel, so a passive one on a new channel checks it is there). An exchange
//! that neither declaration finds makes its routes' events fail ("unavailable") without touching the channel,
//! since a publish to it would close the channel for every route; the next channel declares it again.
//!
//! A publish runs on its own task, so a client's timeout never cuts a `basic.publish` in the middle (lapin
//! numbers confirms by publish); the task holds the event's place among `MAX_WAITING` until the broker answers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::link::{label, Link};
use super::Failure;
use crate::bridges::backoff::{redact, Backoff};
use crate::bridges::status::BridgeStatus;

/// How often a link checks that its connection and channel are alive, besides a failed publish telling it.
const WATCH: Duration = Duration::from_millis(500);

/// A channel in confirm mode, and the exchanges it could not find or declare.
struct Opened {
    channel: Channel,
    missing: BTreeSet<String>,
}

/// The connection to one RabbitMQ URL.
pub struct AmqpLink {
    link: Link<Arc<Opened>>,
    url: String,
    /// `None` when the URL does not parse (validation checked the scheme and host only).
    uri: Option<AMQPUri>,
    /// The exchanges its routes name (`""`, the default exchange, needs no declaration).
    exchanges: Mutex<BTreeSet<String>>,
    /// A publish saw the channel or connection fail.
    broken: Notify,
}

impl AmqpLink {
    pub fn new(url: &str) -> Arc<AmqpLink> {
        Arc::new(AmqpLink {
            link: Link::new(label("amqp", url)),
            url: url.to_string(),
            uri: url.parse().ok(),
            exchanges: Mutex::new(BTreeSet::new()),
            broken: Notify::new(),
        })
    }

    /// A route on this link publishes to `exchange` and shows the link's state in `status`.
    pub fn add_route(&self, exchange: &str, status: Arc<BridgeStatus>) {
        if !exchange.is_empty() {
            self.exchanges.lock().insert(exchange.to_string());
        }
        self.link.add_status(status);
    }

    /// Publishes `body` and waits for the broker's confirm until `deadline`.
    pub async fn publish(
        self: &Arc<Self>,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let permit = self.link.permit()?;
        self.link
            .start_once(|| drop(tokio::spawn(Arc::clone(self).run())));
        let opened = self.link.ready(deadline).await?;
        if opened.missing.contains(exchange) {
            return Err(Failure::Unavailable);
        }
        let this = Arc::clone(self);
        let (exchange, routing_key) = (exchange.to_string(), routing_key.to_string());
        let publishing = tokio::spawn(async move {
            let _permit = permit;
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_app_id("herald".into());
            let mandatory = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            let confirm = opened
                .channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    mandatory,
                    &body,
                    properties,
                )
                .await;
            let confirmed = match confirm {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            };
            this.answer(confirmed)
        });
        match tokio::time::timeout_at(deadline, publishing).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Failure::Unavailable),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// What the broker's confirm means for the client.
    fn answer(&self, confirmed: lapin::Result<Confirmation>) -> Result<(), Failure> {
        match confirmed {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(Failure::Refused(
                "the broker could not route the event: no queue is bound for its routing key"
                    .into(),
            )),
            Ok(Confirmation::Nack(_)) => {
                Err(Failure::Refused("the broker refused the event".into()))
            }
            Ok(Confirmation::NotRequested) => {
                tracing::debug!(broker = %self.link.label, "event routes: a publish was not in confirm mode");
                Err(Failure::Unavailable)
            }
            Err(e) => {
                tracing::debug!(broker = %self.link.label, error = %redact(&e.to_string(), &self.url), "event routes: a publish failed");
                self.broken.notify_one();
                Err(Failure::Unavailable)
            }
        }
    }

    /// Connects, keeps a channel open while the connection lives, waits, and again, for as long as the
    /// process runs.
    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            self.link.connecting();
            let reason = self.session(&mut backoff).await;
            self.link.down(&reason);
            backoff.wait().await;
        }
    }

    /// One connection, until it is lost (the reason).
    async fn session(&self, backoff: &mut Backoff) -> String {
        let Some(uri) = &self.uri else {
            return "the url is not a valid AMQP URL".into();
        };
        let connection =
            match crate::bridges::amqp::connect(uri, &self.url, "herald event routes").await {
                Ok(connection) => connection,
                Err(e) => return e.to_string(),
            };
        loop {
            let opened = match self.open(&connection).await {
                Ok(opened) => Arc::new(opened),
                Err(e) => return format!("cannot open a channel: {}", self.reason(&e)),
            };
            self.link.up(Arc::clone(&opened));
            backoff.reset();
            loop {
                tokio::select! {
                    () = self.broken.notified() => {}
                    () = tokio::time::sleep(WATCH) => {}
                }
                if !connection.status().connected() {
                    return "the connection was lost".into();
                }
                if !opened.channel.status().connected() {
                    break;
                }
            }
            tracing::debug!(broker = %self.link.label, "event routes: the broker closed the channel; opening another");
            self.link.connecting();
        }
    }

    /// A channel in confirm mode on which every exchange of the routes exists, or is known missing.
    async fn open(&self, connection: &Connection) -> lapin::Result<Opened> {
        let exchanges = self.exchanges.lock().clone();
        let mut channel = connection.create_channel().await?;
        let mut missing = BTreeSet::new();
        for exchange in exchanges {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            let declared = channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await;
            let Err(refused) = declared else { continue };
            if !refused.is_amqp_soft_error() {
                return Err(refused);
            }
            // The refusal closed the channel: check on a new one that the exchange is there as it is.
            channel = connection.create_channel().await?;
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            let found = channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    passive,
                    FieldTable::default(),
                )
                .await;
            if let Err(e) = found {
                tracing::warn!(
                    broker = %self.link.label,
                    exchange,
                    error = %self.reason(&refused),
                    "event routes: the exchange cannot be declared and does not exist; its events fail"
                );
                if !e.is_amqp_soft_error() {
                    return Err(e);
                }
                missing.insert(exchange);
                channel = connection.create_channel().await?;
            }
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Opened { channel, missing })
    }

    fn reason(&self, e: &lapin::Error) -> String {
        redact(&e.to_string(), &self.url)
    }
}
