//! Who may use the admin console: the holder of `server.admin_token`, as `Authorization: Bearer <token>`
//! (scripts, tests) or through the login form, which sets a session cookie (people). `AdminAuth` is the
//! extractor every admin route takes; a handler that has one was called by the admin.
//!
//! The cookie is `<expiry>.<nonce>.<mac>`, the MAC an HMAC-SHA256 under the token, so any node with the same
//! token accepts it and nothing is stored per session; logging out revokes the nonce on this node (a copy of
//! the cookie kept elsewhere still works there until it expires, at most `SESSION_SECS` later). A wrong token
//! is answered after `FAILURE_DELAY`, and at most `MAX_FAILING` wrong ones are answered at once (the others
//! get 429): a guess costs a second, whatever the guesser's parallelism, and the right token never waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use hmac::{KeyInit, Mac};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::api::ApiError;
use crate::secret::Secret;

/// The session cookie's name.
pub const COOKIE: &str = "herald_admin";
/// How long a login lasts.
pub const SESSION_SECS: u64 = 12 * 3600;
/// How long a wrong token waits for its answer.
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);
/// Most wrong tokens waiting for their answer at once.
pub const MAX_FAILING: usize = 4;
/// Most logged-out sessions remembered (each until it would have expired).
const MAX_REVOKED: usize = 10_000;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The admin token and what guards it. Shared by every admin route.
#[derive(Debug)]
pub struct Guard {
    token: Secret,
    failing: Arc<Semaphore>,
    /// Nonces of logged-out sessions, with their expiry (Unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
}

/// Proof that the request came from the admin, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAuth {
    Bearer,
    Cookie,
}

impl Guard {
    pub fn new(token: Secret) -> Self {
        Guard {
            token,
            failing: Arc::new(Semaphore::new(MAX_FAILING)),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// The token, to ask the other nodes' admin API with.
    pub fn token(&self) -> &str {
        self.token.expose()
    }

    /// Whether `candidate` is the token, in constant time.
    pub fn is_token(&self, candidate: &str) -> bool {
        self.token.matches(candidate)
    }

    /// The answer to a wrong token, given after `FAILURE_DELAY`; 429 at once when `MAX_FAILING` are waiting.
    pub async fn refuse(&self, peer: Option<std::net::SocketAddr>) -> ApiError {
        let Ok(permit) = Arc::clone(&self.failing).try_acquire_owned() else {
            return ApiError::AdminSlowDown;
        };
        tracing::warn!(peer = ?peer, "admin console: a wrong token");
        tokio::time::sleep(FAILURE_DELAY).await;
        drop(permit);
        ApiError::AdminUnauthorized
    }

    /// Checks a request's credentials: the bearer token first, else the session cookie.
    pub async fn check(&self, parts: &Parts) -> Result<AdminAuth, ApiError> {
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let given = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            return match given {
                Some(token) if self.is_token(token) => Ok(AdminAuth::Bearer),
                _ => Err(self.refuse(peer(parts)).await),
            };
        }
        let cookie = cookie(&parts.headers, COOKIE).ok_or(ApiError::AdminUnauthorized)?;
        if !self.session_is_valid(cookie) {
            // A cookie cannot be guessed (its MAC is 256 bits): an invalid one is an old one, not an attack.
            return Err(ApiError::AdminUnauthorized);
        }
        if !is_safe(&parts.method) && !same_origin(&parts.headers) {
            return Err(ApiError::CrossOrigin);
        }
        Ok(AdminAuth::Cookie)
    }

    /// A new session cookie's value, valid for `SESSION_SECS`.
    pub fn new_session(&self) -> String {
        let expiry = now_secs() + SESSION_SECS;
        let nonce = hex(&rand::random::<[u8; 16]>());
        let mac = self.mac(expiry, &nonce);
        format!("{expiry}.{nonce}.{mac}")
    }

    /// Whether `value` is a session this token made, not expired and not logged out.
    fn session_is_valid(&self, value: &str) -> bool {
        let Some((expiry, nonce, mac)) = parse_session(value) else {
            return false;
        };
        let Ok(mut check) = HmacSha256::new_from_slice(self.token.expose().as_bytes()) else {
            return false;
        };
        check.update(session_message(expiry, nonce).as_bytes());
        let Some(given) = unhex(mac) else {
            return false;
        };
        check.verify_slice(&given).is_ok()
            && expiry > now_secs()
            && !self.revoked.lock().contains_key(nonce)
    }

    /// Logs the session `value` out on this node.
    pub fn revoke(&self, value: &str) {
        if !self.session_is_valid(value) {
            return;
        }
        let Some((expiry, nonce, _)) = parse_session(value) else {
            return;
        };
        let mut revoked = self.revoked.lock();
        let now = now_secs();
        revoked.retain(|_, until| *until > now);
        if revoked.len() < MAX_REVOKED {
            revoked.insert(nonce.to_string(), expiry);
        }
    }

    fn mac(&self, expiry: u64, nonce: &str) -> String {
        match HmacSha256::new_from_slice(self.token.expose().as_bytes()) {
            Ok(mut mac) => {
                mac.update(session_message(expiry, nonce).as_bytes());
                hex(&mac.finalize().into_bytes())
            }
            // HMAC takes a key of any length: this cannot happen, and an empty MAC never verifies.
            Err(_) => String::new(),
        }
    }
}

impl<S> FromRequestParts<S> for AdminAuth
where
    Arc<Guard>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Arc::<Guard>::from_ref(state).check(parts).await
    }
}

/// `Set-Cookie` for a new session; `Secure` when the request came over HTTPS.
pub fn session_cookie(value: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={value}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{secure}"
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that removes the session cookie.
pub fn cleared_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "herald_admin=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure",
        )
    } else {
        HeaderValue::from_static("herald_admin=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
    }
}

/// Whether the request reached herald over HTTPS: its URI says so, or a proxy in front says it did.
pub fn came_over_https(parts: &Parts) -> bool {
    parts.uri.scheme_str() == Some("https")
        || parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// The client's address, for the log line of a wrong token.
pub fn peer(parts: &Parts) -> Option<std::net::SocketAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a browser's change request comes from the console's own origin: its `Origin` (when sent) names the
/// `Host` it was sent to, and the browser does not call it cross-site. The cookie's `SameSite=Strict` already
/// keeps other sites out; this holds where a browser ignores it.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if text(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return false;
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
    }
}

fn session_message(expiry: u64, nonce: &str) -> String {
    format!("herald-admin-session:{expiry}.{nonce}")
}

fn parse_session(value: &str) -> Option<(u64, &str, &str)> {
    let mut parts = value.splitn(3, '.');
    let expiry = parts.next()?.parse().ok()?;
    let nonce = parts.next().filter(|n| n.len() == 32)?;
    let mac = parts.next().filter(|m| m.len() == 64)?;
    Some((expiry, nonce, mac))
}

fn now_secs() -> u64 {
    crate::mailbox::store::now_ms() / 1000
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    const TOKEN: &str = "admin-token-0123456789";

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder()
            .method(method)
            .uri("/api/v1/admin/overview");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("a request").into_parts().0
    }

    #[tokio::test]
    async fn a_session_cookie_is_accepted_until_it_is_revoked() {
        let guard = Guard::new(Secret::new(TOKEN));
        let session = guard.new_session();
        let cookie = format!("other=1; {COOKIE}={session}");
        let request = parts("GET", &[("cookie", &cookie)]);
        assert_eq!(guard.check(&request).await.ok(), Some(AdminAuth::Cookie));

        let other = Guard::new(Secret::new("another-token-0123456789"));
        assert!(
            other.check(&request).await.is_err(),
            "another token's cookie"
        );
        let mut forged = session.clone();
        forged.replace_range(session.len() - 1.., "0");
        if forged == session {
            forged.replace_range(session.len() - 1.., "1");
        }
        let forged = format!("{COOKIE}={forged}");
        assert!(guard
            .check(&parts("GET", &[("cookie", &forged)]))
            .await
            .is_err());

        guard.revoke(&session);
        assert!(matches!(
            guard.check(&request).await,
            Err(ApiError::AdminUnauthorized)
        ));
    }

    #[tokio::test]
    async fn a_cookie_change_must_come_from_the_same_origin() {
        let guard = Guard::new(Secret::new(TOKEN));
        let cookie = format!("{COOKIE}={}", guard.new_session());
        let host = ("host", "herald.test:3000");
        let same = parts(
            "POST",
            &[
                ("cookie", &cookie),
                host,
                ("origin", "https://herald.test:3000"),
            ],
        );
        assert_eq!(guard.check(&same).await.ok(), Some(AdminAuth::Cookie));
        let other = parts(
            "POST",
            &[("cookie", &cookie), host, ("origin", "https://evil.test")],
        );
        assert!(matches!(
            guard.check(&other).await,
            Err(ApiError::CrossOrigin)
        ));
        let cross = parts(
            "DELETE",
            &[("cookie", &cookie), host, ("sec-fetch-site", "cross-site")],
        );
        assert!(matches!(
            guard.check(&cross).await,
            Err(ApiError::CrossOrigin)
        ));
        let read = parts(
            "GET",
            &[("cookie", &cookie), host, ("origin", "https://evil.test")],
        );
        assert!(guard.check(&read).await.is_ok(), "reads are not changes");
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_tokens_wait_and_only_a_few_at_once() {
        let guard = Arc::new(Guard::new(Secret::new(TOKEN)));
        let right = parts("GET", &[("authorization", &format!("Bearer {TOKEN}"))]);
        assert_eq!(guard.check(&right).await.ok(), Some(AdminAuth::Bearer));
        let started = tokio::time::Instant::now();
        let wrong = || parts("GET", &[("authorization", "Bearer nope")]);
        let waiting: Vec<_> = (0..MAX_FAILING)
            .map(|_| {
                let guard = Arc::clone(&guard);
                let request = wrong();
                tokio::spawn(async move { guard.check(&request).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(matches!(
            guard.check(&wrong()).await,
            Err(ApiError::AdminSlowDown)
        ));
        assert_eq!(
            guard.check(&right).await.ok(),
            Some(AdminAuth::Bearer),
            "the right token never waits"
        );
        for task in waiting {
            let answer = task.await.expect("the check ran");
            assert!(matches!(answer, Err(ApiError::AdminUnauthorized)));
        }
        assert!(started.elapsed() >= FAILURE_DELAY);
    }

    #[test]
    fn cookies_are_read_from_every_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("b=2; herald_admin=x.y.z"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("x.y.z"));
        assert_eq!(cookie(&headers, "c"), None);
        let secure = session_cookie("v", true);
        let secure = secure.to_str().expect("ASCII");
        assert!(
            secure.contains("HttpOnly")
                && secure.contains("SameSite=Strict")
                && secure.ends_with("; Secure")
        );
        assert!(!session_cookie("v", false)
            .to_str()
            .expect("ASCII")
            .contains("Secure"));
    }
}
