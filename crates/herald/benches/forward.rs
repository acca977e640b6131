//! The cost of a polling request that lands on the wrong node: N sequential round trips (POST a ping `2`, GET
//! its pong `3`) on one session, sent to the node that holds it (direct), or to another node that forwards them
//! over its keep-alive pool (pooled), or over a fresh connection per request (no pool, what a per-request
//! handshake without a pool would cost). Three in-process nodes (bare engines on herald's HTTP server) share a
//! two-worker runtime; the client runs on its own thread. Modes are interleaved round by round, so a noisy
//! neighbour hurts each alike.
//!
//! `cargo bench -p herald --bench forward -- [--round-trips N] [--rounds R]`
//!
//! CPU is read from `/proc/self/task/*/schedstat` (nanoseconds on CPU): all of the process, and the client's
//! thread alone; the difference is what the nodes spent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald::cluster::forward::{ForwardConfig, Forwarder};
use herald::cluster::Directory;
use herald::engine::EngineConfig;
use herald::server::{ServeConfig, Server};
use herald::socketio::{self, SocketIoConfig};

const OWNER: &str = "ownernod";

struct Options {
    round_trips: usize,
    rounds: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        round_trips: 5000,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a flag needs a value");
        match arg.as_str() {
            "--round-trips" => o.round_trips = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(o)
}

/// The owner is the only node anyone asks about.
struct Owner(String);

impl Directory for Owner {
    fn url_of(&self, id: &str) -> Option<String> {
        (id == OWNER).then(|| self.0.clone())
    }

    fn peers(&self) -> Vec<(Arc<str>, String)> {
        vec![(Arc::from(OWNER), self.0.clone())]
    }
}

/// A bare engine on herald's HTTP server, with `forward` for sessions of other nodes.
async fn node(prefix: &str, forward: Option<Forwarder>) -> anyhow::Result<SocketAddr> {
    let config = EngineConfig {
        sid_prefix: prefix.into(),
        ping_interval: Duration::from_secs(300),
        ping_timeout: Duration::from_secs(300),
        ..EngineConfig::default()
    };
    let (_io, engine) = socketio::server(config, SocketIoConfig::default());
    if let Some(forward) = forward {
        engine.set_forward(Arc::new(forward));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serve = ServeConfig {
        idle_timeout: Duration::from_secs(600),
        ..ServeConfig::default()
    };
    tokio::spawn(Server::new(listener, engine.router(), serve).run());
    Ok(addr)
}

/// Nanoseconds on CPU: of every thread of the process, and of the calling thread.
fn cpu_ns() -> (u64, u64) {
    let read = |path: &std::path::Path| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            total += read(&task.path().join("schedstat"));
        }
    }
    (
        total,
        read(std::path::Path::new("/proc/thread-self/schedstat")),
    )
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    cpu_total: u64,
    cpu_client: u64,
}

/// `n` round trips on a fresh session of the owner, sent to `via`.
async fn run(
    http: &reqwest::Client,
    owner: SocketAddr,
    via: SocketAddr,
    n: usize,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let open = http
        .get(format!("http://{owner}/socket.io/?EIO=4&transport=polling"))
        .send()
        .await?
        .text()
        .await?;
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no sid in the open packet")?
        .to_string();
    let url = format!("http://{via}/socket.io/?EIO=4&transport=polling&sid={sid}");
    let round_trip = || async {
        let posted = http
            .post(&url)
            .header("content-type", "text/plain;charset=UTF-8")
            .body("2")
            .send()
            .await?;
        if !posted.status().is_success() {
            bail!("POST answered {}", posted.status());
        }
        posted.bytes().await?;
        let pong = http.get(&url).send().await?.text().await?;
        if pong != "3" {
            bail!("GET answered {pong:?}");
        }
        anyhow::Ok(())
    };
    for _ in 0..n / 10 {
        round_trip().await?;
    }
    let (total, client) = cpu_ns();
    for _ in 0..n {
        let started = Instant::now();
        round_trip().await?;
        tally.latencies.push(started.elapsed());
    }
    let (total_after, client_after) = cpu_ns();
    tally.cpu_total += total_after - total;
    tally.cpu_client += client_after - client;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let nodes = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (owner, pooled, fresh) = nodes.block_on(async {
        let owner = node(OWNER, None).await?;
        let directory: Arc<dyn Directory> = Arc::new(Owner(format!("http://{owner}")));
        let pooled = node(
            "pooleddd",
            Some(Forwarder::new(
                Arc::clone(&directory),
                ForwardConfig::default(),
            )?),
        )
        .await?;
        let no_pool = ForwardConfig {
            max_idle_per_peer: 0,
            ..ForwardConfig::default()
        };
        let fresh = node("freshhhh", Some(Forwarder::new(directory, no_pool)?)).await?;
        anyhow::Ok((owner, pooled, fresh))
    })?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let modes = [
        ("direct", owner),
        ("forwarded, pooled", pooled),
        ("forwarded, no pool", fresh),
    ];
    let mut tallies: Vec<Tally> = modes.iter().map(|_| Tally::default()).collect();
    client.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build()?;
        for _ in 0..o.rounds {
            for ((_, via), tally) in modes.iter().zip(&mut tallies) {
                run(&http, owner, *via, o.round_trips, tally).await?;
            }
        }
        anyhow::Ok(())
    })?;
    println!(
        "{} round trips (POST `2` + GET `3`) x {} rounds per mode",
        o.round_trips, o.rounds
    );
    println!(
        "mode                 mean µs   p50 µs   p99 µs   CPU µs/rt (all)   CPU µs/rt (nodes)"
    );
    for ((name, _), tally) in modes.iter().zip(&mut tallies) {
        tally.latencies.sort();
        let n = tally.latencies.len();
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let mean = tally.latencies.iter().map(|d| micros(*d)).sum::<f64>() / n as f64;
        let p50 = micros(tally.latencies[n / 2]);
        let p99 = micros(tally.latencies[n * 99 / 100]);
        let all = tally.cpu_total as f64 / 1e3 / n as f64;
        let servers = (tally.cpu_total - tally.cpu_client) as f64 / 1e3 / n as f64;
        println!("{name:<20} {mean:>7.1} {p50:>8.1} {p99:>8.1} {all:>17.1} {servers:>19.1}");
    }
    Ok(())
}
