//! The engine's HTTP policy: the configured path, the Origin allow-list and CORS answers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{config, http, Server};

const FORBIDDEN: &str = r#"{"code":4,"message":"Forbidden"}"#;

#[tokio::test]
async fn origin_allow_list_and_cors() {
    let mut engine = config();
    engine.allowed_origins = Some(vec!["https://app.example".into()]);
    let server = Server::start(engine).await;
    let handshake = "/socket.io/?EIO=4&transport=polling";

    let refused = http(
        server.addr,
        "GET",
        handshake,
        &[("Origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!((refused.status, refused.text().as_str()), (403, FORBIDDEN));

    let allowed = http(
        server.addr,
        "GET",
        handshake,
        &[("Origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert!(
        allowed.text().starts_with("0{\"sid\":"),
        "{}",
        allowed.text()
    );
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        allowed.header("access-control-allow-credentials"),
        Some("true")
    );

    // Clients that are not browsers send no Origin and are not subject to it.
    let no_origin = http(server.addr, "GET", handshake, &[], b"").await;
    assert_eq!(no_origin.status, 200);
    assert_eq!(no_origin.header("access-control-allow-origin"), None);

    let preflight = http(
        server.addr,
        "OPTIONS",
        handshake,
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET, POST, OPTIONS")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("content-type")
    );

    // The same rule holds for a WebSocket upgrade.
    let ws = http(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=websocket",
        &[
            ("Origin", "https://evil.example"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    )
    .await;
    assert_eq!((ws.status, ws.text().as_str()), (403, FORBIDDEN));
}

#[tokio::test]
async fn the_engine_answers_only_on_its_configured_path() {
    let mut engine = config();
    engine.path = "/realtime/".into();
    let server = Server::start(engine).await;

    let default_path = http(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        b"",
    )
    .await;
    assert_eq!(default_path.status, 404);
    for target in [
        "/realtime/?EIO=4&transport=polling",
        "/realtime?EIO=4&transport=polling",
    ] {
        let response = http(server.addr, "GET", target, &[], b"").await;
        assert_eq!(response.status, 200, "{target}");
        assert!(
            response.text().starts_with("0{\"sid\":"),
            "{target}: {}",
            response.text()
        );
    }
}
