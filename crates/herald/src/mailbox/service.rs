//! The mailbox service: appends publishes to device mailboxes, wakes the delivery tasks of devices connected to
//! this node, and hears other nodes' appends through the store's announcements.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::delivery::{self, Wake};
use super::store::{
    Caps, DeviceKey, DeviceStatus, Entry, MailboxStore, NewEntry, Page, StoreError,
};
use crate::config::MailboxSettings;
use crate::sites::RoomFilter;
use crate::socketio::Socket;

/// Wake-ups one delivery task may have waiting; beyond, wakes are dropped and the task reads the store.
const WAKE_QUEUE: usize = 256;

/// What one publish did to mailboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Mailbox entries written (one per device).
    pub queued: usize,
    /// Of those, how many went straight to a device connected to this node.
    pub online: usize,
}

/// A delivery task of a device connected here.
struct Link {
    socket_id: Arc<str>,
    wake: mpsc::Sender<Wake>,
}

/// The mailbox service of this node. One per process, shared by every site.
pub struct Mailbox {
    store: Arc<dyn MailboxStore>,
    settings: MailboxSettings,
    /// Whether other nodes share the store (it announces their appends).
    shared: bool,
    /// Delivery tasks by (site, user), then device.
    links: Mutex<HashMap<(String, String), HashMap<String, Link>>>,
    /// In a cluster, the node's record of the devices connected here, which a survivor marks disconnected if
    /// this node dies.
    records: std::sync::OnceLock<crate::cluster::registry::NodeRecords>,
    /// Entries the delivery tasks here sent and have not seen acked yet, summed over the tasks
    /// (`herald_mailbox_pending`).
    pub(super) unacked: AtomicU64,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Mailbox {
    /// The service over `store`; starts the sweeper and, for shared stores, the announcement listener.
    pub async fn start(
        store: Arc<dyn MailboxStore>,
        settings: MailboxSettings,
    ) -> Result<Arc<Self>, StoreError> {
        let announcements = store.subscribe().await?;
        let mailbox = Arc::new(Mailbox {
            store,
            settings,
            shared: announcements.is_some(),
            links: Mutex::new(HashMap::new()),
            records: std::sync::OnceLock::new(),
            unacked: AtomicU64::new(0),
        });
        tokio::spawn(sweeper(Arc::downgrade(&mailbox)));
        if let Some(mut announcements) = announcements {
            let weak = Arc::downgrade(&mailbox);
            tokio::spawn(async move {
                while let Some((site, user)) = announcements.recv().await {
                    let Some(mailbox) = weak.upgrade() else { break };
                    mailbox.wake_user(&site, &user);
                }
            });
        }
        Ok(mailbox)
    }

    /// Keeps this node's record of connected devices in `records` (a cluster's node registry).
    pub fn record_devices(&self, records: crate::cluster::registry::NodeRecords) {
        let _ = self.records.set(records);
    }

    /// A delivery task of `key` ended, after marking the device disconnected unless another socket took over.
    pub(super) fn delivery_ended(&self, key: &DeviceKey) {
        if let Some(records) = self.records.get() {
            records.device_detached(key);
        }
    }

    /// Mailbox entries sent to the devices connected to this node and not acknowledged yet.
    pub fn unacked(&self) -> u64 {
        self.unacked.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<dyn MailboxStore> {
        &self.store
    }

    /// Whether other nodes share the store.
    pub fn shared(&self) -> bool {
        self.shared
    }

    pub fn settings(&self) -> &MailboxSettings {
        &self.settings
    }

    fn caps(&self) -> Caps {
        Caps {
            max_entries: self.settings.max_entries,
            max_bytes: self.settings.max_bytes,
        }
    }

    /// Starts delivering `key`'s mailbox to `socket`, which just connected; `rooms` tells its shared rooms, and
    /// `delivered` counts the entries sent.
    pub fn attach(
        self: &Arc<Self>,
        socket: Arc<Socket>,
        key: DeviceKey,
        rooms: RoomFilter,
        ttl: Duration,
        delivered: metrics::Counter,
    ) {
        if let Some(records) = self.records.get() {
            records.device_attached(&key);
        }
        let (wake, wakes) = mpsc::channel(WAKE_QUEUE);
        let link = Link {
            socket_id: Arc::from(socket.id()),
            wake,
        };
        // Registered before the task reads anything, so no append between its read and its wait is missed.
        self.links
            .lock()
            .entry((key.site.clone(), key.user.clone()))
            .or_default()
            .insert(key.device.clone(), link);
        let task = delivery::Task {
            mailbox: Arc::clone(self),
            socket,
            key,
            rooms,
            ttl,
            wakes,
            delivered,
            unacked: delivery::Unacked::default(),
        };
        tokio::spawn(task.run());
    }

    /// `socket` left: its delivery task ends (and marks the device disconnected) once its wakes are gone.
    pub fn detach(&self, key: &DeviceKey, socket_id: &str) {
        let mut links = self.links.lock();
        let user = (key.site.clone(), key.user.clone());
        if let Some(devices) = links.get_mut(&user) {
            if devices
                .get(&key.device)
                .is_some_and(|l| &*l.socket_id == socket_id)
            {
                devices.remove(&key.device);
            }
            if devices.is_empty() {
                links.remove(&user);
            }
        }
    }

    /// Whether a socket other than `socket_id` now delivers `key` on this node (a quick reconnect).
    pub(super) fn replaced(&self, key: &DeviceKey, socket_id: &str) -> bool {
        self.links
            .lock()
            .get(&(key.site.clone(), key.user.clone()))
            .and_then(|devices| devices.get(&key.device))
            .is_some_and(|l| &*l.socket_id != socket_id)
    }

    /// Appends `[event, ...args]` (`payload`) to every device of `users` and wakes the ones connected here.
    pub async fn deliver(
        &self,
        site: &str,
        users: &[String],
        event: &str,
        payload: &[u8],
        resync: bool,
    ) -> Result<Delivery, StoreError> {
        if users.is_empty() {
            return Ok(Delivery::default());
        }
        let entry = NewEntry {
            event,
            payload,
            resync,
        };
        let queued = self
            .bounded(self.store.append(site, users, entry, self.caps()))
            .await?;
        let mut delivery = Delivery {
            queued: queued.len(),
            online: 0,
        };
        let payload = bytes::Bytes::copy_from_slice(payload);
        let mut announced = vec![false; users.len()];
        {
            let links = self.links.lock();
            // One lookup per user, not per device.
            let local: Vec<_> = users
                .iter()
                .map(|user| links.get(&(site.to_string(), user.clone())))
                .collect();
            for q in &queued {
                match local[q.user].and_then(|devices| devices.get(&q.device)) {
                    Some(link) => {
                        let entry = Entry {
                            offset: q.offset,
                            event: event.to_string(),
                            payload: payload.clone(),
                            resync,
                        };
                        // A full queue means the task is behind; it reads the store when it catches up.
                        if link.wake.try_send(Wake::Entry(entry)).is_ok() {
                            delivery.online += 1;
                        }
                    }
                    None => announced[q.user] = true,
                }
            }
        }
        if self.shared {
            for (user, _) in users.iter().zip(&announced).filter(|(_, a)| **a) {
                if let Err(e) = self.store.announce(site, user).await {
                    tracing::warn!(error = %e, "could not announce a mailbox append to other nodes");
                }
            }
        }
        Ok(delivery)
    }

    /// `operation`, or `TimedOut` after `store_timeout_ms`: a publish answers 503 rather than hang on a store
    /// that is down.
    async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.settings.store_timeout_ms;
        tokio::time::timeout(Duration::from_millis(limit), operation)
            .await
            .unwrap_or_else(|_| {
                crate::limits::Limit::StoreTimeout.hit();
                Err(StoreError::TimedOut(limit))
            })
    }

    /// Wakes every delivery task of `user` on this node to read its mailbox.
    fn wake_user(&self, site: &str, user: &str) {
        let links = self.links.lock();
        if let Some(devices) = links.get(&(site.to_string(), user.to_string())) {
            for link in devices.values() {
                let _ = link.wake.try_send(Wake::Poll);
            }
        }
    }

    /// Users of `site` who joined shared `room`.
    pub async fn users_in_room(&self, site: &str, room: &str) -> Result<Vec<String>, StoreError> {
        self.bounded(self.store.users_in_room(site, room)).await
    }

    /// `user`'s devices and what each has pending.
    pub async fn devices(&self, site: &str, user: &str) -> Result<Vec<DeviceStatus>, StoreError> {
        self.bounded(self.store.devices(site, user)).await
    }

    /// The oldest `max_entries` entries `key` has pending (at most `max_bytes` of payload), without acking
    /// anything: what the admin console shows of a device's mailbox.
    pub async fn pending(
        &self,
        key: &DeviceKey,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        self.bounded(self.store.read(key, 0, max_entries, max_bytes))
            .await
    }
}

/// Deletes expired mailboxes every `sweep_interval_ms` while the service lives.
async fn sweeper(mailbox: std::sync::Weak<Mailbox>) {
    let interval = match mailbox.upgrade() {
        Some(m) => Duration::from_millis(m.settings.sweep_interval_ms),
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(mailbox) = mailbox.upgrade() else {
            return;
        };
        match mailbox.store.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(mailboxes = n, "expired device mailboxes deleted"),
            Err(e) => tracing::warn!(error = %e, "mailbox sweep failed"),
        }
    }
}
