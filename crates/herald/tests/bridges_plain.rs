//! Every broker bridge reaches herald's plain clients: a message published into RabbitMQ (127.0.0.1:5672,
//! guest/guest), Mosquitto (1883), NATS (4222), Redis (6379, pub/sub on the default database) or Postgres
//! (5432, user `postgres`, trust) arrives at a plain WebSocket client (`/ws/{site}`, tokio-tungstenite) and at
//! an event-stream client (`/sse/{site}`, reqwest reading the body chunk by chunk and parsing it as
//! `EventSource` does), as the same logged broadcast: same event name, same arguments, the WebSocket frame's
//! `offset` equal to the stream's `id:`. A bad message (not JSON, or a publish that reaches no one) is
//! rejected and counted, and the good message after it still reaches both clients. `bash scripts/services.sh`
//! starts the brokers; each test uses a queue, topic, subject or channel of its own.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Received, WsClient};
use herald::bridges::status::State;
use herald::config::{BridgeConfig, BridgeKind, Config, SiteConfig};
use herald::gateway::Gateway;
use herald::secret::Secret;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::{BasicProperties, ConnectionProperties};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout};

const KEY: &str = "bridge-plain-key-0123456789";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MQTT_URL: &str = "mqtt://127.0.0.1:1883";
const NATS_URL: &str = "nats://127.0.0.1:4222";
const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Longest wait for a bridge to come up or a message to cross.
const WAIT: Duration = Duration::from_secs(10);
/// How long a client listens to be sure nothing more comes.
const QUIET: Duration = Duration::from_millis(500);
/// The event streams' keep-alive period: short, so comments interleave with the events the test reads.
const SSE_PING_MS: u64 = 200;

/// A name no other run uses: `<prefix><random>` (letters, digits, `-`, `_` and `.`, valid for every broker).
fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// A public site whose clients join `lobby`, logging broadcasts for recovery (so each carries an offset).
fn site(name: &str) -> SiteConfig {
    SiteConfig {
        api_keys: vec![Secret::new(KEY)],
        public_channel: Some("lobby".into()),
        recovery_window_ms: 60_000,
        ..SiteConfig::new(name.to_string())
    }
}

/// A bridge of `kind` from `source` (its queue, topic, subject or channel) to `site`, v1 publish JSON.
fn bridge(kind: BridgeKind, source: &str, site: &str) -> BridgeConfig {
    let source = Some(source.to_string());
    let url = match kind {
        BridgeKind::Amqp => AMQP_URL,
        BridgeKind::Mqtt => MQTT_URL,
        BridgeKind::Nats => NATS_URL,
        BridgeKind::Redis => REDIS_URL,
        BridgeKind::Postgres => POSTGRES_URL,
    };
    BridgeConfig {
        kind,
        url: url.into(),
        queue: source.clone().filter(|_| kind == BridgeKind::Amqp),
        topic: source.clone().filter(|_| kind == BridgeKind::Mqtt),
        subject: source.clone().filter(|_| kind == BridgeKind::Nats),
        channel: source.filter(|_| matches!(kind, BridgeKind::Redis | BridgeKind::Postgres)),
        site: site.into(),
        room: None,
        event: None,
        retain: false,
        if_changed: false,
    }
}

/// A gateway serving `site` with `bridge`, once the bridge is up.
async fn start(site_name: &str, bridge: BridgeConfig) -> (SocketAddr, Gateway) {
    let mut config = Config {
        sites: vec![site(site_name)],
        bridges: vec![bridge],
        ..Config::default()
    };
    config.server.engine.sse_ping_ms = SSE_PING_MS;
    let (addr, gateway) = common::start_gateway(config).await;
    let status = &gateway.bridges.all()[0];
    timeout(WAIT, async {
        while status.state() != State::Up {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the bridge is not up: {}", status.describe()));
    (addr, gateway)
}

/// Waits until the bridge's counters are `published` and `rejected` (a counter moves just after the frame it
/// counts went out).
async fn wait_counts(gateway: &Gateway, published: u64, rejected: u64) {
    let status = &gateway.bridges.all()[0];
    timeout(WAIT, async {
        loop {
            let described = status.describe();
            if described["published"] == published && described["rejected"] == rejected {
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "expected {published} published and {rejected} rejected: {}",
            status.describe()
        )
    });
}

// ------------------------------------------------------------------------------------------- plain clients

/// A plain WebSocket client of `site` on `addr`, past its welcome.
async fn plain_websocket(addr: SocketAddr, site: &str) -> WsClient {
    let ws = common::ws_open(addr, &format!("/ws/{site}?deviceId=ws-1"), None).await;
    let mut client = WsClient::pump(ws);
    let welcome = client.next_text().await;
    assert!(
        welcome.starts_with(r#"{"type":"welcome","#),
        "the first frame is the welcome, type first: {welcome}"
    );
    let welcome: Value = serde_json::from_str(&welcome).expect("a JSON welcome");
    assert_eq!(welcome["rooms"], json!(["lobby"]), "{welcome}");
    assert!(welcome["socket"].is_string(), "{welcome}");
    client
}

/// The next event frame of a plain WebSocket: its event name, arguments and offset. The frame is checked
/// whole: `type` first, and no field but those.
async fn next_ws_event(client: &mut WsClient) -> (String, Value, String) {
    let text = timeout(WAIT, client.next_text())
        .await
        .expect("an event frame in time");
    assert!(
        text.starts_with(r#"{"type":"event","#),
        "an event frame, type first: {text}"
    );
    let frame: Value = serde_json::from_str(&text).expect("a JSON frame");
    let object = frame.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["args", "event", "offset", "type"], "{text}");
    (
        frame["event"].as_str().expect("an event name").to_string(),
        frame["args"].clone(),
        frame["offset"].as_str().expect("an offset").to_string(),
    )
}

async fn assert_ws_quiet(client: &mut WsClient) {
    if let Ok(more) = timeout(QUIET, client.next()).await {
        match more {
            Received::Text(text) => panic!("an unexpected frame: {text}"),
            other => panic!("the connection did not stay open: {other:?}"),
        }
    }
}

/// One event of an event stream, as `EventSource` dispatches it.
#[derive(Debug)]
struct SseEvent {
    id: Option<String>,
    event: String,
    data: Value,
}

/// An event-stream client: the response body read chunk by chunk, cut into blank-line separated blocks.
struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// `: ping` comments seen so far.
    comments: usize,
}

impl EventStream {
    /// `GET /sse/{site}` on `addr`; past its welcome.
    async fn open(addr: SocketAddr, site: &str) -> EventStream {
        let url = format!("http://{addr}/sse/{site}?deviceId=sse-1");
        let response = timeout(
            WAIT,
            reqwest::Client::new()
                .get(url)
                .header("accept", "text/event-stream")
                .send(),
        )
        .await
        .expect("the stream's head in time")
        .expect("a response");
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let mut stream = EventStream {
            response,
            buffer: Vec::new(),
            comments: 0,
        };
        let welcome = stream.next().await;
        assert_eq!(
            (welcome.id.as_deref(), welcome.event.as_str()),
            (None, "welcome")
        );
        assert_eq!(welcome.data["type"], "welcome", "{:?}", welcome.data);
        assert_eq!(
            welcome.data["rooms"],
            json!(["lobby"]),
            "{:?}",
            welcome.data
        );
        stream
    }

    /// The next event, skipping comments; fails after [`WAIT`] or when the stream ends.
    async fn next(&mut self) -> SseEvent {
        timeout(WAIT, self.next_unbounded())
            .await
            .expect("an event in time")
    }

    /// Cancel-safe: a chunk is moved into the buffer in the same step it is taken from the body.
    async fn next_unbounded(&mut self) -> SseEvent {
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end).collect();
                self.buffer.drain(..2);
                let block = String::from_utf8(block).expect("UTF-8 blocks");
                if let Some(event) = self.parse(&block) {
                    return event;
                }
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => panic!("the stream ended"),
                Err(e) => panic!("the stream failed: {e}"),
            }
        }
    }

    /// An event of `block`, or `None` when it holds only comments.
    fn parse(&mut self, block: &str) -> Option<SseEvent> {
        let mut id = None;
        let mut event = None;
        let mut data: Option<String> = None;
        for line in block.lines() {
            if let Some(comment) = line.strip_prefix(':') {
                assert_eq!(comment, " ping", "the only comment herald sends");
                self.comments += 1;
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match name {
                "id" => id = Some(value),
                "event" => event = Some(value),
                "data" => {
                    data = Some(match data {
                        Some(before) => format!("{before}\n{value}"),
                        None => value,
                    })
                }
                // The reconnection delay, which a stream may set.
                "retry" => {}
                other => panic!("an unexpected field {other:?} in {block:?}"),
            }
        }
        let data = data?;
        Some(SseEvent {
            id,
            event: event.unwrap_or_else(|| "message".into()),
            data: serde_json::from_str(&data).expect("JSON data"),
        })
    }

    async fn assert_quiet(&mut self) {
        if let Ok(more) = timeout(QUIET, self.next_unbounded()).await {
            panic!("an unexpected event: {more:?}");
        }
    }
}

// ------------------------------------------------------------------------------------------- publishers

/// The test's own client of a broker, publishing into the bridge's source.
enum Publisher {
    Amqp {
        _connection: lapin::Connection,
        channel: lapin::Channel,
        queue: String,
    },
    Mqtt {
        client: AsyncClient,
        topic: String,
    },
    Nats {
        client: async_nats::Client,
        subject: String,
    },
    Redis {
        connection: redis::aio::MultiplexedConnection,
        channel: String,
    },
    Postgres {
        client: tokio_postgres::Client,
        channel: String,
    },
}

impl Publisher {
    async fn connect(kind: BridgeKind, source: &str) -> Publisher {
        let source = source.to_string();
        match kind {
            BridgeKind::Amqp => {
                let connection =
                    lapin::Connection::connect(AMQP_URL, ConnectionProperties::default())
                        .await
                        .expect("this test needs RabbitMQ at 127.0.0.1:5672 (guest/guest)");
                let channel = connection.create_channel().await.expect("a channel");
                Publisher::Amqp {
                    _connection: connection,
                    channel,
                    queue: source,
                }
            }
            BridgeKind::Mqtt => {
                let mut options = MqttOptions::new(unique("herald-plain-"), "127.0.0.1", 1883);
                options.set_keep_alive(Duration::from_secs(30));
                let (client, mut events) = AsyncClient::new(options, 64);
                tokio::spawn(async move {
                    while events.poll().await.is_ok() {}
                    eprintln!(
                        "the test's MQTT client lost Mosquitto (it needs it at 127.0.0.1:1883)"
                    );
                });
                Publisher::Mqtt {
                    client,
                    topic: source,
                }
            }
            BridgeKind::Nats => Publisher::Nats {
                client: async_nats::connect(NATS_URL)
                    .await
                    .expect("this test needs NATS at 127.0.0.1:4222"),
                subject: source,
            },
            BridgeKind::Redis => Publisher::Redis {
                connection: redis::Client::open(REDIS_URL)
                    .expect("a valid URL")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("this test needs Redis at 127.0.0.1:6379"),
                channel: source,
            },
            BridgeKind::Postgres => {
                let (client, connection) =
                    tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls)
                        .await
                        .expect(
                            "this test needs Postgres at 127.0.0.1:5432 (user postgres, trust)",
                        );
                tokio::spawn(connection);
                Publisher::Postgres {
                    client,
                    channel: source,
                }
            }
        }
    }

    /// Publishes `body`: AMQP waits for the broker's confirm, NATS flushes, Redis and Postgres answer once
    /// the broker has it; MQTT only queues it in the client. The test then waits for the clients' frames and
    /// the bridge's counters.
    async fn publish(&mut self, body: &str) {
        match self {
            Publisher::Amqp { channel, queue, .. } => {
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("publish confirmed");
            }
            Publisher::Mqtt { client, topic } => client
                .publish(
                    topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    body.as_bytes().to_vec(),
                )
                .await
                .expect("publish"),
            Publisher::Nats { client, subject } => {
                client
                    .publish(subject.clone(), body.to_string().into())
                    .await
                    .expect("publish");
                client.flush().await.expect("flush");
            }
            Publisher::Redis {
                connection,
                channel,
            } => {
                let heard: i64 = redis::cmd("PUBLISH")
                    .arg(channel.as_str())
                    .arg(body)
                    .query_async(connection)
                    .await
                    .expect("PUBLISH");
                assert_eq!(heard, 1, "the bridge is the channel's one subscriber");
            }
            Publisher::Postgres { client, channel } => {
                client
                    .execute("SELECT pg_notify($1, $2)", &[&channel.as_str(), &body])
                    .await
                    .expect("pg_notify");
            }
        }
    }

    /// Removes what the test left on the broker (AMQP's durable queue).
    async fn clean_up(&self) {
        if let Publisher::Amqp { channel, queue, .. } = self {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

// ------------------------------------------------------------------------------------------- the check

/// The v1 publish of message `n` to the room `lobby`: two arguments, one of them an object, one non-ASCII.
fn good(kind: &str, n: u64) -> (String, Value) {
    let args = json!([{"n": n, "via": kind, "tags": ["a", "b"]}, "déjà vu"]);
    let body = json!({"rooms": ["lobby"], "event": "news", "args": args});
    (body.to_string(), args)
}

/// Both plain clients get `args` as event `news`, as one logged broadcast: the WebSocket frame's offset is
/// the stream's id.
async fn both_get(ws: &mut WsClient, sse: &mut EventStream, args: &Value) {
    let (event, got, offset) = next_ws_event(ws).await;
    assert_eq!((event.as_str(), &got), ("news", args));
    let block = sse.next().await;
    assert_eq!((block.event.as_str(), &block.data), ("news", args));
    assert_eq!(block.id.as_deref(), Some(offset.as_str()), "same broadcast");
    let (ms, seq) = offset.split_once('-').expect("an offset <ms>-<seq>");
    assert!(
        ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
        "{offset}"
    );
}

/// A message from the broker behind a bridge of `kind` reaches a plain WebSocket and an event stream; a
/// message that is not JSON and one that reaches no one are rejected, and the next good message still
/// reaches both, and nothing else does.
async fn reaches_plain_clients(kind: BridgeKind, source: &str) {
    let name = format!("{kind:?}").to_lowercase();
    let site_name = unique("plain-");
    let (addr, gateway) = start(&site_name, bridge(kind, source, &site_name)).await;
    let mut ws = plain_websocket(addr, &site_name).await;
    let mut sse = EventStream::open(addr, &site_name).await;
    let mut publisher = Publisher::connect(kind, source).await;

    let (body, args) = good(&name, 1);
    publisher.publish(&body).await;
    both_get(&mut ws, &mut sse, &args).await;

    publisher.publish("not json").await;
    let no_receiver = json!({"event": "news", "args": ["to no one"]});
    publisher.publish(&no_receiver.to_string()).await;
    let (body, args) = good(&name, 2);
    publisher.publish(&body).await;
    both_get(&mut ws, &mut sse, &args).await;
    wait_counts(&gateway, 2, 2).await;

    assert_ws_quiet(&mut ws).await;
    sse.assert_quiet().await;
    assert!(
        sse.comments > 0,
        "keep-alive comments came between the events"
    );
    wait_counts(&gateway, 2, 2).await;
    publisher.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_messages_reach_plain_clients_and_bad_ones_are_rejected() {
    reaches_plain_clients(BridgeKind::Amqp, &unique("herald-test-plain-amqp-")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_messages_reach_plain_clients_and_bad_ones_are_rejected() {
    let topic = format!("{}/in", unique("herald-test-plain-"));
    reaches_plain_clients(BridgeKind::Mqtt, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_messages_reach_plain_clients_and_bad_ones_are_rejected() {
    reaches_plain_clients(BridgeKind::Nats, &unique("herald.test.plain.")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_messages_reach_plain_clients_and_bad_ones_are_rejected() {
    reaches_plain_clients(BridgeKind::Redis, &unique("herald:test:plain:")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_messages_reach_plain_clients_and_bad_ones_are_rejected() {
    // Mixed case: the bridge listens to the exact name pg_notify takes.
    reaches_plain_clients(BridgeKind::Postgres, &unique("Herald_Plain_")).await;
}
