//! Answers the API fuzz test (tests/api-schema) found off its OpenAPI document, pinned: every error is a JSON
//! `{"error": ...}` 4xx, whatever is malformed (the URL, the query string, the body's shape, a room name).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http, WsClient};
use herald::auth::{AuthConfig, JwtConfig};
use herald::config::{Config, SiteConfig};
use herald::secret::Secret;
use serde_json::{json, Value};

const KEY: &str = "shop-key-0123456789";

fn jwt() -> JwtConfig {
    JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(Secret::new("api-schema-test-secret")),
        public_key_pem: None,
        jwks_url: None,
        jwks_cache_secs: 300,
        issuer: None,
        audience: None,
    }
}

/// Site `shop` with JWT users and mailboxes (embedded store, in a temp dir).
async fn start() -> SocketAddr {
    let mut shop = SiteConfig::new("shop".into());
    shop.api_keys = vec![Secret::new(KEY)];
    shop.auth = AuthConfig::Jwt(jwt());
    shop.user_room_prefix = Some("user_".into());
    shop.public_channel = Some("lobby".into());
    let config = Config {
        sites: vec![shop],
        ..Config::default()
    };
    common::start_gateway(config).await.0
}

/// User 42's device d1 joined to `/shop`; returns the client (kept open) and its socket id.
async fn join_shop(addr: SocketAddr) -> (WsClient, String) {
    let rooms = vec!["user_42".to_string(), "team_a".to_string()];
    let token = herald::auth::jwt::mint(&jwt(), "42", &rooms, Duration::from_secs(600)).unwrap();
    let target = format!("/socket.io/?EIO=4&transport=websocket&token={token}&deviceId=d1");
    let mut client = WsClient::pump(common::ws_open(addr, &target, None).await);
    assert!(client.next_text().await.starts_with("0{"));
    client.send("40/shop,");
    let reply = client.next_text().await;
    let connect: Value = serde_json::from_str(
        reply
            .strip_prefix("40/shop,")
            .unwrap_or_else(|| panic!("{reply}")),
    )
    .unwrap();
    (client, connect["sid"].as_str().unwrap().to_string())
}

/// `(status, content type, body as JSON)`; a body that is not JSON fails the test.
async fn call(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String, Value) {
    let auth = format!("Bearer {KEY}");
    let response = http(
        addr,
        method,
        target,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    let text = response.text();
    let content_type = response.header("content-type").unwrap_or("").to_string();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {target}: body {text:?} is not JSON: {e}"));
    (response.status, content_type, value)
}

/// Asserts a 400 whose JSON error contains `needle`.
async fn bad_request(addr: SocketAddr, method: &str, target: &str, body: &str, needle: &str) {
    let (status, content_type, value) = call(addr, method, target, body).await;
    assert_eq!(status, 400, "{method} {target}: {value}");
    assert_eq!(content_type, "application/json", "{method} {target}");
    let error = value["error"].as_str().unwrap_or_else(|| panic!("{value}"));
    assert!(
        error.contains(needle),
        "{method} {target}: {error:?} lacks {needle:?}"
    );
}

#[tokio::test]
async fn malformed_urls_and_queries_answer_json_errors() {
    let addr = start().await;
    bad_request(addr, "GET", "/api/v1/sites/%FF/sockets", "", "UTF-8").await;
    bad_request(
        addr,
        "GET",
        "/api/v1/sites/shop/users/%FF/devices",
        "",
        "UTF-8",
    )
    .await;
    bad_request(
        addr,
        "DELETE",
        "/api/v1/sites/shop/sockets/%C3",
        "",
        "UTF-8",
    )
    .await;
    bad_request(
        addr,
        "GET",
        "/api/v1/sites/shop/sockets?room=a&room=b",
        "",
        "duplicate field `room`",
    )
    .await;
    bad_request(
        addr,
        "POST",
        &format!("/send?site=shop&site=shop&apiKey={KEY}"),
        r#"{"rooms":"lobby","event":"e"}"#,
        "duplicate field `site`",
    )
    .await;
}

#[tokio::test]
async fn bodies_must_be_objects() {
    let addr = start().await;
    let (_client, id) = join_shop(addr).await;
    let rooms = format!("/api/v1/sites/shop/sockets/{id}/rooms");
    // serde alone reads a struct from an array of its fields: `[]` was a membership change of nothing.
    bad_request(
        addr,
        "POST",
        &rooms,
        "[]",
        "expected a JSON object, got an array",
    )
    .await;
    bad_request(addr, "POST", &rooms, "null", "got null").await;
    let publish = "/api/v1/sites/shop/publish";
    bad_request(
        addr,
        "POST",
        publish,
        r#"[["lobby"], false, [], [], "e"]"#,
        "got an array",
    )
    .await;
    bad_request(addr, "POST", publish, "7", "got a number").await;
    let batch = "/api/v1/sites/shop/batch";
    bad_request(
        addr,
        "POST",
        batch,
        r#"{"messages":[{"rooms":["lobby"],"event":"e"},[["lobby"],false,[],[],"e"]]}"#,
        "messages[1]: expected a JSON object, got an array",
    )
    .await;
    bad_request(
        addr,
        "POST",
        batch,
        r#"{"messages":[{"rooms":["lobby"],"event":""}]}"#,
        "messages[0]: event must not be empty",
    )
    .await;
    let (status, _, value) = call(
        addr,
        "POST",
        batch,
        r#"{"messages":[{"rooms":["lobby"],"event":"e"},{"rooms":["user_42"],"event":"e"}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["results"][1]["queued"], 1, "{value}");
}

#[tokio::test]
async fn joining_a_room_a_mailbox_cannot_hold_is_refused_before_any_change() {
    let addr = start().await;
    let (_client, id) = join_shop(addr).await;
    let rooms = format!("/api/v1/sites/shop/sockets/{id}/rooms");
    // Was 503 "the mailbox store is unavailable": the socket had joined, then the store refused the name.
    let control = json!({ "join": ["ok_room", "bell\u{7}"] }).to_string();
    bad_request(addr, "POST", &rooms, &control, "cannot join 'bell\\u{7}'").await;
    let long = json!({ "join": ["x".repeat(257)] }).to_string();
    bad_request(addr, "POST", &rooms, &long, "at most 256 bytes").await;
    let (status, _, value) = call(addr, "GET", "/api/v1/sites/shop/sockets", "").await;
    assert_eq!(status, 200);
    let now: Vec<&str> = value["sockets"][0]["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(!now.contains(&"ok_room"), "{now:?}");

    let (status, _, value) = call(
        addr,
        "POST",
        &rooms,
        &json!({ "join": ["x".repeat(256)] }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{value}");
    // Leaving a room that cannot exist is a no-op, as leaving any room the socket is not in.
    let leave = json!({ "leave": ["bell\u{7}"] }).to_string();
    let (status, _, value) = call(addr, "POST", &rooms, &leave).await;
    assert_eq!(status, 200, "{value}");
    // A publish to a shared room no one can be in reaches no mailbox, and is no error.
    let publish = json!({ "rooms": ["bell\u{7}"], "event": "e" }).to_string();
    let (status, _, value) = call(addr, "POST", "/api/v1/sites/shop/publish", &publish).await;
    assert_eq!(status, 200, "{value}");
    assert_eq!(value, json!({ "matched": 0, "queued": 0, "online": 0 }));
}
