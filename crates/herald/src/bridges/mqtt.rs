//! The MQTT 3.1.1 bridge: subscribes to one topic filter at QoS 1 and hands each message to the bridge's
//! `Inbound`, one at a time in arrival order, sending its PUBACK only once herald is done with it.
//!
//! ```text
//! reader task: EventLoop::poll ─ CONNACK ─► SUBSCRIBE <filter> QoS 1 ─ SUBACK ─► status up
//!                              ─ PUBLISH ─► the worker's queue
//!                              ─ error   ─► status down, wait (0.5 s doubling to 10 s), a new connection
//! worker task: a redelivery of a message herald published but never acknowledged ─► PUBACK, not published again
//!              else Inbound::handle(payload, topic levels)
//!     Published or Rejected ─► PUBACK (a bad message must not come back)
//!     Retry ─► wait (0.5 s doubling to 10 s) and publish the same message again, its PUBACK held
//! ```
//!
//! On one node the session is persistent (clean session off) under one client id for the life of the process
//! (`herald-<node>-<random>`): the broker keeps the QoS 1 messages of the filter while herald reconnects, across
//! a restart of a broker that persists its sessions (Mosquitto's `persistence true`), and sends again those
//! herald had not acknowledged. A message the worker took from a connection that then broke is published and
//! remembered (`Unacked`): its PUBACK cannot go on another connection, so the broker sends it again, with the
//! DUP flag and its packet id, and the worker acknowledges that copy without publishing it twice. A PUBACK that
//! was on its way when the connection broke is lost with it, and the broker sends that message again: QoS 1 is
//! at least once, and such a copy is published again. When herald stops (SIGTERM, `Gateway::stop_bridges`), the
//! bridge removes its session: it connects under the same id with a clean session, which discards the old one,
//! so the broker does not queue the filter's messages for a process that is gone (the next one has a new node
//! id). A process that dies leaves its session until the broker expires it (Mosquitto:
//! `persistent_client_expiration`; meanwhile it holds at most `max_queued_messages`, 1000 by default).
//!
//! A cluster keeps clean sessions, with a fresh client id per connection: every node subscribes to the shared
//! subscription `$share/herald/<filter>`, and a broker hands shared messages to a disconnected persistent
//! session too, so the session of a node that stopped would take its turn at messages nobody reads. There, a
//! message sent while no node is connected, or queued for a connection that broke, is not delivered (a retained
//! MQTT message is, on each subscription); the broker hands each message to one node (MQTT 5, and Mosquitto 2
//! for 3.1.1 clients too).
//!
//! A message to retry is not left to the broker (a clean session drops its unacknowledged messages with the
//! connection): the worker keeps it and tries again with backoff, so its order is kept and nothing is lost while
//! herald runs.

use std::collections::VecDeque;
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
use super::{BridgeContext, Stop};
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
/// The longest a stopping bridge spends removing its session from the broker.
const FORGET_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages published but never acknowledged that the worker remembers, to know their redeliveries: far more
/// than the broker has in flight (Mosquitto: 20) plus the worker's queue.
const UNACKED: usize = 256;

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
    /// One node: a persistent session under the one client id of `options`. A cluster: clean sessions, a
    /// client id per connection.
    persistent: bool,
    stop: Stop,
}

impl Settings {
    fn new(
        bridge: &BridgeConfig,
        context: &BridgeContext,
        max_bytes: usize,
    ) -> Result<Settings, MqttError> {
        let topic = bridge.topic.as_deref().ok_or(MqttError::NoTopic)?;
        let cluster = context.redis_url.is_some();
        let mut options = options(&bridge.url)?;
        options
            .set_client_id(client_id(&context.node))
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(cluster)
            .set_manual_acks(true)
            .set_max_packet_size(max_bytes.saturating_add(PACKET_OVERHEAD), PACKET_OVERHEAD);
        Ok(Settings {
            options,
            url: bridge.url.clone(),
            filter: subscription_filter(topic, cluster),
            node: Arc::clone(&context.node),
            persistent: !cluster,
            stop: context.stop.clone(),
        })
    }

    /// The options of a new connection. A persistent session keeps its one client id, under which the broker
    /// keeps it; a clean session gets an id of its own, so a late-closing old connection is not taken for this
    /// one.
    fn connection(&self) -> MqttOptions {
        let mut options = self.options.clone();
        if !self.persistent {
            options.set_client_id(client_id(&self.node));
        }
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

/// The connection the worker acknowledges on: the client of the latest one, its number, and the number of the
/// session it resumed.
#[derive(Default)]
struct Current {
    connection: u64,
    /// Counts the connections the broker started a new session on (CONNACK without `session_present`): packet
    /// ids and redeliveries mean something within one session only.
    session: u64,
    client: Option<AsyncClient>,
}

/// A message for the worker, with the connection it came on (a PUBACK belongs to that connection only) and the
/// broker's session on it.
struct Job {
    publish: Publish,
    connection: u64,
    session: u64,
}

/// Connects, reads until the connection fails, waits, and again; when the process stops, removes the
/// persistent session from the broker.
async fn read(
    settings: Settings,
    inbound: Inbound,
    queue: mpsc::Sender<Job>,
    current: Arc<Mutex<Current>>,
) {
    let _holding = settings.stop.hold();
    let label = inbound.status.label.clone();
    let mut backoff = Backoff::default();
    let stopping = settings.stop.requested();
    tokio::pin!(stopping);
    loop {
        inbound.status.set(State::Connecting, None);
        let ended = tokio::select! {
            () = &mut stopping => break,
            ended = session(&settings, &inbound, &queue, &current, &mut backoff) => ended,
        };
        let Some(error) = ended else {
            return;
        };
        let wait = backoff.next_wait();
        tracing::warn!(bridge = %label, error = %error, retry_in = ?wait, "mqtt bridge: disconnected");
        inbound.status.set(State::Down, Some(error.to_string()));
        tokio::select! {
            () = &mut stopping => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    // The connection is dropped with the session's future: nothing more is taken from the broker.
    if settings.persistent {
        match forget_session(&settings).await {
            Ok(()) => {
                tracing::info!(bridge = %label, "mqtt bridge: stopped; its session is removed from the broker")
            }
            Err(e) => {
                tracing::warn!(bridge = %label, error = %e, "mqtt bridge: stopped, but its session stays on the broker until it expires")
            }
        }
    }
    inbound
        .status
        .set(State::Down, Some("herald is stopping".into()));
}

/// Removes the persistent session from the broker, so it does not queue the filter's messages for a process
/// that is gone: connects under its client id with a clean session (which discards the old one, MQTT 3.1.1
/// 3.1.2.4) and disconnects. Bounded by `FORGET_TIMEOUT`.
async fn forget_session(settings: &Settings) -> Result<(), MqttError> {
    let mut options = settings.options.clone();
    options.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 4);
    let forget = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // Queued now, sent by the next poll.
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(MqttError::Connection(settings.reason(&e))),
            }
        }
    };
    tokio::time::timeout(FORGET_TIMEOUT, forget)
        .await
        .unwrap_or_else(|_| {
            Err(MqttError::Connection(
                "the broker did not answer in time".into(),
            ))
        })
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
    let (mut connection, mut session) = (0, 0);
    loop {
        let packet = match events.poll().await {
            Ok(Event::Incoming(packet)) => packet,
            Ok(Event::Outgoing(_)) => continue,
            Err(e) => return Some(MqttError::Connection(settings.reason(&e))),
        };
        match packet {
            Packet::ConnAck(ack) => {
                (connection, session) = connected(current, &client, ack.session_present);
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
                    session,
                };
                if queue.send(job).await.is_err() {
                    return None;
                }
            }
            _ => {}
        }
    }
}

/// Records a new connection for the worker's acknowledgements; answers its number and its session's.
fn connected(current: &Mutex<Current>, client: &AsyncClient, session_present: bool) -> (u64, u64) {
    let mut current = current.lock();
    current.connection += 1;
    if !session_present {
        current.session += 1;
    }
    current.client = Some(client.clone());
    (current.connection, current.session)
}

/// Publishes the messages in order, each until it is published or rejected, then acknowledges it; a
/// redelivery of one it published without acknowledging is acknowledged only.
async fn work(inbound: Inbound, mut jobs: mpsc::Receiver<Job>, current: Arc<Mutex<Current>>) {
    let mut retry = Backoff::default();
    let mut unacked = Unacked::default();
    while let Some(job) = jobs.recv().await {
        if unacked.take(&job) {
            acknowledge(&current, &job).await;
            continue;
        }
        let tokens: Vec<&str> = job.publish.topic.split('/').collect();
        while let Handled::Retry(_) = inbound.handle(&job.publish.payload, &tokens).await {
            retry.wait().await;
        }
        retry.reset();
        if !acknowledge(&current, &job).await {
            unacked.remember(job);
        }
    }
}

/// Sends the PUBACK of `job` when its connection is still the current one (on another, its packet id may be a
/// different message's); answers whether it went to the event loop.
async fn acknowledge(current: &Mutex<Current>, job: &Job) -> bool {
    let client = {
        let current = current.lock();
        (current.connection == job.connection)
            .then(|| current.client.clone())
            .flatten()
    };
    match client {
        // Fails only when the connection's event loop is gone.
        Some(client) => client.ack(&job.publish).await.is_ok(),
        None => false,
    }
}

/// Messages herald published whose PUBACK never went out, because their connection broke first: the broker
/// keeps a persistent session's unacknowledged message under its packet id, which it gives no other message
/// until it is acknowledged, and sends it again on a later connection of the same session with the DUP flag.
/// Such a copy (same session, packet id, topic and body, a later connection) is acknowledged, not published.
/// A clean session starts a new session on each connection, so nothing matches there.
#[derive(Default)]
struct Unacked(VecDeque<Job>);

impl Unacked {
    fn remember(&mut self, job: Job) {
        if self.0.len() == UNACKED {
            self.0.pop_front();
        }
        self.0.push_back(job);
    }

    /// Whether `job` is the redelivery of a remembered message; forgets that message.
    fn take(&mut self, job: &Job) -> bool {
        if !job.publish.dup {
            return false;
        }
        let found = self.0.iter().position(|earlier| {
            earlier.session == job.session
                && earlier.connection < job.connection
                && earlier.publish.pkid == job.publish.pkid
                && earlier.publish.topic == job.publish.topic
                && earlier.publish.payload == job.publish.payload
        });
        found.and_then(|i| self.0.remove(i)).is_some()
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

    fn context(cluster: bool) -> BridgeContext {
        BridgeContext {
            node: "node0001".into(),
            redis_url: cluster.then(|| "redis://127.0.0.1:6379/".to_string()),
            trust: crate::tls::Trust::system(),
            stop: Default::default(),
        }
    }

    fn bridge() -> BridgeConfig {
        BridgeConfig {
            kind: crate::config::BridgeKind::Mqtt,
            url: "mqtt://127.0.0.1:1883".into(),
            queue: None,
            topic: Some("sensors/#".into()),
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
    fn one_node_keeps_one_persistent_session_and_a_cluster_clean_ones() {
        let single = Settings::new(&bridge(), &context(false), 1024).expect("valid");
        let (first, again) = (single.connection(), single.connection());
        assert!(!first.clean_session());
        assert_eq!(
            first.client_id(),
            again.client_id(),
            "one id for the process"
        );
        assert!(first.client_id().starts_with("herald-node0001-"));
        assert_eq!(single.filter, "sensors/#");

        let cluster = Settings::new(&bridge(), &context(true), 1024).expect("valid");
        let (first, again) = (cluster.connection(), cluster.connection());
        assert!(first.clean_session());
        assert_ne!(first.client_id(), again.client_id(), "an id per connection");
        assert_eq!(cluster.filter, "$share/herald/sensors/#");
    }

    fn job(pkid: u16, body: &str, dup: bool, connection: u64, session: u64) -> Job {
        let mut publish = Publish::new("sensors/1", QoS::AtLeastOnce, body.as_bytes().to_vec());
        publish.pkid = pkid;
        publish.dup = dup;
        Job {
            publish,
            connection,
            session,
        }
    }

    #[test]
    fn a_redelivery_of_an_unacknowledged_message_is_known_once() {
        let mut unacked = Unacked::default();
        unacked.remember(job(7, "a", false, 1, 1));
        unacked.remember(job(8, "b", false, 1, 1));
        // Not redeliveries: no DUP flag, the same connection, another session, another packet id or body.
        assert!(!unacked.take(&job(7, "a", false, 2, 1)));
        assert!(!unacked.take(&job(7, "a", true, 1, 1)));
        assert!(!unacked.take(&job(7, "a", true, 2, 2)));
        assert!(!unacked.take(&job(9, "a", true, 2, 1)));
        assert!(!unacked.take(&job(7, "x", true, 2, 1)));
        // The broker's copy on a later connection of the session, once.
        assert!(unacked.take(&job(7, "a", true, 2, 1)));
        assert!(!unacked.take(&job(7, "a", true, 2, 1)));
        assert!(unacked.take(&job(8, "b", true, 3, 1)));
    }

    #[test]
    fn unacknowledged_messages_are_remembered_up_to_a_bound() {
        let mut unacked = Unacked::default();
        for pkid in 0..=UNACKED as u16 {
            unacked.remember(job(pkid, "a", false, 1, 1));
        }
        assert!(!unacked.take(&job(0, "a", true, 2, 1)), "the oldest went");
        assert!(unacked.take(&job(UNACKED as u16, "a", true, 2, 1)));
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
