//! `Link`: one broker connection's state as the events waiting on it see it (idle until the first event,
//! connecting, up with a handle to publish on, down), the bound on events waiting for its confirms, and the
//! log lines and status of its outages: a warning when one starts and a line when it ends, the failed attempts
//! in between at debug.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Failure;
use crate::bridges::status::{BridgeStatus, State};

/// Most events of one process waiting for one broker's confirm: each holds a permit from the moment it is
/// taken until the broker answered (or the connection is gone), even after its client's timeout.
pub const MAX_WAITING: usize = 1024;

/// Where a link is.
#[derive(Clone)]
enum Phase<T> {
    /// No event has needed it yet.
    Idle,
    Connecting,
    Up(T),
    /// The last attempt failed; the next one comes after a backoff.
    Down,
}

/// One broker connection, shared by every route naming its URL. `T` is what a publish needs (a channel, a
/// client), cheap to clone.
pub struct Link<T> {
    /// `amqp 127.0.0.1:5672`: no credential.
    pub label: String,
    phase: watch::Sender<Phase<T>>,
    /// The statuses of the routes on this link, which show its state.
    statuses: Mutex<Vec<Arc<BridgeStatus>>>,
    started: AtomicBool,
    /// Set from the first failure until the link is up again: one warning per outage.
    in_outage: AtomicBool,
    waiting: Arc<Semaphore>,
}

impl<T: Clone> Link<T> {
    pub fn new(label: String) -> Self {
        Link {
            label,
            phase: watch::Sender::new(Phase::Idle),
            statuses: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
            in_outage: AtomicBool::new(false),
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
        }
    }

    /// Shows this link's state in `status` (a route's).
    pub fn add_status(&self, status: Arc<BridgeStatus>) {
        status.set(State::Idle, None);
        self.statuses.lock().push(status);
    }

    /// Runs `start` the first time it is called: the connection is made for the first event.
    pub fn start_once(&self, start: impl FnOnce()) {
        if !self.started.swap(true, Ordering::AcqRel) {
            start();
        }
    }

    /// A place among the events waiting for this broker, or `Busy`.
    pub fn permit(&self) -> Result<OwnedSemaphorePermit, Failure> {
        Arc::clone(&self.waiting)
            .try_acquire_owned()
            .map_err(|_| Failure::Busy)
    }

    /// The handle to publish on: at once when up, after the connection when it is being made (until
    /// `deadline`); `Unavailable` when it is down or does not come up in time.
    pub async fn ready(&self, deadline: Instant) -> Result<T, Failure> {
        let mut phase = self.phase.subscribe();
        loop {
            match &*phase.borrow_and_update() {
                Phase::Up(handle) => return Ok(handle.clone()),
                Phase::Down => return Err(Failure::Unavailable),
                Phase::Idle | Phase::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, phase.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(Failure::Unavailable),
            }
        }
    }

    /// A connection (or channel) is being made.
    pub fn connecting(&self) {
        self.phase.send_replace(Phase::Connecting);
        self.show(State::Connecting, None);
    }

    /// Events may publish on `handle`.
    pub fn up(&self, handle: T) {
        self.phase.send_replace(Phase::Up(handle));
        if self.in_outage.swap(false, Ordering::AcqRel) {
            tracing::info!(broker = %self.label, "event routes: the broker is reachable again");
        } else {
            tracing::debug!(broker = %self.label, "event routes: connected to the broker");
        }
        self.show(State::Up, None);
    }

    /// The connection failed or was lost (`reason`, without the URL): events fail at once until it is back.
    pub fn down(&self, reason: &str) {
        self.phase.send_replace(Phase::Down);
        if self.in_outage.swap(true, Ordering::AcqRel) {
            tracing::debug!(broker = %self.label, reason, "event routes: the broker is still unavailable");
        } else {
            tracing::warn!(
                broker = %self.label,
                reason,
                "event routes: the broker is unavailable; events routed to it fail until it is back"
            );
        }
        self.show(State::Down, Some(reason.to_string()));
    }

    fn show(&self, state: State, error: Option<String>) {
        for status in self.statuses.lock().iter() {
            status.set(state, error.clone());
        }
    }
}

/// `kind host:port` of `url`, for logs and statuses: no user, password, path or query.
pub fn label(kind: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or_default();
            match parsed.port() {
                Some(port) => format!("{kind} {host}:{port}"),
                None => format!("{kind} {host}"),
            }
        }
        Err(_) => format!("{kind} (an invalid url)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn labels_show_no_credentials() {
        assert_eq!(
            label("amqp", "amqp://guest:s3cret@rabbit:5672/%2f"),
            "amqp rabbit:5672"
        );
        assert_eq!(label("nats", "nats://u:p@n"), "nats n");
        assert_eq!(label("mqtt", "mqtt://[bad"), "mqtt (an invalid url)");
    }

    #[tokio::test]
    async fn events_wait_for_a_connection_and_fail_at_once_when_down() {
        let link = Arc::new(Link::<u32>::new("test".into()));
        let status = BridgeStatus::new("route".into(), "site".into());
        link.add_status(Arc::clone(&status));
        assert_eq!(status.describe()["state"], "idle");
        let soon = Instant::now() + Duration::from_secs(5);
        let waiting = {
            let link = Arc::clone(&link);
            tokio::spawn(async move { link.ready(soon).await })
        };
        link.connecting();
        tokio::task::yield_now().await;
        link.up(7);
        assert_eq!(waiting.await.expect("the task"), Ok(7));
        assert_eq!(status.describe()["state"], "up");
        link.down("refused");
        assert_eq!(link.ready(soon).await, Err(Failure::Unavailable));
        assert_eq!(status.describe()["last_error"], "refused");
        // Connecting past the deadline is unavailable too.
        link.connecting();
        let now = Instant::now() + Duration::from_millis(20);
        assert_eq!(link.ready(now).await, Err(Failure::Unavailable));
    }

    #[test]
    fn waiting_events_are_bounded() {
        let link = Link::<u32>::new("test".into());
        let permits: Vec<_> = (0..MAX_WAITING)
            .map(|_| link.permit().expect("a permit"))
            .collect();
        assert_eq!(link.permit().err(), Some(Failure::Busy));
        drop(permits);
        assert!(link.permit().is_ok());
    }

    #[test]
    fn it_starts_once() {
        let link = Link::<u32>::new("test".into());
        let mut starts = 0;
        link.start_once(|| starts += 1);
        link.start_once(|| starts += 1);
        assert_eq!(starts, 1);
    }
}
