//! One call of a webhook route: the event as signed JSON with the client's credentials, the answer read (at
//! most `MAX_ANSWER_BYTES`) and parsed, every failure a reason the client may read. `body` is also what broker
//! routes publish.

use std::time::Duration;

use serde_json::{json, Value};

use super::answer::{self, RouteAnswer};
use crate::auth::AuthConfig;
use crate::config::SiteConfig;
use crate::outbound::{signature, SIGNATURE_HEADER};
use crate::sites::{describe_socket, ClientInfo};
use crate::socketio::Socket;

/// Largest answer a route may give.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// A webhook route about to be called.
pub(super) struct Call<'a> {
    pub http: &'a reqwest::Client,
    pub site: &'a SiteConfig,
    pub url: &'a str,
    pub timeout: Duration,
}

impl Call<'_> {
    /// POSTs `{"site", "event", "args", "socket"}` and reads the answer.
    pub async fn send(
        &self,
        socket: &Socket,
        event: &str,
        args: &[Value],
    ) -> Result<RouteAnswer, String> {
        let body = body(self.site, socket, event, args)?;
        let request = signed(self.http.post(self.url), self.site, &body);
        let request = with_credentials(request, self.site, socket).timeout(self.timeout);
        let timed_out = || {
            format!(
                "the backend did not answer within {} ms",
                self.timeout.as_millis()
            )
        };
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                timed_out()
            } else {
                if let Some(reason) = crate::tls::refused_certificate(&e) {
                    tracing::warn!(site = %self.site.name, reason,
                        "an event route's TLS certificate is not trusted (a private CA goes in server.ca_file)");
                }
                "the backend is unreachable".to_string()
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the backend answered {}", status.as_u16()));
        }
        let body = read_limited(response)
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    timed_out()
                } else {
                    "the backend's answer broke off".into()
                }
            })?
            .ok_or_else(|| format!("the backend's answer is over {MAX_ANSWER_BYTES} bytes"))?;
        answer::parse(&body).map_err(|e| format!("the backend's answer is not valid: {e}"))
    }
}

/// What a route gets for a client event, as JSON: `{"site", "event", "args", "socket": {id, user, deviceId,
/// rooms}}`. The webhook POSTs it; a broker route publishes it as it is.
pub(super) fn body(
    site: &SiteConfig,
    socket: &Socket,
    event: &str,
    args: &[Value],
) -> Result<Vec<u8>, String> {
    let body = json!({
        "site": site.name,
        "event": event,
        "args": args,
        "socket": describe_socket(socket),
    });
    serde_json::to_vec(&body).map_err(|e| format!("the event cannot be encoded: {e}"))
}

/// `request` with the JSON content type, and `X-Herald-Signature` when the site has a signing secret.
pub(crate) fn signed(
    request: reqwest::RequestBuilder,
    site: &SiteConfig,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let request = request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    match &site.signing_secret {
        Some(secret) => request.header(SIGNATURE_HEADER, signature(secret, body)),
        None => request,
    }
}

/// `request` with the client's credentials as the site's auth takes them: `Authorization: <scheme> <token>`,
/// and the cookie on a site whose auth webhook forwards it.
pub(crate) fn with_credentials(
    mut request: reqwest::RequestBuilder,
    site: &SiteConfig,
    socket: &Socket,
) -> reqwest::RequestBuilder {
    let (scheme, forwards_cookie) = match &site.auth {
        AuthConfig::Webhook(webhook) => (webhook.scheme.as_str(), webhook.forward_cookie),
        _ => ("Bearer", false),
    };
    if let Some(token) = socket.data::<ClientInfo>().and_then(|i| i.token.as_ref()) {
        let value = format!("{scheme} {}", token.expose());
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    if let Some(cookie) = socket.session().conn.cookie().filter(|_| forwards_cookie) {
        request = request.header(reqwest::header::COOKIE, cookie);
    }
    request
}

/// The body, unless it is longer than `MAX_ANSWER_BYTES` (`None`).
async fn read_limited(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}
