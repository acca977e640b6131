//! TLS on herald's own port, in process: a gateway with `server.tls` (a certificate of a private CA the test
//! makes) serves HTTPS and WSS on one port to clients that trust that CA alone; a plain HTTP request to the port
//! is answered 400 and frees its connection slot; a client that never finishes its handshake is closed at the
//! header deadline.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::tls::TestCa;
use herald::config::{Config, SiteConfig};
use herald::limits::Limit;
use herald::secret::Secret;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const KEY: &str = "shop-key-0123456789";

/// A public site `shop` whose frames carry no recovery offsets.
fn shop() -> SiteConfig {
    SiteConfig {
        api_keys: vec![Secret::new(KEY)],
        recovery_window_ms: 0,
        ..SiteConfig::new("shop".into())
    }
}

/// A gateway serving TLS with a certificate for 127.0.0.1 from `ca`, with `edit` applied to its config.
async fn start(ca: &TestCa, edit: impl FnOnce(&mut Config)) -> SocketAddr {
    let files = ca.write("server", &ca.issue("herald.test"));
    let mut config = Config {
        sites: vec![shop()],
        ..Config::default()
    };
    config.server.tls = Some(files);
    edit(&mut config);
    common::start_gateway(config).await.0
}

/// `GET /healthcheck` over HTTPS answers "ok".
async fn assert_healthy(ca: &TestCa, addr: SocketAddr) {
    let answer = timeout(
        common::WAIT,
        ca.http_client()
            .get(format!("https://{addr}/healthcheck"))
            .send(),
    )
    .await
    .expect("an HTTPS answer in time")
    .expect("an HTTPS answer");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.expect("a body"), "ok");
}

#[tokio::test]
async fn https_and_wss_share_the_port() {
    let ca = TestCa::new("serve");
    let addr = start(&ca, |_| {}).await;
    assert_healthy(&ca, addr).await;

    // ALPN: herald speaks HTTP/1.1 only, so a client offering h2 first gets HTTP/1.1.
    let probe = common::tls::connect(addr, ca.client_config())
        .await
        .expect("a TLS connection");
    assert_eq!(probe.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(probe);

    let http = ca.http_client();
    let polling = http
        .get(format!("https://{addr}/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .expect("a polling handshake over HTTPS");
    assert_eq!(polling.status(), 200);
    assert!(polling.text().await.expect("a body").starts_with("0{"));

    let (mut ws, _, connected) = common::tls::wss_join(addr, ca.client_config(), "/shop").await;
    assert!(connected.starts_with("40/shop,{\"sid\""), "{connected}");

    let published = http
        .post(format!("https://{addr}/api/v1/sites/shop/publish"))
        .bearer_auth(KEY)
        .json(&json!({"all": true, "event": "news", "args": [{"n": 1}]}))
        .send()
        .await
        .expect("a publish over HTTPS");
    assert_eq!(published.status(), 200);
    assert_eq!(
        common::tls::next_text(&mut ws).await,
        r#"42/shop,["news",{"n":1}]"#
    );
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_answered_400_and_frees_its_slot() {
    let ca = TestCa::new("plain");
    // One connection at a time: a slot the refused connection kept would stall the HTTPS request after it.
    let addr = start(&ca, |c| c.server.limits.max_http_connections = 1).await;
    for _ in 0..3 {
        let mut plain = TcpStream::connect(addr).await.expect("a TCP connection");
        plain
            .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("a request written");
        let mut answer = Vec::new();
        timeout(common::WAIT, plain.read_to_end(&mut answer))
            .await
            .expect("the server closed in time")
            .expect("an answer");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with("\r\n\r\nthis port speaks HTTPS: use https:// (or wss://) here\n"),
            "{answer}"
        );
        drop(plain);
        assert_healthy(&ca, addr).await;
    }
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_closed_at_the_header_deadline() {
    let ca = TestCa::new("silent");
    let deadline = Duration::from_millis(400);
    let addr = start(&ca, |c| {
        c.server.limits.header_read_timeout_ms = deadline.as_millis() as u64;
        c.server.limits.max_http_connections = 1;
    })
    .await;
    let before = Limit::HeaderReadTimeout.count();
    // Nothing at all, then the first bytes of a TLS record and nothing more.
    for sent in [&b""[..], &[0x16, 0x03, 0x01][..]] {
        let mut client = TcpStream::connect(addr).await.expect("a TCP connection");
        client.write_all(sent).await.expect("bytes written");
        let opened = Instant::now();
        let mut rest = Vec::new();
        let read = timeout(common::WAIT, client.read_to_end(&mut rest))
            .await
            .expect("the server closed the connection in time");
        let waited = opened.elapsed();
        assert!(
            read.is_ok_and(|n| n == 0) || rest.is_empty(),
            "the server sent {rest:?}"
        );
        assert!(
            waited >= deadline - Duration::from_millis(50) && waited < deadline * 5,
            "closed after {waited:?}, the deadline is {deadline:?}"
        );
    }
    assert!(Limit::HeaderReadTimeout.count() >= before + 2);
    // The slot is free again.
    assert_healthy(&ca, addr).await;
}
