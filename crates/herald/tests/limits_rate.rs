//! The rate limits, against a gateway in-process on 127.0.0.1:0 with real HTTP and WebSocket clients: publishes
//! per API key (`limits.publishes_per_key_per_sec`) and new sessions per client address
//! (`limits.connects_per_ip_per_sec`). Each test takes a burst of N, sees the N+1th refused with `Retry-After`,
//! sees another key or address unaffected, waits the `Retry-After` it was given and is let in again; the limit's
//! `herald_limit_hits_total` moves by the refusals.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{http, http_from, ws_open, Response, WAIT};
use futures_util::StreamExt;
use herald::config::{Config, SiteConfig};
use herald::secret::Secret;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const KEY_A: &str = "shop-key-a-0123456789";
const KEY_B: &str = "shop-key-b-0123456789";
const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A gateway with site `shop` (public, keys A and B) and `edit`'s limits.
async fn start(edit: impl FnOnce(&mut herald::config::LimitsConfig)) -> SocketAddr {
    let mut shop = SiteConfig::new("shop".into());
    shop.api_keys = vec![Secret::new(KEY_A), Secret::new(KEY_B)];
    shop.public_channel = Some("lobby".into());
    let mut config = Config {
        sites: vec![shop],
        ..Config::default()
    };
    edit(&mut config.server.limits);
    common::start_gateway(config).await.0
}

/// How often `limit` fired, as `GET /metrics` shows it.
async fn limit_hits(addr: SocketAddr, limit: &str) -> u64 {
    let text = http(addr, "GET", "/metrics", &[], b"").await.text();
    let sample = format!("herald_limit_hits_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&sample))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {sample:?} sample in /metrics:\n{text}"))
}

/// The `Retry-After` of a 429, checked to be whole seconds, at least 1.
fn retry_after(response: &Response) -> Duration {
    assert_eq!(response.status, 429, "{}", response.text());
    let secs: u64 = response
        .header("retry-after")
        .expect("a 429 carries Retry-After")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(secs >= 1, "Retry-After {secs}");
    Duration::from_secs(secs)
}

async fn publish(addr: SocketAddr, key: &str, path: &str, body: &Value) -> Response {
    let auth = format!("Bearer {key}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    http(addr, "POST", path, &headers, body.to_string().as_bytes()).await
}

fn message(n: u32) -> Value {
    json!({"rooms": ["lobby"], "event": "tick", "args": [n]})
}

const PUBLISH: &str = "/api/v1/sites/shop/publish";
const BATCH: &str = "/api/v1/sites/shop/batch";

fn error_of(response: &Response) -> String {
    let body: Value = serde_json::from_slice(&response.body).expect("a JSON error body");
    body["error"]
        .as_str()
        .expect("{\"error\": \"...\"}")
        .to_string()
}

#[tokio::test]
async fn publishes_over_a_keys_rate_get_429_until_retry_after_and_other_keys_go_on() {
    let addr = start(|limits| {
        limits.publishes_per_key_per_sec = Some(1);
        limits.publishes_per_key_burst = Some(3);
    })
    .await;
    let hits = limit_hits(addr, "publishes_per_key_per_sec").await;

    for n in 0..3 {
        let ok = publish(addr, KEY_A, PUBLISH, &message(n)).await;
        assert_eq!(ok.status, 200, "publish {n} of the burst: {}", ok.text());
    }
    let refused = publish(addr, KEY_A, PUBLISH, &message(3)).await;
    let wait = retry_after(&refused);
    assert_eq!(
        error_of(&refused),
        "rate limited: this API key may publish 1 times a second (bursts of 3); retry in 1 s"
    );
    // crossroads' /send with the same key shares its budget.
    let send = http(
        addr,
        "POST",
        &format!("/send?site=shop&apiKey={KEY_A}"),
        &[("Content-Type", "application/json")],
        message(4).to_string().as_bytes(),
    )
    .await;
    retry_after(&send);
    assert!(
        error_of(&send).starts_with("rate limited: "),
        "{}",
        send.text()
    );

    // Key B has its own budget; a batch counts its messages.
    let batch = json!({"messages": [message(0), message(1), message(2)]});
    let ok = publish(addr, KEY_B, BATCH, &batch).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let one_more = publish(addr, KEY_B, BATCH, &json!({"messages": [message(3)]})).await;
    retry_after(&one_more);
    // A batch larger than the burst could never pass: 400, not a 429 to retry for ever.
    let too_big = json!({"messages": (0..4).map(message).collect::<Vec<_>>()});
    let never = publish(addr, KEY_B, BATCH, &too_big).await;
    assert_eq!(never.status, 400, "{}", never.text());
    assert_eq!(
        error_of(&never),
        "a batch of 4 messages is over this API key's burst of 3 publishes; send smaller batches"
    );
    assert_eq!(
        limit_hits(addr, "publishes_per_key_per_sec").await,
        hits + 4,
        "each refusal is counted"
    );

    tokio::time::sleep(wait).await;
    let again = publish(addr, KEY_A, PUBLISH, &message(5)).await;
    assert_eq!(again.status, 200, "after Retry-After: {}", again.text());
}

const POLLING: &str = "/socket.io/?EIO=4&transport=polling";

/// A polling handshake from `source`.
async fn handshake(addr: SocketAddr, source: IpAddr) -> Response {
    http_from(source, addr, "GET", POLLING, &[], b"").await
}

fn sid_of(response: &Response) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    let open: Value = serde_json::from_str(
        response
            .text()
            .strip_prefix('0')
            .expect("an Engine.IO open packet"),
    )
    .expect("the open packet's JSON");
    open["sid"].as_str().expect("a sid").to_string()
}

const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test]
async fn connects_over_an_addresss_rate_are_refused_with_the_reason_on_every_transport() {
    let (addr, gateway) = {
        let mut shop = SiteConfig::new("shop".into());
        shop.api_keys = vec![Secret::new(KEY_A)];
        let mut config = Config {
            sites: vec![shop],
            ..Config::default()
        };
        config.server.limits.connects_per_ip_per_sec = Some(1);
        config.server.limits.connects_per_ip_burst = Some(2);
        common::start_gateway(config).await
    };
    let hits = limit_hits(addr, "connects_per_ip_per_sec").await;

    let first = sid_of(&handshake(addr, HERE).await);
    sid_of(&handshake(addr, HERE).await);
    let wait = {
        let refused = handshake(addr, HERE).await;
        assert_eq!(
            refused.text(),
            r#"{"code":3,"message":"rate limited","retryAfter":1}"#
        );
        retry_after(&refused)
    };
    // Every transport's new session passes the same gate.
    let websocket = http(
        addr,
        "GET",
        "/socket.io/?EIO=4&transport=websocket",
        &UPGRADE,
        b"",
    )
    .await;
    retry_after(&websocket);
    let sse = http(addr, "GET", "/sse/shop", &[], b"").await;
    retry_after(&sse);
    let body: Value = serde_json::from_slice(&sse.body).expect("JSON");
    assert_eq!(body, json!({"error": "rate limited", "retryAfter": 1}));
    // A plain WebSocket is upgraded (`ws_open` checks the 101), to be told why it is refused.
    let mut plain = ws_open(addr, "/ws/shop", None).await;
    let frame = tokio::time::timeout(WAIT, plain.next())
        .await
        .expect("a frame in time");
    let Some(Ok(Message::Text(text))) = frame else {
        panic!("expected the error frame, got {frame:?}");
    };
    let error: Value = serde_json::from_str(text.as_str()).expect("JSON");
    assert_eq!(
        error,
        json!({"type": "error", "error": "rate limited", "retryAfter": 1})
    );
    let close = tokio::time::timeout(WAIT, plain.next())
        .await
        .expect("a close in time");
    let Some(Ok(Message::Close(Some(close)))) = close else {
        panic!("expected a close frame, got {close:?}");
    };
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Policy, "rate limited")
    );

    // Not new sessions: an upgrade of a session this address already has goes on.
    let probe = ws_open(
        addr,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={first}"),
        None,
    )
    .await;
    drop(probe);
    // Another address has its own budget.
    sid_of(&handshake(addr, ELSEWHERE).await);
    assert_eq!(
        gateway.engine.session_count(),
        3,
        "refusals open no session and hold no place"
    );
    assert_eq!(
        limit_hits(addr, "connects_per_ip_per_sec").await,
        hits + 4,
        "each refusal is counted"
    );

    tokio::time::sleep(wait).await;
    sid_of(&handshake(addr, HERE).await);
}
