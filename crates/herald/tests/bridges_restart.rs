//! A broker restart in the middle of a stream, for each bridge: a gateway in-process with the bridge into the
//! room `lobby`, a socket.io client in it, a numbered stream of messages published into the broker, and the
//! broker stopped (gracefully, as an operator would), kept down for a second and started again on the same port
//! and data while the stream goes on. Each broker is a private one (`common::broker`), so the shared services
//! stay up for the tests that run meanwhile.
//!
//! Where the broker keeps what it accepted (a durable AMQP queue with persistent messages, published with
//! confirms; an MQTT QoS 1 message PUBACKed into herald's persistent session on a Mosquitto with persistence),
//! every message the broker confirmed reaches the client, in the broker's order; a message whose PUBACK or ack
//! herald had sent when the broker stopped, but the broker had not read, comes again (at least once) and is
//! published again. Where it keeps nothing (Redis pub/sub, Postgres `NOTIFY`, NATS core), what the broker had
//! is what it delivered before it went down: everything before the restart arrives, in order, none twice, and
//! the stream goes on once herald is back; the messages lost are one run, from the ones the broker held
//! undelivered when it stopped to the last one published before herald subscribed again.
//!
//! In every case each frame is checked against its number (no corruption), the bridge's `published` counter
//! equals the frames the client got, and `GET /api/v1/status` shows the bridge `up`, then down (or
//! connecting), then `up` again.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::broker::{Broker, Kind, Restart};
use common::Received;
use herald::bridges::status::State;
use herald::config::{BridgeConfig, BridgeKind, Config, SiteConfig};
use herald::gateway::Gateway;
use herald::secret::Secret;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::time::{sleep, timeout, Instant};

const KEY: &str = "restart-key-0123456789";
const SITE: &str = "stream";
/// The site's public channel, which every client joins: the bridge's room.
const ROOM: &str = "lobby";
/// The durable streams: messages 0..TOTAL, the broker restarted when RESTART_AT is published.
const TOTAL: u64 = 200;
const RESTART_AT: u64 = 100;
/// The lossy streams: after the first message that crosses once the broker is back, this many more.
const TAIL: u64 = 50;
/// How long a broker stays down.
const DOWN: Duration = Duration::from_secs(1);
/// Between two messages of the stream.
const PACE: Duration = Duration::from_millis(2);
/// The longest wait for a bridge to come up, a broker to come back or the stream to arrive.
const WAIT: Duration = Duration::from_secs(60);
/// Redeliveries a durable broker may make after the restart: at most what herald had taken and not
/// acknowledged (AMQP prefetch 64; Mosquitto's 20 in flight plus the bridge's queue of 64).
const MAX_REDELIVERED: usize = 84;

/// A public site whose clients join `lobby`; exact frames (no recovery offsets).
fn site() -> SiteConfig {
    let mut site = SiteConfig::new(SITE.to_string());
    site.api_keys = vec![Secret::new(KEY)];
    site.public_channel = Some(ROOM.into());
    site.recovery_window_ms = 0;
    site
}

/// A bridge of `kind` from `source` on `url`: each body is the one argument of event `n` in `lobby`.
fn bridge(kind: BridgeKind, url: String, source: &str) -> BridgeConfig {
    let source = Some(source.to_string());
    BridgeConfig {
        kind,
        url,
        queue: source.clone().filter(|_| kind == BridgeKind::Amqp),
        topic: source.clone().filter(|_| kind == BridgeKind::Mqtt),
        subject: source.clone().filter(|_| kind == BridgeKind::Nats),
        channel: source.filter(|_| matches!(kind, BridgeKind::Redis | BridgeKind::Postgres)),
        site: SITE.into(),
        room: Some(ROOM.into()),
        event: Some("n".into()),
        retain: false,
        if_changed: false,
    }
}

/// What message `n` carries besides its number, so a frame can be checked against it.
fn check(n: u64) -> String {
    format!("{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).repeat(4)
}

/// The body of message `n`.
fn body(n: u64) -> String {
    serde_json::json!({"n": n, "check": check(n)}).to_string()
}

/// The number of a frame `42/stream,["n",{"check":…,"n":…}]`, if it is one intact.
fn number(frame: &str) -> Result<u64, String> {
    let packet: Value = frame
        .strip_prefix(&format!("42/{SITE},"))
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| format!("not an event of /{SITE}: {frame}"))?;
    let arg = &packet[1];
    match (packet[0].as_str(), arg["n"].as_u64(), arg["check"].as_str()) {
        (Some("n"), Some(n), Some(text)) if text == check(n) => Ok(n),
        _ => Err(format!("a corrupt frame: {frame}")),
    }
}

/// A frame the client received: its message's number and when it came.
#[derive(Debug, Clone, Copy)]
struct Frame {
    n: u64,
    at: Instant,
}

/// A gateway with one bridge, a client in its room and a watch on `/api/v1/status`.
struct Harness {
    gateway: Gateway,
    frames: Arc<Mutex<Vec<Frame>>>,
    /// Frames that were not an intact message of the stream.
    bad: Arc<Mutex<Vec<String>>>,
    /// The bridge's states on `GET /api/v1/status`, each change once.
    states: Arc<Mutex<Vec<String>>>,
}

impl Harness {
    async fn start(bridge: BridgeConfig) -> Harness {
        let config = Config {
            sites: vec![site()],
            bridges: vec![bridge],
            ..Config::default()
        };
        let (addr, gateway) = common::start_gateway(config).await;
        let status = Arc::clone(&gateway.bridges.all()[0]);
        timeout(WAIT, async {
            while status.state() != State::Up {
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the bridge did not come up: {}", status.describe()));

        let (mut client, reply) =
            common::join_namespace(addr, &format!("/{SITE}"), "deviceId=d1").await;
        assert!(reply.starts_with(&format!("40/{SITE},")), "{reply}");
        let frames = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (into, bad_into) = (Arc::clone(&frames), Arc::clone(&bad));
        tokio::spawn(async move {
            while let Some(received) = client.next_within(WAIT * 2).await {
                match received {
                    Received::Text(text) => match number(&text) {
                        Ok(n) => into.lock().push(Frame {
                            n,
                            at: Instant::now(),
                        }),
                        Err(e) => bad_into.lock().push(e),
                    },
                    other => bad_into.lock().push(format!("{other:?}")),
                }
            }
        });

        let states = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(watch_status(addr, Arc::clone(&states)));
        let harness = Harness {
            gateway,
            frames,
            bad,
            states,
        };
        harness
            .wait("the status watch to see the bridge", |h| {
                !h.states.lock().is_empty()
            })
            .await;
        harness
    }

    fn numbers(&self) -> Vec<u64> {
        self.frames.lock().iter().map(|f| f.n).collect()
    }

    fn has(&self, n: u64) -> bool {
        self.frames.lock().iter().any(|f| f.n == n)
    }

    fn status(&self) -> Value {
        self.gateway.bridges.all()[0].describe()
    }

    /// Waits until `done`; fails saying `what` with what the client got and the bridge's status.
    async fn wait(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            if Instant::now() > deadline {
                panic!(
                    "waited {WAIT:?} for {what}: the client got {:?}; status {}; states {:?}",
                    self.numbers(),
                    self.status(),
                    self.states.lock()
                );
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// What every test checks at the end: intact frames, each publish delivered once, and the bridge up, then
    /// not, then up again, with the reason it went down.
    async fn assert_recovered(&self) {
        assert!(
            self.bad.lock().is_empty(),
            "bad frames: {:?}",
            self.bad.lock()
        );
        self.wait("the bridge's count to match the frames", |h| {
            h.status()["published"].as_u64() == Some(h.frames.lock().len() as u64)
        })
        .await;
        self.wait("the status to say up", |h| {
            h.states.lock().last().map(String::as_str) == Some("up")
        })
        .await;
        let states = self.states.lock().clone();
        assert_eq!(states.first().map(String::as_str), Some("up"), "{states:?}");
        assert!(
            states.iter().any(|s| s == "down" || s == "connecting"),
            "the status never showed the broker gone: {states:?}"
        );
        assert!(!self.status()["last_error"].is_null(), "{}", self.status());
    }
}

/// Polls `GET /api/v1/status` every 20 ms, recording each change of the bridge's state.
async fn watch_status(addr: SocketAddr, states: Arc<Mutex<Vec<String>>>) {
    loop {
        let (code, answer) =
            common::api_json(addr, "GET", "/api/v1/status", KEY, &Value::Null).await;
        assert_eq!(code, 200, "{answer}");
        let state = answer["bridges"][0]["state"]
            .as_str()
            .unwrap_or("missing")
            .to_string();
        {
            let mut states = states.lock();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Restarts `broker` on a task of its own, so the stream goes on meanwhile; the task hands the broker back.
fn restart_soon(mut broker: Broker) -> tokio::task::JoinHandle<(Broker, Restart)> {
    tokio::spawn(async move {
        let restart = broker.restart(DOWN).await;
        (broker, restart)
    })
}

/// A test's own client of the broker, publishing the stream.
trait Producer {
    /// Publishes `body`, connecting first when needed (waiting for a broker that is down to come back);
    /// answers whether the broker confirmed it has it. After a failure the next call connects again.
    async fn send(&mut self, body: &str) -> bool;
}

/// Runs `connect` until it works, every 50 ms, for up to `WAIT`.
async fn reconnect<T, F, Fut>(what: &str, mut connect: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match timeout(Duration::from_secs(3), connect()).await {
            Ok(Ok(connected)) => return connected,
            Ok(Err(e)) if Instant::now() > deadline => panic!("cannot connect to {what}: {e}"),
            Err(_) if Instant::now() > deadline => panic!("cannot connect to {what}: no answer"),
            _ => sleep(Duration::from_millis(50)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------- durable

/// The durable case: publishes 0..TOTAL, restarting the broker when RESTART_AT is sent, and checks that every
/// message the broker confirmed arrives, first arrivals in order, and that each message that came twice came
/// again after the restart, having first come before the broker stopped.
async fn durable_stream(broker: Broker, bridge: BridgeConfig, mut producer: impl Producer) {
    let begun = Instant::now();
    let kind = broker.kind;
    let harness = Harness::start(bridge).await;
    let mut confirmed = Vec::new();
    let mut broker = Some(broker);
    let mut restarting = None;
    for n in 0..TOTAL {
        if n == RESTART_AT {
            restarting = broker.take().map(restart_soon);
        }
        if producer.send(&body(n)).await {
            confirmed.push(n);
        }
        sleep(PACE).await;
    }
    let (broker, restart) = restarting
        .expect("the restart was started")
        .await
        .expect("the restart task");
    harness
        .wait("every confirmed message", |h| {
            let got: BTreeSet<u64> = h.numbers().into_iter().collect();
            confirmed.iter().all(|n| got.contains(n))
        })
        .await;
    harness.assert_recovered().await;

    let frames = harness.frames.lock().clone();
    let mut first: HashMap<u64, Instant> = HashMap::new();
    let mut order = Vec::new();
    let mut again = Vec::new();
    for frame in &frames {
        assert!(frame.n < TOTAL, "{frame:?} was never published");
        match first.get(&frame.n) {
            None => {
                first.insert(frame.n, frame.at);
                order.push(frame.n);
            }
            Some(&at) => {
                // A redelivery: herald had it before the broker stopped and published it; the broker did not
                // get the acknowledgement.
                assert!(
                    at < restart.stopped && frame.at > restart.stopping,
                    "message {} came twice, not across the restart",
                    frame.n
                );
                again.push(frame.n);
            }
        }
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "first arrivals out of order: {order:?}"
    );
    assert!(
        again.len() <= MAX_REDELIVERED,
        "{} redelivered: {again:?}",
        again.len()
    );
    let restart_took = restart.started - restart.stopping;
    eprintln!(
        "{kind:?}: {} of {TOTAL} confirmed, {} received, {} again after the restart {again:?}; the broker was \
         stopped and back in {restart_took:?}; test took {:?}",
        confirmed.len(),
        order.len(),
        again.len(),
        begun.elapsed()
    );
    drop(broker);
}

/// AMQP: a durable queue (herald declares it), persistent messages published with confirms on a private
/// RabbitMQ node, restarted with SIGTERM. Every confirmed message is on disk and arrives, in the queue's order;
/// a message herald published whose ack RabbitMQ had not processed when it stopped is redelivered and published
/// again (at least once), never more than the prefetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_durable_queue_loses_nothing_across_a_broker_restart() {
    let broker = Broker::start(Kind::RabbitMq).await;
    let queue = "herald-restart";
    let config = bridge(BridgeKind::Amqp, broker.url(), queue);
    let producer = Amqp {
        url: broker.url(),
        queue: queue.into(),
        channel: None,
    };
    durable_stream(broker, config, producer).await;
}

/// Publishes persistently to a queue through the default exchange, with publisher confirms.
struct Amqp {
    url: String,
    queue: String,
    channel: Option<(lapin::Connection, lapin::Channel)>,
}

impl Amqp {
    async fn open(url: &str, queue: &str) -> Result<(lapin::Connection, lapin::Channel), String> {
        use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| e.to_string())?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        // As herald declares it: durable, no arguments.
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.into(), durable, lapin::types::FieldTable::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok((connection, channel))
    }
}

impl Producer for Amqp {
    async fn send(&mut self, body: &str) -> bool {
        if self.channel.is_none() {
            let (url, queue) = (self.url.clone(), self.queue.clone());
            self.channel = Some(reconnect("RabbitMQ", || Amqp::open(&url, &queue)).await);
        }
        let Some((_, channel)) = &self.channel else {
            return false;
        };
        let publish = async {
            channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    body.as_bytes(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await
        };
        match timeout(Duration::from_secs(5), publish).await {
            Ok(Ok(confirmation)) if confirmation.is_ack() => true,
            _ => {
                self.channel = None;
                false
            }
        }
    }
}

/// MQTT: QoS 1 into herald's persistent session on a private Mosquitto with persistence, restarted with
/// SIGTERM (it saves its sessions). Every message Mosquitto PUBACKed to the producer arrives, in order, also
/// those published while herald was reconnecting: the restored session kept its subscription and queued them.
/// Messages herald took on the connection that broke but had not acknowledged come again with DUP and are only
/// acknowledged; a PUBACK Mosquitto had not read when it stopped makes that message come again (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_persistent_session_loses_nothing_across_a_broker_restart() {
    let broker = Broker::start(Kind::Mosquitto).await;
    let topic = "herald/restart";
    let config = bridge(BridgeKind::Mqtt, broker.url(), topic);
    let producer = Mqtt {
        port: broker.port,
        topic: topic.into(),
        connection: None,
    };
    durable_stream(broker, config, producer).await;
}

/// When herald stops, its MQTT bridge removes the persistent session it kept on the broker, which would
/// otherwise stay (queueing the filter's messages) for a process that is gone: Mosquitto's
/// `$SYS/broker/clients/total` counts connected clients and disconnected persistent sessions alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_stopping_herald_removes_its_persistent_session() {
    let broker = Broker::start(Kind::Mosquitto).await;
    let config = Config {
        sites: vec![site()],
        bridges: vec![bridge(BridgeKind::Mqtt, broker.url(), "herald/stop")],
        ..Config::default()
    };
    let (_, gateway) = common::start_gateway(config).await;
    let status = Arc::clone(&gateway.bridges.all()[0]);
    let mut clients = sys_clients_total(broker.port);
    let wait_clients = |clients: &mut tokio::sync::watch::Receiver<Option<u64>>, n: u64| {
        let mut clients = clients.clone();
        async move {
            timeout(
                Duration::from_secs(10),
                clients.wait_for(|total| *total == Some(n)),
            )
            .await
            .map(|_| ())
            .unwrap_or_else(|_| {
                panic!(
                    "Mosquitto never counted {n} clients: {:?}",
                    *clients.borrow()
                )
            })
        }
    };
    // herald's session and the probe's.
    wait_clients(&mut clients, 2).await;
    assert_eq!(status.state(), State::Up);

    gateway.stop_bridges(Duration::from_secs(3)).await;
    let described = status.describe();
    assert_eq!(
        (&described["state"], &described["last_error"]),
        (&Value::from("down"), &Value::from("herald is stopping"))
    );
    // The probe's alone: herald's connection is gone and so is its session.
    wait_clients(&mut clients, 1).await;
}

/// The latest `$SYS/broker/clients/total` of the Mosquitto on `port`, from a client of its own.
fn sys_clients_total(port: u16) -> tokio::sync::watch::Receiver<Option<u64>> {
    let (total, receiver) = tokio::sync::watch::channel(None);
    let options = rumqttc::MqttOptions::new("herald-restart-sys", "127.0.0.1", port);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            match event {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => {
                    let _ =
                        client.try_subscribe("$SYS/broker/clients/total", rumqttc::QoS::AtMostOnce);
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) => {
                    let value = std::str::from_utf8(&publish.payload)
                        .ok()
                        .and_then(|text| text.trim().parse().ok());
                    total.send_replace(value);
                }
                _ => {}
            }
        }
    });
    receiver
}

/// Publishes at QoS 1, one message at a time, each confirmed by its PUBACK; a clean session of its own per
/// connection, so a message that got no PUBACK is not sent again behind the test's back.
struct Mqtt {
    port: u16,
    topic: String,
    connection: Option<(rumqttc::AsyncClient, rumqttc::EventLoop)>,
}

impl Mqtt {
    async fn open(port: u16) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), String> {
        let id = format!("herald-restart-{:08x}", rand::random::<u32>());
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    return Ok((client, events))
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Producer for Mqtt {
    async fn send(&mut self, body: &str) -> bool {
        if self.connection.is_none() {
            let port = self.port;
            self.connection = Some(reconnect("Mosquitto", || Mqtt::open(port)).await);
        }
        let Some((client, events)) = &mut self.connection else {
            return false;
        };
        let publish = async {
            client
                .publish(self.topic.as_str(), rumqttc::QoS::AtLeastOnce, false, body)
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match timeout(Duration::from_secs(5), publish).await {
            Ok(Ok(())) => true,
            _ => {
                self.connection = None;
                false
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------ lossy

/// The lossy case: publishes 0..RESTART_AT and waits until all arrived, restarts the broker while the stream
/// goes on, keeps publishing until a message published after the broker came back crosses, then TAIL more.
/// Checks that the client got every message in order and none twice, except one run lost across the restart.
async fn lossy_stream(broker: Broker, bridge: BridgeConfig, mut producer: impl Producer) {
    let begun = Instant::now();
    let kind = broker.kind;
    let harness = Harness::start(bridge).await;
    for n in 0..RESTART_AT {
        assert!(producer.send(&body(n)).await, "message {n} not taken");
        sleep(PACE).await;
    }
    harness
        .wait("the messages before the restart", |h| h.has(RESTART_AT - 1))
        .await;

    let mut restarting = Some(restart_soon(broker));
    let mut held = None;
    let mut back_from = None;
    let mut n = RESTART_AT;
    let deadline = Instant::now() + WAIT;
    // Until a message published once the broker was back has crossed.
    while back_from.is_none_or(|from| !harness.numbers().iter().any(|&k| k >= from)) {
        assert!(
            Instant::now() < deadline,
            "nothing crossed after the restart: {}",
            harness.status()
        );
        if restarting.as_ref().is_some_and(|task| task.is_finished()) {
            let task = restarting.take().expect("a finished restart");
            held = Some(task.await.expect("the restart task"));
            back_from = Some(n);
        }
        producer.send(&body(n)).await;
        n += 1;
        sleep(PACE).await;
    }
    let last = n + TAIL - 1;
    for n in n..=last {
        assert!(producer.send(&body(n)).await, "message {n} not taken");
        sleep(PACE).await;
    }
    harness.wait("the tail", |h| h.has(last)).await;
    harness.assert_recovered().await;
    let (broker, restart) = held.expect("the broker came back");

    let got = harness.numbers();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice: {got:?}"
    );
    let got: BTreeSet<u64> = got.into_iter().collect();
    let lost: Vec<u64> = (0..=last).filter(|n| !got.contains(n)).collect();
    assert!(
        lost.first().is_none_or(|&first| first >= RESTART_AT),
        "lost before the restart: {lost:?}"
    );
    assert!(
        lost.windows(2).all(|w| w[1] == w[0] + 1),
        "more than one run lost: {lost:?}"
    );
    assert!(got.contains(&last), "the tail");
    eprintln!(
        "{kind:?}: {} published, {} received, lost {} ({:?}..={:?}); the broker was stopped and back in {:?}; \
         test took {:?}",
        last + 1,
        got.len(),
        lost.len(),
        lost.first(),
        lost.last(),
        restart.started - restart.stopping,
        begun.elapsed()
    );
    drop(broker);
}

/// NATS core (the bridge uses no JetStream): loses the messages the server held undelivered when it stopped and
/// those published (the producer's client buffers while it reconnects) before herald's client had subscribed
/// again on the new server; nothing else, and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_core_recovers_after_a_server_restart_losing_one_run() {
    let broker = Broker::start(Kind::Nats).await;
    let subject = "herald.restart";
    let config = bridge(BridgeKind::Nats, broker.url(), subject);
    let producer = Nats {
        url: broker.url(),
        subject: subject.into(),
        client: None,
    };
    lossy_stream(broker, config, producer).await;
}

/// Publishes and flushes each message (a round trip: the server has it). The client reconnects by itself.
struct Nats {
    url: String,
    subject: String,
    client: Option<async_nats::Client>,
}

impl Producer for Nats {
    async fn send(&mut self, body: &str) -> bool {
        if self.client.is_none() {
            let url = self.url.clone();
            self.client = Some(
                reconnect("NATS", || async {
                    async_nats::connect(url.as_str())
                        .await
                        .map_err(|e| e.to_string())
                })
                .await,
            );
        }
        let Some(client) = &self.client else {
            return false;
        };
        let sent = async {
            client
                .publish(self.subject.clone(), body.to_string().into())
                .await
                .map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())
        };
        matches!(timeout(Duration::from_secs(1), sent).await, Ok(Ok(())))
    }
}

/// Redis pub/sub: loses the messages published from the moment Redis stopped until herald's subscription on
/// the new server (Redis keeps nothing for a subscriber); nothing else, and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_recovers_after_a_server_restart_losing_one_run() {
    let broker = Broker::start(Kind::Redis).await;
    let channel = "herald:restart";
    let config = bridge(BridgeKind::Redis, broker.url(), channel);
    let producer = Redis {
        url: broker.url(),
        channel: channel.into(),
        connection: None,
    };
    lossy_stream(broker, config, producer).await;
}

/// `PUBLISH` on a connection of its own; a failed one connects again.
struct Redis {
    url: String,
    channel: String,
    connection: Option<redis::aio::MultiplexedConnection>,
}

impl Producer for Redis {
    async fn send(&mut self, body: &str) -> bool {
        if self.connection.is_none() {
            let url = self.url.clone();
            self.connection = Some(
                reconnect("Redis", || async {
                    let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| e.to_string())
                })
                .await,
            );
        }
        let Some(connection) = &mut self.connection else {
            return false;
        };
        let mut command = redis::cmd("PUBLISH");
        command.arg(&self.channel).arg(body);
        let publish = command.query_async::<i64>(connection);
        match timeout(Duration::from_secs(2), publish).await {
            Ok(Ok(_)) => true,
            _ => {
                self.connection = None;
                false
            }
        }
    }
}

/// Postgres `NOTIFY`: loses the notifications committed but not yet read by herald when the server stopped
/// (fast shutdown) and those committed before herald's `LISTEN` on the new server; nothing else, and nothing
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_recovers_after_a_server_restart_losing_one_run() {
    let broker = Broker::start(Kind::Postgres).await;
    let channel = "herald_restart";
    let config = bridge(BridgeKind::Postgres, broker.url(), channel);
    let producer = Postgres {
        url: broker.url(),
        channel: channel.into(),
        client: None,
    };
    lossy_stream(broker, config, producer).await;
}

/// `SELECT pg_notify(channel, body)`, each its own transaction; a failed one connects again.
struct Postgres {
    url: String,
    channel: String,
    client: Option<tokio_postgres::Client>,
}

impl Producer for Postgres {
    async fn send(&mut self, body: &str) -> bool {
        if self.client.is_none() {
            let url = self.url.clone();
            self.client = Some(
                reconnect("Postgres", || async {
                    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio::spawn(connection);
                    Ok(client)
                })
                .await,
            );
        }
        let Some(client) = &self.client else {
            return false;
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.channel, &body];
        let notify = client.execute("SELECT pg_notify($1, $2)", &params);
        match timeout(Duration::from_secs(2), notify).await {
            Ok(Ok(_)) => true,
            _ => {
                self.client = None;
                false
            }
        }
    }
}
