//! No sticky sessions: two gateways that know each other through a test `Directory`; a session opened on one is
//! served through the other (polling GET and POST, a socket.io connect and its events, the upgrade to
//! WebSocket), and requests for sessions no live node holds are refused as unknown.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{http, ws_next_text, UNKNOWN_SID, WAIT};
use futures_util::SinkExt;
use herald::auth::AuthConfig;
use herald::cluster::{new_node_id, Cluster, Directory};
use herald::config::{Config, SiteConfig};
use herald::secret::Secret;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "shop-key-0123456789";
const PING_INTERVAL_MS: u64 = 400;

/// The test's node registry: node ids to URLs, filled as nodes start.
#[derive(Default)]
struct Peers(RwLock<HashMap<String, String>>);

impl Peers {
    fn add(&self, id: &str, url: String) {
        self.0.write().unwrap().insert(id.to_string(), url);
    }
}

impl Directory for Peers {
    fn url_of(&self, id: &str) -> Option<String> {
        self.0.read().unwrap().get(id).cloned()
    }

    fn peers(&self) -> Vec<(Arc<str>, String)> {
        let peers = self.0.read().unwrap();
        peers
            .iter()
            .map(|(id, url)| (Arc::from(id.as_str()), url.clone()))
            .collect()
    }
}

struct Node {
    id: Arc<str>,
    addr: SocketAddr,
}

fn config() -> Config {
    let mut config = Config {
        sites: vec![SiteConfig {
            name: "shop".into(),
            api_keys: vec![Secret::new(KEY)],
            auth: AuthConfig::Public,
            user_room_prefix: None,
            public_channel: Some("lobby".into()),
            update_user_url: None,
            device_ttl_secs: 60,
            max_connections: None,
            // No recovery offsets on events: the tests compare packets whole.
            recovery_window_ms: 0,
            ..SiteConfig::new(String::new())
        }],
        ..Config::default()
    };
    config.server.engine.ping_interval_ms = PING_INTERVAL_MS;
    config.server.engine.ping_timeout_ms = 1000;
    config.server.limits.idle_timeout_ms = 1000;
    config.server.limits.max_payload_bytes = 1000;
    config
}

/// Starts a gateway as a new node of `peers`, served on 127.0.0.1:0 as `herald serve` does.
async fn start_node(peers: &Arc<Peers>) -> Node {
    let mut config = config();
    config.server.data_dir =
        std::env::temp_dir().join(format!("herald-test-{}", rand::random::<u64>()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let id = new_node_id();
    let url = format!("http://{addr}");
    peers.add(&id, url.clone());
    let directory: Arc<dyn Directory> = Arc::clone(peers) as Arc<dyn Directory>;
    let cluster = Cluster::with_directory(Arc::clone(&id), url, directory, 1000);
    let gateway = herald::gateway::build_in(&config, Some(cluster))
        .await
        .unwrap();
    let server = herald::server::Server::new(
        listener,
        gateway.router(),
        herald::lifecycle::serve_config(&config),
    );
    tokio::spawn(server.run());
    Node { id, addr }
}

/// Two nodes that know each other.
async fn two_nodes() -> (Node, Node, Arc<Peers>) {
    let peers = Arc::new(Peers::default());
    let a = start_node(&peers).await;
    let b = start_node(&peers).await;
    (a, b, peers)
}

fn polling(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

/// A polling handshake on `addr`; the sid.
async fn handshake(addr: SocketAddr) -> String {
    let response = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], b"").await;
    assert_eq!(response.status, 200, "{response:?}");
    let text = response.text();
    let open: Value = serde_json::from_str(text.strip_prefix('0').unwrap()).unwrap();
    open["sid"].as_str().unwrap().to_string()
}

/// One polling GET; its packets.
async fn get(addr: SocketAddr, sid: &str) -> Vec<String> {
    let response = http(addr, "GET", &polling(sid), &[], b"").await;
    assert_eq!(response.status, 200, "GET: {response:?}");
    response.text().split('\x1e').map(str::to_string).collect()
}

async fn post(addr: SocketAddr, sid: &str, body: &str) {
    let response = http(
        addr,
        "POST",
        &polling(sid),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        body.as_bytes(),
    )
    .await;
    assert_eq!((response.status, response.text().as_str()), (200, "ok"));
}

async fn publish(addr: SocketAddr, event: &str, n: u64) {
    let body = json!({"rooms": ["lobby"], "event": event, "args": [n]}).to_string();
    let auth = format!("Bearer {KEY}");
    let response = http(
        addr,
        "POST",
        "/api/v1/sites/shop/publish",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200, "publish: {}", response.text());
}

/// Joins `/shop` over polling on `addr`; the socket id.
async fn join_over_polling(addr: SocketAddr, sid: &str) -> String {
    post(addr, sid, "40/shop,").await;
    let packets = get(addr, sid).await;
    let connect = packets
        .iter()
        .find_map(|p| p.strip_prefix("40/shop,"))
        .unwrap_or_else(|| panic!("no CONNECT in {packets:?}"));
    let connect: Value = serde_json::from_str(connect).unwrap();
    connect["sid"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_sid_starts_with_its_nodes_id() {
    let (a, b, _peers) = two_nodes().await;
    assert_ne!(a.id, b.id);
    for _ in 0..3 {
        let sid = handshake(a.addr).await;
        assert!(
            sid.starts_with(&*a.id),
            "{sid} does not start with {}",
            a.id
        );
        assert_eq!(sid.len(), a.id.len() + 22);
    }
    let mut ws = common::ws_open(b.addr, "/socket.io/?EIO=4&transport=websocket", None).await;
    let open = ws_next_text(&mut ws).await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    assert!(open["sid"].as_str().unwrap().starts_with(&*b.id));
}

#[tokio::test]
async fn a_polling_session_opened_on_one_node_is_served_by_the_other() {
    let (a, b, _peers) = two_nodes().await;
    let sid = handshake(a.addr).await;

    // The socket.io connect, through B.
    let socket = join_over_polling(b.addr, &sid).await;
    assert!(!socket.is_empty());

    // A long poll through B waits for the event published on A, the node that holds the session.
    let pending = tokio::spawn({
        let sid = sid.clone();
        async move { get(b.addr, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(a.addr, "news", 1).await;
    assert_eq!(
        pending.await.unwrap(),
        [r#"42/shop,["news",1]"#.to_string()]
    );

    // An idle long poll through B waits for the owner's ping (the idle watches on both hops let it), and
    // the pong goes back through B; the session survives several heartbeats that way.
    for round in 0..3 {
        let started = Instant::now();
        assert_eq!(get(b.addr, &sid).await, ["2"]);
        // The first ping is due an interval after the handshake; the next ones an interval after the last.
        if round > 0 {
            assert!(started.elapsed() >= Duration::from_millis(PING_INTERVAL_MS / 2));
        }
        post(b.addr, &sid, "3").await;
    }
    publish(a.addr, "news", 2).await;
    assert_eq!(get(b.addr, &sid).await, [r#"42/shop,["news",2]"#]);

    // The two nodes can take turns.
    publish(a.addr, "news", 3).await;
    assert_eq!(get(a.addr, &sid).await, [r#"42/shop,["news",3]"#]);
}

#[tokio::test]
async fn a_polling_session_upgrades_to_websocket_through_the_other_node() {
    let (a, b, _peers) = two_nodes().await;
    let sid = handshake(a.addr).await;
    let socket = join_over_polling(b.addr, &sid).await;

    let pending = tokio::spawn({
        let sid = sid.clone();
        async move { get(b.addr, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut ws = common::ws_open(
        b.addr,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        None,
    )
    .await;
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(ws_next_text(&mut ws).await, "3probe");
    // The pending GET (through B too) is released with a noop, as the protocol wants.
    assert_eq!(pending.await.unwrap(), ["6"]);
    ws.send(Message::text("5")).await.unwrap();

    // The session now lives on the WebSocket, end to end with A: events and heartbeats go through.
    publish(a.addr, "news", 1).await;
    assert_eq!(ws_next_text(&mut ws).await, r#"42/shop,["news",1]"#);
    tokio::time::sleep(Duration::from_millis(PING_INTERVAL_MS * 2)).await;
    publish(a.addr, "news", 2).await;
    assert_eq!(ws_next_text(&mut ws).await, r#"42/shop,["news",2]"#);

    // The socket is the one joined over polling: the API on A lists it.
    let auth = format!("Bearer {KEY}");
    let listing = http(
        a.addr,
        "GET",
        "/api/v1/sites/shop/sockets",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert!(listing.text().contains(&socket), "{}", listing.text());

    // A closed WebSocket ends the session on A.
    ws.close(None).await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let listing = http(
                a.addr,
                "GET",
                "/api/v1/sites/shop/sockets",
                &[("Authorization", &auth)],
                b"",
            )
            .await;
            if !listing.text().contains(&socket) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the session did not end on A");
}

#[tokio::test]
async fn sessions_no_live_node_holds_are_unknown() {
    let (a, b, peers) = two_nodes().await;
    let unknown = |addr, sid: String| async move {
        let response = http(addr, "GET", &polling(&sid), &[], b"").await;
        assert_eq!(
            (response.status, response.text().as_str()),
            (400, UNKNOWN_SID),
            "{sid}"
        );
    };
    // A node nobody knows.
    unknown(b.addr, format!("Zz9-_xY0{}", "A".repeat(22))).await;
    // A sid too short to name a node.
    unknown(b.addr, "abc".into()).await;
    // A's id, but no such session on A: A answers, through B.
    unknown(b.addr, format!("{}{}", a.id, "A".repeat(22))).await;
    // B's own id: B does not ask anyone.
    unknown(b.addr, format!("{}{}", b.id, "A".repeat(22))).await;
    // A dead node (nothing listens at its URL).
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    peers.add("deadnode", dead_url);
    unknown(b.addr, format!("deadnode{}", "A".repeat(22))).await;
    // A WebSocket request for a session of a node nobody knows.
    let response = http(
        b.addr,
        "GET",
        &format!(
            "/socket.io/?EIO=4&transport=websocket&sid=Zz9-_xY0{}",
            "A".repeat(22)
        ),
        &[],
        b"",
    )
    .await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (400, UNKNOWN_SID)
    );
}

#[tokio::test]
async fn a_request_another_node_forwarded_is_not_forwarded_again() {
    let (a, b, _peers) = two_nodes().await;
    let sid = handshake(a.addr).await;
    let response = http(
        b.addr,
        "GET",
        &polling(&sid),
        &[("X-Herald-Forwarded", "1")],
        b"",
    )
    .await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (400, UNKNOWN_SID)
    );
    // The session is untouched on A.
    post(a.addr, &sid, "40/shop,").await;
    assert!(get(a.addr, &sid).await[0].starts_with("40/shop,"));
}

/// A stand-in for the owner: it records each request's head (with its connection's number) and answers
/// `hello` with a keep-alive response.
async fn fake_owner() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(usize, String, Vec<u8>)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let connection = n;
            n += 1;
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buffer.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buffer.len() < end + 4 + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buffer.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let body = buffer[end + 4..end + 4 + length].to_vec();
                    buffer.drain(..end + 4 + length);
                    let _ = tx.send((connection, head, body));
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=UTF-8\r\n\
                                  content-length: 5\r\nx-owner: yes\r\n\r\nhello";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_forwarded_request_keeps_the_clients_headers_and_its_answer_comes_back_unchanged() {
    let (_a, b, peers) = two_nodes().await;
    let (owner, mut seen) = fake_owner().await;
    peers.add("fakeown1", format!("http://{owner}"));
    let sid = format!("fakeown1{}", "B".repeat(22));

    let response = http(
        b.addr,
        "GET",
        &polling(&sid),
        &[
            ("Cookie", "session=abc"),
            ("User-Agent", "test-agent/1"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
        b"",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello");
    assert_eq!(response.header("x-owner"), Some("yes"));
    let (first, head, _) = seen.recv().await.unwrap();
    assert!(
        head.starts_with(&format!("GET {} HTTP/1.1", polling(&sid))),
        "{head}"
    );
    assert_eq!(header(&head, "cookie"), Some("session=abc"));
    assert_eq!(header(&head, "user-agent"), Some("test-agent/1"));
    assert_eq!(
        header(&head, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(header(&head, "x-herald-forwarded"), Some("1"));
    // The client's `Connection: close` is its own hop's.
    assert_ne!(header(&head, "connection"), Some("close"));

    // A POST over the size limit reaches the owner cut one byte past it (the owner refuses it as too large);
    // it goes over the same, pooled, connection.
    let big = vec![b'x'; 5000];
    let response = http(
        b.addr,
        "POST",
        &polling(&sid),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        &big,
    )
    .await;
    assert_eq!(response.status, 200);
    let (second, head, body) = seen.recv().await.unwrap();
    assert!(head.starts_with("POST "), "{head}");
    assert_eq!(body.len(), 1001);
    assert_eq!(first, second, "the second request opened a new connection");
}

#[tokio::test]
async fn a_post_over_the_limit_through_the_other_node_closes_the_session_on_its_owner() {
    let (a, b, _peers) = two_nodes().await;
    let sid = handshake(a.addr).await;
    let big = vec![b'x'; 5000];
    let response = http(
        b.addr,
        "POST",
        &polling(&sid),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        &big,
    )
    .await;
    assert_eq!(response.status, 413);
    // The owner closed it, and told the client so with that answer.
    let response = http(b.addr, "GET", &polling(&sid), &[], b"").await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (400, UNKNOWN_SID)
    );
}
