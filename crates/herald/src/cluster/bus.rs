//! The bus trait: what carries a broadcast from the node that took it to every other node, and keeps the
//! recovery log (connection-state recovery) of each site.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// A logged packet's place in its site's recovery log: `<ms>-<seq>`, ordered as the log is (a Redis stream id
/// on Redis). Clients echo the last one they saw when they come back.
pub type Offset = Arc<str>;

/// One broadcast as it travels between nodes: who it reaches and the socket.io packet, encoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// The node that took the publish.
    pub origin: Arc<str>,
    pub site: String,
    /// Rooms (socket ids count as rooms) to reach; empty reaches every socket of the site.
    pub rooms: Vec<String>,
    /// Rooms (or socket ids) to leave out.
    pub except: Vec<String>,
    /// Skip clients that are behind; never logged.
    pub volatile: bool,
    /// The packet's text frame (`42/site,["event",...]`, or `45N-…` with attachments), without an offset.
    pub text: Bytes,
    /// Binary attachments, in order.
    pub binaries: Vec<Bytes>,
    /// Set when the packet is in the site's recovery log: clients that can recover get it as the last argument.
    pub offset: Option<Offset>,
}

/// The bus or its log cannot be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("the cluster bus is unavailable: {0}")]
    Unavailable(String),
    #[error("the cluster bus did not answer in time")]
    TimedOut,
}

impl BusError {
    /// The reason to give an outside caller (no internals).
    pub fn public_reason(&self) -> &'static str {
        match self {
            BusError::Unavailable(_) => "the cluster bus (Redis) is unavailable",
            BusError::TimedOut => "the cluster bus (Redis) did not answer in time",
        }
    }
}

/// Carries broadcasts between nodes and keeps each site's recovery log.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends `broadcast` to its site's recovery log when `window` is given (entries older than the window may
    /// go), then carries it to every other node; returns the offset it was logged at. One step: a packet is
    /// never carried without being logged, nor logged without being carried.
    async fn send(
        &self,
        broadcast: &Broadcast,
        window: Option<Duration>,
    ) -> Result<Option<Offset>, BusError>;

    /// The logged packets of `site` after `offset`, oldest first; `None` when the log no longer reaches back to
    /// `offset` (or never held it), so recovery is impossible.
    async fn since(&self, site: &str, offset: &str) -> Result<Option<Vec<Broadcast>>, BusError>;

    /// Broadcasts from other nodes, for `run_receiver`; `None` for a bus that reaches no other node.
    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Broadcast>>, BusError>;
}
