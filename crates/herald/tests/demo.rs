//! The `herald` binary's embedded default: every client is in the `public` room, `publish` reaches all of them.
#![allow(clippy::unwrap_used)]

mod common;

use common::{http, WsClient};

#[tokio::test]
async fn publish_reaches_every_client_of_the_public_room() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, herald::demo::router()).await });

    let health = http(addr, "GET", "/healthcheck", &[], b"").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));

    let mut alice = WsClient::connect_sio(addr).await;
    let mut bob = WsClient::connect_sio(addr).await;
    alice.send(r#"421["publish","news",{"hello":"world"}]"#);

    assert_eq!(bob.next_text().await, r#"42["news",{"hello":"world"}]"#);
    // The publisher is in the room too, and its ack counts both recipients.
    let mut to_alice = vec![alice.next_text().await, alice.next_text().await];
    to_alice.sort();
    assert_eq!(
        to_alice,
        [r#"42["news",{"hello":"world"}]"#, r#"431[{"matched":2}]"#]
    );
}
