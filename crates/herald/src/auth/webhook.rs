//! Webhook authentication, as crossroads does it: `GET url` with the client's token (or cookie), and the answer
//! lists the rooms the client may be in.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, ACCEPT, HOST, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use reqwest::header::{HeaderValue, AUTHORIZATION, COOKIE};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::pool::{CallError, Pool};
use super::{AuthError, AuthRequest, Identity, WebhookConfig};
use crate::tls::Trust;

/// The largest answer read from a webhook. A list of rooms is small; a bigger body is a misconfigured URL (an
/// HTML page, a download), and reading it whole would let one connect cost unbounded memory.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The largest refusal or error body read (and dropped) so that its connection can serve the next call; past
/// it the connection is closed instead.
const MAX_DRAINED_BYTES: usize = 64 * 1024;

/// How long an idle connection to a webhook is kept. Below the usual keep-alive timeouts of HTTP servers (5 s
/// for Node, nginx's 75 s), so a request is rarely written into a connection the server is closing.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// One site's webhook, ready to call: the URL is parsed once, when the site is configured, and its connections
/// are pooled (`pool.rs`), at most as many as the site's auth checks in flight.
pub(crate) struct Webhook {
    /// The origin-form target of each request: path and query.
    target: Uri,
    /// The `Host` header: the URL's host, and its port when it is not the scheme's.
    authority: HeaderValue,
    /// `Basic` credentials from the URL's user info, sent with cookie-forwarding calls as an HTTP client
    /// would (a token call's `Authorization` header is the client's token).
    basic: Option<HeaderValue>,
    /// The URL's host (and port), the only part of the URL that logs show: the path or query may hold a secret.
    host: String,
    scheme: String,
    forward_cookie: bool,
    timeout: Duration,
    pool: Pool,
}

/// Shows the host only: the URL's path or query may carry a key.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.host)
            .field("scheme", &self.scheme)
            .field("forward_cookie", &self.forward_cookie)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// `max_in_flight` bounds the calls in flight and so the connections open to the webhook; `trust` checks
    /// an https:// webhook's certificate.
    pub(crate) fn new(
        config: &WebhookConfig,
        trust: &Trust,
        max_in_flight: usize,
    ) -> Result<Webhook, AuthError> {
        let url = Url::parse(&config.url)
            .map_err(|e| AuthError::Config(format!("webhook url is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AuthError::Config(format!(
                "webhook url must be http or https, not '{}'",
                url.scheme()
            )));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(AuthError::Config("webhook url has no host".into())),
        };
        if !config.forward_cookie && (config.scheme.is_empty() || config.scheme.contains(' ')) {
            return Err(AuthError::Config(format!(
                "webhook scheme must be one word, like 'Bearer', not '{}'",
                config.scheme
            )));
        }
        if config.timeout_ms == 0 {
            return Err(AuthError::Config(
                "webhook timeout_ms must be above 0".into(),
            ));
        }
        let bad = |what: &str| AuthError::Config(format!("webhook url has an unusable {what}"));
        let target: Uri = url[url::Position::BeforePath..url::Position::AfterQuery]
            .parse()
            .map_err(|_| bad("path"))?;
        let authority = HeaderValue::from_str(&host).map_err(|_| bad("host"))?;
        let origin: Uri = format!("{}://{host}", url.scheme())
            .parse()
            .map_err(|_| bad("host"))?;
        let basic = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let user = urlencoding_decode(url.username());
            let password = url.password().map(urlencoding_decode).unwrap_or_default();
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut value =
                HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| bad("user"))?;
            value.set_sensitive(true);
            Some(value)
        };
        let pool = Pool::new(origin, trust, max_in_flight, IDLE_TIMEOUT)
            .map_err(|e| AuthError::Config(format!("webhook TLS: {e}")))?;
        Ok(Webhook {
            target,
            authority,
            basic,
            host,
            scheme: config.scheme.clone(),
            forward_cookie: config.forward_cookie,
            timeout: config.timeout(),
            pool,
        })
    }

    /// Asks the webhook who the client is. Failures are logged here, with the reason and the host only, so the
    /// caller can hand the error to the client as it is.
    pub(crate) async fn authenticate(&self, request: &AuthRequest) -> Result<Identity, AuthError> {
        let credential = self.credential(request)?;
        let meta = match request.meta.as_deref() {
            // A meta value that cannot be a header is dropped, as crossroads' HTTP client would refuse it too;
            // it is informational and must not cost the client its connection.
            Some(meta) => HeaderValue::from_str(meta).ok(),
            None => None,
        };
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(HOST, self.authority.clone());
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("herald/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if self.forward_cookie {
            headers.insert(COOKIE, credential);
            if let Some(basic) = &self.basic {
                headers.insert(AUTHORIZATION, basic.clone());
            }
        } else {
            headers.insert(AUTHORIZATION, credential);
        }
        if let Some(meta) = meta {
            headers.insert("X-META", meta);
        }
        let call = || {
            let mut call = Request::new(Empty::<Bytes>::new());
            *call.uri_mut() = self.target.clone();
            *call.headers_mut() = headers.clone();
            call
        };

        // One deadline covers waiting for a connection, connecting, the headers and the body: a server that
        // answers slowly byte by byte must not hold a connecting client longer than the configured timeout.
        let result = tokio::time::timeout(self.timeout, async {
            let (lease, response) = self.pool.send(call).await?;
            let status = response.status();
            let limit = if status == StatusCode::OK {
                MAX_ANSWER_BYTES
            } else {
                MAX_DRAINED_BYTES
            };
            let body = read_limited(response.into_body(), limit).await?;
            // Only a body read to its end leaves the connection ready for the next call.
            if body.is_some() {
                lease.release().await;
            }
            Ok::<_, CallError>((status, body))
        })
        .await;

        let (status, body) = match result {
            Err(_elapsed) => {
                tracing::warn!(host = %self.host, timeout_ms = self.timeout.as_millis() as u64,
                    "auth webhook timed out");
                return Err(AuthError::TimedOut);
            }
            Ok(Err(e)) => {
                if let Some(reason) = refused_certificate(&e) {
                    tracing::warn!(host = %self.host, reason,
                        "auth webhook unavailable: its TLS certificate is not trusted (a private CA goes in server.ca_file)");
                    return Err(AuthError::Unavailable);
                }
                // The error may print the URL; log only its kind.
                let kind = match &e {
                    CallError::Connect(_) => "connection failed",
                    CallError::Http(e)
                        if e.is_incomplete_message() || e.is_body_write_aborted() =>
                    {
                        "reading the answer failed"
                    }
                    CallError::Http(_) => "request failed",
                };
                tracing::warn!(host = %self.host, reason = kind, "auth webhook unavailable");
                return Err(AuthError::Unavailable);
            }
            Ok(Ok(answer)) => answer,
        };

        match (status, body) {
            (StatusCode::OK, Some(body)) => parse_answer(&body).inspect_err(|_| {
                tracing::warn!(host = %self.host, "auth webhook answered 200 with something other than rooms");
            }),
            (StatusCode::OK, None) => {
                tracing::warn!(host = %self.host, limit = MAX_ANSWER_BYTES, "auth webhook answer is too large");
                Err(AuthError::BadAnswer)
            }
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
                tracing::info!(host = %self.host, status = status.as_u16(), "auth webhook refused the client");
                Err(AuthError::Refused)
            }
            (status, _) => {
                tracing::warn!(host = %self.host, status = status.as_u16(), "auth webhook answered an error");
                Err(AuthError::Unavailable)
            }
        }
    }

    /// The header value that carries the client's credential: `<scheme> <token>`, or the client's cookie.
    fn credential(&self, request: &AuthRequest) -> Result<HeaderValue, AuthError> {
        let value = if self.forward_cookie {
            match request.cookie.as_deref() {
                Some(cookie) if !cookie.is_empty() => cookie.to_owned(),
                _ => return Err(AuthError::MissingToken),
            }
        } else {
            match request.token.as_deref() {
                Some(token) if !token.is_empty() => format!("{} {token}", self.scheme),
                _ => return Err(AuthError::MissingToken),
            }
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| AuthError::InvalidToken)?;
        // Marks the value for redaction in debug output.
        value.set_sensitive(true);
        Ok(value)
    }
}

/// The reason a call's TLS handshake refused the webhook's certificate, if that is why it failed.
fn refused_certificate(error: &CallError) -> Option<String> {
    match error {
        CallError::Connect(e) => crate::tls::refused_certificate(&**e),
        CallError::Http(e) => crate::tls::refused_certificate(e),
    }
}

/// Percent-decodes a URL's user or password, as an HTTP client does before it sends them.
fn urlencoding_decode(part: &str) -> String {
    // A `+` is itself in user info, not a space as in a form.
    let part = part.replace('+', "%2B");
    url::form_urlencoded::parse(format!("x={part}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// Reads the body up to `limit` bytes; `None` when it is larger.
async fn read_limited(mut body: Incoming, limit: usize) -> Result<Option<Vec<u8>>, CallError> {
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        if read.len() + chunk.len() > limit {
            return Ok(None);
        }
        read.extend_from_slice(&chunk);
    }
    Ok(Some(read))
}

/// A 200 answer: a JSON array of room names (crossroads), or `{"user": .., "rooms": [..]}`.
pub(crate) fn parse_answer(body: &[u8]) -> Result<Identity, AuthError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| AuthError::BadAnswer)?;
    match value {
        Value::Array(rooms) => Ok(Identity {
            user: None,
            rooms: rooms_of(rooms)?,
        }),
        Value::Object(mut object) => {
            let rooms = match object.remove("rooms") {
                Some(Value::Array(rooms)) => rooms_of(rooms)?,
                _ => return Err(AuthError::BadAnswer),
            };
            // Backends often key users by number; `{"user": 42}` means the user "42".
            let user = match object.remove("user") {
                None | Some(Value::Null) => None,
                Some(Value::String(user)) if user.is_empty() => None,
                Some(Value::String(user)) => Some(user),
                Some(Value::Number(user)) => Some(user.to_string()),
                Some(_) => return Err(AuthError::BadAnswer),
            };
            Ok(Identity { user, rooms })
        }
        _ => Err(AuthError::BadAnswer),
    }
}

fn rooms_of(values: Vec<Value>) -> Result<Vec<String>, AuthError> {
    values
        .into_iter()
        .map(|room| match room {
            Value::String(room) => Ok(room),
            _ => Err(AuthError::BadAnswer),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check(body: &str, expected: Result<Identity, AuthError>) {
        assert_eq!(parse_answer(body.as_bytes()), expected, "answer {body}");
    }

    fn identity(user: Option<&str>, rooms: &[&str]) -> Identity {
        Identity {
            user: user.map(str::to_owned),
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn answers() {
        check(r#"["a","b"]"#, Ok(identity(None, &["a", "b"])));
        check("[]", Ok(identity(None, &[])));
        check(
            r#"{"user":"u1","rooms":["a"]}"#,
            Ok(identity(Some("u1"), &["a"])),
        );
        check(
            r#"{"user":42,"rooms":["a"]}"#,
            Ok(identity(Some("42"), &["a"])),
        );
        check(r#"{"rooms":["a"]}"#, Ok(identity(None, &["a"])));
        check(r#"{"user":null,"rooms":[]}"#, Ok(identity(None, &[])));
        check(r#"["a",1]"#, Err(AuthError::BadAnswer));
        check(r#"{"user":"u1"}"#, Err(AuthError::BadAnswer));
        check(r#"{"user":["u"],"rooms":[]}"#, Err(AuthError::BadAnswer));
        check(r#""a""#, Err(AuthError::BadAnswer));
        check("<html>", Err(AuthError::BadAnswer));
        check("", Err(AuthError::BadAnswer));
    }

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            scheme: "Bearer".into(),
            forward_cookie: false,
            timeout_ms: 5000,
        }
    }

    #[test]
    fn bad_configs() {
        let trust = Trust::system();
        assert!(Webhook::new(&config("http://auth.example/rooms"), &trust, 64).is_ok());
        for url in ["", "not a url", "ftp://auth.example/", "unix:/tmp/sock"] {
            assert!(
                matches!(
                    Webhook::new(&config(url), &trust, 64),
                    Err(AuthError::Config(_))
                ),
                "{url}"
            );
        }
        let mut spaced = config("http://auth.example/");
        spaced.scheme = "Bearer x".into();
        assert!(matches!(
            Webhook::new(&spaced, &trust, 64),
            Err(AuthError::Config(_))
        ));
        let mut zero = config("http://auth.example/");
        zero.timeout_ms = 0;
        assert!(matches!(
            Webhook::new(&zero, &trust, 64),
            Err(AuthError::Config(_))
        ));
    }

    #[test]
    fn host_only_in_logs() {
        let hook = Webhook::new(
            &config("https://user:pw@auth.example:8443/check?key=s3cret"),
            &Trust::system(),
            64,
        )
        .unwrap();
        assert_eq!(hook.host, "auth.example:8443");
        let debug = format!("{hook:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("pw"),
            "{debug}"
        );
    }

    #[test]
    fn credentials() {
        let hook = Webhook::new(&config("http://auth.example/"), &Trust::system(), 64).unwrap();
        let token = |t: Option<&str>| AuthRequest {
            token: t.map(str::to_owned),
            ..AuthRequest::default()
        };
        assert_eq!(hook.credential(&token(Some("abc"))).unwrap(), "Bearer abc");
        assert_eq!(hook.credential(&token(None)), Err(AuthError::MissingToken));
        assert_eq!(
            hook.credential(&token(Some(""))),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            hook.credential(&token(Some("a\nb"))),
            Err(AuthError::InvalidToken)
        );
    }
}
