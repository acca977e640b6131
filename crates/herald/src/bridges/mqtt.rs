//! The MQTT 3.1.1 bridge: subscribes to one topic filter at QoS 1 and hands each message to the bridge's
//! `Inbound`, one at a time in arrival order, sending its PUBACK only once herald is done with it.
//!
//! ```text
//! reader task: EventLoop::poll ─ CONNACK ─► SUBSCRIBE <filter> QoS 1 ─ SUBACK ─► status up
//!                              ─ PUBLISH ─► the worker's queue
//!                              ─ error   ─► status down, wait (0.5 s doubling to 10 s), a new connection
//! worker task: Inbound::handle(payload, topic levels)
//!     Published or Rejected ─► PUBACK (a bad message must not come back)
//!     Retry ─► wait (0.5 s doubling to 10 s) and publish the same message again, its PUBACK held
//! ```
//!
//! Sessions are clean, with a fresh client id per connection (`herald-<node>-<random>`). A persistent session
//! (clean session off) would keep QoS 1 messages while herald is away, but only for a client id that is the
//! same after a restart and used by one live client at a time; herald's node ids are new at each start, so
//! such sessions would be left behind on the broker, each queueing every message of the filter (and, in a
//! shared subscription, taking their turn at messages nobody reads). So a message sent while no herald is
//! connected is not delivered, except a retained MQTT message, which the broker sends on each subscription.
//!
//! For the same reason a message to retry is not left to the broker: a clean session's unacknowledged messages
//! are dropped with the connection, not redelivered. The worker keeps it and tries again with backoff, so its
//! order is kept and nothing is lost while herald runs.
//!
//! In a cluster every node subscribes to the shared subscription `$share/herald/<filter>`, and the broker hands
//! each message to one of them (MQTT 5, and Mosquitto 2 for 3.1.1 clients too).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

use super::backoff::{percent_decode, redact, Backoff};
use super::inbound::{Handled, Inbound};
use super::status::State;
use super::BridgeContext;
use crate::config::BridgeConfig;

/// The broker is pinged after this long without traffic, and drops herald after one and a half times it.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Messages read ahead of the worker. QoS 1 deliveries are also held back by the broker's in-flight window
/// (Mosquitto: 20); beyond this the reader stops reading, and TCP holds the broker back.
const QUEUE: usize = 64;
/// Requests to the event loop: the worker's PUBACKs and the subscription. Far above what the in-flight window
/// lets pile up, so the worker's `ack` does not wait on a reader that waits on the worker.
const REQUESTS: usize = 1024;
/// A packet's topic and headers, beyond the body limit: a larger packet drops the connection, so a body just
/// over `max_publish_bytes` is rejected (and acknowledged) rather than looping.
const PACKET_OVERHEAD: usize = 64 * 1024;
/// The shared subscription group every node joins.
const SHARE_GROUP: &str = "herald";

/// Why a bridge's connection ended.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The URL is not quoted: it may hold a password.
    #[error("the url is not a valid MQTT URL: {0}")]
    BadUrl(&'static str),
    #[error("the bridge has no topic")]
    NoTopic,
    #[error("TLS: no root certificate could be loaded")]
    NoRootCertificates,
    #[error("{0}")]
    Connection(String),
    #[error("the broker refused the subscription to '{0}'")]
    Refused(String),
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
}

/// What one bridge connects to, read once from its configuration.
struct Settings {
    options: MqttOptions,
    url: String,
    /// The topic filter, under `$share/herald/` in a cluster.
    filter: String,
    node: Arc<str>,
}

impl Settings {
    fn new(
        bridge: &BridgeConfig,
        context: &BridgeContext,
        max_bytes: usize,
    ) -> Result<Settings, MqttError> {
        let topic = bridge.topic.as_deref().ok_or(MqttError::NoTopic)?;
        let mut options = options(&bridge.url)?;
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_manual_acks(true)
            .set_max_packet_size(max_bytes.saturating_add(PACKET_OVERHEAD), PACKET_OVERHEAD);
        Ok(Settings {
            options,
            url: bridge.url.clone(),
            filter: subscription_filter(topic, context.redis_url.is_some()),
            node: Arc::clone(&context.node),
        })
    }

    /// The options of a new connection, with a client id of its own: a clean session ends with its connection,
    /// and a fresh id keeps a late-closing old connection from being taken for this one.
    fn connection(&self) -> MqttOptions {
        let mut options = self.options.clone();
        options.set_client_id(client_id(&self.node));
        options
    }

    /// A connection error as text, without the URL or its password.
    fn reason(&self, e: &ConnectionError) -> String {
        redact(&e.to_string(), &self.url)
    }
}

/// `herald-<node>-<6 hex>`: 22 characters, within the 23 every MQTT 3.1.1 broker must accept.
pub(crate) fn client_id(node: &str) -> String {
    format!("herald-{node}-{:06x}", rand::random::<u32>() >> 8)
}

/// The filter to subscribe to: shared by the nodes of a cluster, so each message reaches one of them.
fn subscription_filter(topic: &str, cluster: bool) -> String {
    if cluster {
        format!("$share/{SHARE_GROUP}/{topic}")
    } else {
        topic.to_string()
    }
}

/// Host, port, transport and credentials of an `mqtt://`, `tcp://` or `mqtts://` URL (default ports 1883 and
/// 8883); the client id is set per connection. The event routes to MQTT read their URLs with it too.
pub(crate) fn options(url: &str) -> Result<MqttOptions, MqttError> {
    let parsed = url::Url::parse(url).map_err(|_| MqttError::BadUrl("it does not parse"))?;
    let (transport, default_port) = match parsed.scheme() {
        "mqtt" | "tcp" => (Transport::Tcp, 1883),
        "mqtts" => (Transport::Tls(tls()?), 8883),
        _ => return Err(MqttError::BadUrl("the scheme must be mqtt, tcp or mqtts")),
    };
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(MqttError::BadUrl("it has no host"))?;
    // `[::1]` is a URL's spelling; the socket wants the bare address.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut options = MqttOptions::new("herald", host, parsed.port().unwrap_or(default_port));
    options.set_transport(transport);
    if !parsed.username().is_empty() {
        let password = parsed.password().map(percent_decode).unwrap_or_default();
        options.set_credentials(percent_decode(parsed.username()), password);
    }
    Ok(options)
}

/// rustls with the system's root certificates: those that load (rumqttc's default panics on any that do not).
fn tls() -> Result<TlsConfiguration, MqttError> {
    use rumqttc::tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err(MqttError::NoRootCertificates);
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Starts the bridge's reader and worker: they run until the process ends, reconnecting with backoff.
pub fn spawn(bridge: BridgeConfig, inbound: Inbound, context: BridgeContext) {
    match Settings::new(&bridge, &context, inbound.max_bytes()) {
        Ok(settings) => {
            let current = Arc::new(Mutex::new(Current::default()));
            let (queue, jobs) = mpsc::channel(QUEUE);
            tokio::spawn(work(inbound.clone(), jobs, Arc::clone(&current)));
            tokio::spawn(read(settings, inbound, queue, current));
        }
        // Validation checked the scheme and the topic; a URL without a host still ends here.
        Err(e) => inbound.status.set(State::Down, Some(e.to_string())),
    }
}

/// The connection the worker acknowledges on: the client of the latest one, and its number.
#[derive(Default)]
struct Current {
    connection: u64,
    client: Option<AsyncClient>,
}

/// A message for the worker, with the connection it came on: a PUBACK belongs to that connection only.
struct Job {
    publish: Publish,
    connection: u64,
}

/// Connects, reads until the connection fails, waits, and again.
async fn read(
    settings: Settings,
    inbound: Inbound,
    queue: mpsc::Sender<Job>,
    current: Arc<Mutex<Current>>,
) {
    let label = inbound.status.label.clone();
    let mut backoff = Backoff::default();
    loop {
        inbound.status.set(State::Connecting, None);
        let Some(error) = session(&settings, &inbound, &queue, &current, &mut backoff).await else {
            return;
        };
        let wait = backoff.next_wait();
        tracing::warn!(bridge = %label, error = %error, retry_in = ?wait, "mqtt bridge: disconnected");
        inbound.status.set(State::Down, Some(error.to_string()));
        tokio::time::sleep(wait).await;
    }
}

/// One connection, read until it fails (the error) or the worker is gone (`None`).
async fn session(
    settings: &Settings,
    inbound: &Inbound,
    queue: &mpsc::Sender<Job>,
    current: &Mutex<Current>,
    backoff: &mut Backoff,
) -> Option<MqttError> {
    let (client, mut events) = AsyncClient::new(settings.connection(), REQUESTS);
    let mut connection = 0;
    loop {
        let packet = match events.poll().await {
            Ok(Event::Incoming(packet)) => packet,
            Ok(Event::Outgoing(_)) => continue,
            Err(e) => return Some(MqttError::Connection(settings.reason(&e))),
        };
        match packet {
            Packet::ConnAck(_) => {
                connection = connected(current, &client);
                // try_: this task drains the request channel, so it must not wait on it.
                if let Err(e) = client.try_subscribe(settings.filter.as_str(), QoS::AtLeastOnce) {
                    return Some(MqttError::Subscribe(e.to_string()));
                }
            }
            Packet::SubAck(ack) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure))
                {
                    return Some(MqttError::Refused(settings.filter.clone()));
                }
                inbound.status.set(State::Up, None);
                backoff.reset();
            }
            Packet::Publish(publish) => {
                let job = Job {
                    publish,
                    connection,
                };
                if queue.send(job).await.is_err() {
                    return None;
                }
            }
            _ => {}
        }
    }
}

/// Records a new connection for the worker's acknowledgements; answers its number.
fn connected(current: &Mutex<Current>, client: &AsyncClient) -> u64 {
    let mut current = current.lock();
    current.connection += 1;
    current.client = Some(client.clone());
    current.connection
}

/// Publishes the messages in order, each until it is published or rejected, then acknowledges it.
async fn work(inbound: Inbound, mut jobs: mpsc::Receiver<Job>, current: Arc<Mutex<Current>>) {
    let mut retry = Backoff::default();
    while let Some(job) = jobs.recv().await {
        let tokens: Vec<&str> = job.publish.topic.split('/').collect();
        while let Handled::Retry(_) = inbound.handle(&job.publish.payload, &tokens).await {
            retry.wait().await;
        }
        retry.reset();
        acknowledge(&current, &job).await;
    }
}

/// Sends the PUBACK of `job` when its connection is still the current one: on another, its packet id may be
/// a different message's (and the broker dropped the message with the clean session anyway).
async fn acknowledge(current: &Mutex<Current>, job: &Job) {
    let client = {
        let current = current.lock();
        (current.connection == job.connection)
            .then(|| current.client.clone())
            .flatten()
    };
    if let Some(client) = client {
        // Fails only when the connection's event loop is gone: its session, and this message, are over.
        let _ = client.ack(&job.publish).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_shares_the_subscription() {
        assert_eq!(
            subscription_filter("pomodoro/+/state", false),
            "pomodoro/+/state"
        );
        assert_eq!(
            subscription_filter("pomodoro/+/state", true),
            "$share/herald/pomodoro/+/state"
        );
    }

    #[test]
    fn client_ids_fit_mqtt_3_1_1() {
        let id = client_id("abcdefgh");
        assert!(id.starts_with("herald-abcdefgh-"), "{id}");
        assert_eq!(id.len(), 22);
        assert_ne!(client_id("abcdefgh"), client_id("abcdefgh"));
    }

    #[test]
    fn urls_give_host_port_and_credentials() {
        let parsed = options("mqtt://bridge:p%40ss@broker.example:1884").expect("valid");
        assert_eq!(
            parsed.broker_address(),
            ("broker.example".to_string(), 1884)
        );
        let login = parsed.credentials().expect("credentials");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("bridge", "p@ss")
        );
        let plain = options("tcp://127.0.0.1").expect("valid");
        assert_eq!(plain.broker_address(), ("127.0.0.1".to_string(), 1883));
        assert!(plain.credentials().is_none());
        assert!(matches!(
            options("amqp://127.0.0.1"),
            Err(MqttError::BadUrl(_))
        ));
        let bad = options("mqtt://user:hunter2@").expect_err("no host");
        assert!(!bad.to_string().contains("hunter2"));
    }
}
