//! `load`: the one function that turns herald's configuration sources into a validated `Config`. Precedence is
//! file < environment < flags; apart from reading the two files it is pure, so tests pass a map as the
//! environment.
//!
//! - **Server file** (`--config`, `HERALD_CONFIG`): YAML of the [`Config`] tree with snake_case field names, as
//!   `herald check-config` prints it: `server: {listen, data_dir, log: {json, level}, limits: {...}, engine:
//!   {...}, redis_url, shutdown_grace_ms}` and `sites: [{name, api_keys, auth: {kind: ...}, ...}]`. Every field
//!   is optional except a site's `name`; unknown fields are errors.
//! - **crossroads' `config.yml`** (`--crossroads-config`, `HERALD_CROSSROADS_CONFIG`): the section `NODE_ENV`
//!   names (default `production`), see `crossroads_config.rs`. Its server settings go over the server file's;
//!   its `sites` are added after the server file's when no sites file is given; its `device_ttl` is the TTL of
//!   the crossroads sites (sites file, environment) that set none.
//! - **Sites file** (`--sites`, `HERALD_SITES`): crossroads' `sites.yml` (see `crossroads.rs`). Its sites are
//!   added after the server file's; a name defined in both is an error.
//! - As crossroads did, `config.yml` and `sites.yml` in the working directory are read when no server file is
//!   given and no other file of that kind is named ([`Sources::find_crossroads_files`]); each is noted.
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

use crate::config::crossroads_config::{self, CrossroadsConfig, DEFAULT_ENVIRONMENT};
use crate::config::env::{self, EnvConfig, EnvSite};
use crate::config::error::redact;
use crate::config::{crossroads, validate, Config, ConfigError, Notice, ServerConfig, SiteConfig};

/// The name crossroads gave its config file, which herald finds in the working directory.
pub const CROSSROADS_CONFIG_FILE: &str = "config.yml";
/// The name crossroads gave its sites file, which herald finds in the working directory.
pub const CROSSROADS_SITES_FILE: &str = "sites.yml";

/// Where the configuration comes from. `env` is the process environment as a map (see [`process_env`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// The server file (YAML of the `Config` tree); none uses the embedded default's server settings.
    pub server_file: Option<PathBuf>,
    /// crossroads' `sites.yml`.
    pub sites_file: Option<PathBuf>,
    /// crossroads' `config.yml`.
    pub crossroads_file: Option<PathBuf>,
    /// The files above that were found in the working directory rather than named: each gets a notice, and a
    /// found `config.yml` without the environment's section is skipped (it may be another program's) instead of
    /// refused.
    pub found_in_cwd: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub flags: Overrides,
}

impl Sources {
    /// Sources with the files named by `HERALD_CONFIG`, `HERALD_SITES` and `HERALD_CROSSROADS_CONFIG`; a caller
    /// with flags sets the files afterwards, so the flags win.
    pub fn from_env(env: BTreeMap<String, String>, flags: Overrides) -> Sources {
        let path = |name: &str| env.get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Sources {
            server_file: path("HERALD_CONFIG"),
            sites_file: path("HERALD_SITES"),
            crossroads_file: path("HERALD_CROSSROADS_CONFIG"),
            found_in_cwd: Vec::new(),
            flags,
            env,
        }
    }

    /// crossroads read `config.yml` and `sites.yml` from its working directory. When no server file is given,
    /// herald takes each of them from `dir` too, if it is there and no file of its kind is named.
    pub fn find_crossroads_files(mut self, dir: &Path) -> Sources {
        if self.server_file.is_some() {
            return self;
        }
        for (slot, name) in [
            (&mut self.crossroads_file, CROSSROADS_CONFIG_FILE),
            (&mut self.sites_file, CROSSROADS_SITES_FILE),
        ] {
            let path = dir.join(name);
            if slot.is_none() && path.is_file() {
                *slot = Some(path.clone());
                self.found_in_cwd.push(path);
            }
        }
        self
    }
}

/// A configuration with the notices its loading produced, which the caller logs once logging is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: Config,
    pub notices: Vec<Notice>,
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
    load_with_notices(sources).map(|loaded| loaded.config)
}

/// [`load`], with what the operator should be told about how the configuration was read.
pub fn load_with_notices(sources: &Sources) -> Result<Loaded, ConfigError> {
    load_from(sources, read_file)
}

/// [`load_with_notices`] with the files' text from `read`, given each file's path: the disk for `load`, strings
/// for the fuzz targets (see [`crate::fuzzing`]).
pub(crate) fn load_from(
    sources: &Sources,
    read: impl Fn(&Path) -> Result<String, ConfigError>,
) -> Result<Loaded, ConfigError> {
    let env = env::parse(&sources.env)?;
    let mut notices = Vec::new();
    let crossroads = read_crossroads(sources, &env, &read, &mut notices)?;
    if let Some(found) = (sources.sites_file.as_ref()).filter(|p| sources.found_in_cwd.contains(p))
    {
        notices.push(Notice::Found {
            path: found.clone(),
            what: "crossroads' sites.yml".into(),
        });
    }
    let default_ttl = crossroads.as_ref().and_then(|(_, c)| c.device_ttl_secs);
    let mut merged = Merged::from_files(sources, &read, default_ttl)?;
    if let Some((path, crossroads)) = crossroads {
        notices.extend(merged.add_crossroads(&path, crossroads, &env, sources)?);
    }
    if let Some(site) = &env.site {
        merged.apply_env_site(site, default_ttl)?;
    }
    if merged.config.sites.is_empty() {
        merged.config.sites = Config::default().sites;
        merged.origins = vec![None; merged.config.sites.len()];
    }
    env.apply_server(&mut merged.config.server);
    sources.flags.apply(&mut merged.config.server);
    validate(&merged.config).map_err(|error| merged.locate(error, sources))?;
    Ok(Loaded {
        config: merged.config,
        notices,
    })
}

/// The section of crossroads' `config.yml` herald reads: `NODE_ENV`, else `production`.
fn environment(env: &EnvConfig) -> &str {
    env.node_env.as_deref().unwrap_or(DEFAULT_ENVIRONMENT)
}

/// Reads crossroads' `config.yml` when there is one, with its path. A file found in the working directory
/// without the environment's section is skipped with a notice.
fn read_crossroads(
    sources: &Sources,
    env: &EnvConfig,
    read: &impl Fn(&Path) -> Result<String, ConfigError>,
    notices: &mut Vec<Notice>,
) -> Result<Option<(PathBuf, CrossroadsConfig)>, ConfigError> {
    let Some(path) = &sources.crossroads_file else {
        return Ok(None);
    };
    let found = sources.found_in_cwd.contains(path);
    match crossroads_config::parse(path, &read(path)?, environment(env)) {
        Ok(config) => {
            if found {
                notices.push(Notice::Found {
                    path: path.clone(),
                    what: format!("crossroads' config.yml (section {})", environment(env)),
                });
            }
            Ok(Some((path.clone(), config)))
        }
        Err(ConfigError::CrossroadsNoSection { environment, .. }) if found => {
            notices.push(Notice::NotCrossroads {
                path: path.clone(),
                environment,
            });
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// The warnings about crossroads' `config.yml`: the keys herald ignores (one line for all), and a `port` that
/// the environment or a flag replaces (a container image's `HERALD_LISTEN` does).
fn crossroads_notices(
    path: &Path,
    crossroads: &CrossroadsConfig,
    env: &EnvConfig,
    sources: &Sources,
) -> Vec<Notice> {
    let mut notices = Vec::new();
    if !crossroads.ignored.is_empty() {
        notices.push(Notice::Ignored {
            path: path.to_owned(),
            keys: crossroads.ignored.clone(),
        });
    }
    let flags = &sources.flags;
    // The last one applied wins: flags after the environment, a port after an address.
    let by = [
        (flags.port.is_some(), "--port"),
        (flags.listen.is_some(), "--listen"),
        (env.server.port.is_some(), "PORT"),
        (env.server.listen.is_some(), "HERALD_LISTEN"),
    ]
    .into_iter()
    .find_map(|(set, name)| set.then_some(name));
    if let (Some(_), Some(by)) = (crossroads.port, by) {
        notices.push(Notice::Overridden {
            path: path.to_owned(),
            key: format!("{}.port", environment(env)),
            by,
        });
    }
    notices
}

/// The configuration being assembled, with where each site came from (for error messages).
struct Merged {
    config: Config,
    /// Parallel to `config.sites`: the file or "environment" that defined the site; none for the default.
    origins: Vec<Option<String>>,
}

impl Merged {
    /// The server file's configuration and the sites file's sites (those without `deviceTtl` get
    /// `default_ttl`, crossroads' `device_ttl`, when given).
    fn from_files(
        sources: &Sources,
        read: impl Fn(&Path) -> Result<String, ConfigError>,
        default_ttl: Option<u64>,
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
            let sites = crossroads::parse_sites(path, &read(path)?, default_ttl)?;
            merged.add_sites(sites, path, sources)?;
        }
        Ok(merged)
    }

    /// Adds the sites a crossroads file (`path`) defines after those already there; a name the server file
    /// defined too is an error.
    fn add_sites(
        &mut self,
        sites: Vec<SiteConfig>,
        path: &Path,
        sources: &Sources,
    ) -> Result<(), ConfigError> {
        for site in sites {
            if self.position(&site.name).is_some() {
                return Err(ConfigError::SiteDefinedTwice {
                    path: path.to_owned(),
                    site: site.name,
                    first: sources.server_file.clone().unwrap_or_default(),
                });
            }
            self.config.sites.push(site);
            self.origins.push(Some(label(path)));
        }
        Ok(())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.config.sites.iter().position(|site| site.name == name)
    }

    /// Adds what crossroads' `config.yml` (at `path`) sets: its sites unless a sites file is given (crossroads
    /// took `sites.yml` over them), and its server settings over the server file's. Returns its notices.
    fn add_crossroads(
        &mut self,
        path: &Path,
        mut crossroads: CrossroadsConfig,
        env: &EnvConfig,
        sources: &Sources,
    ) -> Result<Vec<Notice>, ConfigError> {
        match crossroads.sites.take() {
            Some(_) if sources.sites_file.is_some() => crossroads
                .ignored
                .push(format!("{}.sites", environment(env))),
            Some(sites) => self.add_sites(sites, path, sources)?,
            None => {}
        }
        crossroads.apply_server(&mut self.config.server);
        Ok(crossroads_notices(path, &crossroads, env, sources))
    }

    /// Overrides the site the environment names, or adds it (with `default_ttl`, crossroads' `device_ttl`, when
    /// `DEVICE_TTL` is unset).
    fn apply_env_site(
        &mut self,
        env_site: &EnvSite,
        default_ttl: Option<u64>,
    ) -> Result<(), ConfigError> {
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
                let mut site = env_site.to_site()?;
                if let (None, Some(ttl)) = (env_site.device_ttl_secs, default_ttl) {
                    site.device_ttl_secs = ttl;
                }
                self.config.sites.push(site);
                self.origins.push(Some("environment".into()));
            }
        }
        Ok(())
    }

    /// Prefixes a validation error with the source of the site or setting it is about.
    fn locate(&self, error: ConfigError, sources: &Sources) -> ConfigError {
        let origin = match error.site() {
            Some(name) => self.position(name).and_then(|at| self.origins[at].clone()),
            None if error.is_server_setting() => (sources.server_file.as_deref())
                .or(sources.crossroads_file.as_deref())
                .map(label),
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
        let files = Files {
            server,
            sites,
            crossroads: "",
        };
        load_files(files, vars, flags).map(|(config, _)| config)
    }

    /// The files of a test case: a server file (`herald.yml`), crossroads' `sites.yml` and `config.yml`. Empty
    /// text: no such file.
    #[derive(Debug, Clone, Copy, Default)]
    struct Files<'a> {
        server: &'a str,
        sites: &'a str,
        crossroads: &'a str,
    }

    /// Loads `files` written to a fresh directory; returns the config and the notices as text.
    fn load_files(
        files: Files,
        vars: &[(&str, &str)],
        flags: Overrides,
    ) -> Result<(Config, Vec<String>), String> {
        let tmp = TempDir::new("load");
        let write = |name: &str, text: &str| (!text.is_empty()).then(|| tmp.write(name, text));
        let sources = Sources {
            server_file: write("herald.yml", files.server),
            sites_file: write("sites.yml", files.sites),
            crossroads_file: write("config.yml", files.crossroads),
            env: env(vars),
            flags,
            ..Sources::default()
        };
        // Errors name the files by their full path; show them relative to the scratch directory.
        let prefix = format!("{}/", tmp.path().display());
        let relative = |text: String| text.replace(&prefix, "");
        let loaded = load_with_notices(&sources).map_err(|e| relative(e.to_string()))?;
        let notices = loaded
            .notices
            .iter()
            .map(|n| relative(n.to_string()))
            .collect();
        Ok((loaded.config, notices))
    }

    fn crossroads(text: &str) -> Files<'_> {
        Files {
            crossroads: text,
            ..Files::default()
        }
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
    fn crossroads_config_yml_as_it_is() {
        let (config, notices) = load_files(
            crossroads(crate::config::crossroads_config::SAMPLE),
            &[],
            Overrides::default(),
        )
        .unwrap();
        let server = &config.server;
        assert_eq!(
            server.listen,
            addr("0.0.0.0:80"),
            "all interfaces, as crossroads"
        );
        assert_eq!(
            server.redis_url.as_deref(),
            Some("rediss://:pass-s3cret@redis.example:6380/2")
        );
        assert_eq!(server.engine.ping_timeout_ms, 60_000);
        assert_eq!(config.sites, Config::default().sites, "no site: the demo");
        // One warning, naming the keys and none of their values.
        assert_eq!(
            notices,
            ["config.yml: herald has no use for production.flakeid, production.servers; ignored"]
        );
    }

    #[test]
    fn crossroads_precedence_server_file_config_yml_env_flags() {
        let files = Files {
            server: "server:\n  listen: 127.0.0.1:4000\n  redis_url: redis://server-file/\n  engine: {ping_timeout_ms: 1000, ping_interval_ms: 2000}\n",
            crossroads: "production:\n  port: 81\n  redis: {url: 'redis://config-yml/'}\n  io: {pingTimeout: 3000}\n",
            ..Files::default()
        };
        let (config, notices) = load_files(files, &[], Overrides::default()).unwrap();
        let server = &config.server;
        assert_eq!(server.listen, addr("0.0.0.0:81"));
        assert_eq!(server.redis_url.as_deref(), Some("redis://config-yml/"));
        assert_eq!(
            (
                server.engine.ping_timeout_ms,
                server.engine.ping_interval_ms
            ),
            (3000, 2000),
            "config.yml over the server file, which keeps what config.yml does not set"
        );
        assert!(notices.is_empty(), "{notices:?}");

        let vars = [("REDIS_URL", "redis://env/"), ("PORT", "82")];
        let (config, notices) = load_files(files, &vars, Overrides::default()).unwrap();
        assert_eq!(config.server.listen, addr("0.0.0.0:82"));
        assert_eq!(config.server.redis_url.as_deref(), Some("redis://env/"));
        assert_eq!(
            notices,
            ["config.yml: production.port is overridden by PORT"]
        );

        let flags = Overrides {
            listen: Some(addr("127.0.0.1:83")),
            ..Overrides::default()
        };
        let (config, notices) = load_files(files, &vars, flags).unwrap();
        assert_eq!(config.server.listen, addr("127.0.0.1:83"));
        assert_eq!(
            notices,
            ["config.yml: production.port is overridden by --listen"]
        );
    }

    #[test]
    fn docker_run_with_port_and_redis_url() {
        // crossroads' `docker run -p 80:80 -e PORT=80 -e REDIS_URL=…`, in an image that sets HERALD_LISTEN.
        let vars = [
            ("HERALD_LISTEN", "0.0.0.0:3000"),
            ("PORT", "80"),
            ("REDIS_URL", "rediss://:pw@cache.example:6380/0"),
        ];
        let (config, notices) = load_files(Files::default(), &vars, Overrides::default()).unwrap();
        assert_eq!(config.server.listen, addr("0.0.0.0:80"));
        assert_eq!(
            config.server.redis_url.as_deref(),
            Some("rediss://:pw@cache.example:6380/0")
        );
        assert!(notices.is_empty());
        // With a mounted config.yml, the image's HERALD_LISTEN wins over its port, and says so.
        let (config, notices) = load_files(
            crossroads(crate::config::crossroads_config::SAMPLE),
            &vars[..1],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.server.listen, addr("0.0.0.0:3000"));
        assert_eq!(
            notices[1],
            "config.yml: production.port is overridden by HERALD_LISTEN"
        );
    }

    #[test]
    fn node_env_picks_the_section() {
        let text = "production:\n  port: 80\nstaging:\n  port: 8080\n";
        let port = |vars: &[(&str, &str)]| {
            load_files(crossroads(text), vars, Overrides::default())
                .map(|(config, _)| config.server.listen.port())
        };
        assert_eq!(port(&[]), Ok(80));
        assert_eq!(port(&[("NODE_ENV", "")]), Ok(80), "empty counts as unset");
        assert_eq!(port(&[("NODE_ENV", "staging")]), Ok(8080));
        assert_eq!(
            port(&[("NODE_ENV", "test")]),
            Err("config.yml: no `test` section (NODE_ENV picks the section, production by default); its \
                 sections: production, staging"
                .to_string())
        );
    }

    #[test]
    fn device_ttl_is_the_default_of_crossroads_sites() {
        let files = Files {
            server: "sites:\n  - {name: native, api_keys: [k]}\n",
            sites: "plain:\n  apiKey: k\nown:\n  apiKey: k\n  deviceTtl: 5\n",
            crossroads: "production:\n  device_ttl: 120\n",
        };
        let ttls = |vars: &[(&str, &str)]| {
            let (config, _) = load_files(files, vars, Overrides::default()).unwrap();
            config
                .sites
                .iter()
                .map(|s| (s.name.clone(), s.device_ttl_secs))
                .collect::<Vec<_>>()
        };
        let expected = |env_ttl| {
            [
                ("native", 86_400),
                ("plain", 120),
                ("own", 5),
                ("env", env_ttl),
            ]
            .map(|(name, ttl)| (name.to_string(), ttl))
            .to_vec()
        };
        let site = [("SITE_NAME", "env"), ("API_KEY", "k")];
        assert_eq!(ttls(&site), expected(120));
        assert_eq!(ttls(&[site[0], site[1], ("DEVICE_TTL", "7")]), expected(7));
    }

    #[test]
    fn sites_of_config_yml_unless_a_sites_file_is_given() {
        let text = "production:\n  sites:\n    shop:\n      apiKey: k\n";
        let (config, notices) = load_files(crossroads(text), &[], Overrides::default()).unwrap();
        let names: Vec<_> = config.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["shop"]);
        assert!(notices.is_empty(), "{notices:?}");

        let files = Files {
            sites: "news:\n  apiKey: k\n",
            ..crossroads(text)
        };
        let (config, notices) = load_files(files, &[], Overrides::default()).unwrap();
        let names: Vec<_> = config.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["news"], "crossroads read sites.yml over them");
        assert_eq!(
            notices,
            ["config.yml: herald has no use for production.sites; ignored"]
        );

        let files = Files {
            server: "sites:\n  - {name: shop, api_keys: [k]}\n",
            ..crossroads(text)
        };
        let err = load_files(files, &[], Overrides::default()).unwrap_err();
        assert_eq!(
            err,
            "config.yml: site 'shop' is already defined in herald.yml"
        );
    }

    #[test]
    fn files_found_in_the_working_directory() {
        let dir = TempDir::new("cwd");
        dir.write(
            "config.yml",
            "production:\n  port: 1337\n  winston: {level: info}\n",
        );
        dir.write("sites.yml", "shop:\n  apiKey: k\n");
        let found = Sources::default().find_crossroads_files(dir.path());
        assert_eq!(found.crossroads_file, Some(dir.path().join("config.yml")));
        assert_eq!(found.sites_file, Some(dir.path().join("sites.yml")));
        let loaded = load_with_notices(&found).unwrap();
        assert_eq!(loaded.config.server.listen, addr("0.0.0.0:1337"));
        assert_eq!(loaded.config.sites[0].name, "shop");
        let prefix = format!("{}/", dir.path().display());
        let notices: Vec<_> = (loaded.notices.iter())
            .map(|n| n.to_string().replace(&prefix, ""))
            .collect();
        assert_eq!(
            notices,
            [
                "config.yml: found in the working directory, read as crossroads' config.yml (section production)",
                "sites.yml: found in the working directory, read as crossroads' sites.yml",
                "config.yml: herald has no use for production.winston; ignored",
            ]
        );

        // A named file of either kind wins; a server file turns the search off.
        let named = Sources {
            sites_file: Some("/etc/herald/sites.yml".into()),
            ..Sources::default()
        }
        .find_crossroads_files(dir.path());
        assert_eq!(
            named.sites_file,
            Some(PathBuf::from("/etc/herald/sites.yml"))
        );
        assert_eq!(named.found_in_cwd, [dir.path().join("config.yml")]);
        let server = Sources {
            server_file: Some("herald.yml".into()),
            ..Sources::default()
        };
        assert_eq!(server.clone().find_crossroads_files(dir.path()), server);

        // A config.yml of another program (no section of crossroads' environment) is left alone, with a note.
        dir.write("config.yml", "server:\n  listen: 0.0.0.0:1\n");
        let loaded =
            load_with_notices(&Sources::default().find_crossroads_files(dir.path())).unwrap();
        assert_eq!(loaded.config.server.listen, ServerConfig::default().listen);
        assert_eq!(
            loaded.notices[0].to_string().replace(&prefix, ""),
            "config.yml: found in the working directory, but not read as crossroads' config.yml: it has no \
             `production` section (NODE_ENV)"
        );
        // Named, the same file is an error.
        let named = Sources {
            crossroads_file: Some(dir.path().join("config.yml")),
            ..Sources::default()
        };
        let err = load(&named).unwrap_err().to_string().replace(&prefix, "");
        assert_eq!(
            err,
            "config.yml: no `production` section (NODE_ENV picks the section, production by default); its \
             sections: server"
        );
    }

    #[test]
    fn errors_name_their_source() {
        // (server file, sites file, environment, expected error)
        let cases: [(&str, &str, Vars, &str); 18] = [
            (
                "server:\n  listn: 0.0.0.0:1\n",
                "",
                &[],
                "herald.yml: server: unknown field `listn`, expected one of `listen`, `data_dir`, `log`, \
                 `limits`, `engine`, `redis_url`, `cluster`, `mailbox`, `shutdown_grace_ms`, `drain_delay_ms`, `metrics`, `metrics_token`, `admin_token`, `tls`, `ca_file` at line 2 column 3",
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
                "server:\n  limits: {connects_per_second: 5}\n",
                "",
                &[],
                "herald.yml: server.limits: unknown field `connects_per_second`, expected one of \
                 `max_payload_bytes`, `max_publish_bytes`, `max_connections`, `outbox_frames`, \
                 `header_read_timeout_ms`, `idle_timeout_ms`, `max_http_connections`, `max_header_bytes`, \
                 `max_handshake_bytes`, `max_auth_attempts`, `max_concurrent_auth`, `max_devices_per_user`, \
                 `client_events_per_sec`, `client_events_in_flight`, `max_client_event_bytes`, `max_retained`, \
                 `max_retained_bytes`, `connects_per_ip_per_sec`, `connects_per_ip_burst`, \
                 `publishes_per_key_per_sec`, `publishes_per_key_burst` at line 2 column 12",
            ),
            (
                "server:\n  limits: {publishes_per_key_per_sec: -1}\n",
                "",
                &[],
                "herald.yml: server.limits.publishes_per_key_per_sec: invalid type: integer, expected u32 at line \
                 2 column 39",
            ),
            (
                "server:\n  limits: {connects_per_ip_per_sec: 0}\n",
                "",
                &[],
                "herald.yml: server.limits.connects_per_ip_per_sec must be greater than 0 (leave it out for no \
                 limit)",
            ),
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
        // crossroads' config.yml: (its text, environment, expected error)
        let cases: [(&str, Vars, &str); 5] = [
            (
                "production:\n  port: s3cret\n",
                &[],
                "config.yml: production.port: expected a port number (0-65535)",
            ),
            (
                "staging:\n  redis: {url: 'http://:s3cret@r/'}\n",
                &[("NODE_ENV", "staging")],
                "config.yml: staging.redis.url: expected a redis:// or rediss:// URL",
            ),
            (
                "production:\n  io: {pingInterval: 70000}\n",
                &[],
                "config.yml: server.limits.idle_timeout_ms (60000 ms) must be above \
                 server.engine.ping_interval_ms (70000 ms)",
            ),
            (
                "production:\n  sites:\n    shop: {authUrl: 'ftp://s3cret@a.test/', apiKey: k}\n",
                &[],
                "config.yml: site 'shop': the auth URL must be an http:// or https:// URL with a host",
            ),
            (
                "production:\n  device_ttl: -1\n",
                &[],
                "config.yml: production.device_ttl: expected a number of seconds above 0 (crossroads' 0, keep \
                 for ever, has no equivalent in herald)",
            ),
        ];
        for (text, vars, expected) in cases {
            let err = load_files(crossroads(text), vars, Overrides::default()).unwrap_err();
            assert_eq!(err, expected, "config.yml {text:?}, env {vars:?}");
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
