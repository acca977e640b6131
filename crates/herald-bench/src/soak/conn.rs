//! One socket.io v5 client of the soak, over WebSocket or long-polling behind one interface: open a session and
//! join the site's namespace with an auth payload, read packets one at a time, send packets, then close cleanly
//! or just drop. Pings are answered inside `recv`, so a client that stops reading stops answering too, as a
//! stalled browser tab does.

use std::collections::VecDeque;
use std::net::SocketAddr;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{next_text, open, Ws};
use crate::polling::{get, post};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Websocket,
    Polling,
}

/// Where and as whom one client connects.
pub struct Dial<'a> {
    pub server: SocketAddr,
    pub source: SocketAddr,
    /// The HTTP client bound to `source`, for polling.
    pub http: &'a reqwest::Client,
    pub namespace: &'a str,
    /// The CONNECT packet's auth payload (`{"token": ..., "deviceId": ...}`).
    pub auth: &'a Value,
}

pub struct Conn {
    inner: Inner,
    /// The socket id the namespace CONNECT was answered with.
    pub sid: String,
}

enum Inner {
    Ws(Box<Ws>),
    Polling(Polling),
}

struct Polling {
    /// Payloads the GET loop read; it holds at most one more while nobody reads, then stops polling.
    payloads: mpsc::Receiver<String>,
    queued: VecDeque<String>,
    /// Packets to POST; the writer sends whatever queued in one POST, one POST at a time.
    posts: mpsc::UnboundedSender<String>,
    _reader: Aborting,
    writer: Aborting,
}

/// A task that ends with its owner.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Conn {
    /// Opens a session over `transport` and joins the namespace; fails when the namespace refuses.
    pub async fn open(dial: &Dial<'_>, transport: Transport) -> anyhow::Result<Conn> {
        let connect = format!("40{},{}", dial.namespace, dial.auth);
        let mut conn = match transport {
            Transport::Websocket => {
                let mut ws = open(dial.server, dial.source).await?;
                let open = next_text(&mut ws).await?;
                if !open.starts_with("0{") {
                    bail!("expected an open packet, got {open:?}");
                }
                ws.send(Message::text(connect)).await?;
                Conn {
                    inner: Inner::Ws(Box::new(ws)),
                    sid: String::new(),
                }
            }
            Transport::Polling => open_polling(dial, connect).await?,
        };
        let answer = conn
            .recv()
            .await
            .context("closed before the CONNECT answer")?;
        let accepted = format!("40{},", dial.namespace);
        let Some(json) = answer.strip_prefix(&accepted) else {
            bail!("namespace {} refused the client: {answer}", dial.namespace);
        };
        let json: Value = serde_json::from_str(json).context("CONNECT answer")?;
        conn.sid = json["sid"].as_str().unwrap_or_default().to_string();
        Ok(conn)
    }

    /// The next packet other than a ping, a noop or the close packet; `None` once the session is over.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            let packet = match &mut self.inner {
                Inner::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                    Some(Ok(_)) => continue,
                },
                Inner::Polling(p) => match p.queued.pop_front() {
                    Some(packet) => packet,
                    None => {
                        let body = p.payloads.recv().await?;
                        p.queued.extend(body.split('\x1e').map(str::to_string));
                        continue;
                    }
                },
            };
            match packet.as_str() {
                "2" => {
                    if self.send("3".into()).await.is_err() {
                        return None;
                    }
                }
                "1" => return None,
                "6" => {}
                _ => return Some(packet),
            }
        }
    }

    pub async fn send(&mut self, packet: String) -> anyhow::Result<()> {
        match &mut self.inner {
            Inner::Ws(ws) => ws
                .send(Message::text(packet))
                .await
                .context("WebSocket send"),
            Inner::Polling(p) => p.posts.send(packet).context("polling writer gone"),
        }
    }

    /// Closes the session as a well-behaved client does: a close frame, or the close packet over polling.
    pub async fn close(self) {
        let wait = std::time::Duration::from_secs(5);
        match self.inner {
            Inner::Ws(mut ws) => {
                let _ = tokio::time::timeout(wait, Ws::close(&mut ws, None)).await;
            }
            Inner::Polling(p) => {
                let Polling {
                    posts, mut writer, ..
                } = p;
                if posts.send("1".into()).is_ok() {
                    drop(posts);
                    let _ = tokio::time::timeout(wait, &mut writer.0).await;
                }
            }
        }
    }
}

async fn open_polling(dial: &Dial<'_>, connect: String) -> anyhow::Result<Conn> {
    let http = dial.http.clone();
    let base = format!("http://{}/socket.io/?EIO=4&transport=polling", dial.server);
    let open = get(&http, &base).await?;
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
        .with_context(|| format!("not an Engine.IO open packet: {open}"))?;
    let sid = open["sid"].as_str().context("no sid in the open packet")?;
    let url = format!("{base}&sid={sid}");
    post(&http, &url, connect).await?;
    let (payload_tx, payloads) = mpsc::channel(1);
    let (posts, post_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_loop(http.clone(), url.clone(), payload_tx));
    let writer = tokio::spawn(write_loop(http, url, post_rx));
    Ok(Conn {
        inner: Inner::Polling(Polling {
            payloads,
            queued: VecDeque::new(),
            posts,
            _reader: Aborting(reader),
            writer: Aborting(writer),
        }),
        sid: String::new(),
    })
}

/// GETs one payload after another; waits for the reader before the next GET, so a client that stops reading
/// leaves its frames queued on the server.
async fn read_loop(http: reqwest::Client, url: String, payloads: mpsc::Sender<String>) {
    while let Ok(body) = get(&http, &url).await {
        let closing = body.split('\x1e').any(|p| p == "1");
        if payloads.send(body).await.is_err() || closing {
            break;
        }
    }
}

/// POSTs what queued, one POST at a time (two at once would close the session as `request overlap`).
async fn write_loop(
    http: reqwest::Client,
    url: String,
    mut packets: mpsc::UnboundedReceiver<String>,
) {
    while let Some(first) = packets.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = packets.try_recv() {
            batch.push(more);
        }
        let closing = batch.iter().any(|p| p == "1");
        if post(&http, &url, batch.join("\x1e")).await.is_err() || closing {
            break;
        }
    }
}
