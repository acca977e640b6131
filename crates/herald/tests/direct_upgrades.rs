//! New WebSocket sessions that herald's server answers before hyper (`server/direct.rs`), over raw sockets: the
//! 101 and the open packet leave together, a frame sent right behind the request is read, a request that comes in
//! pieces still upgrades (through hyper), and a refusal carries the site's CORS answer and closes the connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn upgrade(origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: herald\r\n{origin}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A client's text frame, masked with a zero key (the payload stays as it is).
fn client_text(payload: &str) -> Vec<u8> {
    let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// Reads until `needle` has come; returns all that came.
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let read = async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&seen)));
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_connect_sent_right_behind_the_request_is_answered() {
    let server = Server::start(config()).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let mut request = upgrade(None).into_bytes();
    request.extend(client_text("40"));
    client.write_all(&request).await.unwrap();
    let seen = read_until(&mut client, "40{\"sid\"").await;
    assert!(
        seen.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{seen:?}"
    );
    assert!(seen.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(seen.contains("0{\"sid\""), "the open packet: {seen:?}");
    server.assert_alive().await;
}

#[tokio::test]
async fn a_request_that_comes_in_pieces_still_upgrades() {
    let server = Server::start(config()).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let request = upgrade(None);
    let (first, rest) = request.split_at(40);
    client.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(rest.as_bytes()).await.unwrap();
    let seen = read_until(&mut client, "0{\"sid\"").await;
    assert!(
        seen.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{seen:?}"
    );
    client.write_all(&client_text("40")).await.unwrap();
    read_until(&mut client, "40{\"sid\"").await;
}

#[tokio::test]
async fn an_allowed_origin_gets_its_cors_answer_and_another_a_403_and_a_close() {
    let mut config = config();
    config.allowed_origins = Some(vec!["https://app.example".into()]);
    let server = Server::start(config).await;

    let mut allowed = TcpStream::connect(server.addr).await.unwrap();
    allowed
        .write_all(upgrade(Some("https://app.example")).as_bytes())
        .await
        .unwrap();
    let seen = read_until(&mut allowed, "0{\"sid\"").await;
    assert!(seen.starts_with("HTTP/1.1 101 "), "{seen:?}");
    assert!(seen.contains("access-control-allow-origin: https://app.example\r\n"));
    assert!(seen.contains("access-control-allow-credentials: true\r\n"));

    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    refused
        .write_all(upgrade(Some("https://evil.example")).as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    timeout(Duration::from_secs(5), refused.read_to_string(&mut answer))
        .await
        .expect("the connection was not closed")
        .unwrap();
    let body = "{\"code\":4,\"message\":\"Forbidden\"}";
    assert!(
        answer.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("content-type: application/json\r\n"));
    assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
    assert!(answer.ends_with(&format!("\r\n\r\n{body}")), "{answer:?}");
    assert_eq!(server.engine.session_count(), 1, "only the allowed one");
}
