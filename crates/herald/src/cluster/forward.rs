//! No sticky sessions: a polling request or a WebSocket upgrade for a session another node holds is sent to that
//! node, found by the node id that starts every sid, and its answer streamed back. Polls go over a bounded
//! keep-alive pool per peer; an upgrade becomes a tunnel that copies bytes both ways, so the probe and the
//! session's whole WebSocket life run end to end with the owner. A peer at an https:// node URL is reached
//! over TLS, verified against herald's roots (`tls::Trust`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Directory, NODE_ID_LEN};
use crate::engine::{Forward, ForwardError, Forwarded, FORWARDED};
use crate::server::{Activity, Held, Watched};
use crate::tls::{TlsError, Trust};

/// How a node forwards.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Largest request body forwarded, `max_payload_bytes`. A larger POST is cut after one byte more, which
    /// the owner (with the same limit) refuses as too large, closing the session as it would have here.
    pub max_body: usize,
    /// Longest the owner may take to answer a forwarded request's head. A polling GET waits up to the ping
    /// interval, so this is above it: `idle_timeout_ms`, past which the client's own connection would close.
    pub timeout: Duration,
    /// Idle keep-alive connections kept per peer.
    pub max_idle_per_peer: usize,
    /// How long an idle pooled connection is kept: below the peers' `header_read_timeout_ms`, after which the
    /// peer closes it, so a request is rarely written into a connection the peer is closing.
    pub pool_idle: Duration,
    /// A tunnel (a forwarded WebSocket) that moves no byte either way for this long is dropped: a live
    /// session moves heartbeats every ping interval. `idle_timeout_ms`.
    pub tunnel_idle: Duration,
    /// Most tunnels open at once, `max_connections`; past it an upgrade is answered 503 (the client stays on
    /// polling) and counted as that limit.
    pub max_tunnels: usize,
    /// Longest a connection to a peer may take to open.
    pub connect_timeout: Duration,
    /// The roots a peer's certificate is checked against, for https:// node URLs.
    pub trust: Trust,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            max_body: 1_000_000,
            timeout: Duration::from_secs(60),
            max_idle_per_peer: 128,
            pool_idle: Duration::from_secs(5),
            tunnel_idle: Duration::from_secs(60),
            max_tunnels: 100_000,
            connect_timeout: Duration::from_secs(3),
            trust: Trust::system(),
        }
    }
}

/// The [`Forward`] of a cluster node: owners come from the [`Directory`], requests go over one pooled client.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    directory: Arc<dyn Directory>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    config: ForwardConfig,
    tunnels: Arc<Semaphore>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    pub fn new(directory: Arc<dyn Directory>, config: ForwardConfig) -> Result<Self, TlsError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        // The TLS layer takes https:// URLs; the TCP connector under it must not refuse them.
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.trust.client_config()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle)
            .pool_max_idle_per_host(config.max_idle_per_peer)
            .build(connector);
        Ok(Forwarder {
            inner: Arc::new(Inner {
                directory,
                client,
                tunnels: Arc::new(Semaphore::new(config.max_tunnels)),
                config,
            }),
        })
    }
}

impl Forward for Forwarder {
    fn forward(&self, sid: &str, request: Request<Body>) -> Option<Forwarded> {
        let node = sid.get(..NODE_ID_LEN)?.to_string();
        let inner = Arc::clone(&self.inner);
        Some(Box::pin(async move {
            // A node that started since this one's last heartbeat is not in the view yet.
            let url = inner
                .directory
                .resolve(&node)
                .await
                .ok_or(ForwardError::Unreachable)?;
            inner.send(&url, request).await
        }))
    }
}

impl Inner {
    async fn send(
        &self,
        base: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, ForwardError> {
        let upgrade = is_upgrade(request.headers());
        // Taken before the request is consumed: the client's side of a tunnel.
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut request));
        let permit = if upgrade {
            match Arc::clone(&self.tunnels).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    // The same setting as the session cap: a tunnel carries one session of another node.
                    crate::limits::Limit::Sessions.hit();
                    tracing::warn!(
                        limit = self.config.max_tunnels,
                        "refused to forward a WebSocket: every tunnel is in use"
                    );
                    return Err(ForwardError::Busy);
                }
            }
        } else {
            None
        };
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let (parts, body) = request.into_parts();
        let body = if parts.method == Method::POST {
            read_capped(body, self.config.max_body)
                .await
                .ok_or(ForwardError::Unreachable)?
        } else {
            Bytes::new()
        };
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let uri: Uri = format!("{}{target}", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| {
                tracing::warn!(url = base, error = %e, "a node's URL does not parse");
                ForwardError::Unreachable
            })?;
        let mut outgoing = Request::new(Full::new(body));
        *outgoing.method_mut() = parts.method;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = forwarded_headers(parts.headers, upgrade, peer);
        let answer = tokio::time::timeout(self.config.timeout, self.client.request(outgoing)).await;
        let mut response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::info!(url = base, error = %e, "could not forward a request to its session's node");
                return Err(ForwardError::Unreachable);
            }
            Err(_) => {
                tracing::info!(
                    url = base,
                    "the node holding a session did not answer in time"
                );
                return Err(ForwardError::Unreachable);
            }
        };
        if let (Some(client_side), Some(permit)) = (client_side, permit) {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let owner_side = hyper::upgrade::on(&mut response);
                tokio::spawn(tunnel(
                    client_side,
                    owner_side,
                    self.config.tunnel_idle,
                    permit,
                ));
            }
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(
            &mut parts.headers,
            parts.status == StatusCode::SWITCHING_PROTOCOLS,
        );
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// Whether the request asks for a WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Headers that describe one connection, not the request (RFC 9110 7.6.1); `Upgrade` and `Connection` stay on
/// an upgrade, which asks the owner to switch protocols.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Headers the client named in `Connection` are its own hop's too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        if !(upgrade && name == "connection") {
            headers.remove(name);
        }
    }
    if !upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The client's headers as the owner gets them: the connection's own headers dropped, the body's length
/// recomputed, [`FORWARDED`] set, and the client's address appended to `X-Forwarded-For`. `Origin`, `Cookie`,
/// `User-Agent` and `Host` go on unchanged, so the owner sees the request as the client sent it.
fn forwarded_headers(mut headers: HeaderMap, upgrade: bool, peer: Option<SocketAddr>) -> HeaderMap {
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::CONTENT_LENGTH);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    if let Some(peer) = peer {
        let mut chain: Vec<String> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        chain.push(peer.ip().to_string());
        if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
            headers.insert("x-forwarded-for", value);
        }
    }
    headers
}

/// The body, or its first `max + 1` bytes when it is longer: the owner refuses that as too large. `None` when
/// the client's body failed (it went away).
async fn read_capped(mut body: Body, max: usize) -> Option<Bytes> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue;
        };
        // The usual body is one chunk, kept as it came.
        if first.is_none() && rest.is_empty() {
            first = Some(data);
        } else {
            if let Some(first) = first.take() {
                rest.extend_from_slice(&first);
            }
            rest.extend_from_slice(&data);
        }
        let len = first.as_ref().map_or(rest.len(), Bytes::len);
        if len > max {
            let mut all = first.unwrap_or_else(|| rest.freeze());
            all.truncate(max + 1);
            return Some(all);
        }
    }
    Some(first.unwrap_or_else(|| rest.freeze()))
}

/// Copies bytes between the client and the owner until both sides are done, or no byte moved for `idle` (a
/// client or owner that vanished without closing, or stopped reading).
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    owner: hyper::upgrade::OnUpgrade,
    idle: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let (client, owner) = match tokio::join!(client, owner) {
        (Ok(client), Ok(owner)) => (client, owner),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "a forwarded WebSocket upgrade failed");
            return;
        }
    };
    let activity = Arc::new(Activity::new());
    let mut client = Watched {
        inner: TokioIo::new(client),
        activity: Arc::clone(&activity),
        held: Held::Never,
        read: bytes::Bytes::new(),
    };
    let mut owner = Watched {
        inner: TokioIo::new(owner),
        activity: Arc::clone(&activity),
        held: Held::Never,
        read: bytes::Bytes::new(),
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut owner, 4096, 4096);
    tokio::pin!(copy);
    loop {
        let check = tokio::time::sleep(idle.saturating_sub(activity.idle_for()));
        tokio::select! {
            result = &mut copy => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "a forwarded WebSocket ended with an error");
                }
                return;
            }
            () = check => if activity.idle_for() >= idle {
                tracing::debug!(idle_ms = idle.as_millis() as u64, "dropped an idle forwarded WebSocket");
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        map
    }

    #[test]
    fn a_poll_keeps_the_clients_headers_but_not_its_connection() {
        let peer: SocketAddr = "10.0.0.9:5555".parse().expect("an address");
        let out = forwarded_headers(
            headers(&[
                ("host", "push.example.com"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("content-length", "12"),
                ("cookie", "session=abc"),
                ("origin", "https://app.example.com"),
                ("user-agent", "ua/1"),
                ("x-forwarded-for", "203.0.113.7"),
            ]),
            false,
            Some(peer),
        );
        let get = |name: &str| out.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(get("host"), Some("push.example.com"));
        assert_eq!(get("cookie"), Some("session=abc"));
        assert_eq!(get("origin"), Some("https://app.example.com"));
        assert_eq!(get("user-agent"), Some("ua/1"));
        assert_eq!(get("x-forwarded-for"), Some("203.0.113.7, 10.0.0.9"));
        assert_eq!(get(FORWARDED), Some("1"));
        for gone in ["connection", "x-hop", "keep-alive", "content-length"] {
            assert_eq!(get(gone), None, "{gone}");
        }
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]);
        assert!(is_upgrade(&h));
        let out = forwarded_headers(h, true, None);
        let get = |name: &str| out.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(get("connection"), Some("Upgrade"));
        assert_eq!(get("upgrade"), Some("websocket"));
        assert_eq!(get("sec-websocket-key"), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(get("x-forwarded-for"), None);
        assert!(!is_upgrade(&headers(&[("connection", "keep-alive")])));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_cut_one_byte_past_it() {
        let chunks = |parts: Vec<&'static [u8]>| {
            let stream = futures_util::stream::iter(
                parts
                    .into_iter()
                    .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p))),
            );
            Body::from_stream(stream)
        };
        assert_eq!(
            read_capped(chunks(vec![b"abc"]), 5).await,
            Some(Bytes::from_static(b"abc"))
        );
        assert_eq!(
            read_capped(chunks(vec![b"ab", b"cd", b"e"]), 5).await,
            Some(Bytes::from_static(b"abcde"))
        );
        assert_eq!(
            read_capped(chunks(vec![b"abc", b"defgh", b"ijk"]), 5).await,
            Some(Bytes::from_static(b"abcdef"))
        );
        assert_eq!(
            read_capped(chunks(vec![b"abcdefgh"]), 5).await,
            Some(Bytes::from_static(b"abcdef"))
        );
    }
}
