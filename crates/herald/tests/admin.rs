//! The admin console's API end to end: a gateway built from a Config with `server.admin_token`, real WebSocket
//! socket.io clients, HTTP requests to `/admin` and `/api/v1/admin`, and the live tail read as an event stream.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{http, WsClient};
use herald::auth::{AuthConfig, JwtConfig};
use herald::cluster::{new_node_id, Cluster, Directory};
use herald::config::{Config, SiteConfig};
use herald::secret::Secret;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-0123456789abcdef";
const KEY: &str = "shop-key-0123456789";
const JWT_SECRET: &str = "admin-test-jwt-secret";

/// Site `shop` (public, room `lobby`, no recovery offsets, so frames are exact) and site `inbox` (JWT users,
/// mailboxes).
fn config(admin_token: Option<&str>) -> Config {
    let mut shop = SiteConfig::new("shop".into());
    shop.api_keys = vec![Secret::new(KEY)];
    shop.public_channel = Some("lobby".into());
    shop.recovery_window_ms = 0;
    let mut inbox = SiteConfig::new("inbox".into());
    inbox.api_keys = vec![Secret::new("inbox-key-0123456789")];
    inbox.auth = AuthConfig::Jwt(jwt());
    inbox.user_room_prefix = Some("user_".into());
    inbox.device_ttl_secs = 3600;
    inbox.recovery_window_ms = 0;
    let mut config = Config {
        sites: vec![shop, inbox],
        ..Config::default()
    };
    config.server.admin_token = admin_token.map(Secret::new);
    config
}

fn jwt() -> JwtConfig {
    JwtConfig {
        algorithm: "HS256".into(),
        secret: Some(Secret::new(JWT_SECRET)),
        public_key_pem: None,
        jwks_url: None,
        jwks_cache_secs: 300,
        issuer: None,
        audience: None,
    }
}

async fn start(admin_token: Option<&str>) -> SocketAddr {
    common::start_gateway(config(admin_token)).await.0
}

/// An admin API call with `Authorization: Bearer <token>`: the status and the body as JSON (else a string).
async fn admin(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    common::api_json(addr, method, path, TOKEN, body).await
}

/// A client of `/shop` with `deviceId` on its handshake; returns it and its socket id.
async fn join_shop(addr: SocketAddr, device: &str) -> (WsClient, String) {
    let (client, reply) =
        common::join_namespace(addr, "/shop", &format!("deviceId={device}")).await;
    let connect: Value = serde_json::from_str(
        reply
            .strip_prefix("40/shop,")
            .unwrap_or_else(|| panic!("not a CONNECT: {reply}")),
    )
    .expect("the CONNECT answer is JSON");
    let id = connect["sid"].as_str().expect("a socket id").to_string();
    (client, id)
}

#[tokio::test]
async fn without_a_token_the_console_and_its_api_are_off() {
    let addr = start(None).await;
    for path in ["/admin", "/admin/assets/admin.js", "/api/v1/admin/overview"] {
        let auth = format!("Bearer {TOKEN}");
        let response = http(addr, "GET", path, &[("Authorization", &auth)], b"").await;
        assert_eq!(response.status, 404, "{path}");
    }
    let login = http(addr, "POST", "/admin/login", &[], b"token=x").await;
    assert_eq!(login.status, 404);
}

#[tokio::test]
async fn a_wrong_token_is_401_after_a_delay_and_the_bearer_token_works() {
    let addr = start(Some(TOKEN)).await;
    let started = Instant::now();
    let (status, answer) =
        common::api_json(addr, "GET", "/api/v1/admin/overview", "wrong", &Value::Null).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a wrong token is answered slowly"
    );
    let bare = http(addr, "GET", "/api/v1/admin/overview", &[], b"").await;
    assert_eq!(bare.status, 401);
    assert_eq!(bare.header("www-authenticate"), Some("Bearer"));
    // A site's key is not the admin token, nor the admin token a site's key.
    let (status, _) =
        common::api_json(addr, "GET", "/api/v1/admin/overview", KEY, &Value::Null).await;
    assert_eq!(status, 401);
    let (status, _) = common::api_json(
        addr,
        "GET",
        "/api/v1/sites/shop/sockets",
        TOKEN,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 401);

    let (status, overview) = admin(addr, "GET", "/api/v1/admin/overview", &Value::Null).await;
    assert_eq!(status, 200, "{overview}");
    let sites: Vec<&str> = overview["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(sites, ["inbox", "shop"]);
    assert_eq!(overview["nodes"][0]["self"], true);
    assert_eq!(overview["bridges"], json!([]));
    let (status, answer) = admin(addr, "GET", "/api/v1/admin/sites/nope/rooms", &Value::Null).await;
    assert_eq!(
        (status, answer),
        (404, json!({"error": "unknown site 'nope'"}))
    );

    let page = http(
        addr,
        "GET",
        "/admin",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("/admin/assets/admin.js"),
        "the console"
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
}

/// The value of `Set-Cookie` in `response`.
fn set_cookie(response: &common::Response) -> String {
    response
        .header("set-cookie")
        .expect("a Set-Cookie")
        .to_string()
}

#[tokio::test]
async fn the_login_form_sets_a_session_cookie_and_logout_ends_it() {
    let addr = start(Some(TOKEN)).await;
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let page = http(addr, "GET", "/admin", &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("name=\"token\""), "the login form");

    let wrong = http(addr, "POST", "/admin/login", &form, b"token=nope").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("That is not the admin token."));
    assert!(wrong.header("set-cookie").is_none());

    let body = format!("token={TOKEN}");
    let login = http(addr, "POST", "/admin/login", &form, body.as_bytes()).await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/admin"));
    let cookie = set_cookie(&login);
    for part in ["herald_admin=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().expect("name=value").to_string();

    let behind_tls = [form[0], ("X-Forwarded-Proto", "https")];
    let secure = http(addr, "POST", "/admin/login", &behind_tls, body.as_bytes()).await;
    assert!(set_cookie(&secure).ends_with("; Secure"), "over HTTPS");

    let with_cookie = [("Cookie", session.as_str())];
    let overview = http(addr, "GET", "/api/v1/admin/overview", &with_cookie, b"").await;
    assert_eq!(overview.status, 200);
    let console = http(addr, "GET", "/admin", &with_cookie, b"").await;
    assert!(console.text().contains("/admin/assets/admin.js"));
    // A change asked with the cookie from another origin is refused.
    let elsewhere = [
        ("Cookie", session.as_str()),
        ("Origin", "https://evil.test"),
        ("Content-Type", "application/json"),
    ];
    let body = br#"{"rooms": ["lobby"], "event": "x"}"#;
    let refused = http(
        addr,
        "POST",
        "/api/v1/admin/sites/shop/publish",
        &elsewhere,
        body,
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text());

    let logout = http(addr, "POST", "/admin/logout", &with_cookie, b"").await;
    assert_eq!(logout.status, 303);
    assert!(set_cookie(&logout).contains("herald_admin=; Path=/; Max-Age=0"));
    let after = http(addr, "GET", "/api/v1/admin/overview", &with_cookie, b"").await;
    assert_eq!(after.status, 401, "the session ended");
    let page = http(addr, "GET", "/admin", &with_cookie, b"").await;
    assert!(
        page.text().contains("name=\"token\""),
        "the login form again"
    );
}

/// The admin tail read as an event stream: its blocks, as they come.
struct Tail {
    response: reqwest::Response,
    buffer: String,
}

impl Tail {
    async fn open(addr: SocketAddr, query: &str) -> Tail {
        let response = reqwest::Client::new()
            .get(format!("http://{addr}/api/v1/admin/sites/shop/tail{query}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the tail answers");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Tail {
            response,
            buffer: String::new(),
        }
    }

    /// The data of the next block of event `name`, skipping others (keep-alive comments).
    async fn next(&mut self, name: &str) -> Value {
        let wanted = format!("event: {name}\n");
        tokio::time::timeout(common::WAIT, async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    if let Some(rest) = block.strip_prefix(&wanted) {
                        let data = rest.trim_end().strip_prefix("data: ").expect("data");
                        return serde_json::from_str(data).expect("JSON data");
                    }
                }
                let chunk = self.response.chunk().await.expect("reads").expect("open");
                self.buffer
                    .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no '{name}' event in time; read {:?}", self.buffer))
    }
}

#[tokio::test]
async fn a_publish_from_the_console_reaches_the_client_and_the_tail_sees_every_source() {
    let addr = start(Some(TOKEN)).await;
    let (mut client, id) = join_shop(addr, "phone-1").await;
    let mut tail = Tail::open(addr, "?room=lobby").await;
    assert_eq!(
        tail.next("ready").await,
        json!({"site": "shop", "room": "lobby"})
    );

    let (status, outcome) = admin(
        addr,
        "POST",
        "/api/v1/admin/sites/shop/publish",
        &json!({"rooms": ["lobby"], "event": "news", "args": [{"a": 1}, "two"], "retain": true}),
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        outcome,
        json!({"matched": 1, "queued": 0, "online": 0, "changed": true})
    );
    assert_eq!(
        client.next_text().await,
        r#"42/shop,["news",{"a":1},"two"]"#
    );
    let seen = tail.next("publish").await;
    assert_eq!(
        (
            &seen["source"],
            &seen["event"],
            &seen["args"],
            &seen["rooms"],
            &seen["retain"]
        ),
        (
            &json!("admin"),
            &json!("news"),
            &json!([{"a": 1}, "two"]),
            &json!(["lobby"]),
            &json!(true)
        )
    );
    assert_eq!(seen["outcome"]["matched"], 1);
    let (status, kept) = admin(
        addr,
        "GET",
        "/api/v1/admin/sites/shop/rooms/lobby/retained",
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&kept["retained"][0]["event"], &kept["retained"][0]["args"]),
        (&json!("news"), &json!([{"a": 1}, "two"])),
        "the console's retain kept the value: {kept}"
    );

    // Any source reaches the tail: the v1 API, and a publish to the socket's id is not the room's.
    let (status, _) = common::api_json(
        addr,
        "POST",
        "/api/v1/sites/shop/publish",
        KEY,
        &json!({"sockets": [id], "event": "direct"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = common::api_json(
        addr,
        "POST",
        "/api/v1/sites/shop/publish",
        KEY,
        &json!({"all": true, "event": "everyone", "args": [3]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(client.next_text().await, r#"42/shop,["direct"]"#);
    assert_eq!(client.next_text().await, r#"42/shop,["everyone",3]"#);
    let seen = tail.next("publish").await;
    assert_eq!(
        (&seen["source"], &seen["event"], &seen["all"]),
        (&json!("api"), &json!("everyone"), &json!(true))
    );

    // A refused publish is tailed with its reason.
    let (status, _) = admin(
        addr,
        "POST",
        "/api/v1/admin/sites/shop/publish",
        &json!({"rooms": ["lobby"], "event": "connect"}),
    )
    .await;
    assert_eq!(status, 400);
    let refused = tail.next("publish").await;
    assert_eq!(
        refused["error"],
        "event name 'connect' is reserved by socket.io"
    );
}

#[tokio::test]
async fn the_console_shows_a_socket_and_moves_and_disconnects_it() {
    let addr = start(Some(TOKEN)).await;
    let (mut client, id) = join_shop(addr, "phone-2").await;
    let socket_path = format!("/api/v1/admin/sites/shop/sockets/{id}");

    let (status, socket) = admin(addr, "GET", &socket_path, &Value::Null).await;
    assert_eq!(status, 200, "{socket}");
    assert_eq!(
        (
            &socket["id"],
            &socket["deviceId"],
            &socket["transport"],
            &socket["eio"]
        ),
        (
            &json!(id),
            &json!("phone-2"),
            &json!("websocket"),
            &json!(4)
        )
    );
    assert_eq!(socket["rooms"], json!([id, "lobby"]));
    let age =
        herald::mailbox::store::now_ms() - socket["connectedAt"].as_u64().expect("connectedAt");
    assert!(age < 10_000, "connected {age} ms ago");

    let rooms_path = format!("{socket_path}/rooms");
    let (status, answer) = admin(addr, "POST", &rooms_path, &json!({"join": ["vip"]})).await;
    assert_eq!(
        (status, answer),
        (200, json!({"rooms": [id, "lobby", "vip"]}))
    );
    let (_, rooms) = admin(addr, "GET", "/api/v1/admin/sites/shop/rooms", &Value::Null).await;
    assert_eq!(
        rooms,
        json!({"rooms": [{"room": "lobby", "members": 1}, {"room": "vip", "members": 1}], "total": 2})
    );
    let (_, listed) = admin(
        addr,
        "GET",
        "/api/v1/admin/sites/shop/sockets?room=vip",
        &Value::Null,
    )
    .await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["sockets"][0]["id"], json!(id));
    assert_eq!(listed["sockets"][0]["transport"], "websocket");
    let (_, none) = admin(
        addr,
        "GET",
        "/api/v1/admin/sites/shop/sockets?q=tablet",
        &Value::Null,
    )
    .await;
    assert_eq!(none["sockets"], json!([]));
    let (_newer_client, newer) = join_shop(addr, "phone-3").await;
    let (_, newest) = admin(
        addr,
        "GET",
        "/api/v1/admin/sites/shop/sockets?limit=1",
        &Value::Null,
    )
    .await;
    assert_eq!(newest["total"], 2, "{newest}");
    assert_eq!(newest["sockets"].as_array().map(Vec::len), Some(1));
    assert_eq!(newest["sockets"][0]["id"], json!(newer), "the newest first");

    let (_, outcome) = common::api_json(
        addr,
        "POST",
        "/api/v1/sites/shop/publish",
        KEY,
        &json!({"rooms": ["vip"], "event": "v"}),
    )
    .await;
    assert_eq!(outcome["matched"], 1, "joined from the console");
    assert_eq!(client.next_text().await, r#"42/shop,["v"]"#);
    let (status, answer) = admin(addr, "POST", &rooms_path, &json!({"leave": ["vip"]})).await;
    assert_eq!((status, answer), (200, json!({"rooms": [id, "lobby"]})));

    let (status, _) = admin(addr, "DELETE", &socket_path, &Value::Null).await;
    assert_eq!(status, 204);
    assert_eq!(client.next_text().await, "41/shop,");
    let (status, answer) = admin(addr, "GET", &socket_path, &Value::Null).await;
    assert_eq!(
        (status, answer),
        (404, json!({"error": format!("unknown socket '{id}'")}))
    );
    let (status, _) = admin(addr, "DELETE", &socket_path, &Value::Null).await;
    assert_eq!(status, 404);

    let (status, samples) = admin(
        addr,
        "GET",
        "/api/v1/admin/sites/shop/connections",
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        samples["transports"],
        json!(["polling", "websocket", "plain-websocket", "sse"])
    );
    let taken = samples["samples"].as_array().expect("samples");
    assert!(taken.len() >= 2, "one at start and one now: {samples}");
    assert_eq!(
        taken[0]["connections"],
        json!([0, 0, 0, 0]),
        "none at start"
    );
    assert_eq!(
        taken.last().map(|s| &s["connections"]),
        Some(&json!([0, 1, 0, 0])),
        "now: phone-3 on a WebSocket"
    );
    assert_eq!(
        taken.last().map(|s| &s["publishes"]),
        Some(&json!(1)),
        "one publish so far"
    );
}

#[tokio::test]
async fn a_users_devices_show_their_pending_entries() {
    let mut config = config(Some(TOKEN));
    // This client never acks a `_batch`. On a loaded machine the replay can read note 1 alone and find note 2
    // on its next read, and a page waits for the previous page's ack (30 s by default) before it is sent.
    config.server.mailbox.batch_ack_timeout_ms = 100;
    let addr = common::start_gateway(config).await.0;
    let rooms = vec!["user_42".to_string()];
    let token =
        herald::auth::jwt::mint(&jwt(), "42", &rooms, Duration::from_secs(600)).expect("minted");
    let (mut client, reply) =
        common::join_namespace(addr, "/inbox", &format!("token={token}&deviceId=tablet")).await;
    assert!(reply.starts_with("40/inbox,"), "{reply}");

    for n in [1, 2] {
        let (status, outcome) = admin(
            addr,
            "POST",
            "/api/v1/admin/sites/inbox/publish",
            &json!({"rooms": ["user_42"], "event": "note", "args": [{"n": n}]}),
        )
        .await;
        assert_eq!(status, 200, "{outcome}");
        assert_eq!(outcome["queued"], 1);
    }
    // The device gets both and does not ack them: they stay pending. They come one by one, in one `_batch` page
    // or in two (when the replay read the mailbox between the two publishes).
    let mut notes = 0;
    while notes < 2 {
        notes += client.next_text().await.matches("\"note\"").count();
    }

    for user in ["42", "user_42"] {
        let path = format!("/api/v1/admin/sites/inbox/users/{user}/devices");
        let (status, answer) = admin(addr, "GET", &path, &Value::Null).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["user"], "user_42");
        let device = &answer["devices"][0];
        assert_eq!(
            (
                &device["deviceId"],
                &device["connected"],
                &device["pending"]
            ),
            (&json!("tablet"), &json!(true), &json!(2))
        );
        let entries: Vec<(&Value, &Value)> = device["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| (&e["event"], &e["args"]))
            .collect();
        assert_eq!(
            entries,
            [
                (&json!("note"), &json!([{"n": 1}])),
                (&json!("note"), &json!([{"n": 2}]))
            ]
        );
    }
    let (status, answer) = admin(
        addr,
        "GET",
        "/api/v1/admin/sites/shop/users/42/devices",
        &Value::Null,
    )
    .await;
    assert_eq!(status, 400, "shop keeps no mailboxes: {answer}");
}

/// Node ids to URLs, filled as the nodes of a test cluster start.
type Registry = Arc<RwLock<HashMap<String, String>>>;

/// One node's view of the registry: every node but itself.
struct View {
    me: String,
    all: Registry,
}

impl Directory for View {
    fn url_of(&self, id: &str) -> Option<String> {
        let all = self.all.read().expect("not poisoned");
        all.get(id).filter(|_| id != self.me).cloned()
    }

    fn peers(&self) -> Vec<(Arc<str>, String)> {
        let all = self.all.read().expect("not poisoned");
        all.iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, url)| (Arc::from(id.as_str()), url.clone()))
            .collect()
    }
}

/// A node of a cluster whose nodes know each other through `registry` (no bus: publishes stay on their node).
async fn start_node(registry: &Registry) -> (SocketAddr, String) {
    let mut config = config(Some(TOKEN));
    config.server.data_dir =
        std::env::temp_dir().join(format!("herald-test-{}", rand::random::<u64>()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let id = new_node_id();
    let url = format!("http://{addr}");
    registry
        .write()
        .expect("not poisoned")
        .insert(id.to_string(), url.clone());
    let view = View {
        me: id.to_string(),
        all: Arc::clone(registry),
    };
    let cluster = Cluster::with_directory(Arc::clone(&id), url, Arc::new(view), 1000);
    let gateway = herald::gateway::build_in(&config, Some(cluster))
        .await
        .expect("the node starts");
    let server = herald::server::Server::new(
        listener,
        gateway.router(),
        herald::lifecycle::serve_config(&config),
    );
    tokio::spawn(server.run());
    (addr, id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_of_one_node_shows_and_acts_on_the_sockets_of_another() {
    let registry = Registry::default();
    let (a, a_id) = start_node(&registry).await;
    let (b, b_id) = start_node(&registry).await;
    let (mut client, id) = join_shop(b, "phone-on-b").await;

    let (_, overview) = admin(a, "GET", "/api/v1/admin/overview", &Value::Null).await;
    let mut nodes: Vec<(&str, bool)> = overview["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| (n["id"].as_str().unwrap_or_default(), n["self"] == true))
        .collect();
    nodes.sort();
    let mut expected = vec![(a_id.as_str(), true), (b_id.as_str(), false)];
    expected.sort();
    assert_eq!(nodes, expected);

    let (status, listed) = admin(a, "GET", "/api/v1/admin/sites/shop/sockets", &Value::Null).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["total"], 1, "{listed}");
    let socket = &listed["sockets"][0];
    assert_eq!(
        (
            &socket["id"],
            &socket["node"],
            &socket["transport"],
            &socket["deviceId"]
        ),
        (
            &json!(id),
            &json!(b_id),
            &json!("websocket"),
            &json!("phone-on-b")
        )
    );
    let socket_path = format!("/api/v1/admin/sites/shop/sockets/{id}");
    let (status, detail) = admin(a, "GET", &socket_path, &Value::Null).await;
    assert_eq!((status, &detail["node"]), (200, &json!(b_id)), "{detail}");

    let (status, answer) = admin(
        a,
        "POST",
        &format!("{socket_path}/rooms"),
        &json!({"join": ["vip"]}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, json!({"rooms": [id, "lobby", "vip"]}))
    );
    let (_, rooms) = admin(a, "GET", "/api/v1/admin/sites/shop/rooms", &Value::Null).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "lobby", "members": 1}, {"room": "vip", "members": 1}])
    );

    let (status, _) = admin(a, "DELETE", &socket_path, &Value::Null).await;
    assert_eq!(status, 204);
    assert_eq!(client.next_text().await, "41/shop,");
    let (status, _) = admin(a, "GET", &socket_path, &Value::Null).await;
    assert_eq!(status, 404);
}
