//! Opening many clients: the idle-memory scenario (RSS per connection) and the connection storm (connects/s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{stream, StreamExt};
use serde_json::json;

use crate::backend::{AuthKey, Backend};
use crate::client::Client;
use crate::hooks::Hooks;
use crate::procfs;
use crate::stats::{micros_histogram, Deliveries, Latency};
use crate::target::Target;
use crate::Outcome;

/// Clients opened together, and what opening them cost.
pub struct Opened {
    pub clients: Vec<Client>,
    pub secs: f64,
    pub latency: Latency,
}

/// Opens `n` clients, `concurrency` handshakes at a time; client `i` is user `u<i>` with the rooms `rooms(i)`,
/// connected to node `i % nodes.len()` and recording into that node's `deliveries`. Tokens are minted first so
/// that signing them is not timed.
pub async fn open_all(
    nodes: &[Target],
    n: usize,
    concurrency: usize,
    deliveries: &[Arc<Deliveries>],
    rooms: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<Opened> {
    anyhow::ensure!(
        !nodes.is_empty() && nodes.len() == deliveries.len(),
        "one Deliveries per node"
    );
    let tokens = (0..n)
        .map(|i| nodes[0].token(&format!("u{i}"), &rooms(i)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut results = stream::iter(tokens.iter().enumerate())
        .map(|(i, token)| async move {
            let began = Instant::now();
            let node = i % nodes.len();
            let client = Client::connect(&nodes[node], i, token, Arc::clone(&deliveries[node]))
                .await
                .with_context(|| format!("client {i} (node {})", node + 1));
            (client, began.elapsed())
        })
        .buffer_unordered(concurrency.max(1));
    let mut clients = Vec::with_capacity(n);
    let mut histogram = micros_histogram();
    while let Some((client, took)) = results.next().await {
        clients.push(client?);
        histogram.saturating_record(took.as_micros() as u64);
    }
    Ok(Opened {
        clients,
        secs: started.elapsed().as_secs_f64(),
        latency: Latency::of(&histogram),
    })
}

/// The site's auth webhook, when a scenario runs one: the bench backend answering `GET /auth`.
pub struct Webhook(Backend);

impl Webhook {
    /// Starts the webhook at `addr`, if given, for tokens signed with `secret`; each answer takes `delay`.
    pub fn start(
        addr: Option<std::net::SocketAddr>,
        secret: &str,
        delay: Duration,
    ) -> anyhow::Result<Option<Self>> {
        addr.map(|addr| {
            Backend::start_with(addr, Some(AuthKey::hs256(secret, delay)?)).map(Webhook)
        })
        .transpose()
    }

    /// The connections the server opened to the webhook and its answers, for the JSON record; fails when a
    /// client was refused or the server never called (its site does not use this webhook).
    fn metrics(&self, n: usize) -> anyhow::Result<serde_json::Value> {
        use std::sync::atomic::Ordering::Relaxed;
        let calls = &self.0.calls;
        let answered = calls.auth_answered.load(Relaxed);
        let refused = calls.auth_refused.load(Relaxed);
        anyhow::ensure!(
            answered >= n as u64 && refused == 0,
            "the webhook answered {answered} auth calls and refused {refused} for {n} clients; does the \
             server's site use it (bench/herald-webhook.yml)?"
        );
        Ok(json!({
            "calls": answered,
            "accepted": calls.accepted.load(Relaxed),
            "peak_open": calls.peak_open.load(Relaxed),
            "open_after": calls.open.load(Relaxed),
        }))
    }

    fn describe(metrics: &serde_json::Value) -> String {
        format!(
            "; webhook: {} calls over {} connections opened, at most {} open at once, {} still open",
            metrics["calls"], metrics["accepted"], metrics["peak_open"], metrics["open_after"]
        )
    }
}

/// `n` connections that only answer heartbeats: server RSS growth per connection, after `settle`.
pub async fn idle(
    target: &Target,
    pid: u32,
    n: usize,
    concurrency: usize,
    settle: Duration,
    webhook: Option<&Webhook>,
) -> anyhow::Result<Outcome> {
    let deliveries = Arc::new(Deliveries::default());
    let before = procfs::rss_kib(pid)?;
    let opened = open_all(
        std::slice::from_ref(target),
        n,
        concurrency,
        std::slice::from_ref(&deliveries),
        |_| Vec::new(),
    )
    .await?;
    tokio::time::sleep(settle).await;
    let after = procfs::rss_kib(pid)?;
    drop(opened.clients);
    let per_conn_kib = after.saturating_sub(before) as f64 / n as f64;
    let mut human = format!(
        "idle: {n} connections in {:.2}s ({:.0}/s); server RSS {before} KiB -> {after} KiB = {per_conn_kib:.2} KiB \
         per connection",
        opened.secs,
        n as f64 / opened.secs
    );
    let mut metrics = json!({
        "conns": n,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": per_conn_kib,
        "connects_per_sec": n as f64 / opened.secs,
    });
    if let Some(webhook) = webhook {
        let seen = webhook.metrics(n)?;
        human.push_str(&Webhook::describe(&seen));
        metrics["webhook"] = seen;
    }
    Ok(Outcome { human, metrics })
}

/// `n` clients connecting `concurrency` at a time: connects per second, connect latency, server CPU per connect.
/// `hooks` run before the first connect and after the last, while every client is still connected.
pub async fn storm(
    target: &Target,
    pid: u32,
    n: usize,
    concurrency: usize,
    webhook: Option<&Webhook>,
    hooks: &Hooks,
) -> anyhow::Result<Outcome> {
    let deliveries = Arc::new(Deliveries::default());
    hooks.start().await?;
    let cpu_before = procfs::cpu_secs(pid)?;
    let own_before = procfs::own_cpu_secs()?;
    let opened = open_all(
        std::slice::from_ref(target),
        n,
        concurrency,
        std::slice::from_ref(&deliveries),
        |i| vec![format!("user_{i}")],
    )
    .await?;
    let server_cpu = procfs::cpu_secs(pid)? - cpu_before;
    let own_cpu = procfs::own_cpu_secs()? - own_before;
    hooks.end().await?;
    drop(opened.clients);
    let rate = n as f64 / opened.secs;
    let mut human = format!(
        "storm: {n} connections, {concurrency} at a time, in {:.2}s = {rate:.0} connects/s; connect latency {}; \
         server CPU {:.1} us per connect; generator CPU {own_cpu:.2}s",
        opened.secs,
        opened.latency.describe(),
        server_cpu * 1e6 / n as f64,
    );
    let mut metrics = json!({
        "conns": n,
        "connects_per_sec": rate,
        "connect_latency_us": opened.latency,
        "server_cpu_us_per_connect": server_cpu * 1e6 / n as f64,
        "own_cpu_secs": own_cpu,
    });
    if let Some(webhook) = webhook {
        let seen = webhook.metrics(n)?;
        human.push_str(&Webhook::describe(&seen));
        metrics["webhook"] = seen;
    }
    Ok(Outcome { human, metrics })
}
