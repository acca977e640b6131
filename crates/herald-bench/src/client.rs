//! A subscriber, from a chosen source address. Here the socket.io v5 client over WebSocket: it joins the site's
//! namespace with its token, then answers heartbeats and records every `m` event it is sent. The other
//! transports are in `polling.rs` (socket.io over long-polling), `plain.rs` (herald's plain WebSocket) and
//! `sse.rs` (herald's event stream); each records the same `m` events into the same `Deliveries`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stats::{Deliveries, Order};
use crate::target::{Target, Transport};

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// A connected client; dropping it drops the connection.
pub struct Client {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects as connection number `i` with `token`, and returns once the namespace CONNECT is acknowledged:
    /// by then the server has joined the token's rooms.
    pub async fn connect(
        target: &Target,
        i: usize,
        token: &str,
        deliveries: Arc<Deliveries>,
    ) -> anyhow::Result<Self> {
        let task = match target.transport {
            Transport::Websocket => {
                let ws = join(target, i, token).await?;
                let prefix = format!("42{},[\"m\",", target.namespace());
                tokio::spawn(listen(ws, prefix, deliveries))
            }
            Transport::Polling => crate::polling::connect(target, i, token, deliveries).await?,
            Transport::PlainWs => crate::plain::connect(target, i, token, deliveries).await?,
            Transport::Sse => crate::sse::connect(target, i, token, deliveries).await?,
        };
        Ok(Client { task })
    }
}

/// Opens a WebSocket as connection number `i` and joins the site's namespace with `token`; returns once the
/// namespace CONNECT is acknowledged.
pub(crate) async fn join(target: &Target, i: usize, token: &str) -> anyhow::Result<Ws> {
    let mut ws = open(target.addr, target.source(i)).await?;
    expect_prefix(&mut ws, "0{").await?;
    let namespace = target.namespace();
    let auth = serde_json::json!({ "token": token });
    ws.send(Message::text(format!("40{namespace},{auth}")))
        .await?;
    let text = loop {
        // Some servers ping right after the handshake, before answering CONNECT.
        match next_text(&mut ws).await? {
            ping if ping == "2" => ws.send(Message::text("3")).await?,
            text => break text,
        }
    };
    if !text.starts_with(&format!("40{namespace},")) {
        bail!("namespace {namespace} refused the client: {text}");
    }
    Ok(ws)
}

pub(crate) async fn open(server: SocketAddr, source: SocketAddr) -> anyhow::Result<Ws> {
    handshake(server, source, "/socket.io/?EIO=4&transport=websocket").await
}

/// A TCP connection to `server` from `source`, without Nagle's delay.
pub(crate) async fn dial(server: SocketAddr, source: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4().context("creating a socket")?;
    socket
        .bind(source)
        .with_context(|| format!("binding {source}"))?;
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting to {server} from {source}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket to `path` (with its query) on `server`, from `source`.
pub(crate) async fn handshake(
    server: SocketAddr,
    source: SocketAddr,
    path: &str,
) -> anyhow::Result<Ws> {
    let stream = dial(server, source).await?;
    let url = format!("ws://{server}{path}");
    // tungstenite's default read buffer is 128 KiB, zeroed per connection: at thousands of connects per second
    // the generator would spend most of its time clearing pages. Frames here are small.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

async fn listen(mut ws: Ws, prefix: String, deliveries: Arc<Deliveries>) {
    let mut order = Order::default();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let text = text.as_str();
                if let Some(payload) = text.strip_prefix(prefix.as_str()) {
                    deliveries.record(payload, &mut order);
                } else if text == "2" && ws.send(Message::text("3")).await.is_err() {
                    break;
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    deliveries.disconnects.fetch_add(1, Ordering::Relaxed);
}

pub(crate) async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("WebSocket error: {e}"),
            None => bail!("connection closed during the handshake"),
        }
    }
}

async fn expect_prefix(ws: &mut Ws, prefix: &str) -> anyhow::Result<()> {
    let text = next_text(ws).await?;
    if !text.starts_with(prefix) {
        bail!("expected a {prefix:?} packet, got {text:?}");
    }
    Ok(())
}
