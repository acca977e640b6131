//! The keep-alive connections of one site's auth webhook. A call takes a permit, then the newest idle
//! connection or a new one, and puts the connection back before it gives the permit up; so the connections
//! open to the webhook are never more than the calls allowed in flight, and a connect storm reuses a few warm
//! connections instead of opening one per client. The newest idle connections close after an idle timeout; the
//! others, what a storm opened beyond them, soon after the storm, and the memory they held is handed back to the
//! system (`memory.rs`).
//!
//! reqwest's pool cannot keep that bound: it hands a connection back to its pool from a task of its own after
//! the answer is read, and a call that starts in between (the next client of a storm, woken as the previous
//! one ends) opens a new connection, so a storm of 1000 clients left about 1000 open connections.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::tls::{TlsError, Trust};

/// The idle connections kept for the whole idle timeout: the newest ones. A steady flow of connects needs few;
/// a storm needs as many as calls in flight (up to `max_concurrent_auth`), and each costs about 28 KiB in hyper
/// (its read and write buffers, 8 KiB each, and 8 to 16 KiB of request channel), more than the clients it
/// admitted once they are idle.
const WARM_IDLE: usize = 8;

/// How long the idle connections beyond the [`WARM_IDLE`] newest are kept: long enough that a storm's lulls do
/// not close and reopen them (closing each surplus connection as it was given back opened 440 connections for
/// 1000 calls), short enough that they do not outlive it by much.
const SURPLUS_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// An error opening a connection or exchanging on one.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("connecting failed: {0}")]
    Connect(BoxError),
    #[error("the exchange failed: {0}")]
    Http(#[from] hyper::Error),
}

/// One webhook's connections. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    /// `scheme://host:port` of the webhook: what the connector dials.
    origin: Uri,
    connector: HttpsConnector<HttpConnector>,
    /// Calls in flight, and so connections open: each connection is used by one call at a time.
    permits: Arc<Semaphore>,
    /// Ready connections, the newest last. A std `Mutex`: it is held for a push or a pop, never across an
    /// `.await`.
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    /// Whether the task that closes idle connections runs.
    sweeping: std::sync::atomic::AtomicBool,
}

struct Idle {
    sender: SendRequest<Empty<Bytes>>,
    since: Instant,
}

/// A connection lent to one call, and its permit. [`Lease::release`] puts the connection back; dropping the
/// lease instead closes it (an answer not read to its end leaves the connection unusable).
pub(crate) struct Lease {
    pool: Arc<Inner>,
    sender: SendRequest<Empty<Bytes>>,
    _permit: OwnedSemaphorePermit,
}

/// A connection taken from the pool, or just opened.
enum Taken {
    Idle(SendRequest<Empty<Bytes>>),
    New(SendRequest<Empty<Bytes>>),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("free", &self.inner.permits.available_permits())
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of at most `max` connections to `origin`, an `http://` or `https://` URI whose certificate is
    /// checked against `trust`.
    pub(crate) fn new(
        origin: Uri,
        trust: &Trust,
        max: usize,
        idle_timeout: Duration,
    ) -> Result<Pool, TlsError> {
        let mut tcp = HttpConnector::new();
        // A request is one small write: Nagle would hold it for the peer's delayed ACK.
        tcp.set_nodelay(true);
        // The TLS layer takes https:// URIs; the TCP connector under it must not refuse them.
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(trust.client_config()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Pool {
            inner: Arc::new(Inner {
                origin,
                connector,
                permits: Arc::new(Semaphore::new(max.max(1))),
                idle: Mutex::new(Vec::new()),
                idle_timeout,
                sweeping: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Waits for a permit, then sends the request `make` builds over the newest live idle connection or a new
    /// one. The answer comes with the connection's lease: read its body to the end, then
    /// [`Lease::release`] it.
    ///
    /// An idle connection the server closed as the request went out fails before any answer; the request is
    /// then sent once more over a new connection (it is a GET, so sending it twice is harmless).
    pub(crate) async fn send(
        &self,
        make: impl Fn() -> Request<Empty<Bytes>>,
    ) -> Result<(Lease, Response<Incoming>), CallError> {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|e| CallError::Connect(Box::new(e)))?;
        let mut taken = match self.inner.take_idle() {
            Some(sender) => Taken::Idle(sender),
            None => Taken::New(self.connect().await?),
        };
        loop {
            let (Taken::Idle(sender) | Taken::New(sender)) = &mut taken;
            match sender.send_request(make()).await {
                Ok(response) => {
                    let (Taken::Idle(sender) | Taken::New(sender)) = taken;
                    let lease = Lease {
                        pool: Arc::clone(&self.inner),
                        sender,
                        _permit: permit,
                    };
                    return Ok((lease, response));
                }
                Err(e) if matches!(taken, Taken::Idle(_)) && closed_before_answer(&e) => {
                    taken = Taken::New(self.connect().await?);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, CallError> {
        let io = self
            .inner
            .connector
            .clone()
            .oneshot(self.inner.origin.clone())
            .await
            .map_err(CallError::Connect)?;
        let (sender, connection) = http1::handshake(io).await?;
        // The connection's own task: it ends when the server closes it or the pool drops its sender.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "auth webhook connection ended");
            }
        });
        if !self
            .inner
            .sweeping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(sweep(Arc::downgrade(&self.inner)));
        }
        Ok(sender)
    }

    /// Idle connections, for tests and gauges.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.inner.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }
}

/// Whether a request failed because its connection was closed before the server answered anything.
fn closed_before_answer(error: &hyper::Error) -> bool {
    error.is_canceled() || error.is_incomplete_message() || error.is_closed()
}

impl Inner {
    /// The newest idle connection that is still open and not past the idle timeout; older ones than a stale one
    /// are stale too and are closed with it.
    fn take_idle(&self) -> Option<SendRequest<Empty<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() >= self.idle_timeout {
                idle.clear();
                return None;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// How long an idle connection is kept: the idle timeout for the [`WARM_IDLE`] newest, at most
    /// [`SURPLUS_IDLE_TIMEOUT`] for the others.
    fn keep_for(&self, position: usize, idle: usize) -> Duration {
        if position + WARM_IDLE >= idle {
            self.idle_timeout
        } else {
            self.idle_timeout.min(SURPLUS_IDLE_TIMEOUT)
        }
    }

    /// Closes the connections idle for longer than they are kept, and says how many. The oldest are first and a
    /// surplus one is kept no longer than a warm one, so those to close are the first ones.
    fn close_stale(&self) -> usize {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        let count = idle.len();
        let stale = idle
            .iter()
            .enumerate()
            .position(|(at, entry)| entry.since.elapsed() < self.keep_for(at, count))
            .unwrap_or(count);
        idle.drain(..stale);
        stale
    }
}

/// Closes stale idle connections every half surplus timeout, until the pool is gone: a storm's connections do
/// not stay open (at most 1.5 timeouts) for a webhook that is not called again. On the tick after it closed
/// some, when their tasks have freed their buffers, it hands the allocator's free memory back to the system:
/// glibc keeps it otherwise (closing a storm's 32 connections left the RSS as it was).
async fn sweep(pool: Weak<Inner>) {
    let every = match pool.upgrade() {
        Some(pool) => pool.idle_timeout.min(SURPLUS_IDLE_TIMEOUT) / 2,
        None => return,
    };
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticks.tick().await;
    let mut closed = 0;
    loop {
        ticks.tick().await;
        if closed > 0 {
            // Off the runtime's workers: it walks every arena's free lists under their locks.
            tokio::task::spawn_blocking(crate::memory::release_free);
        }
        closed = match pool.upgrade() {
            Some(pool) => pool.close_stale(),
            None => return,
        };
    }
}

impl Lease {
    /// Puts the connection back once it can take another request: call it after the answer's body was read
    /// to its end. A connection the server closes (`Connection: close`) is dropped instead.
    pub(crate) async fn release(mut self) {
        if self.sender.ready().await.is_err() {
            return;
        }
        if let Ok(mut idle) = self.pool.idle.lock() {
            idle.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_refused_connect_is_an_error_and_holds_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let origin: Uri = format!("http://{addr}").parse().unwrap();
        let pool = Pool::new(origin, &Trust::system(), 1, Duration::from_secs(5)).unwrap();
        let request = || Request::get("/").body(Empty::new()).unwrap();
        for _ in 0..2 {
            assert!(matches!(
                pool.send(request).await,
                Err(CallError::Connect(_))
            ));
        }
        assert_eq!(pool.idle(), 0);
    }

    /// A ready connection over an in-memory pipe, and the pipe's other end (dropping it closes the connection).
    /// A pool for a webhook nobody calls, its idle list filled by hand.
    fn test_pool(max: usize, idle_timeout: Duration) -> Pool {
        Pool::new(
            "http://127.0.0.1:9".parse().unwrap(),
            &Trust::system(),
            max,
            idle_timeout,
        )
        .unwrap()
    }

    /// Puts connections on the idle list, oldest first, each idle since its instant.
    fn park(pool: &Pool, parked: impl IntoIterator<Item = (SendRequest<Empty<Bytes>>, Instant)>) {
        let mut idle = pool.inner.idle.lock().unwrap();
        idle.extend(
            parked
                .into_iter()
                .map(|(sender, since)| Idle { sender, since }),
        );
    }

    async fn connection() -> (SendRequest<Empty<Bytes>>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut sender, connection) = http1::handshake(hyper_util::rt::TokioIo::new(ours))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender.ready().await.unwrap();
        (sender, theirs)
    }

    #[tokio::test]
    async fn idle_connections_are_lent_newest_first_until_stale() {
        let timeout = Duration::from_secs(60);
        let pool = test_pool(4, timeout);
        let long_ago = Instant::now().checked_sub(timeout * 2).unwrap();
        let (old, _old_peer) = connection().await;
        let (fresh, _fresh_peer) = connection().await;
        let (closed, closed_peer) = connection().await;
        drop(closed_peer);
        park(&pool, [(old, long_ago), (fresh, Instant::now())]);
        // The newest is lent; the next is past the idle timeout, so it is closed and none is lent.
        assert!(pool.inner.take_idle().is_some());
        assert_eq!(pool.idle(), 1);
        assert!(pool.inner.take_idle().is_none());
        assert_eq!(pool.idle(), 0);

        // A connection the server closed is skipped.
        let (fresh, _fresh_peer) = connection().await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while closed.is_ready() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        park(&pool, [(fresh, Instant::now()), (closed, Instant::now())]);
        assert!(pool
            .inner
            .take_idle()
            .is_some_and(|sender| sender.is_ready()));
        assert_eq!(pool.idle(), 0);

        // The sweep closes the stale ones only.
        let (old, _old_peer) = connection().await;
        let (fresh, _fresh_peer) = connection().await;
        park(&pool, [(old, long_ago), (fresh, Instant::now())]);
        assert_eq!(pool.inner.close_stale(), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_storms_surplus_closes_before_the_warm_connections() {
        let pool = test_pool(64, Duration::from_secs(60));
        let past_surplus = Instant::now()
            .checked_sub(SURPLUS_IDLE_TIMEOUT * 2)
            .unwrap();
        let mut peers = Vec::new();
        for _ in 0..WARM_IDLE + 3 {
            let (sender, peer) = connection().await;
            peers.push(peer);
            park(&pool, [(sender, past_surplus)]);
        }
        // Past the surplus timeout, under the idle timeout: the oldest three close, the newest stay warm.
        assert_eq!(pool.inner.close_stale(), 3);
        assert_eq!(pool.idle(), WARM_IDLE);
        assert_eq!(pool.inner.close_stale(), 0);

        // Warmth goes by recency: three fresh connections make three older ones surplus, and those are past the
        // surplus timeout; the fresh ones stay.
        for _ in 0..3 {
            let (sender, peer) = connection().await;
            peers.push(peer);
            park(&pool, [(sender, Instant::now())]);
        }
        assert_eq!(pool.inner.close_stale(), 3);
        assert_eq!(pool.idle(), WARM_IDLE);
        assert!(pool.inner.idle.lock().unwrap()[WARM_IDLE - 3..]
            .iter()
            .all(|entry| entry.since.elapsed() < SURPLUS_IDLE_TIMEOUT));
    }
}
