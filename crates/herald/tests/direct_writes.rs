//! Broadcasts written straight to idle WebSockets (`engine/wire.rs`) keep the stream whole and in order: when a
//! client reads slowly (partial writes, the rest spilled, the outbox taking over), when the client pings in the
//! middle of them (tungstenite's pongs are writes of the task), and mixed with frames the task writes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use herald::engine::EngineConfig;
use herald::socketio::{Socket, Target};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn roomy() -> EngineConfig {
    EngineConfig {
        // Slow heartbeats: only the broadcasts are on the wire.
        ping_interval: Duration::from_secs(20),
        ping_timeout: Duration::from_secs(20),
        outbox_frames: 4096,
        outbox_bytes: 64 << 20,
        ..config()
    }
}

/// A client with a small receive buffer, so that writes to it soon find its socket full, and its socket.
async fn slow_client(server: &Server) -> (Ws, Arc<Socket>) {
    let (ws, _sid, socket_id) = ws_open_sio(server.addr, Some(16 << 10)).await;
    let socket = server
        .io
        .namespace("/")
        .unwrap()
        .socket(&socket_id)
        .unwrap();
    (ws, socket)
}

fn expected(i: usize, chunk: &str) -> String {
    format!(r#"42["seq",{i},"{chunk}"]"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_late_gets_every_broadcast_whole_and_in_order() {
    let server = Server::start(roomy()).await;
    // A small receive buffer: the direct writes soon find the socket full, write part of a frame and spill.
    let (mut ws, _sid, _socket) = ws_open_sio(server.addr, Some(16 << 10)).await;
    let namespace = server.io.namespace("/").unwrap();
    let chunk = "y".repeat(8 << 10);
    for i in 0..300 {
        let delivered = namespace
            .broadcast(&Target::default(), "seq", &[json!(i), json!(chunk)], &[])
            .unwrap();
        assert_eq!(delivered, 1, "broadcast {i}");
    }
    for i in 0..300 {
        assert_eq!(
            ws_next_text(&mut ws).await,
            expected(i, &chunk),
            "message {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_emits_between_direct_writes_leave_the_stream_whole() {
    let server = Server::start(roomy()).await;
    let (mut ws, socket) = slow_client(&server).await;
    let namespace = server.io.namespace("/").unwrap();
    let chunk = "z".repeat(3000);
    let mut want = Vec::new();
    for i in 0..400 {
        if i % 7 == 0 {
            // A ping the server's task answers with a pong, while broadcasts may be half written.
            ws.send(Message::Ping(vec![i as u8].into())).await.unwrap();
        }
        if i % 5 == 0 {
            // An emit to the one socket goes through the outbox, the task's write.
            socket.emit("one", &[json!(i)]).unwrap();
            want.push(format!(r#"42["one",{i}]"#));
        }
        namespace
            .broadcast(&Target::default(), "seq", &[json!(i), json!(chunk)], &[])
            .unwrap();
        want.push(expected(i, &chunk));
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // One sender, so one order: an emit queued in the outbox holds the next broadcast back behind it. A corrupt
    // stream would fail to parse in the client.
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(ws_next_text(&mut ws).await);
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_queued_while_a_write_waits_for_the_client_leaves_once_it_reads() {
    let server = Server::start(roomy()).await;
    let (mut ws, socket) = slow_client(&server).await;
    // Far more than the socket buffers hold: the task's write of them waits for the client.
    let chunk = "w".repeat(64 << 10);
    for i in 0..64 {
        socket.emit("big", &[json!(i), json!(chunk)]).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Queued while that write waits: its wake-up must not be lost to the wait, or it would leave only with
    // the next heartbeat, 20 s away.
    socket.emit("last", &[]).unwrap();
    let read_all = async {
        for i in 0..64 {
            assert_eq!(
                ws_next_text(&mut ws).await,
                format!(r#"42["big",{i},"{chunk}"]"#)
            );
        }
        ws_next_text(&mut ws).await
    };
    let last = tokio::time::timeout(Duration::from_secs(10), read_all).await;
    assert_eq!(
        last.expect("the last frame waited for the heartbeat"),
        r#"42["last"]"#
    );
}
