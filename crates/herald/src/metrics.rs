//! Prometheus metrics: the one recorder, every metric's name and help, the handles updates go to, `GET /metrics`.
//!
//! The recorder is installed once per process (`install`, from `gateway::build_in` before any handle is made);
//! gateways built in one process (tests) share it. Handles are made once, per site or per namespace, so an
//! update is an atomic add on a handle and never builds a label. Gauges and the counters other modules already
//! keep (limits, bridges) are sampled when `/metrics` is scraped. Without a recorder (`server.metrics: false`)
//! every handle is a no-op.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::cluster::Directory;
use crate::engine::Transport;
use crate::secret::Secret;
use crate::sites::Sites;

pub const CONNECTIONS: &str = "herald_connections";
pub const CONNECTS: &str = "herald_connects_total";
pub const DELIVERIES: &str = "herald_deliveries_total";
pub const PUBLISHES: &str = "herald_publishes_total";
pub const PUBLISH_DURATION: &str = "herald_publish_duration_seconds";
pub const DISCONNECTS: &str = "herald_disconnects_total";
pub const WEBHOOK_DURATION: &str = "herald_webhook_duration_seconds";
pub const MAILBOX_APPENDS: &str = "herald_mailbox_appends_total";
pub const MAILBOX_PENDING: &str = "herald_mailbox_pending";
pub const CLUSTER_NODES: &str = "herald_cluster_nodes";
pub const BRIDGE_MESSAGES: &str = "herald_bridge_messages_total";
pub const CLIENT_EVENTS: &str = "herald_client_events_total";
pub const LIMIT_HITS: &str = "herald_limit_hits_total";

/// The content type of the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Upper bounds of the `_seconds` histograms' buckets: 0.5 ms to 10 s (a webhook's default timeout is 5 s).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder folds histogram samples into their buckets between scrapes, so an unscraped
/// process keeps no more than this period's samples.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's recorder, once installed; `None` inside when another recorder was installed first.
static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's Prometheus recorder, the first time, and returns its handle; later calls return the
/// same handle. `None` if another recorder took the process's slot.
pub fn install() -> Option<PrometheusHandle> {
    RECORDER.get_or_init(build_recorder).clone()
}

/// The recorder's settings: the `_seconds` metrics are histograms with `BUCKETS`.
fn builder() -> Option<PrometheusBuilder> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .map_err(|e| tracing::warn!(error = %e, "metrics: bad histogram buckets"))
        .ok()
}

fn build_recorder() -> Option<PrometheusHandle> {
    let handle = builder()?
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics: could not install the recorder; /metrics is off"))
        .ok()?;
    describe();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("herald-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        // Scrapes still fold the samples in; only an unscraped process keeps them longer.
        tracing::warn!(error = %e, "metrics: could not start the upkeep thread");
    }
    Some(handle)
}

/// Every metric's HELP line.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        CONNECTIONS,
        "Sockets connected to each site on this node, by their session's transport (polling, websocket, \
         plain-websocket, sse), counted when scraped."
    );
    describe_counter!(
        CONNECTS,
        "Namespace CONNECTs to a site answered on this node: accepted, or refused (auth, limits, full)."
    );
    describe_counter!(
        DELIVERIES,
        "Packets queued for sockets of each site on this node: live broadcast deliveries (one per recipient) \
         and mailbox entries sent (one per entry, a _batch page counting its entries)."
    );
    describe_counter!(
        PUBLISHES,
        "Publishes that went through the publish pipeline on this node, by source: api (v1 publish and \
         batch), send (/send), emitter (socket.io Redis emitter), bridge (broker bridges), client (event \
         relays and webhook answers), admin (the admin console)."
    );
    describe_histogram!(
        PUBLISH_DURATION,
        "Wall time of one publish through the pipeline (retained state, mailbox appends, the bus, the local \
         fan-out), failed ones included."
    );
    describe_counter!(
        DISCONNECTS,
        "Sockets that left a site's namespace on this node, by socket.io disconnect reason."
    );
    describe_histogram!(
        WEBHOOK_DURATION,
        "Wall time of one HTTP call to a site's backend, by kind: auth (the auth webhook), event (an event \
         route), hook (hooks.connect/disconnect, each attempt), presence (updateUserUrl, each attempt)."
    );
    describe_counter!(
        MAILBOX_APPENDS,
        "Mailbox entries the publish pipeline on this node appended (one per device reached)."
    );
    describe_gauge!(
        MAILBOX_PENDING,
        "Mailbox entries sent to the devices connected to this node and not acknowledged yet, sampled when \
         scraped (an event stream, which cannot ack, keeps its entries until it comes back). Entries of \
         offline devices, or of devices on other nodes, are not counted."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Live nodes in this node's view of the cluster, itself included (1 without a cluster)."
    );
    describe_counter!(
        BRIDGE_MESSAGES,
        "Messages each broker bridge and broker event route handled: published (or confirmed), rejected \
         (refused for good), retried (left for a retry, or failed for a reason that may pass)."
    );
    describe_counter!(
        CLIENT_EVENTS,
        "Events clients emitted to each site: ok (the route answered), error (the route answered an error \
         or failed), refused (over a limit), unrouted (no route)."
    );
    describe_counter!(
        LIMIT_HITS,
        "How often each limit fired since the process started, by its setting's name (as GET /limits)."
    );
}

/// Where a publish came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// `POST /api/v1/sites/{site}/publish` and `.../batch`.
    #[default]
    Api,
    /// crossroads' `POST /send`.
    Send,
    /// The socket.io Redis emitter.
    Emitter,
    /// A broker bridge (AMQP, MQTT, NATS, Redis, Postgres).
    Bridge,
    /// A client: a relayed event, or the publishes of an event route's webhook answer.
    Client,
    /// The admin console's publish form (`/api/v1/admin`).
    Admin,
}

impl Source {
    const ALL: [Source; 6] = [
        Source::Api,
        Source::Send,
        Source::Emitter,
        Source::Bridge,
        Source::Client,
        Source::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Send => "send",
            Source::Emitter => "emitter",
            Source::Bridge => "bridge",
            Source::Client => "client",
            Source::Admin => "admin",
        }
    }
}

/// What became of a client event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Ok,
    /// The route answered an error, or could not be reached.
    Error,
    /// Over one of the socket's limits.
    Refused,
    /// No route took it.
    Unrouted,
}

impl EventResult {
    const ALL: [EventResult; 4] = [
        EventResult::Ok,
        EventResult::Error,
        EventResult::Refused,
        EventResult::Unrouted,
    ];

    fn as_str(self) -> &'static str {
        match self {
            EventResult::Ok => "ok",
            EventResult::Error => "error",
            EventResult::Refused => "refused",
            EventResult::Unrouted => "unrouted",
        }
    }
}

/// Which backend call a webhook duration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Webhook {
    Auth,
    Event,
    Hook,
    Presence,
}

impl Webhook {
    const ALL: [Webhook; 4] = [
        Webhook::Auth,
        Webhook::Event,
        Webhook::Hook,
        Webhook::Presence,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Webhook::Auth => "auth",
            Webhook::Event => "event",
            Webhook::Hook => "hook",
            Webhook::Presence => "presence",
        }
    }
}

/// One site's handles, made when the gateway is built. Cheap to clone (each handle is an `Arc`).
#[derive(Debug, Clone)]
pub struct SiteMetrics {
    pub deliveries: Counter,
    publishes: [Counter; Source::ALL.len()],
    client_events: [Counter; EventResult::ALL.len()],
    webhooks: [Histogram; Webhook::ALL.len()],
    /// Not per site: every site's handle is the same metric.
    pub publish_duration: Histogram,
    /// Not per site, as `publish_duration`.
    pub mailbox_appends: Counter,
    /// What the admin console charts, kept whether or not Prometheus is on.
    pub totals: Arc<Totals>,
}

/// A site's publishes and deliveries since the start, which the admin console samples into rates. Counted per
/// publish (and per broadcast the bus brings), never per recipient, and outside `fan_out`.
#[derive(Debug, Default)]
pub struct Totals {
    publishes: std::sync::atomic::AtomicU64,
    deliveries: std::sync::atomic::AtomicU64,
}

impl Totals {
    /// A publish went through, reaching `delivered` sockets and devices on this node.
    pub fn published(&self, delivered: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.publishes.fetch_add(1, Relaxed);
        self.deliveries.fetch_add(delivered as u64, Relaxed);
    }

    /// A broadcast from another node was queued for `delivered` sockets here.
    pub fn delivered(&self, delivered: usize) {
        self.deliveries
            .fetch_add(delivered as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// (publishes, deliveries) so far.
    pub fn read(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.publishes.load(Relaxed), self.deliveries.load(Relaxed))
    }
}

impl SiteMetrics {
    pub fn new(site: &str) -> Self {
        let site = site.to_string();
        SiteMetrics {
            deliveries: metrics::counter!(DELIVERIES, "site" => site.clone()),
            publishes: Source::ALL.map(|source| {
                metrics::counter!(PUBLISHES, "site" => site.clone(), "source" => source.as_str())
            }),
            client_events: EventResult::ALL.map(|result| {
                metrics::counter!(CLIENT_EVENTS, "site" => site.clone(), "result" => result.as_str())
            }),
            webhooks: Webhook::ALL.map(|kind| webhook_duration(&site, kind)),
            publish_duration: metrics::histogram!(PUBLISH_DURATION),
            mailbox_appends: metrics::counter!(MAILBOX_APPENDS),
            totals: Arc::default(),
        }
    }

    /// Handles that record nothing (a site's parts built outside a gateway, in tests).
    pub fn noop() -> Self {
        SiteMetrics {
            deliveries: Counter::noop(),
            publishes: Source::ALL.map(|_| Counter::noop()),
            client_events: EventResult::ALL.map(|_| Counter::noop()),
            webhooks: Webhook::ALL.map(|_| Histogram::noop()),
            publish_duration: Histogram::noop(),
            mailbox_appends: Counter::noop(),
            totals: Arc::default(),
        }
    }

    pub fn published(&self, source: Source) {
        self.publishes[source as usize].increment(1);
    }

    pub fn client_event(&self, result: EventResult) {
        self.client_events[result as usize].increment(1);
    }

    /// The histogram of `kind` calls to this site's backend.
    pub fn webhook(&self, kind: Webhook) -> &Histogram {
        &self.webhooks[kind as usize]
    }
}

/// A site a reload removed has no connections: its gauges say so, since scrapes no longer sample it.
pub fn site_removed(site: &str) {
    for transport in TRANSPORTS {
        metrics::gauge!(CONNECTIONS, "site" => site.to_string(), "transport" => transport.as_str())
            .set(0.0);
    }
}

/// The histogram of `kind` calls to `site`'s backend.
pub fn webhook_duration(site: &str, kind: Webhook) -> Histogram {
    metrics::histogram!(WEBHOOK_DURATION, "site" => site.to_string(), "kind" => kind.as_str())
}

/// The socket.io disconnect reasons (ARCHITECTURE.md's table), each with a handle made once.
const DISCONNECT_REASONS: [&str; 11] = [
    "transport close",
    "transport error",
    "ping timeout",
    "parse error",
    "outbox full",
    "payload too large",
    "request overlap",
    "forced close",
    "policy violation",
    "server namespace disconnect",
    "client namespace disconnect",
];

/// A namespace's handles: connects answered and sockets that left. The root namespace `/` counts nothing: it is
/// no site (socket.io 2.x clients join it beside their site's namespace).
#[derive(Debug)]
pub struct NamespaceMetrics {
    accepted: Counter,
    refused: Counter,
    disconnects: Option<[Counter; DISCONNECT_REASONS.len()]>,
}

impl NamespaceMetrics {
    /// The handles of namespace `name` (`/<site>`).
    pub fn new(name: &str) -> Self {
        let Some(site) = name.strip_prefix('/').filter(|s| !s.is_empty()) else {
            return NamespaceMetrics {
                accepted: Counter::noop(),
                refused: Counter::noop(),
                disconnects: None,
            };
        };
        let site = site.to_string();
        NamespaceMetrics {
            accepted: metrics::counter!(CONNECTS, "site" => site.clone(), "result" => "accepted"),
            refused: metrics::counter!(CONNECTS, "site" => site, "result" => "refused"),
            disconnects: Some(
                DISCONNECT_REASONS.map(|reason| metrics::counter!(DISCONNECTS, "reason" => reason)),
            ),
        }
    }

    /// A CONNECT was answered with the socket's id.
    pub fn accepted(&self) {
        self.accepted.increment(1);
    }

    /// A CONNECT was answered with `connect_error`.
    pub fn refused(&self) {
        self.refused.increment(1);
    }

    /// A socket left for `reason`.
    pub fn disconnected(&self, reason: &'static str) {
        let Some(counters) = &self.disconnects else {
            return;
        };
        match DISCONNECT_REASONS.iter().position(|r| *r == reason) {
            Some(i) => counters[i].increment(1),
            // A reason the table does not have yet: counted all the same, through the registry.
            None => metrics::counter!(DISCONNECTS, "reason" => reason).increment(1),
        }
    }
}

/// The transports a socket's session may have, in `herald_connections`' order (and the admin console's).
pub const TRANSPORTS: [Transport; 4] = [
    Transport::Polling,
    Transport::WebSocket,
    Transport::PlainWebSocket,
    Transport::EventStream,
];

/// `GET /metrics`: what it samples when scraped, and the token it may ask for.
#[derive(Clone)]
pub struct Endpoint {
    pub handle: PrometheusHandle,
    /// `server.metrics_token`: when set, a scrape must carry `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    pub sites: Sites,
    pub bridges: crate::bridges::status::Statuses,
    pub directory: Arc<dyn Directory>,
}

impl Endpoint {
    /// The route, for the gateway's router.
    pub fn router(self) -> axum::Router {
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| {
                let endpoint = self.clone();
                async move { endpoint.scrape(&headers) }
            }),
        )
    }

    fn scrape(&self, headers: &HeaderMap) -> Response {
        if !authorized(self.token.as_ref(), headers) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "/metrics wants 'Authorization: Bearer <server.metrics_token>'\n",
            )
                .into_response();
        }
        self.sample();
        self.handle.run_upkeep();
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], self.handle.render()).into_response()
    }

    /// Sets the gauges and the counters kept elsewhere to what they are now.
    fn sample(&self) {
        let mut pending = 0;
        let mut mailboxes = Vec::new();
        for site in self.sites.all() {
            let mut counts = [0u64; TRANSPORTS.len()];
            site.namespace.for_each_socket(|socket| {
                let transport = socket.session().transport();
                if let Some(i) = TRANSPORTS.iter().position(|t| *t == transport) {
                    counts[i] += 1;
                }
            });
            for (transport, count) in TRANSPORTS.iter().zip(counts) {
                metrics::gauge!(CONNECTIONS, "site" => site.config.name.clone(), "transport" => transport.as_str())
                    .set(count as f64);
            }
            // One mailbox service serves every site that keeps mailboxes: count it once.
            if let Some(mailbox) = &site.mailbox {
                if !mailboxes.iter().any(|m| Arc::ptr_eq(m, mailbox)) {
                    pending += mailbox.unacked();
                    mailboxes.push(Arc::clone(mailbox));
                }
            }
        }
        metrics::gauge!(MAILBOX_PENDING).set(pending as f64);
        metrics::gauge!(CLUSTER_NODES).set((1 + self.directory.peers().len()) as f64);
        for bridge in self.bridges.all() {
            let counts = bridge.describe();
            for result in ["published", "rejected", "retried"] {
                let count = counts[result].as_u64().unwrap_or(0);
                metrics::counter!(BRIDGE_MESSAGES, "bridge" => bridge.label.clone(), "result" => result)
                    .absolute(count);
            }
        }
        for limit in crate::limits::Limit::ALL {
            metrics::counter!(LIMIT_HITS, "limit" => limit.name()).absolute(limit.count());
        }
    }
}

/// Whether `headers` carry the token, compared in constant time; anyone passes when there is none.
fn authorized(token: Option<&Secret>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| token.matches(given.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CloseReason;

    #[test]
    fn every_close_reason_has_its_handle() {
        let reasons = [
            CloseReason::TransportClose,
            CloseReason::TransportError,
            CloseReason::PingTimeout,
            CloseReason::ParseError,
            CloseReason::ServerClose,
            CloseReason::OutboxFull,
            CloseReason::PayloadTooLarge,
            CloseReason::RequestOverlap,
            CloseReason::PolicyViolation,
        ];
        for reason in reasons {
            assert!(
                DISCONNECT_REASONS.contains(&reason.as_str()),
                "{}",
                reason.as_str()
            );
        }
    }

    #[test]
    fn labels_index_their_handles() {
        for (i, source) in Source::ALL.iter().enumerate() {
            assert_eq!(*source as usize, i, "{}", source.as_str());
        }
        for (i, result) in EventResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, i, "{}", result.as_str());
        }
        for (i, kind) in Webhook::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{}", kind.as_str());
        }
    }

    /// The value of the sample `name{labels}` in `text`, the labels written as the exporter writes them.
    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn handles_update_what_the_text_format_shows() {
        let recorder = builder().expect("valid buckets").build_recorder();
        let handle = recorder.handle();
        let (site, namespace, root) = metrics::with_local_recorder(&recorder, || {
            describe();
            (
                SiteMetrics::new("shop"),
                NamespaceMetrics::new("/shop"),
                NamespaceMetrics::new("/"),
            )
        });
        site.published(Source::Emitter);
        site.published(Source::Emitter);
        site.client_event(EventResult::Unrouted);
        site.deliveries.increment(3);
        site.webhook(Webhook::Event)
            .record(Duration::from_millis(30));
        site.publish_duration.record(Duration::from_micros(200));
        namespace.accepted();
        namespace.refused();
        namespace.disconnected("ping timeout");
        root.accepted();
        root.disconnected("ping timeout");
        let text = handle.render();
        let value = |s: &str| sample(&text, s);
        assert_eq!(
            value(r#"herald_publishes_total{site="shop",source="emitter"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(r#"herald_publishes_total{site="shop",source="api"}"#),
            Some(0.0),
            "every source shows from the start"
        );
        assert_eq!(
            value(r#"herald_client_events_total{site="shop",result="unrouted"}"#),
            Some(1.0)
        );
        assert_eq!(value(r#"herald_deliveries_total{site="shop"}"#), Some(3.0));
        assert_eq!(
            value(r#"herald_connects_total{site="shop",result="accepted"}"#),
            Some(1.0),
            "the root namespace counts nothing"
        );
        assert_eq!(
            value(r#"herald_connects_total{site="shop",result="refused"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"herald_disconnects_total{reason="ping timeout"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(r#"herald_webhook_duration_seconds_bucket{site="shop",kind="event",le="0.05"}"#),
            Some(1.0),
            "a histogram with buckets, not a summary"
        );
        assert_eq!(
            value(r#"herald_webhook_duration_seconds_bucket{site="shop",kind="event",le="0.025"}"#),
            Some(0.0)
        );
        assert_eq!(value("herald_publish_duration_seconds_count"), Some(1.0));
        for name in [
            CONNECTS,
            DELIVERIES,
            PUBLISHES,
            PUBLISH_DURATION,
            DISCONNECTS,
            CLIENT_EVENTS,
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP line:\n{text}"
            );
        }
        assert!(text.contains("# TYPE herald_publish_duration_seconds histogram"));
    }

    #[test]
    fn the_token_is_a_bearer_token() {
        let mut headers = HeaderMap::new();
        assert!(authorized(None, &headers), "no token: anyone");
        let token = Secret::new("scrape-token-0123456789");
        assert!(!authorized(Some(&token), &headers), "no header");
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer scrape-token-0123456789"),
        );
        assert!(authorized(Some(&token), &headers));
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer scrape-token-012345678"),
        );
        assert!(!authorized(Some(&token), &headers), "a prefix");
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("scrape-token-0123456789"),
        );
        assert!(!authorized(Some(&token), &headers), "no scheme");
    }
}
