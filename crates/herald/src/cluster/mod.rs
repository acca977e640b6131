//! The cluster: this node's identity, and the bus that carries every broadcast to the other nodes on the same
//! Redis. Without Redis herald is one node and the embedded bus only keeps the recovery log.
//!
//! Who fans out: the node that takes a publish fans it out to its own sockets at once; the bus carries it to
//! the others, which fan it out from what the bus delivers (`run_receiver`) and skip their own messages.

pub mod bus;
pub mod embedded;
pub mod forward;
pub mod peers;
pub mod redis;
pub mod redis_sessions;
pub mod registry;
pub mod sessions;
pub mod wire;

use std::sync::Arc;

pub use bus::{Broadcast, Bus, BusError, Offset};
pub use sessions::{SavedSocket, SessionStore};

/// A setting of each site, looked up by site name when a reaper needs it, so a reload's sites count.
pub type PerSite<T> = Box<dyn Fn(&str) -> Option<T> + Send + Sync>;

/// Length of a node id; every Engine.IO sid this node issues starts with it, so any node can tell which node
/// holds a session.
pub const NODE_ID_LEN: usize = 8;

/// A fresh node id: `NODE_ID_LEN` URL-safe characters.
pub fn new_node_id() -> Arc<str> {
    use base64::Engine as _;
    let bytes: [u8; 6] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(bytes)
        .into()
}

/// Where the live nodes are, as this node last heard (the node registry in a cluster).
pub trait Directory: Send + Sync + 'static {
    /// The URL node `id` is reached at, if it is alive.
    fn url_of(&self, id: &str) -> Option<String>;
    /// Every live node but this one: (id, URL).
    fn peers(&self) -> Vec<(Arc<str>, String)>;
    /// `url_of`, asking the registry itself when the view does not know `id` (a node that started since the
    /// last heartbeat). The default knows only the view.
    fn resolve<'a>(&'a self, id: &'a str) -> futures_util::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move { self.url_of(id) })
    }
}

/// The directory of a node alone: it knows no peer.
#[derive(Debug, Default)]
pub struct Alone;

impl Directory for Alone {
    fn url_of(&self, _id: &str) -> Option<String> {
        None
    }

    fn peers(&self) -> Vec<(Arc<str>, String)> {
        Vec::new()
    }
}

/// This node in its cluster.
pub struct Cluster {
    /// This node's id.
    pub node: Arc<str>,
    /// The URL its peers reach it at.
    pub url: String,
    pub bus: Arc<dyn Bus>,
    pub directory: Arc<dyn Directory>,
    /// Connection-state recovery sessions.
    pub sessions: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// One node without Redis: the embedded bus, which reaches no other node.
    pub fn single(url: String, max_logged: usize) -> Self {
        Cluster {
            node: new_node_id(),
            url,
            bus: Arc::new(embedded::EmbeddedBus::new(max_logged)),
            directory: Arc::new(Alone),
            sessions: Arc::new(sessions::MemorySessions::default()),
        }
    }

    /// Node `node` among the nodes `directory` knows, without Redis: the embedded bus (broadcasts stay on the
    /// node that took them), but requests for another node's sessions are forwarded. For tests and benches.
    pub fn with_directory(
        node: Arc<str>,
        url: String,
        directory: Arc<dyn Directory>,
        max_logged: usize,
    ) -> Self {
        Cluster {
            node,
            url,
            bus: Arc::new(embedded::EmbeddedBus::new(max_logged)),
            directory,
            sessions: Arc::new(sessions::MemorySessions::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_have_a_fixed_length_and_url_safe_characters() {
        let id = new_node_id();
        assert_eq!(id.len(), NODE_ID_LEN);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
