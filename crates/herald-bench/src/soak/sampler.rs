//! The server's RSS and open file handles every few seconds, with the generator's own counts beside them, and
//! a progress line every 30 s.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::crowd::CrowdStats;
use super::devices::DeviceStats;
use super::feed::FeedStats;
use crate::procfs;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// Population clients and devices connected (as the generator counts them).
    pub clients: u64,
    pub devices: u64,
}

#[derive(Default)]
pub struct Samples(Mutex<Vec<Sample>>);

impl Samples {
    pub fn all(&self) -> Vec<Sample> {
        match self.0.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn push(&self, sample: Sample) {
        if let Ok(mut s) = self.0.lock() {
            s.push(sample);
        }
    }
}

/// The mean of `f` over the samples taken in `[from, to]` seconds; `None` without any.
pub fn mean(samples: &[Sample], from: f64, to: f64, f: impl Fn(&Sample) -> u64) -> Option<f64> {
    let window: Vec<f64> = samples
        .iter()
        .filter(|s| s.t >= from && s.t <= to)
        .map(|s| f(s) as f64)
        .collect();
    (!window.is_empty()).then(|| window.iter().sum::<f64>() / window.len() as f64)
}

pub struct Sampler {
    pub pid: u32,
    pub every: Duration,
    pub started: Instant,
    pub samples: Arc<Samples>,
    pub crowd: Arc<CrowdStats>,
    pub devices: Arc<DeviceStats>,
    pub feed: Arc<FeedStats>,
}

impl Sampler {
    /// Samples until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.every);
        let mut last_line = 0.0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let (Ok(rss_kib), Ok(fds)) = (procfs::rss_kib(self.pid), procfs::fd_count(self.pid))
            else {
                eprintln!("[soak] the server (pid {}) is gone", self.pid);
                return;
            };
            let sample = Sample {
                t: self.started.elapsed().as_secs_f64(),
                rss_kib,
                fds,
                threads: procfs::threads(self.pid).unwrap_or(0),
                clients: self.crowd.online.load(Ordering::Relaxed),
                devices: self.devices.online.load(Ordering::Relaxed),
            };
            self.samples.push(sample);
            if sample.t - last_line >= 30.0 {
                last_line = sample.t;
                self.progress(&sample);
            }
        }
    }

    fn progress(&self, s: &Sample) {
        let c = &self.crowd;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        eprintln!(
            "[soak] t={:.0}s clients {} devices {} | server RSS {:.1} MiB, {} fds | connects {} (errors {}), \
             dropped by server {}, slow dropped {} | publishes public {} mailbox {} firehose {} (errors {}) | \
             public deliveries {}",
            s.t,
            s.clients,
            s.devices,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            load(&c.connects_ws) + load(&c.connects_polling) + load(&self.devices.connects),
            load(&c.connect_errors) + load(&self.devices.connect_errors),
            load(&c.dropped_by_server) + load(&self.devices.dropped_by_server),
            load(&c.slow_dropped),
            load(&self.feed.public_ok),
            load(&self.feed.mailbox_ok),
            load(&self.feed.firehose_ok),
            load(&self.feed.errors),
            c.public.received(),
        );
    }
}
