//! The cost of a polling request that reaches a node other than the one holding its session (the
//! `cluster-poll` scenario). Each client opens its Engine.IO session on node 1; then every request of the
//! session goes to node 1 (`direct`) or to node 2 (`forwarded`: herald forwards it to node 1, since sids name
//! their node; servers that need sticky sessions refuse it).
//!
//! A round is: `POST /send` to the client's own room through node 1 (so the session has one message queued),
//! then, timed, a polling POST carrying one client event and a polling GET that returns the message. Reported:
//! the POST+GET round trip, and the server CPU per round of both nodes together; the difference between the
//! two variants is what forwarding costs, as the publish is the same in both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;

use crate::fanout::Nodes;
use crate::polling::{get, post};
use crate::procfs;
use crate::publish::Publisher;
use crate::stats::{micros_histogram, Latency};
use crate::target::Target;
use crate::Outcome;

#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: usize,
    pub rounds: usize,
    /// Every request after the handshake to node 2 instead of node 1.
    pub forward: bool,
}

#[derive(Deserialize)]
struct Open {
    sid: String,
}

/// What all clients of one run share.
struct Shared {
    round_trips: Mutex<Histogram<u64>>,
    rounds: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

pub async fn poll_forward(nodes: &Nodes<'_>, plan: Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        nodes.targets.len() >= 2 && nodes.targets.len() == nodes.pids.len(),
        "cluster-poll needs two nodes, each with its pid"
    );
    let (home, other) = (&nodes.targets[0], &nodes.targets[1]);
    let via = if plan.forward { other } else { home };
    let publisher = Publisher::new(std::slice::from_ref(home), 100)?;
    let tokens = (0..plan.clients)
        .map(|c| home.token(&format!("u{c}"), &[room(c)]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shared = Shared {
        round_trips: Mutex::new(micros_histogram()),
        rounds: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
    };

    let cpu_before = procfs::cpu_secs_each(nodes.pids)?;
    let own_before = procfs::own_cpu_secs()?;
    let started = Instant::now();
    stream::iter(tokens.iter().enumerate())
        .for_each_concurrent(None, |(c, token)| {
            let (shared, publisher) = (&shared, &publisher);
            async move {
                if let Err(e) = client(home, via, c, token, plan.rounds, publisher, shared).await {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = shared.first_error.lock() {
                        first.get_or_insert_with(|| format!("client {c}: {e:#}"));
                    }
                }
            }
        })
        .await;
    let secs = started.elapsed().as_secs_f64();
    let node_cpu: Vec<f64> = procfs::cpu_secs_each(nodes.pids)?
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    let server_cpu: f64 = node_cpu.iter().sum();
    let own_cpu = procfs::own_cpu_secs()? - own_before;

    let rounds = shared.rounds.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    let latency = match shared.round_trips.lock() {
        Ok(h) => Latency::of(&h),
        Err(poisoned) => Latency::of(&poisoned.into_inner()),
    };
    // None (null in the JSON, a dash in the tables) when no round completed.
    let per_round = |cpu: f64| (rounds > 0).then(|| cpu * 1e6 / rounds as f64);
    let mut human = format!(
        "cluster-poll ({}): {} clients x {} rounds: {rounds} rounds in {secs:.2}s = {:.0}/s; POST+GET {}; server \
         CPU {server_cpu:.2}s = {:.1} us/round (node 1 {:.2}s, node 2 {:.2}s); generator CPU {own_cpu:.2}s",
        if plan.forward { "forwarded" } else { "direct" },
        plan.clients,
        plan.rounds,
        rounds as f64 / secs,
        latency.describe(),
        per_round(server_cpu).unwrap_or(f64::NAN),
        node_cpu[0],
        node_cpu[1],
    );
    if failed > 0 {
        human.push_str(&format!(
            "; {failed} clients failed, first: {}",
            first_error.as_deref().unwrap_or("?")
        ));
    }
    Ok(Outcome {
        human,
        metrics: json!({
            "clients": plan.clients,
            "rounds": rounds,
            "expected_rounds": (plan.clients * plan.rounds) as u64,
            "failed_clients": failed,
            "first_error": first_error,
            "secs": secs,
            "rounds_per_sec": (rounds > 0).then(|| rounds as f64 / secs),
            "round_trip_us": (rounds > 0).then_some(latency),
            "server_cpu_us_per_round": per_round(server_cpu),
            "node_cpu_us_per_round": node_cpu.iter().map(|&c| per_round(c)).collect::<Vec<_>>(),
            "own_cpu_us_per_round": per_round(own_cpu),
        }),
    })
}

fn room(c: usize) -> String {
    format!("poll_{c}")
}

/// One client: its handshake on `home`, every later request to `via`, `rounds` timed POST+GET pairs.
async fn client(
    home: &Target,
    via: &Target,
    c: usize,
    token: &str,
    rounds: usize,
    publisher: &Publisher,
    shared: &Shared,
) -> anyhow::Result<()> {
    let http = home.http(c);
    let open = get(
        http,
        &format!("http://{}/socket.io/?EIO=4&transport=polling", home.addr),
    )
    .await?;
    let open: Open = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
        .with_context(|| format!("not an Engine.IO open packet: {open}"))?;
    let url = format!(
        "http://{}/socket.io/?EIO=4&transport=polling&sid={}",
        via.addr, open.sid
    );
    let namespace = home.namespace();
    let auth = json!({ "token": token });
    post(http, &url, format!("40{namespace},{auth}"))
        .await
        .context("the CONNECT")?;
    let acked = format!("40{namespace},");
    'handshake: loop {
        for packet in get(http, &url).await?.split('\x1e') {
            if packet == "2" {
                post(http, &url, "3".into()).await?;
            } else if packet.starts_with(&acked) {
                break 'handshake;
            } else {
                bail!("namespace {namespace} refused the client: {packet}");
            }
        }
    }
    let event = format!("42{namespace},[\"e\",{c}]");
    let message = format!("42{namespace},[\"m\",");
    for round in 0..rounds {
        publisher
            .send(0, &room(c), round as u64)
            .await
            .context("POST /send")?;
        let began = Instant::now();
        post(http, &url, event.clone()).await?;
        // The message is queued, so the GET answers at once (a heartbeat ping may come first).
        let mut got = false;
        while !got {
            for packet in get(http, &url).await?.split('\x1e') {
                if packet.starts_with(&message) {
                    got = true;
                } else if packet == "2" {
                    post(http, &url, "3".into()).await?;
                } else {
                    bail!("unexpected packet {packet:?}");
                }
            }
        }
        let took = began.elapsed();
        shared.rounds.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = shared.round_trips.lock() {
            h.saturating_record(took.as_micros() as u64);
        }
    }
    // Leave: a close packet, so the server forgets the session at once.
    let _ = tokio::time::timeout(Duration::from_secs(2), post(http, &url, "1".into())).await;
    Ok(())
}
