//! Retained state: the last arguments published to each `(room, event)` of a site, kept so that a socket that
//! joins the room later gets the current value first. The values live in the mailbox store (redb on one node,
//! Redis in a cluster), which implements [`RetainedStore`] beside `MailboxStore`.

use async_trait::async_trait;

#[cfg(test)]
pub(crate) mod contract;
mod site;

pub use site::SiteRetained;

/// One retained value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// The room it was published to.
    pub room: String,
    pub event: String,
    /// The arguments as a JSON array, exactly as published (serde_json's canonical form: object keys sorted).
    pub args: String,
    /// Unix milliseconds when it was retained.
    pub at: u64,
}

/// A site's caps on retained state: a new `(room, event)` past either is refused; replacing a kept one is
/// refused only when the new value would take the site past `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainCaps {
    /// Most `(room, event)` pairs a site keeps.
    pub max_entries: u64,
    /// Most bytes (room, event and arguments) a site's retained values take together.
    pub max_bytes: u64,
}

/// A value to retain.
#[derive(Debug, Clone, Copy)]
pub struct RetainRequest<'a> {
    pub site: &'a str,
    pub room: &'a str,
    pub event: &'a str,
    /// A JSON array in serde_json's canonical form, so equal arguments are equal bytes.
    pub args: &'a str,
    /// Unix milliseconds.
    pub at: u64,
    /// Leave the kept value (and its `at`) alone when `args` equal it.
    pub if_changed: bool,
}

/// Why retained state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RetainedError {
    /// The site holds as much retained state as its caps allow.
    #[error("site '{site}' keeps the most retained values its limits allow ({limit})")]
    Full { site: String, limit: String },
    /// The store failed; the write may not have happened.
    #[error(transparent)]
    Store(#[from] crate::mailbox::StoreError),
}

/// A store of retained values. Implementations pass the contract tests (`contract.rs`).
#[async_trait]
pub trait RetainedStore: Send + Sync + std::fmt::Debug {
    /// Keeps `request.args` as the value of its `(site, room, event)`. Answers whether the kept value changed
    /// (false when it equals the one kept before; with `if_changed` nothing is written then).
    async fn retain(
        &self,
        request: RetainRequest<'_>,
        caps: RetainCaps,
    ) -> Result<bool, RetainedError>;

    /// The values retained in each of `rooms`, room by room in the order given, each room's by event name.
    async fn rooms(&self, site: &str, rooms: &[String]) -> Result<Vec<Retained>, RetainedError>;

    /// Forgets every value retained in `room`; answers how many there were.
    async fn clear(&self, site: &str, room: &str) -> Result<usize, RetainedError>;

    /// Whether `site` retains nothing, for a store only this process writes (the embedded one): then a socket
    /// that joins needs no read until something is retained. `None` when other processes may write (Redis).
    async fn retains_nothing(&self, _site: &str) -> Result<Option<bool>, RetainedError> {
        Ok(None)
    }
}
