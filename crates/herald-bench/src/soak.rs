//! The soak (issue 14): a churning population of WebSocket and polling clients with slow readers among them,
//! mailbox devices that come and go, and steady publishes through the HTTP API, for minutes. Afterwards every
//! device drains its mailbox, and the run checks that no mailbox entry was lost or duplicated, nothing is left
//! pending, the server's RSS at the end of the run is where it was after the warm-up, and its file handles
//! and sockets are back where they started once everyone left.

mod api;
mod conn;
mod crowd;
mod devices;
mod feed;
mod ledger;
mod sampler;
mod summary;
mod trim;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::stats::{micros_histogram, Latency};
use crate::target::Target;
use crate::Outcome;
use conn::{Conn, Dial, Transport};

#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: usize,
    pub devices: usize,
    /// The churn, warm-up included.
    pub duration: Duration,
    /// Steady-state RSS is measured at its end.
    pub warmup: Duration,
    /// The population's first connects are spread over this long.
    pub ramp: Duration,
    pub polling_share: f64,
    pub slow_share: f64,
    /// Share of the normal clients that connect without a token (public room only).
    pub anonymous_share: f64,
    /// A client's life, in seconds (uniform).
    pub life: (f64, f64),
    /// A slow reader's stall, in seconds: longer than pingInterval + pingTimeout.
    pub stall: (f64, f64),
    pub device_online: (f64, f64),
    pub device_offline: (f64, f64),
    pub public_rate: f64,
    pub mailbox_rate: f64,
    /// Firehose requests per second, each a batch of `firehose_batch` messages of `firehose_size` bytes.
    pub firehose_rate: f64,
    pub firehose_batch: usize,
    pub firehose_size: usize,
    /// Mailbox publish lanes, one request at a time each.
    pub publishers: usize,
    pub connect_concurrency: usize,
    pub sample_every: Duration,
    /// Longest wait for the devices' mailboxes to drain at the end.
    pub drain: Duration,
    /// Wait after everyone left before the last RSS and handle counts (a dropped polling session lives until
    /// its ping timeout).
    pub settle: Duration,
    /// File handles the server may hold above its count before the run without it counting as a leak.
    pub fd_slack: u64,
    /// Also measure RSS right after `malloc_trim(0)` (through gdb) at the end of the warm-up, at the end of the
    /// run and after the teardown.
    pub gdb_trim: bool,
}

/// What every task of the run shares.
pub struct Ctx {
    pub target: Target,
    pub plan: Plan,
    pub stop_at: Instant,
    /// `42/<site>,[`: an event without an ack id.
    pub event_prefix: String,
    /// `42/<site>,`
    pub event_head: String,
    namespace: String,
    /// One HTTP client per source address, for polling; dropped with the context at the end.
    http: Vec<reqwest::Client>,
    connects: Semaphore,
    next: AtomicUsize,
    /// Handshake times (from the permit to the CONNECT answer), in µs.
    pub connect_latency: Mutex<Histogram<u64>>,
}

impl Ctx {
    fn new(target: &Target, plan: Plan, stop_at: Instant) -> anyhow::Result<Self> {
        let http = (0..target.source_count())
            .map(|i| {
                reqwest::Client::builder()
                    .local_address(target.source(i).ip())
                    .tcp_nodelay(true)
                    // Below herald's idle_timeout_ms (60 s): a pooled connection the server is closing as idle
                    // would fail the next request sent on it.
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build()
                    .context("building a polling HTTP client")
            })
            .collect::<anyhow::Result<_>>()?;
        let namespace = target.namespace();
        Ok(Ctx {
            target: target.clone(),
            connects: Semaphore::new(plan.connect_concurrency.max(1)),
            plan,
            stop_at,
            event_prefix: format!("42{namespace},["),
            event_head: format!("42{namespace},"),
            namespace,
            http,
            next: AtomicUsize::new(0),
            connect_latency: Mutex::new(micros_histogram()),
        })
    }

    pub fn transport(&self) -> Transport {
        devices::pick(self.plan.polling_share)
    }

    /// Opens one client (at most `connect_concurrency` handshakes at once), from the next source address.
    pub async fn open(&self, auth: &Value, transport: Transport) -> anyhow::Result<Conn> {
        let _permit = self.connects.acquire().await?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dial = Dial {
            server: self.target.addr,
            source: self.target.source(n),
            http: &self.http[n % self.http.len()],
            namespace: &self.namespace,
            auth,
        };
        let started = Instant::now();
        let conn = tokio::time::timeout(Duration::from_secs(30), Conn::open(&dial, transport))
            .await
            .context("connect timed out")??;
        if let Ok(mut h) = self.connect_latency.lock() {
            h.saturating_record(started.elapsed().as_micros() as u64);
        }
        Ok(conn)
    }

    pub fn connect_latency(&self) -> Latency {
        match self.connect_latency.lock() {
            Ok(h) => Latency::of(&h),
            Err(poisoned) => Latency::of(&poisoned.into_inner()),
        }
    }
}

pub async fn soak(target: &Target, pid: u32, plan: Plan) -> anyhow::Result<Outcome> {
    let before = summary::Server::now(pid)?;
    let started = Instant::now();
    let stop_at = started + plan.duration;
    let warmup = plan.warmup.min(plan.duration / 2);
    let ctx = Arc::new(Ctx::new(target, plan.clone(), stop_at)?);
    let ledger = Arc::new(ledger::Ledger::new(plan.devices));
    let crowd = Arc::new(crowd::CrowdStats::default());
    let device_stats = Arc::new(devices::DeviceStats::default());
    let feed_stats = Arc::new(feed::FeedStats::default());
    let samples = Arc::new(sampler::Samples::default());
    let (release, release_rx) = watch::channel(false);
    let (stop_sampling, sampling) = watch::channel(false);
    let sampler_task = tokio::spawn(
        sampler::Sampler {
            pid,
            every: plan.sample_every,
            started,
            samples: Arc::clone(&samples),
            crowd: Arc::clone(&crowd),
            devices: Arc::clone(&device_stats),
            feed: Arc::clone(&feed_stats),
        }
        .run(sampling),
    );
    eprintln!(
        "[soak] {} clients ({:.0}% polling, {:.0}% slow), {} mailbox devices, {}s ({}s warm-up); server RSS {} KiB, \
         {} fds",
        plan.clients,
        plan.polling_share * 100.0,
        plan.slow_share * 100.0,
        plan.devices,
        plan.duration.as_secs(),
        warmup.as_secs(),
        before.rss_kib,
        before.fds
    );
    let device_tasks: Vec<JoinHandle<()>> = (0..plan.devices)
        .map(|k| {
            tokio::spawn(
                devices::Device {
                    k,
                    ctx: Arc::clone(&ctx),
                    ledger: Arc::clone(&ledger),
                    stats: Arc::clone(&device_stats),
                    release: release_rx.clone(),
                }
                .run(),
            )
        })
        .collect();
    let crowd_tasks: Vec<JoinHandle<()>> = (0..plan.clients)
        .map(|i| tokio::spawn(crowd::slot(i, Arc::clone(&ctx), Arc::clone(&crowd))))
        .collect();
    let feed = Arc::new(feed::Feed::new(&ctx)?);
    let mut feed_tasks = vec![
        tokio::spawn(feed::public(
            Arc::clone(&feed),
            Arc::clone(&ctx),
            Arc::clone(&feed_stats),
        )),
        tokio::spawn(feed::firehose(
            Arc::clone(&feed),
            Arc::clone(&ctx),
            Arc::clone(&crowd),
            Arc::clone(&feed_stats),
        )),
    ];
    for lane in 0..plan.publishers.max(1) {
        feed_tasks.push(tokio::spawn(feed::mailbox_lane(
            lane,
            Arc::clone(&feed),
            Arc::clone(&ctx),
            Arc::clone(&ledger),
            Arc::clone(&device_stats),
            Arc::clone(&feed_stats),
        )));
    }
    let cpu_start = summary::Cpu::now(pid)?;
    tokio::time::sleep_until(started + warmup).await;
    let mut trimmed = summary::Trimmed::default();
    if plan.gdb_trim {
        trimmed.steady = trim::rss_after_trim(pid).await;
    }
    eprintln!("[soak] warm-up over");
    // The run's last sample and the trim come just before the churn stops, with the population connected.
    tokio::time::sleep_until(stop_at - Duration::from_secs(2)).await;
    if plan.gdb_trim {
        trimmed.end = trim::rss_after_trim(pid).await;
    }
    tokio::time::sleep_until(stop_at).await;
    eprintln!("[soak] churn stopped: every client leaves, every device drains its mailbox");
    for task in crowd_tasks.into_iter().chain(feed_tasks) {
        task.await?;
    }
    let cpu = summary::Cpu::now(pid)?.since(&cpu_start, started.elapsed());
    let connect_latency = ctx.connect_latency();
    let api = api::Api::new(&ctx)?;
    let drain_started = Instant::now();
    let drained = api::drain(&api, &device_stats, plan.devices, plan.drain).await;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    release.send_replace(true);
    for task in device_tasks {
        task.await?;
    }
    drop(feed);
    drop(ctx);
    // Sessions whose client dropped its connection live until their ping timeout.
    let settle_until = Instant::now() + plan.settle;
    let mut sockets_left = api.sockets().await.ok();
    while sockets_left != Some(0) && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sockets_left = api.sockets().await.ok();
    }
    let pending_after = api.pending(plan.devices).await.ok();
    drop(api);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = summary::Server::now(pid)?;
    if plan.gdb_trim {
        trimmed.after = trim::rss_after_trim(pid).await;
    }
    stop_sampling.send_replace(true);
    sampler_task.await?;
    Ok(summary::Run {
        plan: &plan,
        warmup,
        before,
        after,
        trimmed,
        cpu,
        connect_latency,
        samples: &samples.all(),
        crowd: &crowd,
        devices: &device_stats,
        feed: &feed_stats,
        verdict: ledger.verdict(),
        drained,
        drain_secs,
        pending_after,
        sockets_left,
    }
    .outcome())
}
