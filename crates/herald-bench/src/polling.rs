//! One socket.io v5 client over HTTP long-polling (`--transport polling`): the same join and the same `m`
//! events as the WebSocket client, read from `\x1e`-separated payloads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::stats::{Deliveries, Order};
use crate::target::Target;

#[derive(Deserialize)]
struct Open {
    sid: String,
}

/// Opens a polling session as connection `i`, joins the site's namespace with `token`, and returns the task
/// that keeps polling once the CONNECT is acknowledged.
pub async fn connect(
    target: &Target,
    i: usize,
    token: &str,
    deliveries: Arc<Deliveries>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let http = target.http(i).clone();
    let base = format!("http://{}/socket.io/?EIO=4&transport=polling", target.addr);
    let open = get(&http, &base).await?;
    let open: Open = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
        .with_context(|| format!("not an Engine.IO open packet: {open}"))?;
    let url = format!("{base}&sid={}", open.sid);
    let namespace = target.namespace();
    let auth = serde_json::json!({ "token": token });
    post(&http, &url, format!("40{namespace},{auth}")).await?;
    let acked = format!("40{namespace},");
    'handshake: loop {
        for packet in get(&http, &url).await?.split('\x1e') {
            if packet == "2" {
                post(&http, &url, "3".into()).await?;
            } else if packet.starts_with(&acked) {
                break 'handshake;
            } else {
                bail!("namespace {namespace} refused the client: {packet}");
            }
        }
    }
    let prefix = format!("42{namespace},[\"m\",");
    Ok(tokio::spawn(async move {
        let mut order = Order::default();
        while let Ok(body) = get(&http, &url).await {
            for packet in body.split('\x1e') {
                if let Some(payload) = packet.strip_prefix(prefix.as_str()) {
                    deliveries.record(payload, &mut order);
                } else if packet == "2" {
                    if post(&http, &url, "3".into()).await.is_err() {
                        break;
                    }
                } else if packet == "1" {
                    break;
                }
            }
        }
        deliveries.disconnects.fetch_add(1, Ordering::Relaxed);
    }))
}

/// One polling GET; its payload.
pub(crate) async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = http.get(url).send().await.context("polling GET")?;
    if !response.status().is_success() {
        bail!("polling GET answered {}", refusal(response).await);
    }
    response.text().await.context("reading a polling payload")
}

/// One polling POST of `body`.
pub(crate) async fn post(http: &reqwest::Client, url: &str, body: String) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body)
        .send()
        .await
        .context("polling POST")?;
    if !response.status().is_success() {
        bail!("polling POST answered {}", refusal(response).await);
    }
    response.bytes().await.context("reading a POST answer")?;
    Ok(())
}

/// A refused request's status and the start of its body (Engine.IO's JSON error says why).
async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    format!("{status} {body}")
}
