//! Connection-state recovery of the sites (socket.io 4.6+ clients): a socket's record is saved while it lives,
//! kept for the site's window when its connection drops, and a client that comes back with its `pid` and last
//! offset, on any node, gets its id, rooms and every logged packet it missed, once and in order.
//!
//! Mailbox entries are not in the log: they are sent with acks and keep their own guarantee. The log holds the
//! live broadcasts (public channel, `all`, socket ids, sites without mailboxes); `volatile` ones never.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{Cluster, SavedSocket};
use crate::config::SiteConfig;
use crate::publish::missed_by;
use crate::sites::ClientInfo;
use crate::socketio::{PendingCatchUp, Recovery, Resumed, Socket};

/// Disconnect reasons a client may recover from: its connection went, not the socket.
const RECOVERABLE: &[&str] = &[
    "transport close",
    "transport error",
    "ping timeout",
    "forced close",
];

/// Recovery for one site; absent when its window is 0.
#[derive(Debug)]
pub(crate) struct SiteRecovery {
    site: String,
    window: Duration,
    cluster: Arc<Cluster>,
}

/// What a coming-back client showed in its CONNECT's `auth`.
pub(crate) struct Comeback {
    pub(crate) pid: String,
    pub(crate) offset: String,
}

impl Comeback {
    /// The `pid` and `offset` a socket.io client sends when it tries to recover.
    pub(crate) fn from_auth(auth: Option<&Value>) -> Option<Self> {
        let field = |key: &str| {
            auth?
                .get(key)?
                .as_str()
                .filter(|v| !v.is_empty() && v.len() <= 64)
                .map(str::to_string)
        };
        Some(Comeback {
            pid: field("pid")?,
            offset: field("offset")?,
        })
    }
}

/// A fresh private session id: 16 random bytes, URL-safe.
fn new_pid() -> String {
    crate::engine::new_sid("").into()
}

impl SiteRecovery {
    pub(crate) fn new(site: &SiteConfig, cluster: &Arc<Cluster>) -> Option<Self> {
        (site.recovery_window_ms > 0).then(|| SiteRecovery {
            site: site.name.clone(),
            window: Duration::from_millis(site.recovery_window_ms),
            cluster: Arc::clone(cluster),
        })
    }

    /// Recovery for a socket that starts afresh.
    pub(crate) fn fresh() -> Recovery {
        Recovery {
            pid: new_pid(),
            resumed: None,
        }
    }

    /// Takes back the socket `comeback` names, when it is `user`'s and the log still reaches back to its
    /// offset: the recovery to answer with and the socket's rooms. Anything else starts afresh.
    pub(crate) async fn resume(
        &self,
        comeback: &Comeback,
        user: Option<&str>,
    ) -> Option<(Recovery, Vec<String>)> {
        let taken = self.cluster.sessions.take(&self.site, &comeback.pid).await;
        let saved = match taken {
            Ok(Some(saved)) if saved.user.as_deref() == user => saved,
            Ok(Some(_)) => {
                tracing::info!(site = %self.site, "refused a recovery: the session belongs to another user");
                return None;
            }
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(site = %self.site, error = %e, "cannot read a recovery session; the client starts afresh");
                return None;
            }
        };
        let logged = match self.cluster.bus.since(&self.site, &comeback.offset).await {
            Ok(Some(logged)) => logged,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(site = %self.site, error = %e, "cannot read the recovery log; the client starts afresh");
                return None;
            }
        };
        let mut rooms = vec![saved.id.clone()];
        rooms.extend(saved.rooms.iter().cloned());
        let missed = missed_by(&rooms, &logged);
        // Catch up from the newest packet read, whether or not it reached this socket.
        let after = logged
            .last()
            .and_then(|b| b.offset.as_deref())
            .unwrap_or(&comeback.offset)
            .to_string();
        let recovery = Recovery {
            pid: comeback.pid.clone(),
            resumed: Some(Resumed {
                id: saved.id,
                missed,
                after,
            }),
        };
        Some((recovery, saved.rooms))
    }

    fn saved(socket: &Socket) -> SavedSocket {
        let rooms = socket.rooms();
        SavedSocket {
            id: socket.id().to_string(),
            rooms: rooms.get(1..).unwrap_or_default().to_vec(),
            user: socket.data::<ClientInfo>().and_then(|i| i.user.clone()),
        }
    }

    /// Records a live socket, at connect and when its rooms change.
    pub(crate) async fn remember(&self, socket: &Socket) {
        let Some(pid) = socket.pid() else { return };
        let saved = Self::saved(socket);
        if let Err(e) = self.cluster.sessions.save(&self.site, pid, &saved).await {
            tracing::warn!(site = %self.site, error = %e, "cannot save a recovery session");
        }
    }

    /// Spawns `remember`.
    pub(crate) fn remember_later(self: &Arc<Self>, socket: &Arc<Socket>) {
        if socket.pid().is_none() {
            return;
        }
        let this = Arc::clone(self);
        let socket = Arc::clone(socket);
        tokio::spawn(async move { this.remember(&socket).await });
    }

    /// The socket left: its record is kept for the window when it may come back, else forgotten.
    pub(crate) fn left(self: &Arc<Self>, socket: &Socket, reason: &'static str) {
        let Some(pid) = socket.pid().map(str::to_string) else {
            return;
        };
        let saved = Self::saved(socket);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let sessions = &this.cluster.sessions;
            let done = if RECOVERABLE.contains(&reason) {
                sessions.keep(&this.site, &pid, &saved, this.window).await
            } else {
                sessions.forget(&this.site, &pid).await
            };
            if let Err(e) = done {
                tracing::warn!(site = %this.site, error = %e, "cannot update a recovery session");
            }
        });
    }

    /// What was logged after `after` that reaches `socket`, a plain client continuing its stream; when the log
    /// no longer reaches back to `after` (or cannot be read), what `otherwise` gives (its rooms' retained state).
    pub(crate) fn continue_from(
        self: &Arc<Self>,
        socket: &Arc<Socket>,
        after: &str,
        otherwise: Box<dyn FnOnce() -> Option<PendingCatchUp> + Send>,
    ) -> PendingCatchUp {
        let this = Arc::clone(self);
        let socket = Arc::clone(socket);
        let after = after.to_string();
        Box::pin(async move {
            match this.cluster.bus.since(&this.site, &after).await {
                // The rooms as they are now: the socket joins them after this was asked, before it is read.
                Ok(Some(logged)) => return missed_by(&socket.rooms(), &logged),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(site = %this.site, error = %e, "cannot read the recovery log; a plain client gets retained state")
                }
            }
            match otherwise() {
                Some(retained) => retained.await,
                None => Vec::new(),
            }
        })
    }

    /// What was logged after `after` that reaches `socket`.
    pub(crate) fn catch_up(self: &Arc<Self>, socket: &Arc<Socket>, after: &str) -> PendingCatchUp {
        let this = Arc::clone(self);
        let socket = Arc::clone(socket);
        let after = after.to_string();
        Box::pin(async move {
            match this.cluster.bus.since(&this.site, &after).await {
                // The rooms as they are now: the socket joins them after this was asked, before it is read.
                Ok(Some(logged)) => missed_by(&socket.rooms(), &logged),
                Ok(None) => Vec::new(),
                Err(e) => {
                    tracing::warn!(site = %this.site, error = %e, "cannot read the recovery log to catch up");
                    Vec::new()
                }
            }
        })
    }
}
