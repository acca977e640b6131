//! One client of herald's plain WebSocket (`--transport plain-ws`): `GET /ws/<site>?token=…`, a welcome frame
//! once the server has let it into its rooms, then one JSON text frame per event,
//! `{"type":"event","event":"m","args":[{"s":…,"t":…,"p":…}]}`. The server's heartbeat is a WebSocket ping,
//! which tungstenite answers by itself on the next read.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::bail;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{handshake, Ws};
use crate::stats::{Deliveries, Order};
use crate::target::Target;

/// What an `m` event frame starts with; its arguments follow.
const EVENT_PREFIX: &str = r#"{"type":"event","event":"m","args":["#;

/// Opens a plain WebSocket as connection `i` with `token`, and returns the task that records its events once
/// the welcome has come (by then the server has joined the token's rooms).
pub async fn connect(
    target: &Target,
    i: usize,
    token: &str,
    deliveries: Arc<Deliveries>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut ws = handshake(
        target.addr,
        target.source(i),
        &target.plain_path("ws", token),
    )
    .await?;
    welcome(&mut ws).await?;
    Ok(tokio::spawn(listen(ws, deliveries)))
}

/// Waits for the welcome frame; a refusal is an error frame and a close.
async fn welcome(ws: &mut Ws) -> anyhow::Result<()> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"welcome""#) => {
                return Ok(())
            }
            Some(Ok(Message::Text(text))) => bail!("the server refused the client: {text}"),
            Some(Ok(Message::Close(frame))) => bail!("the server closed the WebSocket: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("WebSocket error before the welcome: {e}"),
            None => bail!("connection closed before the welcome"),
        }
    }
}

async fn listen(mut ws: Ws, deliveries: Arc<Deliveries>) {
    let mut order = Order::default();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Some(args) = text.as_str().strip_prefix(EVENT_PREFIX) {
                    deliveries.record(args, &mut order);
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            // Pings are answered by tungstenite when it next reads.
            Some(Ok(_)) => {}
        }
    }
    deliveries.disconnects.fetch_add(1, Ordering::Relaxed);
}
