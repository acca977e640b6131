//! Live reconfiguration (SIGHUP, `POST /api/v1/admin/reload`): the configuration is read again from where it
//! came from and its sites take the place of the running ones, all or nothing.
//!
//! - An added site gets a new namespace; a removed one's clients are disconnected (`io server disconnect`).
//! - A changed site (keys, auth, routes, hooks, its limits) keeps its namespace, sockets, rooms, retained state
//!   and metrics, and gets a new handler: what comes next (connects, events, publishes) follows the new rules.
//! - An unchanged site is not touched.
//! - A configuration that does not load, does not validate, or whose sites cannot be made is refused with its
//!   one-line reason; the running one goes on.
//!
//! Settings only a restart applies (the listener, Redis, the engine's limits, bridges) are named in the report
//! and in one warning line, and left as they run.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::factory::{Made, Rules, SiteFactory};
use super::{Gateway, GatewayError};
use crate::config::{self, Config, LimitsConfig, SiteConfig, Sources};
use crate::events::Brokers;
use crate::sites::Site;

/// Why a reload was refused; the running configuration goes on.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("herald was not started from files it can read again")]
    NoSources,
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Site(#[from] GatewayError),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Settings that differ from the running ones but take effect at the next restart.
    pub restart_needed: Vec<String>,
}

/// The running configuration and how to read it again. One reload runs at a time.
pub(super) struct Reloader {
    pub factory: SiteFactory,
    /// The configuration herald started with: its settings outside the sites are the ones that run.
    pub started: Config,
    pub running: tokio::sync::Mutex<Running>,
    pub sources: parking_lot::Mutex<Option<Sources>>,
}

/// The configuration the sites run, with the rules made from it.
pub(super) struct Running {
    pub config: Config,
    pub rules: Rules,
}

impl Gateway {
    /// Where the configuration came from, so [`Gateway::reload_from_sources`] can read it again.
    pub fn set_sources(&self, sources: Sources) {
        *self.reloader.sources.lock() = Some(sources);
    }

    /// Reads the configuration again from its sources and applies it ([`Gateway::reload`]).
    pub async fn reload_from_sources(&self) -> Result<ReloadReport, ReloadError> {
        let sources = self
            .reloader
            .sources
            .lock()
            .clone()
            .ok_or(ReloadError::NoSources)?;
        let mut config = config::load(&sources)?;
        config::ensure_demo_key(&mut config)?;
        config::validate(&config)?;
        self.reload(config).await
    }

    /// Puts `config` (validated) in place of the running configuration's sites.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        let reloader = &self.reloader;
        let factory = &reloader.factory;
        let mut running = reloader.running.lock().await;
        let current = &running.config;
        let mut report = ReloadReport {
            restart_needed: restart_needed(&reloader.started, &config),
            ..ReloadReport::default()
        };
        let brokers_changed = broker_routes(current) != broker_routes(&config);
        let limits_changed =
            site_limits(&current.server.limits) != site_limits(&config.server.limits);
        let rules = Rules {
            brokers: if brokers_changed {
                Brokers::new(&config, &factory.cluster.node)
            } else {
                running.rules.brokers.clone()
            },
            limits: config.server.limits.clone(),
        };
        let mut made: Vec<Made> = Vec::new();
        let mut kept: Vec<Arc<Site>> = Vec::new();
        for site in &config.sites {
            let name = site.name.clone();
            match self.sites.get(&site.name) {
                None => {
                    made.push(factory.create(site, &rules).await?);
                    report.added.push(name);
                }
                Some(old)
                    if old.config == *site
                        && !limits_changed
                        && !(brokers_changed && has_broker_routes(site)) =>
                {
                    kept.push(old);
                    report.unchanged.push(name);
                }
                Some(old) => {
                    made.push(factory.update(&old, site, &rules).await?);
                    report.changed.push(name);
                }
            }
        }
        // Everything is made: from here nothing fails, and the new sites serve at once.
        let serving: BTreeSet<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
        let removed: Vec<Arc<Site>> = self
            .sites
            .all()
            .into_iter()
            .filter(|s| !serving.contains(s.config.name.as_str()))
            .collect();
        kept.extend(made.into_iter().map(|m| Arc::new(m.serve(&self.io))));
        self.sites.replace(kept);
        for site in removed {
            self.io.remove_namespace(site.namespace.name());
            crate::metrics::site_removed(&site.config.name);
            report.removed.push(site.config.name.clone());
        }
        report.removed.sort();
        if brokers_changed {
            self.bridges.set_routes(rules.brokers.statuses());
        }
        log(&report);
        *running = Running { config, rules };
        Ok(report)
    }
}

fn log(report: &ReloadReport) {
    tracing::info!(
        added = ?report.added,
        removed = ?report.removed,
        changed = ?report.changed,
        unchanged = report.unchanged.len(),
        "configuration reloaded"
    );
    if !report.restart_needed.is_empty() {
        tracing::warn!(
            settings = %report.restart_needed.join(", "),
            "these settings changed but take effect at the next restart"
        );
    }
}

/// The limits a site's handler applies, which a reload applies to every site.
fn site_limits(limits: &LimitsConfig) -> [u64; 5] {
    [
        limits.max_concurrent_auth as u64,
        limits.max_devices_per_user as u64,
        u64::from(limits.client_events_per_sec),
        limits.client_events_in_flight as u64,
        limits.max_client_event_bytes as u64,
    ]
}

fn has_broker_routes(site: &SiteConfig) -> bool {
    site.events.values().any(|route| route.broker().is_some())
}

/// Every site's routes to brokers: when they change, the broker links are made again.
fn broker_routes(config: &Config) -> Vec<(&str, &str, &crate::config::EventRoute)> {
    config
        .sites
        .iter()
        .flat_map(|site| {
            site.events
                .iter()
                .filter(|(_, route)| route.broker().is_some())
                .map(move |(event, route)| (site.name.as_str(), event.as_str(), route))
        })
        .collect()
}

/// The settings outside the sites that differ from the ones herald started with, as dotted paths (`server.redis_url`, `bridges`), less the
/// limits a reload applies.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    if old.bridges != new.bridges {
        changed.push("bridges".to_string());
    }
    if old.server != new.server {
        let (Ok(a), Ok(b)) = (
            serde_json::to_value(&old.server),
            serde_json::to_value(&new.server),
        ) else {
            return vec!["server".to_string()];
        };
        let before = changed.len();
        differences("server", &a, &b, &mut changed);
        changed.retain(|path| !LIVE_LIMITS.contains(&path.as_str()));
        if changed.len() == before
            && site_limits(&old.server.limits) == site_limits(&new.server.limits)
        {
            // Only a secret differs: it serializes masked.
            changed.push("server (a token)".to_string());
        }
    }
    changed
}

/// The limits a reload applies to the sites' handlers (`site_limits`).
const LIVE_LIMITS: [&str; 5] = [
    "server.limits.max_concurrent_auth",
    "server.limits.max_devices_per_user",
    "server.limits.client_events_per_sec",
    "server.limits.client_events_in_flight",
    "server.limits.max_client_event_bytes",
];

fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                if x != y {
                    differences(&format!("{path}.{key}"), x, y, out);
                }
            }
        }
        _ if a != b => out.push(path.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_server_settings_that_differ_less_the_live_limits() {
        let old = Config::default();
        let mut new = old.clone();
        new.server.engine.ping_interval_ms += 1;
        new.server.limits.max_payload_bytes += 1;
        new.server.limits.client_events_per_sec += 1;
        assert_eq!(
            restart_needed(&old, &new),
            [
                "server.engine.ping_interval_ms",
                "server.limits.max_payload_bytes"
            ]
        );
    }

    #[test]
    fn a_live_limit_alone_needs_no_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.server.limits.max_concurrent_auth += 1;
        assert!(restart_needed(&old, &new).is_empty());
        assert!(restart_needed(&old, &old).is_empty());
    }

    #[test]
    fn a_changed_token_is_named_without_its_value() {
        let mut old = Config::default();
        old.server.metrics_token = Some(crate::secret::Secret::new("token-aaaaaaaaaa-xy"));
        let mut new = old.clone();
        // Masked alike (the same last two characters): the JSON view cannot tell them apart.
        new.server.metrics_token = Some(crate::secret::Secret::new("token-bbbbbbbbbb-xy"));
        assert_eq!(restart_needed(&old, &new), ["server (a token)"]);
    }
}
