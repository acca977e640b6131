//! Clusters of two or three gateways in one process on the real Redis at 127.0.0.1:6379 (start it with
//! `redis-server --daemonize yes --save '' --appendonly no`): publishes cross nodes over the bus, the socket
//! API answers for sockets on any node, and a node that dies without leaving is reaped by a survivor.
//!
//! Each test owns one Redis database (8, 9, 10) and empties it first, since the node registry of a database is
//! shared by every node on it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http, WsClient};
use herald::auth::{AuthConfig, JwtConfig};
use herald::config::{Config, SiteConfig};
use herald::gateway::Gateway;
use herald::secret::Secret;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

const KEY: &str = "cluster-key-0123456789";
const WAIT: Duration = Duration::from_secs(5);

fn jwt() -> JwtConfig {
    JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(Secret::new("cluster-test-secret")),
        public_key_pem: None,
        jwks_url: None,
        jwks_cache_secs: 300,
        issuer: None,
        audience: None,
    }
}

fn redis_url(db: u8) -> String {
    format!("redis://127.0.0.1:6379/{db}")
}

/// Empties database `db`, so no node of an earlier run is in its registry.
async fn flush(db: u8) {
    let client = redis::Client::open(redis_url(db)).unwrap();
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("these tests need Redis at 127.0.0.1:6379");
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
}

/// A site with JWT users whose rooms come from their token, and a unique name.
fn site(prefix: &str) -> SiteConfig {
    let mut site = SiteConfig::new(format!("{prefix}-{}", rand::random::<u32>()));
    site.api_keys = vec![Secret::new(KEY)];
    site.auth = AuthConfig::Jwt(jwt());
    site
}

struct Node {
    addr: SocketAddr,
    gateway: Gateway,
}

impl Node {
    fn id(&self) -> String {
        self.gateway.publisher.cluster.node.to_string()
    }
}

/// A gateway on Redis database `db`, serving on a port its peers are told about.
async fn node(db: u8, sites: &[SiteConfig], ttl_ms: u64) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config {
        sites: sites.to_vec(),
        ..Config::default()
    };
    config.server.redis_url = Some(redis_url(db));
    config.server.cluster.node_url = Some(format!("http://{addr}"));
    config.server.cluster.node_ttl_ms = ttl_ms;
    config.server.mailbox.presence_debounce_ms = 100;
    config.server.data_dir =
        std::env::temp_dir().join(format!("herald-test-{}", rand::random::<u64>()));
    let gateway = herald::gateway::build(&config).await.unwrap();
    let server = herald::server::Server::new(
        listener,
        gateway.router(),
        herald::lifecycle::serve_config(&config),
    );
    tokio::spawn(server.run());
    Node { addr, gateway }
}

/// Waits until every node sees every other one.
async fn meshed(nodes: &[&Node]) {
    timeout(WAIT, async {
        while nodes
            .iter()
            .any(|n| n.gateway.publisher.cluster.directory.peers().len() < nodes.len() - 1)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the nodes did not see each other in time");
}

/// User `user` (with `rooms` in the token) joined to `site` on `addr`; returns the client and its socket id.
async fn join(addr: SocketAddr, site: &str, user: &str, rooms: &[&str]) -> (WsClient, String) {
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    let token = herald::auth::jwt::mint(&jwt(), user, &rooms, Duration::from_secs(600)).unwrap();
    let target = format!("/socket.io/?EIO=4&transport=websocket&token={token}&deviceId=d-{user}");
    let mut client = WsClient::pump(common::ws_open(addr, &target, None).await);
    assert!(client.next_text().await.starts_with("0{"));
    client.send(&format!("40/{site},"));
    let prefix = format!("40/{site},");
    let reply = client.next_text().await;
    let connect: Value = serde_json::from_str(
        reply
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{reply}")),
    )
    .unwrap();
    (client, connect["sid"].as_str().unwrap().to_string())
}

async fn api(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    common::api_json(addr, method, path, KEY, body).await
}

async fn publish(addr: SocketAddr, site: &str, body: Value) {
    let (status, answer) = api(
        addr,
        "POST",
        &format!("/api/v1/sites/{site}/publish"),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

/// The next event `client` receives in `site`: its name and first argument.
async fn next_event(client: &mut WsClient, site: &str) -> (String, Value) {
    let text = client.next_text().await;
    let array = text
        .strip_prefix(&format!("42/{site},"))
        .unwrap_or_else(|| panic!("not an event of {site}: {text}"));
    let array: Value = serde_json::from_str(array).unwrap();
    (array[0].as_str().unwrap().to_string(), array[1].clone())
}

/// Asserts `client` receives exactly `expected` (event, first argument) next, in order.
async fn expect_events(client: &mut WsClient, site: &str, expected: &[(&str, i64)], who: &str) {
    for (event, n) in expected {
        let got = next_event(client, site).await;
        assert_eq!(got, (event.to_string(), json!(n)), "{who}");
    }
}

/// The socket ids of a listing.
fn ids(listing: &Value) -> Vec<String> {
    listing["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_one_node_reach_sockets_on_another_exactly_once() {
    flush(8).await;
    let shop = site("bus");
    let name = shop.name.clone();
    let sites = [shop];
    let a = node(8, &sites, 3000).await;
    let b = node(8, &sites, 3000).await;
    meshed(&[&a, &b]).await;
    let (mut x, x_id) = join(b.addr, &name, "x", &["team"]).await;
    let (mut y, y_id) = join(b.addr, &name, "y", &["team"]).await;
    let (mut z, _) = join(a.addr, &name, "z", &["team", "solo"]).await;

    publish(
        a.addr,
        &name,
        json!({"rooms": ["team"], "event": "room", "args": [1]}),
    )
    .await;
    publish(
        a.addr,
        &name,
        json!({"all": true, "event": "all", "args": [2]}),
    )
    .await;
    publish(
        a.addr,
        &name,
        json!({"sockets": [x_id], "event": "one", "args": [3]}),
    )
    .await;
    publish(
        a.addr,
        &name,
        json!({"rooms": ["team"], "except": [y_id], "event": "except", "args": [4]}),
    )
    .await;
    publish(
        b.addr,
        &name,
        json!({"rooms": ["solo"], "event": "back", "args": [5]}),
    )
    .await;
    // A last message to everyone: anything received twice would come before it.
    publish(
        a.addr,
        &name,
        json!({"all": true, "event": "end", "args": [6]}),
    )
    .await;

    let x_expected = [
        ("room", 1),
        ("all", 2),
        ("one", 3),
        ("except", 4),
        ("end", 6),
    ];
    expect_events(&mut x, &name, &x_expected, "x, on the other node").await;
    let y_expected = [("room", 1), ("all", 2), ("end", 6)];
    expect_events(&mut y, &name, &y_expected, "y, on the other node").await;
    let z_expected = [
        ("room", 1),
        ("all", 2),
        ("except", 4),
        ("back", 5),
        ("end", 6),
    ];
    expect_events(&mut z, &name, &z_expected, "z, on the publishing node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_api_answers_for_sockets_on_every_node() {
    flush(9).await;
    let shop = site("api");
    let name = shop.name.clone();
    let sites = [shop];
    let a = node(9, &sites, 3000).await;
    let b = node(9, &sites, 3000).await;
    let c = node(9, &sites, 3000).await;
    meshed(&[&a, &b, &c]).await;
    let (_x, x_id) = join(a.addr, &name, "x", &["team"]).await;
    let (mut y, y_id) = join(b.addr, &name, "y", &["team"]).await;
    let (mut z, z_id) = join(c.addr, &name, "z", &[]).await;

    let sockets = format!("/api/v1/sites/{name}/sockets");
    for asked in [&a, &b, &c] {
        let (status, listing) = api(asked.addr, "GET", &sockets, &Value::Null).await;
        assert_eq!(status, 200, "{listing}");
        let mut expected = vec![x_id.clone(), y_id.clone(), z_id.clone()];
        expected.sort();
        assert_eq!(ids(&listing), expected, "{listing}");
        assert!(listing.get("partial").is_none(), "{listing}");
        let y_listed = listing["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == y_id.as_str())
            .unwrap();
        assert_eq!(y_listed["node"], b.id().as_str());
        assert_eq!(y_listed["user"], "y");
    }
    let (_, team) = api(c.addr, "GET", &format!("{sockets}?room=team"), &Value::Null).await;
    let mut expected = vec![x_id.clone(), y_id.clone()];
    expected.sort();
    assert_eq!(ids(&team), expected, "{team}");

    // Rooms of a socket on another node: asked on A, done by B.
    let (status, rooms) = api(
        a.addr,
        "POST",
        &format!("{sockets}/{y_id}/rooms"),
        &json!({"join": ["vip"], "leave": ["team"]}),
    )
    .await;
    assert_eq!(status, 200, "{rooms}");
    assert!(rooms["rooms"].as_array().unwrap().contains(&json!("vip")));
    assert!(!rooms["rooms"].as_array().unwrap().contains(&json!("team")));
    publish(
        c.addr,
        &name,
        json!({"rooms": ["vip"], "event": "vip", "args": [1]}),
    )
    .await;
    expect_events(&mut y, &name, &[("vip", 1)], "y joined vip through A").await;

    // Disconnect a socket on another node.
    let (status, _) = api(b.addr, "DELETE", &format!("{sockets}/{z_id}"), &Value::Null).await;
    assert_eq!(status, 204);
    timeout(WAIT, async {
        loop {
            let text = z.next_text().await;
            if text == format!("41/{name},") {
                return;
            }
        }
    })
    .await
    .expect("z was disconnected");
    let (status, answer) = api(a.addr, "DELETE", &format!("{sockets}/{z_id}"), &Value::Null).await;
    assert_eq!(status, 404, "{answer}");
    let (status, _) = api(
        a.addr,
        "POST",
        &format!("{sockets}/nobody/rooms"),
        &json!({"join": ["vip"]}),
    )
    .await;
    assert_eq!(status, 404);

    // A node that does not answer: the listing says what it lacks, and a socket no node has is 503, not 404.
    let client = redis::Client::open(redis_url(9)).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::pipe()
        .hset("herald:{nodes}:all", "silentXX", "http://127.0.0.1:9")
        .set_options(
            "herald:{nodes}:alive:silentXX",
            "http://127.0.0.1:9",
            redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(60_000)),
        )
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let listing = timeout(WAIT, async {
        loop {
            let (_, listing) = api(a.addr, "GET", &sockets, &Value::Null).await;
            if listing.get("partial").is_some() {
                return listing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the silent node joined the view");
    assert_eq!(listing["partial"], true);
    assert_eq!(listing["unreachable"], json!(["silentXX"]));
    let mut expected = vec![x_id.clone(), y_id.clone()];
    expected.sort();
    assert_eq!(ids(&listing), expected, "{listing}");
    let (status, answer) = api(a.addr, "DELETE", &format!("{sockets}/nobody"), &Value::Null).await;
    assert_eq!(status, 503, "{answer}");
}

/// A stand-in for a site's `updateUserUrl`: every PUT as (user id, body).
async fn presence_server() -> (String, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/users/{id}",
        axum::routing::put(
            move |axum::extract::Path(id): axum::extract::Path<String>,
                  axum::Json(body): axum::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((id, body));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/users/:id"), rx)
}

/// The next presence update for `user` with `field`.
async fn presence_of(rx: &mut mpsc::UnboundedReceiver<(String, Value)>, user: &str, field: &str) {
    timeout(WAIT, async {
        loop {
            let (id, body) = rx.recv().await.unwrap();
            if id == user && body["user"].get(field).is_some() {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {field} for user {user} in time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_leaves_listings_and_a_survivor_reports_its_users_gone() {
    flush(10).await;
    const TTL: u64 = 1500;
    let (url, mut updates) = presence_server().await;
    let mut shop = site("reap");
    shop.user_room_prefix = Some("user_".into());
    shop.update_user_url = Some(url);
    let name = shop.name.clone();
    let sites = [shop];
    let survivor = node(10, &sites, TTL).await;
    let victim = node(10, &sites, TTL).await;
    meshed(&[&survivor, &victim]).await;
    let (_gone, gone_id) = join(victim.addr, &name, "7", &["user_7"]).await;
    let (_stays, stays_id) = join(survivor.addr, &name, "8", &["user_8"]).await;
    presence_of(&mut updates, "7", "last_connected").await;
    presence_of(&mut updates, "8", "last_connected").await;
    let sockets = format!("/api/v1/sites/{name}/sockets");
    let (_, listing) = api(survivor.addr, "GET", &sockets, &Value::Null).await;
    assert!(ids(&listing).contains(&gone_id), "{listing}");
    // The victim's records reach Redis before it dies.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The victim stops beating, as a crashed node does; its HTTP server still answers, so only the registry
    // can tell the survivor to stop asking it.
    victim.gateway.registry.as_ref().unwrap().stop();
    let stopped = Instant::now();
    timeout(Duration::from_millis(TTL + 1000), async {
        loop {
            let (_, listing) = api(survivor.addr, "GET", &sockets, &Value::Null).await;
            if !ids(&listing).contains(&gone_id) {
                assert_eq!(ids(&listing), vec![stays_id.clone()], "{listing}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the dead node's socket left the listing");
    let left_after = stopped.elapsed();
    assert!(
        left_after <= Duration::from_millis(TTL + 200),
        "the dead node's socket was listed {left_after:?} after its last beat"
    );
    presence_of(&mut updates, "7", "last_disconnected").await;
    // The device the dead node had is released: disconnected, expiring after the site's TTL.
    let devices = format!("/api/v1/sites/{name}/users/7/devices");
    timeout(WAIT, async {
        loop {
            let (_, status) = api(survivor.addr, "GET", &devices, &Value::Null).await;
            if status["devices"][0]["connected"] == false {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the dead node's device was marked disconnected");

    // A node that leaves gracefully is out of the view at the survivor's next beat, well before its TTL.
    let leaving = node(10, &sites, TTL).await;
    meshed(&[&survivor, &leaving]).await;
    leaving
        .gateway
        .registry
        .as_ref()
        .unwrap()
        .deregister()
        .await;
    let left = Instant::now();
    timeout(Duration::from_millis(TTL), async {
        while !survivor
            .gateway
            .publisher
            .cluster
            .directory
            .peers()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "a node that left was still a peer after {:?}",
            left.elapsed()
        )
    });

    // User 8, on the survivor, was never reported gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok((id, body)) = updates.try_recv() {
        assert!(
            !(id == "8" && body["user"].get("last_disconnected").is_some()),
            "user 8 is still connected"
        );
    }
}

/// A Redis of this test's own, on a free port, that it can stop and start again.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = OwnRedis { port, child: None };
        redis.resume().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn resume(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("this test runs redis-server");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        timeout(WAIT, async {
            while client.get_multiplexed_async_connection().await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server started");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_publishes_503_and_the_cluster_heals_by_itself() {
    let mut redis = OwnRedis::start().await;
    let shop = site("outage");
    let name = shop.name.clone();
    let sites = [shop];
    let on = |url: String| {
        let sites = sites.clone();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut config = Config {
                sites: sites.to_vec(),
                ..Config::default()
            };
            config.server.redis_url = Some(url);
            config.server.cluster.node_url = Some(format!("http://{addr}"));
            config.server.cluster.node_ttl_ms = 1500;
            config.server.mailbox.store_timeout_ms = 1000;
            let gateway = herald::gateway::build(&config).await.unwrap();
            let server = herald::server::Server::new(
                listener,
                gateway.router(),
                herald::lifecycle::serve_config(&config),
            );
            tokio::spawn(server.run());
            Node { addr, gateway }
        }
    };
    let a = on(redis.url()).await;
    let b = on(redis.url()).await;
    meshed(&[&a, &b]).await;
    let (mut x, _) = join(b.addr, &name, "x", &["team"]).await;
    let path = format!("/api/v1/sites/{name}/publish");
    let message = |n: i64| json!({"rooms": ["team"], "event": "m", "args": [n]});
    publish(a.addr, &name, message(1)).await;
    expect_events(&mut x, &name, &[("m", 1)], "before the outage").await;

    redis.stop();
    let asked = Instant::now();
    let (status, answer) = api(a.addr, "POST", &path, &message(2)).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(
        answer["error"], "the cluster bus (Redis) is unavailable; retry",
        "{answer}"
    );
    assert!(asked.elapsed() < Duration::from_millis(1500), "failed fast");

    redis.resume().await;
    // The connection and the subscription come back by themselves; then publishes flow again.
    let healed = timeout(Duration::from_secs(20), async {
        let mut n = 3;
        loop {
            let (status, _) = api(a.addr, "POST", &path, &message(n)).await;
            if status == 200 {
                if let Ok((_, got)) =
                    timeout(Duration::from_millis(500), next_event(&mut x, &name)).await
                {
                    return got;
                }
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        healed.is_ok(),
        "publishes crossed nodes again after Redis came back"
    );
}

/// One polling request of session `sid` on `addr`; its status and body.
async fn polling(addr: SocketAddr, method: &str, sid: &str, body: &str) -> (u16, String) {
    let response = http(
        addr,
        method,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        body.as_bytes(),
    )
    .await;
    (response.status, response.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_a_round_robin_balancer_needs_no_sticky_sessions() {
    flush(11).await;
    let site = site("fwd");
    let a = node(11, std::slice::from_ref(&site), 10_000).await;
    let b = node(11, std::slice::from_ref(&site), 10_000).await;
    meshed(&[&a, &b]).await;
    let name = &site.name;

    let token = herald::auth::jwt::mint(&jwt(), "u1", &["r".to_string()], Duration::from_secs(600))
        .unwrap();
    let open = http(
        a.addr,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&token={token}&deviceId=d1"),
        &[],
        b"",
    )
    .await;
    let open: Value = serde_json::from_str(open.text().strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap().to_string();
    assert!(sid.starts_with(&a.id()), "{sid} is not {}'s", a.id());

    // Requests alternate between the nodes, as a round-robin balancer would send them.
    assert_eq!(
        polling(b.addr, "POST", &sid, &format!("40/{name},")).await,
        (200, "ok".to_string())
    );
    let (status, connect) = polling(a.addr, "GET", &sid, "").await;
    assert_eq!(status, 200);
    assert!(connect.starts_with(&format!("40/{name},")), "{connect}");
    publish(
        b.addr,
        name,
        json!({"rooms": ["r"], "event": "e", "args": [1]}),
    )
    .await;
    let (status, event) = polling(b.addr, "GET", &sid, "").await;
    assert_eq!(status, 200);
    assert!(
        event.starts_with(&format!(r#"42/{name},["e",1"#)),
        "{event}"
    );

    // The upgrade lands on B too; the probe runs end to end with A.
    let mut ws = common::ws_open(
        b.addr,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        None,
    )
    .await;
    {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::text("2probe")).await.unwrap();
        assert_eq!(common::ws_next_text(&mut ws).await, "3probe");
        ws.send(Message::text("5")).await.unwrap();
    }
    let mut client = WsClient::pump(ws);
    publish(
        a.addr,
        name,
        json!({"rooms": ["r"], "event": "e", "args": [2]}),
    )
    .await;
    assert_eq!(next_event(&mut client, name).await.1, json!(2));
}
