//! The bus of a cluster: Redis pub/sub carries every broadcast to every node, and a Redis stream per site is
//! its recovery log.
//!
//! Keys (in the URL's database; a site name is `[A-Za-z0-9_-]+`, so it needs no escaping):
//! - `herald:bus:{<site>}:log`: stream, one entry per logged packet, field `b` the envelope without an offset
//!   (`wire.rs`); the entry's id is the packet's offset. Trimmed by time (`MINID ~ <now - window>`) as packets
//!   are added, and expires `2 × window` (at least a minute) after the last one.
//! - `herald:bus:{<site>}:meta`: hash `born` (the id of the first entry since the log was created) and `cut`
//!   (the highest `MINID` threshold a trim removed entries below), expiring with the log.
//!
//! Channel: `herald:bus:<db>`. Redis pub/sub ignores the database number, so the channel carries it: clusters
//! that share one Redis on different databases never hear each other. Plain PUBLISH/SUBSCRIBE, not sharded
//! pub/sub: the bus is one channel, which sharding could not spread over shards anyway, and the `redis`
//! crate's async pub/sub (1.x) subscribes to plain channels and patterns only.
//!
//! A logged publish is one Lua script, one round trip: XADD, trim, expire, and PUBLISH of the envelope with the
//! id appended (the offset is the envelope's tail). Without a window it is a PUBLISH.
//!
//! Whether an offset can be recovered (`since`): the log holds every packet after offset `o` when `o` is in
//! this log's life (`born <= o <= last`) and no trim removed a packet after `o`. Trims only remove from the
//! head, and only entries below their threshold, so that holds when `o >= first` (the oldest entry left) or
//! when no trim's threshold is above `o` (`cut <= o`, or no trim removed anything). A log that expired and
//! started again has a later `born`, so offsets from before it are refused. More than `max_packets` packets
//! after `o` are refused too, like the embedded log: a client that far behind starts afresh.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{AsyncCommands, Script, Value};
use tokio::sync::mpsc;

use super::bus::{Broadcast, Bus, BusError, Offset};
use super::embedded::parse_offset;
use super::wire;
use crate::tls::Trust;

/// Broadcasts received and not yet fanned out; the subscription waits (Redis buffers) beyond this.
const RECEIVE_QUEUE: usize = 4096;
/// How often an idle subscription pings Redis, so a silently dead connection is noticed and replaced.
const PING_EVERY: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The shortest time a log outlives its last packet, whatever the window: long enough to tell an offset of a
/// quiet site from one of a log that expired.
const KEEP_MIN_MS: u64 = 60_000;
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// What a Redis bus needs besides its URL.
#[derive(Debug, Clone, Copy)]
pub struct RedisBusOptions {
    /// Longest a `send` or `since` may take before it fails (`mailbox.store_timeout_ms`).
    pub timeout: Duration,
    /// Most packets `since` hands back; a client further behind cannot recover (`recovery_max_packets`).
    pub max_packets: usize,
}

/// The Redis bus. Cloning is cheap: clones share one multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    con: ConnectionManager,
    channel: String,
    options: RedisBusOptions,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection info holds the password: show nothing of it.
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// The bus channel of database `db`.
pub fn channel(db: i64) -> String {
    format!("herald:bus:{db}")
}

fn log_key(site: &str) -> String {
    format!("herald:bus:{{{site}}}:log")
}

fn meta_key(site: &str) -> String {
    format!("herald:bus:{{{site}}}:meta")
}

/// Opens a client for `url` (`rediss://` verified against `trust`); errors never repeat the URL (it may hold a
/// password).
pub(crate) fn open_client(url: &str, trust: &Trust) -> Result<redis::Client, String> {
    trust
        .redis_client(url)
        .map_err(|e| format!("the Redis URL is not valid: {}", redact(&e, url)))
}

/// A self-reconnecting connection with herald's timeouts.
pub(crate) async fn manager(
    client: &redis::Client,
    url: &str,
) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT));
    ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| format!("cannot connect to Redis: {}", redact(&e, url)))
}

/// `e` as text with `url` cut out, should the client library ever quote it, and where to put a private CA when
/// the server's certificate was refused.
pub(crate) fn redact(e: &redis::RedisError, url: &str) -> String {
    let mut text = e.to_string();
    if !url.is_empty() {
        text = text.replace(url, "<url>");
    }
    if crate::tls::refused_certificate(e).is_some() {
        text.push_str(
            " (the server's certificate is not trusted: a private CA goes in server.ca_file)",
        );
    }
    text
}

impl RedisBus {
    /// Connects to Redis at `url`.
    pub async fn connect(
        url: &str,
        trust: &Trust,
        options: RedisBusOptions,
    ) -> Result<RedisBus, BusError> {
        let client = open_client(url, trust).map_err(BusError::Unavailable)?;
        let con = manager(&client, url).await.map_err(BusError::Unavailable)?;
        let channel = channel(client.get_connection_info().redis_settings().db());
        Ok(RedisBus {
            client,
            con,
            channel,
            options,
        })
    }

    /// The channel this bus publishes on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// `operation`, failing with `TimedOut` after the bus's timeout.
    async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BusError> {
        match tokio::time::timeout(self.options.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::TimedOut),
        }
    }
}

/// KEYS: log, meta. ARGV: channel, envelope, window ms, keep ms. Returns the entry's id.
static SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('XADD', KEYS[1], '*', 'b', ARGV[2])
redis.call('HSETNX', KEYS[2], 'born', id)
local horizon = now - tonumber(ARGV[3])
if horizon > 0 then
  local cut = string.format('%d-0', horizon)
  if redis.call('XTRIM', KEYS[1], 'MINID', '~', cut) > 0 then
    local old = tonumber(string.match(redis.call('HGET', KEYS[2], 'cut') or '0-0', '^(%d+)')) or 0
    if horizon > old then redis.call('HSET', KEYS[2], 'cut', cut) end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. id)
return id
"#,
    )
});

/// KEYS: log, meta. ARGV: offset, most entries. Returns born, cut, first id, last id, and the entries after
/// the offset, all read at one instant.
static SINCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local meta = redis.call('HMGET', KEYS[2], 'born', 'cut')
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local after = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {meta[1] or '', meta[2] or '', first and first[1] or '', last and last[1] or '', after}
"#,
    )
});

/// What the `SINCE` script read.
type SinceReply = (String, String, String, String, Vec<(String, Vec<Vec<u8>>)>);

/// Whether the log described by `born`, `cut`, `first` and `last` holds every packet after `after`.
fn recoverable(after: (u64, u64), born: &str, cut: &str, first: &str, last: &str) -> bool {
    let (Some(born), Some(last)) = (parse_offset(born), parse_offset(last)) else {
        return false;
    };
    if after < born || after > last {
        return false;
    }
    if parse_offset(first).is_some_and(|first| after >= first) {
        return true;
    }
    match parse_offset(cut) {
        Some(cut) => after >= cut,
        None => true,
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn send(
        &self,
        broadcast: &Broadcast,
        window: Option<Duration>,
    ) -> Result<Option<Offset>, BusError> {
        let envelope = wire::encode(broadcast);
        let mut con = self.con.clone();
        let Some(window) = window else {
            let publish = con.publish::<_, _, usize>(&self.channel, envelope);
            self.bounded(publish).await?;
            return Ok(None);
        };
        let window_ms = window.as_millis().max(1) as u64;
        let mut call = SEND.prepare_invoke();
        call.key(log_key(&broadcast.site))
            .key(meta_key(&broadcast.site))
            .arg(&self.channel)
            .arg(envelope)
            .arg(window_ms)
            .arg(window_ms.saturating_mul(2).max(KEEP_MIN_MS));
        let id: String = self.bounded(call.invoke_async(&mut con)).await?;
        Ok(Some(id.into()))
    }

    async fn since(&self, site: &str, offset: &str) -> Result<Option<Vec<Broadcast>>, BusError> {
        let Some(after) = parse_offset(offset) else {
            return Ok(None);
        };
        let mut con = self.con.clone();
        let mut call = SINCE.prepare_invoke();
        call.key(log_key(site))
            .key(meta_key(site))
            .arg(format!("{}-{}", after.0, after.1))
            .arg(self.options.max_packets.saturating_add(1));
        let (born, cut, first, last, entries): SinceReply =
            self.bounded(call.invoke_async(&mut con)).await?;
        if !recoverable(after, &born, &cut, &first, &last)
            || entries.len() > self.options.max_packets
        {
            return Ok(None);
        }
        let mut missed = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            let Some(envelope) = fields
                .chunks(2)
                .find(|pair| pair.first().is_some_and(|name| name == b"b"))
                .and_then(|pair| pair.get(1))
            else {
                tracing::warn!(site, id, "recovery log entry without an envelope; skipped");
                continue;
            };
            match wire::decode(&Bytes::copy_from_slice(envelope)) {
                Ok(mut broadcast) => {
                    broadcast.offset = Some(id.into());
                    missed.push(broadcast);
                }
                Err(e) => {
                    tracing::warn!(site, id, error = %e, "unreadable recovery log entry; skipped")
                }
            }
        }
        Ok(Some(missed))
    }

    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Broadcast>>, BusError> {
        // Subscribed before returning, so a broadcast sent after this call is never missed.
        let subscription = open_subscription(&self.client, &self.channel)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(RECEIVE_QUEUE);
        tokio::spawn(relay(
            self.client.clone(),
            self.channel.clone(),
            subscription,
            tx,
        ));
        Ok(Some(rx))
    }
}

type Subscription = (PubSubSink, PubSubStream);

async fn open_subscription(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<Subscription> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub.split())
}

/// Why forwarding stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    ReceiverGone,
    ConnectionLost,
}

/// Forwards broadcasts until the receiver is dropped, subscribing again with backoff whenever the connection is
/// lost. Broadcasts sent while it is down do not reach this node live; clients recover them from the log.
async fn relay(
    client: redis::Client,
    channel: String,
    mut subscription: Subscription,
    tx: mpsc::Sender<Broadcast>,
) {
    loop {
        if forward(subscription, &tx).await == Stopped::ReceiverGone {
            return;
        }
        let mut backoff = BACKOFF_MIN;
        subscription = loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = tx.closed() => return,
            }
            match open_subscription(&client, &channel).await {
                Ok(subscription) => {
                    tracing::info!("cluster bus: subscribed again");
                    break subscription;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cluster bus: cannot subscribe");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
    }
}

async fn forward((mut sink, mut messages): Subscription, tx: &mpsc::Sender<Broadcast>) -> Stopped {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    tracing::warn!("cluster bus: connection lost");
                    return Stopped::ConnectionLost;
                };
                let envelope = Bytes::copy_from_slice(message.get_payload_bytes());
                match wire::decode(&envelope) {
                    Ok(broadcast) => {
                        if tx.send(broadcast).await.is_err() {
                            return Stopped::ReceiverGone;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cluster bus: unreadable broadcast; skipped"),
                }
            }
            _ = ping.tick() => {
                if !matches!(tokio::time::timeout(PING_TIMEOUT, sink.ping::<Value>()).await, Ok(Ok(_))) {
                    tracing::warn!("cluster bus: Redis stopped answering pings");
                    return Stopped::ConnectionLost;
                }
            }
            () = tx.closed() => return Stopped::ReceiverGone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Database 11 of the test Redis is this module's.
    const URL: &str = "redis://127.0.0.1:6379/11";

    fn options() -> RedisBusOptions {
        RedisBusOptions {
            // Generous: other tests load the same Redis meanwhile, on a loaded machine.
            timeout: Duration::from_secs(20),
            max_packets: 100,
        }
    }

    async fn bus(options: RedisBusOptions) -> RedisBus {
        let url = std::env::var("HERALD_TEST_REDIS_BUS_URL").unwrap_or_else(|_| URL.to_string());
        RedisBus::connect(&url, &Trust::system(), options).await.unwrap_or_else(|e| {
            panic!(
                "this test needs Redis at 127.0.0.1:6379 (start it with: redis-server --daemonize yes \
                 --save '' --appendonly no): {e}"
            )
        })
    }

    fn fresh_site() -> String {
        format!("bus-{}", rand::random::<u64>())
    }

    fn packet(site: &str, text: &'static str) -> Broadcast {
        Broadcast {
            origin: "nodeAAAA".into(),
            site: site.into(),
            rooms: vec!["room".into()],
            except: vec![],
            volatile: false,
            text: Bytes::from_static(text.as_bytes()),
            binaries: vec![Bytes::from_static(b"\x00\x01")],
            offset: None,
        }
    }

    async fn logged(bus: &RedisBus, broadcast: &Broadcast, window: Duration) -> Offset {
        let sent = bus.send(broadcast, Some(window)).await;
        sent.expect("Redis answers").expect("logged with a window")
    }

    async fn since(bus: &RedisBus, site: &str, offset: &str) -> Option<Vec<Broadcast>> {
        bus.since(site, offset).await.expect("Redis answers")
    }

    /// The next broadcast of `site` on `incoming`.
    async fn next_of(incoming: &mut mpsc::Receiver<Broadcast>, site: &str) -> Broadcast {
        let wait = async {
            loop {
                let got = incoming.recv().await.expect("subscribed");
                if got.site == site {
                    return got;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the broadcast arrived")
    }

    #[tokio::test]
    async fn broadcasts_travel_with_the_offset_they_were_logged_at() {
        let bus = bus(options()).await;
        assert_eq!(bus.channel(), "herald:bus:11");
        let mut incoming = bus
            .subscribe()
            .await
            .expect("subscribes")
            .expect("a receiver");
        let site = fresh_site();
        let first = packet(&site, "42/s,[\"a\"]");
        let offset = logged(&bus, &first, Duration::from_secs(60)).await;
        let got = next_of(&mut incoming, &site).await;
        assert_eq!(got.offset.as_deref(), Some(&*offset));
        assert_eq!(
            Broadcast {
                offset: None,
                ..got
            },
            first
        );
        let volatile = Broadcast {
            volatile: true,
            ..packet(&site, "42/s,[\"v\"]")
        };
        assert_eq!(bus.send(&volatile, None).await.expect("sent"), None);
        assert_eq!(next_of(&mut incoming, &site).await, volatile);
    }

    #[tokio::test]
    async fn since_answers_what_came_after_an_offset_and_refuses_what_it_cannot_know() {
        let bus = bus(options()).await;
        let site = fresh_site();
        let window = Duration::from_secs(60);
        let a = logged(&bus, &packet(&site, "a"), window).await;
        let b = logged(&bus, &packet(&site, "b"), window).await;
        let c = logged(&bus, &packet(&site, "c"), window).await;
        assert!(parse_offset(&b) > parse_offset(&a));
        let missed = since(&bus, &site, &a).await.expect("recoverable");
        let texts: Vec<_> = missed.iter().map(|m| m.text.clone()).collect();
        assert_eq!(texts, ["b", "c"]);
        assert_eq!(missed[0].offset.as_deref(), Some(&*b));
        assert_eq!(missed[1].offset.as_deref(), Some(&*c));
        assert_eq!(since(&bus, &site, &c).await, Some(vec![]));
        assert_eq!(since(&bus, &site, "junk").await, None);
        assert_eq!(
            since(&bus, &site, "1-0").await,
            None,
            "before the log began"
        );
        assert_eq!(
            since(&bus, &site, "99999999999999-0").await,
            None,
            "after it"
        );
        assert_eq!(
            since(&bus, &fresh_site(), &a).await,
            None,
            "another site's log"
        );
    }

    #[tokio::test]
    async fn a_client_behind_a_trim_or_too_far_behind_cannot_recover() {
        let bus = bus(RedisBusOptions {
            max_packets: 150,
            ..options()
        })
        .await;
        let site = fresh_site();
        let long = Duration::from_secs(60);
        let start = logged(&bus, &packet(&site, "0"), long).await;
        // Enough entries for an approximate trim to free whole nodes (100 entries each).
        let mut offsets = vec![start.clone()];
        for _ in 0..250 {
            offsets.push(logged(&bus, &packet(&site, "x"), long).await);
        }
        assert_eq!(
            since(&bus, &site, &start).await,
            None,
            "250 packets behind, 150 at most"
        );
        // In the second of the stream's nodes of 100 entries, which the trim below frees whole.
        let recent = &offsets[150];
        assert_eq!(since(&bus, &site, recent).await.map(|m| m.len()), Some(100));
        tokio::time::sleep(Duration::from_millis(30)).await;
        // A 10 ms window: this send trims everything older.
        let last = logged(&bus, &packet(&site, "new"), Duration::from_millis(10)).await;
        let mut con = bus.con.clone();
        let kept: usize = con.xlen(log_key(&site)).await.expect("XLEN");
        assert_eq!(
            since(&bus, &site, recent).await,
            None,
            "trimmed after it ({kept} entries kept)"
        );
        assert_eq!(since(&bus, &site, &last).await, Some(vec![]));
        assert!(kept < 251, "the log was trimmed ({kept} left)");
    }

    #[test]
    fn recovery_rule() {
        let ok = |after, born, cut, first, last| recoverable(after, born, cut, first, last);
        assert!(ok((5, 0), "1-0", "", "1-0", "9-0"));
        assert!(!ok((0, 5), "1-0", "", "1-0", "9-0"), "before born");
        assert!(!ok((10, 0), "1-0", "", "1-0", "9-0"), "after last");
        assert!(!ok((5, 0), "", "", "", ""), "no log");
        assert!(
            ok((5, 0), "1-0", "7-0", "4-0", "9-0"),
            "at or after the first entry left"
        );
        assert!(!ok((3, 0), "1-0", "7-0", "4-0", "9-0"), "a trim above it");
        assert!(
            ok((3, 0), "1-0", "2-0", "4-0", "9-0"),
            "every trim below it"
        );
    }
}
