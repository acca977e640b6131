//! Client auth against real HTTP servers started by the test: crossroads' auth webhook (headers sent, answers,
//! failures, timeouts, cookie forwarding) and a JWKS endpoint for RS256 tokens.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald::auth::{
    jwt, AuthConfig, AuthError, AuthRequest, Authenticator, Identity, JwtConfig, WebhookConfig,
};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};

const RSA_PRIVATE: &str = include_str!("fixtures/rsa_private.pem");

/// The headers of every request the test server received, in order.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<HeaderMap>>>,
    jwks_fetches: Arc<AtomicUsize>,
    jwks: Arc<Mutex<String>>,
}

impl Seen {
    fn only_request(&self) -> HeaderMap {
        let requests = self.requests.lock().unwrap();
        assert_eq!(requests.len(), 1, "the webhook should be called once");
        requests[0].clone()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn json(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An auth server with one route per behaviour under test.
async fn auth_server() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let record = |answer: fn() -> Response| {
        move |State(seen): State<Seen>, headers: HeaderMap| async move {
            seen.requests.lock().unwrap().push(headers);
            answer()
        }
    };
    let app = Router::new()
        .route("/rooms", get(record(|| json(r#"["user_1","news"]"#))))
        .route(
            "/user",
            get(record(|| {
                json(r#"{"user":"u1","rooms":["user_u1","news"]}"#)
            })),
        )
        .route(
            "/refuse",
            get(record(|| StatusCode::UNAUTHORIZED.into_response())),
        )
        .route(
            "/forbid",
            get(record(|| StatusCode::FORBIDDEN.into_response())),
        )
        .route(
            "/error",
            get(record(|| {
                (StatusCode::INTERNAL_SERVER_ERROR, "database down").into_response()
            })),
        )
        .route(
            "/redirect",
            get(record(|| StatusCode::FOUND.into_response())),
        )
        .route("/invalid", get(record(|| json("<html>not json</html>"))))
        .route("/object", get(record(|| json(r#"{"ok":true}"#))))
        .route(
            "/slow",
            get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                seen.requests.lock().unwrap().push(headers);
                tokio::time::sleep(Duration::from_secs(3)).await;
                json("[]")
            }),
        )
        .route(
            "/jwks.json",
            get(|State(seen): State<Seen>| async move {
                seen.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                let body = seen.jwks.lock().unwrap().clone();
                ([(header::CONTENT_TYPE, "application/json")], body)
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn webhook(url: String) -> WebhookConfig {
    WebhookConfig {
        url,
        scheme: "Bearer".into(),
        forward_cookie: false,
        timeout_ms: 5000,
    }
}

fn authenticator(config: WebhookConfig) -> Authenticator {
    Authenticator::new(&AuthConfig::Webhook(config), reqwest::Client::new()).unwrap()
}

fn token(token: &str) -> AuthRequest {
    AuthRequest {
        token: Some(token.into()),
        ..AuthRequest::default()
    }
}

fn identity(user: Option<&str>, rooms: &[&str]) -> Identity {
    Identity {
        user: user.map(str::to_owned),
        rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
    }
}

#[tokio::test]
async fn auth_webhook_sends_the_token_and_meta_and_joins_the_listed_rooms() {
    let (addr, seen) = auth_server().await;
    let auth = authenticator(webhook(format!("http://{addr}/rooms")));
    let request = AuthRequest {
        token: Some("abc".into()),
        meta: Some("page=42".into()),
        cookie: Some("PHPSESSID=zzz".into()),
    };
    assert_eq!(
        auth.authenticate(&request).await,
        Ok(identity(None, &["user_1", "news"]))
    );
    let headers = seen.only_request();
    assert_eq!(headers[header::AUTHORIZATION], "Bearer abc");
    assert_eq!(headers["x-meta"], "page=42");
    // Without forward_cookie the client's cookie stays with herald.
    assert!(headers.get(header::COOKIE).is_none());
}

#[tokio::test]
async fn auth_webhook_custom_scheme_and_no_meta() {
    let (addr, seen) = auth_server().await;
    let mut config = webhook(format!("http://{addr}/rooms"));
    config.scheme = "Token".into();
    let answer = authenticator(config).authenticate(&token("abc")).await;
    assert_eq!(answer, Ok(identity(None, &["user_1", "news"])));
    let headers = seen.only_request();
    assert_eq!(headers[header::AUTHORIZATION], "Token abc");
    assert!(headers.get("x-meta").is_none());
}

#[tokio::test]
async fn auth_webhook_user_and_rooms_answer() {
    let (addr, _) = auth_server().await;
    let auth = authenticator(webhook(format!("http://{addr}/user")));
    assert_eq!(
        auth.authenticate(&token("abc")).await,
        Ok(identity(Some("u1"), &["user_u1", "news"]))
    );
}

#[tokio::test]
async fn auth_webhook_failures_map_to_reasons() {
    let (addr, seen) = auth_server().await;
    for (path, expected) in [
        ("/refuse", AuthError::Refused),
        ("/forbid", AuthError::Refused),
        ("/error", AuthError::Unavailable),
        ("/redirect", AuthError::Unavailable),
        ("/invalid", AuthError::BadAnswer),
        ("/object", AuthError::BadAnswer),
        ("/missing", AuthError::Unavailable),
    ] {
        let auth = authenticator(webhook(format!("http://{addr}{path}")));
        assert_eq!(
            auth.authenticate(&token("abc")).await,
            Err(expected),
            "{path}"
        );
    }
    // Each of those reached the server (the 404 route has no recorder).
    assert_eq!(seen.count(), 6);
}

#[tokio::test]
async fn auth_webhook_missing_token_is_not_sent() {
    let (addr, seen) = auth_server().await;
    let auth = authenticator(webhook(format!("http://{addr}/rooms")));
    assert_eq!(
        auth.authenticate(&AuthRequest::default()).await,
        Err(AuthError::MissingToken)
    );
    assert_eq!(
        auth.authenticate(&token("")).await,
        Err(AuthError::MissingToken)
    );
    assert_eq!(seen.count(), 0);
}

#[tokio::test]
async fn auth_webhook_slow_server_times_out() {
    let (addr, seen) = auth_server().await;
    let mut config = webhook(format!("http://{addr}/slow"));
    config.timeout_ms = 200;
    let started = Instant::now();
    let answer = authenticator(config).authenticate(&token("abc")).await;
    assert_eq!(answer, Err(AuthError::TimedOut));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert_eq!(seen.count(), 1);
}

#[tokio::test]
async fn auth_webhook_unreachable_is_unavailable() {
    // A port that was free a moment ago: nothing listens on it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let auth = authenticator(webhook(format!("http://127.0.0.1:{port}/rooms")));
    assert_eq!(
        auth.authenticate(&token("abc")).await,
        Err(AuthError::Unavailable)
    );
}

#[tokio::test]
async fn auth_webhook_forward_cookie_sends_the_cookie_only() {
    let (addr, seen) = auth_server().await;
    let mut config = webhook(format!("http://{addr}/rooms"));
    config.forward_cookie = true;
    let auth = authenticator(config);
    let request = AuthRequest {
        token: Some("abc".into()),
        meta: None,
        cookie: Some("PHPSESSID=s3ss10n; theme=dark".into()),
    };
    assert_eq!(
        auth.authenticate(&request).await,
        Ok(identity(None, &["user_1", "news"]))
    );
    let headers = seen.only_request();
    assert_eq!(headers[header::COOKIE], "PHPSESSID=s3ss10n; theme=dark");
    assert!(headers.get(header::AUTHORIZATION).is_none());

    // A cookie is what this site needs; a token alone is not enough.
    assert_eq!(
        auth.authenticate(&token("abc")).await,
        Err(AuthError::MissingToken)
    );
    assert_eq!(seen.count(), 1);
}

#[tokio::test]
async fn auth_jwt_rs256_by_kid_from_a_jwks() {
    let (addr, seen) = auth_server().await;
    let private = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&private, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    // A set with a decoy HMAC key under another kid, which must never be used.
    let decoy: Jwk = serde_json::from_value(serde_json::json!({
        "kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"
    }))
    .unwrap();
    *seen.jwks.lock().unwrap() = serde_json::to_string(&JwkSet {
        keys: vec![jwk, decoy],
    })
    .unwrap();

    let config = JwtConfig {
        algorithm: "RS256".into(),
        secret: None,
        public_key_pem: None,
        jwks_url: Some(format!("http://{addr}/jwks.json")),
        jwks_cache_secs: 300,
        issuer: None,
        audience: None,
    };
    let auth =
        Authenticator::new(&AuthConfig::Jwt(config.clone()), reqwest::Client::new()).unwrap();
    let rooms = vec!["user_u1".to_string()];
    let hour = Duration::from_secs(3600);

    let signed = jwt::mint_signed(&config, RSA_PRIVATE, Some("k1"), "u1", &rooms, hour).unwrap();
    let expected = identity(Some("u1"), &["user_u1"]);
    assert_eq!(
        auth.authenticate(&token(&signed)).await,
        Ok(expected.clone())
    );
    // The second token is verified from the cache.
    assert_eq!(auth.authenticate(&token(&signed)).await, Ok(expected));
    assert_eq!(seen.jwks_fetches.load(Ordering::SeqCst), 1);

    // An unknown kid right after a fetch is refused without hammering the key server.
    let unknown = jwt::mint_signed(&config, RSA_PRIVATE, Some("k9"), "u1", &rooms, hour).unwrap();
    assert_eq!(
        auth.authenticate(&token(&unknown)).await,
        Err(AuthError::InvalidToken)
    );
    assert_eq!(seen.jwks_fetches.load(Ordering::SeqCst), 1);

    // An HS256 token naming the decoy `oct` key is the wrong algorithm for this site.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("hmac".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &serde_json::json!({"sub": "u1", "exp": jsonwebtoken::get_current_timestamp() + 60}),
        &EncodingKey::from_secret(b"secret").unwrap(),
    )
    .unwrap();
    assert_eq!(
        auth.authenticate(&token(&hs)).await,
        Err(AuthError::WrongAlgorithm)
    );

    // A key server that cannot be reached is herald's problem, not the token's.
    let down = JwtConfig {
        jwks_url: Some("http://127.0.0.1:1/jwks.json".into()),
        ..config
    };
    let auth = Authenticator::new(&AuthConfig::Jwt(down), reqwest::Client::new()).unwrap();
    assert_eq!(
        auth.authenticate(&token(&signed)).await,
        Err(AuthError::Unavailable)
    );
}
