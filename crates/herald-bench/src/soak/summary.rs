//! The soak's figures: the summary people read, and the metrics `--strict` and `--json` use.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::crowd::CrowdStats;
use super::devices::DeviceStats;
use super::feed::FeedStats;
use super::ledger::Verdict;
use super::sampler::{mean, Sample};
use super::Plan;
use crate::procfs;
use crate::stats::Latency;
use crate::Outcome;

/// The server's RSS and open file handles at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub rss_kib: u64,
    pub fds: u64,
}

impl Server {
    pub fn now(pid: u32) -> anyhow::Result<Self> {
        Ok(Server {
            rss_kib: procfs::rss_kib(pid)?,
            fds: procfs::fd_count(pid)?,
        })
    }
}

/// RSS in KiB right after `malloc_trim(0)`, when `--gdb-trim` asked for it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Trimmed {
    pub steady: Option<u64>,
    pub end: Option<u64>,
    pub after: Option<u64>,
}

/// CPU seconds of the server and of the generator, and the seconds each waited for a CPU while runnable.
pub struct Cpu {
    server: f64,
    own: f64,
    server_wait: f64,
    own_wait: f64,
}

/// CPU used (and waited for) over a stretch of wall time.
pub struct CpuUse {
    pub server: f64,
    pub own: f64,
    pub server_wait: f64,
    pub own_wait: f64,
    pub wall: f64,
}

impl Cpu {
    pub fn now(pid: u32) -> anyhow::Result<Self> {
        Ok(Cpu {
            server: procfs::cpu_secs(pid)?,
            own: procfs::own_cpu_secs()?,
            server_wait: procfs::run_delay_secs(pid)?,
            own_wait: procfs::run_delay_secs(std::process::id())?,
        })
    }

    pub fn since(&self, start: &Cpu, wall: Duration) -> CpuUse {
        CpuUse {
            server: self.server - start.server,
            own: self.own - start.own,
            server_wait: self.server_wait - start.server_wait,
            own_wait: self.own_wait - start.own_wait,
            wall: wall.as_secs_f64(),
        }
    }
}

pub struct Run<'a> {
    pub plan: &'a Plan,
    pub warmup: Duration,
    pub before: Server,
    pub after: Server,
    pub trimmed: Trimmed,
    pub cpu: CpuUse,
    /// Handshakes of clients and devices, to the CONNECT answer.
    pub connect_latency: Latency,
    pub samples: &'a [Sample],
    pub crowd: &'a CrowdStats,
    pub devices: &'a DeviceStats,
    pub feed: &'a FeedStats,
    pub verdict: Verdict,
    /// (pending, connected devices) when the drain ended; `None` when the API never answered.
    pub drained: Option<(u64, u64)>,
    pub drain_secs: f64,
    /// (pending, devices marked connected) after the devices left and the settle.
    pub pending_after: Option<(u64, u64)>,
    pub sockets_left: Option<u64>,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

impl Run<'_> {
    pub fn outcome(self) -> Outcome {
        let (c, d, f, v) = (self.crowd, self.devices, self.feed, &self.verdict);
        let churn = self.plan.duration.as_secs_f64();
        let warm = self.warmup.as_secs_f64();
        let window = (warm / 2.0).min(30.0);
        let rss = |s: &Sample| s.rss_kib;
        let steady = mean(self.samples, warm - window, warm, rss).unwrap_or(0.0);
        // The end window stops 2 s early, before the trim at the end of the run (with `--gdb-trim`).
        let end = mean(self.samples, churn - 2.0 - window, churn - 2.0, rss).unwrap_or(0.0);
        let drift_pct = if steady > 0.0 {
            (end - steady) / steady * 100.0
        } else {
            0.0
        };
        let peak_rss = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let peak_fds = self.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        let online = mean(self.samples, warm, churn, |s| s.clients).unwrap_or(0.0);
        let clients = |s: &Sample| s.clients;
        let steady_clients = mean(self.samples, warm - window, warm, clients).unwrap_or(0.0);
        let end_clients =
            mean(self.samples, churn - 2.0 - window, churn - 2.0, clients).unwrap_or(0.0);
        let t = self.trimmed;
        let trim_drift_pct = match (t.steady, t.end) {
            (Some(a), Some(b)) if a > 0 => Some((b as f64 - a as f64) / a as f64 * 100.0),
            _ => None,
        };
        let peak_threads = self.samples.iter().map(|s| s.threads).max().unwrap_or(0);
        let connects = load(&c.connects_ws) + load(&c.connects_polling);
        let fd_leak = self
            .after
            .fds
            .saturating_sub(self.before.fds + self.plan.fd_slack);
        let pending_left = match (self.pending_after, self.drained) {
            (Some((p, _)), Some((q, _))) => p.max(q),
            (Some((p, _)), None) | (None, Some((p, _))) => p,
            (None, None) => 1,
        };
        let sockets_left = self.sockets_left.unwrap_or(1);
        let public = c.public.latency();
        let answer = f.mailbox_latency();
        let mut human = String::new();
        let _ = writeln!(
            human,
            "soak: {} clients ({:.0}% polling, {:.0}% slow readers) and {} mailbox devices for {churn:.0}s \
             ({warm:.0}s warm-up)",
            self.plan.clients,
            self.plan.polling_share * 100.0,
            self.plan.slow_share * 100.0,
            self.plan.devices
        );
        let _ = writeln!(
            human,
            "  churn: {connects} client connects ({} WebSocket, {} polling) = {:.0}/s, {} device connects; {:.0} \
             clients online on average after the warm-up; connect (handshake to CONNECT answer) {}; connect errors \
             {}; dropped by the server: {} clients, {} device connections",
            load(&c.connects_ws),
            load(&c.connects_polling),
            connects as f64 / churn,
            load(&d.connects),
            online,
            self.connect_latency.describe(),
            load(&c.connect_errors) + load(&d.connect_errors),
            load(&c.dropped_by_server),
            load(&d.dropped_by_server)
        );
        let _ = writeln!(
            human,
            "  slow readers: {} stalls, {} found disconnected by the server, {} still connected after the stall; \
             firehose {} messages (batches over /batch) queued for {} sockets in all, {} received; {} public-room \
             messages received (left out of the latency figures)",
            load(&c.slow_stalls),
            load(&c.slow_dropped),
            load(&c.slow_survived),
            load(&f.firehose_ok),
            load(&f.firehose_matched),
            load(&c.firehose_received),
            load(&c.slow_public)
        );
        let _ = writeln!(
            human,
            "  public room: {} publishes ({:.1}/s) queued for {} sockets; {} deliveries to the normal clients, \
             duplicates {}, out of order {}; latency {}",
            load(&f.public_ok),
            load(&f.public_ok) as f64 / churn,
            load(&f.public_matched),
            c.public.received(),
            load(&c.public.duplicates),
            load(&c.public.out_of_order),
            public.describe()
        );
        let _ = writeln!(
            human,
            "  mailboxes: {} publishes ({:.1}/s; answer {}), {} answered with an entry queued, {} with none, {} \
             failed; {} handed to a connected device at once",
            v.published,
            v.published as f64 / churn,
            answer.describe(),
            v.queued,
            v.not_queued,
            v.failed,
            load(&f.mailbox_online)
        );
        let _ = writeln!(
            human,
            "  mailbox entries: {} received ({} receipts; {} _batch pages, {} acks), lost {}, duplicated on one \
             connection {}, out of order {}, replayed after a reconnect {}, never published {}, received though \
             unconfirmed {}, resyncs {}, foreign {}",
            v.received_distinct,
            v.receipts,
            load(&d.batches),
            load(&d.acks),
            v.lost,
            v.duplicates,
            v.out_of_order,
            v.redelivered,
            v.phantom,
            v.received_unconfirmed,
            load(&d.resyncs),
            load(&d.foreign)
        );
        if !v.lost_examples.is_empty() {
            let _ = writeln!(human, "  lost (user, seq): {:?}", v.lost_examples);
        }
        let _ = writeln!(
            human,
            "  drain: {:.1}s, then (pending, devices connected) {:?}; after the devices left and the settle {:?}",
            self.drain_secs, self.drained, self.pending_after
        );
        let _ = writeln!(
            human,
            "  server RSS: before {:.1} MiB, steady (end of warm-up) {:.1} MiB, end of run {:.1} MiB ({drift_pct:+.1}%), \
             peak {:.1} MiB, after teardown {:.1} MiB",
            mib(self.before.rss_kib as f64),
            mib(steady),
            mib(end),
            mib(peak_rss as f64),
            mib(self.after.rss_kib as f64)
        );
        let _ = writeln!(
            human,
            "  RSS windows: the last {window:.0}s of the warm-up ({steady_clients:.0} clients on average) and of the \
             run ({end_clients:.0} clients)"
        );
        if t.steady.is_some() || t.end.is_some() || t.after.is_some() {
            let show =
                |v: Option<u64>| v.map_or("?".to_string(), |k| format!("{:.1} MiB", mib(k as f64)));
            let _ = writeln!(
                human,
                "  server RSS right after malloc_trim(0): end of warm-up {}, end of run {} ({}), after teardown {}",
                show(t.steady),
                show(t.end),
                trim_drift_pct.map_or("?".to_string(), |p| format!("{p:+.1}%")),
                show(t.after)
            );
        }
        let _ = writeln!(
            human,
            "  server file handles: before {}, peak {peak_fds}, after {}; sockets left in the namespace {:?}; \
             threads peak {peak_threads}",
            self.before.fds, self.after.fds, self.sockets_left
        );
        let _ = writeln!(
            human,
            "  CPU over the churn: server {:.0}s = {:.2} cores, generator {:.0}s = {:.2} cores; waiting for a CPU \
             while runnable (other load on the machine): server {:.0}s, generator {:.0}s",
            self.cpu.server,
            self.cpu.server / self.cpu.wall.max(1e-9),
            self.cpu.own,
            self.cpu.own / self.cpu.wall.max(1e-9),
            self.cpu.server_wait,
            self.cpu.own_wait
        );
        let _ = write!(
            human,
            "  timeline (t, RSS MiB, fds, threads, clients, devices):"
        );
        let mut next = 0.0;
        for s in self.samples {
            if s.t >= next {
                let _ = write!(
                    human,
                    " [{:.0}s {:.1} {} {} {} {}]",
                    s.t,
                    mib(s.rss_kib as f64),
                    s.fds,
                    s.threads,
                    s.clients,
                    s.devices
                );
                next = (s.t / 60.0).floor() * 60.0 + 60.0;
            }
        }
        let mut metrics = json!({
            "clients": self.plan.clients,
            "devices": self.plan.devices,
            "secs": churn,
            "connects": connects,
            "connects_per_sec": connects as f64 / churn,
            "device_connects": load(&d.connects),
            "connect_errors": load(&c.connect_errors) + load(&d.connect_errors),
            "connect_latency_us": self.connect_latency,
            "dropped_by_server": load(&c.dropped_by_server),
            "online_mean": online,
            "slow_stalls": load(&c.slow_stalls),
            "slow_dropped": load(&c.slow_dropped),
            "slow_survived": load(&c.slow_survived),
            "firehose_publishes": load(&f.firehose_ok),
            "public_publishes": load(&f.public_ok),
            "public_deliveries": c.public.received(),
            "public_latency_us": public,
            "mailbox": v,
            "mailbox_answer_us": answer,
            "lost": v.lost,
            "duplicates": v.duplicates + load(&c.public.duplicates),
            "out_of_order": v.out_of_order + load(&c.public.out_of_order),
            "phantom": v.phantom,
            "publish_errors": load(&f.errors),
            "pending_left": pending_left,
            "devices_left_connected": self.pending_after.map_or(1, |(_, connected)| connected),
            "drain_secs": self.drain_secs,
        });
        // Two objects: one json! of everything is past the macro's recursion limit.
        let server = json!({
            "rss_before_kib": self.before.rss_kib,
            "rss_steady_kib": steady,
            "rss_end_kib": end,
            "rss_peak_kib": peak_rss,
            "rss_after_kib": self.after.rss_kib,
            "rss_drift_pct": drift_pct,
            "rss_drift": u64::from(drift_pct > 10.0),
            "rss_steady_clients": steady_clients,
            "rss_end_clients": end_clients,
            "rss_trimmed_steady_kib": t.steady,
            "rss_trimmed_end_kib": t.end,
            "rss_trimmed_after_kib": t.after,
            "rss_trimmed_drift_pct": trim_drift_pct,
            "threads_peak": peak_threads,
            "fds_before": self.before.fds,
            "fds_peak": peak_fds,
            "fds_after": self.after.fds,
            "fd_leak": fd_leak,
            "sockets_left": sockets_left,
            "server_cpu_cores": self.cpu.server / self.cpu.wall.max(1e-9),
            "own_cpu_cores": self.cpu.own / self.cpu.wall.max(1e-9),
            "server_run_delay_secs": self.cpu.server_wait,
            "own_run_delay_secs": self.cpu.own_wait,
            "samples": self.samples,
        });
        if let (Some(metrics), Value::Object(server)) = (metrics.as_object_mut(), server) {
            metrics.extend(server);
        }
        Outcome { human, metrics }
    }
}
