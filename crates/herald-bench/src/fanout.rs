//! Publishing to subscribers: one shared room, or one personal room per user. Reports deliveries per second,
//! loss, order, latency and the CPU each delivered message cost the server and the generator.
//!
//! The same run faces a cluster (the `cluster` scenario): subscribers split evenly over the nodes (client `i` on
//! node `i % nodes`), publishes through node 1 or each node in turn, and the CPU of every node summed. Latency
//! is also kept per node, so the nodes that only hear a publish through the cluster's bus show apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::connect::open_all;
use crate::hooks::Hooks;
use crate::procfs;
use crate::publish::Publisher;
use crate::stats::{count_over, latency_over, received_over, Deliveries};
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
    /// Which node each publish goes through (with several nodes).
    pub via: Via,
    /// Run when the subscribers are connected and when the deliveries are in (`--measure-start`, `-end`).
    pub hooks: Hooks,
}

/// The node a publish goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// Every publish through node 1: the other nodes hear them through the cluster's bus.
    First,
    /// Message `i` through node `i % nodes`.
    Alternate,
}

/// The servers of one run and the processes whose CPU is counted.
pub struct Nodes<'a> {
    pub targets: &'a [Target],
    /// One pid per target.
    pub pids: &'a [u32],
    /// Processes the nodes share (the cluster's Redis), counted apart from the server CPU.
    pub shared_pid: Option<u32>,
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

    fn node_of(&self, message: usize, nodes: usize) -> usize {
        match self.via {
            Via::First => 0,
            Via::Alternate => message % nodes.max(1),
        }
    }
}

pub async fn fanout(target: &Target, pid: u32, plan: Plan) -> anyhow::Result<Outcome> {
    let nodes = Nodes {
        targets: std::slice::from_ref(target),
        pids: &[pid],
        shared_pid: None,
    };
    fanout_over(&nodes, plan).await
}

/// The fan-out run against every node of `nodes` (one server is a cluster of one).
pub async fn fanout_over(nodes: &Nodes<'_>, plan: Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        !nodes.targets.is_empty() && nodes.targets.len() == nodes.pids.len(),
        "one pid per node"
    );
    let plan = Plan {
        publishers: plan.publishers.max(1),
        subs: plan.subs.max(1),
        ..plan
    };
    // In one room every subscriber hears every publisher; in personal rooms each hears one.
    let lanes = if plan.personal { 1 } else { plan.publishers };
    let node_count = nodes.targets.len();
    let deliveries: Vec<Arc<Deliveries>> = (0..node_count)
        .map(|_| Arc::new(Deliveries::new(lanes)))
        .collect();
    let personal = plan.personal;
    let opened = open_all(
        nodes.targets,
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
    let publisher = Arc::new(Publisher::new(nodes.targets, plan.size)?);
    let expected = plan.messages as u64 * plan.per_message();
    let errors = Arc::new(AtomicU64::new(0));
    let plan = Arc::new(plan);
    let deliveries = Arc::new(deliveries);

    plan.hooks.start().await?;
    let cpu_before = procfs::cpu_secs_each(nodes.pids)?;
    let shared_before = nodes.shared_pid.map(procfs::cpu_secs).transpose()?;
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
                node_count,
            ))
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let finished = wait_for_deliveries(&deliveries, expected, plan.drain).await;
    let elapsed = finished.duration_since(started).as_secs_f64();
    let node_cpu: Vec<f64> = procfs::cpu_secs_each(nodes.pids)?
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    let shared_cpu = match (nodes.shared_pid, shared_before) {
        (Some(pid), Some(before)) => Some(procfs::cpu_secs(pid)? - before),
        _ => None,
    };
    let server_cpu: f64 = node_cpu.iter().sum();
    let own_cpu = procfs::own_cpu_secs()? - own_before;
    plan.hooks.end().await?;
    drop(opened.clients);

    let received = received_over(&deliveries);
    let duplicates = count_over(&deliveries, |d| &d.duplicates);
    let lost = expected.saturating_sub(received - duplicates);
    let out_of_order = count_over(&deliveries, |d| &d.out_of_order);
    let disconnects = count_over(&deliveries, |d| &d.disconnects);
    let errors = errors.load(Ordering::Relaxed);
    let latency = latency_over(&deliveries);
    let delivered = received.max(1) as f64;
    let rate_label = if plan.rate > 0.0 {
        format!("{} msg/s", plan.rate)
    } else {
        "unpaced".into()
    };
    let mut human = format!(
        "{}: {} subscribers ({}{}{}), {} messages of {} bytes, {rate_label}: delivered {received}/{expected} in \
         {elapsed:.2}s = {:.0} msg/s; lost {lost}, duplicates {duplicates}, out of order {out_of_order}, publish \
         errors {errors}; latency {}; server CPU {server_cpu:.2}s = {:.3} us/msg; generator CPU {own_cpu:.2}s = \
         {:.3} us/msg",
        if node_count > 1 { "cluster" } else { "fanout" },
        plan.subs,
        if plan.personal { "personal rooms" } else { "one room" },
        nodes.targets[0].transport.label(),
        if node_count > 1 {
            format!(" over {node_count} nodes, publishes via {:?}", plan.via).to_lowercase()
        } else {
            String::new()
        },
        plan.messages,
        plan.size,
        received as f64 / elapsed,
        latency.describe(),
        server_cpu * 1e6 / delivered,
        own_cpu * 1e6 / delivered,
    );
    let mut metrics = json!({
            "expected": expected,
            "delivered": received,
            "lost": lost,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "publish_errors": errors,
            "disconnects": disconnects,
            "secs": elapsed,
            "publish_secs": publish_secs,
            "msgs_per_sec": received as f64 / elapsed,
            "latency_us": latency,
            "server_cpu_us_per_msg": server_cpu * 1e6 / delivered,
            "own_cpu_us_per_msg": own_cpu * 1e6 / delivered,
    });
    if node_count > 1 {
        // Per node: the CPU it spent per delivery of the whole run, and what its own clients saw.
        let per_node: Vec<_> = (0..node_count)
            .map(|n| {
                json!({
                    "delivered": deliveries[n].received(),
                    "cpu_secs": node_cpu[n],
                    "cpu_us_per_msg": node_cpu[n] * 1e6 / delivered,
                    "latency_us": deliveries[n].latency(),
                })
            })
            .collect();
        for (n, node) in per_node.iter().enumerate() {
            human.push_str(&format!(
                "; node {}: {} deliveries, CPU {:.2}s, latency p50 {:.2}ms p99 {:.2}ms",
                n + 1,
                node["delivered"],
                node_cpu[n],
                deliveries[n].latency().p50 as f64 / 1000.0,
                deliveries[n].latency().p99 as f64 / 1000.0,
            ));
        }
        metrics["nodes"] = json!(per_node);
        metrics["via"] = json!(format!("{:?}", plan.via).to_lowercase());
        // The clients of the nodes other than node 1, which hear node 1's publishes through the bus.
        metrics["remote_latency_us"] = json!(latency_over(&deliveries[1..]));
    }
    if let Some(shared) = shared_cpu {
        human.push_str(&format!(
            "; Redis CPU {shared:.2}s = {:.3} us/msg",
            shared * 1e6 / delivered
        ));
        metrics["redis_cpu_us_per_msg"] = json!(shared * 1e6 / delivered);
        metrics["server_and_redis_cpu_us_per_msg"] = json!((server_cpu + shared) * 1e6 / delivered);
    }
    Ok(Outcome { human, metrics })
}

/// Publisher `k` sends its share of the messages, on schedule (paced) or within the window (unpaced).
async fn publish_share(
    k: usize,
    plan: Arc<Plan>,
    publisher: Arc<Publisher>,
    deliveries: Arc<Vec<Arc<Deliveries>>>,
    errors: Arc<AtomicU64>,
    started: Instant,
    nodes: usize,
) {
    let per_message = plan.per_message();
    let mut stalled = false;
    for i in (0..plan.messages).filter(|&i| plan.publisher_of(i) == k) {
        if plan.rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / plan.rate);
            tokio::time::sleep_until(due.into()).await;
        } else {
            // A message that never arrives must not stall the run: past `drain` without progress, this
            // publisher stops waiting for the window and the count shows the loss.
            let floor = (i + 1).saturating_sub(plan.window) as u64 * per_message;
            let (mut seen, mut progress) = (received_over(&deliveries), Instant::now());
            while !stalled && seen < floor {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let now = received_over(&deliveries);
                if now != seen {
                    (seen, progress) = (now, Instant::now());
                }
                stalled = progress.elapsed() >= plan.drain;
            }
        }
        let node = plan.node_of(i, nodes);
        if let Err(e) = publisher.send(node, &plan.room(i), i as u64).await {
            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("publish error: {e:#}");
            }
            // A timeout is a server that no longer answers (or accepts): the rest would time out too.
            if e.chain().any(|cause| {
                cause
                    .downcast_ref::<reqwest::Error>()
                    .is_some_and(reqwest::Error::is_timeout)
            }) {
                eprintln!("publisher {k} stops: the server did not answer in time");
                break;
            }
        }
    }
}

/// Waits until `expected` deliveries arrived, or nothing arrived for `drain`; returns when the last one came.
async fn wait_for_deliveries(
    deliveries: &[Arc<Deliveries>],
    expected: u64,
    drain: Duration,
) -> Instant {
    let mut seen = received_over(deliveries);
    let mut last_progress = Instant::now();
    while seen < expected && last_progress.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = received_over(deliveries);
        if now != seen {
            seen = now;
            last_progress = Instant::now();
        }
    }
    last_progress
}
