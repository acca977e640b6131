//! crossroads' `updateUserUrl`: `PUT {id, user: {last_connected | last_disconnected}}` with the client's token
//! when a user's first socket arrives or last socket leaves. Never blocks a connection; retried with backoff;
//! a disconnect is reported only after the user stayed away for the debounce time, so a flap reports nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::json;
use tokio::task::AbortHandle;

use crate::secret::Secret;

/// Where and how one site reports presence.
#[derive(Debug, Clone)]
pub struct PresenceTarget {
    /// The URL with `:id` in it.
    pub url: String,
    /// `Authorization` scheme before the client's token.
    pub scheme: String,
    /// Each call attempt's duration (`herald_webhook_duration_seconds{kind="presence"}`).
    pub duration: metrics::Histogram,
}

#[derive(Default)]
struct UserState {
    sockets: usize,
    /// The pending `last_disconnected`, cancelled if the user returns within the debounce time.
    going: Option<AbortHandle>,
}

/// Presence reporting of this node.
pub struct Presence {
    http: reqwest::Client,
    debounce: Duration,
    users: Arc<Mutex<HashMap<(String, String), UserState>>>,
    /// In a cluster, the node's record of its present users, which a survivor reports gone if this node dies.
    records: Option<crate::cluster::registry::NodeRecords>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

/// One user's identity for an update: `id` is the user room without its prefix.
#[derive(Debug, Clone)]
pub struct PresenceUser {
    pub site: String,
    pub id: String,
    pub token: Option<Secret>,
}

impl Presence {
    pub fn new(http: reqwest::Client, debounce: Duration) -> Self {
        Presence {
            http,
            debounce,
            users: Arc::new(Mutex::new(HashMap::new())),
            records: None,
        }
    }

    /// Keeps this node's record of present users in `records` (a cluster's node registry).
    pub fn recording(mut self, records: crate::cluster::registry::NodeRecords) -> Self {
        self.records = Some(records);
        self
    }

    /// Reports `user` gone at once, with no debounce: a survivor's report for a node that died.
    pub fn report_gone(&self, target: &PresenceTarget, user: PresenceUser) {
        tokio::spawn(put(
            self.http.clone(),
            target.clone(),
            user,
            "last_disconnected",
        ));
    }

    /// A socket of `user` connected: report `last_connected` unless the user was only briefly away.
    pub fn connected(&self, target: &PresenceTarget, user: PresenceUser) {
        let mut users = self.users.lock();
        let state = users
            .entry((user.site.clone(), user.id.clone()))
            .or_default();
        state.sockets += 1;
        if state.sockets > 1 {
            return;
        }
        if let Some(records) = &self.records {
            records.user_present(&user.site, &user.id, user.token.as_ref());
        }
        if let Some(going) = state.going.take() {
            // Back within the debounce time: the backend never hears of the flap.
            going.abort();
            return;
        }
        tokio::spawn(put(
            self.http.clone(),
            target.clone(),
            user,
            "last_connected",
        ));
    }

    /// A socket of `user` left: when it was the last, report `last_disconnected` after the debounce time.
    pub fn disconnected(&self, target: &PresenceTarget, user: PresenceUser) {
        let mut users = self.users.lock();
        let key = (user.site.clone(), user.id.clone());
        let Some(state) = users.get_mut(&key) else {
            return;
        };
        state.sockets = state.sockets.saturating_sub(1);
        if state.sockets > 0 {
            return;
        }
        let (http, target, debounce) = (self.http.clone(), target.clone(), self.debounce);
        let registry = Arc::clone(&self.users);
        let records = self.records.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(debounce).await;
            {
                let mut users = registry.lock();
                if users.get(&key).is_some_and(|s| s.sockets == 0) {
                    users.remove(&key);
                    // Told below: a survivor has nothing to report for this user should this node die now.
                    if let Some(records) = &records {
                        records.user_gone(&key.0, &key.1);
                    }
                }
            }
            put(http, target, user, "last_disconnected").await;
        });
        state.going = Some(task.abort_handle());
    }
}

async fn put(http: reqwest::Client, target: PresenceTarget, user: PresenceUser, field: &str) {
    let url = target.url.replace(":id", &user.id);
    let body = json!({ "id": user.id, "user": { field: iso8601_now() } });
    crate::outbound::with_retry(&user.site, "updateUserUrl", &target.duration, || {
        let request = http.put(&url).json(&body);
        match &user.token {
            Some(token) => request.header(
                reqwest::header::AUTHORIZATION,
                format!("{} {}", target.scheme, token.expose()),
            ),
            None => request,
        }
    })
    .await;
}

/// Now as JavaScript's `Date#toJSON` writes it, `2026-11-22T03:04:05.678Z`, which crossroads sent.
fn iso8601_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    iso8601(since.as_millis() as u64)
}

fn iso8601(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's algorithm for the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_javascript() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        // new Date(1795316645678).toJSON()
        assert_eq!(iso8601(1_795_316_645_678), "2026-11-22T03:04:05.678Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
