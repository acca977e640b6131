//! Each bridge's state for `/api/v1/status`: connected or not, since when, the last failure, and how many
//! messages it published, rejected and left for a retry. Event routes to brokers (`events/brokers/`) show
//! theirs here too: events confirmed, refused, and failed for a reason that may pass (broker down, no confirm
//! in time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::inbound::Handled;

/// Every bridge's status, then every broker route's, as one list: the bridges run as long as the process, the
/// routes are made again when a reload changes them (`set_routes`). Clones share the list.
#[derive(Debug, Clone, Default)]
pub struct Statuses {
    bridges: Arc<Vec<Arc<BridgeStatus>>>,
    routes: Arc<arc_swap::ArcSwap<Vec<Arc<BridgeStatus>>>>,
}

impl Statuses {
    pub fn new(bridges: Vec<Arc<BridgeStatus>>, routes: Vec<Arc<BridgeStatus>>) -> Self {
        Statuses {
            bridges: Arc::new(bridges),
            routes: Arc::new(arc_swap::ArcSwap::from_pointee(routes)),
        }
    }

    /// The bridges', then the routes' statuses, as they are now.
    pub fn all(&self) -> Vec<Arc<BridgeStatus>> {
        let routes = self.routes.load();
        self.bridges.iter().chain(routes.iter()).cloned().collect()
    }

    /// The broker routes' statuses after a reload made them again.
    pub(crate) fn set_routes(&self, routes: Vec<Arc<BridgeStatus>>) {
        self.routes.store(Arc::new(routes));
    }
}

/// Where a bridge's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// An event route's broker connection that no event has needed yet (it connects at the first).
    Idle,
    Connecting,
    /// Consuming.
    Up,
    /// Lost; retrying with backoff.
    Down,
    /// Connected, but another node of the cluster consumes (Redis and Postgres have no shared subscription).
    Standby,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting => "connecting",
            State::Up => "up",
            State::Down => "down",
            State::Standby => "standby",
        }
    }
}

/// One bridge's state and counters.
#[derive(Debug)]
pub struct BridgeStatus {
    /// `amqp herald.acme → acme`: no URL, so no credential.
    pub label: String,
    pub site: String,
    state: Mutex<(State, Option<String>)>,
    published: AtomicU64,
    rejected: AtomicU64,
    retried: AtomicU64,
}

impl BridgeStatus {
    pub fn new(label: String, site: String) -> Arc<Self> {
        Arc::new(BridgeStatus {
            label,
            site,
            state: Mutex::new((State::Connecting, None)),
            published: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        })
    }

    /// The bridge is now in `state`; `error` says why it went down (no URL in it).
    pub fn set(&self, state: State, error: Option<String>) {
        let mut current = self.state.lock();
        current.0 = state;
        if error.is_some() {
            current.1 = error;
        }
    }

    pub fn state(&self) -> State {
        self.state.lock().0
    }

    pub(crate) fn count(&self, handled: &Handled) {
        let counter = match handled {
            Handled::Published => &self.published,
            Handled::Rejected(_) => &self.rejected,
            Handled::Retry(_) => &self.retried,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `{bridge, site, state, last_error, published, rejected, retried}`.
    pub fn describe(&self) -> Value {
        let (state, error) = self.state.lock().clone();
        json!({
            "bridge": self.label,
            "site": self.site,
            "state": state.name(),
            "last_error": error,
            "published": self.published.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "retried": self.retried.load(Ordering::Relaxed),
        })
    }
}
