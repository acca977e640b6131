//! Engine.IO bad input over real sockets: malformed packets, oversize payloads, unknown sessions, transports and
//! versions, wrong and overlapping requests, and missing heartbeats each get the protocol's exact answer, close
//! only the offending session, and leave the server serving everyone else.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A polling session joined to namespace `/`: returns its sid and socket id.
async fn polling_sio(server: &Server) -> (String, String) {
    let (sid, _) = server.handshake().await;
    let posted = server.post(&sid, b"40").await;
    assert_eq!((posted.status, posted.text().as_str()), (200, "ok"));
    let reply = server.get(&sid).await;
    assert_eq!(reply.status, 200);
    let body = reply.text();
    let connect: Value = serde_json::from_str(
        body.strip_prefix("40")
            .unwrap_or_else(|| panic!("not a CONNECT: {body:?}")),
    )
    .unwrap();
    (sid, connect["sid"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn malformed_polling_packet_is_a_bad_request_and_closes_the_session() {
    let mut server = Server::start(config()).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;

    for body in ["abc", "9"] {
        let (sid, socket) = polling_sio(&server).await;
        assert_eq!(server.connected(), 2);
        let response = server.post(&sid, body.as_bytes()).await;
        assert_eq!(response.status, 400, "POST {body:?}");
        assert_eq!(response.text(), BAD_REQUEST);
        assert_eq!(response.header("content-type"), Some("application/json"));
        server.assert_session_gone(&sid).await;
        let departure = server.next_departure().await;
        assert_eq!(
            departure,
            Departure {
                socket,
                reason: "parse error"
            }
        );
        assert_eq!(server.connected(), 1);
    }

    bystander.assert_echo(1).await;
    server.wait_sessions(1).await;
    server.assert_alive().await;
}

#[tokio::test]
async fn malformed_websocket_packet_closes_the_socket() {
    let mut server = Server::start(config()).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;

    for frame in ["9", ""] {
        let mut client = WsClient::connect_sio(server.addr).await;
        client.send(frame);
        client.assert_closed_by_server().await;
        server
            .expect_departure(&client.socket, "parse error", &format!("frame {frame:?}"))
            .await;
    }

    bystander.assert_echo(2).await;
    assert_eq!(server.connected(), 1);
    server.wait_sessions(1).await;
    server.assert_alive().await;
}

#[tokio::test]
async fn oversize_polling_post_is_refused_with_413_and_closes_the_session() {
    let mut server = Server::start(config()).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;
    let (sid, socket) = polling_sio(&server).await;

    // One byte over: a message packet whose total length is max_payload + 1.
    let body = format!(r#"42["message","{}"]"#, "x".repeat(1001 - 16));
    assert_eq!(body.len(), 1001);
    let response = server.post(&sid, body.as_bytes()).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.text(), "payload too large");
    server.assert_session_gone(&sid).await;
    server
        .expect_departure(&socket, "payload too large", "")
        .await;

    // Exactly max_payload is fine.
    let (sid, _) = polling_sio(&server).await;
    let body = format!(r#"42["message","{}"]"#, "x".repeat(1000 - 16));
    assert_eq!(body.len(), 1000);
    let response = server.post(&sid, body.as_bytes()).await;
    assert_eq!((response.status, response.text().as_str()), (200, "ok"));
    let echo = server.get(&sid).await;
    assert_eq!(
        echo.text(),
        format!(r#"42["message-back","{}"]"#, "x".repeat(1000 - 16))
    );

    bystander.assert_echo(3).await;
    server.assert_alive().await;
}

#[tokio::test]
async fn oversize_websocket_message_closes_the_connection() {
    let mut server = Server::start(config()).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;

    // Exactly max_payload is fine.
    let mut client = WsClient::connect_sio(server.addr).await;
    let fits = format!(r#"42["message","{}"]"#, "x".repeat(1000 - 16));
    assert_eq!(fits.len(), 1000);
    client.send(&fits);
    assert_eq!(
        client.next_text().await,
        format!(r#"42["message-back","{}"]"#, "x".repeat(1000 - 16))
    );

    let over = format!(r#"42["message","{}"]"#, "x".repeat(1001 - 16));
    assert_eq!(over.len(), 1001);
    client.send(&over);
    // The whole frame arrives in one read, so the server can still say goodbye: `1`, then a close frame.
    client.assert_closed_by_server().await;
    server
        .expect_departure(&client.socket, "payload too large", "")
        .await;

    bystander.assert_echo(4).await;
    server.wait_sessions(1).await;
    server.assert_alive().await;
}

#[tokio::test]
async fn unknown_sid_transport_version_and_handshake_method_get_their_error_codes() {
    let server = Server::start(config()).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;
    let (live_sid, _) = server.handshake().await;

    let get = server.get("no-such-sid").await;
    assert_eq!((get.status, get.text().as_str()), (400, UNKNOWN_SID));
    assert_eq!(get.header("content-type"), Some("application/json"));
    let post = server.post("no-such-sid", b"40").await;
    assert_eq!((post.status, post.text().as_str()), (400, UNKNOWN_SID));

    let websocket_upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let ws = http(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=websocket&sid=no-such-sid",
        &websocket_upgrade,
        b"",
    )
    .await;
    assert_eq!((ws.status, ws.text().as_str()), (400, UNKNOWN_SID));

    let cases: &[(&str, &str, &str)] = &[
        (
            "GET",
            "/socket.io/?EIO=4&transport=carrier-pigeon",
            UNKNOWN_TRANSPORT,
        ),
        ("GET", "/socket.io/?EIO=4", UNKNOWN_TRANSPORT),
        (
            "GET",
            "/socket.io/?EIO=5&transport=polling",
            UNSUPPORTED_VERSION,
        ),
        ("GET", "/socket.io/?transport=polling", UNSUPPORTED_VERSION),
        (
            "GET",
            "/socket.io/?EIO=&transport=polling",
            UNSUPPORTED_VERSION,
        ),
        (
            "POST",
            "/socket.io/?EIO=4&transport=polling",
            BAD_HANDSHAKE_METHOD,
        ),
    ];
    for (method, target, expected) in cases {
        let response = http(server.addr, method, target, &[], b"").await;
        assert_eq!(
            (response.status, response.text().as_str()),
            (400, *expected),
            "{method} {target}"
        );
    }
    // A WebSocket handshake with a version we do not speak is refused before the upgrade.
    let ws = http(
        server.addr,
        "GET",
        "/socket.io/?EIO=5&transport=websocket",
        &websocket_upgrade,
        b"",
    )
    .await;
    assert_eq!((ws.status, ws.text().as_str()), (400, UNSUPPORTED_VERSION));

    // None of it touched the live sessions.
    assert_eq!(server.engine.session_count(), 2);
    let posted = server.post(&live_sid, b"40").await;
    assert_eq!((posted.status, posted.text().as_str()), (200, "ok"));
    assert!(server
        .get(&live_sid)
        .await
        .text()
        .starts_with("40{\"sid\":"));
    bystander.assert_echo(5).await;
    server.assert_alive().await;
}

#[tokio::test]
async fn polling_request_on_an_upgraded_session_is_a_bad_request() {
    let server = Server::start(config()).await;
    let (sid, _) = server.handshake().await;
    let mut ws = ws_open(
        server.addr,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        None,
    )
    .await;
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(ws_next_text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.unwrap();
    // Once the namespace answers over the WebSocket, the upgrade is complete.
    ws.send(Message::text("40")).await.unwrap();
    assert!(ws_next_text(&mut ws).await.starts_with("40{\"sid\":"));

    let get = server.get(&sid).await;
    assert_eq!((get.status, get.text().as_str()), (400, BAD_REQUEST));
    let post = server.post(&sid, br#"42["message",1]"#).await;
    assert_eq!((post.status, post.text().as_str()), (400, BAD_REQUEST));

    // The session itself is fine and still on its WebSocket.
    let mut client = WsClient::pump(ws);
    client.assert_echo(6).await;
    assert_eq!(server.engine.session_count(), 1);
    assert_eq!(server.connected(), 1);
    server.assert_alive().await;
}

/// Two GETs at once: nothing is queued, so whichever claims the session first waits and the other overlaps it.
/// The overlap is refused and the waiting one gets the close packet.
async fn assert_overlapping_gets_close(server: &Server, sid: &str) {
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (first, second) = tokio::join!(
        http(server.addr, "GET", &target, &[], b""),
        http(server.addr, "GET", &target, &[], b""),
    );
    let mut answers = [(first.status, first.text()), (second.status, second.text())];
    answers.sort();
    assert_eq!(
        answers,
        [(200, "1".to_string()), (400, BAD_REQUEST.to_string())]
    );
}

#[tokio::test]
async fn second_concurrent_get_is_a_bad_request_and_closes_the_session() {
    let mut server = Server::start(config()).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;
    let (sid, _) = server.handshake().await;
    assert_overlapping_gets_close(&server, &sid).await;
    server.assert_session_gone(&sid).await;

    // The same for a joined session, which the namespace then loses.
    let (sid, socket) = polling_sio(&server).await;
    assert_overlapping_gets_close(&server, &sid).await;
    server
        .expect_departure(&socket, "request overlap", "")
        .await;

    bystander.assert_echo(7).await;
    server.wait_sessions(1).await;
    server.assert_alive().await;
}

#[tokio::test]
async fn polling_session_that_never_answers_pings_times_out() {
    let (interval, ping_timeout) = (Duration::from_millis(300), Duration::from_millis(200));
    let mut server = Server::start(fast_heartbeat(interval, ping_timeout)).await;
    // Answers every ping, so it must outlive the silent one.
    let mut bystander = WsClient::connect_sio(server.addr).await;

    let started = Instant::now();
    let (sid, socket) = polling_sio(&server).await;
    let ping = server.get(&sid).await;
    assert_eq!((ping.status, ping.text().as_str()), (200, "2"));
    assert!(
        started.elapsed() >= interval,
        "pinged after {:?}",
        started.elapsed()
    );
    // The next GET waits and receives the close packet `1` when the timeout hits (or, should it arrive after
    // the timeout, finds the session gone); either way no earlier than interval + timeout.
    server.assert_session_gone(&sid).await;
    let closed_after = started.elapsed();
    assert!(
        closed_after >= interval + ping_timeout,
        "closed after {closed_after:?}"
    );
    assert!(
        closed_after < interval + ping_timeout + Duration::from_secs(2),
        "closed after {closed_after:?}"
    );
    server.expect_departure(&socket, "ping timeout", "").await;

    // The bystander, which answers pings, lived through the same heartbeats.
    bystander.assert_echo(8).await;
    assert_eq!(server.connected(), 1);
    server.assert_alive().await;
}

#[tokio::test]
async fn polling_session_that_answers_pings_stays_open() {
    let (interval, ping_timeout) = (Duration::from_millis(300), Duration::from_millis(200));
    let server = Server::start(fast_heartbeat(interval, ping_timeout)).await;
    let (sid, _) = polling_sio(&server).await;
    let started = Instant::now();
    for _ in 0..3 {
        let ping = server.get(&sid).await;
        assert_eq!((ping.status, ping.text().as_str()), (200, "2"));
        let pong = server.post(&sid, b"3").await;
        assert_eq!((pong.status, pong.text().as_str()), (200, "ok"));
    }
    assert!(started.elapsed() >= 2 * interval);
    assert_eq!(server.connected(), 1);
    let echo = server.post(&sid, br#"42["message",9]"#).await;
    assert_eq!(echo.status, 200);
    assert_eq!(server.get(&sid).await.text(), r#"42["message-back",9]"#);
}

#[tokio::test]
async fn websocket_session_that_never_answers_pings_times_out() {
    let (interval, ping_timeout) = (Duration::from_millis(300), Duration::from_millis(200));
    let mut server = Server::start(fast_heartbeat(interval, ping_timeout)).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;

    let started = Instant::now();
    let mut ws = ws_open(server.addr, "/socket.io/?EIO=4&transport=websocket", None).await;
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().starts_with("0{\"sid\":"));
    ws.send(Message::text("40")).await.unwrap();
    let connect = ws.next().await.unwrap().unwrap();
    let connect: Value =
        serde_json::from_str(connect.to_text().unwrap().strip_prefix("40").unwrap()).unwrap();
    let mut texts = Vec::new();
    let mut close_frame = false;
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Message::Text(text) => texts.push(text.as_str().to_string()),
                Message::Close(_) => close_frame = true,
                _ => {}
            }
        }
    })
    .await
    .expect("the silent WebSocket was not closed in time");
    let closed_after = started.elapsed();
    assert_eq!(texts, ["2", "1"]);
    assert!(close_frame);
    assert!(closed_after >= interval + ping_timeout, "{closed_after:?}");
    server
        .expect_departure(connect["sid"].as_str().unwrap(), "ping timeout", "")
        .await;

    bystander.assert_echo(10).await;
    server.wait_sessions(1).await;
    server.assert_alive().await;
}
