//! Webhook authentication, as crossroads does it: `GET url` with the client's token (or cookie), and the answer
//! lists the rooms the client may be in.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, COOKIE};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::{AuthError, AuthRequest, Identity, WebhookConfig};

/// The largest answer read from a webhook. A list of rooms is small; a bigger body is a misconfigured URL (an
/// HTML page, a download), and reading it whole would let one connect cost unbounded memory.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// One site's webhook, ready to call: the URL is parsed once, when the site is configured.
pub(crate) struct Webhook {
    url: Url,
    /// The URL's host (and port), the only part of the URL that logs show: the path or query may hold a secret.
    host: String,
    scheme: String,
    forward_cookie: bool,
    timeout: Duration,
    http: reqwest::Client,
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
    pub(crate) fn new(config: &WebhookConfig, http: reqwest::Client) -> Result<Webhook, AuthError> {
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
        Ok(Webhook {
            url,
            host,
            scheme: config.scheme.clone(),
            forward_cookie: config.forward_cookie,
            timeout: config.timeout(),
            http,
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
        let mut call = self.http.get(self.url.clone());
        call = if self.forward_cookie {
            call.header(COOKIE, credential)
        } else {
            call.header(AUTHORIZATION, credential)
        };
        if let Some(meta) = meta {
            call = call.header("X-META", meta);
        }

        // One deadline covers connecting, the headers and the body: a server that answers slowly byte by byte
        // must not hold a connecting client longer than the configured timeout.
        let result = tokio::time::timeout(self.timeout, async {
            let response = call.send().await?;
            let status = response.status();
            let body = if status == StatusCode::OK {
                Some(read_limited(response).await?)
            } else {
                None
            };
            Ok::<_, reqwest::Error>((status, body))
        })
        .await;

        let (status, body) = match result {
            Err(_elapsed) => {
                tracing::warn!(host = %self.host, timeout_ms = self.timeout.as_millis() as u64,
                    "auth webhook timed out");
                return Err(AuthError::TimedOut);
            }
            Ok(Err(e)) => {
                if let Some(reason) = crate::tls::refused_certificate(&e) {
                    tracing::warn!(host = %self.host, reason,
                        "auth webhook unavailable: its TLS certificate is not trusted (a private CA goes in server.ca_file)");
                    return Err(AuthError::Unavailable);
                }
                // reqwest's error may print the full URL; log only its kind.
                let kind = if e.is_connect() {
                    "connection failed"
                } else if e.is_timeout() {
                    "timed out"
                } else if e.is_body() || e.is_decode() {
                    "reading the answer failed"
                } else {
                    "request failed"
                };
                tracing::warn!(host = %self.host, reason = kind, "auth webhook unavailable");
                return Err(if e.is_timeout() {
                    AuthError::TimedOut
                } else {
                    AuthError::Unavailable
                });
            }
            Ok(Ok(answer)) => answer,
        };

        match (status, body) {
            (StatusCode::OK, Some(Some(body))) => parse_answer(&body).inspect_err(|_| {
                tracing::warn!(host = %self.host, "auth webhook answered 200 with something other than rooms");
            }),
            (StatusCode::OK, _) => {
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
        // Keeps the value out of HTTP/2 header compression tables and marks it for redaction in debug output.
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Reads the body up to [`MAX_ANSWER_BYTES`]; `None` when it is larger.
async fn read_limited(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
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
        let http = reqwest::Client::new();
        assert!(Webhook::new(&config("http://auth.example/rooms"), http.clone()).is_ok());
        for url in ["", "not a url", "ftp://auth.example/", "unix:/tmp/sock"] {
            assert!(
                matches!(
                    Webhook::new(&config(url), http.clone()),
                    Err(AuthError::Config(_))
                ),
                "{url}"
            );
        }
        let mut spaced = config("http://auth.example/");
        spaced.scheme = "Bearer x".into();
        assert!(matches!(
            Webhook::new(&spaced, http.clone()),
            Err(AuthError::Config(_))
        ));
        let mut zero = config("http://auth.example/");
        zero.timeout_ms = 0;
        assert!(matches!(
            Webhook::new(&zero, http),
            Err(AuthError::Config(_))
        ));
    }

    #[test]
    fn host_only_in_logs() {
        let hook = Webhook::new(
            &config("https://user:pw@auth.example:8443/check?key=s3cret"),
            reqwest::Client::new(),
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
        let hook = Webhook::new(&config("http://auth.example/"), reqwest::Client::new()).unwrap();
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
