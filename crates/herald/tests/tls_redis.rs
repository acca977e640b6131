//! A cluster over TLS end to end: two nodes serving HTTPS at https:// node URLs, on a private Redis that speaks
//! TLS only (`rediss://`), every certificate signed by a private CA made by the test and trusted through
//! `server.ca_file`. Each node's mailbox store, bus, registry, recovery sessions and emitter connect when the
//! gateway is built; a publish on one node reaches a client of the other, a message on the Redis bridge's
//! channel reaches it too, a polling request sent to the wrong node is forwarded over HTTPS, and a socket
//! listing asks the peer over HTTPS. Without the CA a node does not start, and says why.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::broker::Broker;
use common::tls::TestCa;
use herald::config::{BridgeConfig, BridgeKind, Config, SiteConfig};
use herald::gateway::Gateway;
use herald::secret::Secret;
use serde_json::json;

const KEY: &str = "shop-key-0123456789";
const CHANNEL: &str = "herald-tls-bridge";

/// The nodes' configuration: Redis and the Redis bridge at `redis_url`, the CA file when given.
fn config(redis_url: &str, ca_file: Option<std::path::PathBuf>) -> Config {
    let mut config = Config {
        sites: vec![SiteConfig {
            api_keys: vec![Secret::new(KEY)],
            recovery_window_ms: 0,
            ..SiteConfig::new("shop".into())
        }],
        bridges: vec![BridgeConfig {
            kind: BridgeKind::Redis,
            url: redis_url.to_string(),
            queue: None,
            topic: None,
            subject: None,
            channel: Some(CHANNEL.into()),
            site: "shop".into(),
            room: None,
            event: None,
            retain: false,
            if_changed: false,
        }],
        ..Config::default()
    };
    config.server.redis_url = Some(redis_url.to_string());
    config.server.ca_file = ca_file;
    config
}

/// A node serving HTTPS with `files`, its peers told it is at https://<its address>.
async fn node(mut config: Config, files: &herald::config::TlsFiles) -> (SocketAddr, Gateway) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    config.server.tls = Some(files.clone());
    config.server.cluster.node_url = Some(format!("https://{addr}"));
    config.server.data_dir =
        std::env::temp_dir().join(format!("herald-test-{}", rand::random::<u64>()));
    let gateway = herald::gateway::build(&config).await.expect("a node");
    let server = herald::server::Server::new(
        listener,
        gateway.router(),
        herald::lifecycle::serve_config(&config),
    )
    .with_tls(gateway.tls.clone());
    tokio::spawn(server.run());
    (addr, gateway)
}

/// Waits until each node's registry knows the other.
async fn meshed(nodes: [&Gateway; 2]) {
    tokio::time::timeout(Duration::from_secs(15), async {
        while nodes
            .iter()
            .any(|n| n.publisher.cluster.directory.peers().is_empty())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the nodes did not see each other in time");
}

#[tokio::test]
async fn rediss_carries_publishes_between_nodes_and_feeds_the_bridge() {
    let ca = TestCa::new("rediss");
    let ca_file = ca.ca_file();
    let redis = Broker::start_redis_tls(&ca.write("redis", &ca.issue("redis")), &ca_file).await;
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");

    // The Redis client retries for seconds before it gives up: run this meanwhile.
    let untrusting = config(&url, None);
    let without_ca = tokio::spawn(async move {
        herald::gateway::build(&untrusting)
            .await
            .err()
            .map(|e| e.to_string())
    });

    let files = ca.write("nodes", &ca.issue("herald-node"));
    let (a, node_a) = node(config(&url, Some(ca_file.clone())), &files).await;
    let (b, node_b) = node(config(&url, Some(ca_file.clone())), &files).await;
    let (mut client, _, connected) = common::tls::wss_join(b, ca.client_config(), "/shop").await;
    assert!(connected.starts_with("40/shop,{"), "{connected}");

    let http = ca.http_client();
    let published = http
        .post(format!("https://{a}/api/v1/sites/shop/publish"))
        .bearer_auth(KEY)
        .json(&json!({"all": true, "event": "news", "args": ["from node a"]}))
        .send()
        .await
        .expect("a publish on node a");
    assert_eq!(published.status(), 200);
    assert_eq!(
        common::tls::next_text(&mut client).await,
        r#"42/shop,["news","from node a"]"#
    );

    // Node a asks node b (over HTTPS) for its sockets; a polling session of node a answers on node b.
    meshed([&node_a, &node_b]).await;
    let listing = http
        .get(format!("https://{a}/api/v1/sites/shop/sockets"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("a socket listing")
        .json::<serde_json::Value>()
        .await
        .expect("JSON");
    assert_eq!(
        listing["sockets"].as_array().map(Vec::len),
        Some(1),
        "{listing}"
    );
    assert!(listing.get("unreachable").is_none(), "{listing}");
    let open = http
        .get(format!("https://{a}/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .expect("a polling handshake on node a")
        .text()
        .await
        .expect("its body");
    let open: serde_json::Value =
        serde_json::from_str(open.strip_prefix('0').expect("an open packet")).expect("JSON");
    let sid = open["sid"].as_str().expect("a sid");
    let forwarded = http
        .post(format!(
            "https://{b}/socket.io/?EIO=4&transport=polling&sid={sid}"
        ))
        .body("40/shop,")
        .send()
        .await
        .expect("a POST of node a's session, sent to node b");
    assert_eq!(forwarded.status(), 200);
    let connect = http
        .get(format!(
            "https://{b}/socket.io/?EIO=4&transport=polling&sid={sid}"
        ))
        .send()
        .await
        .expect("a GET of node a's session, sent to node b")
        .text()
        .await
        .expect("its body");
    assert!(connect.starts_with("40/shop,{"), "{connect}");

    // The test's own client goes through herald's one constructor, with the same roots.
    let trust = herald::tls::Trust::load(Some(&ca_file)).expect("the CA file");
    let mut con = trust
        .redis_client(&url)
        .expect("a rediss:// client")
        .get_multiplexed_async_connection()
        .await
        .expect("a TLS connection to Redis");
    // Both nodes' bridges subscribe in the background: publish once both listen.
    let message = r#"{"all": true, "event": "bridged", "args": [1]}"#;
    let mut listeners = 0;
    for _ in 0..250 {
        listeners = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg("{}")
            .query_async::<i64>(&mut con)
            .await
            .expect("PUBLISH");
        if listeners >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listeners, 2, "both nodes' bridges subscribe over TLS");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(message)
        .query_async(&mut con)
        .await
        .expect("PUBLISH");
    loop {
        let frame = common::tls::next_text(&mut client).await;
        if frame.contains("bridged") {
            assert_eq!(frame, r#"42/shop,["bridged",1]"#);
            break;
        }
    }

    let without_ca = without_ca
        .await
        .expect("the build task")
        .expect("a node that does not trust the Redis certificate does not start");
    assert!(
        without_ca.contains("UnknownIssuer")
            && without_ca.contains("a private CA goes in server.ca_file"),
        "{without_ca}"
    );
    assert!(!without_ca.contains(&url), "{without_ca}");
}
