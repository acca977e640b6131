//! Rates keyed by who asks: new sessions per client address (`limits.connects_per_ip_per_sec`) and publishes per
//! API key (`limits.publishes_per_key_per_sec`), each a governor GCRA limiter whose keys are pruned by a task that
//! ends when the gateway drops the limiter. A refusal says when to come back; refusals are counted as limit hits
//! and logged at most once per `LOG_EVERY` per limit.

use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;

use crate::limits::Limit;

/// How often keys whose bucket has refilled are dropped. An entry is a few dozen bytes, so a limiter holds at
/// most the keys seen in the last `PRUNE_EVERY` plus a full refill (burst / rate).
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// At most one log line per limit in this period; the line says how many refusals it stands for.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A rate: `per_sec` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    /// The rate a `*_per_sec` and `*_burst` pair of settings configure: none when the rate is unset (or 0, which
    /// validation refuses); the burst defaults to one second's worth.
    pub fn from_settings(per_sec: Option<u32>, burst: Option<u32>) -> Option<Rate> {
        let per_sec = NonZeroU32::new(per_sec?)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(per_sec);
        Some(Rate { per_sec, burst })
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_sec).allow_burst(self.burst)
    }
}

/// When a refused caller may try again: whole seconds, at least 1, as `Retry-After` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(u64);

impl RetryAfter {
    /// `wait` rounded up to whole seconds, so a caller that waits this long is let in.
    pub fn from_wait(wait: Duration) -> RetryAfter {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        RetryAfter(secs.max(1))
    }

    pub fn secs(self) -> u64 {
        self.0
    }
}

/// A keyed GCRA limiter on the monotonic clock (quanta's TSC clock is not ordered across threads).
type Limiter<K> =
    RateLimiter<K, DefaultKeyedStateStore<K>, MonotonicClock, NoOpMiddleware<Instant>>;

/// A keyed limiter, its limit's name for counts and logs, and its log throttle.
struct Keyed<K: Hash + Eq + Clone> {
    limiter: Limiter<K>,
    /// Held across a check: governor reads the clock before it updates the key's state, so two callers racing
    /// could update in the opposite order of their clock readings, and the later update, seeing a reading older
    /// than the state, refuses a cell the burst still has (two connects at once with a burst of 2, one refused).
    order: Mutex<()>,
    rate: Rate,
    limit: Limit,
    log: LogGate,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Keyed<K> {
    /// A limiter whose idle keys a task prunes every `PRUNE_EVERY` until the limiter is dropped.
    fn start(rate: Rate, limit: Limit) -> Arc<Self> {
        let keyed = Arc::new(Keyed {
            limiter: RateLimiter::new(
                rate.quota(),
                DefaultKeyedStateStore::default(),
                MonotonicClock,
            ),
            order: Mutex::new(()),
            rate,
            limit,
            log: LogGate::new(),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(prune(Arc::downgrade(&keyed)));
            }
            // Only a limiter built outside a runtime (a unit test) goes unpruned.
            Err(_) => tracing::debug!(
                limit = limit.name(),
                "no runtime: the limiter is not pruned"
            ),
        }
        keyed
    }

    /// Takes `n` cells from `key`'s bucket: `Ok`, or when to come back (`None`: never, `n` is over the burst).
    fn take(&self, key: &K, n: NonZeroU32) -> Result<(), Option<RetryAfter>> {
        let _in_clock_order = self.order.lock();
        let outcome = if n.get() == 1 {
            self.limiter.check_key(key)
        } else {
            self.limiter.check_key_n(key, n).map_err(|_| {
                self.limit.hit();
                None
            })?
        };
        outcome.map_err(|until| {
            self.limit.hit();
            Some(RetryAfter::from_wait(
                until.wait_time_from(self.limiter.clock().now()),
            ))
        })
    }
}

/// Drops the keys whose bucket is full again, every `PRUNE_EVERY`, until the limiter is gone.
async fn prune<K: Hash + Eq + Clone>(keyed: Weak<Keyed<K>>) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        let Some(keyed) = keyed.upgrade() else {
            return;
        };
        let before = keyed.limiter.len();
        keyed.limiter.retain_recent();
        let after = keyed.limiter.len();
        // After a flood the map gives its memory back; shrinking every time would only churn a steady map.
        if after.saturating_mul(4) < before {
            keyed.limiter.shrink_to_fit();
        }
    }
}

/// Lets one log line through per `LOG_EVERY`, and counts the refusals in between.
struct LogGate {
    start: Instant,
    /// Milliseconds after `start` before which no line is logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    fn new() -> Self {
        LogGate {
            start: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(refusals not logged since the last line)` when this one may be logged.
    fn pass(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + LOG_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `limits.connects_per_ip_per_sec`: new sessions per client address, on this node. Cheap to share (`Arc`).
pub struct ConnectRate {
    keyed: Arc<Keyed<IpAddr>>,
}

impl ConnectRate {
    pub fn start(rate: Rate) -> Arc<ConnectRate> {
        Arc::new(ConnectRate {
            keyed: Keyed::start(rate, Limit::ConnectRate),
        })
    }

    /// Counts a new session from `peer`: `Ok`, or refused until the `RetryAfter`.
    pub fn admit(&self, peer: IpAddr) -> Result<(), RetryAfter> {
        let key = client_key(peer);
        self.keyed.take(&key, NonZeroU32::MIN).map_err(|refused| {
            // `take` of one cell never asks for more than the burst.
            let retry_after = refused.unwrap_or(RetryAfter(1));
            if let Some(suppressed) = self.keyed.log.pass() {
                tracing::warn!(
                    address = %key,
                    retry_after = retry_after.secs(),
                    suppressed,
                    "refused a new session: over limits.connects_per_ip_per_sec for this address (behind a \
                     proxy every client has the proxy's address)"
                );
            }
            retry_after
        })
    }
}

impl fmt::Debug for ConnectRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectRate")
            .field(&self.keyed.rate)
            .finish()
    }
}

/// The key a client address counts under: an IPv4 address (IPv4-mapped too) as it is, an IPv6 address by its
/// /64, the block one subscriber gets and any host in it can pick addresses from.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Why a publish was refused by [`PublishRate::charge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefused {
    /// Over the key's rate: retry after this.
    Wait { retry_after: RetryAfter, rate: Rate },
    /// A batch of more messages than the burst, which no wait lets through.
    OverBurst { publishes: u32, burst: u32 },
}

/// `limits.publishes_per_key_per_sec`: publishes per API key (a batch counts its messages), on this node. Keys
/// are known only by a hash with a per-process random seed, and only keys that authenticated reach it, so it
/// holds at most as many keys as the sites have. Cheap to share (`Arc`).
pub struct PublishRate {
    keyed: Arc<Keyed<u64>>,
    hasher: RandomState,
}

impl PublishRate {
    pub fn start(rate: Rate) -> Arc<PublishRate> {
        Arc::new(PublishRate {
            keyed: Keyed::start(rate, Limit::PublishRate),
            hasher: RandomState::new(),
        })
    }

    /// Charges `publishes` to `api_key`'s budget (nothing is charged for none); `site` is for the log line.
    pub fn charge(
        &self,
        api_key: &str,
        site: &str,
        publishes: usize,
    ) -> Result<(), PublishRefused> {
        let Some(n) = NonZeroU32::new(u32::try_from(publishes).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let rate = self.keyed.rate;
        let key = self.hasher.hash_one(api_key);
        self.keyed.take(&key, n).map_err(|refused| {
            let refusal = match refused {
                Some(retry_after) => PublishRefused::Wait { retry_after, rate },
                None => PublishRefused::OverBurst {
                    publishes: n.get(),
                    burst: rate.burst.get(),
                },
            };
            if let Some(suppressed) = self.keyed.log.pass() {
                tracing::warn!(
                    site,
                    publishes = n.get(),
                    ?refusal,
                    suppressed,
                    "refused a publish: over limits.publishes_per_key_per_sec for its API key"
                );
            }
            refusal
        })
    }
}

impl fmt::Debug for PublishRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublishRate")
            .field(&self.keyed.rate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_sec: u32, burst: u32) -> Rate {
        Rate::from_settings(Some(per_sec), Some(burst)).expect("a rate above 0")
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter::from_wait(Duration::ZERO).secs(), 1);
        assert_eq!(RetryAfter::from_wait(Duration::from_millis(1)).secs(), 1);
        assert_eq!(RetryAfter::from_wait(Duration::from_secs(1)).secs(), 1);
        assert_eq!(RetryAfter::from_wait(Duration::from_millis(1001)).secs(), 2);
    }

    #[test]
    fn the_burst_defaults_to_a_seconds_worth_and_no_rate_is_no_limit() {
        assert_eq!(Rate::from_settings(None, Some(5)), None);
        assert_eq!(Rate::from_settings(Some(0), None), None);
        let default = Rate::from_settings(Some(7), None).expect("a rate");
        assert_eq!((default.per_sec.get(), default.burst.get()), (7, 7));
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let key = |s: &str| client_key(s.parse().expect("an address")).to_string();
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn an_address_gets_its_burst_then_waits_and_others_are_unaffected() {
        let connects = ConnectRate::start(rate(1, 3));
        let a: IpAddr = "198.51.100.1".parse().expect("an address");
        let b: IpAddr = "198.51.100.2".parse().expect("an address");
        for _ in 0..3 {
            assert_eq!(connects.admit(a), Ok(()));
        }
        let before = Limit::ConnectRate.count();
        assert_eq!(connects.admit(a), Err(RetryAfter(1)));
        assert!(Limit::ConnectRate.count() > before);
        assert_eq!(connects.admit(b), Ok(()));
    }

    #[test]
    fn callers_at_once_all_get_the_burst() {
        // Before the checks were ordered, a burst taken by threads at once refused one now and then: a caller
        // whose clock reading was older than the state another had just written.
        const BURST: u32 = 8;
        for _ in 0..200 {
            let connects = ConnectRate::start(rate(1, BURST));
            let start = std::sync::Barrier::new(BURST as usize);
            let admitted = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..BURST)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            connects.admit([192, 0, 2, 1].into()).is_ok()
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().expect("no panic"))
                    .filter(|&admitted| admitted)
                    .count()
            });
            assert_eq!(admitted, BURST as usize);
        }
    }

    #[test]
    fn a_batch_counts_its_messages_and_one_over_the_burst_never_passes() {
        let publishes = PublishRate::start(rate(1, 5));
        assert_eq!(publishes.charge("key-a", "shop", 0), Ok(()));
        assert_eq!(publishes.charge("key-a", "shop", 4), Ok(()));
        assert!(matches!(
            publishes.charge("key-a", "shop", 2),
            Err(PublishRefused::Wait { retry_after, .. }) if retry_after.secs() == 1
        ));
        assert_eq!(publishes.charge("key-a", "shop", 1), Ok(()));
        assert_eq!(
            publishes.charge("key-b", "shop", 6),
            Err(PublishRefused::OverBurst {
                publishes: 6,
                burst: 5
            })
        );
        assert_eq!(publishes.charge("key-b", "shop", 5), Ok(()));
    }

    #[test]
    fn the_log_gate_lets_one_line_through_per_period() {
        let gate = LogGate::new();
        assert_eq!(gate.pass(), Some(0));
        assert_eq!(gate.pass(), None);
        assert_eq!(gate.pass(), None);
        gate.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(gate.pass(), Some(2), "the line counts what it stood for");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_pruned_and_the_task_ends_with_the_limiter() {
        // 1000 per second: a bucket is full again 1 ms after its one cell was taken.
        let connects = ConnectRate::start(rate(1000, 1));
        for i in 0..10u8 {
            assert_eq!(connects.admit(IpAddr::from([10, 0, 0, i])), Ok(()));
        }
        assert_eq!(connects.keyed.limiter.len(), 10);
        // The limiter's clock is real time; tokio's (paused) only drives the pruning task.
        std::thread::sleep(Duration::from_millis(20));
        tokio::time::sleep(PRUNE_EVERY + Duration::from_millis(1)).await;
        assert_eq!(connects.keyed.limiter.len(), 0, "idle keys were pruned");
        let keyed = Arc::downgrade(&connects.keyed);
        drop(connects);
        assert!(keyed.upgrade().is_none(), "the task holds no strong handle");
    }
}
