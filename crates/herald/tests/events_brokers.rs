//! Event routes to brokers end to end (issue 12), on the real brokers: RabbitMQ at 127.0.0.1:5672 (guest/guest),
//! Mosquitto at 127.0.0.1:1883 and NATS with JetStream at 127.0.0.1:4222 (`bash scripts/services.sh rabbitmq
//! mosquitto nats`). A socket.io client (raw WebSocket frames, as the other Rust tests) emits with an ack; a
//! consumer the test subscribes gets the webhook's JSON body. Each test uses exchange, queue, topic, subject
//! and stream names of its own, so tests run in parallel and beside other runs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::{Relay, WsClient};
use futures_util::StreamExt;
use herald::auth::{AuthConfig, JwtConfig};
use herald::config::{AmqpRoute, Config, EventRoute, MqttRoute, NatsRoute, SiteConfig};
use herald::gateway::Gateway;
use herald::secret::Secret;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

const KEY: &str = "events-brokers-key-0123456789";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MQTT_URL: &str = "mqtt://127.0.0.1:1883";
const NATS_URL: &str = "nats://127.0.0.1:4222";
/// Longest wait for an ack or a message.
const WAIT: Duration = Duration::from_secs(10);

/// A name no other run uses: `<prefix><8 hex>` (letters and digits only: valid in every broker's names).
fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

fn jwt() -> JwtConfig {
    JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(Secret::new("events-brokers-test-secret")),
        public_key_pem: None,
        jwks_url: None,
        jwks_cache_secs: 300,
        issuer: None,
        audience: None,
    }
}

/// A JWT site (so sockets have users) with `events`; no recovery offsets, so frames are exact.
fn site(events: Vec<(&str, EventRoute)>) -> SiteConfig {
    let mut site = SiteConfig {
        api_keys: vec![Secret::new(KEY)],
        auth: AuthConfig::Jwt(jwt()),
        recovery_window_ms: 0,
        ..SiteConfig::new(unique("events"))
    };
    for (name, route) in events {
        site.events.insert(name.to_string(), route);
    }
    site
}

fn amqp(url: &str, exchange: &str, routing_key: &str) -> EventRoute {
    EventRoute {
        amqp: Some(AmqpRoute {
            url: url.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }),
        timeout_ms: 5000,
        ..EventRoute::default()
    }
}

fn mqtt(url: &str, topic: &str) -> EventRoute {
    EventRoute {
        mqtt: Some(MqttRoute {
            url: url.into(),
            topic: topic.into(),
        }),
        timeout_ms: 5000,
        ..EventRoute::default()
    }
}

fn nats(url: &str, subject: &str) -> EventRoute {
    EventRoute {
        nats: Some(NatsRoute {
            url: url.into(),
            subject: subject.into(),
        }),
        timeout_ms: 5000,
        ..EventRoute::default()
    }
}

async fn gateway(site: &SiteConfig) -> (SocketAddr, Gateway) {
    let config = Config {
        sites: vec![site.clone()],
        ..Config::default()
    };
    common::start_gateway(config).await
}

/// A connected client of `site`: user `user`, device `d-<user>`, in room `room`.
struct Client {
    ws: WsClient,
    addr: SocketAddr,
    nsp: String,
    id: String,
    user: String,
    next_ack: u64,
}

async fn join(addr: SocketAddr, site: &SiteConfig, user: &str, room: &str) -> Client {
    let token =
        herald::auth::jwt::mint(&jwt(), user, &[room.to_string()], WAIT * 60).expect("a token");
    let nsp = format!("/{}", site.name);
    let query = format!("token={token}&deviceId=d-{user}");
    let (ws, reply) = common::join_namespace(addr, &nsp, &query).await;
    let connect: Value = reply
        .strip_prefix(&format!("40{nsp},"))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("not connected: {reply}"));
    let id = connect["sid"].as_str().expect("a socket id").to_string();
    Client {
        ws,
        addr,
        nsp,
        id,
        user: user.to_string(),
        next_ack: 1,
    }
}

impl Client {
    /// Emits `event` with `args` and an ack; answers the ack's arguments.
    async fn emit(&mut self, event: &str, args: &[Value]) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let mut packet = vec![json!(event)];
        packet.extend(args.iter().cloned());
        self.ws
            .send(&format!("42{},{id}{}", self.nsp, Value::from(packet)));
        let prefix = format!("43{},{id}", self.nsp);
        let deadline = Instant::now() + WAIT;
        loop {
            let frame = timeout(deadline - Instant::now(), self.ws.next_text())
                .await
                .unwrap_or_else(|_| panic!("no ack for '{event}' in time"));
            if let Some(ack) = frame.strip_prefix(&prefix) {
                return serde_json::from_str(ack).expect("the ack's JSON");
            }
        }
    }

    /// The body a route gets for `event` with `args` from this client, in room `room`.
    fn body(&self, site: &SiteConfig, event: &str, args: &[Value], room: &str) -> Value {
        json!({
            "site": site.name,
            "event": event,
            "args": args,
            "socket": {
                "id": self.id,
                "user": self.user,
                "deviceId": format!("d-{}", self.user),
                "rooms": [self.id, room],
            },
        })
    }

    /// Asserts the client is still connected: the API lists its socket, and a publish to it arrives.
    async fn assert_connected(&mut self) {
        let path = format!("/api/v1/sites{}/sockets", self.nsp);
        let (status, listing) = common::api_json(self.addr, "GET", &path, KEY, &Value::Null).await;
        assert_eq!(status, 200, "{listing}");
        let listed = listing["sockets"].as_array().expect("a socket list");
        assert!(listed.iter().any(|s| s["id"] == self.id), "{listing}");
        let path = format!("/api/v1/sites{}/publish", self.nsp);
        let publish = json!({"rooms": [self.id], "event": "still-here", "args": [1]});
        let (status, answer) = common::api_json(self.addr, "POST", &path, KEY, &publish).await;
        assert_eq!(status, 200, "{answer}");
        let expected = format!(r#"42{},["still-here",1]"#, self.nsp);
        assert_eq!(self.ws.next_text().await, expected);
    }
}

const QUEUED: fn() -> Value = || json!([{"queued": true}]);

/// The error of an error ack.
fn error_of(ack: &Value) -> &str {
    ack[0]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error ack: {ack}"))
}

/// A port nothing listens on: bound, noted, closed.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    port
}

/// The status of the route whose label starts with `event →`.
fn status_of(gateway: &Gateway, event: &str) -> Value {
    let prefix = format!("{event} →");
    gateway
        .bridges
        .all()
        .iter()
        .map(|s| s.describe())
        .find(|s| s["bridge"].as_str().is_some_and(|l| l.starts_with(&prefix)))
        .unwrap_or_else(|| panic!("no status for route {event}"))
}

// ---------------------------------------------------------------------------------------------------- AMQP

async fn rabbit() -> (Connection, Channel) {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("these tests need RabbitMQ at 127.0.0.1:5672 (guest/guest)");
    let channel = connection.create_channel().await.expect("a channel");
    (connection, channel)
}

/// A topic exchange (durable as herald declares it, else deleted with its last binding) and an exclusive queue
/// bound to it with `binding`; answers a consumer of the queue.
async fn bound_queue(channel: &Channel, exchange: &str, binding: &str, durable: bool) -> Consumer {
    let options = ExchangeDeclareOptions {
        durable,
        auto_delete: !durable,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .expect("the exchange");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .expect("a queue");
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    channel
        .basic_consume(
            queue.name().clone(),
            "events-brokers-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

/// The next delivery: its routing key, content type and JSON body.
async fn delivery(consumer: &mut Consumer) -> (String, Option<String>, Value) {
    let delivery = timeout(WAIT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is open")
        .expect("a delivery");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|t| t.to_string());
    let body = serde_json::from_slice(&delivery.data).expect("a JSON body");
    (delivery.routing_key.to_string(), content_type, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_event_reaches_a_bound_queue_confirmed() {
    let exchange = unique("herald.test.events.");
    let (_connection, channel) = rabbit().await;
    // Declared otherwise than herald would: herald takes it as it is.
    let mut consumer = bound_queue(&channel, &exchange, "#", false).await;
    let site = site(vec![
        ("bid", amqp(AMQP_URL, &exchange, "{site}.{event}.{user}")),
        ("ask", amqp(AMQP_URL, &exchange, "asks.{socket}")),
    ]);
    let (addr, gateway) = gateway(&site).await;
    assert_eq!(status_of(&gateway, "bid")["state"], "idle");
    let user = unique("u");
    let mut client = join(addr, &site, &user, "lot_1").await;

    let args = [json!("lot_1"), json!({"amount": 25})];
    assert_eq!(client.emit("bid", &args).await, QUEUED());
    let (key, content_type, body) = delivery(&mut consumer).await;
    assert_eq!(key, format!("{}.bid.{user}", site.name));
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(body, client.body(&site, "bid", &args, "lot_1"));

    // A second route on the same URL shares the connection; {socket} fills its key.
    assert_eq!(client.emit("ask", &[json!(1)]).await, QUEUED());
    let (key, _, body) = delivery(&mut consumer).await;
    assert_eq!(key, format!("asks.{}", client.id));
    assert_eq!(body, client.body(&site, "ask", &[json!(1)], "lot_1"));

    // The site's key sees its routes in /api/v1/status.
    let (code, answer) = common::api_json(addr, "GET", "/api/v1/status", KEY, &Value::Null).await;
    assert_eq!(code, 200, "{answer}");
    let label = format!("bid → amqp {exchange} {{site}}.{{event}}.{{user}}");
    let shown = answer["bridges"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["bridge"] == label.as_str()))
        .unwrap_or_else(|| panic!("{label} in {answer}"));
    assert_eq!(
        (&shown["site"], &shown["state"], &shown["published"]),
        (&json!(site.name), &json!("up"), &json!(1))
    );
    assert_eq!(status_of(&gateway, "ask")["published"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_unroutable_event_gets_an_error_ack() {
    // The exchange exists (herald declares it) but nothing is bound: a mandatory publish comes back.
    let exchange = unique("herald.test.unbound.");
    let site = site(vec![
        ("lost", amqp(AMQP_URL, &exchange, "nobody.{event}")),
        ("direct", amqp(AMQP_URL, "", "no-such-queue-{socket}")),
    ]);
    let (addr, gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "r").await;

    let ack = client.emit("lost", &[json!(1)]).await;
    assert_eq!(
        error_of(&ack),
        "the broker could not route the event: no queue is bound for its routing key"
    );
    // The default exchange routes to a queue by name; there is none.
    let ack = client.emit("direct", &[json!(2)]).await;
    assert_eq!(
        error_of(&ack),
        "the broker could not route the event: no queue is bound for its routing key"
    );
    client.assert_connected().await;
    let status = status_of(&gateway, "lost");
    assert_eq!(
        (&status["rejected"], &status["published"]),
        (&json!(1), &json!(0))
    );

    // The route still works once a queue is bound.
    let (_connection, channel) = rabbit().await;
    let mut consumer = bound_queue(&channel, &exchange, "nobody.*", true).await;
    assert_eq!(client.emit("lost", &[json!(3)]).await, QUEUED());
    let (key, _, _) = delivery(&mut consumer).await;
    assert_eq!(key, "nobody.lost");
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

// ---------------------------------------------------------------------------------------------------- MQTT

/// A client subscribed to `filter` at QoS 1; answers the messages it gets, as (topic, payload).
async fn mqtt_subscriber(filter: &str) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Bytes)>) {
    let mut options = MqttOptions::new(unique("evtest"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 64);
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let (messages_tx, messages) = mpsc::unbounded_channel();
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if messages_tx.send((publish.topic, publish.payload)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    timeout(WAIT, subscribed)
        .await
        .expect("these tests need Mosquitto at 127.0.0.1:1883")
        .expect("a SUBACK");
    (client, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_event_reaches_a_subscriber_after_its_puback() {
    let base = unique("herald_test_devices_");
    let (_subscriber, mut messages) = mqtt_subscriber(&format!("{base}/#")).await;
    let site = site(vec![(
        "*",
        mqtt(MQTT_URL, &format!("{base}/{{user}}/{{event}}")),
    )]);
    let (addr, gateway) = gateway(&site).await;
    let user = unique("u");
    let mut client = join(addr, &site, &user, "desk").await;

    let args = [json!({"running": true, "left": 1500})];
    assert_eq!(client.emit("state", &args).await, QUEUED());
    let (topic, payload) = timeout(WAIT, messages.recv())
        .await
        .expect("a message in time")
        .expect("the subscriber runs");
    assert_eq!(topic, format!("{base}/{user}/state"));
    let body: Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(body, client.body(&site, "state", &args, "desk"));

    // Many events at once: each ack is its own PUBACK's, and each message arrives.
    let mut acks = Vec::new();
    for n in 0..10 {
        acks.push(client.emit(&format!("tick{n}"), &[json!(n)]).await);
    }
    assert!(acks.iter().all(|ack| *ack == QUEUED()), "{acks:?}");
    for _ in 0..10 {
        timeout(WAIT, messages.recv())
            .await
            .expect("every tick")
            .expect("the subscriber runs");
    }
    assert_eq!(status_of(&gateway, "*")["published"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_refuses_a_value_that_would_add_a_level_or_a_wildcard() {
    let base = unique("herald_test_inject_");
    let (_subscriber, mut messages) = mqtt_subscriber(&format!("{base}/#")).await;
    let site = site(vec![("*", mqtt(MQTT_URL, &format!("{base}/{{event}}/in")))]);
    let (addr, gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "r").await;

    for (event, shown) in [
        ("a/b", "'/'"),
        ("+", "'+'"),
        ("#", "'#'"),
        ("a b", "U+0020"),
    ] {
        let ack = client.emit(event, &[]).await;
        assert_eq!(
            error_of(&ack),
            format!("{{event}} holds {shown}, which cannot be in one mqtt topic level"),
            "{event}"
        );
    }
    client.assert_connected().await;
    // A dot is an ordinary character in MQTT.
    assert_eq!(client.emit("chat.message", &[]).await, QUEUED());
    let (topic, _) = timeout(WAIT, messages.recv())
        .await
        .expect("the good event")
        .expect("the subscriber runs");
    assert_eq!(topic, format!("{base}/chat.message/in"));
    let status = status_of(&gateway, "*");
    assert_eq!(
        (&status["rejected"], &status["published"]),
        (&json!(4), &json!(1))
    );
}

// ---------------------------------------------------------------------------------------------------- NATS

async fn nats_client() -> async_nats::Client {
    async_nats::connect(NATS_URL)
        .await
        .expect("these tests need NATS at 127.0.0.1:4222")
}

/// A JetStream API call; the answer's JSON.
async fn jetstream(client: &async_nats::Client, api: &str, request: Value) -> Value {
    let answer = client
        .request(format!("$JS.API.{api}"), Bytes::from(request.to_string()))
        .await
        .expect("these tests need JetStream on the NATS server (nats-server -js)");
    serde_json::from_slice(&answer.payload).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_event_reaches_a_core_subscriber() {
    let base = unique("herald.test.events.");
    let server = nats_client().await;
    let mut subscriber = server
        .subscribe(format!("{base}.>"))
        .await
        .expect("subscribe");
    server.flush().await.expect("flush");
    let site = site(vec![(
        "*",
        nats(NATS_URL, &format!("{base}.{{site}}.{{event}}")),
    )]);
    let (addr, gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "lobby").await;

    let args = [json!("hello"), json!([1, 2])];
    assert_eq!(client.emit("ping", &args).await, QUEUED());
    let message = timeout(WAIT, subscriber.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open");
    assert_eq!(
        message.subject.as_str(),
        format!("{base}.{}.ping", site.name)
    );
    let body: Value = serde_json::from_slice(&message.payload).expect("JSON");
    assert_eq!(body, client.body(&site, "ping", &args, "lobby"));

    // A dot would add a token, a star or a '>' a wildcard: refused, and the socket stays.
    for (event, shown) in [("a.b", "'.'"), ("*", "'*'"), (">", "'>'")] {
        let ack = client.emit(event, &[]).await;
        assert_eq!(
            error_of(&ack),
            format!("{{event}} holds {shown}, which cannot be in one nats subject token")
        );
    }
    client.assert_connected().await;
    // A slash is an ordinary character in NATS.
    assert_eq!(client.emit("a/b", &[]).await, QUEUED());
    let message = timeout(WAIT, subscriber.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open");
    assert_eq!(
        message.subject.as_str(),
        format!("{base}.{}.a/b", site.name)
    );
    let status = status_of(&gateway, "*");
    assert_eq!(
        (&status["published"], &status["rejected"]),
        (&json!(2), &json!(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_event_to_a_stream_waits_for_the_jetstream_ack() {
    // A stream that keeps one message and refuses more: the second event's ack is the stream's refusal, which
    // only a JetStream publish hears (a plain publish would answer queued).
    let base = unique("herald_test_js.");
    let stream = base.replace('.', "_");
    let server = nats_client().await;
    let created = jetstream(
        &server,
        &format!("STREAM.CREATE.{stream}"),
        json!({
            "name": stream,
            "subjects": [format!("{base}.>")],
            "storage": "memory",
            "max_msgs": 1,
            "discard": "new",
        }),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    let site = site(vec![("*", nats(NATS_URL, &format!("{base}.{{event}}")))]);
    let (addr, _gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "lobby").await;

    let args = [json!({"n": 1})];
    assert_eq!(client.emit("first", &args).await, QUEUED());
    let stored = jetstream(
        &server,
        &format!("STREAM.MSG.GET.{stream}"),
        json!({"last_by_subj": format!("{base}.first")}),
    )
    .await;
    let data = base64::engine::general_purpose::STANDARD
        .decode(
            stored["message"]["data"]
                .as_str()
                .expect("a stored message"),
        )
        .expect("base64");
    let body: Value = serde_json::from_slice(&data).expect("JSON");
    assert_eq!(body, client.body(&site, "first", &args, "lobby"));

    let ack = client.emit("second", &[json!({"n": 2})]).await;
    assert_eq!(error_of(&ack), "the stream refused the event");
    client.assert_connected().await;
    jetstream(&server, &format!("STREAM.DELETE.{stream}"), json!({})).await;
}

// ---------------------------------------------------------------------------------------------------- outages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_gives_an_error_ack_in_time_and_the_socket_stays() {
    let port = closed_port().await;
    let subject = unique("herald.test.alive.");
    let timeout_ms = 2000;
    let with_timeout = |route: EventRoute| EventRoute {
        timeout_ms,
        ..route
    };
    let site = site(vec![
        (
            "to_amqp",
            with_timeout(amqp(
                &format!("amqp://guest:hunter2@127.0.0.1:{port}/%2f"),
                "x",
                "k",
            )),
        ),
        (
            "to_mqtt",
            with_timeout(mqtt(
                &format!("mqtt://herald:hunter2@127.0.0.1:{port}"),
                "t/{event}",
            )),
        ),
        (
            "to_nats",
            with_timeout(nats(
                &format!("nats://herald:hunter2@127.0.0.1:{port}"),
                "s.{event}",
            )),
        ),
        ("alive", nats(NATS_URL, &subject)),
    ]);
    let (addr, gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "r").await;
    let server = nats_client().await;
    let mut subscriber = server.subscribe(subject.clone()).await.expect("subscribe");
    server.flush().await.expect("flush");

    for event in ["to_amqp", "to_mqtt", "to_nats"] {
        for attempt in 0..2 {
            let started = Instant::now();
            let ack = client.emit(event, &[json!(attempt)]).await;
            let took = started.elapsed();
            assert_eq!(error_of(&ack), "the broker is unavailable", "{event}");
            assert!(
                took < Duration::from_millis(timeout_ms + 1000),
                "{event}: the ack took {took:?}"
            );
        }
        let status = status_of(&gateway, event);
        assert_eq!(status["state"], "down", "{event}: {status}");
        assert_eq!(status["retried"], 2, "{event}: {status}");
        assert!(!status.to_string().contains("hunter2"), "{status}");
    }
    client.assert_connected().await;
    // Another route still works.
    assert_eq!(client.emit("alive", &[json!("yes")]).await, QUEUED());
    let message = timeout(WAIT, subscriber.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open");
    assert_eq!(message.subject.as_str(), subject);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_gets_an_error_ack_within_the_route_timeout() {
    // A listener that accepts and never speaks: the connection is never made, and each event gives up at its
    // route's timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("an address").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let quick = |route: EventRoute| EventRoute {
        timeout_ms: 400,
        ..route
    };
    let site = site(vec![
        (
            "to_amqp",
            quick(amqp(&format!("amqp://127.0.0.1:{port}"), "", "k")),
        ),
        (
            "to_mqtt",
            quick(mqtt(&format!("mqtt://127.0.0.1:{port}"), "t")),
        ),
        (
            "to_nats",
            quick(nats(&format!("nats://127.0.0.1:{port}"), "s")),
        ),
    ]);
    let (addr, _gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "r").await;
    for event in ["to_amqp", "to_mqtt", "to_nats"] {
        let started = Instant::now();
        let ack = client.emit(event, &[]).await;
        let took = started.elapsed();
        assert_eq!(error_of(&ack), "the broker is unavailable", "{event}");
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_millis(1400),
            "{event}: the ack took {took:?}"
        );
    }
    client.assert_connected().await;
}

// ---------------------------------------------------------------------------------------------- reconnection

/// Waits until the status of route `event` is in `state`.
async fn wait_route_state(gateway: &Gateway, event: &str, state: &str) -> Value {
    timeout(WAIT, async {
        loop {
            let status = status_of(gateway, event);
            if status["state"] == state {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "route {event} is not {state}: {}",
            status_of(gateway, event)
        )
    })
}

/// The broker behind `relay` goes away: the route goes down without saying the URL or its password, events
/// fail at once and the socket stays; once the broker is back the link reconnects by itself (and only then:
/// one connection before, one after, whatever the number of events).
async fn cut_and_restore(gateway: &Gateway, relay: &Relay, client: &mut Client, event: &str) {
    assert_eq!(relay.accepted(), 1, "one connection for every event so far");
    relay.set_cut(true);
    let status = wait_route_state(gateway, event, "down").await;
    let error = status["last_error"].to_string();
    assert!(
        !error.contains("hunter2") && !error.contains("://"),
        "{error}"
    );
    let started = Instant::now();
    let ack = client.emit(event, &[json!("while down")]).await;
    assert_eq!(error_of(&ack), "the broker is unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "down fails at once"
    );
    client.assert_connected().await;
    relay.set_cut(false);
    wait_route_state(gateway, event, "up").await;
    assert_eq!(relay.accepted(), 2, "one new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_link_reconnects_after_losing_the_broker() {
    let relay = Relay::start(5672).await;
    let exchange = unique("herald.test.reconnect.");
    let (_connection, channel) = rabbit().await;
    let mut consumer = bound_queue(&channel, &exchange, "#", true).await;
    let site = site(vec![(
        "bid",
        amqp(
            &relay.url("amqp://guest:guest@", "/%2f"),
            &exchange,
            "{event}",
        ),
    )]);
    let (addr, gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "r").await;
    for n in 0..3 {
        assert_eq!(client.emit("bid", &[json!(n)]).await, QUEUED());
        assert_eq!(delivery(&mut consumer).await.2["args"], json!([n]));
    }
    cut_and_restore(&gateway, &relay, &mut client, "bid").await;
    assert_eq!(client.emit("bid", &[json!("back")]).await, QUEUED());
    assert_eq!(delivery(&mut consumer).await.2["args"], json!(["back"]));
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_link_reconnects_after_losing_the_broker() {
    let relay = Relay::start(1883).await;
    let base = unique("herald_test_reconnect_");
    let (_subscriber, mut messages) = mqtt_subscriber(&format!("{base}/#")).await;
    let site = site(vec![(
        "state",
        mqtt(
            &relay.url("mqtt://herald:hunter2@", ""),
            &format!("{base}/{{event}}"),
        ),
    )]);
    let (addr, gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "r").await;
    for n in 0..3 {
        assert_eq!(client.emit("state", &[json!(n)]).await, QUEUED());
        let (_, payload) = timeout(WAIT, messages.recv())
            .await
            .expect("a message")
            .expect("the subscriber runs");
        let body: Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(body["args"], json!([n]));
    }
    cut_and_restore(&gateway, &relay, &mut client, "state").await;
    assert_eq!(client.emit("state", &[json!("back")]).await, QUEUED());
    let (_, payload) = timeout(WAIT, messages.recv())
        .await
        .expect("a message")
        .expect("the subscriber runs");
    let body: Value = serde_json::from_slice(&payload).expect("JSON");
    assert_eq!(body["args"], json!(["back"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_link_reconnects_after_losing_the_server() {
    let relay = Relay::start(4222).await;
    let subject = unique("herald.test.reconnect.");
    let server = nats_client().await;
    let mut subscriber = server.subscribe(subject.clone()).await.expect("subscribe");
    server.flush().await.expect("flush");
    let site = site(vec![("ping", nats(&relay.url("nats://", ""), &subject))]);
    let (addr, gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "r").await;
    for n in 0..3 {
        assert_eq!(client.emit("ping", &[json!(n)]).await, QUEUED());
        let message = timeout(WAIT, subscriber.next())
            .await
            .expect("a message")
            .expect("the subscription is open");
        let body: Value = serde_json::from_slice(&message.payload).expect("JSON");
        assert_eq!(body["args"], json!([n]));
    }
    cut_and_restore(&gateway, &relay, &mut client, "ping").await;
    assert_eq!(client.emit("ping", &[json!("back")]).await, QUEUED());
    let message = timeout(WAIT, subscriber.next())
        .await
        .expect("a message")
        .expect("the subscription is open");
    let body: Value = serde_json::from_slice(&message.payload).expect("JSON");
    assert_eq!(body["args"], json!(["back"]));
}

// ---------------------------------------------------------------------------------------------------- reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_route_to_another_subject_and_keeps_the_socket() {
    let base = unique("herald.test.reload.");
    let server = nats_client().await;
    let mut subscriber = server
        .subscribe(format!("{base}.>"))
        .await
        .expect("subscribe");
    server.flush().await.expect("flush");
    let mut site = site(vec![("bid", nats(NATS_URL, &format!("{base}.old")))]);
    let (addr, gateway) = gateway(&site).await;
    let mut client = join(addr, &site, &unique("u"), "lot").await;
    assert_eq!(client.emit("bid", &[json!(1)]).await, QUEUED());
    let first = timeout(WAIT, subscriber.next()).await.expect("in time");
    assert_eq!(first.expect("open").subject.as_str(), format!("{base}.old"));

    site.events
        .insert("bid".into(), nats(NATS_URL, &format!("{base}.new")));
    let report = gateway
        .reload(Config {
            sites: vec![site.clone()],
            ..Config::default()
        })
        .await
        .expect("the reload is taken");
    assert_eq!(report.changed, [site.name.clone()]);
    let label = status_of(&gateway, "bid")["bridge"].to_string();
    assert!(label.contains(&format!("{base}.new")), "{label}");
    assert_eq!(
        gateway.bridges.all().len(),
        1,
        "the old route's status is gone"
    );

    // The same socket, its next event on the new subject.
    assert_eq!(client.emit("bid", &[json!(2)]).await, QUEUED());
    let second = timeout(WAIT, subscriber.next()).await.expect("in time");
    assert_eq!(
        second.expect("open").subject.as_str(),
        format!("{base}.new")
    );
    client.assert_connected().await;
}
