//! Per-socket hooks: `hooks.connect` hears of each socket that joined the site and `hooks.disconnect` of each
//! that left, with its reason. Not debounced (that is `updateUserUrl`'s job), retried with backoff, and never
//! in a connect's way: a socket's disconnect is sent after its connect's last attempt ended.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::json;
use tokio::task::JoinHandle;

use super::webhook::{signed, with_credentials};
use crate::config::SiteConfig;
use crate::sites::describe_socket;
use crate::socketio::Socket;

/// How long one attempt of a hook call may take.
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A site's socket hooks.
pub struct SocketHooks {
    site: Arc<SiteConfig>,
    http: reqwest::Client,
    /// Connect calls still being made, by socket key: a disconnect waits for its socket's.
    connecting: Arc<Mutex<HashMap<u64, JoinHandle<()>>>>,
    /// Each attempt's duration (`herald_webhook_duration_seconds{kind="hook"}`).
    duration: metrics::Histogram,
}

impl SocketHooks {
    /// The site's hooks, when it has any; each call's attempts are timed into `duration`.
    pub fn new(
        site: Arc<SiteConfig>,
        http: reqwest::Client,
        duration: metrics::Histogram,
    ) -> Option<Self> {
        (!site.hooks.is_empty()).then(|| SocketHooks {
            site,
            http,
            connecting: Arc::default(),
            duration,
        })
    }

    /// `socket` joined the site.
    pub fn connected(&self, socket: &Arc<Socket>) {
        let Some(url) = self.site.hooks.connect.clone() else {
            return;
        };
        let body = json!({ "site": self.site.name, "socket": describe_socket(socket) });
        let call = self.call(
            url,
            socket,
            body.to_string().into_bytes(),
            "the connect hook",
        );
        let key = socket.key;
        let connecting = Arc::clone(&self.connecting);
        let mut calls = self.connecting.lock();
        let task = tokio::spawn(async move {
            call.await;
            connecting.lock().remove(&key);
        });
        calls.insert(key, task);
    }

    /// `socket` left the site for `reason`.
    pub fn disconnected(&self, socket: &Arc<Socket>, reason: &str) {
        let connect = self.connecting.lock().remove(&socket.key);
        let Some(url) = self.site.hooks.disconnect.clone() else {
            return;
        };
        let body = json!({
            "site": self.site.name,
            "socket": describe_socket(socket),
            "reason": reason,
        });
        let call = self.call(
            url,
            socket,
            body.to_string().into_bytes(),
            "the disconnect hook",
        );
        tokio::spawn(async move {
            if let Some(connect) = connect {
                let _ = connect.await;
            }
            call.await;
        });
    }

    /// The retried call, its request built from what the socket holds now.
    fn call(
        &self,
        url: String,
        socket: &Socket,
        body: Vec<u8>,
        what: &'static str,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let request = self.http.post(url).timeout(HOOK_TIMEOUT);
        let request = with_credentials(request, &self.site, socket);
        let request = signed(request, &self.site, &body);
        let site = self.site.name.clone();
        let duration = self.duration.clone();
        async move {
            crate::outbound::with_retry(&site, what, &duration, || {
                request
                    .try_clone()
                    .unwrap_or_else(|| unreachable!("a request with a byte body clones"))
            })
            .await;
        }
    }
}
