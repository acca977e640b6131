//! Event routes to NATS (async-nats): one client per URL, shared by every route naming it.
//!
//! ```text
//! subject covered by a JetStream stream? ─ yes ─► request: the stream's answer {"stream", "seq"} ─► queued
//!                                                   {"error"} or no responder ─► refused
//!                                        ─ no ──► PUB then flush (a PING answered: the server has it) ─► queued
//! ```
//!
//! Which subjects the streams cover comes from `$JS.API.STREAM.LIST`, read at connect, after each reconnection
//! and every `REFRESH`: a stream created meanwhile is used within that time, and until then its subject gets a
//! plain publish (which the stream still stores, unacknowledged). A server without JetStream covers nothing. A
//! plain publish is at most once, as NATS core is: `queued` means the server has the message, not that a
//! subscriber got it.
//!
//! async-nats reconnects by itself once connected; its events drive the link: events fail at once while it is
//! disconnected. A first connection that fails is tried again with the bridges' backoff.

use std::sync::Arc;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::link::{label, Link};
use super::Failure;
use crate::bridges::backoff::{redact, Backoff};
use crate::bridges::status::BridgeStatus;

/// How often the streams' subjects are read again.
const REFRESH: Duration = Duration::from_secs(5);
/// A server that does not answer the first connection in this time is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading the streams' subjects may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most pages of streams read (the server sends 256 per page).
const MAX_PAGES: usize = 64;

/// The client of one NATS URL.
pub struct NatsLink {
    link: Link<async_nats::Client>,
    url: String,
    node: Arc<str>,
    /// The subject filters of the JetStream streams, as last read.
    streams: RwLock<Vec<String>>,
}

impl NatsLink {
    pub fn new(url: &str, node: &Arc<str>) -> Arc<NatsLink> {
        Arc::new(NatsLink {
            link: Link::new(label("nats", url)),
            url: url.to_string(),
            node: Arc::clone(node),
            streams: RwLock::new(Vec::new()),
        })
    }

    /// A route on this link shows the link's state in `status`.
    pub fn add_route(&self, status: Arc<BridgeStatus>) {
        self.link.add_status(status);
    }

    /// Publishes `body` to `subject` and waits until the stream (or the server) has it, until `deadline`.
    pub async fn publish(
        self: &Arc<Self>,
        subject: &str,
        body: Vec<u8>,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let _permit = self.link.permit()?;
        self.link
            .start_once(|| drop(tokio::spawn(Arc::clone(self).run())));
        let client = self.link.ready(deadline).await?;
        let body = Bytes::from(body);
        let covered = self.streams.read().iter().any(|f| covers(f, subject));
        let sent = if covered {
            tokio::time::timeout_at(deadline, self.to_stream(&client, subject, body)).await
        } else {
            tokio::time::timeout_at(deadline, self.to_server(&client, subject, body)).await
        };
        sent.unwrap_or(Err(Failure::Timeout))
    }

    /// A JetStream publish: a request the stream answers with its ack.
    async fn to_stream(
        &self,
        client: &async_nats::Client,
        subject: &str,
        body: Bytes,
    ) -> Result<(), Failure> {
        let answer = client
            .request(subject.to_string(), body)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => {
                    Failure::Refused("no stream took the event".into())
                }
                RequestErrorKind::TimedOut => Failure::Timeout,
                RequestErrorKind::MaxPayloadExceeded => too_large(),
                RequestErrorKind::InvalidSubject | RequestErrorKind::Other => {
                    self.failed(&e);
                    Failure::Unavailable
                }
            })?;
        let ack: Value = serde_json::from_slice(&answer.payload).unwrap_or(Value::Null);
        if ack.get("stream").is_some() && ack.get("error").is_none() {
            Ok(())
        } else {
            tracing::debug!(broker = %self.link.label, answer = %ack, "event routes: the stream refused an event");
            Err(Failure::Refused("the stream refused the event".into()))
        }
    }

    /// A core publish, then a flush: the server answered a PING sent after it, so it has the message.
    async fn to_server(
        &self,
        client: &async_nats::Client,
        subject: &str,
        body: Bytes,
    ) -> Result<(), Failure> {
        client
            .publish(subject.to_string(), body)
            .await
            .map_err(|e| match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => too_large(),
                _ => {
                    self.failed(&e);
                    Failure::Unavailable
                }
            })?;
        client.flush().await.map_err(|e| {
            self.failed(&e);
            Failure::Unavailable
        })
    }

    fn failed(&self, e: &dyn std::fmt::Display) {
        tracing::debug!(broker = %self.link.label, error = %redact(&e.to_string(), &self.url), "event routes: a publish failed");
    }

    /// Connects (again with backoff until the server first answers), then follows the client's reconnections
    /// and reads the streams' subjects every `REFRESH`; starts over if the client closes for good.
    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            self.link.connecting();
            let (events_tx, mut events) = mpsc::unbounded_channel();
            let connecting = async_nats::ConnectOptions::new()
                .name(format!("herald {} event routes", self.node))
                .event_callback(move |event| {
                    let events = events_tx.clone();
                    async move {
                        let _ = events.send(event);
                    }
                })
                .connect(self.url.as_str());
            let client = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    self.link.down(&redact(&e.to_string(), &self.url));
                    backoff.wait().await;
                    continue;
                }
                Err(_) => {
                    self.link.down(&format!(
                        "the server did not answer within {CONNECT_TIMEOUT:?}"
                    ));
                    backoff.wait().await;
                    continue;
                }
            };
            self.refresh(&client).await;
            self.link.up(client.clone());
            backoff.reset();
            let mut tick = tokio::time::interval_at(Instant::now() + REFRESH, REFRESH);
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(async_nats::Event::Disconnected) => {
                            self.link.down("disconnected from NATS; reconnecting");
                        }
                        Some(async_nats::Event::Connected) => {
                            self.refresh(&client).await;
                            self.link.up(client.clone());
                        }
                        Some(async_nats::Event::Closed) | None => break,
                        Some(_) => {}
                    },
                    _ = tick.tick() => {
                        if client.connection_state() == async_nats::connection::State::Connected {
                            self.refresh(&client).await;
                        }
                    }
                }
            }
            self.link.down("the NATS client closed");
            backoff.wait().await;
        }
    }

    /// Reads the streams' subjects; keeps the last ones when the server does not answer in time.
    async fn refresh(&self, client: &async_nats::Client) {
        match tokio::time::timeout(LIST_TIMEOUT, stream_subjects(client)).await {
            Ok(Some(subjects)) => *self.streams.write() = subjects,
            Ok(None) | Err(_) => {
                tracing::debug!(broker = %self.link.label, "event routes: cannot read the JetStream streams; keeping the last list");
            }
        }
    }
}

fn too_large() -> Failure {
    Failure::Refused("the event is larger than the NATS server accepts".into())
}

/// The subject filters of every stream (`$JS.API.STREAM.LIST`, page by page); none without JetStream; `None`
/// when the answer cannot be read.
async fn stream_subjects(client: &async_nats::Client) -> Option<Vec<String>> {
    let mut subjects = Vec::new();
    let mut offset = 0;
    for _ in 0..MAX_PAGES {
        let request = serde_json::json!({ "offset": offset }).to_string();
        let answer = match client
            .request("$JS.API.STREAM.LIST", Bytes::from(request))
            .await
        {
            Ok(answer) => answer,
            Err(e) if e.kind() == RequestErrorKind::NoResponders => return Some(Vec::new()),
            Err(_) => return None,
        };
        let page: Value = serde_json::from_slice(&answer.payload).ok()?;
        if page.get("error").is_some() {
            // JetStream is off for this account.
            return Some(Vec::new());
        }
        let streams = page.get("streams").and_then(Value::as_array);
        let streams = streams.map(Vec::as_slice).unwrap_or_default();
        for stream in streams {
            let filters = stream["config"]["subjects"].as_array();
            subjects.extend(
                filters
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string)),
            );
        }
        offset += streams.len();
        let total = page.get("total").and_then(Value::as_u64).unwrap_or(0);
        if streams.is_empty() || offset as u64 >= total {
            return Some(subjects);
        }
    }
    Some(subjects)
}

/// Whether the subject filter `filter` (`*` one token, `>` the rest) covers `subject`.
fn covers(filter: &str, subject: &str) -> bool {
    let mut filter = filter.split('.');
    let mut subject = subject.split('.');
    loop {
        match (filter.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(f), Some(s)) if f == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_cover_subjects_as_nats_matches_them() {
        let cases = [
            ("orders.*", "orders.new", true),
            ("orders.*", "orders.new.eu", false),
            ("orders.>", "orders.new.eu", true),
            ("orders.>", "orders", false),
            (">", "anything.at.all", true),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*.c", "a.x.c", true),
            ("a.*.c", "a.x.d", false),
            ("a", "a.b", false),
        ];
        for (filter, subject, expected) in cases {
            assert_eq!(covers(filter, subject), expected, "{filter} vs {subject}");
        }
    }
}
