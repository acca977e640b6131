//! Memory a session keeps from its handshake: at most `max_handshake_bytes`, whatever the client sends. In a
//! file of its own so that no other test shares the process whose RSS it reads.
#![allow(clippy::unwrap_used)]

mod common;

use common::http;
use herald::config::Config;

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split(' ').nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn a_thousand_sessions_keep_what_the_limit_says() {
    let (addr, gateway) = common::start_gateway(Config::default()).await;
    let handshake = "/socket.io/?EIO=4&transport=polling";

    let before = rss();
    for _ in 0..1000 {
        assert_eq!(http(addr, "GET", handshake, &[], b"").await.status, 200);
    }
    let plain = rss().saturating_sub(before);

    // Each handshake at the limit: 16 KB of cookie, kept for the session's life.
    let before = rss();
    let at_limit = format!("session={}", "z".repeat(16_000));
    for _ in 0..1000 {
        let answer = http(addr, "GET", handshake, &[("Cookie", &at_limit)], b"").await;
        assert_eq!(answer.status, 200);
    }
    let kept = rss().saturating_sub(before);

    // Over the limit (and over the head limit): refused, and nothing kept.
    let before = rss();
    let huge = format!("session={}", "y".repeat(300_000));
    for _ in 0..200 {
        let answer = http(addr, "GET", handshake, &[("Cookie", &huge)], b"").await;
        assert_eq!(answer.status, 431);
    }
    let refused = rss().saturating_sub(before);
    println!(
        "RSS growth for 1000 sessions: {} KB plain, {} KB with 16 KB cookies; 200 refused 300 KB heads: {} KB",
        plain >> 10,
        kept >> 10,
        refused >> 10
    );
    assert!(
        kept < 40 << 20,
        "1000 sessions with 16 KB handshakes grew RSS by {} MB",
        kept >> 20
    );
    assert!(
        refused < 20 << 20,
        "refused handshakes grew RSS by {} MB",
        refused >> 20
    );
    assert_eq!(gateway.engine.session_count(), 2000);
}
