//! The NATS, Redis and Postgres bridges end to end, on the real brokers (`bash scripts/services.sh nats redis
//! postgres`): NATS at 127.0.0.1:4222, Redis at 6379 (the default database for pub/sub, database 12 for the
//! cluster test, emptied first) and Postgres at 5432 (user `postgres`, trust auth). Every run uses its own
//! subjects and channels, so runs and other tests on the same brokers do not hear each other.
//!
//! Each bridge: a v1 publish reaches a socket.io client in the room; raw mode gives the body as the one
//! argument; a bad message is counted as rejected and the next good one still arrives. NATS requests get an
//! answer; Postgres listens again after its connection is killed; a cluster of two gateways publishes each
//! Redis, Postgres and NATS message once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::WsClient;
use herald::auth::{AuthConfig, JwtConfig};
use herald::bridges::status::State;
use herald::config::{BridgeConfig, BridgeKind, Config, SiteConfig};
use herald::gateway::Gateway;
use herald::secret::Secret;
use serde_json::{json, Value};
use tokio::time::timeout;

const KEY: &str = "bridge-key-0123456789";
const NATS: &str = "nats://127.0.0.1:4222";
const REDIS: &str = "redis://127.0.0.1:6379/";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The cluster test's Redis database (cluster.rs has 8 to 10).
const CLUSTER_DB: u8 = 12;
/// How long a bridge may take to subscribe, or a message to arrive.
const WAIT: Duration = Duration::from_secs(10);
/// How long a message that must not come is waited for.
const QUIET: Duration = Duration::from_millis(700);

fn jwt() -> JwtConfig {
    JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(Secret::new("bridge-test-secret")),
        public_key_pem: None,
        jwks_url: None,
        jwks_cache_secs: 300,
        issuer: None,
        audience: None,
    }
}

/// A name no other run uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", rand::random::<u32>())
}

/// A site with JWT users whose rooms come from their token; no recovery offsets, so frames are exact.
fn site() -> SiteConfig {
    SiteConfig {
        api_keys: vec![Secret::new(KEY)],
        auth: AuthConfig::Jwt(jwt()),
        recovery_window_ms: 0,
        ..SiteConfig::new(unique("bridges-"))
    }
}

/// A bridge of `kind` on `url` consuming `source`, publishing to `site`: v1 publish JSON, or raw with
/// `raw = Some((room, event))`.
fn bridge(
    kind: BridgeKind,
    url: &str,
    source: &str,
    site: &SiteConfig,
    raw: Option<(&str, &str)>,
) -> BridgeConfig {
    let source = Some(source.to_string());
    BridgeConfig {
        kind,
        url: url.into(),
        queue: None,
        topic: None,
        subject: source.clone().filter(|_| kind == BridgeKind::Nats),
        channel: source.filter(|_| kind != BridgeKind::Nats),
        site: site.name.clone(),
        room: raw.map(|(room, _)| room.to_string()),
        event: raw.map(|(_, event)| event.to_string()),
        retain: false,
        if_changed: false,
    }
}

/// One gateway with `site` and `bridges`, every bridge up.
async fn gateway(site: &SiteConfig, bridges: Vec<BridgeConfig>) -> (SocketAddr, Gateway) {
    let config = Config {
        sites: vec![site.clone()],
        bridges,
        ..Config::default()
    };
    let (addr, gateway) = common::start_gateway(config).await;
    for index in 0..gateway.bridges.all().len() {
        wait_state(&gateway, index, &[State::Up]).await;
    }
    (addr, gateway)
}

/// Waits until bridge `index` of `gateway` is in one of `states`.
async fn wait_state(gateway: &Gateway, index: usize, states: &[State]) -> State {
    let status = &gateway.bridges.all()[index];
    timeout(WAIT, async {
        loop {
            let state = status.state();
            if states.contains(&state) {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "bridge {index} never got to {states:?}: {}",
            status.describe()
        )
    })
}

/// A user of `site` on `addr` whose token puts them in `rooms`.
async fn join(addr: SocketAddr, site: &SiteConfig, rooms: &[&str]) -> WsClient {
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    let user = unique("u");
    let token =
        herald::auth::jwt::mint(&jwt(), &user, &rooms, Duration::from_secs(600)).expect("a token");
    let query = format!("token={token}&deviceId=d-{user}");
    let (client, reply) = common::join_namespace(addr, &format!("/{}", site.name), &query).await;
    assert!(
        reply.starts_with(&format!("40/{},", site.name)),
        "not connected: {reply}"
    );
    client
}

/// The next frame `client` receives, as the event and arguments of site `site`.
async fn next_event(client: &mut WsClient, site: &SiteConfig) -> Value {
    let frame = timeout(WAIT, client.next_text())
        .await
        .expect("a frame in time");
    let prefix = format!("42/{},", site.name);
    let body = frame
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("not an event of {}: {frame}", site.name));
    serde_json::from_str(body).expect("an event array")
}

/// Asserts `client` receives nothing more for a while.
async fn assert_quiet(client: &mut WsClient) {
    if let Ok(more) = timeout(QUIET, client.next()).await {
        panic!("received more than expected: {more:?}");
    }
}

/// The counter `field` of bridge `index`.
fn counter(gateway: &Gateway, index: usize, field: &str) -> u64 {
    gateway.bridges.all()[index].describe()[field]
        .as_u64()
        .expect("a counter")
}

/// Waits until `done` holds (a counter moves just after the frame it counts goes out).
async fn eventually(what: &str, done: impl Fn() -> bool) {
    timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not in time"));
}

fn publish_json(room: &str, n: u64) -> String {
    json!({"rooms": [room], "event": "news", "args": [{"n": n}]}).to_string()
}

// ---------------------------------------------------------------------------------------------------------
// NATS

async fn nats() -> async_nats::Client {
    async_nats::connect(NATS)
        .await
        .expect("these tests need NATS at 127.0.0.1:4222 (bash scripts/services.sh nats)")
}

#[tokio::test]
async fn nats_publishes_answers_requests_and_rejects_bad_messages() {
    let site = site();
    let subject = unique("herald.test.");
    let (addr, gateway) = gateway(
        &site,
        vec![bridge(BridgeKind::Nats, NATS, &subject, &site, None)],
    )
    .await;
    let room = unique("room");
    let mut client = join(addr, &site, &[&room]).await;
    let nats = nats().await;

    nats.publish(subject.clone(), publish_json(&room, 1).into())
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["news", {"n": 1}])
    );

    nats.publish(subject.clone(), "not json".into())
        .await
        .expect("publish");
    nats.publish(subject.clone(), publish_json(&room, 2).into())
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["news", {"n": 2}])
    );
    assert_eq!(counter(&gateway, 0, "rejected"), 1);

    let answer = nats
        .request(subject.clone(), publish_json(&room, 3).into())
        .await
        .expect("an answer");
    assert_eq!(
        serde_json::from_slice::<Value>(&answer.payload).expect("JSON"),
        json!({"ok": true})
    );
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["news", {"n": 3}])
    );
    let refused = nats
        .request(subject.clone(), r#"{"rooms":["x"]}"#.into())
        .await
        .expect("an answer");
    let refused: Value = serde_json::from_slice(&refused.payload).expect("JSON");
    assert!(refused["error"].is_string(), "{refused}");
    eventually("3 published, 2 rejected", || {
        (
            counter(&gateway, 0, "published"),
            counter(&gateway, 0, "rejected"),
        ) == (3, 2)
    })
    .await;
    assert_quiet(&mut client).await;
}

#[tokio::test]
async fn nats_raw_messages_take_their_room_from_the_subject() {
    let site = site();
    // `sensors_<run>.<id>.temp`: the run in the first token keeps other runs' subscribers away.
    let root = unique("sensors_");
    let (addr, _gateway) = gateway(
        &site,
        vec![bridge(
            BridgeKind::Nats,
            NATS,
            &format!("{root}.*.temp"),
            &site,
            Some(("dev_{1}", "temp")),
        )],
    )
    .await;
    let id = unique("");
    let mut client = join(addr, &site, &[&format!("dev_{id}")]).await;
    let nats = nats().await;
    let subject = format!("{root}.{id}.temp");
    nats.publish(subject.clone(), r#"{"c":21.5}"#.into())
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["temp", {"c": 21.5}])
    );
    nats.publish(subject.clone(), "warm".into())
        .await
        .expect("publish");
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["temp", "warm"])
    );
    // Another device's reading goes to its own room.
    nats.publish(format!("{root}.other.temp"), "1".into())
        .await
        .expect("publish");
    assert_quiet(&mut client).await;
}

// ---------------------------------------------------------------------------------------------------------
// Redis

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("these tests need Redis at 127.0.0.1:6379 (bash scripts/services.sh redis)")
}

/// PUBLISH; answers how many subscribers heard it.
async fn redis_publish(
    con: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    body: &str,
) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(body)
        .query_async(con)
        .await
        .expect("PUBLISH")
}

#[tokio::test]
async fn redis_publishes_and_rejects_bad_messages() {
    let site = site();
    let channel = unique("herald:test:");
    let (addr, gateway) = gateway(
        &site,
        vec![bridge(BridgeKind::Redis, REDIS, &channel, &site, None)],
    )
    .await;
    let room = unique("room");
    let mut client = join(addr, &site, &[&room]).await;
    let mut redis = redis_connection(REDIS).await;

    assert_eq!(
        redis_publish(&mut redis, &channel, &publish_json(&room, 1)).await,
        1
    );
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["news", {"n": 1}])
    );
    redis_publish(&mut redis, &channel, "not json").await;
    redis_publish(&mut redis, &channel, &publish_json(&room, 2)).await;
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["news", {"n": 2}])
    );
    assert_eq!(counter(&gateway, 0, "rejected"), 1);

    // The status API shows the bridge to the site's key, without its URL.
    eventually("2 published", || counter(&gateway, 0, "published") == 2).await;
    let auth = format!("Bearer {KEY}");
    let response = common::http(
        addr,
        "GET",
        "/api/v1/status",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    let status: Value = serde_json::from_str(&response.text()).expect("JSON");
    let bridges = status["bridges"].as_array().expect("bridges");
    assert_eq!(bridges.len(), 1, "{status}");
    assert_eq!(
        (
            &bridges[0]["state"],
            &bridges[0]["published"],
            &bridges[0]["rejected"]
        ),
        (&json!("up"), &json!(2), &json!(1))
    );
    assert!(!response.text().contains("redis://"), "{status}");
    assert_quiet(&mut client).await;
}

#[tokio::test]
async fn redis_raw_messages_from_a_pattern_take_their_room_from_the_channel() {
    let site = site();
    let root = unique("sensors_");
    let (addr, _gateway) = gateway(
        &site,
        vec![bridge(
            BridgeKind::Redis,
            REDIS,
            &format!("{root}:*:temp"),
            &site,
            Some(("dev_{1}", "temp")),
        )],
    )
    .await;
    let id = unique("");
    let mut client = join(addr, &site, &[&format!("dev_{id}")]).await;
    let mut redis = redis_connection(REDIS).await;
    let channel = format!("{root}:{id}:temp");
    redis_publish(&mut redis, &channel, "[1,2]").await;
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["temp", [1, 2]])
    );
    redis_publish(&mut redis, &channel, "cold").await;
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["temp", "cold"])
    );
    redis_publish(&mut redis, &format!("{root}:other:temp"), "1").await;
    assert_quiet(&mut client).await;
}

// ---------------------------------------------------------------------------------------------------------
// Postgres

async fn postgres() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls)
        .await
        .expect("these tests need Postgres at 127.0.0.1:5432 (bash scripts/services.sh postgres)");
    tokio::spawn(connection);
    client
}

async fn notify(pg: &tokio_postgres::Client, channel: &str, body: &str) {
    pg.execute("SELECT pg_notify($1, $2)", &[&channel, &body])
        .await
        .expect("pg_notify");
}

#[tokio::test]
async fn postgres_publishes_rejects_bad_messages_and_listens_again_after_a_kill() {
    let site = site();
    // Mixed case: the bridge listens to the exact name pg_notify takes.
    let channel = unique("Herald_Test_");
    let (addr, gateway) = gateway(
        &site,
        vec![bridge(
            BridgeKind::Postgres,
            POSTGRES,
            &channel,
            &site,
            None,
        )],
    )
    .await;
    let room = unique("room");
    let mut client = join(addr, &site, &[&room]).await;
    let pg = postgres().await;

    notify(&pg, &channel, &publish_json(&room, 1)).await;
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["news", {"n": 1}])
    );
    notify(&pg, &channel, "not json").await;
    notify(&pg, &channel, &publish_json(&room, 2)).await;
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["news", {"n": 2}])
    );
    assert_eq!(counter(&gateway, 0, "rejected"), 1);

    // Kill the bridge's backend: it connects and listens again (the first retry after 0.5 s).
    let killed = pg
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
            &[&format!("LISTEN \"{channel}\"")],
        )
        .await
        .expect("pg_terminate_backend");
    assert_eq!(killed, 1);
    wait_state(&gateway, 0, &[State::Down]).await;
    wait_state(&gateway, 0, &[State::Up]).await;
    notify(&pg, &channel, &publish_json(&room, 3)).await;
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["news", {"n": 3}])
    );
    assert_quiet(&mut client).await;
}

#[tokio::test]
async fn postgres_raw_messages_are_the_one_argument() {
    let site = site();
    let channel = unique("herald_raw_");
    let room = unique("room");
    let (addr, _gateway) = gateway(
        &site,
        vec![bridge(
            BridgeKind::Postgres,
            POSTGRES,
            &channel,
            &site,
            Some((&room, "row")),
        )],
    )
    .await;
    let mut client = join(addr, &site, &[&room]).await;
    let pg = postgres().await;
    notify(&pg, &channel, r#"{"id":7,"op":"INSERT"}"#).await;
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["row", {"id": 7, "op": "INSERT"}])
    );
    notify(&pg, &channel, "deleted 7").await;
    assert_eq!(
        next_event(&mut client, &site).await,
        json!(["row", "deleted 7"])
    );
    assert_quiet(&mut client).await;
}

// ---------------------------------------------------------------------------------------------------------
// A cluster

/// A gateway of the cluster on Redis database [`CLUSTER_DB`], serving on a port its peers are told about.
async fn node(site: &SiteConfig, bridges: &[BridgeConfig]) -> (SocketAddr, Gateway) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let mut config = Config {
        sites: vec![site.clone()],
        bridges: bridges.to_vec(),
        ..Config::default()
    };
    config.server.redis_url = Some(format!("{REDIS}{CLUSTER_DB}"));
    config.server.cluster.node_url = Some(format!("http://{addr}"));
    config.server.cluster.emitter = false;
    config.server.data_dir =
        std::env::temp_dir().join(format!("herald-test-{}", rand::random::<u64>()));
    let gateway = herald::gateway::build(&config).await.expect("a gateway");
    let server = herald::server::Server::new(
        listener,
        gateway.router(),
        herald::lifecycle::serve_config(&config),
    );
    tokio::spawn(server.run());
    (addr, gateway)
}

#[tokio::test]
async fn a_cluster_publishes_each_message_once() {
    let mut flush = redis_connection(&format!("{REDIS}{CLUSTER_DB}")).await;
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut flush)
        .await
        .expect("FLUSHDB");
    let site = site();
    let channel = unique("herald:cluster:");
    let pg_channel = unique("herald_cluster_");
    let subject = unique("herald.cluster.");
    let bridges = [
        bridge(BridgeKind::Redis, REDIS, &channel, &site, None),
        bridge(BridgeKind::Postgres, POSTGRES, &pg_channel, &site, None),
        bridge(BridgeKind::Nats, NATS, &subject, &site, None),
    ];
    let (addr_a, a) = node(&site, &bridges).await;
    let (addr_b, b) = node(&site, &bridges).await;
    timeout(WAIT, async {
        while a.publisher.cluster.directory.peers().is_empty()
            || b.publisher.cluster.directory.peers().is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the nodes did not see each other in time");
    // NATS: both nodes consume, in one queue group.
    for gateway in [&a, &b] {
        wait_state(gateway, 2, &[State::Up]).await;
    }
    // Redis and Postgres: one node leads, the other stands by, still subscribed.
    for index in 0..2 {
        let mut states = Vec::new();
        for gateway in [&a, &b] {
            states.push(wait_state(gateway, index, &[State::Up, State::Standby]).await);
        }
        timeout(WAIT, async {
            while a.bridges.all()[index].state() == b.bridges.all()[index].state() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("bridge {index}: no single leader: {states:?}"));
    }
    let room = unique("room");
    let mut on_a = join(addr_a, &site, &[&room]).await;
    let mut on_b = join(addr_b, &site, &[&room]).await;
    let mut redis = redis_connection(REDIS).await;
    let pg = postgres().await;
    let nats = nats().await;
    for n in 1..=3 {
        assert_eq!(
            redis_publish(&mut redis, &channel, &publish_json(&room, n)).await,
            2,
            "both nodes are subscribed"
        );
        notify(&pg, &pg_channel, &publish_json(&room, 10 + n)).await;
        nats.publish(subject.clone(), publish_json(&room, 20 + n).into())
            .await
            .expect("publish");
    }
    for client in [&mut on_a, &mut on_b] {
        let mut received = Vec::new();
        for _ in 0..9 {
            received.push(next_event(client, &site).await[1]["n"].as_u64().expect("n"));
        }
        received.sort_unstable();
        assert_eq!(received, [1, 2, 3, 11, 12, 13, 21, 22, 23]);
        assert_quiet(client).await;
    }
    for index in 0..bridges.len() {
        let published = || counter(&a, index, "published") + counter(&b, index, "published");
        eventually("each message published once", || published() == 3).await;
        assert_eq!(published(), 3, "bridge {index}");
    }
}
