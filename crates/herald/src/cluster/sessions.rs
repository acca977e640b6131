//! Connection-state recovery sessions: what a socket that may recover leaves behind (its id, rooms and who it
//! is), under the private id (`pid`) its client holds. Kept in memory on a single node, in Redis in a cluster,
//! so a client can come back on any node, even when its node died.
//!
//! A live socket's record has no expiry (`save`); when the socket goes in a way it may recover from, the
//! record gets the site's window (`keep`), and the first client that shows the pid takes it (`take`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::bus::BusError;

/// What a socket leaves behind for its recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSocket {
    /// The socket id, which the recovered socket keeps.
    pub id: String,
    /// Its rooms, without its own id.
    pub rooms: Vec<String>,
    /// The user it was, when the site knows users: only the same user may take it back.
    pub user: Option<String>,
}

/// Where recovery sessions live.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Records a live socket (again when its rooms change), without expiry.
    async fn save(&self, site: &str, pid: &str, saved: &SavedSocket) -> Result<(), BusError>;

    /// The socket left in a way it may recover from: its record lasts `window` more, unless it was taken.
    async fn keep(
        &self,
        site: &str,
        pid: &str,
        saved: &SavedSocket,
        window: Duration,
    ) -> Result<(), BusError>;

    /// The socket left for good (or recovery is off): its record goes.
    async fn forget(&self, site: &str, pid: &str) -> Result<(), BusError>;

    /// Takes the record of `pid`: one comer gets it.
    async fn take(&self, site: &str, pid: &str) -> Result<Option<SavedSocket>, BusError>;
}

struct Record {
    saved: SavedSocket,
    /// None while the socket is live.
    expires: Option<Instant>,
}

/// The recovery sessions of a single node.
#[derive(Default)]
pub struct MemorySessions {
    records: Mutex<HashMap<(String, String), Record>>,
    last_sweep: Mutex<Option<Instant>>,
}

impl MemorySessions {
    /// Drops expired records, at most once a second.
    fn sweep(&self) {
        let now = Instant::now();
        {
            let mut last = self.last_sweep.lock();
            if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        self.records
            .lock()
            .retain(|_, r| r.expires.is_none_or(|at| at > now));
    }
}

fn key(site: &str, pid: &str) -> (String, String) {
    (site.to_string(), pid.to_string())
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn save(&self, site: &str, pid: &str, saved: &SavedSocket) -> Result<(), BusError> {
        self.records.lock().insert(
            key(site, pid),
            Record {
                saved: saved.clone(),
                expires: None,
            },
        );
        Ok(())
    }

    async fn keep(
        &self,
        site: &str,
        pid: &str,
        saved: &SavedSocket,
        window: Duration,
    ) -> Result<(), BusError> {
        self.sweep();
        if let Some(record) = self.records.lock().get_mut(&key(site, pid)) {
            record.saved = saved.clone();
            record.expires = Some(Instant::now() + window);
        }
        Ok(())
    }

    async fn forget(&self, site: &str, pid: &str) -> Result<(), BusError> {
        self.records.lock().remove(&key(site, pid));
        Ok(())
    }

    async fn take(&self, site: &str, pid: &str) -> Result<Option<SavedSocket>, BusError> {
        let record = self.records.lock().remove(&key(site, pid));
        Ok(record
            .filter(|r| r.expires.is_none_or(|at| at > Instant::now()))
            .map(|r| r.saved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> SavedSocket {
        SavedSocket {
            id: "sock".into(),
            rooms: vec!["news".into()],
            user: Some("42".into()),
        }
    }

    #[tokio::test]
    async fn a_record_is_taken_once_and_kept_only_while_it_exists() {
        let store = MemorySessions::default();
        let window = Duration::from_secs(60);
        store
            .keep("s", "p", &saved(), window)
            .await
            .expect("memory");
        assert_eq!(store.take("s", "p").await.expect("memory"), None);
        store.save("s", "p", &saved()).await.expect("memory");
        store
            .keep("s", "p", &saved(), window)
            .await
            .expect("memory");
        assert_eq!(store.take("s", "p").await.expect("memory"), Some(saved()));
        assert_eq!(store.take("s", "p").await.expect("memory"), None);
        store.save("s", "q", &saved()).await.expect("memory");
        store.forget("s", "q").await.expect("memory");
        assert_eq!(store.take("s", "q").await.expect("memory"), None);
    }

    #[tokio::test]
    async fn an_expired_record_cannot_be_taken() {
        let store = MemorySessions::default();
        store.save("s", "p", &saved()).await.expect("memory");
        store
            .keep("s", "p", &saved(), Duration::ZERO)
            .await
            .expect("memory");
        assert_eq!(store.take("s", "p").await.expect("memory"), None);
    }
}
