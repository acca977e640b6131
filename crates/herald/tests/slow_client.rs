//! A client that stops reading while the server broadcasts large messages to it: once its outbox limit is hit
//! it is disconnected ("outbox full") within seconds, while a well-behaved client in the same namespace keeps
//! receiving every message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald::engine::EngineConfig;
use herald::socketio::Target;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_disconnected_and_others_keep_receiving() {
    let mut server = Server::start(EngineConfig {
        // Slow heartbeats: only the outbox may end the silent client's session.
        ping_interval: Duration::from_secs(20),
        ping_timeout: Duration::from_secs(20),
        outbox_frames: 64,
        outbox_bytes: 256 << 10,
        ..config()
    })
    .await;
    let mut good = WsClient::connect_sio(server.addr).await;
    // The silent client asks for a small receive buffer so the kernel holds less on its behalf.
    let (silent, _silent_sid, silent_socket) = ws_open_sio(server.addr, Some(16 << 10)).await;
    assert_eq!(server.connected(), 2);

    let namespace = server.io.namespace("/").unwrap();
    let silent_session = std::sync::Arc::clone(namespace.socket(&silent_socket).unwrap().session());
    let payload = "x".repeat(64 << 10);
    let expected = format!(r#"42["big","{payload}"]"#);
    let limit = Instant::now() + Duration::from_secs(20);
    let mut sent = 0usize;
    let mut departure = None;
    // The first broadcast the silent client's outbox refused.
    let mut refused_at = None;
    // Broadcast in lock-step with the good client, so it never lags, until the silent one is gone: at most
    // 64 MiB in total (far beyond any kernel socket buffers) and 20 s.
    while sent < 1024 && Instant::now() < limit {
        let delivered = namespace
            .broadcast(&Target::default(), "big", &[json!(payload)], &[])
            .unwrap();
        assert!(delivered >= 1, "the good client missed broadcast {sent}");
        sent += 1;
        assert_eq!(good.next_text().await, expected, "broadcast {sent}");
        if let Ok(gone) = server.departures.try_recv() {
            departure = Some(gone);
            break;
        }
        if delivered == 1 {
            // The silent client's outbox overflowed: from here on it must be cut off.
            refused_at = Some(sent);
            break;
        }
    }
    assert!(
        departure.is_some() || refused_at.is_some(),
        "the silent client absorbed {sent} broadcasts of 64 KiB without its outbox overflowing"
    );
    // The overflow closes the session at once; its transport must let go within a few seconds.
    let departure = match departure {
        Some(d) => d,
        None => {
            let waited =
                tokio::time::timeout(Duration::from_secs(5), server.departures.recv()).await;
            waited.ok().flatten().unwrap_or_else(|| {
                    panic!(
                        "the silent client was not disconnected after {sent} broadcasts of 64 KiB: \
                         its outbox refused broadcast {refused_at:?} and its session is marked closed ({:?}), \
                         yet the namespace still holds {} sockets and the engine {} sessions",
                        silent_session.closed(),
                        server.connected(),
                        server.engine.session_count()
                    )
                })
        }
    };
    assert_eq!(
        departure,
        Departure {
            socket: silent_socket,
            reason: "outbox full"
        }
    );
    assert_eq!(server.connected(), 1);
    server.wait_sessions(1).await;

    // The good client still receives, and is the only one reached.
    let delivered = namespace
        .broadcast(&Target::default(), "after", &[json!(1)], &[])
        .unwrap();
    assert_eq!(delivered, 1);
    assert_eq!(good.next_text().await, r#"42["after",1]"#);
    good.assert_echo(12).await;
    drop(silent);
    server.assert_alive().await;
}

#[tokio::test]
async fn polling_client_that_never_polls_is_disconnected_when_its_outbox_fills() {
    let mut server = Server::start(EngineConfig {
        ping_interval: Duration::from_secs(20),
        ping_timeout: Duration::from_secs(20),
        outbox_frames: 64,
        outbox_bytes: 256 << 10,
        ..config()
    })
    .await;
    let mut good = WsClient::connect_sio(server.addr).await;
    let (sid, _) = server.handshake().await;
    let posted = server.post(&sid, b"40").await;
    assert_eq!((posted.status, posted.text().as_str()), (200, "ok"));
    // The CONNECT reply stays queued: this client never polls again.
    assert_eq!(server.connected(), 2);

    let namespace = server.io.namespace("/").unwrap();
    // One frame (the CONNECT reply) is queued, so the 64th broadcast is the one over the limit.
    for i in 1..=64 {
        let delivered = namespace
            .broadcast(&Target::default(), "small", &[json!(i)], &[])
            .unwrap();
        assert_eq!(delivered, if i < 64 { 2 } else { 1 }, "broadcast {i}");
        assert_eq!(good.next_text().await, format!(r#"42["small",{i}]"#));
    }
    let departure = server.next_departure().await;
    assert_eq!(departure.reason, "outbox full");
    assert_eq!(server.connected(), 1);
    // The session is over. A GET may still collect what was queued before the overflow (the CONNECT reply and
    // broadcasts 1 to 63, never the refused 64th), then the close packet; after that the sid is unknown.
    let backlog: Vec<String> = (1..64).map(|i| format!(r#"42["small",{i}]"#)).collect();
    let mut got_backlog = false;
    tokio::time::timeout(WAIT, async {
        loop {
            let response = server.get(&sid).await;
            let body = response.text();
            if response.status == 400 {
                assert_eq!(body, UNKNOWN_SID);
                return;
            }
            assert_eq!(response.status, 200);
            if body == "1" {
                continue;
            }
            assert!(!got_backlog, "the backlog came twice");
            got_backlog = true;
            let packets: Vec<&str> = body.split('\u{1e}').collect();
            assert!(packets[0].starts_with("40{\"sid\":"), "{}", packets[0]);
            assert_eq!(packets[1..], backlog[..]);
        }
    })
    .await
    .expect("the session was not forgotten in time");

    good.assert_echo(13).await;
    server.assert_alive().await;
}
