//! `herald-bench`: opens many socket.io WebSocket clients against a server and measures what the server pays for
//! them, reading the server's memory and CPU time from `/proc/<pid>`.
//!
//! `idle`: RSS per idle connection. `fanout`: server CPU per delivered broadcast message. The server must offer
//! herald-conformance's e2e handlers (`join`, `broadcast`), which `--suite e2e` does.

mod client;
mod procfs;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    about = "Measures a socket.io server's memory per connection and CPU per delivered message"
)]
struct Args {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: String,
    /// The server's pid, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pid: u32,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Opens N connections that only answer heartbeats; reports RSS growth per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
    },
    /// N subscribers in one room; a publisher broadcasts M messages of S bytes; reports server CPU per delivery.
    Fanout {
        #[arg(long, default_value_t = 1_000)]
        subs: usize,
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Broadcasts per second; 0 sends as fast as acks come back.
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.scenario {
        Scenario::Idle { conns } => idle(&args.addr, args.pid, conns).await,
        Scenario::Fanout {
            subs,
            messages,
            size,
            rate,
        } => fanout(&args.addr, args.pid, subs, messages, size, rate).await,
    }
}

async fn idle(addr: &str, pid: u32, conns: usize) -> anyhow::Result<()> {
    let before = procfs::rss_kib(pid)?;
    let started = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let client = client::Client::connect(addr, None, Arc::clone(&received))
            .await
            .with_context(|| format!("connecting client {i}"))?;
        clients.push(client);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = procfs::rss_kib(pid)?;
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / conns as f64;
    println!(
        "idle: {conns} connections in {connect_secs:.1}s ({:.0}/s); server RSS {before} KiB -> {after} KiB; \
         {per_conn:.0} bytes ({:.2} KiB) per connection",
        conns as f64 / connect_secs,
        per_conn / 1024.0
    );
    drop(clients);
    Ok(())
}

async fn fanout(
    addr: &str,
    pid: u32,
    subs: usize,
    messages: usize,
    size: usize,
    rate: u64,
) -> anyhow::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::with_capacity(subs);
    for _ in 0..subs {
        subscribers
            .push(client::Client::connect(addr, Some("bench"), Arc::clone(&received)).await?);
    }
    let publisher = client::Client::connect(addr, None, Arc::new(AtomicU64::new(0))).await?;
    let payload = "x".repeat(size.saturating_sub(20));
    let expected = (subs * messages) as u64;
    let cpu_before = procfs::cpu_ticks(pid)?;
    let started = Instant::now();
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    for i in 0..messages {
        let frame =
            serde_json::json!(["broadcast", {"room": "bench", "event": "m", "args": [i, payload]}]);
        publisher.send(format!("42{frame}")).await?;
        if let Some(interval) = interval {
            tokio::time::sleep_until((started + interval * (i as u32 + 1)).into()).await;
        } else if i % 50 == 49 {
            // Unpaced, but never more than 50 broadcasts ahead of the slowest subscriber.
            wait_for(
                &received,
                ((i + 1 - 50) * subs) as u64,
                Duration::from_secs(30),
            )
            .await;
        }
    }
    let complete = wait_for(&received, expected, Duration::from_secs(60)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = procfs::cpu_ticks(pid)?;
    let delivered = received.load(Ordering::Relaxed);
    let cpu_secs = (cpu_after - cpu_before) as f64 / procfs::ticks_per_second() as f64;
    println!(
        "fanout: {subs} subscribers x {messages} messages of {size} bytes; delivered {delivered}/{expected}{}; \
         {:.0} msg/s; server CPU {cpu_secs:.2}s = {:.3} us per delivered message",
        if complete { "" } else { " (INCOMPLETE)" },
        delivered as f64 / elapsed,
        cpu_secs * 1e6 / delivered.max(1) as f64
    );
    Ok(())
}

async fn wait_for(counter: &AtomicU64, target: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}
