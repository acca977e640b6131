//! The AMQP and MQTT bridges end to end, against the real brokers: RabbitMQ at 127.0.0.1:5672 (guest/guest) and
//! Mosquitto 2 at 127.0.0.1:1883 (`bash scripts/services.sh rabbitmq mosquitto` starts them); the cluster and
//! retry tests also need Redis at 127.0.0.1:6379 and use its database 14. Each test uses queue and topic names
//! of its own, so runs do not see each other's messages. Relays the tests can cut stand between herald and a
//! service to make it fail: the broker (reconnection) or Redis (the store, so publishes answer Retry).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Relay, WsClient};
use herald::bridges::status::State;
use herald::config::{BridgeConfig, BridgeKind, Config, SiteConfig};
use herald::gateway::Gateway;
use herald::secret::Secret;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

const KEY: &str = "bridge-key-0123456789";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MQTT_URL: &str = "mqtt://127.0.0.1:1883";
/// Longest wait for a bridge to connect or a message to cross.
const WAIT: Duration = Duration::from_secs(10);

/// A name no other run uses: `<prefix>-<random>` (letters, digits and `-`, valid in queues, topics and rooms).
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A public site whose clients join `lobby`; exact frames (no recovery offsets).
fn site(name: &str) -> SiteConfig {
    let mut site = SiteConfig::new(name.to_string());
    site.api_keys = vec![Secret::new(KEY)];
    site.public_channel = Some("lobby".into());
    site.recovery_window_ms = 0;
    site
}

/// A bridge of `kind` from `source` (queue or topic) to `site`, v1 publish JSON.
fn bridge(kind: BridgeKind, source: &str, site: &str) -> BridgeConfig {
    let (url, queue, topic) = match kind {
        BridgeKind::Amqp => (AMQP_URL, Some(source.to_string()), None),
        _ => (MQTT_URL, None, Some(source.to_string())),
    };
    BridgeConfig {
        kind,
        url: url.into(),
        queue,
        topic,
        subject: None,
        channel: None,
        site: site.into(),
        room: None,
        event: None,
        retain: false,
        if_changed: false,
    }
}

/// `bridge` in raw mode: each body is the one argument of `event` in `room`, retained.
fn raw(mut bridge: BridgeConfig, room: &str, event: &str) -> BridgeConfig {
    bridge.room = Some(room.into());
    bridge.event = Some(event.into());
    bridge.retain = true;
    bridge
}

/// A gateway serving `site` with `bridge`, once the bridge is up.
async fn start(site_name: &str, bridge: BridgeConfig) -> (SocketAddr, Gateway) {
    let config = Config {
        sites: vec![site(site_name)],
        bridges: vec![bridge],
        ..Config::default()
    };
    let (addr, gateway) = common::start_gateway(config).await;
    wait_up(&gateway).await;
    (addr, gateway)
}

async fn wait_up(gateway: &Gateway) {
    wait_state(gateway, State::Up).await;
}

async fn wait_state(gateway: &Gateway, state: State) {
    let status = &gateway.bridges.all()[0];
    timeout(WAIT, async {
        while status.state() != state {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the bridge is not {state:?}: {}", status.describe()));
}

/// Waits until the bridge's counters are `published` and `rejected`; answers its status.
async fn wait_counts(gateway: &Gateway, published: u64, rejected: u64) -> Value {
    let status = &gateway.bridges.all()[0];
    timeout(WAIT, async {
        loop {
            let described = status.describe();
            if described["published"] == published && described["rejected"] == rejected {
                return described;
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
    })
}

/// A client of `site` on `addr` (in `lobby`); returns it and its socket id.
async fn join(addr: SocketAddr, site: &str) -> (WsClient, String) {
    let (client, reply) = common::join_namespace(addr, &format!("/{site}"), "deviceId=d1").await;
    let connect: Value = serde_json::from_str(
        reply
            .strip_prefix(&format!("40/{site},"))
            .unwrap_or_else(|| panic!("not a CONNECT: {reply}")),
    )
    .expect("CONNECT JSON");
    let id = connect["sid"].as_str().expect("a socket id").to_string();
    (client, id)
}

/// `method path` on the API with the site key; the status and the JSON answer.
async fn api(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    common::api_json(addr, method, path, KEY, body).await
}

/// Moves socket `id` of `site` into `room`.
async fn enter(addr: SocketAddr, site: &str, id: &str, room: &str) {
    let path = format!("/api/v1/sites/{site}/sockets/{id}/rooms");
    let (status, answer) = api(addr, "POST", &path, &json!({"join": [room]})).await;
    assert_eq!(status, 200, "{answer}");
}

/// The values `room` of `site` retains: `[{event, args}]`.
async fn retained(addr: SocketAddr, site: &str, room: &str) -> Vec<Value> {
    let path = format!("/api/v1/sites/{site}/rooms/{room}/retained");
    let (status, answer) = api(addr, "GET", &path, &Value::Null).await;
    assert_eq!(status, 200, "{answer}");
    answer["retained"]
        .as_array()
        .expect("a retained list")
        .iter()
        .map(|v| json!({"event": v["event"], "args": v["args"]}))
        .collect()
}

/// Asserts nothing reaches `client` for a moment.
async fn assert_quiet(client: &mut WsClient) {
    assert!(
        timeout(Duration::from_millis(300), client.next_text())
            .await
            .is_err(),
        "an unexpected frame"
    );
}

// ---------------------------------------------------------------------------------------------------- AMQP

/// A connection and channel to RabbitMQ, for the tests' own declarations and publishes.
async fn rabbit() -> (Connection, Channel) {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("these tests need RabbitMQ at 127.0.0.1:5672 (guest/guest)");
    let channel = connection.create_channel().await.expect("a channel");
    (connection, channel)
}

/// Publishes `body` persistently to `exchange` (`""`: the queue `routing_key`), confirmed.
async fn amqp_publish(channel: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("publish confirmed");
}

/// Messages ready in `queue`.
async fn ready(channel: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("the queue exists")
        .message_count()
}

async fn declare(channel: &Channel, queue: &str, arguments: FieldTable) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await
        .expect("declare");
}

async fn delete(channel: &Channel, queues: &[&str]) {
    for queue in queues {
        let _ = channel
            .queue_delete((*queue).into(), Default::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_v1_publish_reaches_the_room_from_a_queue_herald_declares() {
    let queue = unique("herald-test-amqp-v1");
    let (addr, _gateway) = start("shop", bridge(BridgeKind::Amqp, &queue, "shop")).await;
    let (mut client, _) = join(addr, "shop").await;
    let (_connection, channel) = rabbit().await;

    let body = json!({"rooms": ["lobby"], "event": "news", "args": [{"n": 1}]});
    amqp_publish(&channel, "", &queue, body.to_string().as_bytes()).await;
    assert_eq!(client.next_text().await, r#"42/shop,["news",{"n":1}]"#);

    let (status, answer) = api(addr, "GET", "/api/v1/status", &Value::Null).await;
    assert_eq!(status, 200);
    let bridges = &answer["bridges"];
    assert_eq!(bridges[0]["bridge"], format!("amqp {queue} → shop"));
    assert_eq!(
        (&bridges[0]["state"], &bridges[0]["published"]),
        (&json!("up"), &json!(1))
    );
    assert_eq!(ready(&channel, &queue).await, 0, "acked");
    delete(&channel, &[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_rejects_a_bad_message_to_the_dead_letter_queue_and_goes_on() {
    // The queue exists with a dead-letter queue: herald's durable declaration is refused for its other
    // arguments, so it takes the queue as it is.
    let (_connection, channel) = rabbit().await;
    let queue = unique("herald-test-amqp-bad");
    let dead = format!("{queue}.dead");
    declare(&channel, &dead, FieldTable::default()).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    declare(&channel, &queue, arguments).await;
    let (addr, gateway) = start("shop", bridge(BridgeKind::Amqp, &queue, "shop")).await;
    let (mut client, _) = join(addr, "shop").await;

    amqp_publish(&channel, "", &queue, b"not json").await;
    let no_receiver = json!({"event": "news", "args": [1]});
    amqp_publish(&channel, "", &queue, no_receiver.to_string().as_bytes()).await;
    let good = json!({"rooms": ["lobby"], "event": "news", "args": [2]});
    amqp_publish(&channel, "", &queue, good.to_string().as_bytes()).await;
    assert_eq!(client.next_text().await, r#"42/shop,["news",2]"#);

    let status = wait_counts(&gateway, 1, 2).await;
    assert_eq!(status["retried"], 0);
    assert!(
        status["last_error"].is_null(),
        "never down: {}",
        status["last_error"]
    );
    // Rejected without requeue: dead-lettered, not delivered again.
    let deadline = Instant::now() + WAIT;
    while ready(&channel, &dead).await < 2 && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ready(&channel, &dead).await,
        2,
        "both bad ones dead-lettered"
    );
    assert_eq!(ready(&channel, &queue).await, 0);
    assert_quiet(&mut client).await;
    wait_counts(&gateway, 1, 2).await;
    delete(&channel, &[&queue, &dead]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_raw_mode_takes_the_room_from_the_routing_key_and_retains() {
    // A topic exchange routes pomodoro.<desk>.state into the queue; room pomodoro_{1} is the desk.
    let (_connection, channel) = rabbit().await;
    let queue = unique("herald-test-amqp-raw");
    let exchange = unique("herald-test-pomodoro");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    declare(&channel, &queue, FieldTable::default()).await;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "pomodoro.*.state".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let config = raw(
        bridge(BridgeKind::Amqp, &queue, "focus"),
        "pomodoro_{1}",
        "state",
    );
    let (addr, gateway) = start("focus", config).await;
    let (mut client, id) = join(addr, "focus").await;
    let desk = unique("desk");
    let room = format!("pomodoro_{desk}");
    enter(addr, "focus", &id, &room).await;

    let key = format!("pomodoro.{desk}.state");
    // The keys in sorted order: a JSON body is parsed, and sent on with its keys sorted.
    amqp_publish(
        &channel,
        &exchange,
        &key,
        br#"{"left":1500,"phase":"focus"}"#,
    )
    .await;
    assert_eq!(
        client.next_text().await,
        r#"42/focus,["state",{"left":1500,"phase":"focus"}]"#
    );
    amqp_publish(&channel, &exchange, &key, b"paused").await;
    assert_eq!(client.next_text().await, r#"42/focus,["state","paused"]"#);
    wait_counts(&gateway, 2, 0).await;
    assert_eq!(
        retained(addr, "focus", &room).await,
        [json!({"event": "state", "args": ["paused"]})]
    );
    delete(&channel, &[&queue]).await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_delivers_what_was_queued_while_herald_was_down() {
    let (_connection, channel) = rabbit().await;
    let queue = unique("herald-test-amqp-down");
    declare(&channel, &queue, FieldTable::default()).await;
    for n in 1..=3 {
        amqp_publish(&channel, "", &queue, format!("{n}").as_bytes()).await;
    }

    let config = raw(bridge(BridgeKind::Amqp, &queue, "shop"), "scores", "score");
    let config = Config {
        sites: vec![site("shop")],
        bridges: vec![config],
        ..Config::default()
    };
    let (addr, gateway) = common::start_gateway(config).await;
    wait_counts(&gateway, 3, 0).await;
    // In the queue's order: the last one is what the room retains.
    assert_eq!(
        retained(addr, "shop", "scores").await,
        [json!({"event": "score", "args": [3]})]
    );
    assert_eq!(ready(&channel, &queue).await, 0);
    delete(&channel, &[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_bridge_reports_a_broker_it_cannot_reach_without_the_password() {
    let mut config = bridge(BridgeKind::Amqp, "herald-test-unreachable", "shop");
    config.url = "amqp://herald:hunter2@127.0.0.1:1/%2f".into();
    let config = Config {
        sites: vec![site("shop")],
        bridges: vec![config],
        ..Config::default()
    };
    let (_, gateway) = common::start_gateway(config).await;
    let status = &gateway.bridges.all()[0];
    timeout(WAIT, async {
        while status.state() != State::Down {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the bridge goes down");
    let error = status.describe()["last_error"].to_string();
    assert!(error.contains("cannot connect"), "{error}");
    assert!(
        !error.contains("hunter2") && !error.contains("amqp://"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------------- MQTT

/// A client of the test's own on Mosquitto, its event loop polled on a task.
async fn mosquitto() -> AsyncClient {
    let mut options = MqttOptions::new(unique("herald-test"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 256);
    tokio::spawn(async move {
        while events.poll().await.is_ok() {}
        eprintln!("the test's MQTT client lost Mosquitto (these tests need it at 127.0.0.1:1883)");
    });
    client
}

async fn mqtt_publish(client: &AsyncClient, topic: &str, body: &[u8]) {
    client
        .publish(topic, QoS::AtLeastOnce, false, body.to_vec())
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_v1_publish_reaches_the_room_and_bad_messages_are_acked_away() {
    let topic = format!("{}/in", unique("herald-test"));
    let (addr, gateway) = start("shop", bridge(BridgeKind::Mqtt, &topic, "shop")).await;
    let (mut client, _) = join(addr, "shop").await;
    let publisher = mosquitto().await;

    // More bad messages than Mosquitto lets be in flight unacknowledged (20): the good one after them arrives
    // only if each bad one got its PUBACK.
    for n in 0..25 {
        mqtt_publish(&publisher, &topic, format!("not json {n}").as_bytes()).await;
    }
    let good = json!({"rooms": ["lobby"], "event": "news", "args": ["hi"]});
    mqtt_publish(&publisher, &topic, good.to_string().as_bytes()).await;
    assert_eq!(client.next_text().await, r#"42/shop,["news","hi"]"#);
    let status = wait_counts(&gateway, 1, 25).await;
    assert_eq!(
        (&status["state"], &status["bridge"]),
        (&json!("up"), &json!(format!("mqtt {topic} → shop")))
    );
    // Not delivered again.
    assert_quiet(&mut client).await;
    wait_counts(&gateway, 1, 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_raw_mode_takes_the_room_from_the_topic_and_retains() {
    let config = raw(
        bridge(BridgeKind::Mqtt, "pomodoro/+/state", "focus"),
        "pomodoro_{1}",
        "state",
    );
    let (addr, gateway) = start("focus", config).await;
    let (mut client, id) = join(addr, "focus").await;
    let desk = unique("desk");
    let room = format!("pomodoro_{desk}");
    enter(addr, "focus", &id, &room).await;
    let publisher = mosquitto().await;

    let topic = format!("pomodoro/{desk}/state");
    mqtt_publish(&publisher, &topic, br#"{"left":1500,"phase":"focus"}"#).await;
    assert_eq!(
        client.next_text().await,
        r#"42/focus,["state",{"left":1500,"phase":"focus"}]"#
    );
    mqtt_publish(&publisher, &topic, b"paused").await;
    assert_eq!(client.next_text().await, r#"42/focus,["state","paused"]"#);
    assert_eq!(
        retained(addr, "focus", &room).await,
        [json!({"event": "state", "args": ["paused"]})]
    );
    assert_eq!(gateway.bridges.all()[0].describe()["rejected"], 0);
}

/// A gateway of a cluster on Redis database 14, with `bridge`.
async fn cluster_node(bridge: BridgeConfig) -> (SocketAddr, Gateway) {
    cluster_node_on("redis://127.0.0.1:6379/14", bridge).await
}

/// A gateway of a cluster on the Redis at `redis_url` (its retained store too), with `bridge`.
async fn cluster_node_on(redis_url: &str, bridge: BridgeConfig) -> (SocketAddr, Gateway) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    let mut config = Config {
        sites: vec![site("shop")],
        bridges: vec![bridge],
        ..Config::default()
    };
    config.server.redis_url = Some(redis_url.into());
    config.server.cluster.node_url = Some(format!("http://{addr}"));
    config.server.data_dir =
        std::env::temp_dir().join(format!("herald-test-{}", rand::random::<u64>()));
    let gateway = herald::gateway::build(&config)
        .await
        .expect("these tests need Redis at 127.0.0.1:6379");
    let server = herald::server::Server::new(
        listener,
        gateway.router(),
        herald::lifecycle::serve_config(&config),
    );
    tokio::spawn(server.run());
    wait_up(&gateway).await;
    (addr, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_cluster_nodes_share_the_subscription() {
    let topic = format!("{}/in", unique("herald-test"));
    let (a_addr, a) = cluster_node(bridge(BridgeKind::Mqtt, &topic, "shop")).await;
    let (_, b) = cluster_node(bridge(BridgeKind::Mqtt, &topic, "shop")).await;
    let deadline = Instant::now() + WAIT;
    while a.publisher.cluster.directory.peers().is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    let (mut client, _) = join(a_addr, "shop").await;
    let publisher = mosquitto().await;

    let total = 10;
    for n in 0..total {
        let body = json!({"rooms": ["lobby"], "event": "n", "args": [n]});
        mqtt_publish(&publisher, &topic, body.to_string().as_bytes()).await;
    }
    // Each message once, whichever node took it: the two nodes publish concurrently, so not in order.
    let mut received = Vec::new();
    for _ in 0..total {
        received.push(client.next_text().await);
    }
    received.sort();
    let mut expected: Vec<String> = (0..total)
        .map(|n| format!(r#"42/shop,["n",{n}]"#))
        .collect();
    expected.sort();
    assert_eq!(received, expected);
    assert_quiet(&mut client).await;
    let count = |g: &Gateway| {
        g.bridges.all()[0].describe()["published"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(count(&a) + count(&b), total, "each message on one node");
    assert!(
        count(&a) > 0 && count(&b) > 0,
        "both nodes took a share: {} and {}",
        count(&a),
        count(&b)
    );
}

// ---------------------------------------------------------------------------------------------- retries

/// Waits until the bridge has retried at least once.
async fn wait_retried(gateway: &Gateway) {
    let status = &gateway.bridges.all()[0];
    timeout(WAIT, async {
        while status.describe()["retried"] == 0 {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no retry: {}", status.describe()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_retries_in_order_while_the_store_is_down() {
    let relay = Relay::start(6379).await;
    let queue = unique("herald-test-amqp-retry");
    let config = raw(bridge(BridgeKind::Amqp, &queue, "shop"), "scores", "score");
    let (addr, gateway) = cluster_node_on(&relay.url("redis://", "/14"), config).await;
    let (_connection, channel) = rabbit().await;

    relay.set_cut(true);
    for n in 1..=3 {
        amqp_publish(&channel, "", &queue, format!("{n}").as_bytes()).await;
    }
    wait_retried(&gateway).await;
    assert_eq!(gateway.bridges.all()[0].describe()["published"], 0);
    relay.set_cut(false);

    // Requeued, not lost, and taken again in the queue's order: the last one is what the room keeps.
    let status = wait_counts(&gateway, 3, 0).await;
    assert_eq!(status["state"], "up");
    assert_eq!(
        retained(addr, "shop", "scores").await,
        [json!({"event": "score", "args": [3]})]
    );
    assert_eq!(ready(&channel, &queue).await, 0);
    delete(&channel, &[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_retries_in_order_while_the_store_is_down() {
    let relay = Relay::start(6379).await;
    let topic = format!("{}/score", unique("herald-test"));
    let config = raw(bridge(BridgeKind::Mqtt, &topic, "shop"), "scores", "score");
    let (addr, gateway) = cluster_node_on(&relay.url("redis://", "/14"), config).await;
    let publisher = mosquitto().await;

    relay.set_cut(true);
    for n in 1..=3 {
        mqtt_publish(&publisher, &topic, format!("{n}").as_bytes()).await;
    }
    wait_retried(&gateway).await;
    assert_eq!(gateway.bridges.all()[0].describe()["published"], 0);
    relay.set_cut(false);

    wait_counts(&gateway, 3, 0).await;
    assert_eq!(
        retained(addr, "shop", "scores").await,
        [json!({"event": "score", "args": [3]})]
    );
}

// ---------------------------------------------------------------------------------------------- reconnection

/// Cuts the bridge's connection to the broker behind `relay`: it goes down without saying the URL or the
/// password, comes back up once the broker is reachable again, and then carries `publish`'s message to the
/// room `lobby` of `shop`.
async fn reconnects<F, Fut>(relay: &Relay, config: BridgeConfig, publish: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (addr, gateway) = start("shop", config).await;
    let (mut client, _) = join(addr, "shop").await;
    relay.set_cut(true);
    wait_state(&gateway, State::Down).await;
    let error = gateway.bridges.all()[0].describe()["last_error"].to_string();
    assert!(
        !error.contains("hunter2") && !error.contains("://"),
        "{error}"
    );
    sleep(Duration::from_millis(700)).await;
    relay.set_cut(false);
    wait_up(&gateway).await;
    publish().await;
    assert_eq!(client.next_text().await, r#"42/shop,["back",1]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_reconnects_after_losing_the_broker() {
    let relay = Relay::start(5672).await;
    let queue = unique("herald-test-amqp-reconnect");
    let mut config = bridge(BridgeKind::Amqp, &queue, "shop");
    config.url = relay.url("amqp://guest:guest@", "/%2f");
    let (_connection, channel) = rabbit().await;
    let body = json!({"rooms": ["lobby"], "event": "back", "args": [1]}).to_string();
    reconnects(&relay, config, || {
        amqp_publish(&channel, "", &queue, body.as_bytes())
    })
    .await;
    delete(&channel, &[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_reconnects_and_subscribes_again_after_losing_the_broker() {
    let relay = Relay::start(1883).await;
    let topic = format!("{}/in", unique("herald-test"));
    let mut config = bridge(BridgeKind::Mqtt, &topic, "shop");
    config.url = relay.url("mqtt://herald:hunter2@", "");
    let publisher = mosquitto().await;
    let body = json!({"rooms": ["lobby"], "event": "back", "args": [1]}).to_string();
    reconnects(&relay, config, || {
        mqtt_publish(&publisher, &topic, body.as_bytes())
    })
    .await;
}
