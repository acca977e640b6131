//! The publishers, all through `POST /api/v1/sites/{site}/publish` at steady rates until the churn stops: the
//! public room (live, every client), each mailbox user's room (durable, one sequence number per user, one lane
//! per user so a user's entries are appended in sequence order), and the firehose: batches of 1 KB messages to
//! the socket ids of the slow readers (`/batch`), so their outboxes fill while they do not read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::time::{Instant, MissedTickBehavior};

use super::crowd::CrowdStats;
use super::devices::DeviceStats;
use super::ledger::{Answer, Ledger};
use super::Ctx;
use crate::stats::{micros_histogram, now_us, Latency};

pub struct FeedStats {
    pub public_ok: AtomicU64,
    /// Sockets the public publishes were queued for, summed.
    pub public_matched: AtomicU64,
    pub mailbox_ok: AtomicU64,
    /// Mailbox entries handed straight to a connected device, summed.
    pub mailbox_online: AtomicU64,
    pub firehose_ok: AtomicU64,
    pub firehose_matched: AtomicU64,
    pub errors: AtomicU64,
    /// Time to a mailbox publish's answer (durable), in µs.
    pub mailbox_answer: Mutex<Histogram<u64>>,
}

impl Default for FeedStats {
    fn default() -> Self {
        FeedStats {
            public_ok: AtomicU64::new(0),
            public_matched: AtomicU64::new(0),
            mailbox_ok: AtomicU64::new(0),
            mailbox_online: AtomicU64::new(0),
            firehose_ok: AtomicU64::new(0),
            firehose_matched: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            mailbox_answer: Mutex::new(micros_histogram()),
        }
    }
}

impl FeedStats {
    pub fn mailbox_latency(&self) -> Latency {
        match self.mailbox_answer.lock() {
            Ok(h) => Latency::of(&h),
            Err(poisoned) => Latency::of(&poisoned.into_inner()),
        }
    }

    fn error(&self, what: &str, e: &anyhow::Error) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("[soak] {what} publish: {e:#}");
        }
    }
}

pub struct Feed {
    http: reqwest::Client,
    url: String,
    batch_url: String,
    authorization: String,
}

impl Feed {
    pub fn new(ctx: &Ctx) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the publish client")?;
        let target = &ctx.target;
        let base = format!("http://{}/api/v1/sites/{}", target.addr, target.site);
        Ok(Feed {
            http,
            url: format!("{base}/publish"),
            batch_url: format!("{base}/batch"),
            authorization: format!("Bearer {}", target.api_key),
        })
    }

    /// Publishes `body` and returns the API's answer `{"matched", "queued", "online"}`.
    async fn post(&self, url: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(url)
            .header("authorization", &self.authorization)
            .json(body)
            .send()
            .await
            .context("POST publish")?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            bail!("publish answered {status}: {text}");
        }
        serde_json::from_str(&text).context("publish answer")
    }
}

fn ticker(rate: f64) -> Option<tokio::time::Interval> {
    if rate <= 0.0 {
        return None;
    }
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(interval)
}

pub async fn public(feed: Arc<Feed>, ctx: Arc<Ctx>, stats: Arc<FeedStats>) {
    let Some(mut tick) = ticker(ctx.plan.public_rate) else {
        return;
    };
    let mut seq = 0u64;
    while tick.tick().await < ctx.stop_at {
        let body = json!({"rooms": ["public"], "event": "m", "args": [{"s": seq, "t": now_us()}]});
        seq += 1;
        match feed.post(&feed.url, &body).await {
            Ok(answer) => {
                stats.public_ok.fetch_add(1, Ordering::Relaxed);
                let matched = answer["matched"].as_u64().unwrap_or(0);
                stats.public_matched.fetch_add(matched, Ordering::Relaxed);
            }
            Err(e) => stats.error("public", &e),
        }
    }
}

/// Lane `lane` of `lanes` publishes to users `lane`, `lane + lanes`, … in turn, once every device exists.
pub async fn mailbox_lane(
    lane: usize,
    feed: Arc<Feed>,
    ctx: Arc<Ctx>,
    ledger: Arc<Ledger>,
    devices: Arc<DeviceStats>,
    stats: Arc<FeedStats>,
) {
    let plan = &ctx.plan;
    let lanes = plan.publishers.max(1);
    let users: Vec<usize> = (lane..plan.devices).step_by(lanes).collect();
    let Some(mut tick) = ticker(plan.mailbox_rate / lanes as f64) else {
        return;
    };
    if users.is_empty() {
        return;
    }
    // A publish to a user with no device yet queues nothing; wait (a while) until every device connected once.
    let wait_until = Instant::now() + Duration::from_secs(60);
    while devices.registered.load(Ordering::Relaxed) < plan.devices as u64
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut n = 0usize;
    while tick.tick().await < ctx.stop_at {
        let user = users[n % users.len()];
        n += 1;
        let seq = ledger.next_seq(user);
        let body = json!({
            "rooms": [format!("user_d{user}")],
            "event": "m",
            "args": [{"u": user, "s": seq, "t": now_us()}],
        });
        let started = Instant::now();
        let answer = match feed.post(&feed.url, &body).await {
            Ok(answer) => {
                stats.mailbox_ok.fetch_add(1, Ordering::Relaxed);
                let online = answer["online"].as_u64().unwrap_or(0);
                stats.mailbox_online.fetch_add(online, Ordering::Relaxed);
                if let Ok(mut h) = stats.mailbox_answer.lock() {
                    h.saturating_record(started.elapsed().as_micros() as u64);
                }
                if answer["queued"].as_u64().unwrap_or(0) > 0 {
                    Answer::Queued
                } else {
                    Answer::NotQueued
                }
            }
            Err(e) => {
                stats.error("mailbox", &e);
                Answer::Failed
            }
        };
        ledger.answered(user, seq, answer);
    }
}

pub async fn firehose(
    feed: Arc<Feed>,
    ctx: Arc<Ctx>,
    crowd: Arc<CrowdStats>,
    stats: Arc<FeedStats>,
) {
    let Some(mut tick) = ticker(ctx.plan.firehose_rate) else {
        return;
    };
    let padding = "x".repeat(ctx.plan.firehose_size);
    // Several in flight, so the rate holds when answers are slow; order does not matter here.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    while tick.tick().await < ctx.stop_at {
        let sockets = crowd.slow_sids();
        if sockets.is_empty() {
            continue;
        }
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        // A batch of messages per request: many frames per second to each slow reader at few requests.
        let message = json!({"sockets": sockets, "event": "f", "args": [{"p": padding}]});
        let body = json!({ "messages": vec![message; ctx.plan.firehose_batch.max(1)] });
        let (feed, stats) = (Arc::clone(&feed), Arc::clone(&stats));
        tasks.spawn(async move {
            match feed.post(&feed.batch_url, &body).await {
                Ok(answer) => {
                    let results = answer["results"].as_array().map_or(&[][..], Vec::as_slice);
                    stats
                        .firehose_ok
                        .fetch_add(results.len() as u64, Ordering::Relaxed);
                    let matched: u64 = results.iter().filter_map(|r| r["matched"].as_u64()).sum();
                    stats.firehose_matched.fetch_add(matched, Ordering::Relaxed);
                }
                Err(e) => stats.error("firehose", &e),
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
