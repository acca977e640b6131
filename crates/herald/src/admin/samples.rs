//! What the admin console charts: every `SAMPLE_EVERY`, each site's sockets on this node by transport and its
//! publish and delivery totals, kept for `KEEP` samples (an hour), so a chart has history when the page opens.
//!
//! A sample counts sockets under the namespace's read lock, as a `/metrics` scrape does, and reads two atomics
//! per site: it adds nothing to the publish or fan-out path.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::metrics::TRANSPORTS;
use crate::sites::{Site, Sites};

/// Time between samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: an hour.
pub const KEEP: usize = 720;

/// One site at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSample {
    /// Sockets on this node by transport, in `TRANSPORTS`' order.
    pub connections: [u32; TRANSPORTS.len()],
    pub publishes: u64,
    pub deliveries: u64,
}

/// Every site at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    sites: Vec<(Arc<str>, SiteSample)>,
}

/// The ring of samples. Shared by the sampler task and the API.
#[derive(Debug, Default)]
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
}

impl Samples {
    /// Starts sampling `sites` every `SAMPLE_EVERY` (the first sample at once), for as long as the returned
    /// ring lives.
    pub fn start(sites: Sites) -> Arc<Samples> {
        let samples = Arc::new(Samples::default());
        samples.take(&sites);
        let ring = Arc::downgrade(&samples);
        tokio::spawn(sample_every(ring, sites));
        samples
    }

    fn take(&self, sites: &Sites) {
        let sample = Sample {
            at_ms: crate::mailbox::store::now_ms(),
            sites: sites
                .all()
                .iter()
                .map(|site| (Arc::from(site.config.name.as_str()), measure(site)))
                .collect(),
        };
        let mut ring = self.ring.lock();
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// `site`'s samples, oldest first, and one taken now: `{everyMs, transports, samples: [{at, connections,
    /// publishes, deliveries}]}`. Publishes and deliveries are totals since the start; a chart shows their
    /// differences.
    pub fn of(&self, site: &Site) -> Value {
        let name = site.config.name.as_str();
        let mut samples: Vec<Value> = self
            .ring
            .lock()
            .iter()
            .filter_map(|sample| {
                let (_, found) = sample.sites.iter().find(|(n, _)| &**n == name)?;
                Some(describe(sample.at_ms, found))
            })
            .collect();
        samples.push(describe(crate::mailbox::store::now_ms(), &measure(site)));
        json!({
            "everyMs": SAMPLE_EVERY.as_millis() as u64,
            "transports": TRANSPORTS.map(|t| t.as_str()),
            "samples": samples,
        })
    }
}

/// `site` now.
pub fn measure(site: &Site) -> SiteSample {
    let mut connections = [0u32; TRANSPORTS.len()];
    site.namespace.for_each_socket(|socket| {
        let transport = socket.session().transport();
        if let Some(i) = TRANSPORTS.iter().position(|t| *t == transport) {
            connections[i] += 1;
        }
    });
    let (publishes, deliveries) = site.metrics.totals.read();
    SiteSample {
        connections,
        publishes,
        deliveries,
    }
}

fn describe(at_ms: u64, sample: &SiteSample) -> Value {
    json!({
        "at": at_ms,
        "connections": sample.connections,
        "publishes": sample.publishes,
        "deliveries": sample.deliveries,
    })
}

async fn sample_every(ring: Weak<Samples>, sites: Sites) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and `start` took that sample.
    every.tick().await;
    loop {
        every.tick().await;
        let Some(samples) = ring.upgrade() else {
            return;
        };
        samples.take(&sites);
    }
}
