//! Publishing to subscribers: one shared room, or one personal room per user. Reports deliveries per second,
//! loss, order, latency and the CPU each delivered message cost the server and the generator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::connect::open_all;
use crate::procfs;
use crate::publish::Publisher;
use crate::stats::Deliveries;
use crate::target::Target;
use crate::Outcome;

#[derive(Debug, Clone)]
pub struct Plan {
    pub subs: usize,
    /// Each subscriber in its own room `user_<i>` (true), or every subscriber in `room` (false).
    pub personal: bool,
    pub messages: usize,
    pub size: usize,
    /// Messages per second over all publishers; 0 publishes as fast as the window allows.
    pub rate: f64,
    pub publishers: usize,
    /// Unpaced runs publish at most this many messages ahead of the deliveries.
    pub window: usize,
    pub connect_concurrency: usize,
    /// How long to wait for missing deliveries once nothing arrives any more.
    pub drain: Duration,
}

impl Plan {
    fn per_message(&self) -> u64 {
        if self.personal {
            1
        } else {
            self.subs as u64
        }
    }

    fn room(&self, message: usize) -> String {
        if self.personal {
            format!("user_{}", message % self.subs)
        } else {
            "room".to_string()
        }
    }

    /// The publisher of a message. Messages to one personal room all go through one publisher, so their order is
    /// defined; in one room, message `i` is publisher `i % publishers`'s, and order holds per publisher.
    fn publisher_of(&self, message: usize) -> usize {
        let room = if self.personal {
            message % self.subs
        } else {
            message
        };
        room % self.publishers
    }
}

pub async fn fanout(target: &Target, pid: u32, plan: Plan) -> anyhow::Result<Outcome> {
    let plan = Plan {
        publishers: plan.publishers.max(1),
        subs: plan.subs.max(1),
        ..plan
    };
    // In one room every subscriber hears every publisher; in personal rooms each hears one.
    let lanes = if plan.personal { 1 } else { plan.publishers };
    let deliveries = Arc::new(Deliveries::new(lanes));
    let personal = plan.personal;
    let opened = open_all(
        target,
        plan.subs,
        plan.connect_concurrency,
        &deliveries,
        |i| {
            if personal {
                vec![format!("user_{i}")]
            } else {
                vec!["room".to_string()]
            }
        },
    )
    .await?;
    let publisher = Arc::new(Publisher::new(target, plan.size)?);
    let expected = plan.messages as u64 * plan.per_message();
    let errors = Arc::new(AtomicU64::new(0));
    let plan = Arc::new(plan);

    let cpu_before = procfs::cpu_secs(pid)?;
    let own_before = procfs::own_cpu_secs()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..plan.publishers)
        .map(|k| {
            tokio::spawn(publish_share(
                k,
                Arc::clone(&plan),
                Arc::clone(&publisher),
                Arc::clone(&deliveries),
                Arc::clone(&errors),
                started,
            ))
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let finished = wait_for_deliveries(&deliveries, expected, plan.drain).await;
    let elapsed = finished.duration_since(started).as_secs_f64();
    let server_cpu = procfs::cpu_secs(pid)? - cpu_before;
    let own_cpu = procfs::own_cpu_secs()? - own_before;
    drop(opened.clients);

    let received = deliveries.received();
    let duplicates = deliveries.duplicates.load(Ordering::Relaxed);
    let lost = expected.saturating_sub(received - duplicates);
    let out_of_order = deliveries.out_of_order.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let latency = deliveries.latency();
    let delivered = received.max(1) as f64;
    let rate_label = if plan.rate > 0.0 {
        format!("{} msg/s", plan.rate)
    } else {
        "unpaced".into()
    };
    let human = format!(
        "fanout: {} subscribers ({}), {} messages of {} bytes, {rate_label}: delivered {received}/{expected} in \
         {elapsed:.2}s = {:.0} msg/s; lost {lost}, duplicates {duplicates}, out of order {out_of_order}, publish \
         errors {errors}; latency {}; server CPU {server_cpu:.2}s = {:.3} us/msg; generator CPU {own_cpu:.2}s = \
         {:.3} us/msg",
        plan.subs,
        if plan.personal { "personal rooms" } else { "one room" },
        plan.messages,
        plan.size,
        received as f64 / elapsed,
        latency.describe(),
        server_cpu * 1e6 / delivered,
        own_cpu * 1e6 / delivered,
    );
    Ok(Outcome {
        human,
        metrics: json!({
            "expected": expected,
            "delivered": received,
            "lost": lost,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "publish_errors": errors,
            "disconnects": deliveries.disconnects.load(Ordering::Relaxed),
            "secs": elapsed,
            "publish_secs": publish_secs,
            "msgs_per_sec": received as f64 / elapsed,
            "latency_us": latency,
            "server_cpu_us_per_msg": server_cpu * 1e6 / delivered,
            "own_cpu_us_per_msg": own_cpu * 1e6 / delivered,
        }),
    })
}

/// Publisher `k` sends its share of the messages, on schedule (paced) or within the window (unpaced).
async fn publish_share(
    k: usize,
    plan: Arc<Plan>,
    publisher: Arc<Publisher>,
    deliveries: Arc<Deliveries>,
    errors: Arc<AtomicU64>,
    started: Instant,
) {
    let per_message = plan.per_message();
    for i in (0..plan.messages).filter(|&i| plan.publisher_of(i) == k) {
        if plan.rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / plan.rate);
            tokio::time::sleep_until(due.into()).await;
        } else {
            let floor = (i + 1).saturating_sub(plan.window) as u64 * per_message;
            while deliveries.received() < floor {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if let Err(e) = publisher.send(&plan.room(i), i as u64).await {
            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("publish error: {e:#}");
            }
        }
    }
}

/// Waits until `expected` deliveries arrived, or nothing arrived for `drain`; returns when the last one came.
async fn wait_for_deliveries(deliveries: &Deliveries, expected: u64, drain: Duration) -> Instant {
    let mut seen = deliveries.received();
    let mut last_progress = Instant::now();
    while seen < expected && last_progress.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = deliveries.received();
        if now != seen {
            seen = now;
            last_progress = Instant::now();
        }
    }
    last_progress
}
