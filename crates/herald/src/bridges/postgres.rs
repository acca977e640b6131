//! The PostgreSQL bridge: `LISTEN` on `channel` over a dedicated connection, each `NOTIFY` payload handed to the
//! bridge's `Inbound` (no tokens: a channel is one name, so room and event templates take no `{N}`).
//!
//! ```text
//! NOTIFY orders, '<body>'  (or SELECT pg_notify('orders', '<body>'))
//!     ─► every node's LISTEN ─► the bridge's leader only (lease.rs, in a cluster)
//!     ─► Inbound::handle(body, []) ─► Publisher::publish
//! ```
//!
//! `NOTIFY` has no ack and keeps nothing for a listener that is away: each outcome is only counted and logged,
//! and notifications sent while the bridge reconnects (backoff 0.5 s doubling to 10 s) are lost. As with Redis,
//! every node of a cluster hears every notification, so only the holder of the bridge's lease publishes it; the
//! others listen in standby. The channel is quoted as an identifier, so it is the exact, case-sensitive name
//! `pg_notify` takes (an unquoted `NOTIFY Orders` notifies `orders`). This module owns the connection and its
//! message stream; publishing is `Inbound`'s.

use std::future::Future;
use std::time::Duration;

use futures_util::{stream, Stream, StreamExt};
use tokio_postgres::{AsyncMessage, NoTls};

use super::backoff::{redact, Backoff};
use super::inbound::Inbound;
use super::lease::{BridgeLeader, RENEW_EVERY};
use super::status::State;
use super::BridgeContext;
use crate::config::BridgeConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A listening connection reads nothing while the channel is quiet, and it runs no query a dead server would
/// fail: TCP keepalives find a vanished server (about 10 s + 3 × 5 s) unless the URL asks for quicker ones.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Why the bridge is not listening.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("the bridge's Postgres URL is not valid: {0}")]
    BadUrl(String),
    #[error("Postgres did not answer in time")]
    Timeout,
    #[error("Postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the Postgres connection closed")]
    Closed,
}

/// Runs the bridge for good: joins the cluster's lease, listens, hands the leader's notifications to `inbound`,
/// and connects again with backoff whenever the connection breaks.
pub async fn run(bridge: BridgeConfig, inbound: Inbound, context: BridgeContext) {
    let status = &inbound.status;
    let config = match settings(&bridge.url) {
        Ok(config) => config,
        Err(e) => {
            // No retry makes a bad URL good.
            let e = redact(&e.to_string(), &bridge.url);
            tracing::error!(bridge = %status.label, error = %e, "bridge: not started");
            status.set(State::Down, Some(e));
            return;
        }
    };
    let listen = listen_statement(bridge.channel.as_deref().unwrap_or_default());
    let leader = BridgeLeader::join(&bridge, &context, status).await;
    let mut backoff = Backoff::default();
    loop {
        let stopped = session(&config, &listen, &inbound, &leader, &mut backoff).await;
        // A node that may miss notifications must not lead.
        leader.set_subscribed(false).await;
        let reason = redact(&stopped.to_string(), &bridge.url);
        tracing::warn!(bridge = %status.label, error = %reason, "bridge: not listening; retrying");
        status.set(State::Down, Some(reason));
        backoff.wait().await;
    }
}

/// The connection settings of `url`, with a connect timeout and keepalives unless the URL sets its own.
fn settings(url: &str) -> Result<tokio_postgres::Config, PostgresError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PostgresError::BadUrl(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_keepalives_idle() > KEEPALIVE_IDLE {
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
    }
    if config.get_application_name().is_none() {
        config.application_name("herald bridge");
    }
    Ok(config)
}

/// `LISTEN "<channel>"`, the channel quoted as an identifier (its `"` doubled), so any name is one identifier and
/// none is SQL.
pub fn listen_statement(channel: &str) -> String {
    format!("LISTEN \"{}\"", channel.replace('"', "\"\""))
}

/// One connection: connects, listens, and hands notifications over until it breaks; answers why it stopped.
async fn session(
    config: &tokio_postgres::Config,
    listen: &str,
    inbound: &Inbound,
    leader: &BridgeLeader,
    backoff: &mut Backoff,
) -> PostgresError {
    // The URL's own connect timeout bounds reaching the server; this one, the whole startup (auth included).
    let limit = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT)
        + CONNECT_TIMEOUT;
    let connect = tokio::time::timeout(limit, config.connect(NoTls)).await;
    let (client, mut connection) = match connect {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return e.into(),
        Err(_) => return PostgresError::Timeout,
    };
    // The connection's messages, notifications among them; polling it also carries the client's queries.
    let messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::pin!(messages);
    if let Err(e) = drive(client.batch_execute(listen), &mut messages).await {
        return e;
    }
    backoff.reset();
    leader.set_subscribed(true).await;
    inbound.status.set(leader.state(), None);
    tracing::info!(bridge = %inbound.status.label, "bridge: listening");
    // The client stays alive while the connection is read: dropping it would close the connection.
    let stopped = notifications(&mut messages, inbound, leader).await;
    drop(client);
    stopped
}

/// Runs `query` while polling the connection that carries it (nothing is listened to yet, so the stream
/// holds no notification).
async fn drive<T>(
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
    messages: &mut (impl Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin),
) -> Result<T, PostgresError> {
    tokio::pin!(query);
    loop {
        tokio::select! {
            done = &mut query => return done.map_err(PostgresError::from),
            message = messages.next() => match message {
                None => return Err(PostgresError::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Hands each notification to `inbound` while this node leads, until the connection breaks; the state follows
/// the lease between notifications.
async fn notifications(
    messages: &mut (impl Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin),
    inbound: &Inbound,
    leader: &BridgeLeader,
) -> PostgresError {
    let mut lease = tokio::time::interval(RENEW_EVERY);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                None => return PostgresError::Closed,
                Some(Err(e)) => return e.into(),
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    // A follower drops it: another node publishes it.
                    if leader.leads() {
                        inbound.handle(notification.payload().as_bytes(), &[]).await;
                    }
                }
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(bridge = %inbound.status.label, notice = %notice, "bridge: a Postgres notice");
                }
                Some(Ok(_)) => {}
            },
            _ = lease.tick() => inbound.status.set(leader.state(), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_quoted_identifiers() {
        assert_eq!(listen_statement("orders"), r#"LISTEN "orders""#);
        assert_eq!(listen_statement("Orders"), r#"LISTEN "Orders""#);
        assert_eq!(
            listen_statement(r#"a"; DROP TABLE x; --"#),
            r#"LISTEN "a""; DROP TABLE x; --""#
        );
    }

    #[test]
    fn settings_add_timeouts_and_keepalives_but_keep_the_urls_own() {
        let config = settings("postgres://postgres@127.0.0.1:5432/postgres").expect("a valid URL");
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_application_name(), Some("herald bridge"));
        let own = settings(
            "postgres://postgres@127.0.0.1/postgres?connect_timeout=1&keepalives_idle=2&application_name=x",
        )
        .expect("a valid URL");
        assert_eq!(own.get_connect_timeout(), Some(&Duration::from_secs(1)));
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(2));
        assert_eq!(own.get_application_name(), Some("x"));
        assert!(matches!(
            settings("postgres://h/db?sslmode=nonsense"),
            Err(PostgresError::BadUrl(_))
        ));
    }
}
