//! Durable per-device mailboxes: what a user's devices must get even while offline, stored behind one trait
//! (`store.rs`) with an embedded backend (`embedded.rs`, redb) and a cluster backend (`redis.rs`).

pub mod embedded;
pub mod redis;
pub mod store;

#[cfg(test)]
mod contract;

pub use store::{
    AckOutcome, Announcements, Caps, DeviceKey, DeviceStatus, Entry, MailboxStore, NewEntry, Page,
    Queued, StoreError,
};
