//! A connect storm against a site with webhook auth: every client gets in, and herald reaches the webhook over
//! at most `limits.max_concurrent_auth` keep-alive connections instead of one per client.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use herald::auth::{AuthConfig, WebhookConfig};
use herald::config::{Config, SiteConfig};
use herald::secret::Secret;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;

/// What the webhook saw: TCP connections accepted, the most open at once, and calls answered.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    calls: AtomicUsize,
}

/// An auth webhook that lets `Bearer u<N>` in as user `u<N>` and refuses anything else with 401, counting the
/// connections it accepts. With `tls`, it speaks HTTPS and takes 20 ms before each handshake, as a remote
/// backend does: a pool that opens a connection whenever none is idle at once then opens one per client.
async fn counting_webhook(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            served.accepted.fetch_add(1, Ordering::SeqCst);
            let open = served.open.fetch_add(1, Ordering::SeqCst) + 1;
            served.peak_open.fetch_max(open, Ordering::SeqCst);
            let seen = Arc::clone(&served);
            let tls = tls.clone();
            tokio::spawn(async move {
                let calls = Arc::clone(&seen);
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    calls.calls.fetch_add(1, Ordering::SeqCst);
                    let user = request
                        .headers()
                        .get(hyper::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer u"))
                        .map(|n| format!("u{n}"));
                    let response = match user {
                        Some(user) => Response::new(Full::new(Bytes::from(format!(
                            r#"{{"user":"{user}","rooms":["user_{user}"]}}"#
                        )))),
                        None => {
                            let mut refused = Response::new(Full::new(Bytes::from_static(
                                b"{\"error\":\"who are you\"}",
                            )));
                            *refused.status_mut() = StatusCode::UNAUTHORIZED;
                            refused
                        }
                    };
                    async move { Ok::<_, Infallible>(response) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(tls) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                seen.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

fn config(webhook: &str, max_concurrent_auth: usize) -> Config {
    let mut config = Config {
        sites: vec![SiteConfig {
            name: "shop".into(),
            api_keys: vec![Secret::new("shop-key-0123456789")],
            auth: AuthConfig::Webhook(WebhookConfig {
                url: format!("{webhook}/rooms"),
                scheme: "Bearer".into(),
                forward_cookie: false,
                timeout_ms: 10_000,
            }),
            device_ttl_secs: 0,
            recovery_window_ms: 0,
            ..SiteConfig::new(String::new())
        }],
        ..Config::default()
    };
    config.server.limits.max_concurrent_auth = max_concurrent_auth;
    config
}

/// `clients` connects at once, each with its own token: all get in, each after one webhook call, over at most
/// `in_flight` connections to the webhook. Gives the clients back, so they stay connected.
async fn storm(
    addr: SocketAddr,
    clients: usize,
    in_flight: usize,
    seen: &Seen,
) -> Vec<(common::WsClient, String)> {
    let joined = join_all((0..clients).map(|i| async move {
        common::join_namespace(addr, "/shop", &format!("token=u{i}")).await
    }))
    .await;
    for (i, (_client, packet)) in joined.iter().enumerate() {
        assert!(packet.starts_with("40/shop,"), "client {i}: {packet}");
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), clients);
    let accepted = seen.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=in_flight).contains(&accepted),
        "{clients} connects opened {accepted} connections to the webhook; at most {in_flight} may be open"
    );
    joined
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_storm_reuses_a_few_webhook_connections() {
    const CLIENTS: usize = 200;
    const IN_FLIGHT: usize = 8;
    let (webhook, seen) = counting_webhook(None).await;
    let (addr, _gateway) =
        common::start_gateway(config(&format!("http://{webhook}"), IN_FLIGHT)).await;

    let _joined = storm(addr, CLIENTS, IN_FLIGHT, &seen).await;

    // Refusals read their (small) body to the end, so they reuse the same connections.
    let refused = join_all(
        (0..40).map(|_| async move { common::join_namespace(addr, "/shop", "token=nobody").await }),
    )
    .await;
    for (_client, packet) in &refused {
        assert!(packet.starts_with("44/shop,"), "{packet}");
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), CLIENTS + 40);
    assert!(
        seen.accepted.load(Ordering::SeqCst) <= IN_FLIGHT,
        "refusals opened connections: {} in all",
        seen.accepted.load(Ordering::SeqCst)
    );
    assert!(seen.peak_open.load(Ordering::SeqCst) <= IN_FLIGHT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_against_a_slow_https_webhook_opens_no_more_connections_than_calls_in_flight() {
    const CLIENTS: usize = 100;
    const IN_FLIGHT: usize = 4;
    let ca = common::tls::TestCa::new("webhook-pool");
    let issued = ca.issue("webhook");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![issued.der.clone()], key)
    .unwrap();
    let (webhook, seen) =
        counting_webhook(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;
    let mut config = config(&format!("https://localhost:{}", webhook.port()), IN_FLIGHT);
    config.server.ca_file = Some(ca.ca_file());
    let (addr, _gateway) = common::start_gateway(config).await;

    let _joined = storm(addr, CLIENTS, IN_FLIGHT, &seen).await;
}
