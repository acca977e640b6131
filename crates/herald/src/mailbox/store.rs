//! The storage trait every mailbox backend implements (embedded redb, Redis), and the types it speaks.
//!
//! A mailbox belongs to one device of one user of one site. Entries get increasing offsets per device; acks are
//! cumulative ("everything through offset N arrived"). Every write is durable when its future resolves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

/// Longest site, user or device name a store accepts; longer ones are refused before they reach a key.
pub const MAX_NAME_BYTES: usize = 256;

/// One device's mailbox: `user` is the user's room (`user_42`), `device` the client's `deviceId` (may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceKey {
    pub site: String,
    pub user: String,
    pub device: String,
}

impl DeviceKey {
    pub fn new(site: &str, user: &str, device: &str) -> Self {
        DeviceKey {
            site: site.into(),
            user: user.into(),
            device: device.into(),
        }
    }
}

/// Whether `name` may be a site, user, room or device name in a store key: not too long, no control characters.
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

/// A message to append: `payload` is the JSON array `[event, ...args]` exactly as delivered.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub event: &'a str,
    pub payload: &'a [u8],
    /// crossroads' `resync=true`: an ack that skips an older pending entry of the same event asks for `_resync`.
    pub resync: bool,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub event: String,
    pub payload: Bytes,
    pub resync: bool,
}

/// Per-device caps: appending past either drops the oldest entries and marks the mailbox overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_entries: u64,
    pub max_bytes: u64,
}

/// One append landed in one device's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Index into the `users` the append was given.
    pub user: usize,
    pub device: String,
    pub offset: u64,
}

/// A page of a mailbox, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Entries were dropped by a cap since the last `reset`: the client must resync before anything else.
    pub overflowed: bool,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    Acked,
    /// An older entry of the acked event was still pending: that event's entries were cleared, send `_resync`.
    Resync,
}

/// A device of a user, as the pending-counts API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub device: String,
    pub connected: bool,
    pub pending: u64,
    pub bytes: u64,
    pub overflowed: bool,
    /// Unix milliseconds when the mailbox expires; `None` while connected.
    pub expires_at_ms: Option<u64>,
}

/// A store failed; the operation may not have happened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mailbox store: {0}")]
    Embedded(String),
    #[error("mailbox store (Redis): {0}")]
    Redis(String),
    #[error("mailbox store: a stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("mailbox store is shut down")]
    Closed,
    /// The disk under the embedded store is full; writes fail until space returns.
    #[error("mailbox store: the disk is full")]
    DiskFull,
    /// The store took longer than `store_timeout_ms`; the operation may still happen.
    #[error("mailbox store did not answer within {0} ms")]
    TimedOut(u64),
    #[error("'{0}' cannot be a mailbox name: at most 256 bytes, no control characters")]
    BadName(String),
}

impl StoreError {
    /// Why the store failed, in words a publisher may see: no path, host or internal detail.
    pub fn public_reason(&self) -> &'static str {
        match self {
            StoreError::DiskFull => "the disk is full",
            StoreError::TimedOut(_) => "it did not answer in time",
            StoreError::Redis(_) => "Redis failed",
            StoreError::Embedded(_) => "its file could not be read or written",
            StoreError::Corrupt(_) => "a stored record is corrupt",
            StoreError::Closed => "it is shutting down",
            StoreError::BadName(_) => "a name is not valid",
        }
    }
}

/// A mailbox backend. Implementations pass the same contract tests (`contract.rs`).
#[async_trait]
pub trait MailboxStore: Send + Sync + 'static {
    /// `key`'s device is connected: its mailbox stops expiring, and its user belongs to the shared `rooms`.
    async fn connect(&self, key: &DeviceKey, rooms: &[String]) -> Result<(), StoreError>;

    /// `key`'s device disconnected: its mailbox (and registration) expire after `ttl` unless it connects again.
    async fn disconnect(&self, key: &DeviceKey, ttl: Duration) -> Result<(), StoreError>;

    /// Appends `entry` to the mailbox of every unexpired device of each of `users`; durable when it returns.
    async fn append(
        &self,
        site: &str,
        users: &[String],
        entry: NewEntry<'_>,
        caps: Caps,
    ) -> Result<Vec<Queued>, StoreError>;

    /// Up to `max_entries` entries after offset `after`, and at most `max_bytes` of payload (at least one entry).
    async fn read(
        &self,
        key: &DeviceKey,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError>;

    /// Removes every entry through `through`. With `resync_event`, if an older entry of that event is pending,
    /// clears that event's entries instead of only acking and answers `Resync`.
    async fn ack(
        &self,
        key: &DeviceKey,
        through: u64,
        resync_event: Option<&str>,
    ) -> Result<AckOutcome, StoreError>;

    /// Empties the mailbox and clears its overflow mark (the client is resyncing from the backend).
    async fn reset(&self, key: &DeviceKey) -> Result<(), StoreError>;

    /// Users of `site` whose devices joined shared `room` (case-insensitive, as crossroads matches).
    async fn users_in_room(&self, site: &str, room: &str) -> Result<Vec<String>, StoreError>;

    /// `user`'s unexpired devices with their pending counts.
    async fn devices(&self, site: &str, user: &str) -> Result<Vec<DeviceStatus>, StoreError>;

    /// Deletes expired mailboxes; returns how many. Stores whose keys expire on their own return 0.
    async fn sweep(&self) -> Result<usize, StoreError>;

    /// Tells every node sharing this store that `user` of `site` has new entries. A no-op for one-node stores.
    async fn announce(&self, _site: &str, _user: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Announcements from every node sharing this store (this one included), as `(site, user)`; `None` for
    /// one-node stores. Called once at start; the store keeps the subscription alive across reconnects.
    async fn subscribe(&self) -> Result<Option<Announcements>, StoreError> {
        Ok(None)
    }
}

/// A stream of `(site, user)` announcements from other nodes.
pub type Announcements = tokio::sync::mpsc::Receiver<(String, String)>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
