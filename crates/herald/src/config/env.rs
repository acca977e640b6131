//! The environment as a configuration source: crossroads' names for one site and the port, and herald's own
//! `HERALD_*` names for server settings. Parsing is a pure function of a name → value map.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::auth::{AuthConfig, WebhookConfig};
use crate::config::{ConfigError, Overrides, ServerConfig, SiteConfig, TlsFiles};
use crate::secret::Secret;

/// Every environment variable herald reads, with what it sets; for `--help` and the README. An empty value counts
/// as unset, as with `docker run -e API_KEY=`.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "SITE_NAME",
        "name of the site the variables below define or override (default `default`)",
    ),
    (
        "AUTH_URL",
        "the site's auth webhook: GET with `Authorization: <scheme> <token>`",
    ),
    (
        "AUTH_SCHEME",
        "the webhook's Authorization scheme (default `Bearer`)",
    ),
    (
        "API_KEY",
        "the site's API key (replaces the keys from files)",
    ),
    ("USER_ROOM_PREFIX", "prefix of the site's per-user rooms"),
    (
        "UPDATE_USER_URL",
        "URL that gets the site's users' last connected/disconnected times",
    ),
    ("PUBLIC_CHANNEL", "a room every client of the site may join"),
    (
        "DEVICE_TTL",
        "seconds a device's mailbox outlives its last connection",
    ),
    ("PORT", "port to listen on (keeps the listen address's IP)"),
    ("REDIS_URL", "Redis for clusters (server.redis_url)"),
    (
        "HERALD_NODE_URL",
        "the URL other nodes reach this one at (server.cluster.node_url)",
    ),
    (
        "HERALD_LISTEN",
        "address to listen on, like 0.0.0.0:3000 (PORT, when set, replaces its port)",
    ),
    (
        "HERALD_DATA_DIR",
        "where herald keeps its state (server.data_dir)",
    ),
    ("HERALD_LOG_JSON", "true for one JSON object per log line"),
    (
        "HERALD_LOG_LEVEL",
        "a tracing filter like `info` (RUST_LOG wins)",
    ),
    (
        "HERALD_METRICS_TOKEN",
        "the bearer token GET /metrics asks for (server.metrics_token)",
    ),
    (
        "HERALD_ADMIN_TOKEN",
        "the admin console's token; without one /admin is off (server.admin_token)",
    ),
    (
        "HERALD_TLS_CERT",
        "PEM certificate (chain) for HTTPS and WSS (server.tls.cert); needs HERALD_TLS_KEY",
    ),
    (
        "HERALD_TLS_KEY",
        "PEM private key of HERALD_TLS_CERT (server.tls.key)",
    ),
    (
        "HERALD_CA_FILE",
        "PEM bundle of CA certificates trusted besides the system's for webhooks, rediss:// and peers \
         (server.ca_file)",
    ),
    (
        "HERALD_CONFIG",
        "path of the server file (YAML); the --config flag wins",
    ),
    (
        "HERALD_SITES",
        "path of the sites file (crossroads' sites.yml); the --sites flag wins",
    ),
    (
        "HERALD_CROSSROADS_CONFIG",
        "path of crossroads' config.yml; the --crossroads-config flag wins",
    ),
    (
        "NODE_ENV",
        "the section of crossroads' config.yml to read (default `production`)",
    ),
];

/// The names that define or override the one environment site; any of them set makes `SITE_NAME` default to
/// `default`.
const SITE_VARS: &[&str] = &[
    "AUTH_URL",
    "AUTH_SCHEME",
    "API_KEY",
    "USER_ROOM_PREFIX",
    "UPDATE_USER_URL",
    "PUBLIC_CHANNEL",
    "DEVICE_TTL",
];

/// The site name used when site variables are set without `SITE_NAME`.
pub const DEFAULT_ENV_SITE: &str = "default";

/// What the environment says, before it is applied to the configuration from files.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct EnvConfig {
    /// The server settings flags can also set, applied the same way.
    pub server: Overrides,
    pub redis_url: Option<String>,
    pub node_url: Option<String>,
    pub metrics_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    /// `NODE_ENV`: the section of crossroads' `config.yml` to read.
    pub node_env: Option<String>,
    pub tls: Option<TlsFiles>,
    pub ca_file: Option<PathBuf>,
    pub site: Option<EnvSite>,
}

/// The one site the environment defines or overrides; each field set replaces the site's.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct EnvSite {
    pub name: String,
    pub auth_url: Option<String>,
    pub auth_scheme: Option<String>,
    pub api_key: Option<Secret>,
    pub user_room_prefix: Option<String>,
    pub update_user_url: Option<String>,
    pub public_channel: Option<String>,
    pub device_ttl_secs: Option<u64>,
}

/// Reads herald's variables from `env`; other names are ignored.
pub(crate) fn parse(env: &BTreeMap<String, String>) -> Result<EnvConfig, ConfigError> {
    let get = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
    let server = Overrides {
        listen: get("HERALD_LISTEN")
            .map(|v| parse_value("HERALD_LISTEN", v, "a socket address like 0.0.0.0:3000"))
            .transpose()?,
        port: get("PORT")
            .map(|v| parse_value("PORT", v, "a port number (0-65535)"))
            .transpose()?,
        data_dir: get("HERALD_DATA_DIR").map(PathBuf::from),
        log_json: get("HERALD_LOG_JSON")
            .map(|v| parse_bool("HERALD_LOG_JSON", v))
            .transpose()?,
        log_level: get("HERALD_LOG_LEVEL"),
    };
    Ok(EnvConfig {
        server,
        redis_url: get("REDIS_URL"),
        node_url: get("HERALD_NODE_URL"),
        metrics_token: get("HERALD_METRICS_TOKEN").map(Secret::new),
        admin_token: get("HERALD_ADMIN_TOKEN").map(Secret::new),
        node_env: get("NODE_ENV"),
        tls: parse_tls(&get)?,
        ca_file: get("HERALD_CA_FILE").map(PathBuf::from),
        site: parse_site(&get)?,
    })
}

/// `HERALD_TLS_CERT` and `HERALD_TLS_KEY`, both or neither: one alone would serve plain HTTP where TLS was meant.
fn parse_tls(get: &impl Fn(&str) -> Option<String>) -> Result<Option<TlsFiles>, ConfigError> {
    match (get("HERALD_TLS_CERT"), get("HERALD_TLS_KEY")) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::EnvTlsHalf {
            set: "HERALD_TLS_CERT",
            missing: "HERALD_TLS_KEY",
        }),
        (None, Some(_)) => Err(ConfigError::EnvTlsHalf {
            set: "HERALD_TLS_KEY",
            missing: "HERALD_TLS_CERT",
        }),
    }
}

fn parse_site(get: &impl Fn(&str) -> Option<String>) -> Result<Option<EnvSite>, ConfigError> {
    let name = get("SITE_NAME");
    if name.is_none() && SITE_VARS.iter().all(|var| get(var).is_none()) {
        return Ok(None);
    }
    Ok(Some(EnvSite {
        name: name.unwrap_or_else(|| DEFAULT_ENV_SITE.into()),
        auth_url: get("AUTH_URL"),
        auth_scheme: get("AUTH_SCHEME"),
        api_key: get("API_KEY").map(Secret::new),
        user_room_prefix: get("USER_ROOM_PREFIX"),
        update_user_url: get("UPDATE_USER_URL"),
        public_channel: get("PUBLIC_CHANNEL"),
        device_ttl_secs: get("DEVICE_TTL")
            .map(|v| parse_value("DEVICE_TTL", v, "a number of seconds"))
            .transpose()?,
    }))
}

fn parse_value<T: std::str::FromStr>(
    var: &'static str,
    value: String,
    expected: &'static str,
) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::EnvValue {
        var,
        value,
        expected,
    })
}

fn parse_bool(var: &'static str, value: String) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::EnvValue {
            var,
            value,
            expected: "a boolean (true/false, 1/0, yes/no, on/off)",
        }),
    }
}

impl EnvConfig {
    /// Puts the server settings the environment holds into `server`. `PORT` applies after `HERALD_LISTEN`, so a
    /// platform that assigns the port (`PORT`) keeps the configured IP.
    pub(crate) fn apply_server(&self, server: &mut ServerConfig) {
        self.server.apply(server);
        if let Some(url) = &self.redis_url {
            server.redis_url = Some(url.clone());
        }
        if let Some(url) = &self.node_url {
            server.cluster.node_url = Some(url.clone());
        }
        if let Some(token) = &self.metrics_token {
            server.metrics_token = Some(token.clone());
        }
        if let Some(token) = &self.admin_token {
            server.admin_token = Some(token.clone());
        }
        if let Some(tls) = &self.tls {
            server.tls = Some(tls.clone());
        }
        if let Some(path) = &self.ca_file {
            server.ca_file = Some(path.clone());
        }
    }
}

impl EnvSite {
    /// Overrides `site`'s fields with those the environment sets. `AUTH_URL` makes the site's auth a webhook
    /// (keeping the scheme and options of a webhook it already had); `API_KEY` replaces its keys.
    pub(crate) fn apply(&self, site: &mut SiteConfig) -> Result<(), ConfigError> {
        if let Some(url) = &self.auth_url {
            match &mut site.auth {
                AuthConfig::Webhook(webhook) => webhook.url = url.clone(),
                auth => *auth = AuthConfig::Webhook(webhook(url.clone(), None)),
            }
        }
        if let Some(scheme) = &self.auth_scheme {
            match &mut site.auth {
                AuthConfig::Webhook(webhook) => webhook.scheme = scheme.clone(),
                _ => {
                    return Err(ConfigError::EnvSchemeWithoutWebhook {
                        site: site.name.clone(),
                    })
                }
            }
        }
        if let Some(key) = &self.api_key {
            site.api_keys = vec![key.clone()];
        }
        set(&mut site.user_room_prefix, &self.user_room_prefix);
        set(&mut site.update_user_url, &self.update_user_url);
        set(&mut site.public_channel, &self.public_channel);
        if let Some(ttl) = self.device_ttl_secs {
            site.device_ttl_secs = ttl;
        }
        Ok(())
    }

    /// A new site made of the environment's fields alone.
    pub(crate) fn to_site(&self) -> Result<SiteConfig, ConfigError> {
        let mut site = SiteConfig::new(self.name.clone());
        self.apply(&mut site)?;
        Ok(site)
    }
}

fn set(field: &mut Option<String>, value: &Option<String>) {
    if let Some(value) = value {
        *field = Some(value.clone());
    }
}

/// A webhook with herald's defaults: scheme `Bearer`, the token (not the cookie), a 5 s timeout. A test checks
/// these match `WebhookConfig`'s serde defaults.
pub(crate) fn webhook(url: String, scheme: Option<String>) -> WebhookConfig {
    WebhookConfig {
        url,
        scheme: scheme.unwrap_or_else(|| "Bearer".into()),
        forward_cookie: false,
        timeout_ms: 5000,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn webhook_defaults_match_the_auth_module() {
        let from_serde: WebhookConfig = serde_json::from_str(r#"{"url": "http://a/"}"#).unwrap();
        assert_eq!(webhook("http://a/".into(), None), from_serde);
    }

    #[test]
    fn no_variables_change_nothing() {
        let parsed = parse(&env(&[("HOME", "/root"), ("API_KEYS", "x")])).unwrap();
        assert_eq!(parsed, EnvConfig::default());
    }

    #[test]
    fn every_crossroads_site_name() {
        let parsed = parse(&env(&[
            ("SITE_NAME", "shop"),
            ("AUTH_URL", "http://shop.test/rooms"),
            ("AUTH_SCHEME", "Token"),
            ("API_KEY", "k-123"),
            ("USER_ROOM_PREFIX", "user_"),
            ("UPDATE_USER_URL", "http://shop.test/users/:id"),
            ("PUBLIC_CHANNEL", "news"),
            ("DEVICE_TTL", "3600"),
        ]))
        .unwrap();
        let site = parsed.site.unwrap().to_site().unwrap();
        let mut expected = SiteConfig::new("shop".into());
        expected.auth = AuthConfig::Webhook(webhook(
            "http://shop.test/rooms".into(),
            Some("Token".into()),
        ));
        expected.api_keys = vec![Secret::new("k-123")];
        expected.user_room_prefix = Some("user_".into());
        expected.update_user_url = Some("http://shop.test/users/:id".into());
        expected.public_channel = Some("news".into());
        expected.device_ttl_secs = 3600;
        assert_eq!(site, expected);
    }

    #[test]
    fn each_site_variable_alone_makes_the_default_site() {
        for var in SITE_VARS {
            let value = if *var == "DEVICE_TTL" { "5" } else { "v" };
            let site = parse(&env(&[(var, value)])).unwrap().site;
            assert_eq!(site.map(|s| s.name), Some("default".to_string()), "{var}");
        }
    }

    #[test]
    fn server_variables() {
        let parsed = parse(&env(&[
            ("PORT", "8080"),
            ("REDIS_URL", "redis://:pw@r:6379/0"),
            ("HERALD_LISTEN", "0.0.0.0:3000"),
            ("HERALD_DATA_DIR", "/var/lib/herald"),
            ("HERALD_LOG_JSON", "yes"),
            ("HERALD_LOG_LEVEL", "herald=debug"),
        ]))
        .unwrap();
        let mut server = ServerConfig::default();
        parsed.apply_server(&mut server);
        assert_eq!(server.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(server.redis_url.as_deref(), Some("redis://:pw@r:6379/0"));
        assert_eq!(server.data_dir, PathBuf::from("/var/lib/herald"));
        assert!(server.log.json);
        assert_eq!(server.log.level, "herald=debug");
        assert_eq!(parsed.site, None);
    }

    #[test]
    fn the_metrics_token_is_a_secret() {
        let parsed =
            parse(&env(&[("HERALD_METRICS_TOKEN", "scrape-0123456789")])).expect("a token parses");
        let mut server = ServerConfig::default();
        parsed.apply_server(&mut server);
        let token = server.metrics_token.expect("the token is set");
        assert!(token.matches("scrape-0123456789"));
        assert_eq!(format!("{token:?}"), "****89", "never shown in the clear");
    }

    #[test]
    fn the_admin_token_is_a_secret() {
        let parsed =
            parse(&env(&[("HERALD_ADMIN_TOKEN", "admin-0123456789ab")])).expect("a token parses");
        let mut server = ServerConfig::default();
        parsed.apply_server(&mut server);
        let token = server.admin_token.expect("the token is set");
        assert!(token.matches("admin-0123456789ab"));
        assert_eq!(format!("{token:?}"), "****ab", "never shown in the clear");
    }

    #[test]
    fn tls_variables_go_in_pairs() {
        let parsed = parse(&env(&[
            ("HERALD_TLS_CERT", "/etc/herald/cert.pem"),
            ("HERALD_TLS_KEY", "/etc/herald/key.pem"),
            ("HERALD_CA_FILE", "/etc/herald/ca.pem"),
        ]))
        .expect("both set");
        let mut server = ServerConfig::default();
        parsed.apply_server(&mut server);
        let tls = server.tls.clone().expect("TLS is on");
        assert_eq!(tls.cert, PathBuf::from("/etc/herald/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/herald/key.pem"));
        assert_eq!(server.ca_file, Some(PathBuf::from("/etc/herald/ca.pem")));
        assert_eq!(server.scheme(), "https");
        assert_eq!(server.node_url(), "https://127.0.0.1:3000");
        let err = parse(&env(&[("HERALD_TLS_KEY", "/etc/herald/key.pem")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment HERALD_TLS_KEY is set without HERALD_TLS_CERT: set both, or neither"
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let parsed = parse(&env(&[("API_KEY", ""), ("PORT", ""), ("SITE_NAME", "")])).unwrap();
        assert_eq!(parsed, EnvConfig::default());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            (
                ("DEVICE_TTL", "12x"),
                "environment DEVICE_TTL: '12x' is not a number of seconds",
            ),
            (
                ("PORT", "70000"),
                "environment PORT: '70000' is not a port number (0-65535)",
            ),
            (
                ("HERALD_LISTEN", "localhost"),
                "environment HERALD_LISTEN: 'localhost' is not a socket address like 0.0.0.0:3000",
            ),
            (
                ("HERALD_LOG_JSON", "maybe"),
                "environment HERALD_LOG_JSON: 'maybe' is not a boolean (true/false, 1/0, yes/no, on/off)",
            ),
        ];
        for ((var, value), expected) in cases {
            let err = parse(&env(&[(var, value)])).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn overrides_keep_what_the_environment_does_not_set() {
        let mut site = SiteConfig::new("shop".into());
        site.auth = AuthConfig::Webhook(WebhookConfig {
            forward_cookie: true,
            ..webhook("http://old/".into(), Some("Token".into()))
        });
        site.api_keys = vec![Secret::new("a"), Secret::new("b")];
        site.public_channel = Some("news".into());
        let env_site = EnvSite {
            name: "shop".into(),
            auth_url: Some("http://new/".into()),
            api_key: Some(Secret::new("c")),
            ..EnvSite::default()
        };
        env_site.apply(&mut site).unwrap();
        let AuthConfig::Webhook(hook) = &site.auth else {
            panic!("still a webhook")
        };
        assert_eq!(
            (hook.url.as_str(), hook.scheme.as_str(), hook.forward_cookie),
            ("http://new/", "Token", true)
        );
        assert_eq!(site.api_keys, vec![Secret::new("c")]);
        assert_eq!(site.public_channel.as_deref(), Some("news"));
    }

    #[test]
    fn auth_scheme_needs_a_webhook() {
        let env_site = EnvSite {
            name: "shop".into(),
            auth_scheme: Some("Token".into()),
            ..EnvSite::default()
        };
        let err = env_site.to_site().unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment AUTH_SCHEME: site 'shop' has no auth webhook; set AUTH_URL too"
        );
    }
}
