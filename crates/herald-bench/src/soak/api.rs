//! The server's own view at the end, through its API: each mailbox user's devices with their pending entries
//! (`GET /users/{user}/devices`) and the sockets left in the site's namespace (`GET /sockets`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use super::devices::DeviceStats;
use super::Ctx;

/// The devices API and the sockets list, through a client of its own.
pub struct Api {
    http: reqwest::Client,
    base: String,
    authorization: String,
}

impl Api {
    pub fn new(ctx: &Ctx) -> anyhow::Result<Self> {
        Ok(Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: format!(
                "http://{}/api/v1/sites/{}",
                ctx.target.addr, ctx.target.site
            ),
            authorization: format!("Bearer {}", ctx.target.api_key),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("authorization", &self.authorization)
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// Entries pending over every device of the mailbox users, and how many of those devices are connected.
    pub async fn pending(&self, users: usize) -> anyhow::Result<(u64, u64)> {
        let answers: Vec<anyhow::Result<Value>> = stream::iter(0..users)
            .map(|k| async move { self.get(&format!("/users/d{k}/devices")).await })
            .buffer_unordered(16)
            .collect()
            .await;
        let (mut pending, mut connected) = (0, 0);
        for answer in answers {
            for device in answer?["devices"].as_array().into_iter().flatten() {
                pending += device["pending"].as_u64().unwrap_or(0);
                connected += u64::from(device["connected"].as_bool() == Some(true));
            }
        }
        Ok((pending, connected))
    }

    /// Sockets still in the site's namespace.
    pub async fn sockets(&self) -> anyhow::Result<u64> {
        let answer = self.get("/sockets").await?;
        Ok(answer["sockets"].as_array().map_or(0, Vec::len) as u64)
    }
}

/// Waits until every device is connected and nothing is pending; returns the last (pending, connected) seen.
pub async fn drain(
    api: &Api,
    devices: &DeviceStats,
    n: usize,
    limit: Duration,
) -> Option<(u64, u64)> {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if devices.online.load(Ordering::Relaxed) < n as u64 {
            continue;
        }
        match api.pending(n).await {
            Ok((0, connected)) if connected >= n as u64 => return Some((0, connected)),
            Ok(seen) => last = Some(seen),
            Err(e) => eprintln!("[soak] devices API: {e:#}"),
        }
    }
    last
}
