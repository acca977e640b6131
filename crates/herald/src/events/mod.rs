//! The one client-event pipeline: an event a client emits, whatever its transport, is checked against its
//! socket's budget and goes where the site routes it (a webhook, a broker, the rooms' retained state, a relay to
//! a room). An ack, when the client asked for one, carries the answer or `{"error": "<reason>"}`; the client is
//! never closed for an event. `brokers/` publishes to AMQP, MQTT and NATS; `hooks.rs` tells backends of sockets
//! coming and going.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::config::{EventRoute, LimitsConfig, SiteConfig};
use crate::limits::Limit;
use crate::metrics::{EventResult, SiteMetrics, Webhook};
use crate::publish::{PublishRequest, Publisher, Source};
use crate::sites::{ClientInfo, Site};
use crate::socketio::{AckSender, IncomingEvent, Socket};

pub mod answer;
pub mod brokers;
pub mod hooks;
mod webhook;

pub use brokers::Brokers;
pub use hooks::SocketHooks;

/// How many client events were refused because no route took them, since the start (`GET /limits`).
static UNROUTED: AtomicU64 = AtomicU64::new(0);

/// Client events refused for want of a route since the process started.
pub fn unrouted_count() -> u64 {
    UNROUTED.load(Ordering::Relaxed)
}

/// What one socket may send: events per second and events in flight.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    pub per_sec: u32,
    pub in_flight: usize,
    pub max_bytes: usize,
}

impl EventLimits {
    pub fn from_config(limits: &LimitsConfig) -> Self {
        EventLimits {
            per_sec: limits.client_events_per_sec,
            in_flight: limits.client_events_in_flight,
            max_bytes: limits.max_client_event_bytes,
        }
    }
}

/// One socket's use of its limits: a token bucket of `per_sec` tokens refilled over a second, and the events
/// whose route has not answered.
#[derive(Debug, Default)]
pub struct EventBudget {
    bucket: Mutex<Option<(f64, Instant)>>,
    in_flight: AtomicUsize,
}

impl EventBudget {
    /// Takes one token; false when the socket spent its second's worth.
    fn take(&self, per_sec: u32) -> bool {
        let now = Instant::now();
        let rate = f64::from(per_sec);
        let mut bucket = self.bucket.lock();
        let (tokens, last) = bucket.get_or_insert((rate, now));
        let refilled = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if refilled < 1.0 {
            *tokens = refilled;
            return false;
        }
        *tokens = refilled - 1.0;
        true
    }

    /// Counts one event in flight until the guard drops; `None` when `max` are.
    fn start(self: &Arc<Self>, max: usize) -> Option<InFlight> {
        let was = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(Arc::clone(self));
        (was < max).then_some(guard)
    }
}

/// An event in flight; dropping it ends it.
struct InFlight(Arc<EventBudget>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A site's routes for client events. Cheap to share: one per site, behind an `Arc`.
pub struct ClientEvents {
    site: Arc<SiteConfig>,
    http: reqwest::Client,
    /// Set once the gateway is built: routes publish, join and read retained state through it.
    publisher: Arc<OnceLock<Publisher>>,
    limits: EventLimits,
    /// The site's broker routes, by the name they are routed under (`"*"` included).
    brokers: BTreeMap<String, Arc<brokers::Route>>,
    /// Events by result, and the webhook routes' durations.
    metrics: Arc<SiteMetrics>,
}

/// What an event's route answered: the ack's arguments, or why it failed.
type Answer = Result<Vec<Value>, String>;

impl ClientEvents {
    pub fn new(
        site: Arc<SiteConfig>,
        http: reqwest::Client,
        publisher: Arc<OnceLock<Publisher>>,
        limits: EventLimits,
        brokers: &Brokers,
        metrics: Arc<SiteMetrics>,
    ) -> Self {
        let brokers = brokers.routes_of(&site.name);
        ClientEvents {
            site,
            http,
            publisher,
            limits,
            brokers,
            metrics,
        }
    }

    /// The route of `event` and the name it is routed under: its own, else the site's `"*"`.
    fn route(&self, event: &str) -> Option<(String, &EventRoute)> {
        match self.site.events.get_key_value(event) {
            Some((name, route)) => Some((name.clone(), route)),
            None => self
                .site
                .events
                .get("*")
                .map(|route| ("*".to_string(), route)),
        }
    }

    /// Takes one event from `socket`: refused at once (unrouted, over a limit), or routed on its own task.
    pub fn handle(self: &Arc<Self>, socket: &Arc<Socket>, event: IncomingEvent) {
        let IncomingEvent {
            name,
            args,
            binaries,
            ack,
        } = event;
        // Every event spends from the socket's budget, routed or not: a client that floods is refused alike.
        let in_flight = match self.admit(socket, &args, &binaries) {
            Ok(in_flight) => in_flight,
            Err(reason) => {
                self.metrics.client_event(EventResult::Refused);
                tracing::debug!(site = %self.site.name, event = %name, reason, "refused a client event");
                return reply(ack, Err(reason));
            }
        };
        let Some((routed_as, route)) = self.route(&name).map(|(n, r)| (n, r.clone())) else {
            UNROUTED.fetch_add(1, Ordering::Relaxed);
            self.metrics.client_event(EventResult::Unrouted);
            tracing::debug!(site = %self.site.name, event = %name, "refused a client event: not routed");
            return reply(ack, Err(format!("event '{name}' is not routed")));
        };
        let this = Arc::clone(self);
        let socket = Arc::clone(socket);
        tokio::spawn(async move {
            let event = Event {
                name,
                args,
                binaries,
            };
            let answer = this.dispatch(&routed_as, &route, &socket, event).await;
            drop(in_flight);
            match &answer {
                Ok(_) => this.metrics.client_event(EventResult::Ok),
                Err(reason) => {
                    this.metrics.client_event(EventResult::Error);
                    tracing::debug!(site = %this.site.name, reason, "a client event failed");
                }
            }
            reply(ack, answer);
        });
    }

    /// Checks the event against its socket's limits; the guard counts it in flight.
    fn admit(
        &self,
        socket: &Socket,
        args: &[Value],
        binaries: &[Bytes],
    ) -> Result<Option<InFlight>, String> {
        let size = serde_json::to_vec(args).map_or(0, |v| v.len())
            + binaries.iter().map(Bytes::len).sum::<usize>();
        if size > self.limits.max_bytes {
            Limit::ClientEventBytes.hit();
            return Err(format!(
                "the event is {size} bytes, over the limit of {}",
                self.limits.max_bytes
            ));
        }
        let Some(budget) = socket.data::<ClientInfo>().map(|info| &info.events) else {
            return Ok(None);
        };
        if !budget.0.take(self.limits.per_sec) {
            Limit::ClientEventRate.hit();
            return Err(format!(
                "more than {} events per second",
                self.limits.per_sec
            ));
        }
        match budget.0.start(self.limits.in_flight) {
            Some(guard) => Ok(Some(guard)),
            None => {
                Limit::ClientEventsInFlight.hit();
                Err(format!(
                    "{} events are still waiting for an answer",
                    self.limits.in_flight
                ))
            }
        }
    }

    async fn dispatch(
        &self,
        routed_as: &str,
        route: &EventRoute,
        socket: &Arc<Socket>,
        event: Event,
    ) -> Answer {
        if route.broker().is_some() {
            if !event.binaries.is_empty() {
                return Err("binary arguments cannot be sent to a broker".into());
            }
            let broker = self
                .brokers
                .get(routed_as)
                .ok_or_else(|| "the route's broker is not configured".to_string())?;
            broker
                .send(&self.site, socket, &event.name, &event.args)
                .await?;
            return Ok(vec![json!({ "queued": true })]);
        }
        let publisher = self
            .publisher
            .get()
            .ok_or_else(|| "herald is starting; retry".to_string())?;
        let site = publisher
            .sites
            .get(&self.site.name)
            .ok_or_else(|| "the site is gone".to_string())?;
        if let Some(url) = &route.url {
            if !event.binaries.is_empty() {
                return Err("binary arguments cannot be sent to a webhook".into());
            }
            let timeout = Duration::from_millis(route.timeout_ms);
            let call = webhook::Call {
                http: &self.http,
                site: &self.site,
                url,
                timeout,
            };
            let started = Instant::now();
            let answer = call.send(socket, &event.name, &event.args).await;
            self.metrics
                .webhook(Webhook::Event)
                .record(started.elapsed());
            return apply(publisher, &site, socket, answer?).await;
        }
        if route.retained {
            return retained(&site, socket, &event.args).await;
        }
        relay(publisher, &site, socket, event).await
    }
}

/// A client event, its ack taken off.
struct Event {
    name: String,
    args: Vec<Value>,
    binaries: Vec<Bytes>,
}

fn reply(ack: Option<AckSender>, answer: Answer) {
    let Some(ack) = ack else { return };
    match answer {
        Ok(args) => ack.send(&args, &[]),
        Err(reason) => ack.send(&[json!({ "error": reason })], &[]),
    };
}

/// The room an event names as its first argument, which the socket must be in.
fn room_of<'a>(socket: &Socket, args: &'a [Value]) -> Result<&'a str, String> {
    let room = args
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| "the first argument must be a room name".to_string())?;
    if !socket.rooms().iter().any(|r| r == room) {
        return Err(format!("this socket is not in room '{room}'"));
    }
    Ok(room)
}

/// `emit(event, room, retainedEvent)`: the arguments retained for `retainedEvent` in `room`, spread; none when
/// nothing is retained.
async fn retained(site: &Site, socket: &Socket, args: &[Value]) -> Answer {
    let room = room_of(socket, args)?;
    let event = args
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| "the second argument must be the retained event's name".to_string())?;
    let found = site
        .retained
        .get(room, event)
        .await
        .map_err(|e| format!("retained state is unavailable: {e}"))?;
    match found {
        Some(value) => {
            serde_json::from_str(&value.args).map_err(|_| "a retained value is corrupt".to_string())
        }
        None => Ok(Vec::new()),
    }
}

/// `emit(event, room, ...args)`: the same event and arguments to the other sockets of `room`, live (never to
/// mailboxes), logged for recovery like any publish.
async fn relay(publisher: &Publisher, site: &Site, socket: &Socket, event: Event) -> Answer {
    let room = room_of(socket, &event.args)?.to_string();
    let request = PublishRequest {
        rooms: vec![room],
        except: vec![socket.id().to_string()],
        event: event.name,
        args: event.args,
        binaries: event.binaries,
        live_only: true,
        ..PublishRequest::default()
    };
    publisher
        .publish_from(Source::Client, site, &request, false)
        .await
        .map_err(|e| format!("could not relay: {e}"))?;
    Ok(vec![json!({ "ok": true })])
}

/// Does what a webhook's answer asks: joins and leaves for the socket, then its publishes, then the reply.
async fn apply(
    publisher: &Publisher,
    site: &Site,
    socket: &Arc<Socket>,
    answer: answer::RouteAnswer,
) -> Answer {
    if !answer.join.is_empty() || !answer.leave.is_empty() {
        for room in &answer.leave {
            socket.leave(room);
        }
        site.join(socket, &answer.join);
        site.rooms_changed(socket)
            .await
            .map_err(|e| format!("could not record the rooms: {}", e.public_reason()))?;
    }
    for (i, publish) in answer.publish.into_iter().enumerate() {
        let mut request = publish.request;
        if publish.except_sender {
            request.except.push(socket.id().to_string());
        }
        publisher
            .publish_from(Source::Client, site, &request, false)
            .await
            .map_err(|e| format!("the backend's publish[{i}] failed: {e}"))?;
    }
    Ok(answer.reply)
}

/// A socket's [`EventBudget`], inside its `ClientInfo`: state, not identity, so every budget equals every
/// other.
#[derive(Debug, Clone, Default)]
pub struct Budget(pub(crate) Arc<EventBudget>);

impl PartialEq for Budget {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Budget {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_second_s_worth_then_refills() {
        let budget = EventBudget::default();
        assert!((0..5).all(|_| budget.take(5)));
        assert!(!budget.take(5));
        std::thread::sleep(Duration::from_millis(250));
        assert!(budget.take(5), "a quarter second refills one token");
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let budget = Arc::new(EventBudget::default());
        let first = budget.start(2);
        let second = budget.start(2);
        assert!(first.is_some() && second.is_some());
        assert!(budget.start(2).is_none());
        drop(first);
        assert!(budget.start(2).is_some());
    }
}
