//! The browser client kit's routes: `/herald.js` (the embedded module, its cache headers and 304), and the
//! 404 that says where to get the socket.io client, under the engine's path, beside the engine's own route.

mod common;

use std::net::SocketAddr;

use common::http;
use herald::config::{Config, SiteConfig};

const MODULE: &str = include_str!("../src/ui/herald.js");

async fn start(engine_path: &str) -> SocketAddr {
    let mut config = Config {
        sites: vec![SiteConfig::new("news".into())],
        ..Config::default()
    };
    config.server.engine.path = engine_path.into();
    common::start_gateway(config).await.0
}

#[tokio::test]
async fn herald_js_is_the_embedded_module_with_a_cache_tag() {
    let addr = start("/socket.io/").await;
    let kit = http(addr, "GET", "/herald.js", &[], b"").await;
    assert_eq!(kit.status, 200);
    assert_eq!(
        kit.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(kit.header("cache-control"), Some("public, max-age=300"));
    assert_eq!(kit.header("access-control-allow-origin"), Some("*"));
    assert_eq!(kit.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(kit.text(), MODULE);
    let etag = kit.header("etag").expect("an ETag").to_string();
    let version = format!("\"{}-", env!("CARGO_PKG_VERSION"));
    assert!(
        etag.starts_with(&version) && etag.len() == version.len() + 17,
        "{etag}"
    );

    let listed = format!("\"other\", {etag}");
    let cached = http(
        addr,
        "GET",
        "/herald.js",
        &[("If-None-Match", &listed)],
        b"",
    )
    .await;
    assert_eq!((cached.status, cached.body.len()), (304, 0));
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    let stale = http(
        addr,
        "GET",
        "/herald.js",
        &[("If-None-Match", "\"other\"")],
        b"",
    )
    .await;
    assert_eq!(stale.status, 200);
}

#[tokio::test]
async fn the_socketio_client_paths_say_where_to_get_it_and_the_engine_still_answers() {
    let addr = start("/socket.io/").await;
    for bundle in [
        "socket.io.js",
        "socket.io.min.js",
        "socket.io.esm.min.js",
        "socket.io.msgpack.min.js",
    ] {
        let answer = http(addr, "GET", &format!("/socket.io/{bundle}"), &[], b"").await;
        assert_eq!(answer.status, 404, "{bundle}");
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let text = answer.text();
        assert!(
            text.starts_with("herald does not serve the socket.io client.\n"),
            "{text}"
        );
        for hint in [
            "npm install socket.io-client",
            "https://cdn.jsdelivr.net/npm/socket.io-client@4/dist/socket.io.min.js",
            "import { connect } from \"/herald.js\";",
        ] {
            assert!(text.contains(hint), "{hint} in {text}");
        }
    }
    let handshake = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], b"").await;
    assert_eq!(handshake.status, 200);
    assert!(handshake.text().starts_with("0{\"sid\":"));
}

#[tokio::test]
async fn the_404_follows_the_engine_path() {
    let addr = start("/rt/").await;
    let moved = http(addr, "GET", "/rt/socket.io.js", &[], b"").await;
    assert_eq!(moved.status, 404);
    assert!(moved.text().starts_with("herald does not serve"));
    let elsewhere = http(addr, "GET", "/socket.io/socket.io.js", &[], b"").await;
    assert_eq!((elsewhere.status, elsewhere.body.len()), (404, 0));
    let handshake = http(addr, "GET", "/rt/?EIO=4&transport=polling", &[], b"").await;
    assert_eq!(handshake.status, 200);
}
