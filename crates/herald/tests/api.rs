//! The publish API end to end: a gateway built from a Config, real WebSocket clients in a site's rooms, and
//! HTTP requests to `/send` and `/api/v1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{http, WsClient};
use herald::auth::{AuthConfig, WebhookConfig};
use herald::config::{Config, SiteConfig};
use herald::secret::Secret;
use serde_json::{json, Value};

const KEY: &str = "shop-key-0123456789";

fn shop(auth: AuthConfig) -> SiteConfig {
    SiteConfig {
        name: "shop".into(),
        api_keys: vec![Secret::new(KEY)],
        auth,
        user_room_prefix: None,
        public_channel: Some("lobby".into()),
        update_user_url: None,
        device_ttl_secs: 60,
        max_connections: None,
        // These tests read exact frames: no recovery offsets.
        recovery_window_ms: 0,
        ..SiteConfig::new(String::new())
    }
}

async fn start(sites: Vec<SiteConfig>) -> SocketAddr {
    let config = Config {
        sites,
        ..Config::default()
    };
    common::start_gateway(config).await.0
}

/// A client joined to namespace `/shop` with `query` on its handshake; returns it and its socket id.
async fn join_shop(addr: SocketAddr, query: &str) -> (WsClient, String) {
    let (client, reply) = common::join_namespace(addr, "/shop", query).await;
    let connect: Value = serde_json::from_str(
        reply
            .strip_prefix("40/shop,")
            .unwrap_or_else(|| panic!("{reply}")),
    )
    .unwrap();
    let id = connect["sid"].as_str().unwrap().to_string();
    (client, id)
}

/// A socket listing without each socket's `node` (this node's id, random), which is checked instead.
fn without_node(mut listing: Value) -> Value {
    for socket in listing["sockets"].as_array_mut().unwrap() {
        let node = socket.as_object_mut().unwrap().remove("node").unwrap();
        assert_eq!(node.as_str().unwrap().len(), herald::cluster::NODE_ID_LEN);
    }
    listing
}

async fn api(addr: SocketAddr, method: &str, path: &str, key: &str, body: &Value) -> (u16, Value) {
    common::api_json(addr, method, path, key, body).await
}

#[tokio::test]
async fn crossroads_send_with_json_and_form_bodies() {
    let addr = start(vec![shop(AuthConfig::Public)]).await;
    let (mut client, _) = join_shop(addr, "deviceId=d1").await;

    let json_body = br#"{"rooms":["lobby"],"event":"news","args":[{"n":1}]}"#;
    let ok = http(
        addr,
        "POST",
        &format!("/send?site=shop&apiKey={KEY}"),
        &[("Content-Type", "application/json")],
        json_body,
    )
    .await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "OK"));
    assert_eq!(client.next_text().await, r#"42/shop,["news",{"n":1}]"#);

    let form = http(
        addr,
        "POST",
        &format!("/send?site=shop&apiKey={KEY}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"rooms[]=lobby&event=note&args=hi",
    )
    .await;
    assert_eq!(form.status, 200);
    assert_eq!(client.next_text().await, r#"42/shop,["note","hi"]"#);

    let missing = http(addr, "POST", "/send?site=shop", &[], json_body).await;
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (
            400,
            r#"{"error":"Missing query param 'site' or 'apiKey'."}"#
        )
    );
    for query in ["site=shop&apiKey=wrong", "site=nope&apiKey=x"] {
        let refused = http(addr, "POST", &format!("/send?{query}"), &[], json_body).await;
        assert_eq!(
            (refused.status, refused.text().as_str()),
            (401, r#"{"error":"ApiKey invalid."}"#),
            "{query}"
        );
    }
}

#[tokio::test]
async fn v1_publish_targets_rooms_all_sockets_and_except() {
    let addr = start(vec![shop(AuthConfig::Public)]).await;
    let (mut a, a_id) = join_shop(addr, "deviceId=a").await;
    let (mut b, _) = join_shop(addr, "deviceId=b").await;
    let publish = "/api/v1/sites/shop/publish";

    let (status, answer) = api(
        addr,
        "POST",
        publish,
        KEY,
        &json!({"all": true, "event": "e", "args": [1]}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, json!({"matched": 2, "queued": 0, "online": 0}))
    );
    assert_eq!(a.next_text().await, r#"42/shop,["e",1]"#);
    assert_eq!(b.next_text().await, r#"42/shop,["e",1]"#);

    let (_, answer) = api(
        addr,
        "POST",
        publish,
        KEY,
        &json!({"rooms": ["lobby"], "except": [a_id.clone()], "event": "e", "args": [2]}),
    )
    .await;
    assert_eq!(answer, json!({"matched": 1, "queued": 0, "online": 0}));
    assert_eq!(b.next_text().await, r#"42/shop,["e",2]"#);

    let (_, answer) = api(
        addr,
        "POST",
        publish,
        KEY,
        &json!({"sockets": [a_id], "event": "e", "args": [3]}),
    )
    .await;
    assert_eq!(answer, json!({"matched": 1, "queued": 0, "online": 0}));
    assert_eq!(a.next_text().await, r#"42/shop,["e",3]"#);

    let (status, answer) = api(
        addr,
        "POST",
        publish,
        "wrong",
        &json!({"all": true, "event": "e"}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (401, json!({"error": "invalid API key for site 'shop'"}))
    );
    let (status, answer) = api(
        addr,
        "POST",
        "/api/v1/sites/nope/publish",
        KEY,
        &json!({"all": true, "event": "e"}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (401, json!({"error": "invalid API key for site 'nope'"}))
    );
    let (status, answer) = api(addr, "POST", publish, KEY, &json!({"event": "e"})).await;
    assert_eq!(
        (status, answer),
        (
            400,
            json!({"error": "say who receives it: rooms, sockets or all"})
        )
    );

    let big = json!({"all": true, "event": "e", "args": ["x".repeat(2_100_000)]});
    let (status, answer) = api(addr, "POST", publish, KEY, &big).await;
    assert_eq!(
        (status, answer),
        (413, json!({"error": "payload is 2.1 MB, limit is 1 MB"}))
    );

    let (status, answer) = api(
        addr,
        "POST",
        "/api/v1/sites/shop/batch",
        KEY,
        &json!({"messages": [
        {"rooms": ["lobby"], "event": "x", "args": []}, {"all": true, "event": "y"}]}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"results": [{"matched": 2, "queued": 0, "online": 0}, {"matched": 2, "queued": 0, "online": 0}]})
        )
    );
}

#[tokio::test]
async fn v1_lists_disconnects_and_moves_sockets_between_rooms() {
    let addr = start(vec![shop(AuthConfig::Public)]).await;
    let (mut a, a_id) = join_shop(addr, "deviceId=phone-1").await;

    let (status, answer) = api(
        addr,
        "GET",
        "/api/v1/sites/shop/sockets?room=lobby",
        KEY,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        without_node(answer),
        json!({"sockets": [{"id": a_id, "user": null, "deviceId": "phone-1", "rooms": [a_id, "lobby"]}]})
    );

    let rooms_path = format!("/api/v1/sites/shop/sockets/{a_id}/rooms");
    let (status, answer) = api(
        addr,
        "POST",
        &rooms_path,
        KEY,
        &json!({"join": ["vip"], "leave": ["lobby"]}),
    )
    .await;
    assert_eq!((status, answer), (200, json!({"rooms": [a_id, "vip"]})));
    let (_, answer) = api(
        addr,
        "POST",
        "/api/v1/sites/shop/publish",
        KEY,
        &json!({"rooms": ["vip"], "event": "v"}),
    )
    .await;
    assert_eq!(answer, json!({"matched": 1, "queued": 0, "online": 0}));
    assert_eq!(a.next_text().await, r#"42/shop,["v"]"#);

    let (status, _) = api(
        addr,
        "DELETE",
        &format!("/api/v1/sites/shop/sockets/{a_id}"),
        KEY,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(a.next_text().await, "41/shop,");
    let (status, answer) = api(
        addr,
        "DELETE",
        &format!("/api/v1/sites/shop/sockets/{a_id}"),
        KEY,
        &Value::Null,
    )
    .await;
    assert_eq!(
        (status, answer),
        (404, json!({"error": format!("unknown socket '{a_id}'")}))
    );

    let openapi = http(addr, "GET", "/api/v1/openapi.json", &[], b"").await;
    let doc: Value = serde_json::from_str(&openapi.text()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/sites/{site}/publish"]["post"].is_object());
}

#[tokio::test]
async fn webhook_site_joins_the_rooms_the_backend_names() {
    // The backend's auth endpoint: token "good" belongs to user 7 in rooms user_7 and team_a.
    let auth_app = axum::Router::new().route(
        "/auth",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                Some("Bearer good") => (axum::http::StatusCode::OK, r#"["user_7","team_a"]"#),
                _ => (axum::http::StatusCode::UNAUTHORIZED, "no"),
            }
        }),
    );
    let auth_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth_addr = auth_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(auth_listener, auth_app).await });

    let mut site = shop(AuthConfig::Webhook(WebhookConfig {
        url: format!("http://{auth_addr}/auth"),
        scheme: "Bearer".into(),
        forward_cookie: false,
        timeout_ms: 2000,
    }));
    site.user_room_prefix = Some("user_".into());
    let addr = start(vec![site]).await;

    let (_client, id) = join_shop(addr, "token=good&deviceId=tab").await;
    let (_, answer) = api(addr, "GET", "/api/v1/sites/shop/sockets", KEY, &Value::Null).await;
    assert_eq!(
        without_node(answer),
        json!({"sockets": [{"id": id, "user": "7", "deviceId": "tab", "rooms": [id, "user_7", "team_a", "lobby"]}]})
    );

    let ws = common::ws_open(
        addr,
        "/socket.io/?EIO=4&transport=websocket&token=bad",
        None,
    )
    .await;
    let mut refused = WsClient::pump(ws);
    assert!(refused.next_text().await.starts_with("0{"));
    refused.send("40/shop,");
    assert_eq!(
        refused.next_text().await,
        r#"44/shop,{"message":"the token was refused"}"#
    );
}

#[tokio::test]
async fn a_site_refuses_clients_past_its_connection_limit() {
    let mut site = shop(AuthConfig::Public);
    site.max_connections = Some(1);
    let addr = start(vec![site]).await;
    let (_first, _) = join_shop(addr, "deviceId=one").await;

    let ws = common::ws_open(addr, "/socket.io/?EIO=4&transport=websocket", None).await;
    let mut second = WsClient::pump(ws);
    assert!(second.next_text().await.starts_with("0{"));
    second.send("40/shop,");
    assert_eq!(
        second.next_text().await,
        r#"44/shop,{"message":"site 'shop' is at its connection limit"}"#
    );
}
