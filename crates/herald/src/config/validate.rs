//! `validate`: the rules a loaded `Config` must keep before herald binds a port. Each broken rule is one
//! `ConfigError` naming the site or field; `load` adds where the site came from.

use std::collections::BTreeSet;

use crate::auth::{AuthConfig, JwtConfig, WebhookConfig};
use crate::config::error::KeysFound;
use crate::config::{
    BridgeConfig, BridgeKind, BrokerTarget, Config, ConfigError, LimitsConfig, MailboxStoreKind,
    ServerConfig, SiteConfig, DEMO_SITE,
};

/// The JWT algorithms a site may name. `none` is not one of them.
/// The fewest characters `server.admin_token` may have.
pub const MIN_ADMIN_TOKEN: usize = 16;

pub const JWT_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384",
];

/// Checks `config` and returns the first broken rule:
/// - site names match `[A-Za-z0-9_-]+` and are unique;
/// - every site has at least one API key, none empty, except a `demo` site with none (see `ensure_demo_key`);
/// - webhook, update-user and JWKS URLs are `http://` or `https://` with a host;
/// - an event route is exactly one of a webhook, a broker (`amqp://`, `mqtt://`/`tcp://`, `nats://` with a host,
///   no TLS yet, its placeholders known), relay or retained;
/// - a JWT site sets exactly one of `secret`, `public_key_pem`, `jwks_url`, and its algorithm is known and fits
///   that key (HS* with a secret; RS*, PS*, ES* with a PEM key or a JWKS);
/// - limits, heartbeat times and the webhook timeout are greater than 0 (the optional rates too, when set, and a
///   burst only with its rate); the engine path starts and ends with `/`.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_server(&config.server)?;
    for (index, bridge) in config.bridges.iter().enumerate() {
        validate_bridge(config, bridge).map_err(|problem| ConfigError::BadBridge {
            index,
            label: bridge.label(),
            problem,
        })?;
    }
    let mut seen = BTreeSet::new();
    for site in &config.sites {
        if !seen.insert(site.name.as_str()) {
            return Err(ConfigError::DuplicateSite {
                site: site.name.clone(),
            });
        }
        validate_site(site)?;
        let forwards_cookie =
            matches!(&site.auth, AuthConfig::Webhook(webhook) if webhook.forward_cookie);
        if forwards_cookie && config.server.engine.allowed_origins.is_none() {
            return Err(ConfigError::CookieSiteNeedsOrigins {
                site: site.name.clone(),
            });
        }
    }
    Ok(())
}

/// The optional rates: unset is off, 0 is refused, and a burst needs its rate.
fn validate_rates(limits: &LimitsConfig) -> Result<(), ConfigError> {
    let rates = [
        (
            (
                "server.limits.connects_per_ip_per_sec",
                limits.connects_per_ip_per_sec,
            ),
            (
                "server.limits.connects_per_ip_burst",
                limits.connects_per_ip_burst,
            ),
        ),
        (
            (
                "server.limits.publishes_per_key_per_sec",
                limits.publishes_per_key_per_sec,
            ),
            (
                "server.limits.publishes_per_key_burst",
                limits.publishes_per_key_burst,
            ),
        ),
    ];
    for ((rate_field, rate), (burst_field, burst)) in rates {
        for (field, value) in [(rate_field, rate), (burst_field, burst)] {
            if value == Some(0) {
                return Err(ConfigError::ServerZeroLimit { field });
            }
        }
        if burst.is_some() && rate.is_none() {
            return Err(ConfigError::ServerNeeds {
                field: burst_field,
                needs: rate_field,
            });
        }
    }
    Ok(())
}

fn validate_server(server: &ServerConfig) -> Result<(), ConfigError> {
    let limits = &server.limits;
    let engine = &server.engine;
    let positive = [
        (
            "server.limits.max_payload_bytes",
            limits.max_payload_bytes as u64,
        ),
        (
            "server.limits.max_publish_bytes",
            limits.max_publish_bytes as u64,
        ),
        (
            "server.limits.max_connections",
            limits.max_connections as u64,
        ),
        ("server.limits.outbox_frames", limits.outbox_frames as u64),
        ("server.engine.ping_interval_ms", engine.ping_interval_ms),
        ("server.engine.ping_timeout_ms", engine.ping_timeout_ms),
        ("server.engine.sse_ping_ms", engine.sse_ping_ms),
        ("server.mailbox.max_entries", server.mailbox.max_entries),
        ("server.mailbox.max_bytes", server.mailbox.max_bytes),
        (
            "server.mailbox.page_entries",
            server.mailbox.page_entries as u64,
        ),
        (
            "server.mailbox.page_bytes",
            server.mailbox.page_bytes as u64,
        ),
        (
            "server.mailbox.batch_ack_timeout_ms",
            server.mailbox.batch_ack_timeout_ms,
        ),
        (
            "server.mailbox.sweep_interval_ms",
            server.mailbox.sweep_interval_ms,
        ),
        (
            "server.mailbox.store_timeout_ms",
            server.mailbox.store_timeout_ms,
        ),
        (
            "server.limits.header_read_timeout_ms",
            limits.header_read_timeout_ms,
        ),
        (
            "server.limits.max_http_connections",
            limits.max_http_connections as u64,
        ),
        (
            "server.limits.max_header_bytes",
            limits.max_header_bytes as u64,
        ),
        (
            "server.limits.max_handshake_bytes",
            limits.max_handshake_bytes as u64,
        ),
        (
            "server.limits.max_auth_attempts",
            u64::from(limits.max_auth_attempts),
        ),
        (
            "server.limits.max_concurrent_auth",
            limits.max_concurrent_auth as u64,
        ),
        (
            "server.limits.max_devices_per_user",
            limits.max_devices_per_user as u64,
        ),
        ("server.shutdown_grace_ms", server.shutdown_grace_ms),
        (
            "server.limits.client_events_per_sec",
            u64::from(limits.client_events_per_sec),
        ),
        (
            "server.limits.client_events_in_flight",
            limits.client_events_in_flight as u64,
        ),
        (
            "server.limits.max_client_event_bytes",
            limits.max_client_event_bytes as u64,
        ),
        ("server.limits.max_retained", limits.max_retained),
        (
            "server.limits.max_retained_bytes",
            limits.max_retained_bytes,
        ),
        (
            "server.cluster.recovery_max_packets",
            server.cluster.recovery_max_packets as u64,
        ),
    ];
    if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
        return Err(ConfigError::ServerZero { field });
    }
    validate_rates(limits)?;
    // A long-polling GET waits up to a ping interval with no byte moving.
    if limits.idle_timeout_ms <= engine.ping_interval_ms {
        return Err(ConfigError::ServerOrder {
            field: "server.limits.idle_timeout_ms",
            value: limits.idle_timeout_ms,
            relation: "above",
            other: "server.engine.ping_interval_ms",
            other_value: engine.ping_interval_ms,
        });
    }
    if server.drain_delay_ms >= server.shutdown_grace_ms {
        return Err(ConfigError::ServerOrder {
            field: "server.drain_delay_ms",
            value: server.drain_delay_ms,
            relation: "below",
            other: "server.shutdown_grace_ms",
            other_value: server.shutdown_grace_ms,
        });
    }
    // Three heartbeats fit in the TTL, and a dead node's sockets leave the listings within 20 s.
    if !(1000..20_000).contains(&server.cluster.node_ttl_ms) {
        return Err(ConfigError::NodeTtl {
            value: server.cluster.node_ttl_ms,
        });
    }
    if let Some(url) = &server.cluster.node_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::NodeUrl);
        }
    }
    if server.cluster.emitter_prefix.is_empty() || server.cluster.emitter_prefix.contains('#') {
        return Err(ConfigError::EmitterPrefix);
    }
    // A scrape's token is read trimmed from `Authorization: Bearer <token>`: an empty one would let anyone in.
    if let Some(token) = &server.metrics_token {
        let token = token.expose();
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return Err(ConfigError::MetricsToken);
        }
    }
    // The console's token guards every socket and a publish to any site: too short a one could be guessed even
    // at the pace the console allows wrong tokens.
    if let Some(token) = &server.admin_token {
        let token = token.expose();
        if token.chars().count() < MIN_ADMIN_TOKEN || token.chars().any(char::is_whitespace) {
            return Err(ConfigError::AdminToken);
        }
    }
    if server.mailbox_store() == MailboxStoreKind::Redis && server.redis_url.is_none() {
        return Err(ConfigError::MailboxNeedsRedis);
    }
    if let Some(url) = &server.redis_url {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::RedisUrl);
        }
    }
    if !engine.path.starts_with('/') || !engine.path.ends_with('/') {
        return Err(ConfigError::EnginePath {
            path: engine.path.clone(),
        });
    }
    Ok(())
}

fn validate_site(site: &SiteConfig) -> Result<(), ConfigError> {
    let name = || site.name.clone();
    let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if site.name.is_empty() || !site.name.chars().all(valid_char) {
        return Err(ConfigError::InvalidSiteName { site: name() });
    }
    if site.api_keys.is_empty() && site.name != DEMO_SITE {
        return Err(ConfigError::MissingApiKey { site: name() });
    }
    if site.api_keys.iter().any(|key| key.expose().is_empty()) {
        return Err(ConfigError::EmptyApiKey { site: name() });
    }
    let optional_text = [
        ("user_room_prefix", &site.user_room_prefix),
        ("public_channel", &site.public_channel),
    ];
    if let Some((field, _)) = optional_text
        .iter()
        .find(|(_, value)| value.as_deref() == Some(""))
    {
        return Err(ConfigError::EmptySiteField {
            site: name(),
            field,
        });
    }
    if let Some(url) = &site.update_user_url {
        check_http_url(&site.name, "the update-user URL", url)?;
    }
    if site.max_connections == Some(0) {
        return Err(ConfigError::SiteZero {
            site: name(),
            field: "max_connections",
        });
    }
    validate_two_way(site)?;
    match &site.auth {
        AuthConfig::Public => Ok(()),
        AuthConfig::Webhook(webhook) => validate_webhook(&site.name, webhook),
        AuthConfig::Jwt(jwt) => validate_jwt(&site.name, jwt),
    }
}

/// One bridge: its site exists, its URL is of its kind, it names what it consumes in its kind's one field, and
/// its room and event templates can be filled.
fn validate_bridge(config: &Config, bridge: &BridgeConfig) -> Result<(), String> {
    if !config.sites.iter().any(|s| s.name == bridge.site) {
        return Err(format!("no site is named '{}'", bridge.site));
    }
    // TLS to the other brokers is not built yet: a URL that asks for it would never connect.
    let schemes: &[&str] = match bridge.kind {
        BridgeKind::Amqp => &["amqp"],
        BridgeKind::Mqtt => &["mqtt", "tcp"],
        BridgeKind::Nats => &["nats"],
        BridgeKind::Redis => &["redis", "rediss"],
        BridgeKind::Postgres => &["postgres", "postgresql"],
    };
    let scheme = bridge.url.split("://").next().unwrap_or_default();
    if !bridge.url.contains("://") || !schemes.contains(&scheme) {
        return Err(format!(
            "url must start with {}://",
            schemes.join(":// or ")
        ));
    }
    let wants_tls = [
        "sslmode=require",
        "sslmode=verify-ca",
        "sslmode=verify-full",
    ];
    if bridge.kind == BridgeKind::Postgres && wants_tls.iter().any(|m| bridge.url.contains(m)) {
        return Err(
            "TLS to Postgres is not supported yet (sslmode=require, verify-ca, verify-full)".into(),
        );
    }
    let field = bridge.kind.source_field();
    if bridge.sources_set() != [field] || bridge.source().is_some_and(str::is_empty) {
        return Err(format!(
            "needs {field} (and no other of queue, topic, subject, channel)"
        ));
    }
    match (&bridge.room, &bridge.event) {
        (Some(room), Some(event)) => {
            for template in [room, event] {
                crate::bridges::inbound::Template::parse(template)?;
            }
        }
        (None, None) if bridge.retain || bridge.if_changed => {
            return Err("retain and if_changed need room and event".into());
        }
        (None, None) => {}
        _ => return Err("room and event go together: set both, or neither".into()),
    }
    if bridge.if_changed && !bridge.retain {
        return Err("if_changed needs retain".into());
    }
    Ok(())
}

/// A site's event routes, hooks and signing secret.
fn validate_two_way(site: &SiteConfig) -> Result<(), ConfigError> {
    let bad_route = |event: &str, problem: &str| ConfigError::BadEventRoute {
        site: site.name.clone(),
        event: event.to_string(),
        problem: problem.to_string(),
    };
    for (event, route) in &site.events {
        if event.is_empty() || crate::socketio::RESERVED_EVENTS.contains(&event.as_str()) {
            return Err(bad_route(event, "is reserved by socket.io or empty"));
        }
        let kinds = usize::from(route.url.is_some())
            + route.brokers().len()
            + usize::from(route.retained)
            + usize::from(route.relay);
        if kinds != 1 {
            return Err(bad_route(
                event,
                "needs exactly one of url, amqp, mqtt, nats, retained: true, relay: true",
            ));
        }
        if let Some(url) = &route.url {
            check_http_url(&site.name, "an event route's url", url)?;
        }
        if let Some(target) = route.broker() {
            let public = matches!(site.auth, AuthConfig::Public);
            check_broker_route(&target, public).map_err(|problem| bad_route(event, &problem))?;
        }
        if route.timeout_ms == 0 {
            return Err(bad_route(event, "timeout_ms must be greater than 0"));
        }
    }
    let hooks = [
        ("the connect hook", &site.hooks.connect),
        ("the disconnect hook", &site.hooks.disconnect),
    ];
    for (what, url) in hooks {
        if let Some(url) = url {
            check_http_url(&site.name, what, url)?;
        }
    }
    if site
        .signing_secret
        .as_ref()
        .is_some_and(|s| s.expose().is_empty())
    {
        return Err(ConfigError::EmptySiteField {
            site: site.name.clone(),
            field: "signing_secret",
        });
    }
    Ok(())
}

/// An event route to a broker: a URL of its kind with a host (TLS refused until issue 13, as for bridges), a
/// routing key, topic or subject whose placeholders are known and whose text can be published to, and an AMQP
/// exchange name AMQP can carry; `{user}` only where sockets have users (not on a `public` site). The URL is
/// never quoted: it may carry a password.
fn check_broker_route(target: &BrokerTarget<'_>, public: bool) -> Result<(), String> {
    let kind = target.kind.name();
    let schemes = target.kind.schemes();
    let scheme = target.url.split("://").next().unwrap_or_default();
    let tls = ["amqps", "mqtts", "ssl", "tls", "wss", "ws"];
    if target.url.contains("://") && tls.contains(&scheme) {
        return Err(format!(
            "{kind}.url: TLS and WebSocket URLs ({scheme}://) are not supported yet (issue 13); use {}://",
            schemes.join(":// or ")
        ));
    }
    let has_host = url::Url::parse(target.url)
        .ok()
        .and_then(|u| u.host_str().map(|h| !h.is_empty()))
        .unwrap_or(false);
    if !target.url.contains("://") || !schemes.contains(&scheme) || !has_host {
        return Err(format!(
            "{kind}.url must start with {}:// and name a host",
            schemes.join(":// or ")
        ));
    }
    if target.exchange.len() > 255 {
        return Err("amqp.exchange is longer than 255 bytes".into());
    }
    let field = target.kind.target_field();
    let template = crate::events::brokers::template::Template::parse(target.kind, target.template)
        .map_err(|e| format!("{kind}.{field}: {e}"))?;
    if public && template.uses_user() {
        return Err(format!(
            "{kind}.{field} uses {{user}}, but the sockets of a public site have no user"
        ));
    }
    Ok(())
}

fn validate_webhook(site: &str, webhook: &WebhookConfig) -> Result<(), ConfigError> {
    check_http_url(site, "the auth URL", &webhook.url)?;
    let has_credentials = webhook
        .url
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.authority().map(|a| a.as_str().contains('@')))
        .unwrap_or(false);
    if has_credentials && !webhook.forward_cookie {
        return Err(ConfigError::AuthUrlCredentials { site: site.into() });
    }
    if webhook.scheme.is_empty() || webhook.scheme.chars().any(|c| c.is_whitespace()) {
        return Err(ConfigError::BadAuthScheme {
            site: site.into(),
            scheme: webhook.scheme.clone(),
        });
    }
    if webhook.timeout_ms == 0 {
        return Err(ConfigError::SiteZero {
            site: site.into(),
            field: "auth timeout_ms",
        });
    }
    Ok(())
}

/// The key a JWT rule verifies with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Secret,
    PublicKeyPem,
    JwksUrl,
}

impl KeyKind {
    fn field(self) -> &'static str {
        match self {
            KeyKind::Secret => "secret",
            KeyKind::PublicKeyPem => "public_key_pem",
            KeyKind::JwksUrl => "jwks_url",
        }
    }
}

fn validate_jwt(site: &str, jwt: &JwtConfig) -> Result<(), ConfigError> {
    let kinds: Vec<KeyKind> = [
        (KeyKind::Secret, jwt.secret.is_some()),
        (KeyKind::PublicKeyPem, jwt.public_key_pem.is_some()),
        (KeyKind::JwksUrl, jwt.jwks_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(kind, set)| set.then_some(kind))
    .collect();
    let [kind] = kinds[..] else {
        return Err(ConfigError::JwtKeyCount {
            site: site.into(),
            found: KeysFound(kinds.iter().map(|kind| kind.field()).collect()),
        });
    };
    let algorithm = jwt.algorithm.as_str();
    if !JWT_ALGORITHMS.contains(&algorithm) {
        return Err(ConfigError::JwtUnknownAlgorithm {
            site: site.into(),
            algorithm: algorithm.into(),
        });
    }
    let hmac = algorithm.starts_with("HS");
    if hmac != (kind == KeyKind::Secret) {
        return Err(ConfigError::JwtKeyMismatch {
            site: site.into(),
            algorithm: algorithm.into(),
            needs: if hmac {
                "secret"
            } else {
                "public_key_pem or jwks_url"
            },
            given: kind.field(),
        });
    }
    check_jwt_key(site, jwt, kind)
}

/// The key itself: a non-empty secret, a PEM public key of the algorithm's family, an http(s) JWKS URL.
fn check_jwt_key(site: &str, jwt: &JwtConfig, kind: KeyKind) -> Result<(), ConfigError> {
    match kind {
        KeyKind::Secret => match &jwt.secret {
            Some(secret) if secret.expose().is_empty() => Err(ConfigError::EmptySiteField {
                site: site.into(),
                field: "jwt secret",
            }),
            _ => Ok(()),
        },
        KeyKind::PublicKeyPem => check_pem(site, &jwt.algorithm, jwt.public_key_pem.as_deref()),
        KeyKind::JwksUrl => match &jwt.jwks_url {
            Some(url) => check_http_url(site, "the JWKS URL", url),
            None => Ok(()),
        },
    }
}

fn check_pem(site: &str, algorithm: &str, pem: Option<&str>) -> Result<(), ConfigError> {
    use jsonwebtoken::DecodingKey;
    let pem = pem.unwrap_or_default().as_bytes();
    let (parsed, expected) = if algorithm.starts_with("ES") {
        (DecodingKey::from_ec_pem(pem).is_ok(), "an EC")
    } else {
        (DecodingKey::from_rsa_pem(pem).is_ok(), "an RSA")
    };
    if parsed {
        Ok(())
    } else {
        Err(ConfigError::JwtBadPem {
            site: site.into(),
            expected,
        })
    }
}

/// An absolute `http://` or `https://` URL with a host. The URL is not repeated in the error: it may carry a
/// password.
fn check_http_url(site: &str, what: &'static str, url: &str) -> Result<(), ConfigError> {
    let ok = url.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
    });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::NotHttpUrl {
            site: site.into(),
            what,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::env::webhook;
    use crate::config::test_support::{EC_PUBLIC_PEM, RSA_PUBLIC_PEM};
    use crate::secret::Secret;

    fn site(name: &str) -> SiteConfig {
        let mut site = SiteConfig::new(name.into());
        site.api_keys = vec![Secret::new("key")];
        site
    }

    fn jwt(algorithm: &str) -> JwtConfig {
        JwtConfig {
            algorithm: algorithm.into(),
            secret: None,
            public_key_pem: None,
            jwks_url: None,
            jwks_cache_secs: 300,
            issuer: None,
            audience: None,
        }
    }

    fn with_sites(sites: Vec<SiteConfig>) -> Config {
        Config {
            server: ServerConfig::default(),
            sites,
            bridges: Vec::new(),
        }
    }

    fn check(config: Config, expected: Result<(), &str>) {
        let got = validate(&config).map_err(|e| e.to_string());
        assert_eq!(got.as_ref().map(|_| ()).map_err(String::as_str), expected);
    }

    fn check_site(edit: impl FnOnce(&mut SiteConfig), expected: Result<(), &str>) {
        let mut s = site("shop");
        edit(&mut s);
        check(with_sites(vec![s]), expected);
    }

    fn check_jwt(config: JwtConfig, expected: Result<(), &str>) {
        check_site(|s| s.auth = AuthConfig::Jwt(config), expected);
    }

    #[test]
    fn the_embedded_default_is_valid() {
        check(Config::default(), Ok(()));
    }

    #[test]
    fn site_names() {
        for name in ["a", "Shop_2-b", "123"] {
            check(with_sites(vec![site(name)]), Ok(()));
        }
        for name in ["", "a b", "a/b", "é", "shop.io"] {
            let expected = format!("site '{name}': the name must match [A-Za-z0-9_-]+");
            check(with_sites(vec![site(name)]), Err(&expected));
        }
        check(
            with_sites(vec![site("a"), site("b"), site("a")]),
            Err("site 'a' is defined more than once"),
        );
    }

    #[test]
    fn api_keys() {
        check_site(
            |s| s.api_keys.clear(),
            Err("site 'shop': apiKey is missing"),
        );
        check_site(
            |s| s.api_keys.push(Secret::new("")),
            Err("site 'shop': an API key is empty"),
        );
        let mut demo = site("demo");
        demo.api_keys.clear();
        check(with_sites(vec![demo]), Ok(()));
    }

    #[test]
    fn bridges() {
        let bridge = |kind: BridgeKind, url: &str| BridgeConfig {
            kind,
            url: url.into(),
            queue: None,
            topic: None,
            subject: None,
            channel: None,
            site: "shop".into(),
            room: None,
            event: None,
            retain: false,
            if_changed: false,
        };
        let check_bridge = |b: BridgeConfig, expected: Result<(), &str>| {
            let mut config = with_sites(vec![site("shop")]);
            config.bridges.push(b);
            check(config, expected);
        };
        let mqtt = BridgeConfig {
            topic: Some("pomodoro/+/state".into()),
            ..bridge(BridgeKind::Mqtt, "mqtt://127.0.0.1:1883")
        };
        check_bridge(mqtt.clone(), Ok(()));
        check_bridge(
            BridgeConfig {
                room: Some("pomodoro_{1}".into()),
                event: Some("state".into()),
                retain: true,
                if_changed: true,
                ..mqtt.clone()
            },
            Ok(()),
        );
        let label = "bridges[0] (mqtt pomodoro/+/state → shop)";
        for (broken, problem) in [
            (
                BridgeConfig {
                    site: "nope".into(),
                    ..mqtt.clone()
                },
                "no site is named 'nope'",
            ),
            (
                BridgeConfig {
                    url: "mqtts://b".into(),
                    ..mqtt.clone()
                },
                "url must start with mqtt:// or tcp://",
            ),
            (
                BridgeConfig {
                    room: Some("r".into()),
                    ..mqtt.clone()
                },
                "room and event go together: set both, or neither",
            ),
            (
                BridgeConfig {
                    retain: true,
                    ..mqtt.clone()
                },
                "retain and if_changed need room and event",
            ),
            (
                BridgeConfig {
                    room: Some("r_{x}".into()),
                    event: Some("e".into()),
                    ..mqtt.clone()
                },
                "'r_{x}': {...} must hold a level number, like {1}",
            ),
            (
                BridgeConfig {
                    channel: Some("c".into()),
                    ..mqtt.clone()
                },
                "needs topic (and no other of queue, topic, subject, channel)",
            ),
        ] {
            let site = broken.site.clone();
            let label = label.replace("→ shop", &format!("→ {site}"));
            let expected = format!("{label}: {problem}");
            check_bridge(broken, Err(&expected));
        }
        let postgres = BridgeConfig {
            channel: Some("c".into()),
            ..bridge(BridgeKind::Postgres, "postgres://h/db?sslmode=require")
        };
        check_bridge(
            postgres,
            Err("bridges[0] (postgres c → shop): TLS to Postgres is not supported yet (sslmode=require, verify-ca, verify-full)"),
        );
    }

    #[test]
    fn event_routes_hooks_and_the_signing_secret() {
        use crate::config::EventRoute;
        let route = |url: Option<&str>, retained: bool, relay: bool| EventRoute {
            url: url.map(str::to_string),
            retained,
            relay,
            timeout_ms: 5000,
            ..EventRoute::default()
        };
        let good = route(Some("https://backend/events"), false, false);
        check_site(
            |s| {
                s.events.insert("*".into(), good.clone());
                s.events.insert("get".into(), route(None, true, false));
                s.events.insert("chat".into(), route(None, false, true));
            },
            Ok(()),
        );
        for (event, bad, problem) in [
            (
                "both",
                route(Some("http://b/"), true, false),
                "needs exactly one of url, amqp, mqtt, nats, retained: true, relay: true",
            ),
            (
                "none",
                route(None, false, false),
                "needs exactly one of url, amqp, mqtt, nats, retained: true, relay: true",
            ),
            ("connect", good.clone(), "is reserved by socket.io or empty"),
            (
                "slow",
                EventRoute {
                    timeout_ms: 0,
                    ..good.clone()
                },
                "timeout_ms must be greater than 0",
            ),
        ] {
            let expected = format!("site 'shop': events.{event} {problem}");
            check_site(
                |s| drop(s.events.insert(event.into(), bad.clone())),
                Err(&expected),
            );
        }
        check_site(
            |s| {
                drop(
                    s.events
                        .insert("x".into(), route(Some("ftp://b/"), false, false)),
                )
            },
            Err("site 'shop': an event route's url must be an http:// or https:// URL with a host"),
        );
        check_site(
            |s| s.hooks.disconnect = Some("nope".into()),
            Err("site 'shop': the disconnect hook must be an http:// or https:// URL with a host"),
        );
        check_site(
            |s| s.signing_secret = Some(Secret::new("")),
            Err("site 'shop': signing_secret is empty"),
        );
    }

    #[test]
    fn event_routes_to_brokers() {
        use crate::config::{AmqpRoute, EventRoute, MqttRoute, NatsRoute};
        let amqp = |url: &str, key: &str| EventRoute {
            amqp: Some(AmqpRoute {
                url: url.into(),
                exchange: "herald.events".into(),
                routing_key: key.into(),
            }),
            timeout_ms: 5000,
            ..EventRoute::default()
        };
        let mqtt = |url: &str, topic: &str| EventRoute {
            mqtt: Some(MqttRoute {
                url: url.into(),
                topic: topic.into(),
            }),
            timeout_ms: 5000,
            ..EventRoute::default()
        };
        let nats = |url: &str, subject: &str| EventRoute {
            nats: Some(NatsRoute {
                url: url.into(),
                subject: subject.into(),
            }),
            timeout_ms: 5000,
            ..EventRoute::default()
        };
        check_site(
            |s| {
                s.auth = AuthConfig::Jwt(JwtConfig {
                    secret: Some(Secret::new("s3cret")),
                    ..jwt("HS256")
                });
                s.events.insert(
                    "bid".into(),
                    amqp("amqp://guest:guest@127.0.0.1:5672/%2f", "acme.{event}"),
                );
                s.events.insert(
                    "state".into(),
                    mqtt("mqtt://127.0.0.1:1883", "devices/{user}/{event}"),
                );
                s.events
                    .insert("ping".into(), mqtt("tcp://broker", "{site}/{socket}"));
                s.events.insert(
                    "*".into(),
                    nats("nats://127.0.0.1:4222", "herald.acme.{event}"),
                );
            },
            Ok(()),
        );
        let both = EventRoute {
            url: Some("http://backend/".into()),
            ..amqp("amqp://127.0.0.1", "k")
        };
        let two_brokers = EventRoute {
            nats: Some(NatsRoute {
                url: "nats://127.0.0.1".into(),
                subject: "s".into(),
            }),
            ..mqtt("mqtt://127.0.0.1", "t")
        };
        let cases = [
            (
                both,
                "needs exactly one of url, amqp, mqtt, nats, retained: true, relay: true",
            ),
            (
                two_brokers,
                "needs exactly one of url, amqp, mqtt, nats, retained: true, relay: true",
            ),
            (
                amqp("amqps://u:hunter2@rabbit/", "k"),
                "amqp.url: TLS and WebSocket URLs (amqps://) are not supported yet (issue 13); use amqp://",
            ),
            (
                mqtt("mqtts://broker:8883", "t"),
                "mqtt.url: TLS and WebSocket URLs (mqtts://) are not supported yet (issue 13); use mqtt:// or \
                 tcp://",
            ),
            (
                nats("tls://u:hunter2@nats:4222", "s"),
                "nats.url: TLS and WebSocket URLs (tls://) are not supported yet (issue 13); use nats://",
            ),
            (
                nats("http://nats:4222", "s"),
                "nats.url must start with nats:// and name a host",
            ),
            (
                amqp("127.0.0.1:5672", "k"),
                "amqp.url must start with amqp:// and name a host",
            ),
            (
                mqtt("mqtt://", "t"),
                "mqtt.url must start with mqtt:// or tcp:// and name a host",
            ),
            (
                mqtt("mqtt://b", "devices/{nope}"),
                "mqtt.topic: 'devices/{nope}': {nope} is not one of {user}, {event}, {socket}, {site}",
            ),
            (
                mqtt("mqtt://b", "devices/#"),
                "mqtt.topic: 'devices/#': a topic to publish to holds no wildcard (+, #)",
            ),
            (
                nats("nats://n", "herald.*.{event}"),
                "nats.subject: 'herald.*.{event}': a subject to publish to holds no wildcard (*, >) and no \
                 whitespace",
            ),
            (
                nats("nats://n", "herald..x"),
                "nats.subject: 'herald..x': a subject has no empty token",
            ),
            (
                amqp("amqp://r", "k.{user"),
                "amqp.routing_key: 'k.{user': a '{' is not closed",
            ),
            (
                mqtt("mqtt://b", "devices/{user}"),
                "mqtt.topic uses {user}, but the sockets of a public site have no user",
            ),
            (
                EventRoute {
                    timeout_ms: 0,
                    ..nats("nats://n", "s")
                },
                "timeout_ms must be greater than 0",
            ),
        ];
        for (route, problem) in cases {
            let expected = format!("site 'shop': events.bid {problem}");
            let mut s = site("shop");
            s.events.insert("bid".into(), route);
            let error = validate(&with_sites(vec![s])).err().map(|e| e.to_string());
            assert_eq!(error.as_deref(), Some(expected.as_str()));
            assert!(!expected.contains("hunter2"));
        }
    }

    #[test]
    fn site_fields() {
        check_site(
            |s| s.user_room_prefix = Some(String::new()),
            Err("site 'shop': user_room_prefix is empty"),
        );
        check_site(
            |s| s.public_channel = Some(String::new()),
            Err("site 'shop': public_channel is empty"),
        );
        check_site(
            |s| s.max_connections = Some(0),
            Err("site 'shop': max_connections must be greater than 0"),
        );
        check_site(
            |s| s.update_user_url = Some("http://shop.test/users/:id".into()),
            Ok(()),
        );
        check_site(
            |s| s.update_user_url = Some("shop.test/users".into()),
            Err("site 'shop': the update-user URL must be an http:// or https:// URL with a host"),
        );
    }

    #[test]
    fn webhook_urls_and_schemes() {
        let ok = [
            "http://a.test/rooms",
            "https://a.test:8443/r?x=1",
            "http://127.0.0.1/",
        ];
        for url in ok {
            check_site(
                |s| s.auth = AuthConfig::Webhook(webhook(url.into(), None)),
                Ok(()),
            );
        }
        let bad = [
            "",
            "a.test/rooms",
            "ftp://a.test/",
            "/rooms",
            "http://",
            "http://a b/",
        ];
        for url in bad {
            check_site(
                |s| s.auth = AuthConfig::Webhook(webhook(url.into(), None)),
                Err("site 'shop': the auth URL must be an http:// or https:// URL with a host"),
            );
        }
        // Credentials in the URL would be a second Authorization header beside the client's token.
        check_site(
            |s| s.auth = AuthConfig::Webhook(webhook("https://u:pw@a.test/r".into(), None)),
            Err(
                "site 'shop': the auth URL carries a user or password, which would be sent in a second \
                 Authorization header beside the client's token; remove it from the URL (protect the webhook \
                 by network, or by a secret in its path or query, which herald never logs)",
            ),
        );
        check_site(
            |s| s.auth = AuthConfig::Webhook(webhook("http://a/".into(), Some("Be arer".into()))),
            Err("site 'shop': the auth scheme 'Be arer' must be one word"),
        );
        check_site(
            |s| s.auth = AuthConfig::Webhook(webhook("http://a/".into(), Some(String::new()))),
            Err("site 'shop': the auth scheme '' must be one word"),
        );
        check_site(
            |s| {
                let mut hook = webhook("http://a/".into(), None);
                hook.timeout_ms = 0;
                s.auth = AuthConfig::Webhook(hook);
            },
            Err("site 'shop': auth timeout_ms must be greater than 0"),
        );
    }

    #[test]
    fn the_url_is_not_in_the_error() {
        let mut s = site("shop");
        s.auth = AuthConfig::Webhook(webhook("redis://u:hunter2@a/".into(), None));
        let err = validate(&with_sites(vec![s])).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn jwt_keys() {
        let secret = |alg: &str, value: &str| JwtConfig {
            secret: Some(Secret::new(value)),
            ..jwt(alg)
        };
        let pem = |alg: &str, pem: &str| JwtConfig {
            public_key_pem: Some(pem.into()),
            ..jwt(alg)
        };
        let jwks = |alg: &str, url: &str| JwtConfig {
            jwks_url: Some(url.into()),
            ..jwt(alg)
        };
        for alg in ["HS256", "HS384", "HS512"] {
            check_jwt(secret(alg, "s3cret"), Ok(()));
        }
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            check_jwt(pem(alg, RSA_PUBLIC_PEM), Ok(()));
            check_jwt(jwks(alg, "https://id.test/.well-known/jwks.json"), Ok(()));
        }
        for alg in ["ES256", "ES384"] {
            check_jwt(pem(alg, EC_PUBLIC_PEM), Ok(()));
        }
        check_jwt(
            jwt("HS256"),
            Err("site 'shop': jwt needs exactly one of secret, public_key_pem, jwks_url (none is set)"),
        );
        check_jwt(
            JwtConfig {
                jwks_url: Some("https://id.test/jwks".into()),
                ..secret("HS256", "s")
            },
            Err("site 'shop': jwt needs exactly one of secret, public_key_pem, jwks_url (secret and jwks_url \
                 are set)"),
        );
        check_jwt(secret("HS256", ""), Err("site 'shop': jwt secret is empty"));
        check_jwt(
            jwks("RS256", "file:///jwks.json"),
            Err("site 'shop': the JWKS URL must be an http:// or https:// URL with a host"),
        );
        check_jwt(
            pem("RS256", "not a pem"),
            Err("site 'shop': jwt public_key_pem is not an RSA public key in PEM form"),
        );
        check_jwt(
            pem("ES256", RSA_PUBLIC_PEM),
            Err("site 'shop': jwt public_key_pem is not an EC public key in PEM form"),
        );
    }

    #[test]
    fn jwt_algorithms() {
        let expected_list =
            "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384";
        for alg in ["none", "hs256", "EdDSA", ""] {
            let config = JwtConfig {
                secret: Some(Secret::new("s")),
                ..jwt(alg)
            };
            let expected =
                format!("site 'shop': jwt algorithm '{alg}' is not supported (expected one of {expected_list})");
            check_jwt(config, Err(&expected));
        }
        check_jwt(
            JwtConfig {
                public_key_pem: Some(RSA_PUBLIC_PEM.into()),
                ..jwt("HS256")
            },
            Err("site 'shop': jwt algorithm HS256 needs secret, not public_key_pem"),
        );
        check_jwt(
            JwtConfig {
                secret: Some(Secret::new("s")),
                ..jwt("RS256")
            },
            Err("site 'shop': jwt algorithm RS256 needs public_key_pem or jwks_url, not secret"),
        );
    }

    #[test]
    fn server_settings() {
        type Edit = fn(&mut ServerConfig);
        let cases: [(Edit, &str); 24] = [
            (
                |s| s.limits.connects_per_ip_per_sec = Some(0),
                "server.limits.connects_per_ip_per_sec must be greater than 0 (leave it out for no limit)",
            ),
            (
                |s| {
                    s.limits.publishes_per_key_per_sec = Some(10);
                    s.limits.publishes_per_key_burst = Some(0);
                },
                "server.limits.publishes_per_key_burst must be greater than 0 (leave it out for no limit)",
            ),
            (
                |s| s.limits.connects_per_ip_burst = Some(10),
                "server.limits.connects_per_ip_burst is set without server.limits.connects_per_ip_per_sec",
            ),
            (
                |s| s.limits.publishes_per_key_burst = Some(10),
                "server.limits.publishes_per_key_burst is set without server.limits.publishes_per_key_per_sec",
            ),
            (
                |s| s.admin_token = Some(crate::secret::Secret::new("short-token")),
                "server.admin_token (HERALD_ADMIN_TOKEN) must be at least 16 characters, without whitespace",
            ),
            (
                |s| s.admin_token = Some(crate::secret::Secret::new("a long token with spaces")),
                "server.admin_token (HERALD_ADMIN_TOKEN) must be at least 16 characters, without whitespace",
            ),
            (
                |s| s.metrics_token = Some(crate::secret::Secret::new("")),
                "server.metrics_token (HERALD_METRICS_TOKEN) must hold no whitespace and not be empty",
            ),
            (
                |s| s.metrics_token = Some(crate::secret::Secret::new("two words")),
                "server.metrics_token (HERALD_METRICS_TOKEN) must hold no whitespace and not be empty",
            ),
            (
                |s| s.limits.max_devices_per_user = 0,
                "server.limits.max_devices_per_user must be greater than 0",
            ),
            (
                |s| s.limits.max_auth_attempts = 0,
                "server.limits.max_auth_attempts must be greater than 0",
            ),
            (
                |s| s.limits.header_read_timeout_ms = 0,
                "server.limits.header_read_timeout_ms must be greater than 0",
            ),
            (
                |s| s.limits.idle_timeout_ms = 25_000,
                "server.limits.idle_timeout_ms (25000 ms) must be above server.engine.ping_interval_ms (25000 ms)",
            ),
            (
                |s| s.engine.sse_ping_ms = 0,
                "server.engine.sse_ping_ms must be greater than 0",
            ),
            (
                |s| s.cluster.node_ttl_ms = 20_000,
                "server.cluster.node_ttl_ms (20000) must be at least 1000 and under 20000",
            ),
            (
                |s| s.cluster.node_url = Some("node-a:3000".into()),
                "server.cluster.node_url (HERALD_NODE_URL) must start with http:// or https://",
            ),
            (
                |s| s.drain_delay_ms = 10_000,
                "server.drain_delay_ms (10000 ms) must be below server.shutdown_grace_ms (10000 ms)",
            ),
            (
                |s| s.limits.max_payload_bytes = 0,
                "server.limits.max_payload_bytes must be greater than 0",
            ),
            (
                |s| s.limits.max_publish_bytes = 0,
                "server.limits.max_publish_bytes must be greater than 0",
            ),
            (
                |s| s.limits.max_connections = 0,
                "server.limits.max_connections must be greater than 0",
            ),
            (
                |s| s.limits.outbox_frames = 0,
                "server.limits.outbox_frames must be greater than 0",
            ),
            (
                |s| s.engine.ping_interval_ms = 0,
                "server.engine.ping_interval_ms must be greater than 0",
            ),
            (
                |s| s.engine.ping_timeout_ms = 0,
                "server.engine.ping_timeout_ms must be greater than 0",
            ),
            (
                |s| s.engine.path = "/socket.io".into(),
                "server.engine.path '/socket.io' must start and end with '/'",
            ),
            (
                |s| s.engine.path = "socket.io/".into(),
                "server.engine.path 'socket.io/' must start and end with '/'",
            ),
        ];
        for (edit, expected) in cases {
            let mut config = Config::default();
            edit(&mut config.server);
            check(config, Err(expected));
        }
        // A site that authenticates by cookie needs an origin list, else any page could ride its users' cookies.
        let mut config = Config::default();
        let mut hook = webhook("http://a.test/".into(), None);
        hook.forward_cookie = true;
        let mut cookie_site = site("shop");
        cookie_site.auth = AuthConfig::Webhook(hook);
        config.sites = vec![cookie_site];
        check(
            config.clone(),
            Err(
                "site 'shop' authenticates by forwarded cookie, so without an origin list any web page could \
                 connect as its logged-in users: set server.engine.allowed_origins to the origins of your pages",
            ),
        );
        config.server.engine.allowed_origins = Some(vec!["https://shop.test".into()]);
        check(config, Ok(()));
        for path in ["/rt/", "/"] {
            let mut config = Config::default();
            config.server.engine.path = path.into();
            check(config, Ok(()));
        }
    }
}
