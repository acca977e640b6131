//! One site's retained state over the store: kept by publishes, handed to sockets that join a room before any
//! later live packet, read and cleared through the API and the `retained: true` event route.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald_protocol::engineio::OutFrame;
use serde_json::Value;

use super::{RetainCaps, RetainRequest, Retained, RetainedError, RetainedStore};
use crate::socketio::{self, Missed, PendingCatchUp, Socket};

/// A site's retained state.
#[derive(Debug)]
pub struct SiteRetained {
    site: String,
    /// The site's namespace, which the frames of retained events name.
    nsp: String,
    store: Arc<dyn RetainedStore>,
    caps: RetainCaps,
    /// Set while the site is known to retain nothing (a store only this process writes): joins read nothing.
    /// Cleared by the first retain, never set again (a clear may leave other rooms' values).
    empty: AtomicBool,
}

impl SiteRetained {
    /// The site's retained state, asking the store whether it is known to hold none.
    pub async fn open(
        site: &str,
        store: Arc<dyn RetainedStore>,
        caps: RetainCaps,
    ) -> Result<Self, RetainedError> {
        let empty = store.retains_nothing(site).await?.unwrap_or(false);
        Ok(SiteRetained {
            site: site.to_string(),
            nsp: format!("/{site}"),
            store,
            caps,
            empty: AtomicBool::new(empty),
        })
    }

    /// Keeps `args` as the value of `(room, event)` in each of `rooms`; answers the rooms whose value changed.
    /// With `if_changed`, a room whose value is equal is left alone.
    pub async fn keep(
        &self,
        rooms: &[String],
        event: &str,
        args: &[Value],
        if_changed: bool,
    ) -> Result<Vec<String>, RetainedError> {
        // serde_json writes object keys sorted: equal arguments are equal text.
        let args = serde_json::to_string(args).unwrap_or_else(|_| "[]".into());
        let at = crate::mailbox::store::now_ms();
        // Cleared before the write: a join that reads after it must not skip the read.
        self.empty.store(false, Ordering::Release);
        let mut changed = Vec::with_capacity(rooms.len());
        for room in rooms {
            let request = RetainRequest {
                site: &self.site,
                room,
                event,
                args: &args,
                at,
                if_changed,
            };
            match self.store.retain(request, self.caps).await {
                Ok(true) => changed.push(room.clone()),
                Ok(false) => {}
                Err(full @ RetainedError::Full { .. }) => {
                    crate::limits::Limit::Retained.hit();
                    return Err(full);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    /// Every value retained in `room`, by event name.
    pub async fn list(&self, room: &str) -> Result<Vec<Retained>, RetainedError> {
        self.store.rooms(&self.site, &[room.to_string()]).await
    }

    /// The value retained for `event` in `room`.
    pub async fn get(&self, room: &str, event: &str) -> Result<Option<Retained>, RetainedError> {
        Ok(self
            .list(room)
            .await?
            .into_iter()
            .find(|r| r.event == event))
    }

    /// Forgets what `room` retains; answers how many values it held.
    pub async fn clear(&self, room: &str) -> Result<usize, RetainedError> {
        self.store.clear(&self.site, room).await
    }

    /// The retained events of `rooms`, ready to send, read when the future runs; `None` when the site is known
    /// to retain nothing. A store that fails sends nothing: the socket stays connected and gets live packets.
    pub fn first_for(self: &Arc<Self>, rooms: Vec<String>) -> Option<PendingCatchUp> {
        if rooms.is_empty() || self.empty.load(Ordering::Acquire) {
            return None;
        }
        let this = Arc::clone(self);
        Some(Box::pin(async move {
            match this.store.rooms(&this.site, &rooms).await {
                Ok(values) => values.iter().filter_map(|v| this.frames(v)).collect(),
                Err(e) => {
                    tracing::warn!(site = %this.site, error = %e, "could not read retained state for a socket that joined");
                    Vec::new()
                }
            }
        }))
    }

    /// Joins `socket` to `rooms` and sends it what they retain before any live packet that reaches it from
    /// then on.
    pub fn join(self: &Arc<Self>, socket: &Arc<Socket>, rooms: &[String]) {
        // Held before the join, so nothing published after it overtakes the values read.
        let hold = self
            .first_for(rooms.to_vec())
            .map(|first| (socket.hold(), first));
        for room in rooms {
            socket.join(room);
        }
        let Some((hold, first)) = hold else {
            return;
        };
        let socket = Arc::clone(socket);
        tokio::spawn(async move {
            let first = first.await;
            socket.release(hold, first);
        });
    }

    /// A retained value as the event packet a client gets.
    fn frames(&self, retained: &Retained) -> Option<Missed> {
        let args: Vec<Value> = serde_json::from_str(&retained.args).ok()?;
        let (text, _) = socketio::encode_event(&self.nsp, &retained.event, &args, &[]).ok()?;
        Some(Missed {
            offset: None,
            frames: vec![OutFrame::Text(text)],
        })
    }
}
