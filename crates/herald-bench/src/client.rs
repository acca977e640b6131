//! One socket.io v5 client over WebSocket: joins `/`, optionally a room, answers heartbeats and counts events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A connected client; dropping it closes the connection.
pub struct Client {
    outbound: mpsc::Sender<String>,
    _task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(
        addr: &str,
        room: Option<&str>,
        received: Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("WebSocket connect")?;
        expect_prefix(&mut ws, "0{").await?;
        ws.send(Message::text("40")).await?;
        expect_prefix(&mut ws, "40").await?;
        if let Some(room) = room {
            ws.send(Message::text(format!("421[\"join\",\"{room}\"]")))
                .await?;
            // Skip the `auth` greeting until the join is acknowledged.
            loop {
                let text = next_text(&mut ws).await?;
                if text.starts_with("431") {
                    break;
                }
            }
        }
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            if text.as_str() == "2" {
                                if ws.send(Message::text("3")).await.is_err() { return; }
                            } else if text.starts_with("42[\"m\"") {
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    out = rx.recv() => match out {
                        Some(text) => if ws.send(Message::text(text)).await.is_err() { return },
                        None => { let _ = ws.close(None).await; return; }
                    },
                }
            }
        });
        Ok(Client {
            outbound: tx,
            _task: task,
        })
    }

    pub async fn send(&self, text: String) -> anyhow::Result<()> {
        self.outbound.send(text).await.context("client closed")
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
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
