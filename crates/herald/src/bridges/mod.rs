//! Bridges: other publishers' protocols that herald speaks, each feeding the one publish pipeline
//! (`publish::Publisher`). `emitter` is the socket.io Redis emitter's; the broker bridges of `bridges:` share
//! `inbound` (a message to a publish, and what to tell the broker) and `status` (their state for
//! `/api/v1/status`), and `lease` elects the one node of a cluster that publishes what every node hears (the
//! emitter's broadcasts, a Redis or Postgres bridge's messages).

pub mod emitter;
pub mod inbound;
pub mod lease;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{BridgeConfig, BridgeKind, Config};
use crate::publish::Publisher;

/// What a broker bridge needs to know of its node: whether it shares the broker with other nodes (then it
/// consumes so that the cluster gets each message once) and the Redis that elects a leader where the broker
/// cannot share.
#[derive(Debug, Clone)]
pub struct BridgeContext {
    pub node: Arc<str>,
    /// Set in a cluster.
    pub redis_url: Option<String>,
}

/// Starts every broker bridge of `config`, each on its own task that reconnects with backoff; answers their
/// states.
pub fn start_inbound(
    config: &Config,
    publisher: &Publisher,
    context: &BridgeContext,
) -> Vec<Arc<status::BridgeStatus>> {
    let mut states = Vec::with_capacity(config.bridges.len());
    for bridge in &config.bridges {
        let status = status::BridgeStatus::new(bridge.label(), bridge.site.clone());
        let max_bytes = config.server.limits.max_publish_bytes;
        match inbound::Inbound::new(bridge, publisher.clone(), max_bytes, Arc::clone(&status)) {
            Ok(inbound) => spawn(bridge.clone(), inbound, context.clone()),
            // Validation parsed the same templates: this cannot happen with a validated config.
            Err(e) => status.set(status::State::Down, Some(e)),
        }
        states.push(status);
    }
    states
}

/// Runs one bridge of its kind.
fn spawn(bridge: BridgeConfig, inbound: inbound::Inbound, context: BridgeContext) {
    match bridge.kind {
        BridgeKind::Nats => {
            tokio::spawn(nats::run(bridge, inbound, context));
        }
        BridgeKind::Redis => {
            tokio::spawn(redis::run(bridge, inbound, context));
        }
        BridgeKind::Postgres => {
            tokio::spawn(postgres::run(bridge, inbound, context));
        }
        _ => {
            // BRANCH PLACEHOLDER: each kind's module replaces its arm; this never lands on main.
            let _ = context;
            inbound.status.set(
                status::State::Down,
                Some(format!("{} bridges are not built yet", bridge.kind.name())),
            );
        }
    }
}

/// The wait before a bridge's next attempt to connect: 0.5 s, doubling up to 10 s, back to 0.5 s once a
/// connection works, so a broker that restarts is found again quickly and one that stays down is not hammered.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The connection worked: the next failure retries quickly again.
    pub(crate) fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// The wait before the next attempt, and doubles the one after.
    pub(crate) fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }
}

/// `text` (an error from a broker's client) without `url` or the password in it: errors may quote either, and
/// bridges log and show their errors.
pub(crate) fn redact(text: &str, url: &str) -> String {
    let mut text = text.replace(url, "<url>");
    if let Some(password) = password(url) {
        text = text.replace(password, "<password>");
    }
    text
}

/// The password of `url`'s `user:password@`, if any.
fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo
        .split_once(':')
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty())
}

/// Starts the bridges `config` turns on: the socket.io emitter when Redis is configured and `cluster.emitter`
/// is on (the default).
pub async fn start(
    config: &Config,
    publisher: &Publisher,
) -> Result<Option<emitter::Emitter>, emitter::EmitterError> {
    let server = &config.server;
    let (true, Some(url)) = (server.cluster.emitter, server.redis_url.as_deref()) else {
        return Ok(None);
    };
    let settings = emitter::EmitterConfig {
        prefix: server.cluster.emitter_prefix.clone(),
        max_bytes: server.limits.max_publish_bytes,
    };
    emitter::Emitter::start(publisher.clone(), url, settings)
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_ten_seconds_and_resets() {
        let mut backoff = Backoff::new();
        let waits: Vec<u64> = (0..7).map(|_| backoff.step().as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
        backoff.reset();
        assert_eq!(backoff.step(), Duration::from_millis(500));
    }

    #[test]
    fn errors_lose_urls_and_passwords() {
        let url = "redis://user:s3cret@host:6379/0";
        assert_eq!(
            redact(
                "cannot reach redis://user:s3cret@host:6379/0 (auth s3cret)",
                url
            ),
            "cannot reach <url> (auth <password>)"
        );
        assert_eq!(redact("refused", "nats://host:4222"), "refused");
        assert_eq!(password("postgres://postgres@127.0.0.1/db"), None);
        assert_eq!(password("amqp://guest:guest@h/"), Some("guest"));
        assert_eq!(password("nats://u:@h"), None);
    }
}
