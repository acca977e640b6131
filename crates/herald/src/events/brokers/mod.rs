//! Event routes that publish to a broker: a client event becomes the webhook's JSON body, published to an AMQP
//! exchange, an MQTT topic or a NATS subject whose placeholders the event fills, and the client's ack is
//! `{"queued": true}` once the broker confirmed it.
//!
//! ```text
//! ClientEvents::handle ─► Route::send: fill {user} {event} {socket} {site} (a bad value: error ack)
//!   ─► the link of the route's URL (one per kind and URL per process, connected at the first event)
//!   ─► amqp.rs: basic.publish mandatory + publisher confirm   (nack, returned: error ack)
//!      mqtt.rs: PUBLISH QoS 1, the PUBACK of its packet id    (clean session, fresh client id)
//!      nats.rs: JetStream ack when a stream covers the subject, else publish + flush
//!   ─► {"queued": true} | {"error": reason}: within the route's timeout_ms; no URL in any reason
//! ```
//!
//! A link reconnects with the bridges' backoff (0.5 s doubling to 10 s) for as long as the process runs; while
//! it is down, events fail at once. At most `link::MAX_WAITING` events wait for one broker at a time, each until
//! the broker answers, not only until its client gave up. Counts and states go to the routes' `BridgeStatus`
//! (`/api/v1/status`).

mod amqp;
mod link;
mod mqtt;
mod nats;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use self::template::{Template, Values};
use crate::bridges::inbound::Handled;
use crate::bridges::status::BridgeStatus;
use crate::config::{BrokerKind, BrokerTarget, Config, SiteConfig};
use crate::sites::ClientInfo;
use crate::socketio::Socket;

pub use link::MAX_WAITING;

/// Why an event did not reach its broker. What the client reads: never a URL, a credential or a library's
/// error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not connected, or the connection broke while the event was on its way.
    Unavailable,
    /// No confirm within the route's timeout.
    Timeout,
    /// `MAX_WAITING` events are waiting for this broker already.
    Busy,
    /// The broker (or the route) said no: unroutable, nacked, too large. The reason is the ack's.
    Refused(String),
}

impl Failure {
    /// The ack's text for a route whose timeout is `timeout`.
    fn reason(&self, timeout: Duration) -> String {
        match self {
            Failure::Unavailable => "the broker is unavailable".into(),
            Failure::Timeout => format!(
                "the broker did not confirm within {} ms",
                timeout.as_millis()
            ),
            Failure::Busy => "too many events are waiting for the broker".into(),
            Failure::Refused(reason) => reason.clone(),
        }
    }

    /// As a bridge status counts it: a refusal is final, the rest may pass.
    fn counted(&self, reason: String) -> Handled {
        match self {
            Failure::Refused(_) => Handled::Rejected(reason),
            _ => Handled::Retry(reason),
        }
    }
}

/// Where a broker route publishes.
enum Target {
    Amqp {
        link: Arc<amqp::AmqpLink>,
        exchange: String,
        routing_key: Template,
    },
    Mqtt {
        link: Arc<mqtt::MqttLink>,
        topic: Template,
    },
    Nats {
        link: Arc<nats::NatsLink>,
        subject: Template,
    },
}

/// One broker route of one site: its target, its timeout and its status.
pub struct Route {
    target: Target,
    timeout: Duration,
    status: Arc<BridgeStatus>,
}

impl Route {
    /// Publishes `event` of `socket` (the webhook's body) and waits for the broker's confirm, or answers why
    /// not; every outcome is counted in the route's status.
    pub async fn send(
        &self,
        site: &SiteConfig,
        socket: &Socket,
        event: &str,
        args: &[Value],
    ) -> Result<(), String> {
        let result = self.publish(site, socket, event, args).await;
        match result {
            Ok(()) => {
                self.status.count(&Handled::Published);
                Ok(())
            }
            Err(failure) => {
                let reason = failure.reason(self.timeout);
                self.status.count(&failure.counted(reason.clone()));
                Err(reason)
            }
        }
    }

    async fn publish(
        &self,
        site: &SiteConfig,
        socket: &Socket,
        event: &str,
        args: &[Value],
    ) -> Result<(), Failure> {
        let values = Values {
            user: socket
                .data::<ClientInfo>()
                .and_then(|info| info.user.as_deref()),
            event,
            socket: socket.id(),
            site: &site.name,
        };
        let body = super::webhook::body(site, socket, event, args).map_err(Failure::Refused)?;
        let deadline = Instant::now() + self.timeout;
        match &self.target {
            Target::Amqp {
                link,
                exchange,
                routing_key,
            } => {
                let key = routing_key.fill(&values).map_err(Failure::Refused)?;
                link.publish(exchange, &key, body, deadline).await
            }
            Target::Mqtt { link, topic } => {
                let topic = topic.fill(&values).map_err(Failure::Refused)?;
                link.publish(&topic, body, deadline).await
            }
            Target::Nats { link, subject } => {
                let subject = subject.fill(&values).map_err(Failure::Refused)?;
                link.publish(&subject, body, deadline).await
            }
        }
    }
}

/// Every broker route of the configuration, by site and event, over the links they share (one per kind and
/// URL). Built once with the gateway; cheap to clone.
#[derive(Clone, Default)]
pub struct Brokers {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    routes: HashMap<String, BTreeMap<String, Arc<Route>>>,
    statuses: Vec<Arc<BridgeStatus>>,
}

/// The links of one configuration, made as routes name them.
#[derive(Default)]
struct Links {
    node: Arc<str>,
    amqp: HashMap<String, Arc<amqp::AmqpLink>>,
    mqtt: HashMap<String, Arc<mqtt::MqttLink>>,
    nats: HashMap<String, Arc<nats::NatsLink>>,
}

impl Brokers {
    /// The broker routes of `config` (validated), nothing connected yet; `node` names the connections.
    pub fn new(config: &Config, node: &Arc<str>) -> Brokers {
        let mut links = Links {
            node: Arc::clone(node),
            ..Links::default()
        };
        let mut inner = Inner::default();
        for site in &config.sites {
            for (event, route) in &site.events {
                let Some(target) = route.broker() else {
                    continue;
                };
                let status = BridgeStatus::new(route_label(event, &target), site.name.clone());
                inner.statuses.push(Arc::clone(&status));
                let timeout = Duration::from_millis(route.timeout_ms);
                match links.target(&target, &status) {
                    Ok(target) => {
                        let route = Route {
                            target,
                            timeout,
                            status,
                        };
                        inner
                            .routes
                            .entry(site.name.clone())
                            .or_default()
                            .insert(event.clone(), Arc::new(route));
                    }
                    // Validation parsed the same template: this cannot happen with a validated config.
                    Err(e) => status.set(crate::bridges::status::State::Down, Some(e)),
                }
            }
        }
        Brokers {
            inner: Arc::new(inner),
        }
    }

    /// The broker routes of `site`, by event name (`"*"` included).
    pub fn routes_of(&self, site: &str) -> BTreeMap<String, Arc<Route>> {
        self.inner.routes.get(site).cloned().unwrap_or_default()
    }

    /// Every broker route's status, for `/api/v1/status`.
    pub fn statuses(&self) -> Vec<Arc<BridgeStatus>> {
        self.inner.statuses.clone()
    }
}

impl Links {
    /// The target of one route, on the link of its URL (made when it is the first route to name it).
    fn target(
        &mut self,
        target: &BrokerTarget<'_>,
        status: &Arc<BridgeStatus>,
    ) -> Result<Target, String> {
        let template = Template::parse(target.kind, target.template)?;
        let url = target.url.to_string();
        Ok(match target.kind {
            BrokerKind::Amqp => {
                let link = self
                    .amqp
                    .entry(url)
                    .or_insert_with_key(|url| amqp::AmqpLink::new(url));
                link.add_route(target.exchange, Arc::clone(status));
                Target::Amqp {
                    link: Arc::clone(link),
                    exchange: target.exchange.to_string(),
                    routing_key: template,
                }
            }
            BrokerKind::Mqtt => {
                let node = &self.node;
                let link = self
                    .mqtt
                    .entry(url)
                    .or_insert_with_key(|url| mqtt::MqttLink::new(url, node));
                link.add_route(Arc::clone(status));
                Target::Mqtt {
                    link: Arc::clone(link),
                    topic: template,
                }
            }
            BrokerKind::Nats => {
                let node = &self.node;
                let link = self
                    .nats
                    .entry(url)
                    .or_insert_with_key(|url| nats::NatsLink::new(url, node));
                link.add_route(Arc::clone(status));
                Target::Nats {
                    link: Arc::clone(link),
                    subject: template,
                }
            }
        })
    }
}

/// A route's name in `/api/v1/status`, without its URL: `bid → amqp herald.events acme.{event}`.
fn route_label(event: &str, target: &BrokerTarget<'_>) -> String {
    let kind = target.kind.name();
    match target.kind {
        BrokerKind::Amqp if target.exchange.is_empty() => {
            format!("{event} → {kind} (default exchange) {}", target.template)
        }
        BrokerKind::Amqp => format!("{event} → {kind} {} {}", target.exchange, target.template),
        BrokerKind::Mqtt | BrokerKind::Nats => format!("{event} → {kind} {}", target.template),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AmqpRoute, EventRoute, NatsRoute};

    fn route(amqp: Option<AmqpRoute>, nats: Option<NatsRoute>) -> EventRoute {
        EventRoute {
            amqp,
            nats,
            timeout_ms: 5000,
            ..EventRoute::default()
        }
    }

    #[test]
    fn routes_share_one_link_per_url_and_show_no_credentials() {
        let url = "amqp://guest:s3cret@127.0.0.1:5672/%2f";
        let amqp = |key: &str| AmqpRoute {
            url: url.into(),
            exchange: "herald.events".into(),
            routing_key: key.into(),
        };
        let mut site = SiteConfig::new("acme".into());
        site.events
            .insert("bid".into(), route(Some(amqp("acme.{event}")), None));
        site.events
            .insert("ask".into(), route(Some(amqp("acme.ask")), None));
        let nats = NatsRoute {
            url: "nats://127.0.0.1:4222".into(),
            subject: "herald.{site}.{event}".into(),
        };
        site.events.insert("*".into(), route(None, Some(nats)));
        site.events.insert(
            "chat".into(),
            EventRoute {
                relay: true,
                ..EventRoute::default()
            },
        );
        let config = Config {
            sites: vec![site],
            ..Config::default()
        };
        let brokers = Brokers::new(&config, &Arc::from("node0001"));
        let routes = brokers.routes_of("acme");
        assert_eq!(
            routes.keys().collect::<Vec<_>>(),
            ["*", "ask", "bid"],
            "the relay route is not a broker's"
        );
        let (Target::Amqp { link: bid, .. }, Target::Amqp { link: ask, .. }) =
            (&routes["bid"].target, &routes["ask"].target)
        else {
            panic!("AMQP routes");
        };
        assert!(Arc::ptr_eq(bid, ask), "one link per URL");
        let labels: Vec<Value> = brokers
            .statuses()
            .iter()
            .map(|s| s.describe()["bridge"].clone())
            .collect();
        assert_eq!(
            labels,
            [
                "* → nats herald.{site}.{event}",
                "ask → amqp herald.events acme.ask",
                "bid → amqp herald.events acme.{event}"
            ]
        );
        for status in brokers.statuses() {
            let shown = status.describe().to_string();
            assert!(!shown.contains("s3cret"), "{shown}");
            assert_eq!(status.describe()["state"], "idle");
        }
        assert!(brokers.routes_of("other").is_empty());
    }

    #[test]
    fn failures_read_without_internals() {
        let timeout = Duration::from_millis(300);
        assert_eq!(
            Failure::Unavailable.reason(timeout),
            "the broker is unavailable"
        );
        assert_eq!(
            Failure::Timeout.reason(timeout),
            "the broker did not confirm within 300 ms"
        );
        assert_eq!(
            Failure::Busy.counted("busy".into()),
            Handled::Retry("busy".into())
        );
        assert_eq!(
            Failure::Refused("no".into()).counted("no".into()),
            Handled::Rejected("no".into())
        );
    }
}
