//! `herald-bench`: a load generator for socket.io servers. It opens many socket.io clients (WebSocket, spread
//! over source addresses 127.0.0.x), gets them into rooms with a site token, publishes through the HTTP API
//! and measures what the server pays (RSS and CPU from `/proc/<pid>`) and what clients see (rate, loss, order,
//! latency). The `events` scenario goes the other way: clients emit with an ack and the server routes each event
//! to a webhook backend this process runs (`events.rs`). Every server it is pointed at must offer the same site:
//! see `target.rs` and bench/reference. Against herald, the subscribers of `idle`, `storm`, `fanout` and
//! `cluster` may also be its plain clients (`--transport plain-ws` or `sse`, `plain.rs` and `sse.rs`).

mod backend;
mod bridges;
mod client;
mod connect;
mod direct;
mod emitter;
mod events;
mod fanout;
mod floor;
mod hooks;
mod plain;
mod poll_forward;
mod polling;
mod procfs;
mod publish;
mod report;
mod soak;
mod sse;
mod stats;
mod tally;
mod target;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    about = "Measures a socket.io server: memory per connection, connects/s, fan-out CPU and latency"
)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// The server's pid, to read its RSS and CPU time from /proc. Required by every scenario.
    #[arg(long)]
    pid: Option<u32>,
    /// The site: clients join namespace /<site>; publishes go to /send?site=<site>.
    #[arg(long, default_value = "bench")]
    site: String,
    #[arg(
        long,
        env = "BENCH_API_KEY",
        default_value = "bench-api-key-0123456789"
    )]
    api_key: String,
    /// HS256 secret the server verifies client tokens with.
    #[arg(
        long,
        env = "BENCH_JWT_SECRET",
        default_value = "bench-jwt-secret-0123456789abcdef"
    )]
    jwt_secret: String,
    /// Source addresses 127.0.0.1 to 127.0.0.<N>, used round-robin.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// How clients connect: socket.io over WebSocket or long-polling, or herald's plain WebSocket
    /// (`/ws/<site>`) or event stream (`/sse/<site>`). The plain ones serve idle, storm, fanout and cluster.
    #[arg(long, value_enum, default_value = "websocket")]
    transport: target::Transport,
    /// The server's name in the JSON record.
    #[arg(long, default_value = "herald")]
    server: String,
    /// Appends the result as one JSON line to this file (for `report`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Fails (exit 1) when a message was lost, duplicated, out of order or refused by the publish API.
    #[arg(long)]
    strict: bool,
    /// A shell command run (and waited for) when the measured phase of `fanout` or `storm` starts: the
    /// subscribers are connected, nothing is published yet (fanout); nobody is connected yet (storm).
    #[arg(long)]
    measure_start: Option<String>,
    /// A shell command run when the measured phase ends: every delivery arrived or the drain gave up (fanout),
    /// every client is connected (storm); the clients are still connected while it runs.
    #[arg(long)]
    measure_end: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Opens N connections that only answer heartbeats; reports server RSS growth per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds to wait after the last connect before reading RSS.
        #[arg(long, default_value_t = 5)]
        settle_secs: u64,
        /// Runs the site's auth webhook here (`GET /auth`, bench/herald-webhook.yml) and counts the
        /// connections the server opens to it; the scenario is then `idle-webhook`.
        #[arg(long)]
        webhook: Option<SocketAddr>,
        /// Milliseconds the webhook takes to answer, as a backend that reads its database does.
        #[arg(long, default_value_t = 0)]
        webhook_delay_ms: u64,
    },
    /// Opens N connections, C handshakes in flight; reports connects/s and connect latency.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 500)]
        concurrency: usize,
        /// As for `idle`: runs the auth webhook here; the scenario is then `storm-webhook`.
        #[arg(long)]
        webhook: Option<SocketAddr>,
        #[arg(long, default_value_t = 0)]
        webhook_delay_ms: u64,
    },
    /// Subscribers in one room (or one personal room each) get M messages of S bytes published over HTTP.
    Fanout {
        #[arg(long, default_value_t = 1_000)]
        subs: usize,
        /// Each subscriber in its own room `user_<i>`; messages go round-robin over them.
        #[arg(long)]
        personal: bool,
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        /// Size of the socket.io frame each subscriber receives, in bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Messages per second, over all publishers; 0 publishes as fast as the window allows.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Concurrent HTTP publishers, each sending one request at a time; order is checked per publisher.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Unpaced runs stay at most this many messages ahead of the deliveries.
        #[arg(long, default_value_t = 50)]
        window: usize,
        #[arg(long, default_value_t = 10)]
        drain_secs: u64,
    },
    /// The fan-out run against a cluster: subscribers split evenly over the nodes (client i on node i % N),
    /// publishes over HTTP through node 1 (or each node in turn); CPU of every node summed per delivery.
    /// `--addr` and `--pid` are not used: `--nodes` and `--pids` name the nodes.
    Cluster {
        /// Every node's address, comma-separated; node 1 first.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<SocketAddr>,
        /// Every node's pid, in the order of `--nodes`.
        #[arg(long, value_delimiter = ',', required = true)]
        pids: Vec<u32>,
        /// The Redis server the nodes share, whose CPU is reported apart.
        #[arg(long)]
        redis_pid: Option<u32>,
        #[arg(long, default_value_t = 1_000)]
        subs: usize,
        #[arg(long)]
        personal: bool,
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Messages per second, over all publishers; 0 publishes as fast as the window allows.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 50)]
        window: usize,
        /// The node each publish goes through.
        #[arg(long, value_enum, default_value = "first")]
        via: fanout::Via,
        #[arg(long, default_value_t = 10)]
        drain_secs: u64,
    },
    /// The cost of a forwarded polling request: sessions opened on node 1, then every request to node 1
    /// (direct) or node 2 (`--forward`); POST+GET round trip and server CPU per round.
    ClusterPoll {
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<SocketAddr>,
        #[arg(long, value_delimiter = ',', required = true)]
        pids: Vec<u32>,
        /// Polling clients at once.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Timed POST+GET rounds per client.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
        #[arg(long)]
        forward: bool,
    },
    /// Minutes of churn against a mailbox site: WebSocket and polling clients that come and go, slow readers,
    /// mailbox devices that ack everything, publishes over the HTTP API. Checks loss, pending entries, RSS and
    /// file handles (see soak.rs; scripts/soak.sh runs it against bench/soak.yml).
    Soak {
        #[arg(long, default_value_t = 5_000)]
        clients: usize,
        /// Mailbox users, one device each.
        #[arg(long, default_value_t = 200)]
        devices: usize,
        /// Seconds of churn, warm-up included.
        #[arg(long, default_value_t = 600)]
        duration: u64,
        /// Seconds of warm-up; the steady-state RSS is the mean of its last 30 s (at most half the duration).
        #[arg(long, default_value_t = 150)]
        warmup: u64,
        #[arg(long, default_value_t = 0.3)]
        polling_share: f64,
        #[arg(long, default_value_t = 0.05)]
        slow_share: f64,
        /// Share of the other clients that connect without a token (public room only).
        #[arg(long, default_value_t = 0.5)]
        anonymous_share: f64,
        /// Shortest and longest life of a client, in seconds.
        #[arg(long, num_args = 2, default_values_t = [5.0, 60.0])]
        life: Vec<f64>,
        /// Publishes per second to the public room (every client gets each).
        #[arg(long, default_value_t = 4.0)]
        public_rate: f64,
        /// Publishes per second to the mailbox users' rooms, over all lanes.
        #[arg(long, default_value_t = 196.0)]
        mailbox_rate: f64,
        /// Firehose requests per second to the slow readers' socket ids, each a batch of 8 messages of 1 KB.
        #[arg(long, default_value_t = 10.0)]
        firehose_rate: f64,
        /// Mailbox publish lanes, one request at a time each; a user's publishes all go through one lane.
        #[arg(long, default_value_t = 64)]
        publishers: usize,
        #[arg(long, default_value_t = 120)]
        drain_secs: u64,
        /// Longest wait after everyone left for the server's sockets to reach 0 (a dropped polling session
        /// lives until its ping timeout); the last RSS and file-handle counts follow 5 s later.
        #[arg(long, default_value_t = 60)]
        settle_secs: u64,
        #[arg(long, default_value_t = 5)]
        fd_slack: u64,
        /// Handshakes in flight at most.
        #[arg(long, default_value_t = 512)]
        connect_concurrency: usize,
        /// Also read RSS right after malloc_trim(0), called in the server through gdb (pauses it ~1 s).
        #[arg(long)]
        gdb_trim: bool,
    },
    /// Client events routed to a webhook: N clients emit `bid` with an ack, the server POSTs each to a backend
    /// this process runs (answering `{"reply": [args[0]]}`); then the same callers POST straight to the backend
    /// at the same rate. Acked events/s, ack latency, the latency routing adds, server CPU per event.
    Events {
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Events per second over all clients; 0 sends as fast as the window allows.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Events each client may have waiting for their ack (1 unpaced: a closed loop).
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Measured seconds of each phase (routed, then direct).
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Seconds of each phase before measuring starts.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Where the backend listens; the server's route for the event must point at it.
        #[arg(long, default_value = "127.0.0.1:3791")]
        backend: SocketAddr,
        #[arg(long, default_value = "bid")]
        event: String,
        #[arg(long, default_value_t = 5)]
        drain_secs: u64,
    },
    /// One broker bridge into one room: one producer pushes M messages into the broker as fast as it can
    /// (within the window of the deliveries), the server's bridge publishes them to the subscribers. Messages/s
    /// that reach them, and the CPU per message of the server, the broker and the generator (bridges.rs). The
    /// server must run bench/herald-bridges.yml with the same run id.
    Bridges {
        #[arg(long, value_enum)]
        kind: bridges::Kind,
        /// The run's id, which names the sources in bench/herald-bridges.yml (`@RUN@`): the queue and subject
        /// herald.bench.<run>, the topic herald/bench/<run>, the channels herald:bench:<run> and herald_bench_<run>.
        #[arg(long, env = "BENCH_RUN", default_value = "0")]
        run: String,
        /// The broker's URL; by default the shared service of scripts/services.sh.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value_t = 1)]
        subs: usize,
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Size of the socket.io frame each subscriber receives, in bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// The producer stays at most this many messages ahead of the deliveries.
        #[arg(long, default_value_t = 1_000)]
        window: usize,
        /// Messages sent and delivered before the measured ones.
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// AMQP and Postgres: publishes that may wait for their confirmation (answer) at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 10)]
        drain_secs: u64,
    },
    /// The floor, no server: one thread writes each frame to N loopback TCP sockets, a reader pinned to another
    /// core drains them. CPU per delivery and the time of one broadcast, to read the fan-out rows against.
    /// `--addr` and `--pid` are not used.
    Floor {
        #[arg(long, default_value_t = 1_000)]
        subs: usize,
        #[arg(long, default_value_t = 500)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Broadcasts per second; 0 sends them back to back.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 0)]
        sender_core: usize,
        #[arg(long, default_value_t = 1)]
        reader_core: usize,
        /// Write each frame as two slices (its first 2 bytes, a WebSocket header's size, and the rest) with one
        /// `writev`, as herald's direct writes did before a broadcast encoded its frames whole.
        #[arg(long)]
        writev: bool,
    },
    /// Prints BENCHMARKS.md tables from a file of JSON lines.
    Report { file: PathBuf },
}

/// What a scenario measured: a line for people and a JSON object for `report`.
pub struct Outcome {
    pub human: String,
    pub metrics: serde_json::Value,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let subscribers_only = matches!(
        args.scenario,
        Scenario::Idle { .. }
            | Scenario::Storm { .. }
            | Scenario::Fanout { .. }
            | Scenario::Cluster { .. }
            | Scenario::Report { .. }
            | Scenario::Floor { .. }
    );
    if args.transport.is_plain() && !subscribers_only {
        anyhow::bail!(
            "--transport plain-ws and sse serve idle, storm, fanout and cluster; this scenario's clients speak \
             socket.io"
        );
    }
    let target = target::Target::new(
        args.addr,
        args.site.clone(),
        args.api_key.clone(),
        &args.jwt_secret,
        args.sources,
        args.transport,
    )?;
    let pid = || args.pid.context("--pid is required");
    let hooks = hooks::Hooks {
        start: args.measure_start.clone(),
        end: args.measure_end.clone(),
    };
    let (scenario, variant, outcome) = match args.scenario {
        Scenario::Report { ref file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            print!("{}", report::render(&text)?);
            return Ok(());
        }
        Scenario::Floor {
            subs,
            messages,
            size,
            rate,
            sender_core,
            reader_core,
            writev,
        } => {
            let plan = floor::Plan {
                subs,
                messages,
                size,
                rate,
                sender_core,
                reader_core,
                writev,
            };
            let pace = if rate > 0.0 {
                format!("{rate} msg/s")
            } else {
                "unpaced".into()
            };
            (
                "floor",
                format!("{subs} sockets, {pace}"),
                tokio::task::spawn_blocking(move || floor::floor(plan)).await??,
            )
        }
        Scenario::Idle {
            conns,
            concurrency,
            settle_secs,
            webhook,
            webhook_delay_ms,
        } => {
            let delay = Duration::from_millis(webhook_delay_ms);
            let webhook = connect::Webhook::start(webhook, &args.jwt_secret, delay)?;
            (
                if webhook.is_some() {
                    "idle-webhook"
                } else {
                    "idle"
                },
                format!("{conns} connections"),
                connect::idle(
                    &target,
                    pid()?,
                    conns,
                    concurrency,
                    Duration::from_secs(settle_secs),
                    webhook.as_ref(),
                )
                .await?,
            )
        }
        Scenario::Storm {
            conns,
            concurrency,
            webhook,
            webhook_delay_ms,
        } => {
            let delay = Duration::from_millis(webhook_delay_ms);
            let webhook = connect::Webhook::start(webhook, &args.jwt_secret, delay)?;
            (
                if webhook.is_some() {
                    "storm-webhook"
                } else {
                    "storm"
                },
                format!("{conns} connections, {concurrency} in flight"),
                connect::storm(
                    &target,
                    pid()?,
                    conns,
                    concurrency,
                    webhook.as_ref(),
                    &hooks,
                )
                .await?,
            )
        }
        Scenario::Fanout {
            subs,
            personal,
            messages,
            size,
            rate,
            publishers,
            window,
            drain_secs,
        } => {
            let plan = fanout::Plan {
                subs,
                personal,
                messages,
                size,
                rate,
                publishers,
                window,
                connect_concurrency: 64,
                drain: Duration::from_secs(drain_secs),
                via: fanout::Via::First,
                hooks: hooks.clone(),
            };
            let variant = format!(
                "{subs} subs, {}, {}{}{}",
                if personal {
                    "personal rooms"
                } else {
                    "one room"
                },
                if rate > 0.0 {
                    format!("{rate} msg/s")
                } else {
                    "unpaced".into()
                },
                if publishers > 1 {
                    format!(", {publishers} publishers")
                } else {
                    String::new()
                },
                args.transport.label()
            );
            (
                "fanout",
                variant,
                fanout::fanout(&target, pid()?, plan).await?,
            )
        }
        Scenario::Cluster {
            ref nodes,
            ref pids,
            redis_pid,
            subs,
            personal,
            messages,
            size,
            rate,
            publishers,
            window,
            via,
            drain_secs,
        } => {
            let targets = node_targets(&args, nodes)?;
            let plan = fanout::Plan {
                subs,
                personal,
                messages,
                size,
                rate,
                publishers,
                window,
                connect_concurrency: 64,
                drain: Duration::from_secs(drain_secs),
                via,
                hooks: hooks.clone(),
            };
            let variant = format!(
                "{subs} subs on {} nodes, {}, {}{}, via {}",
                nodes.len(),
                if personal {
                    "personal rooms"
                } else {
                    "one room"
                },
                if rate > 0.0 {
                    format!("{rate} msg/s")
                } else {
                    "unpaced".into()
                },
                if publishers > 1 {
                    format!(", {publishers} publishers")
                } else {
                    String::new()
                },
                match via {
                    fanout::Via::First => "node 1",
                    fanout::Via::Alternate => "each node in turn",
                },
            );
            let cluster = fanout::Nodes {
                targets: &targets,
                pids,
                shared_pid: redis_pid,
            };
            (
                "cluster",
                variant,
                fanout::fanout_over(&cluster, plan).await?,
            )
        }
        Scenario::ClusterPoll {
            ref nodes,
            ref pids,
            clients,
            rounds,
            forward,
        } => {
            let targets = node_targets(&args, nodes)?;
            let cluster = fanout::Nodes {
                targets: &targets,
                pids,
                shared_pid: None,
            };
            let plan = poll_forward::Plan {
                clients,
                rounds,
                forward,
            };
            (
                "cluster-poll",
                format!(
                    "{clients} polling clients, {}",
                    if forward {
                        "handshake on node 1, requests to node 2"
                    } else {
                        "every request to node 1"
                    }
                ),
                poll_forward::poll_forward(&cluster, plan).await?,
            )
        }
        Scenario::Events {
            clients,
            rate,
            window,
            secs,
            warmup,
            backend,
            ref event,
            drain_secs,
        } => {
            let plan = events::Plan {
                clients,
                rate,
                window,
                warmup: Duration::from_secs_f64(warmup),
                secs: Duration::from_secs_f64(secs),
                drain: Duration::from_secs(drain_secs),
                backend,
                event: event.clone(),
            };
            let variant = format!("{clients} clients, {}", events::pace(&plan));
            (
                "events",
                variant,
                events::events(&target, pid()?, plan).await?,
            )
        }
        Scenario::Bridges {
            kind,
            ref run,
            ref url,
            subs,
            messages,
            size,
            window,
            warmup,
            in_flight,
            drain_secs,
        } => {
            let plan = bridges::Plan {
                kind,
                url: url.clone().unwrap_or_else(|| kind.default_url().into()),
                source: kind.source(run),
                subs,
                messages,
                size,
                window,
                warmup,
                in_flight,
                drain: Duration::from_secs(drain_secs),
            };
            (
                "bridges",
                format!(
                    "{} → {subs} sub{}",
                    kind.name(),
                    if subs == 1 { "" } else { "s" }
                ),
                bridges::bridges(&target, pid()?, plan).await?,
            )
        }
        Scenario::Soak {
            clients,
            devices,
            duration,
            warmup,
            polling_share,
            slow_share,
            anonymous_share,
            ref life,
            public_rate,
            mailbox_rate,
            firehose_rate,
            publishers,
            drain_secs,
            settle_secs,
            fd_slack,
            connect_concurrency,
            gdb_trim,
        } => {
            let plan = soak::Plan {
                clients,
                devices,
                duration: Duration::from_secs(duration),
                warmup: Duration::from_secs(warmup),
                ramp: Duration::from_secs(30).min(Duration::from_secs(duration / 4)),
                polling_share,
                slow_share,
                anonymous_share,
                life: (life[0], life[1]),
                stall: (60.0, 100.0),
                device_online: (5.0, 30.0),
                device_offline: (1.0, 10.0),
                public_rate,
                mailbox_rate,
                firehose_rate,
                firehose_batch: 8,
                firehose_size: 1000,
                publishers,
                connect_concurrency,
                sample_every: Duration::from_secs(5),
                drain: Duration::from_secs(drain_secs),
                settle: Duration::from_secs(settle_secs),
                fd_slack,
                gdb_trim,
            };
            (
                "soak",
                format!("{clients} clients, {devices} devices, {duration}s"),
                soak::soak(&target, pid()?, plan).await?,
            )
        }
    };
    println!("[{}] {}", args.server, outcome.human);

    let faults = [
        "lost",
        "duplicates",
        "out_of_order",
        "publish_errors",
        "phantom",
        "pending_left",
        "devices_left_connected",
        "fd_leak",
        "rss_drift",
        "slow_survived",
        "sockets_left",
        "failed_clients",
        "ack_errors",
        "mismatched",
        "direct_errors",
        "backend_bad_calls",
    ]
    .into_iter()
    .filter(|k| outcome.metrics[*k].as_u64().is_some_and(|n| n > 0))
    .collect::<Vec<_>>();
    if let Some(path) = &args.json {
        let record = report::Record {
            scenario: scenario.into(),
            variant,
            server: args.server.clone(),
            metrics: outcome.metrics,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(&record)?)?;
    }
    if args.strict && !faults.is_empty() {
        anyhow::bail!("--strict: the run had {}", faults.join(", "));
    }
    Ok(())
}

/// One `Target` per node address, with the site, key, secret, sources and transport of the command line.
fn node_targets(args: &Args, nodes: &[SocketAddr]) -> anyhow::Result<Vec<target::Target>> {
    nodes
        .iter()
        .map(|&addr| {
            target::Target::new(
                addr,
                args.site.clone(),
                args.api_key.clone(),
                &args.jwt_secret,
                args.sources,
                args.transport,
            )
        })
        .collect()
}
