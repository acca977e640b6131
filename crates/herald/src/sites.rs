//! The site registry: each configured site with its namespace, keys and rules. Cloning `Sites` is cheap.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::SiteConfig;
use crate::socketio::Namespace;

/// Who a connected client is, attached to its socket when the site let it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub user: Option<String>,
    pub device_id: Option<String>,
}

/// One site: its configuration and its namespace.
#[derive(Debug)]
pub struct Site {
    pub config: SiteConfig,
    pub namespace: Arc<Namespace>,
}

impl Site {
    /// Whether `key` is one of the site's API keys, compared in constant time.
    pub fn accepts_key(&self, key: &str) -> bool {
        // Check every key, so the time taken does not tell which one nearly matched.
        self.config
            .api_keys
            .iter()
            .fold(false, |found, k| k.matches(key) | found)
    }
}

/// Every site by name.
#[derive(Debug, Clone, Default)]
pub struct Sites {
    by_name: Arc<HashMap<String, Arc<Site>>>,
}

impl Sites {
    pub fn new(sites: impl IntoIterator<Item = Site>) -> Self {
        let by_name = sites
            .into_iter()
            .map(|s| (s.config.name.clone(), Arc::new(s)))
            .collect();
        Sites {
            by_name: Arc::new(by_name),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Site>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Site>> {
        self.by_name.values()
    }
}
