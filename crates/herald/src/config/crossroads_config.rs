//! crossroads' `config.yml`, read as it is: one section per environment (`production:` unless `NODE_ENV` names
//! another), of which herald maps `port`, `device_ttl`, `redis`, `io` and `sites` onto its own settings. Keys it
//! has no use for (`flakeid`, `servers`, `winston`, …) are collected by name, never with their values, for one
//! warning.
//!
//! ```yaml
//! production:
//!   port: 80                  # listen on 0.0.0.0:80, as crossroads did (HERALD_LISTEN, PORT and flags win)
//!   device_ttl: 3600          # seconds, for the crossroads sites (sites.yml, environment) that set none
//!   redis:
//!     url: rediss://:<password>@<host>:6380/0   # server.redis_url (REDIS_URL wins)
//!   io:
//!     pingTimeout: 60000      # server.engine.ping_timeout_ms; also pingInterval, path, maxHttpBufferSize
//!   flakeid: {datacenter: 0, worker: 0}          # no use in herald: named in the warning
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

use crate::config::error::redact;
use crate::config::{crossroads, ConfigError, ServerConfig, SiteConfig};

/// The section crossroads read when `NODE_ENV` is unset.
pub const DEFAULT_ENVIRONMENT: &str = "production";

/// What one section of a crossroads `config.yml` sets. Each `Some` replaces herald's value for that setting.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CrossroadsConfig {
    /// `port`: crossroads listened on every interface, so this is `0.0.0.0:<port>`.
    pub port: Option<u16>,
    /// `device_ttl`: the mailbox TTL of crossroads sites that set none.
    pub device_ttl_secs: Option<u64>,
    /// `redis.url`, or a URL made of `redis.host`, `port`, `password`, `db` and `tls`.
    pub redis_url: Option<String>,
    /// `io.pingTimeout`.
    pub ping_timeout_ms: Option<u64>,
    /// `io.pingInterval`.
    pub ping_interval_ms: Option<u64>,
    /// `io.path`, with the trailing `/` herald's engine path has.
    pub engine_path: Option<String>,
    /// `io.maxHttpBufferSize`.
    pub max_payload_bytes: Option<usize>,
    /// `sites`: crossroads used them when no `sites.yml` was there.
    pub sites: Option<Vec<SiteConfig>>,
    /// The keys herald does not use, as paths from the top of the file (`production.flakeid`).
    pub ignored: Vec<String>,
}

/// Reads the `environment` section of a crossroads `config.yml`; `path` names the file in errors, which name the
/// key at fault and never its value.
pub(crate) fn parse(
    path: &Path,
    text: &str,
    environment: &str,
) -> Result<CrossroadsConfig, ConfigError> {
    let top: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: redact(&e.to_string()),
    })?;
    let top = match top {
        Value::Null => Mapping::new(),
        Value::Mapping(top) => top,
        _ => {
            return Err(ConfigError::ParseFile {
                path: path.to_owned(),
                message: "expected a map of environment (production, development, …) to settings"
                    .into(),
            })
        }
    };
    let Some(section) = top.get(environment) else {
        return Err(ConfigError::CrossroadsNoSection {
            path: path.to_owned(),
            environment: environment.to_owned(),
            found: top.keys().map(key_name).collect(),
        });
    };
    Section {
        path,
        prefix: environment,
    }
    .read(section.clone())
}

/// One section being read: the file and the section's name, for errors and ignored keys.
struct Section<'a> {
    path: &'a Path,
    prefix: &'a str,
}

impl Section<'_> {
    fn read(&self, section: Value) -> Result<CrossroadsConfig, ConfigError> {
        let mut out = CrossroadsConfig::default();
        let section = self.mapping(section, "", "a map of settings")?;
        // `sites` may use `device_ttl`, wherever it is written.
        if let Some(value) = section.get("device_ttl") {
            out.device_ttl_secs = Some(self.device_ttl(value)?);
        }
        for (key, value) in section {
            match key.as_str() {
                Some("device_ttl") => {}
                Some("port") => out.port = Some(self.port(&value)?),
                Some("redis") => out.redis_url = self.redis(value, &mut out.ignored)?,
                Some("io") => self.io(value, &mut out)?,
                Some("sites") => {
                    out.sites = Some(crossroads::sites_from_value(
                        self.path,
                        value,
                        out.device_ttl_secs,
                    )?)
                }
                _ => out.ignored.push(self.key(&key_name(&key))),
            }
        }
        Ok(out)
    }

    /// `production.io.pingTimeout` for `io.pingTimeout`.
    fn key(&self, key: &str) -> String {
        if key.is_empty() {
            self.prefix.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn error(&self, key: &str, expected: &'static str) -> ConfigError {
        ConfigError::CrossroadsValue {
            path: self.path.to_owned(),
            key: self.key(key),
            expected,
        }
    }

    /// A map, or an empty one for a key written with no value (`development:`).
    fn mapping(
        &self,
        value: Value,
        key: &str,
        expected: &'static str,
    ) -> Result<Mapping, ConfigError> {
        match value {
            Value::Null => Ok(Mapping::new()),
            Value::Mapping(mapping) => Ok(mapping),
            _ => Err(self.error(key, expected)),
        }
    }

    fn port(&self, value: &Value) -> Result<u16, ConfigError> {
        whole_number(value)
            .and_then(|port| u16::try_from(port).ok())
            .ok_or_else(|| self.error("port", "a port number (0-65535)"))
    }

    /// crossroads' 0 kept messages for ever; herald's 0 keeps no mailbox. Neither reading is safe, so 0 is an
    /// error rather than a silent change.
    fn device_ttl(&self, value: &Value) -> Result<u64, ConfigError> {
        whole_number(value).filter(|ttl| *ttl > 0).ok_or_else(|| {
            self.error(
                "device_ttl",
                "a number of seconds above 0 (crossroads' 0, keep for ever, has no equivalent in herald)",
            )
        })
    }

    /// `redis.url`, else a URL made of node-redis' `host`, `port`, `password`, `db` and `tls` options (crossroads
    /// passed the map to its client, with 127.0.0.1:6379 as defaults); none of them: no Redis.
    fn redis(
        &self,
        value: Value,
        ignored: &mut Vec<String>,
    ) -> Result<Option<String>, ConfigError> {
        let redis = self.mapping(value, "redis", "a map with url")?;
        let mut url = None;
        let mut parts = RedisParts::default();
        for (key, value) in redis {
            match key.as_str() {
                Some("url") => {
                    url = Some(
                        value
                            .as_str()
                            .filter(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
                            .ok_or_else(|| self.error("redis.url", "a redis:// or rediss:// URL"))?
                            .to_owned(),
                    )
                }
                Some("host") => {
                    parts.host = Some(
                        value
                            .as_str()
                            .ok_or_else(|| self.error("redis.host", "a host name"))?
                            .to_owned(),
                    )
                }
                Some("port") => {
                    let port = whole_number(&value).and_then(|p| u16::try_from(p).ok());
                    parts.port =
                        Some(port.ok_or_else(|| self.error("redis.port", "a port number"))?)
                }
                Some("password") => {
                    parts.password = Some(
                        scalar_text(&value)
                            .ok_or_else(|| self.error("redis.password", "a string"))?,
                    )
                }
                Some("db") => {
                    parts.db = Some(
                        whole_number(&value)
                            .ok_or_else(|| self.error("redis.db", "a database number"))?,
                    )
                }
                Some("tls") => parts.tls = !matches!(value, Value::Null | Value::Bool(false)),
                _ => ignored.push(self.key(&format!("redis.{}", key_name(&key)))),
            }
        }
        match url {
            // node-redis took the URL's parts over the separate options, as herald does.
            Some(url) => Ok(Some(url)),
            None if parts.is_empty() => Ok(None),
            None => parts
                .url()
                .map(Some)
                .ok_or_else(|| self.error("redis.host", "a host name")),
        }
    }

    fn io(&self, value: Value, out: &mut CrossroadsConfig) -> Result<(), ConfigError> {
        let io = self.mapping(value, "io", "a map of socket.io options")?;
        for (key, value) in io {
            let positive = |name: &str, expected| {
                whole_number(&value)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| self.error(name, expected))
            };
            match key.as_str() {
                Some("pingTimeout") => {
                    out.ping_timeout_ms = Some(positive("io.pingTimeout", "milliseconds above 0")?)
                }
                Some("pingInterval") => {
                    out.ping_interval_ms =
                        Some(positive("io.pingInterval", "milliseconds above 0")?)
                }
                Some("maxHttpBufferSize") => {
                    let bytes = positive("io.maxHttpBufferSize", "a number of bytes above 0")?;
                    out.max_payload_bytes = Some(usize::try_from(bytes).map_err(|_| {
                        self.error("io.maxHttpBufferSize", "a number of bytes above 0")
                    })?)
                }
                Some("path") => out.engine_path = Some(self.engine_path(&value)?),
                _ => out
                    .ignored
                    .push(self.key(&format!("io.{}", key_name(&key)))),
            }
        }
        Ok(())
    }

    /// socket.io's `path` (`/socket.io`) as herald's engine path (`/socket.io/`).
    fn engine_path(&self, value: &Value) -> Result<String, ConfigError> {
        let path = value
            .as_str()
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| self.error("io.path", "a path starting with '/'"))?;
        Ok(if path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        })
    }
}

/// node-redis' connection options, when `redis.url` is absent.
#[derive(Default)]
struct RedisParts {
    host: Option<String>,
    port: Option<u16>,
    password: Option<String>,
    db: Option<u64>,
    tls: bool,
}

impl RedisParts {
    fn is_empty(&self) -> bool {
        self.host.is_none()
            && self.port.is_none()
            && self.password.is_none()
            && self.db.is_none()
            && !self.tls
    }

    /// The URL of these options (the password percent-encoded), or none when the host cannot be in a URL.
    fn url(&self) -> Option<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = self.host.as_deref().unwrap_or("127.0.0.1");
        let port = self.port.unwrap_or(6379);
        let mut url = url::Url::parse(&format!("{scheme}://{host}:{port}/")).ok()?;
        if url.host_str() != Some(host) && url.host_str() != Some(&format!("[{host}]")) {
            // The host carried a path, a user or a port of its own.
            return None;
        }
        if let Some(password) = &self.password {
            url.set_password(Some(password)).ok()?;
        }
        if let Some(db) = self.db {
            url.set_path(&db.to_string());
        }
        Some(url.to_string())
    }
}

impl CrossroadsConfig {
    /// Puts the server settings this section holds into `server`, over the server file's and under the
    /// environment's and the flags'.
    pub(crate) fn apply_server(&self, server: &mut ServerConfig) {
        if let Some(port) = self.port {
            server.listen = SocketAddr::from(([0, 0, 0, 0], port));
        }
        if let Some(url) = &self.redis_url {
            server.redis_url = Some(url.clone());
        }
        if let Some(ms) = self.ping_timeout_ms {
            server.engine.ping_timeout_ms = ms;
        }
        if let Some(ms) = self.ping_interval_ms {
            server.engine.ping_interval_ms = ms;
        }
        if let Some(path) = &self.engine_path {
            server.engine.path = path.clone();
        }
        if let Some(bytes) = self.max_payload_bytes {
            server.limits.max_payload_bytes = bytes;
        }
    }
}

/// A whole number written as a number or, as JavaScript read both alike, as a string of digits.
fn whole_number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A string, or a number or boolean taken as its text (a password of digits).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A map key as text: strings as they are, other scalars as YAML writes them.
fn key_name(key: &Value) -> String {
    match key {
        Value::String(name) => name.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "~".into(),
        _ => "(a key that is not a scalar)".into(),
    }
}

/// crossroads' `config-sample.yml`, with the `servers` of its README: the tests' config.yml.
#[cfg(test)]
pub(crate) const SAMPLE: &str = "\
development:

production:
  port: 80
  device_ttl: 3600
  redis:
    url: rediss://:pass-s3cret@redis.example:6380/2
  flakeid:
    datacenter: 0
    worker: 0
  io:
    pingTimeout: 60000
  servers:
    - deployer@server1.example.com
    - deployer@server2.example.com
";

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, environment: &str) -> Result<CrossroadsConfig, String> {
        parse(Path::new("config.yml"), text, environment).map_err(|e| e.to_string())
    }

    #[test]
    fn the_sample_maps_onto_herald() {
        let config = read(SAMPLE, "production").expect("the sample loads");
        assert_eq!(
            config,
            CrossroadsConfig {
                port: Some(80),
                device_ttl_secs: Some(3600),
                redis_url: Some("rediss://:pass-s3cret@redis.example:6380/2".into()),
                ping_timeout_ms: Some(60_000),
                ignored: vec!["production.flakeid".into(), "production.servers".into()],
                ..CrossroadsConfig::default()
            }
        );
        let mut server = ServerConfig::default();
        config.apply_server(&mut server);
        assert_eq!(server.listen, SocketAddr::from(([0, 0, 0, 0], 80)));
        assert_eq!(
            server.redis_url.as_deref(),
            Some("rediss://:pass-s3cret@redis.example:6380/2")
        );
        assert_eq!(server.engine.ping_timeout_ms, 60_000);
        assert_eq!(
            server.engine.ping_interval_ms,
            ServerConfig::default().engine.ping_interval_ms,
            "what the file does not set stays"
        );
    }

    #[test]
    fn the_environment_picks_the_section() {
        let text = "production:\n  port: 80\nstaging:\n  port: 8080\n  device_ttl: 60\n";
        let staging = read(text, "staging").expect("staging loads");
        assert_eq!(
            (staging.port, staging.device_ttl_secs),
            (Some(8080), Some(60))
        );
        // A section written with nothing under it, as the sample's `development:`, sets nothing.
        assert_eq!(
            read(SAMPLE, "development").expect("development loads"),
            CrossroadsConfig::default()
        );
        assert_eq!(
            read(text, "test").expect_err("no such section"),
            "config.yml: no `test` section (NODE_ENV picks the section, production by default); its \
             sections: production, staging"
        );
        assert_eq!(
            read("", "production").expect_err("an empty file has no section"),
            "config.yml: no `production` section (NODE_ENV picks the section, production by default); it \
             has none"
        );
    }

    #[test]
    fn io_options() {
        let config = read(
            "production:\n  io:\n    pingTimeout: 30000\n    pingInterval: '10000'\n    path: /rt\n    \
             maxHttpBufferSize: 100000\n    cors: {origin: '*'}\n    transports: [websocket]\n",
            "production",
        )
        .expect("loads");
        assert_eq!(
            (
                config.ping_timeout_ms,
                config.ping_interval_ms,
                config.engine_path.as_deref(),
                config.max_payload_bytes
            ),
            (Some(30_000), Some(10_000), Some("/rt/"), Some(100_000))
        );
        assert_eq!(
            config.ignored,
            ["production.io.cors", "production.io.transports"]
        );
        let mut server = ServerConfig::default();
        config.apply_server(&mut server);
        assert_eq!(
            (
                server.engine.ping_interval_ms,
                server.engine.path.as_str(),
                server.limits.max_payload_bytes
            ),
            (10_000, "/rt/", 100_000)
        );
    }

    #[test]
    fn redis_from_node_redis_options() {
        let cases = [
            ("redis: {url: 'redis://r:6379/0'}", Some("redis://r:6379/0")),
            // The URL wins over the separate options, as in node-redis.
            (
                "redis: {url: 'redis://r:6379/0', host: other}",
                Some("redis://r:6379/0"),
            ),
            (
                "redis: {host: cache.internal}",
                Some("redis://cache.internal:6379/"),
            ),
            (
                "redis: {host: cache.internal, port: 6380, db: 3, password: 'p@ss/w0rd', tls: {}}",
                Some("rediss://:p%40ss%2Fw0rd@cache.internal:6380/3"),
            ),
            ("redis: {port: 6390}", Some("redis://127.0.0.1:6390/")),
            ("redis:", None),
            ("redis: {return_buffers: true}", None),
        ];
        for (yaml, expected) in cases {
            let config = read(&format!("production:\n  {yaml}\n"), "production").expect(yaml);
            assert_eq!(config.redis_url.as_deref(), expected, "{yaml}");
        }
        let config = read(
            "production:\n  redis: {url: 'redis://r/', prefix: 'cr:', retry_strategy: x}\n",
            "production",
        )
        .expect("loads");
        assert_eq!(
            config.ignored,
            ["production.redis.prefix", "production.redis.retry_strategy"]
        );
    }

    #[test]
    fn sites_in_the_section_take_its_device_ttl() {
        let config = read(
            "production:\n  sites:\n    shop:\n      apiKey: k\n    news:\n      apiKey: k\n      deviceTtl: 5\n  \
             device_ttl: 60\n",
            "production",
        )
        .expect("loads");
        let sites = config.sites.expect("sites");
        let ttls: Vec<_> = sites
            .iter()
            .map(|s| (s.name.as_str(), s.device_ttl_secs))
            .collect();
        assert_eq!(ttls, [("shop", 60), ("news", 5)]);
    }

    #[test]
    fn errors_name_the_file_and_key_and_never_the_value() {
        let cases = [
            (
                "production:\n  port: s3cret\n",
                "config.yml: production.port: expected a port number (0-65535)",
            ),
            (
                "production:\n  port: 70000\n",
                "config.yml: production.port: expected a port number (0-65535)",
            ),
            (
                "production:\n  device_ttl: 0\n",
                "config.yml: production.device_ttl: expected a number of seconds above 0 (crossroads' 0, keep \
                 for ever, has no equivalent in herald)",
            ),
            (
                "production:\n  redis:\n    url: http://s3cret@r/\n",
                "config.yml: production.redis.url: expected a redis:// or rediss:// URL",
            ),
            (
                "production:\n  redis: s3cret\n",
                "config.yml: production.redis: expected a map with url",
            ),
            (
                "production:\n  redis: {host: 's3cret/x'}\n",
                "config.yml: production.redis.host: expected a host name",
            ),
            (
                "production:\n  io:\n    pingTimeout: 0\n",
                "config.yml: production.io.pingTimeout: expected milliseconds above 0",
            ),
            (
                "production:\n  io:\n    path: s3cret\n",
                "config.yml: production.io.path: expected a path starting with '/'",
            ),
            (
                "production: [s3cret]\n",
                "config.yml: production: expected a map of settings",
            ),
            (
                "- s3cret\n",
                "config.yml: expected a map of environment (production, development, …) to settings",
            ),
            (
                "production:\n  sites:\n    shop:\n      apiKey: {nested: s3cret}\n",
                "config.yml: site 'shop': invalid type: map, expected an API key (a string or a whole number)",
            ),
        ];
        for (text, expected) in cases {
            let err = read(text, "production").expect_err(text);
            assert_eq!(err, expected, "{text}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = read("production:\n  port: [unclosed\n", "production").expect_err("bad YAML");
        assert!(err.starts_with("config.yml: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
