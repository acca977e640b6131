//! The site registry: each configured site with its namespace, keys and rules. Cloning `Sites` is cheap.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::SiteConfig;
use crate::mailbox::Mailbox;
use crate::secret::Secret;
use crate::socketio::Namespace;

/// Who a connected client is, attached to its socket when the site let it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub user: Option<String>,
    pub device_id: Option<String>,
    /// The user's room (`user_42`), which names the user's mailboxes; on sites with a user-room prefix.
    pub user_room: Option<String>,
    /// The client's token, for `updateUserUrl` calls made on its behalf.
    pub token: Option<Secret>,
    /// What the socket may still emit (`client_events_per_sec`, `client_events_in_flight`).
    pub events: crate::events::Budget,
    /// The mailbox entry a plain client's `Last-Event-ID` names: entries up to it count as acked.
    pub acked_through: Option<u64>,
}

/// One site: its configuration, its namespace, and its mailboxes when it keeps them.
#[derive(Debug)]
pub struct Site {
    pub config: SiteConfig,
    pub namespace: Arc<Namespace>,
    /// Present when the site has a user-room prefix and a device TTL above 0.
    pub mailbox: Option<Arc<Mailbox>>,
    /// Connection-state recovery, unless the site's window is 0.
    pub(crate) recovery: Option<Arc<crate::recovery::SiteRecovery>>,
    /// The last value of each `(room, event)` published with `retain`.
    pub retained: Arc<crate::retained::SiteRetained>,
    /// The site's metric handles, made once.
    pub metrics: Arc<crate::metrics::SiteMetrics>,
}

impl Site {
    /// Whether publishes to `room` go through mailboxes (user and shared rooms) rather than a live broadcast:
    /// the public channel and socket ids are live only.
    pub fn is_mailboxed(&self, room: &str) -> bool {
        self.mailbox.is_some()
            && self.config.public_channel.as_deref() != Some(room)
            && self.namespace.socket(room).is_none()
    }

    /// Which of a socket's rooms are shared rooms of this site.
    pub fn room_filter(&self) -> RoomFilter {
        RoomFilter::for_site(&self.config)
    }

    /// The user room `room` names, if it is one.
    pub fn user_room<'a>(&self, room: &'a str) -> Option<&'a str> {
        let prefix = self
            .config
            .user_room_prefix
            .as_deref()
            .filter(|p| !p.is_empty())?;
        room.starts_with(prefix).then_some(room)
    }

    /// Joins `socket` to `rooms` (the API, the emitter, an event route's answer); it gets what they retain
    /// before any later live packet. Call [`Site::rooms_changed`] after.
    pub fn join(&self, socket: &Arc<crate::socketio::Socket>, rooms: &[String]) {
        self.retained.join(socket, rooms);
    }

    /// Records `socket`'s rooms after they changed (the API's join and leave, the emitter's `socketsJoin` and
    /// `socketsLeave`): in its recovery record, so a client that comes back after its node died gets them back,
    /// and its shared rooms in the index that publishes to those rooms expand through (on a site with
    /// mailboxes, for a socket with a user).
    pub async fn rooms_changed(
        &self,
        socket: &crate::socketio::Socket,
    ) -> Result<(), crate::mailbox::StoreError> {
        if let Some(recovery) = &self.recovery {
            recovery.remember(socket).await;
        }
        let info = socket.data::<ClientInfo>();
        let (Some(mailbox), Some(user)) =
            (&self.mailbox, info.and_then(|i| i.user_room.as_deref()))
        else {
            return Ok(());
        };
        let device = info
            .and_then(|i| i.device_id.as_deref())
            .unwrap_or_default();
        let key = crate::mailbox::DeviceKey::new(&self.config.name, user, device);
        let rooms = self.room_filter().shared_rooms(socket);
        mailbox.store().connect(&key, &rooms).await
    }

    /// Whether `key` is one of the site's API keys, compared in constant time.
    pub fn accepts_key(&self, key: &str) -> bool {
        // Check every key, so the time taken does not tell which one nearly matched.
        self.config
            .api_keys
            .iter()
            .fold(false, |found, k| k.matches(key) | found)
    }
}

/// A socket as the API lists it and backends hear of it: `{id, user, deviceId, rooms}`.
pub fn describe_socket(socket: &crate::socketio::Socket) -> serde_json::Value {
    let info = socket.data::<ClientInfo>();
    serde_json::json!({
        "id": socket.id(),
        "user": info.and_then(|i| i.user.as_deref()),
        "deviceId": info.and_then(|i| i.device_id.as_deref()),
        "rooms": socket.rooms(),
    })
}

/// Tells a socket's shared rooms (the ones a publish expands to users) from its id, user rooms and public channel.
#[derive(Debug, Clone, Default)]
pub struct RoomFilter {
    pub user_prefix: String,
    pub public: Option<String>,
}

impl RoomFilter {
    pub fn for_site(site: &SiteConfig) -> Self {
        RoomFilter {
            user_prefix: site.user_room_prefix.clone().unwrap_or_default(),
            public: site.public_channel.clone(),
        }
    }

    /// `socket`'s shared rooms.
    pub fn shared_rooms(&self, socket: &crate::socketio::Socket) -> Vec<String> {
        let rooms = socket.rooms();
        self.shared(rooms.get(1..).unwrap_or_default())
    }

    /// The shared rooms among `rooms` (which hold no socket id).
    pub fn shared(&self, rooms: &[String]) -> Vec<String> {
        rooms
            .iter()
            .filter(|r| {
                let user_room = !self.user_prefix.is_empty() && r.starts_with(&self.user_prefix);
                !(user_room || self.public.as_ref() == Some(*r))
            })
            .cloned()
            .collect()
    }
}

/// Every site by name. Clones share one registry, which a reload swaps whole (`replace`): a reader sees the
/// sites before or after, never half of a change.
#[derive(Debug, Clone, Default)]
pub struct Sites {
    by_name: Arc<ArcSwap<HashMap<String, Arc<Site>>>>,
}

impl Sites {
    pub fn new(sites: impl IntoIterator<Item = Site>) -> Self {
        let by_name = sites.into_iter().map(Arc::new).map(by_name).collect();
        Sites {
            by_name: Arc::new(ArcSwap::from_pointee(by_name)),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Site>> {
        self.by_name.load().get(name).cloned()
    }

    /// The sites as they are now.
    pub fn all(&self) -> Vec<Arc<Site>> {
        self.by_name.load().values().cloned().collect()
    }

    /// Puts `sites` in place of every site, for every clone.
    pub(crate) fn replace(&self, sites: impl IntoIterator<Item = Arc<Site>>) {
        self.by_name
            .store(Arc::new(sites.into_iter().map(by_name).collect()));
    }
}

fn by_name(site: Arc<Site>) -> (String, Arc<Site>) {
    (site.config.name.clone(), site)
}
