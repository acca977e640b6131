//! Durable per-device mailboxes: what a user's devices must get even while offline, stored behind one trait
//! (`store.rs`) with an embedded backend (`embedded.rs`, redb) and a cluster backend (`redis.rs`).

mod delivery;
pub mod embedded;
pub mod presence;
pub mod redis;
mod service;
pub mod store;

#[cfg(test)]
mod contract;

pub use presence::{Presence, PresenceTarget, PresenceUser};
pub use service::{Delivery, Mailbox};
pub use store::{
    AckOutcome, Announcements, Caps, DeviceKey, DeviceStatus, Entry, MailboxStore, NewEntry, Page,
    Queued, StoreError,
};
