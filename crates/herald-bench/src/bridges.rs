//! Messages per second through one broker bridge into one room: the server runs a bridge of each kind
//! (bench/herald-bridges.yml, its names suffixed with the run's id), a few subscribers sit in the room, and one
//! producer pushes the v1 publish JSON of `fanout`'s messages into the broker, with the broker's own confirmation
//! where it has one (AMQP publisher confirms, MQTT QoS 1 PUBACKs, a NATS flush at the end, Redis and Postgres
//! replies), as fast as it can while it stays at most `window` messages ahead of the deliveries (so a lossy
//! broker does not drop a subscriber that lags, and no socket.io outbox overflows). Reports messages/s that reach
//! the subscribers, loss and order, latency from the producer's stamp, and the CPU per message of the server,
//! the broker (the process listening on its port and its children: Postgres' backends) and the generator,
//! with each one's share of a core, which names the bottleneck.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::future::poll_immediate;
use serde_json::{json, Value};

use crate::connect::open_all;
use crate::procfs;
use crate::stats::{now_us, Deliveries};
use crate::target::Target;
use crate::Outcome;

/// A broker herald bridges from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Amqp,
    Mqtt,
    Nats,
    Redis,
    Postgres,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Amqp => "amqp",
            Kind::Mqtt => "mqtt",
            Kind::Nats => "nats",
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
        }
    }

    /// The shared service's URL (scripts/services.sh), as bench/herald-bridges.yml names it.
    pub fn default_url(self) -> &'static str {
        match self {
            Kind::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Kind::Mqtt => "mqtt://127.0.0.1:1883",
            Kind::Nats => "nats://127.0.0.1:4222",
            Kind::Redis => "redis://127.0.0.1:6379/",
            Kind::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
        }
    }

    /// The queue, topic, subject or channel of run `run`, as bench/herald-bridges.yml names it.
    pub fn source(self, run: &str) -> String {
        match self {
            Kind::Amqp => format!("herald.bench.{run}"),
            Kind::Mqtt => format!("herald/bench/{run}"),
            Kind::Nats => format!("herald.bench.{run}"),
            Kind::Redis => format!("herald:bench:{run}"),
            Kind::Postgres => format!("herald_bench_{run}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: Kind,
    pub url: String,
    /// What the bridge consumes.
    pub source: String,
    pub subs: usize,
    pub messages: usize,
    /// Size of the socket.io frame each subscriber receives, in bytes.
    pub size: usize,
    /// The producer stays at most this many messages ahead of the deliveries.
    pub window: usize,
    /// Messages sent and delivered before the measured ones (connections warm, subscription live).
    pub warmup: usize,
    /// AMQP and Postgres: requests that may wait for their confirmation or answer at once.
    pub in_flight: usize,
    pub drain: Duration,
}

/// The run: warm-up, then the measured messages.
pub async fn bridges(target: &Target, pid: u32, plan: Plan) -> anyhow::Result<Outcome> {
    wait_bridge_up(target, plan.kind, &plan.source).await?;
    let deliveries = Arc::new(Deliveries::new(1));
    let opened = open_all(
        std::slice::from_ref(target),
        plan.subs.max(1),
        64,
        std::slice::from_ref(&deliveries),
        |_| vec!["room".to_string()],
    )
    .await?;
    let subs = plan.subs.max(1) as u64;
    let mut producer =
        Producer::connect(plan.kind, &plan.url, &plan.source, plan.in_flight.max(1)).await?;
    let body = Body::new(target, plan.size);

    // Warm-up: the path works end to end before anything is timed.
    let mut seq = 0u64;
    for _ in 0..plan.warmup {
        producer.send(body.of(seq)).await?;
        seq += 1;
    }
    producer.finish().await?;
    wait_received(&deliveries, seq * subs, plan.drain).await;
    let warmed = deliveries.received();
    anyhow::ensure!(
        warmed == seq * subs,
        "the warm-up got {warmed} of {} deliveries: is the {} bridge up on {}?",
        seq * subs,
        plan.kind.name(),
        plan.source
    );

    let broker_port = port_of(&plan.url);
    let broker_before = broker_port.map(broker_cpu).unwrap_or_default();
    let cpu_before = procfs::cpu_secs(pid)?;
    let delay_before = procfs::run_delay_secs(pid)?;
    let own_before = procfs::own_cpu_secs()?;
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    for i in 0..plan.messages as u64 {
        // Stay within the window of the deliveries.
        let floor = (i + 1).saturating_sub(plan.window as u64) * subs + warmed;
        if deliveries.received() < floor {
            producer.push().await?;
            let began = Instant::now();
            while deliveries.received() < floor {
                tokio::time::sleep(Duration::from_micros(200)).await;
                if began.elapsed() > plan.drain {
                    bail!(
                        "no delivery for {:?} with {} messages sent: the bridge stalled",
                        plan.drain,
                        i
                    );
                }
            }
            waited += began.elapsed();
        }
        producer.send(body.of(seq)).await?;
        seq += 1;
    }
    producer.finish().await?;
    let publish_secs = started.elapsed().as_secs_f64();
    let expected = seq * subs;
    let finished = wait_received(&deliveries, expected, plan.drain).await;
    let elapsed = finished.duration_since(started).as_secs_f64();
    let server_cpu = procfs::cpu_secs(pid)? - cpu_before;
    let server_delay = procfs::run_delay_secs(pid)? - delay_before;
    let own_cpu = procfs::own_cpu_secs()? - own_before;
    let broker_cpu = broker_port.map(|port| broker_cpu(port).since(&broker_before));
    drop(opened.clients);
    producer.close().await;

    let received = deliveries.received() - warmed;
    let duplicates = deliveries.duplicates.load(Ordering::Relaxed);
    let out_of_order = deliveries.out_of_order.load(Ordering::Relaxed);
    let lost = (expected - warmed).saturating_sub(received.saturating_sub(duplicates));
    let messages = plan.messages.max(1) as f64;
    let per_msg = |secs: f64| secs * 1e6 / messages;
    let share = |secs: f64| secs * 100.0 / elapsed;
    let latency = deliveries.latency();
    let bottleneck = bottleneck(
        share(server_cpu),
        broker_cpu.map(share),
        share(own_cpu),
        share(server_delay),
        procfs::machine_cpus(),
    );
    let broker_text = broker_cpu.map_or_else(
        || "broker CPU unknown".to_string(),
        |cpu| {
            format!(
                "broker CPU {:.3} us/msg ({:.0}% of a core)",
                per_msg(cpu),
                share(cpu)
            )
        },
    );
    let human = format!(
        "bridges: {} → {} subscribers in one room, {} messages of {} bytes: delivered {received}/{} in {elapsed:.2}s \
         = {:.0} msg/s ({:.0} deliveries/s); lost {lost}, duplicates {duplicates}, out of order {out_of_order}; \
         latency {}; server CPU {:.3} us/msg ({:.0}% of a core, waiting for a CPU {:.0}% of the time); {broker_text}; generator CPU {:.3} us/msg ({:.0}% \
         of a core), window waits {:.2}s; bottleneck: {bottleneck}",
        plan.kind.name(),
        subs,
        plan.messages,
        plan.size,
        expected - warmed,
        received as f64 / subs as f64 / elapsed,
        received as f64 / elapsed,
        latency.describe(),
        per_msg(server_cpu),
        share(server_cpu),
        share(server_delay),
        per_msg(own_cpu),
        share(own_cpu),
        waited.as_secs_f64(),
    );
    Ok(Outcome {
        human,
        metrics: json!({
            "bridge": plan.kind.name(),
            "subs": subs,
            "messages": plan.messages,
            "expected": expected - warmed,
            "delivered": received,
            "lost": lost,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "secs": elapsed,
            "publish_secs": publish_secs,
            "window_wait_secs": waited.as_secs_f64(),
            "msgs_per_sec": received as f64 / subs as f64 / elapsed,
            "deliveries_per_sec": received as f64 / elapsed,
            "latency_us": latency,
            "server_cpu_us_per_msg": per_msg(server_cpu),
            "server_cpu_pct": share(server_cpu),
            "server_run_delay_pct": share(server_delay),
            "broker_cpu_us_per_msg": broker_cpu.map(per_msg),
            "broker_cpu_pct": broker_cpu.map(share),
            "own_cpu_us_per_msg": per_msg(own_cpu),
            "own_cpu_pct": share(own_cpu),
            "bottleneck": bottleneck,
        }),
    })
}

/// Which process held the run back: one that used 85% of a core or more (the server and the generator are
/// pinned to one CPU each by scripts/bench.sh), else the machine when the three used 85% of its `cores`
/// together or the server waited for a CPU a fifth of the time or more (`server_delay_pct`: the machine was
/// busy with them or with something else), else none, and the pace was set by waits: the round trips of
/// confirmations and acks, one message at a time in the bridge.
fn bottleneck(
    server_pct: f64,
    broker_pct: Option<f64>,
    own_pct: f64,
    server_delay_pct: f64,
    cores: usize,
) -> String {
    let mut busy: Vec<(&str, f64)> = [
        ("herald", Some(server_pct)),
        ("the broker", broker_pct),
        ("the generator", Some(own_pct)),
    ]
    .into_iter()
    .filter_map(|(who, pct)| pct.map(|p| (who, p)))
    .filter(|(_, pct)| *pct >= 85.0)
    .collect();
    busy.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = server_pct + broker_pct.unwrap_or(0.0) + own_pct;
    match busy.first() {
        Some((who, pct)) => format!("{who}'s CPU ({pct:.0}% of a core)"),
        None if total >= 85.0 * cores as f64 => format!(
            "the machine's CPU ({total:.0}% of {cores} cores, herald, broker and generator together)"
        ),
        None if server_delay_pct >= 20.0 => format!(
            "the machine's CPU (herald waited for one {server_delay_pct:.0}% of the time)"
        ),
        None => "no process saturated a core: round trips and waits set the pace".into(),
    }
}

/// Waits until the server's status shows the bridge consuming `source` up.
async fn wait_bridge_up(target: &Target, kind: Kind, source: &str) -> anyhow::Result<()> {
    let url = format!("http://{}/api/v1/status", target.addr);
    let label = format!("{} {source} → {}", kind.name(), target.site);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let answer = target
            .http(0)
            .get(&url)
            .bearer_auth(&target.api_key)
            .send()
            .await;
        if let Ok(response) = answer {
            last = response.json::<Value>().await.unwrap_or(Value::Null);
            let up = last["bridges"].as_array().is_some_and(|bridges| {
                bridges
                    .iter()
                    .any(|b| b["bridge"] == label.as_str() && b["state"] == "up")
            });
            if up {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server has no bridge '{label}' up: {last}")
}

/// Waits until `expected` deliveries, or nothing new for `drain`; answers when the last one came.
async fn wait_received(deliveries: &Deliveries, expected: u64, drain: Duration) -> Instant {
    let mut seen = deliveries.received();
    let mut progress = Instant::now();
    while seen < expected && progress.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = deliveries.received();
        if now != seen {
            seen = now;
            progress = Instant::now();
        }
    }
    progress
}

/// The broker URL's port.
fn port_of(url: &str) -> Option<u16> {
    let after_host = url.rsplit_once('@').map_or(url, |(_, rest)| rest);
    let host_port = after_host
        .split_once("://")
        .map_or(after_host, |(_, rest)| rest);
    let host_port = host_port.split('/').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// CPU seconds of the process listening on `port` and of its children, each by pid.
#[derive(Debug, Default)]
struct BrokerCpu(Vec<(u32, f64)>);

impl BrokerCpu {
    /// CPU spent since `before`; a process started since counts from zero.
    fn since(&self, before: &BrokerCpu) -> f64 {
        self.0
            .iter()
            .map(|(pid, now)| {
                let then = before
                    .0
                    .iter()
                    .find(|(p, _)| p == pid)
                    .map_or(0.0, |(_, t)| *t);
                now - then
            })
            .sum()
    }
}

fn broker_cpu(port: u16) -> BrokerCpu {
    let Some(pid) = procfs::listener_pid(port) else {
        return BrokerCpu::default();
    };
    let mut pids = vec![pid];
    pids.extend(procfs::children(pid));
    BrokerCpu(
        pids.into_iter()
            .filter_map(|pid| procfs::cpu_secs(pid).ok().map(|cpu| (pid, cpu)))
            .collect(),
    )
}

/// The v1 publish of message `seq` into `room`, sized like `fanout`'s: the subscribers get
/// `42/<site>,["m",{"s":seq,"t":stamp,"p":"xx…"}]` of about `size` bytes.
struct Body {
    padding: String,
}

impl Body {
    fn new(target: &Target, size: usize) -> Body {
        let bare = format!("42{},[\"m\",", target.namespace()).len()
            + r#"{"p":"","s":0,"t":1000000000}"#.len()
            + 1;
        Body {
            padding: "x".repeat(size.saturating_sub(bare)),
        }
    }

    fn of(&self, seq: u64) -> String {
        format!(
            "{{\"rooms\":[\"room\"],\"event\":\"m\",\"args\":[{{\"s\":{seq},\"t\":{},\"p\":\"{}\"}}]}}",
            now_us(),
            self.padding
        )
    }
}

/// Requests sent and not yet answered, in the order sent.
type InFlight = VecDeque<Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>>;

/// `PUBLISH`es sent in one Redis pipeline.
const REDIS_BATCH: usize = 32;

/// The run's one producer, pipelining where its client lets requests go before the answers.
enum Producer {
    /// Persistent messages to the queue through the default exchange, with publisher confirms.
    Amqp {
        // Boxed: lapin's handles are large, and the enum is as large as its largest variant.
        channel: Box<lapin::Channel>,
        queue: String,
        in_flight: InFlight,
        depth: usize,
        _connection: Box<lapin::Connection>,
    },
    /// QoS 1; the event loop's task counts the PUBACKs.
    Mqtt {
        client: rumqttc::AsyncClient,
        topic: String,
        sent: u64,
        acked: Arc<AtomicU64>,
        failed: Arc<OnceLock<String>>,
    },
    /// Buffered by the client; a flush at the end is the server's confirmation.
    Nats {
        client: async_nats::Client,
        subject: String,
    },
    /// `PUBLISH`, in pipelines of up to `REDIS_BATCH` (one request each, in order: concurrent requests on a
    /// multiplexed connection may overtake each other).
    Redis {
        connection: redis::aio::MultiplexedConnection,
        channel: String,
        batch: redis::Pipeline,
        batched: usize,
    },
    /// `SELECT pg_notify($1, $2)`, one transaction each, pipelined on one connection.
    Postgres {
        client: Arc<tokio_postgres::Client>,
        statement: tokio_postgres::Statement,
        channel: String,
        in_flight: InFlight,
        depth: usize,
    },
}

impl Producer {
    async fn connect(
        kind: Kind,
        url: &str,
        source: &str,
        depth: usize,
    ) -> anyhow::Result<Producer> {
        let source = source.to_string();
        Ok(match kind {
            Kind::Amqp => {
                use lapin::options::{ConfirmSelectOptions, QueuePurgeOptions};
                let connection =
                    lapin::Connection::connect(url, lapin::ConnectionProperties::default())
                        .await
                        .context("connecting to RabbitMQ")?;
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                // herald declared it; what an earlier run left in it would be counted as stray deliveries.
                channel
                    .queue_purge(source.as_str().into(), QueuePurgeOptions::default())
                    .await
                    .context("purging the bridge's queue (is the AMQP bridge up?)")?;
                Producer::Amqp {
                    channel: Box::new(channel),
                    queue: source,
                    in_flight: VecDeque::new(),
                    depth,
                    _connection: Box::new(connection),
                }
            }
            Kind::Mqtt => {
                let port = port_of(url).unwrap_or(1883);
                let id = format!("herald-bench-{:08x}", rand::random::<u32>());
                let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
                options.set_keep_alive(Duration::from_secs(30));
                let (client, mut events) = rumqttc::AsyncClient::new(options, 1024);
                let acked = Arc::new(AtomicU64::new(0));
                let failed = Arc::new(OnceLock::new());
                let (count, failure) = (Arc::clone(&acked), Arc::clone(&failed));
                let (connected, is_connected) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let mut connected = Some(connected);
                    loop {
                        match events.poll().await {
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                                if let Some(connected) = connected.take() {
                                    let _ = connected.send(());
                                }
                            }
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = failure.set(e.to_string());
                                return;
                            }
                        }
                    }
                });
                tokio::time::timeout(Duration::from_secs(5), is_connected)
                    .await
                    .context("Mosquitto did not answer")?
                    .map_err(|_| {
                        anyhow::anyhow!("cannot connect to Mosquitto: {:?}", failed.get())
                    })?;
                Producer::Mqtt {
                    client,
                    topic: source,
                    sent: 0,
                    acked,
                    failed,
                }
            }
            Kind::Nats => Producer::Nats {
                client: async_nats::connect(url)
                    .await
                    .context("connecting to NATS")?,
                subject: source,
            },
            Kind::Redis => Producer::Redis {
                connection: redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await
                    .context("connecting to Redis")?,
                channel: source,
                batch: redis::pipe(),
                batched: 0,
            },
            Kind::Postgres => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .context("connecting to Postgres")?;
                tokio::spawn(connection);
                let statement = client.prepare("SELECT pg_notify($1, $2)").await?;
                Producer::Postgres {
                    client: Arc::new(client),
                    statement,
                    channel: source,
                    in_flight: VecDeque::new(),
                    depth,
                }
            }
        })
    }

    /// Sends `body`; waits only when too many requests wait for their answer.
    async fn send(&mut self, body: String) -> anyhow::Result<()> {
        match self {
            Producer::Amqp {
                channel,
                queue,
                in_flight,
                depth,
                ..
            } => {
                let (channel, queue) = (lapin::Channel::clone(channel), queue.clone());
                let request = async move {
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            lapin::options::BasicPublishOptions::default(),
                            body.as_bytes(),
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?
                        .await?;
                    anyhow::ensure!(confirm.is_ack(), "RabbitMQ did not confirm a message");
                    Ok(())
                };
                pipeline(in_flight, *depth, Box::pin(request)).await
            }
            Producer::Mqtt {
                client,
                topic,
                sent,
                acked,
                failed,
            } => {
                if let Some(e) = failed.get() {
                    bail!("the MQTT producer lost Mosquitto: {e}");
                }
                // rumqttc keeps at most 100 in flight; its request queue holds the rest.
                while *sent >= acked.load(Ordering::Relaxed) + 1000 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                client
                    .publish(topic.as_str(), rumqttc::QoS::AtLeastOnce, false, body)
                    .await?;
                *sent += 1;
                Ok(())
            }
            Producer::Nats { client, subject } => {
                client.publish(subject.clone(), body.into()).await?;
                Ok(())
            }
            Producer::Redis {
                channel,
                batch,
                batched,
                ..
            } => {
                batch
                    .cmd("PUBLISH")
                    .arg(channel.as_str())
                    .arg(body)
                    .ignore();
                *batched += 1;
                if *batched >= REDIS_BATCH {
                    self.push().await?;
                }
                Ok(())
            }
            Producer::Postgres {
                client,
                statement,
                channel,
                in_flight,
                depth,
            } => {
                let (client, statement, channel) =
                    (Arc::clone(client), statement.clone(), channel.clone());
                let request = async move {
                    client.execute(&statement, &[&channel, &body]).await?;
                    Ok(())
                };
                pipeline(in_flight, *depth, Box::pin(request)).await
            }
        }
    }

    /// Sends what is batched (before waiting for deliveries, which may need it).
    async fn push(&mut self) -> anyhow::Result<()> {
        if let Producer::Redis {
            connection,
            batch,
            batched,
            ..
        } = self
        {
            if *batched > 0 {
                batch.query_async::<()>(connection).await?;
                batch.clear();
                *batched = 0;
            }
        }
        Ok(())
    }

    /// Waits until the broker confirmed everything sent.
    async fn finish(&mut self) -> anyhow::Result<()> {
        self.push().await?;
        match self {
            Producer::Redis { .. } => Ok(()),
            Producer::Amqp { in_flight, .. } | Producer::Postgres { in_flight, .. } => {
                while let Some(request) = in_flight.pop_front() {
                    request.await?;
                }
                Ok(())
            }
            Producer::Mqtt {
                sent,
                acked,
                failed,
                ..
            } => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while acked.load(Ordering::Relaxed) < *sent {
                    if let Some(e) = failed.get() {
                        bail!("the MQTT producer lost Mosquitto: {e}");
                    }
                    anyhow::ensure!(Instant::now() < deadline, "Mosquitto stopped PUBACKing");
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                Ok(())
            }
            Producer::Nats { client, .. } => Ok(client.flush().await?),
        }
    }
}

impl Producer {
    /// Leaves nothing behind on the shared broker: the run's durable AMQP queue is deleted (the server stops
    /// right after, before its bridge would declare it again).
    async fn close(self) {
        if let Producer::Amqp { channel, queue, .. } = self {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
    }
}

/// Starts `request` (its first poll sends it, so requests go in order) and keeps it until its answer; awaits
/// the oldest when more than `depth` wait.
async fn pipeline(
    in_flight: &mut InFlight,
    depth: usize,
    mut request: Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>,
) -> anyhow::Result<()> {
    match poll_immediate(&mut request).await {
        Some(answered) => answered?,
        None => in_flight.push_back(request),
    }
    while in_flight.len() > depth {
        if let Some(oldest) = in_flight.pop_front() {
            oldest.await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_ports_come_from_the_url() {
        assert_eq!(port_of("amqp://guest:guest@127.0.0.1:5672/%2f"), Some(5672));
        assert_eq!(port_of("mqtt://127.0.0.1:1883"), Some(1883));
        assert_eq!(port_of("redis://127.0.0.1:6379/"), Some(6379));
        assert_eq!(
            port_of("postgres://postgres@127.0.0.1:5432/postgres"),
            Some(5432)
        );
        assert_eq!(port_of("nats://localhost"), None);
    }

    #[test]
    fn the_bottleneck_is_the_busiest_saturated_process() {
        assert_eq!(
            bottleneck(97.0, Some(40.0), 30.0, 0.0, 2),
            "herald's CPU (97% of a core)"
        );
        assert_eq!(
            bottleneck(90.0, Some(99.0), 30.0, 0.0, 2),
            "the broker's CPU (99% of a core)"
        );
        assert!(bottleneck(80.0, Some(60.0), 40.0, 0.0, 2)
            .starts_with("the machine's CPU (180% of 2 cores"));
        assert!(bottleneck(80.0, Some(60.0), 40.0, 0.0, 4).starts_with("no process"));
        assert_eq!(
            bottleneck(30.0, Some(10.0), 20.0, 45.0, 2),
            "the machine's CPU (herald waited for one 45% of the time)"
        );
        assert!(bottleneck(50.0, None, 20.0, 5.0, 2).starts_with("no process"));
    }

    #[test]
    fn bodies_give_frames_of_the_requested_size() {
        let target = Target::new(
            "127.0.0.1:1".parse().expect("addr"),
            "bench".into(),
            "k".into(),
            "s",
            1,
            crate::target::Transport::Websocket,
        )
        .expect("target");
        let body = Body::new(&target, 100);
        let publish: Value = serde_json::from_str(&body.of(5)).expect("JSON");
        // What herald sends on: the argument re-encoded with its keys sorted.
        let mut arg = publish["args"][0].clone();
        arg["t"] = json!(1_000_000_000u64);
        let frame = format!("42/bench,[\"m\",{arg}]");
        assert_eq!(frame.len(), 100, "{frame}");
    }
}
