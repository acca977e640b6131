//! Event routes to an MQTT 3.1.1 broker (rumqttc): one connection per URL, shared by every route naming it;
//! each event is a QoS 1 PUBLISH and its ack waits for the PUBACK of that PUBLISH.
//!
//! ```text
//! publish: lock the queue ─► try_publish (rumqttc's request channel) ─► push the waiter ─► unlock
//! session task: EventLoop::poll
//!   Outgoing::Publish(pkid) ─► the oldest queued waiter now waits for `pkid`
//!   Outgoing::AwaitAck(pkid) ─► (pkid still unacked: rumqttc holds the PUBLISH) the oldest waiter waits for
//!                               its resend, which rumqttc makes right after the PUBACK of the older one
//!   Incoming::PubAck(pkid) ─► that waiter: queued
//!   error ─► every waiter: unavailable; down; wait (0.5 s doubling to 10 s); a new client and connection
//! ```
//!
//! rumqttc numbers a PUBLISH only when its event loop takes it from the request channel, and gives no handle
//! to the caller; but the loop takes requests in order and reports each as it writes it. So a waiter is queued
//! under the same lock as its request, the queue is in the channel's order, and each report takes the oldest.
//! Only publishes go through the channel (pings are the loop's own), so the two never drift apart.
//!
//! Sessions are clean, with a fresh client id per connection (as the bridge's): a PUBLISH not acknowledged
//! when the connection drops is not resent, so its waiter fails rather than waiting for a resend that would
//! not come.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::link::{label, Link, MAX_WAITING};
use super::Failure;
use crate::bridges::backoff::{redact, Backoff};
use crate::bridges::mqtt::{client_id, options};
use crate::bridges::status::BridgeStatus;

/// The broker is pinged after this long without traffic.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// A broker that accepts TCP but not MQTT's CONNECT in this time is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest PUBLISH herald sends (topic, body and headers); a larger event is refused before it is sent, since
/// rumqttc would drop the connection for it.
const MAX_PACKET: usize = 8 << 20;
/// Largest packet herald reads: it subscribes to nothing, so only acks and pings come.
const MAX_INCOMING: usize = 64 << 10;

type Answer = Result<(), Failure>;

/// An event waiting for its PUBACK; its place among `MAX_WAITING` goes with it.
struct Waiter {
    done: oneshot::Sender<Answer>,
    _permit: OwnedSemaphorePermit,
}

impl Waiter {
    fn answer(self, answer: Answer) {
        // The event's client may have stopped waiting: nothing to tell then.
        let _ = self.done.send(answer);
    }
}

/// The publishes of one connection that rumqttc has not taken yet, in the order of its request channel.
#[derive(Default)]
struct Queue {
    /// The connection is over: nothing more may be queued on it.
    closed: bool,
    waiting: VecDeque<Waiter>,
}

/// One connection: its client and the waiters of the publishes handed to it.
pub struct Session {
    client: AsyncClient,
    queue: Mutex<Queue>,
}

impl Session {
    /// Hands a PUBLISH to rumqttc and queues its waiter, in the same order.
    fn publish(
        &self,
        topic: &str,
        body: Vec<u8>,
        permit: OwnedSemaphorePermit,
    ) -> Result<oneshot::Receiver<Answer>, Failure> {
        let mut queue = self.queue.lock();
        if queue.closed {
            return Err(Failure::Unavailable);
        }
        // The channel holds at most `MAX_WAITING` requests, each with its waiter's permit, so it is never full:
        // a refusal means the event loop is gone.
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, body)
            .map_err(|_| Failure::Unavailable)?;
        let (done, answer) = oneshot::channel();
        queue.waiting.push_back(Waiter {
            done,
            _permit: permit,
        });
        Ok(answer)
    }

    fn oldest(&self) -> Option<Waiter> {
        self.queue.lock().waiting.pop_front()
    }

    /// Ends the session: nothing more is queued, and what is queued fails.
    fn close(&self) -> Vec<Waiter> {
        let mut queue = self.queue.lock();
        queue.closed = true;
        queue.waiting.drain(..).collect()
    }
}

/// Which waiter each packet id belongs to, from the event loop's reports.
struct Correlator<W> {
    sent: HashMap<u16, W>,
    /// A PUBLISH rumqttc holds because its id is still unacked, and whether that PUBACK came (so the next
    /// `Outgoing::Publish` of that id is its resend).
    collided: Option<(u16, W)>,
    resend_due: bool,
}

impl<W> Default for Correlator<W> {
    fn default() -> Self {
        Correlator {
            sent: HashMap::new(),
            collided: None,
            resend_due: false,
        }
    }
}

impl<W> Correlator<W> {
    /// A PUBLISH went out as `pkid`: the held one when its turn came, else the oldest queued. Answers a
    /// waiter it displaced (only a broker acking what it was never sent could cause that).
    fn published(&mut self, pkid: u16, oldest: impl FnOnce() -> Option<W>) -> Option<W> {
        let waiter = match self.collided.take() {
            Some((held, waiter)) if self.resend_due && held == pkid => {
                self.resend_due = false;
                Some(waiter)
            }
            other => {
                self.collided = other;
                oldest()
            }
        };
        waiter.and_then(|waiter| self.sent.insert(pkid, waiter))
    }

    /// The oldest queued PUBLISH is held until `pkid` is acked.
    fn held(&mut self, pkid: u16, oldest: impl FnOnce() -> Option<W>) {
        if let Some(waiter) = oldest() {
            self.collided = Some((pkid, waiter));
            self.resend_due = false;
        }
    }

    /// The PUBACK of `pkid`: its waiter.
    fn acked(&mut self, pkid: u16) -> Option<W> {
        if matches!(&self.collided, Some((held, _)) if *held == pkid) {
            self.resend_due = true;
        }
        self.sent.remove(&pkid)
    }

    /// Every waiter still waiting.
    fn drain(&mut self) -> Vec<W> {
        let mut all: Vec<W> = self.sent.drain().map(|(_, w)| w).collect();
        all.extend(self.collided.take().map(|(_, w)| w));
        all
    }
}

/// The connection to one MQTT URL.
pub struct MqttLink {
    link: Link<Arc<Session>>,
    url: String,
    node: Arc<str>,
}

impl MqttLink {
    pub fn new(url: &str, node: &Arc<str>) -> Arc<MqttLink> {
        Arc::new(MqttLink {
            link: Link::new(label("mqtt", url)),
            url: url.to_string(),
            node: Arc::clone(node),
        })
    }

    /// A route on this link shows the link's state in `status`.
    pub fn add_route(&self, status: Arc<BridgeStatus>) {
        self.link.add_status(status);
    }

    /// Publishes `body` to `topic` at QoS 1 and waits for its PUBACK until `deadline`.
    pub async fn publish(
        self: &Arc<Self>,
        topic: &str,
        body: Vec<u8>,
        deadline: Instant,
    ) -> Result<(), Failure> {
        // Fixed header, topic length and packet id, at most 11 bytes.
        if topic.len() + body.len() + 11 > MAX_PACKET {
            return Err(Failure::Refused(format!(
                "the event is larger than the {MAX_PACKET} bytes an MQTT route sends"
            )));
        }
        let permit = self.link.permit()?;
        self.link
            .start_once(|| drop(tokio::spawn(Arc::clone(self).run())));
        let session = self.link.ready(deadline).await?;
        let answer = session.publish(topic, body, permit)?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Failure::Unavailable),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Connects, publishes until the connection fails, waits, and again, for as long as the process runs.
    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            self.link.connecting();
            let reason = self.session(&mut backoff).await;
            self.link.down(&reason);
            backoff.wait().await;
        }
    }

    /// One connection, until it fails (the reason).
    async fn session(&self, backoff: &mut Backoff) -> String {
        let mut options: MqttOptions = match options(&self.url) {
            Ok(options) => options,
            Err(e) => return e.to_string(),
        };
        options
            .set_client_id(client_id(&self.node))
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_inflight(MAX_WAITING as u16)
            .set_max_packet_size(MAX_INCOMING, MAX_PACKET);
        let (client, mut events) = AsyncClient::new(options, MAX_WAITING);
        match tokio::time::timeout(CONNECT_TIMEOUT, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            Ok(Ok(other)) => return format!("the broker answered {other:?} to CONNECT"),
            Ok(Err(e)) => return redact(&e.to_string(), &self.url),
            Err(_) => {
                return format!(
                    "the broker did not complete the connection within {CONNECT_TIMEOUT:?}"
                )
            }
        }
        let session = Arc::new(Session {
            client,
            queue: Mutex::new(Queue::default()),
        });
        self.link.up(Arc::clone(&session));
        backoff.reset();
        let mut correlator = Correlator::default();
        let reason = loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(displaced) = correlator.published(pkid, || session.oldest()) {
                        displaced.answer(Err(Failure::Unavailable));
                    }
                }
                Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                    correlator.held(pkid, || session.oldest());
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(waiter) = correlator.acked(ack.pkid) {
                        waiter.answer(Ok(()));
                    }
                }
                Ok(_) => {}
                Err(e) => break redact(&e.to_string(), &self.url),
            }
        };
        for waiter in session.close().into_iter().chain(correlator.drain()) {
            waiter.answer(Err(Failure::Unavailable));
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays `reports` (Publish, AwaitAck, PubAck by id) against waiters queued as 1, 2, 3...; answers which
    /// waiter each PUBACK acknowledged.
    fn replay(reports: &[(&str, u16)], queued: usize) -> Vec<(u16, u32)> {
        let mut queue: VecDeque<u32> = (1..=queued as u32).collect();
        let mut correlator = Correlator::default();
        let mut acked = Vec::new();
        for (report, pkid) in reports {
            match *report {
                "publish" => {
                    assert!(correlator.published(*pkid, || queue.pop_front()).is_none());
                }
                "await" => correlator.held(*pkid, || queue.pop_front()),
                "puback" => acked.extend(correlator.acked(*pkid).map(|w| (*pkid, w))),
                other => panic!("unknown report {other}"),
            }
        }
        acked
    }

    #[test]
    fn pubacks_reach_the_publishes_in_order() {
        let reports = [
            ("publish", 1),
            ("publish", 2),
            ("puback", 2),
            ("publish", 3),
            ("puback", 1),
            ("puback", 3),
        ];
        assert_eq!(replay(&reports, 3), [(2, 2), (1, 1), (3, 3)]);
    }

    #[test]
    fn a_held_publish_gets_its_resend_s_puback() {
        // Ids wrapped onto 1 while 1 was unacked: rumqttc holds publish 3 and resends it right after PUBACK 1.
        let reports = [
            ("publish", 1),
            ("publish", 2),
            ("puback", 2),
            ("await", 1),
            ("puback", 1),
            ("publish", 1),
            ("publish", 2),
            ("puback", 1),
            ("puback", 2),
        ];
        assert_eq!(replay(&reports, 4), [(2, 2), (1, 1), (1, 3), (2, 4)]);
    }

    #[test]
    fn drain_answers_every_waiter_left() {
        let mut correlator = Correlator::default();
        let mut queue: VecDeque<u32> = (1..=3).collect();
        correlator.published(1, || queue.pop_front());
        correlator.held(1, || queue.pop_front());
        let mut left = correlator.drain();
        left.sort_unstable();
        assert_eq!(left, [1, 2]);
    }
}
