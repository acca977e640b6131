//! Socket.IO over raw WebSocket and polling: the happy path (event echo, ack, binary attachments), then bad
//! packets (malformed JSON, unknown types, reserved event names, too many or unannounced attachments), each of
//! which closes only the offending session while the server keeps serving everyone else.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use herald::socketio::SocketIoConfig;
use tokio_tungstenite::tungstenite::Message;

fn placeholders(n: usize) -> String {
    (0..n)
        .map(|i| format!(r#"{{"_placeholder":true,"num":{i}}}"#))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn event_echo_and_ack_over_websocket() {
    let server = Server::start(config()).await;
    let mut client = WsClient::connect_sio(server.addr).await;
    assert_eq!(server.connected(), 1);
    assert!(server
        .io
        .namespace("/")
        .unwrap()
        .socket(&client.socket)
        .is_some());

    client.send(r#"42["message",1]"#);
    assert_eq!(client.next_text().await, r#"42["message-back",1]"#);

    client.send(r#"421["message-with-ack",1,"two"]"#);
    assert_eq!(client.next_text().await, r#"431[1,"two"]"#);

    // Binary attachments round-trip as separate frames.
    client.send(&format!(r#"451-["message",{}]"#, placeholders(1)));
    client.send_message(Message::binary(Bytes::from_static(&[1, 2, 3])));
    assert_eq!(
        client.next_text().await,
        format!(r#"451-["message-back",{}]"#, placeholders(1))
    );
    assert_eq!(
        client.next().await,
        Received::Binary(Bytes::from_static(&[1, 2, 3]))
    );

    // A binary ack.
    client.send(&format!(r#"451-7["message-with-ack",{}]"#, placeholders(1)));
    client.send_message(Message::binary(Bytes::from_static(b"\xff\x00")));
    assert_eq!(
        client.next_text().await,
        format!(r#"461-7[{}]"#, placeholders(1))
    );
    assert_eq!(
        client.next().await,
        Received::Binary(Bytes::from_static(b"\xff\x00"))
    );

    // Leaving the namespace is not an error: the session stays.
    client.send("41");
    let mut server = server;
    server
        .expect_departure(&client.socket, "client namespace disconnect", "")
        .await;
    assert_eq!(server.engine.session_count(), 1);
    client.send("40");
    assert!(client.next_text().await.starts_with("40{\"sid\":"));
    client.assert_echo(11).await;
}

#[tokio::test]
async fn malformed_socketio_packets_close_the_session() {
    let mut server = Server::start(config()).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;

    let bad = [
        r#"42["a""#,               // truncated JSON
        "4{}",                     // no packet type
        "49",                      // unknown packet type
        r#"42["disconnect"]"#,     // reserved event name
        r#"42["connect",1]"#,      // reserved event name
        r#"42{}"#,                 // an event that is not an array
        r#"42[]"#,                 // an event without a name
        r#"41{"x":1}"#,            // DISCONNECT with data
        r#"44{"message":"nope"}"#, // CONNECT_ERROR is server-only
        r#"42abc["message"]"#,     // garbage before the data
        r#"45x-["message"]"#,      // attachment count that is not a number
    ];
    for packet in bad {
        let mut client = WsClient::connect_sio(server.addr).await;
        client.send(packet);
        client.assert_closed_by_server().await;
        server
            .expect_departure(&client.socket, "parse error", &format!("packet {packet:?}"))
            .await;
        bystander.assert_echo(1).await;
    }

    // Over polling the POST itself is fine at the Engine.IO level; the session is then closed.
    let (sid, _) = server.handshake().await;
    let posted = server.post(&sid, b"40").await;
    assert_eq!(posted.status, 200);
    assert!(server.get(&sid).await.text().starts_with("40{\"sid\":"));
    let posted = server.post(&sid, br#"42["a""#).await;
    assert_eq!((posted.status, posted.text().as_str()), (200, "ok"));
    server.assert_session_gone(&sid).await;
    assert_eq!(server.next_departure().await.reason, "parse error");

    assert_eq!(server.connected(), 1);
    bystander.assert_echo(2).await;
    server.wait_sessions(1).await;
    server.assert_alive().await;
}

#[tokio::test]
async fn too_many_attachments_close_the_session() {
    let mut server = Server::start_with(
        config(),
        SocketIoConfig {
            max_attachments: 10,
            ..SocketIoConfig::default()
        },
    )
    .await;
    let mut bystander = WsClient::connect_sio(server.addr).await;

    // Ten is the limit and still fine.
    let mut client = WsClient::connect_sio(server.addr).await;
    client.send(&format!(r#"4510-["message",{}]"#, placeholders(10)));
    for i in 0..10u8 {
        client.send_message(Message::binary(vec![i]));
    }
    assert_eq!(
        client.next_text().await,
        format!(r#"4510-["message-back",{}]"#, placeholders(10))
    );
    for i in 0..10u8 {
        assert_eq!(client.next().await, Received::Binary(Bytes::from(vec![i])));
    }

    // Eleven is one too many.
    client.send(&format!(r#"4511-["message",{}]"#, placeholders(11)));
    client.assert_closed_by_server().await;
    server
        .expect_departure(&client.socket, "parse error", "")
        .await;

    // So is an attachment count far beyond any limit.
    let mut client = WsClient::connect_sio(server.addr).await;
    client.send(r#"45999999999-["message"]"#);
    client.assert_closed_by_server().await;
    assert_eq!(server.next_departure().await.reason, "parse error");

    // And a placeholder naming an attachment that is not announced.
    let mut client = WsClient::connect_sio(server.addr).await;
    client.send(r#"451-["message",{"_placeholder":true,"num":1}]"#);
    client.assert_closed_by_server().await;
    assert_eq!(server.next_departure().await.reason, "parse error");

    bystander.assert_echo(3).await;
    server.wait_sessions(1).await;
    server.assert_alive().await;
}

#[tokio::test]
async fn unannounced_binary_frame_closes_the_session() {
    let mut server = Server::start(config()).await;
    let mut bystander = WsClient::connect_sio(server.addr).await;

    let mut client = WsClient::connect_sio(server.addr).await;
    client.send_message(Message::binary(Bytes::from_static(b"\x01\x02")));
    client.assert_closed_by_server().await;
    server
        .expect_departure(&client.socket, "parse error", "")
        .await;

    // One attachment more than announced is unannounced too.
    let mut client = WsClient::connect_sio(server.addr).await;
    client.send(&format!(r#"451-["message",{}]"#, placeholders(1)));
    client.send_message(Message::binary(Bytes::from_static(b"\x01")));
    assert_eq!(
        client.next_text().await,
        format!(r#"451-["message-back",{}]"#, placeholders(1))
    );
    assert_eq!(
        client.next().await,
        Received::Binary(Bytes::from_static(b"\x01"))
    );
    client.send_message(Message::binary(Bytes::from_static(b"\x02")));
    client.assert_closed_by_server().await;
    assert_eq!(server.next_departure().await.reason, "parse error");

    // A text packet while attachments are still expected.
    let mut client = WsClient::connect_sio(server.addr).await;
    client.send(&format!(r#"452-["message",{}]"#, placeholders(2)));
    client.send_message(Message::binary(Bytes::from_static(b"\x01")));
    client.send(r#"42["message",1]"#);
    client.assert_closed_by_server().await;
    assert_eq!(server.next_departure().await.reason, "parse error");

    bystander.assert_echo(4).await;
    server.wait_sessions(1).await;
    server.assert_alive().await;
}
