//! Client events routed to a webhook (issue 11). The generator runs the backend itself (`backend.rs`), then two
//! phases of the same length, warm-up first in each:
//!
//! 1. routed: N socket.io clients emit `bid` with an ack (closed loop, or paced); the server POSTs each to the
//!    backend and acks with its reply. Acked events per second, ack latency, server CPU per event.
//! 2. direct: N plain HTTP callers POST the same body to the backend at the rate phase 1 reached (or was
//!    paced at), so both latencies are taken at the same load; the difference is what routing adds.
//!
//! The server must route `bid` to `http://<backend>/events/bid` (bench/herald-events.yml; the Node reference
//! with `EVENTS_URL`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::json;

use crate::backend::Backend;
use crate::direct::{self, Direct};
use crate::emitter::Emitter;
use crate::procfs;
use crate::stats::Latency;
use crate::tally::{Phase, Tally};
use crate::target::Target;
use crate::Outcome;

#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: usize,
    /// Events per second over all clients; 0 sends as fast as the window allows.
    pub rate: f64,
    /// Events one client may have waiting for their ack.
    pub window: usize,
    pub warmup: Duration,
    /// Measured time of each phase, after its warm-up.
    pub secs: Duration,
    pub drain: Duration,
    pub backend: SocketAddr,
    pub event: String,
}

/// Time for every caller's task to start before a phase begins.
const LEAD: Duration = Duration::from_millis(50);

/// CPU seconds over a phase's measured part (and its drain).
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    server: f64,
    /// The generator's, the backend thread's included.
    own: f64,
    backend: f64,
}

impl Cpu {
    fn read(pid: Option<u32>, backend: &Backend) -> anyhow::Result<Self> {
        Ok(Cpu {
            server: pid.map(procfs::cpu_secs).transpose()?.unwrap_or(0.0),
            own: procfs::own_cpu_secs()?,
            backend: backend.cpu_secs()?,
        })
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            server: self.server - before.server,
            own: self.own - before.own,
            backend: self.backend - before.backend,
        }
    }
}

/// What one phase measured.
struct Measured {
    tally: Tally,
    cpu: Cpu,
    /// Measured answers per second.
    rate: f64,
    latency: Latency,
}

pub async fn events(target: &Target, pid: u32, plan: Plan) -> anyhow::Result<Outcome> {
    let backend = Backend::start(plan.backend)?;
    let tokens = (0..plan.clients)
        .map(|i| target.token(&format!("u{i}"), &[]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let emitters = connect_all(target, &tokens, &plan.event).await?;
    let routed = routed(emitters, pid, &backend, &plan).await?;
    // A run where nothing was acked measured nothing: most likely the server does not route the event here.
    anyhow::ensure!(
        routed.tally.measured > 0,
        "no `{}` was acked (first error: {}); does the server route it to http://{}/events/{}?",
        plan.event,
        routed.tally.first_error.as_deref().unwrap_or("none"),
        plan.backend,
        plan.event
    );
    let backend_calls = backend
        .calls
        .answered
        .load(std::sync::atomic::Ordering::Relaxed);
    let direct_rate = if plan.rate > 0.0 {
        plan.rate
    } else {
        routed.rate
    };
    let direct = direct(target, tokens, &backend, &plan, direct_rate).await?;
    let bad_calls = backend.calls.bad.load(std::sync::atomic::Ordering::Relaxed);
    Ok(outcome(&plan, &routed, &direct, backend_calls, bad_calls))
}

/// Opens one emitter per token, 32 handshakes at a time.
async fn connect_all(
    target: &Target,
    tokens: &[String],
    event: &str,
) -> anyhow::Result<Vec<Emitter>> {
    stream::iter(tokens.iter().enumerate())
        .map(|(i, token)| async move {
            Emitter::connect(target, i, token, event)
                .await
                .with_context(|| format!("client {i}"))
        })
        .buffer_unordered(32)
        .try_collect()
        .await
}

/// Phase 1: every emitter on its schedule; the server's CPU over the measured part.
async fn routed(
    emitters: Vec<Emitter>,
    pid: u32,
    backend: &Backend,
    plan: &Plan,
) -> anyhow::Result<Measured> {
    let phase = Phase::new(LEAD, plan.warmup, plan.secs);
    let n = emitters.len();
    let tasks: Vec<_> = emitters
        .into_iter()
        .enumerate()
        .map(|(i, emitter)| {
            let schedule = phase.schedule(i, n, plan.rate, plan.window, plan.drain);
            tokio::spawn(emitter.run(schedule))
        })
        .collect();
    measure(phase, tasks, Some(pid), backend).await
}

/// Phase 2: the same number of callers, straight to the backend, at `rate`.
async fn direct(
    target: &Target,
    tokens: Vec<String>,
    backend: &Backend,
    plan: &Plan,
    rate: f64,
) -> anyhow::Result<Measured> {
    let url = format!("http://{}/events/{}", plan.backend, plan.event);
    let shared = Arc::new(Direct::new(
        url,
        target.site.clone(),
        plan.event.clone(),
        tokens.len(),
    )?);
    let phase = Phase::new(LEAD, plan.warmup, plan.secs);
    let n = tokens.len();
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let schedule = phase.schedule(i, n, rate, 1, plan.drain);
            tokio::spawn(direct::run(Arc::clone(&shared), i, token, schedule))
        })
        .collect();
    measure(phase, tasks, None, backend).await
}

/// Reads CPU when the warm-up ends and when every caller is done; merges the callers' tallies.
async fn measure(
    phase: Phase,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    pid: Option<u32>,
    backend: &Backend,
) -> anyhow::Result<Measured> {
    tokio::time::sleep_until(phase.measure_from.into()).await;
    let before = Cpu::read(pid, backend)?;
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.context("a caller panicked")?);
    }
    let cpu = Cpu::read(pid, backend)?.since(before);
    let secs = (phase.end - phase.measure_from).as_secs_f64();
    let latency = Latency::of(&tally.latency);
    Ok(Measured {
        rate: tally.measured as f64 / secs,
        tally,
        cpu,
        latency,
    })
}

fn per_event(secs: f64, events: u64) -> f64 {
    secs * 1e6 / events.max(1) as f64
}

fn outcome(
    plan: &Plan,
    routed: &Measured,
    direct: &Measured,
    backend_calls: u64,
    bad_calls: u64,
) -> Outcome {
    let events = routed.tally.measured;
    let added = |r: u64, d: u64| r as i64 - d as i64;
    let (r, d) = (routed.latency, direct.latency);
    let generator_cpu = routed.cpu.own - routed.cpu.backend;
    let human = format!(
        "events: {} clients, {}: {events} acked in {:.1}s = {:.0} events/s; lost {}, ack errors {}{}, mismatched \
         {}; ack latency {}; direct HTTP at {:.0}/s: {}, errors {}; added p50 {:.3}ms p99 {:.3}ms; server CPU \
         {:.1} us/event; generator {:.1} us/event, backend {:.1} us/event; backend calls {backend_calls}, bad \
         {bad_calls}",
        plan.clients,
        pace(plan),
        plan.secs.as_secs_f64(),
        routed.rate,
        routed.tally.unanswered,
        routed.tally.errors,
        routed
            .tally
            .first_error
            .as_ref()
            .map_or_else(String::new, |e| format!(" (first: {e})")),
        routed.tally.mismatched,
        r.describe(),
        direct.rate,
        d.describe(),
        direct.tally.errors,
        added(r.p50, d.p50) as f64 / 1000.0,
        added(r.p99, d.p99) as f64 / 1000.0,
        per_event(routed.cpu.server, events),
        per_event(generator_cpu, events),
        per_event(routed.cpu.backend, events),
    );
    let metrics = json!({
        "clients": plan.clients,
        "rate": plan.rate,
        "window": plan.window,
        "secs": plan.secs.as_secs_f64(),
        "sent": routed.tally.sent,
        "acked": events,
        "events_per_sec": routed.rate,
        "lost": routed.tally.unanswered,
        "ack_errors": routed.tally.errors,
        "first_error": routed.tally.first_error,
        "mismatched": routed.tally.mismatched + direct.tally.mismatched,
        "failed_clients": routed.tally.disconnected,
        "latency_us": r,
        "direct_per_sec": direct.rate,
        "direct_latency_us": d,
        "direct_errors": direct.tally.errors,
        "added_us": {"p50": added(r.p50, d.p50), "p99": added(r.p99, d.p99), "p999": added(r.p999, d.p999)},
        "server_cpu_us_per_event": per_event(routed.cpu.server, events),
        "own_cpu_us_per_event": per_event(generator_cpu, events),
        "backend_cpu_us_per_event": per_event(routed.cpu.backend, events),
        "backend_calls": backend_calls,
        "backend_bad_calls": bad_calls,
    });
    Outcome { human, metrics }
}

/// How the clients send, for people.
pub fn pace(plan: &Plan) -> String {
    match (plan.rate > 0.0, plan.window) {
        (true, _) => format!("{} events/s", plan.rate),
        (false, 1) => "closed loop".into(),
        (false, w) => format!("unpaced, {w} in flight each"),
    }
}
