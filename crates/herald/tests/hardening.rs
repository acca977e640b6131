//! What an outsider does to a running gateway, each with the bound it must keep: repeated CONNECTs, webhook
//! amplification, oversized handshakes, busy auth backends, device floods, the root namespace, anonymous
//! cookies and cross-origin reads. Every test starts a gateway in-process and attacks it over real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use common::{http, Response, WsClient};
use herald::auth::{AuthConfig, JwtConfig, WebhookConfig};
use herald::config::{Config, SiteConfig};
use herald::limits::Limit;
use herald::secret::Secret;
use serde_json::{json, Value};

const KEY: &str = "shop-key-0123456789";
const JWT_SECRET: &str = "jwt-secret-for-the-hardening-tests-0123456789";

/// Counts the calls of an auth webhook that lets `good` tokens in, refuses others, and never answers `hang`.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    /// When each call arrived, from the backend's start.
    arrivals: Arc<std::sync::Mutex<Vec<Duration>>>,
    started: Arc<std::sync::OnceLock<std::time::Instant>>,
}

impl Backend {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn auth_backend() -> (SocketAddr, Backend) {
    let backend = Backend::default();
    let app = Router::new()
        .route(
            "/rooms",
            get(|State(b): State<Backend>, headers: HeaderMap| async move {
                b.calls.fetch_add(1, Ordering::SeqCst);
                let started = b.started.get_or_init(std::time::Instant::now);
                b.arrivals.lock().unwrap().push(started.elapsed());
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let answer = match token {
                    "Bearer good" => ([(header::CONTENT_TYPE, "application/json")], r#"["news"]"#)
                        .into_response(),
                    "Bearer hang" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        StatusCode::UNAUTHORIZED.into_response()
                    }
                    _ => StatusCode::UNAUTHORIZED.into_response(),
                };
                answer
            }),
        )
        .with_state(backend.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, backend)
}

fn site(auth: AuthConfig) -> SiteConfig {
    SiteConfig {
        name: "shop".into(),
        api_keys: vec![Secret::new(KEY)],
        auth,
        user_room_prefix: None,
        public_channel: None,
        update_user_url: None,
        device_ttl_secs: 60,
        max_connections: None,
        recovery_window_ms: 120_000,
        ..SiteConfig::new(String::new())
    }
}

fn webhook(backend: SocketAddr, timeout_ms: u64) -> AuthConfig {
    AuthConfig::Webhook(WebhookConfig {
        url: format!("http://{backend}/rooms"),
        scheme: "Bearer".into(),
        forward_cookie: false,
        timeout_ms,
    })
}

fn jwt() -> AuthConfig {
    AuthConfig::Jwt(JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(Secret::new(JWT_SECRET)),
        public_key_pem: None,
        jwks_url: None,
        jwks_cache_secs: 300,
        issuer: None,
        audience: None,
    })
}

fn token(user: &str, rooms: &[&str]) -> String {
    let AuthConfig::Jwt(config) = jwt() else {
        unreachable!()
    };
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    herald::auth::jwt::mint(&config, user, &rooms, Duration::from_secs(600)).unwrap()
}

async fn start(config: Config) -> SocketAddr {
    let mut config = config;
    // Pings every 200 ms end each long poll quickly; `drain_until` answers them.
    config.server.engine.ping_interval_ms = 200;
    config.server.engine.ping_timeout_ms = 10_000;
    common::start_gateway(config).await.0
}

fn with_sites(sites: Vec<SiteConfig>) -> Config {
    Config {
        sites,
        ..Config::default()
    }
}

async fn handshake(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Response {
    http(
        addr,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling{query}"),
        headers,
        b"",
    )
    .await
}

async fn open_sid(addr: SocketAddr) -> String {
    let open = handshake(addr, "", &[]).await;
    assert_eq!(open.status, 200, "{}", open.text());
    let open: Value = serde_json::from_str(open.text().strip_prefix('0').unwrap()).unwrap();
    open["sid"].as_str().unwrap().to_string()
}

async fn post(addr: SocketAddr, sid: &str, body: &[u8]) -> Response {
    http(
        addr,
        "POST",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        body,
    )
    .await
}

async fn get_packets(addr: SocketAddr, sid: &str) -> Vec<String> {
    let response = http(
        addr,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response
        .text()
        .split('\u{1e}')
        .map(str::to_string)
        .collect()
}

/// `copies` CONNECT packets to `/shop` with `token`, in one polling payload.
fn connects(copies: usize, token: &str) -> Vec<u8> {
    let packet = format!(r#"40/shop,{{"token":"{token}"}}"#);
    vec![packet; copies].join("\u{1e}").into_bytes()
}

/// Publishes `body` to site `shop`; the answer must be 200.
async fn publish(addr: SocketAddr, body: Value) -> Value {
    let response = http(
        addr,
        "POST",
        "/api/v1/sites/shop/publish",
        &[
            ("Authorization", &format!("Bearer {KEY}")),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_str(&response.text()).unwrap()
}

/// Reads the session's packets until `wanted` is seen or nothing more comes for a while.
async fn drain_until(addr: SocketAddr, sid: &str, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let packets = get_packets(addr, sid).await;
        if packets.iter().any(|p| p == "2") {
            post(addr, sid, b"3").await;
        }
        let done = packets.iter().any(|p| p.contains(wanted));
        seen.extend(packets);
        if done {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn repeated_connects_in_one_post_give_one_socket() {
    let (backend_addr, backend) = auth_backend().await;
    let mut shop = site(webhook(backend_addr, 5000));
    shop.max_connections = Some(2);
    let addr = start(with_sites(vec![shop])).await;
    let sid = open_sid(addr).await;

    let answer = post(addr, &sid, &connects(10, "good")).await;
    assert_eq!(answer.status, 200);
    let packets = drain_until(addr, &sid, "40/shop,{\"sid\"").await;
    let acks = packets.iter().filter(|p| p.starts_with("40/shop,")).count();
    assert_eq!(acks, 1, "one CONNECT answered: {packets:?}");
    assert_eq!(backend.calls(), 1, "one webhook call for ten CONNECTs");

    // The same CONNECT again after it is decided changes nothing either.
    post(addr, &sid, &connects(5, "good")).await;
    let outcome = publish(addr, json!({"all": true, "event": "once"})).await;
    assert_eq!(outcome["matched"], 1, "{outcome}");
    let packets = drain_until(addr, &sid, "once").await;
    let copies = packets.iter().filter(|p| p.contains("once")).count();
    assert_eq!(copies, 1, "one copy of one publish: {packets:?}");
    assert_eq!(backend.calls(), 1);
}

#[tokio::test]
async fn bad_tokens_cannot_amplify_into_webhook_calls() {
    let (backend_addr, backend) = auth_backend().await;
    let addr = start(with_sites(vec![site(webhook(backend_addr, 5000))])).await;

    // 500 CONNECTs in one 16 KB POST: one decision at a time per namespace, so one call.
    let sid = open_sid(addr).await;
    let body = connects(700, "bad");
    assert!(body.len() > 16_000);
    post(addr, &sid, &body).await;
    let packets = drain_until(addr, &sid, "44/shop,").await;
    assert!(
        packets.iter().any(|p| p.starts_with("44/shop,")),
        "{packets:?}"
    );
    assert_eq!(backend.calls(), 1);

    // One CONNECT per POST, each refused: the session gets max_auth_attempts (8) decisions, then closes.
    let fired = Limit::AuthAttempts.count();
    for _ in 0..20 {
        let answer = post(addr, &sid, &connects(1, "bad")).await;
        if answer.status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let limit = Config::default().server.limits.max_auth_attempts as usize;
    assert_eq!(
        backend.calls(),
        limit,
        "calls stop at the per-session limit"
    );
    assert!(Limit::AuthAttempts.count() > fired, "counted");
    let closed = drain_until(addr, &sid, "too many connection attempts").await;
    assert!(
        closed
            .iter()
            .any(|p| p.contains("too many connection attempts")),
        "{closed:?}"
    );
}

#[tokio::test]
async fn a_hanging_auth_backend_holds_at_most_its_slots() {
    let (backend_addr, backend) = auth_backend().await;
    let mut config = with_sites(vec![site(webhook(backend_addr, 800))]);
    config.server.limits.max_concurrent_auth = 2;
    let addr = start(config).await;
    let fired = Limit::ConcurrentAuth.count();
    let mut sids = Vec::new();
    for _ in 0..6 {
        let sid = open_sid(addr).await;
        post(addr, &sid, &connects(1, "hang")).await;
        sids.push(sid);
    }
    // Each of the six is answered within the webhook's timeout and the wait for a slot; no more than two
    // calls were ever in flight.
    for sid in &sids {
        let packets = drain_until(addr, sid, "44/shop,").await;
        let refusal = packets.iter().find(|p| p.starts_with("44/shop,")).unwrap();
        assert!(
            refusal.contains("timed out") || refusal.contains("busy"),
            "{refusal}"
        );
    }
    // Two slots and an 800 ms webhook timeout: the first two calls hold both slots until they time out, so
    // no third call starts before then.
    let arrivals = backend.arrivals.lock().unwrap().clone();
    let early = arrivals
        .iter()
        .filter(|t| **t < Duration::from_millis(700))
        .count();
    assert_eq!(early, 2, "calls arrived at {arrivals:?}");
    assert!(Limit::ConcurrentAuth.count() > fired, "counted");
}

#[tokio::test]
async fn a_handshake_keeps_at_most_max_handshake_bytes() {
    let addr = start(Config::default()).await;
    let big = "x".repeat(20_000);
    let fired = Limit::HandshakeBytes.count();
    let refused = handshake(addr, &format!("&pad={big}"), &[]).await;
    assert_eq!(refused.status, 431, "{}", refused.text());
    assert!(Limit::HandshakeBytes.count() > fired, "counted");
    let shown: Value =
        serde_json::from_str(&http(addr, "GET", "/limits", &[], b"").await.text()).unwrap();
    assert!(shown["max_handshake_bytes"].as_u64().unwrap() > fired);
    assert!(
        refused.text().contains("limit is 16384"),
        "{}",
        refused.text()
    );
    let cookie = format!("session={big}");
    let refused = handshake(addr, "", &[("Cookie", &cookie)]).await;
    assert_eq!(refused.status, 431);
    // A WebSocket handshake is held to the same limit.
    let ws = http(
        addr,
        "GET",
        &format!("/socket.io/?EIO=4&transport=websocket&pad={big}"),
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    )
    .await;
    assert_eq!(ws.status, 431);

    // A head over max_header_bytes never reaches the engine.
    let huge = format!("session={}", "y".repeat(100_000));
    let refused = handshake(addr, "", &[("Cookie", &huge)]).await;
    assert_eq!(refused.status, 431);
}

#[tokio::test]
async fn devices_per_user_are_bounded() {
    let mut shop = site(jwt());
    shop.user_room_prefix = Some("user_".into());
    let mut config = with_sites(vec![shop]);
    config.server.limits.max_devices_per_user = 3;
    let addr = start(config).await;
    let token = token("42", &["user_42"]);
    let mut clients = Vec::new();
    for device in ["a", "b", "c"] {
        let (client, reply) = join(addr, &format!("token={token}&deviceId={device}")).await;
        assert!(reply.starts_with("40/shop,{\"sid\""), "{reply}");
        clients.push(client);
    }
    let fired = Limit::DevicesPerUser.count();
    let (_, refused) = join(addr, &format!("token={token}&deviceId=d")).await;
    assert_eq!(Limit::DevicesPerUser.count(), fired + 1, "counted");
    assert!(
        refused.starts_with("44/shop,") && refused.contains("3 devices"),
        "{refused}"
    );
    // A device the user already has comes back; the publish reaches three mailboxes, not more.
    drop(clients.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_again, reply) = join(addr, &format!("token={token}&deviceId=c")).await;
    assert!(reply.starts_with("40/shop,{\"sid\""), "{reply}");
    let outcome = publish(addr, json!({"rooms": ["user_42"], "event": "e"})).await;
    assert_eq!(outcome["queued"], 3, "{outcome}");
}

async fn join(addr: SocketAddr, query: &str) -> (WsClient, String) {
    common::join_namespace(addr, "/shop", query).await
}

#[tokio::test]
async fn the_root_namespace_names_the_sites() {
    let addr = start(Config::default()).await;
    let ws = common::ws_open(addr, "/socket.io/?EIO=4&transport=websocket", None).await;
    let mut client = WsClient::pump(ws);
    assert!(client.next_text().await.starts_with("0{"));
    client.send("40");
    let refused = client.next_text().await;
    assert!(refused.starts_with("44{"), "{refused}");
    assert!(refused.contains("/demo"), "{refused}");
}

#[tokio::test]
async fn an_anonymous_cookie_is_no_credential_on_a_public_channel() {
    let mut shop = site(jwt());
    shop.public_channel = Some("lobby".into());
    let addr = start(with_sites(vec![shop])).await;
    let ws = common::ws_open_with(
        addr,
        "/socket.io/?EIO=4&transport=websocket",
        &[("Cookie", "_ga=GA1.1.123; theme=dark")],
    )
    .await;
    let mut client = WsClient::pump(ws);
    assert!(client.next_text().await.starts_with("0{"));
    client.send("40/shop,");
    let reply = client.next_text().await;
    assert!(reply.starts_with("40/shop,{\"sid\""), "{reply}");
}

#[tokio::test]
async fn no_cors_without_an_origin_list() {
    let addr = start(Config::default()).await;
    let answer = handshake(addr, "", &[("Origin", "https://evil.example")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), None);
    assert_eq!(answer.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn unknown_sites_answer_like_wrong_keys() {
    let addr = start(with_sites(vec![site(AuthConfig::Public)])).await;
    let ask = |site: &'static str, key: &'static str| async move {
        let response = http(
            addr,
            "POST",
            &format!("/api/v1/sites/{site}/publish"),
            &[
                ("Authorization", &format!("Bearer {key}")),
                ("Content-Type", "application/json"),
            ],
            br#"{"all":true,"event":"e"}"#,
        )
        .await;
        (response.status, response.text().replace(site, "SITE"))
    };
    assert_eq!(ask("nope", "wrong").await, ask("shop", "wrong").await);
    assert_eq!(ask("nope", "wrong").await.0, 401);
}
