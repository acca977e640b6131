//! What the auth webhook's failures log: the host, never the token, the cookie or the URL's query. In a file
//! (so a process) of its own: `tracing` caches each log call site's interest, and a call site first hit by
//! another test's thread while this test's subscriber was being installed stayed silent for it (seen once in
//! about twenty runs when this test shared `auth_webhook.rs`).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use herald::auth::{AuthConfig, AuthRequest, Authenticator, WebhookConfig};

/// Log lines written while the test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn auth_webhook_logs_show_the_host_never_the_credentials() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let app = Router::new()
        .route("/refuse", get(|| async { StatusCode::UNAUTHORIZED }))
        .route(
            "/error",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "database down").into_response() }),
        )
        .route("/invalid", get(|| async { "<html>not json</html>" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    for (path, forward_cookie) in [
        ("/refuse", false),
        ("/error", false),
        ("/invalid", false),
        ("/refuse", true),
    ] {
        let config = WebhookConfig {
            url: format!("http://{addr}{path}?key=URL-SECRET"),
            scheme: "Bearer".into(),
            forward_cookie,
            timeout_ms: 5000,
        };
        let auth =
            Authenticator::new(&AuthConfig::Webhook(config), reqwest::Client::new()).unwrap();
        let request = AuthRequest {
            token: Some("tok-SECRET-123".into()),
            meta: None,
            cookie: Some("PHPSESSID=COOKIE-SECRET-456".into()),
        };
        assert!(auth.authenticate(&request).await.is_err());
    }

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains(&addr.to_string()),
        "logs name the host: {text}"
    );
    for secret in ["SECRET", "Bearer", "Authorization", "PHPSESSID", "key="] {
        assert!(!text.contains(secret), "logs show {secret:?}: {text}");
    }
}
