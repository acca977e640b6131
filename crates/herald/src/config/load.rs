//! `load`: the one function that turns herald's configuration sources into a validated `Config`. Precedence is
//! file < environment < flags; apart from reading the two files it is pure, so tests pass a map as the
//! environment.
//!
//! - **Server file** (`--config`, `HERALD_CONFIG`): YAML of the [`Config`] tree with snake_case field names, as
//!   `herald check-config` prints it: `server: {listen, data_dir, log: {json, level}, limits: {...}, engine:
//!   {...}, redis_url, shutdown_grace_ms}` and `sites: [{name, api_keys, auth: {kind: ...}, ...}]`. Every field
//!   is optional except a site's `name`; unknown fields are errors.
//! - **Sites file** (`--sites`, `HERALD_SITES`): crossroads' `sites.yml` (see `crossroads.rs`). Its sites are
//!   added after the server file's; a name defined in both is an error.
//! - **Environment**: crossroads' names define or override one site, `PORT` and `REDIS_URL` the server, and
//!   `HERALD_*` herald's own settings (see [`ENVIRONMENT`](crate::config::ENVIRONMENT)). When `SITE_NAME` names
//!   a site from a file, the variables set replace that site's fields; otherwise they add a site.
//! - **Flags**: [`Overrides`].
//!
//! When no source defines a site, the embedded default's public `demo` site is used, so `herald --port 4000`
//! still serves the demo.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use crate::config::env::{self, EnvSite};
use crate::config::error::redact;
use crate::config::{crossroads, validate, Config, ConfigError, ServerConfig};

/// Where the configuration comes from. `env` is the process environment as a map (see [`process_env`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// The server file (YAML of the `Config` tree); none uses the embedded default's server settings.
    pub server_file: Option<PathBuf>,
    /// crossroads' `sites.yml`.
    pub sites_file: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub flags: Overrides,
}

impl Sources {
    /// Sources with the files named by `HERALD_CONFIG` and `HERALD_SITES`; a caller with `--config`/`--sites`
    /// flags sets `server_file`/`sites_file` afterwards, so the flags win.
    pub fn from_env(env: BTreeMap<String, String>, flags: Overrides) -> Sources {
        let path = |name: &str| env.get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Sources {
            server_file: path("HERALD_CONFIG"),
            sites_file: path("HERALD_SITES"),
            flags,
            env,
        }
    }
}

/// The process environment as a map, without the variables whose name or value is not UTF-8 (herald reads none
/// of those).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// Settings given as command-line flags; each set one wins over files and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen`: the whole address.
    pub listen: Option<SocketAddr>,
    /// `--port`: the port, keeping the address's IP; applied after `listen`.
    pub port: Option<u16>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--log-json`.
    pub log_json: Option<bool>,
    /// `--log-level`: a tracing filter.
    pub log_level: Option<String>,
}

impl Overrides {
    /// Puts the settings given into `server`; `port` applies after `listen`, so it keeps the IP.
    pub(crate) fn apply(&self, server: &mut ServerConfig) {
        if let Some(listen) = self.listen {
            server.listen = listen;
        }
        if let Some(port) = self.port {
            server.listen.set_port(port);
        }
        if let Some(dir) = &self.data_dir {
            server.data_dir = dir.clone();
        }
        if let Some(json) = self.log_json {
            server.log.json = json;
        }
        if let Some(level) = &self.log_level {
            server.log.level = level.clone();
        }
    }
}

/// Reads, merges and validates the configuration. The `demo` site may still lack its API key:
/// [`ensure_demo_key`](crate::config::ensure_demo_key) gives it one.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    load_from(sources, read_file)
}

/// [`load`] with the files' text from `read`, given each file's path: the disk for `load`, strings for the fuzz
/// targets (see [`crate::fuzzing`]).
pub(crate) fn load_from(
    sources: &Sources,
    read: impl Fn(&Path) -> Result<String, ConfigError>,
) -> Result<Config, ConfigError> {
    let env = env::parse(&sources.env)?;
    let mut merged = Merged::from_files(sources, read)?;
    if let Some(site) = &env.site {
        merged.apply_env_site(site)?;
    }
    if merged.config.sites.is_empty() {
        merged.config.sites = Config::default().sites;
        merged.origins = vec![None; merged.config.sites.len()];
    }
    env.apply_server(&mut merged.config.server);
    sources.flags.apply(&mut merged.config.server);
    validate(&merged.config).map_err(|error| merged.locate(error, sources))?;
    Ok(merged.config)
}

/// The configuration being assembled, with where each site came from (for error messages).
struct Merged {
    config: Config,
    /// Parallel to `config.sites`: the file or "environment" that defined the site; none for the default.
    origins: Vec<Option<String>>,
}

impl Merged {
    fn from_files(
        sources: &Sources,
        read: impl Fn(&Path) -> Result<String, ConfigError>,
    ) -> Result<Merged, ConfigError> {
        let config = match &sources.server_file {
            Some(path) => parse_server_file(path, &read(path)?)?,
            None => Config {
                server: ServerConfig::default(),
                sites: Vec::new(),
                bridges: Vec::new(),
            },
        };
        let server_label = sources.server_file.as_deref().map(label);
        let mut merged = Merged {
            origins: vec![server_label; config.sites.len()],
            config,
        };
        if let Some(path) = &sources.sites_file {
            for site in crossroads::parse_sites(path, &read(path)?)? {
                if merged.position(&site.name).is_some() {
                    return Err(ConfigError::SiteDefinedTwice {
                        path: path.clone(),
                        site: site.name,
                        first: sources.server_file.clone().unwrap_or_default(),
                    });
                }
                merged.config.sites.push(site);
                merged.origins.push(Some(label(path)));
            }
        }
        Ok(merged)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.config.sites.iter().position(|site| site.name == name)
    }

    /// Overrides the site the environment names, or adds it.
    fn apply_env_site(&mut self, env_site: &EnvSite) -> Result<(), ConfigError> {
        match self.position(&env_site.name) {
            Some(at) => {
                env_site.apply(&mut self.config.sites[at])?;
                let origin = &mut self.origins[at];
                *origin = Some(match origin.take() {
                    Some(file) => format!("{file} and environment"),
                    None => "environment".into(),
                });
            }
            None => {
                self.config.sites.push(env_site.to_site()?);
                self.origins.push(Some("environment".into()));
            }
        }
        Ok(())
    }

    /// Prefixes a validation error with the source of the site or setting it is about.
    fn locate(&self, error: ConfigError, sources: &Sources) -> ConfigError {
        let origin = match error.site() {
            Some(name) => self.position(name).and_then(|at| self.origins[at].clone()),
            None if error.is_server_setting() => sources.server_file.as_deref().map(label),
            None => None,
        };
        match origin {
            Some(origin) => ConfigError::In {
                origin,
                inner: Box::new(error),
            },
            None => error,
        }
    }
}

fn label(path: &Path) -> String {
    path.display().to_string()
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::ReadFile {
        path: path.to_owned(),
        error,
    })
}

/// Parses a server file; an empty one (or only comments) has default server settings and no site.
fn parse_server_file(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let parse_error = |e: serde_yaml_ng::Error| ConfigError::ParseFile {
        path: path.to_owned(),
        message: redact(&e.to_string()),
    };
    if serde_yaml_ng::from_str::<Value>(text).map_err(parse_error)? == Value::Null {
        return Ok(Config {
            server: ServerConfig::default(),
            sites: Vec::new(),
            bridges: Vec::new(),
        });
    }
    serde_yaml_ng::from_str(text).map_err(parse_error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::AuthConfig;
    use crate::config::test_support::TempDir;
    use crate::config::{render_masked, SiteConfig};
    use crate::secret::Secret;

    /// Environment variables of a test case.
    type Vars = &'static [(&'static str, &'static str)];

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Loads from a server file and a sites file written to a fresh directory (empty text: no such file).
    fn load_with(
        server: &str,
        sites: &str,
        vars: &[(&str, &str)],
        flags: Overrides,
    ) -> Result<Config, String> {
        let tmp = TempDir::new("load");
        let server_file = (!server.is_empty()).then(|| tmp.write("herald.yml", server));
        let sites_file = (!sites.is_empty()).then(|| tmp.write("sites.yml", sites));
        let sources = Sources {
            server_file,
            sites_file,
            env: env(vars),
            flags,
        };
        // Errors name the files by their full path; show them relative to the scratch directory.
        let prefix = format!("{}/", tmp.path().display());
        load(&sources).map_err(|e| e.to_string().replace(&prefix, ""))
    }

    #[test]
    fn nothing_given_is_the_embedded_default() {
        assert_eq!(load(&Sources::default()).unwrap(), Config::default());
        assert_eq!(
            load_with("", "", &[], Overrides::default()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn listen_precedence_file_env_flags() {
        let file = "server:\n  listen: 0.0.0.0:8000\n";
        // (env, flags, expected listen address)
        let cases: [(Vars, Overrides, &str); 7] = [
            (&[], Overrides::default(), "0.0.0.0:8000"),
            (&[("PORT", "9000")], Overrides::default(), "0.0.0.0:9000"),
            (
                &[("HERALD_LISTEN", "10.0.0.1:7000")],
                Overrides::default(),
                "10.0.0.1:7000",
            ),
            (
                &[("HERALD_LISTEN", "10.0.0.1:7000"), ("PORT", "9000")],
                Overrides::default(),
                "10.0.0.1:9000",
            ),
            (
                &[("PORT", "9000")],
                Overrides {
                    port: Some(9100),
                    ..Overrides::default()
                },
                "0.0.0.0:9100",
            ),
            (
                &[("PORT", "9000")],
                Overrides {
                    listen: Some(addr("127.0.0.1:4000")),
                    ..Overrides::default()
                },
                "127.0.0.1:4000",
            ),
            (
                &[("HERALD_LISTEN", "10.0.0.1:7000")],
                Overrides {
                    listen: Some(addr("127.0.0.1:4000")),
                    port: Some(4001),
                    ..Overrides::default()
                },
                "127.0.0.1:4001",
            ),
        ];
        for (vars, flags, expected) in cases {
            let config = load_with(file, "", vars, flags.clone()).unwrap();
            assert_eq!(config.server.listen, addr(expected), "{vars:?} {flags:?}");
        }
        // Without a file, PORT changes the default address's port.
        let config = load_with("", "", &[("PORT", "1337")], Overrides::default()).unwrap();
        assert_eq!(config.server.listen, addr("127.0.0.1:1337"));
    }

    #[test]
    fn other_settings_precedence() {
        let file = "server:\n  data_dir: /from/file\n  log: {json: false, level: warn}\n  redis_url: redis://file\n";
        let vars = [
            ("HERALD_DATA_DIR", "/from/env"),
            ("HERALD_LOG_JSON", "true"),
            ("HERALD_LOG_LEVEL", "debug"),
            ("REDIS_URL", "redis://env"),
        ];
        let from_file = load_with(file, "", &[], Overrides::default())
            .unwrap()
            .server;
        assert_eq!(
            (
                from_file.data_dir.to_str(),
                from_file.log.json,
                from_file.log.level.as_str()
            ),
            (Some("/from/file"), false, "warn")
        );
        assert_eq!(from_file.redis_url.as_deref(), Some("redis://file"));

        let from_env = load_with(file, "", &vars, Overrides::default())
            .unwrap()
            .server;
        assert_eq!(
            (
                from_env.data_dir.to_str(),
                from_env.log.json,
                from_env.log.level.as_str()
            ),
            (Some("/from/env"), true, "debug")
        );
        assert_eq!(from_env.redis_url.as_deref(), Some("redis://env"));

        let flags = Overrides {
            data_dir: Some("/from/flag".into()),
            log_json: Some(false),
            log_level: Some("trace".into()),
            ..Overrides::default()
        };
        let from_flags = load_with(file, "", &vars, flags).unwrap().server;
        assert_eq!(
            (
                from_flags.data_dir.to_str(),
                from_flags.log.json,
                from_flags.log.level.as_str()
            ),
            (Some("/from/flag"), false, "trace")
        );
    }

    #[test]
    fn server_file_shape() {
        let config = load_with(
            concat!(
                "server:\n",
                "  limits: {max_connections: 10}\n",
                "  engine: {path: /rt/, allowed_origins: [https://a.test]}\n",
                "sites:\n",
                "  - name: shop\n",
                "    api_keys: [k1]\n",
                "    auth: {kind: webhook, url: http://a.test/rooms, forward_cookie: true}\n",
            ),
            "",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.server.limits.max_connections, 10);
        assert_eq!(config.server.limits.outbox_frames, 1024);
        assert_eq!(config.server.engine.path, "/rt/");
        assert_eq!(config.sites.len(), 1, "the file's sites replace the demo");
        let AuthConfig::Webhook(hook) = &config.sites[0].auth else {
            panic!("a webhook site")
        };
        assert!(hook.forward_cookie);
        assert_eq!(hook.scheme, "Bearer");
    }

    #[test]
    fn a_server_file_without_sites_keeps_the_demo() {
        let config = load_with("# just comments\n", "", &[], Overrides::default()).unwrap();
        assert_eq!(config, Config::default());
        let config = load_with(
            "server: {shutdown_grace_ms: 5000}\n",
            "",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.sites, Config::default().sites);
    }

    #[test]
    fn files_merge_in_order() {
        let config = load_with(
            "sites:\n  - {name: one, api_keys: [k]}\n",
            "two:\n  apiKey: k\nthree:\n  apiKey: k\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        let names: Vec<_> = config.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["one", "two", "three"]);
    }

    #[test]
    fn environment_overrides_a_file_site() {
        let sites = concat!(
            "shop:\n",
            "  authUrl: http://old.test/rooms\n",
            "  authScheme: Token\n",
            "  apiKey: file-key\n",
            "  publicChannel: news\n",
            "other:\n",
            "  apiKey: k\n",
        );
        let vars = [
            ("SITE_NAME", "shop"),
            ("AUTH_URL", "http://new.test/rooms"),
            ("API_KEY", "env-key"),
            ("DEVICE_TTL", "60"),
        ];
        let config = load_with("", sites, &vars, Overrides::default()).unwrap();
        assert_eq!(config.sites.len(), 2);
        let shop = &config.sites[0];
        let AuthConfig::Webhook(hook) = &shop.auth else {
            panic!("a webhook site")
        };
        assert_eq!(
            (hook.url.as_str(), hook.scheme.as_str()),
            ("http://new.test/rooms", "Token")
        );
        assert_eq!(shop.api_keys, vec![Secret::new("env-key")]);
        assert_eq!(shop.public_channel.as_deref(), Some("news"));
        assert_eq!(shop.device_ttl_secs, 60);
    }

    #[test]
    fn environment_alone_defines_one_site() {
        let vars = [
            ("API_KEY", "env-key"),
            ("AUTH_URL", "https://app.test/rooms"),
            ("PORT", "1337"),
        ];
        let config = load_with("", "", &vars, Overrides::default()).unwrap();
        let mut expected = SiteConfig::new("default".into());
        expected.api_keys = vec![Secret::new("env-key")];
        expected.auth = AuthConfig::Webhook(env::webhook("https://app.test/rooms".into(), None));
        assert_eq!(config.sites, vec![expected], "no demo site beside it");
        assert_eq!(config.server.listen.port(), 1337);

        // A new environment site is added after the files' sites.
        let config = load_with(
            "",
            "shop:\n  apiKey: k\n",
            &[("SITE_NAME", "x"), ("API_KEY", "k")],
            Overrides::default(),
        )
        .unwrap();
        let names: Vec<_> = config.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["shop", "x"]);
    }

    #[test]
    fn sources_from_env() {
        let vars = env(&[
            ("HERALD_CONFIG", "/etc/herald.yml"),
            ("HERALD_SITES", "/etc/sites.yml"),
        ]);
        let sources = Sources::from_env(vars.clone(), Overrides::default());
        assert_eq!(sources.server_file, Some(PathBuf::from("/etc/herald.yml")));
        assert_eq!(sources.sites_file, Some(PathBuf::from("/etc/sites.yml")));
        assert_eq!(sources.env, vars);
        assert_eq!(
            Sources::from_env(BTreeMap::new(), Overrides::default()),
            Sources::default()
        );
    }

    #[test]
    fn errors_name_their_source() {
        // (server file, sites file, environment, expected error)
        let cases: [(&str, &str, Vars, &str); 15] = [
            (
                "server:\n  listn: 0.0.0.0:1\n",
                "",
                &[],
                "herald.yml: server: unknown field `listn`, expected one of `listen`, `data_dir`, `log`, \
                 `limits`, `engine`, `redis_url`, `cluster`, `mailbox`, `shutdown_grace_ms`, `drain_delay_ms`, `metrics`, \
                 `metrics_token`, `tls`, `ca_file` at line 2 column 3",
            ),
            (
                "server:\n  listen: nowhere\n",
                "",
                &[],
                "herald.yml: server.listen: invalid socket address syntax at line 2 column 11",
            ),
            (
                "sites:\n  - name: shop\n    api_keys: {nested: s3cret}\n",
                "",
                &[],
                "herald.yml: sites[0].api_keys: invalid type: map, expected a sequence at line 3 column 15",
            ),
            ("", "shop:\n  authUrl: http://a.test/\n", &[], "sites.yml: site 'shop': apiKey is missing"),
            (
                "sites:\n  - {name: shop}\n",
                "",
                &[],
                "herald.yml: site 'shop': apiKey is missing",
            ),
            (
                "",
                "shop:\n  apiKey: k\n  authUrl: ftp://a.test/\n",
                &[],
                "sites.yml: site 'shop': the auth URL must be an http:// or https:// URL with a host",
            ),
            (
                "",
                "shop:\n  apiKey: k\n",
                &[("SITE_NAME", "shop"), ("AUTH_URL", "nope")],
                "sites.yml and environment: site 'shop': the auth URL must be an http:// or https:// URL with a host",
            ),
            (
                "",
                "",
                &[("AUTH_URL", "http://a.test/")],
                "environment: site 'default': apiKey is missing",
            ),
            (
                "",
                "",
                &[("SITE_NAME", "my site"), ("API_KEY", "k")],
                "environment: site 'my site': the name must match [A-Za-z0-9_-]+",
            ),
            (
                "sites:\n  - {name: shop, api_keys: [k]}\n",
                "shop:\n  apiKey: k\n",
                &[],
                "sites.yml: site 'shop' is already defined in herald.yml",
            ),
            (
                "server:\n  engine: {path: /socket.io}\n",
                "",
                &[],
                "herald.yml: server.engine.path '/socket.io' must start and end with '/'",
            ),
            ("", "", &[("DEVICE_TTL", "12x")], "environment DEVICE_TTL: '12x' is not a number of seconds"),
            (
                "",
                "",
                &[("HERALD_TLS_CERT", "/etc/herald/cert.pem")],
                "environment HERALD_TLS_CERT is set without HERALD_TLS_KEY: set both, or neither",
            ),
            (
                "server:\n  tls: {cert: cert.pem}\n",
                "",
                &[],
                "herald.yml: server.tls: missing field `key` at line 2 column 8",
            ),
            (
                "server:\n  tls: {cert: cert.pem, key: key.pem, ca: ca.pem}\n",
                "",
                &[],
                "herald.yml: server.tls: unknown field `ca`, expected `cert` or `key` at line 2 column 39",
            ),
        ];
        for (server, sites, vars, expected) in cases {
            let err = load_with(server, sites, vars, Overrides::default()).unwrap_err();
            assert_eq!(
                err, expected,
                "server file {server:?}, sites file {sites:?}, env {vars:?}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn errors_stay_one_line() {
        // Found by the config_load fuzz target: a site or field name with a line break made a two-line error.
        let err =
            load_with("", "\"a\\nb\":\n  apiKey: k\n", &[], Overrides::default()).unwrap_err();
        assert_eq!(
            err,
            "sites.yml: site 'a\\nb': the name must match [A-Za-z0-9_-]+"
        );
        let err = load_with(
            "server:\n  \"li\\nsten\": 1\n",
            "",
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.starts_with("herald.yml: server: unknown field `li\\nsten`, expected one of"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_one_line() {
        let sources = Sources {
            sites_file: Some(PathBuf::from("/nonexistent/herald/sites.yml")),
            ..Sources::default()
        };
        let err = load(&sources).unwrap_err().to_string();
        assert!(
            err.starts_with("/nonexistent/herald/sites.yml: cannot read: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn check_config_output_round_trips_without_secrets() {
        let sites = concat!(
            "shop:\n",
            "  apiKey: shop-key-0123456789\n",
            "  auth: {kind: jwt, algorithm: HS256, secret: jwt-secret-0123456789}\n",
        );
        let config = load_with("", sites, &[], Overrides::default()).unwrap();
        let yaml = render_masked(&config);
        assert!(
            !yaml.contains("shop-key-0123456789") && !yaml.contains("jwt-secret-0123456789"),
            "{yaml}"
        );
        let tmp = TempDir::new("render");
        let sources = Sources {
            server_file: Some(tmp.write("herald.yml", &yaml)),
            ..Sources::default()
        };
        let reloaded = load(&sources).unwrap();
        assert_eq!(reloaded.server, config.server);
        assert_eq!(reloaded.sites[0].name, "shop");
    }
}
