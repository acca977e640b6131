//! `render_masked`: the effective configuration as YAML for `herald check-config`, with every secret masked.

use crate::auth::AuthConfig;
use crate::config::Config;

/// The effective configuration as YAML in the server file's shape. API keys and JWT secrets show as `****xy`
/// (`Secret`'s `Serialize`), and the password of any URL (Redis, webhooks) as `****`.
pub fn render_masked(config: &Config) -> String {
    let mut shown = config.clone();
    mask_urls(&mut shown);
    serde_yaml_ng::to_string(&shown)
        .unwrap_or_else(|e| format!("# the configuration cannot be shown as YAML: {e}\n"))
}

fn mask_urls(config: &mut Config) {
    mask_option(&mut config.server.redis_url);
    for bridge in &mut config.bridges {
        bridge.url = mask_password(&bridge.url);
    }
    for site in &mut config.sites {
        mask_option(&mut site.update_user_url);
        mask_option(&mut site.hooks.connect);
        mask_option(&mut site.hooks.disconnect);
        for route in site.events.values_mut() {
            mask_option(&mut route.url);
            let brokers = [
                route.amqp.as_mut().map(|r| &mut r.url),
                route.mqtt.as_mut().map(|r| &mut r.url),
                route.nats.as_mut().map(|r| &mut r.url),
            ];
            for url in brokers.into_iter().flatten() {
                *url = mask_password(url);
            }
        }
        match &mut site.auth {
            AuthConfig::Public => {}
            AuthConfig::Webhook(webhook) => webhook.url = mask_password(&webhook.url),
            AuthConfig::Jwt(jwt) => mask_option(&mut jwt.jwks_url),
        }
    }
}

fn mask_option(url: &mut Option<String>) {
    if let Some(url) = url {
        *url = mask_password(url);
    }
}

/// `url` with its password (see [`mask_userinfo`]) and every query value masked: `?key=****&b=****`. A
/// webhook URL's query often carries a shared secret (`?secret=…`).
pub(crate) fn mask_password(url: &str) -> String {
    let masked = mask_userinfo(url);
    let Some((base, rest)) = masked.split_once('?') else {
        return masked;
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (rest, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !value.is_empty() => format!("{key}=****"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut shown = format!("{base}?{}", pairs.join("&"));
    if let Some(fragment) = fragment {
        shown.push('#');
        shown.push_str(fragment);
    }
    shown
}

/// `scheme://user:password@host/...` with the password replaced by `****`; other text unchanged.
fn mask_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| scheme_end + at);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let masked = match authority[..at].split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        // A lone user name may itself be a token (`rediss://token@host`).
        None => "****".to_owned(),
    };
    format!("{}{masked}{}", &url[..scheme_end], &url[scheme_end + at..])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::JwtConfig;
    use crate::config::env::webhook;
    use crate::config::SiteConfig;
    use crate::secret::Secret;

    #[test]
    fn passwords_in_urls() {
        let cases = [
            ("redis://:pw@r:6379/0", "redis://:****@r:6379/0"),
            ("redis://user:pw@r", "redis://user:****@r"),
            ("rediss://token@r:6380", "rediss://****@r:6380"),
            ("https://a.test/x@y", "https://a.test/x@y"),
            (
                "http://a.test:80/rooms?u=1",
                "http://a.test:80/rooms?u=****",
            ),
            (
                "https://a.test/auth?key=s3cret&x&y=#f",
                "https://a.test/auth?key=****&x&y=#f",
            ),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            assert_eq!(mask_password(url), expected, "{url}");
        }
    }

    #[test]
    fn never_shows_a_secret() {
        let mut config = Config::default();
        config.server.redis_url = Some("redis://:redis-pass-1@r:6379".into());
        config.server.metrics_token = Some(Secret::new("metrics-token-11"));
        config.server.admin_token = Some(Secret::new("admin-token-000012"));
        config.sites[0].api_keys = vec![Secret::new("demo-key-0123456789")];
        let mut hooked = SiteConfig::new("shop".into());
        hooked.api_keys = vec![Secret::new("shop-key-0123456789"), Secret::new("k2")];
        hooked.auth =
            AuthConfig::Webhook(webhook("https://u:hook-pass-2@a.test/rooms".into(), None));
        hooked.update_user_url = Some("https://u:upd-pass-3@a.test/users/:id".into());
        hooked.hooks.connect = Some("https://u:hook-pass-4@a.test/hooks".into());
        hooked.signing_secret = Some(Secret::new("signing-secret-5"));
        hooked.events.insert(
            "bid".into(),
            crate::config::EventRoute {
                url: Some("https://u:route-pass-6@a.test/bid".into()),
                timeout_ms: 5000,
                ..Default::default()
            },
        );
        hooked.events.insert(
            "state".into(),
            crate::config::EventRoute {
                mqtt: Some(crate::config::MqttRoute {
                    url: "mqtt://herald:mqtt-route-pass-8@m:1883".into(),
                    topic: "devices/{user}".into(),
                }),
                timeout_ms: 5000,
                ..Default::default()
            },
        );
        hooked.events.insert(
            "*".into(),
            crate::config::EventRoute {
                nats: Some(crate::config::NatsRoute {
                    url: "nats://herald:nats-route-pass-9@n:4222".into(),
                    subject: "herald.{event}".into(),
                }),
                timeout_ms: 5000,
                ..Default::default()
            },
        );
        hooked.events.insert(
            "ask".into(),
            crate::config::EventRoute {
                amqp: Some(crate::config::AmqpRoute {
                    url: "amqp://guest:amqp-route-pass-10@r:5672/%2f".into(),
                    exchange: "herald.events".into(),
                    routing_key: "shop.{event}".into(),
                }),
                timeout_ms: 5000,
                ..Default::default()
            },
        );
        config.bridges.push(crate::config::BridgeConfig {
            kind: crate::config::BridgeKind::Amqp,
            url: "amqp://guest:bridge-pass-7@r:5672/%2f".into(),
            queue: Some("q".into()),
            topic: None,
            subject: None,
            channel: None,
            site: "shop".into(),
            room: None,
            event: None,
            retain: false,
            if_changed: false,
        });
        let mut signed = SiteConfig::new("app".into());
        signed.api_keys = vec![Secret::new("app-key-0123456789")];
        signed.auth = AuthConfig::Jwt(JwtConfig {
            algorithm: "HS256".into(),
            secret: Some(Secret::new("jwt-secret-0123456789")),
            public_key_pem: None,
            jwks_url: None,
            jwks_cache_secs: 300,
            issuer: None,
            audience: None,
        });
        config.sites.extend([hooked, signed]);

        let yaml = render_masked(&config);
        for secret in [
            "demo-key-0123456789",
            "shop-key-0123456789",
            "k2",
            "app-key-0123456789",
            "jwt-secret-0123456789",
            "redis-pass-1",
            "metrics-token-11",
            "admin-token-000012",
            "hook-pass-2",
            "hook-pass-4",
            "signing-secret-5",
            "route-pass-6",
            "bridge-pass-7",
            "upd-pass-3",
            "mqtt-route-pass-8",
            "nats-route-pass-9",
            "amqp-route-pass-10",
        ] {
            assert!(!yaml.contains(secret), "{secret} in:\n{yaml}");
        }
        assert!(yaml.contains("name: shop"), "{yaml}");
        assert!(
            yaml.contains("- '****89'")
                || yaml.contains("- \"****89\"")
                || yaml.contains("- ****89"),
            "{yaml}"
        );
        assert!(yaml.contains("redis://:****@r:6379"), "{yaml}");
        for shown in [
            "mqtt://herald:****@m:1883",
            "nats://herald:****@n:4222",
            "amqp://guest:****@r:5672/%2f",
        ] {
            assert!(yaml.contains(shown), "{shown} in:\n{yaml}");
        }
        // The masked output still has the server file's shape.
        let reparsed: Config = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(reparsed.sites.len(), 3);
        assert_eq!(reparsed.server, {
            let mut server = config.server.clone();
            server.redis_url = Some("redis://:****@r:6379".into());
            server.metrics_token = Some(Secret::new("****11"));
            server.admin_token = Some(Secret::new("****12"));
            server
        });
    }
}
