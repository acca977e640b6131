//! Recovery sessions in Redis, so a client can come back on any node, even when its node died: one string key
//! per session (its `SavedSocket` as JSON), and per node the set of the live sessions it holds, which a
//! survivor gives the site's window when the node dies (`release_node`).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::bus::BusError;
use super::registry::{DeadNode, Reap};
use super::sessions::{SavedSocket, SessionStore};

/// The sessions of the nodes sharing one Redis database.
#[derive(Clone)]
pub struct RedisSessions {
    con: ConnectionManager,
    /// This node's id, written into each record it saves.
    node: String,
    /// The set of live sessions this node holds.
    node_set: String,
}

/// A record as stored: the socket, and the node that holds it live (a survivor releases only the records
/// still held by the node that died, not those a recovered socket's new node saved since).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<T> {
    node: String,
    #[serde(flatten)]
    saved: T,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions")
            .field("node_set", &self.node_set)
            .finish_non_exhaustive()
    }
}

fn session_key(site: &str, pid: &str) -> String {
    format!("herald:csr:{}:{pid}", site.replace(':', "%3A"))
}

fn node_set(node: &str) -> String {
    format!("herald:node:{node}:csr")
}

/// A node-set member: the site and the pid, which neither holds a newline.
fn member(site: &str, pid: &str) -> String {
    format!("{site}\n{pid}")
}

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisSessions {
    /// Connects to Redis at `url` for node `node`.
    pub async fn connect(
        url: &str,
        trust: &crate::tls::Trust,
        node: &str,
    ) -> Result<Self, BusError> {
        let client = super::redis::open_client(url, trust).map_err(BusError::Unavailable)?;
        let con = super::redis::manager(&client, url)
            .await
            .map_err(BusError::Unavailable)?;
        Ok(Self::new(con, node))
    }

    /// The sessions of node `node` over an open connection.
    pub fn new(con: ConnectionManager, node: &str) -> Self {
        RedisSessions {
            con,
            node: node.to_string(),
            node_set: node_set(node),
        }
    }

    fn stored(&self, saved: &SavedSocket) -> Result<String, BusError> {
        let stored = Stored {
            node: self.node.clone(),
            saved,
        };
        serde_json::to_string(&stored).map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// Gives every session dead node `node` held its site's window (`windows` by site; sites without recovery
    /// lose theirs), as if each socket had dropped its connection now. Returns how many it released.
    pub async fn release_node(
        &self,
        node: &str,
        windows: &(dyn Fn(&str) -> Option<Duration> + Send + Sync),
    ) -> Result<usize, BusError> {
        let mut con = self.con.clone();
        let set = node_set(node);
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        let sessions: Vec<(&str, String)> = members
            .iter()
            .filter_map(|entry| entry.split_once('\n'))
            .map(|(site, pid)| (site, session_key(site, pid)))
            .collect();
        let records: Vec<Option<String>> = if sessions.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET")
                .arg(sessions.iter().map(|(_, key)| key).collect::<Vec<_>>())
                .query_async(&mut con)
                .await
                .map_err(unavailable)?
        };
        let mut pipe = redis::pipe();
        let mut released = 0;
        for ((site, key), record) in sessions.iter().zip(records) {
            let holder = record
                .and_then(|r| serde_json::from_str::<Stored<serde::de::IgnoredAny>>(&r).ok())
                .map(|r| r.node);
            // Taken, or saved since by the node a recovered socket now lives on: not the dead node's.
            if holder.as_deref() != Some(node) {
                continue;
            }
            released += 1;
            match windows(site) {
                Some(window) => pipe.pexpire(key, window.as_millis() as i64).ignore(),
                None => pipe.del(key).ignore(),
            };
        }
        pipe.del(&set).ignore();
        pipe.query_async::<()>(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(released)
    }
}

/// Releases a dead node's recovery sessions, so its clients can recover on the survivors within their
/// site's window from now.
pub struct SessionReaper {
    pub sessions: RedisSessions,
    /// Each recovering site's window, as the sites are now.
    pub windows: super::PerSite<Duration>,
}

#[async_trait]
impl Reap for SessionReaper {
    async fn reap(&self, dead: &DeadNode) {
        match self.sessions.release_node(&dead.id, &*self.windows).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(node = %dead.id, sessions = n, "released a dead node's recovery sessions")
            }
            Err(e) => {
                tracing::warn!(node = %dead.id, error = %e, "cannot release a dead node's recovery sessions")
            }
        }
    }
}

#[async_trait]
impl SessionStore for RedisSessions {
    async fn save(&self, site: &str, pid: &str, saved: &SavedSocket) -> Result<(), BusError> {
        let json = self.stored(saved)?;
        let mut con = self.con.clone();
        redis::pipe()
            .set(session_key(site, pid), json)
            .ignore()
            .sadd(&self.node_set, member(site, pid))
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(unavailable)
    }

    async fn keep(
        &self,
        site: &str,
        pid: &str,
        saved: &SavedSocket,
        window: Duration,
    ) -> Result<(), BusError> {
        let json = self.stored(saved)?;
        let mut con = self.con.clone();
        // XX: a record another node already took stays taken.
        redis::pipe()
            .cmd("SET")
            .arg(session_key(site, pid))
            .arg(json)
            .arg("XX")
            .arg("PX")
            .arg(window.as_millis().max(1) as u64)
            .ignore()
            .srem(&self.node_set, member(site, pid))
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(unavailable)
    }

    async fn forget(&self, site: &str, pid: &str) -> Result<(), BusError> {
        let mut con = self.con.clone();
        redis::pipe()
            .del(session_key(site, pid))
            .ignore()
            .srem(&self.node_set, member(site, pid))
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(unavailable)
    }

    async fn take(&self, site: &str, pid: &str) -> Result<Option<SavedSocket>, BusError> {
        let mut con = self.con.clone();
        let json: Option<String> = redis::cmd("GETDEL")
            .arg(session_key(site, pid))
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        // A record that does not parse was not written by this version: start afresh.
        Ok(json
            .and_then(|j| serde_json::from_str::<Stored<SavedSocket>>(&j).ok())
            .map(|stored| stored.saved))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    async fn sessions(node: &str) -> RedisSessions {
        let url = std::env::var("HERALD_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/13".to_string());
        let client = redis::Client::open(url).expect("a valid URL");
        let con = ConnectionManager::new(client).await.unwrap_or_else(|e| {
            panic!(
                "this test needs Redis at 127.0.0.1:6379 (start it with: redis-server --daemonize yes \
                 --save '' --appendonly no), or its URL in HERALD_TEST_REDIS_URL: {e}"
            )
        });
        RedisSessions::new(con, node)
    }

    fn saved(id: &str) -> SavedSocket {
        SavedSocket {
            id: id.into(),
            rooms: vec!["news".into()],
            user: None,
        }
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}-{}", rand::random::<u64>())
    }

    #[tokio::test]
    async fn a_session_saved_on_one_node_is_taken_once_on_another() {
        let a = sessions(&unique("a")).await;
        let b = sessions(&unique("b")).await;
        let pid = unique("pid");
        a.save("s", &pid, &saved("x")).await.expect("redis");
        assert_eq!(b.take("s", &pid).await.expect("redis"), Some(saved("x")));
        assert_eq!(b.take("s", &pid).await.expect("redis"), None);
        // The old node notices the drop later: the taken record stays taken.
        a.keep("s", &pid, &saved("x"), Duration::from_secs(60))
            .await
            .expect("redis");
        assert_eq!(b.take("s", &pid).await.expect("redis"), None);
    }

    #[tokio::test]
    async fn a_dead_nodes_live_sessions_get_their_sites_window() {
        let node = unique("dead");
        let a = sessions(&node).await;
        let survivor = sessions(&unique("survivor")).await;
        let (kept, dropped) = (unique("kept"), unique("dropped"));
        a.save("s", &kept, &saved("k")).await.expect("redis");
        a.save("off", &dropped, &saved("d")).await.expect("redis");
        let windows = HashMap::from([("s".to_string(), Duration::from_millis(300))]);
        let released = survivor
            .release_node(&node, &|s| windows.get(s).copied())
            .await
            .expect("redis");
        assert_eq!(released, 2);
        assert_eq!(survivor.take("off", &dropped).await.expect("redis"), None);
        let mut con = survivor.con.clone();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(session_key("s", &kept))
            .query_async(&mut con)
            .await
            .expect("redis");
        assert!(ttl > 0 && ttl <= 300, "{ttl}");
    }

    #[tokio::test]
    async fn a_session_recovered_on_a_survivor_is_not_released_with_its_dead_node() {
        let dead = unique("dead");
        let a = sessions(&dead).await;
        let b = sessions(&unique("survivor")).await;
        let pid = unique("moved");
        a.save("s", &pid, &saved("m")).await.expect("redis");
        // The client came back on b before a was reaped: b took the record and saves it as its own.
        assert!(b.take("s", &pid).await.expect("redis").is_some());
        b.save("s", &pid, &saved("m")).await.expect("redis");
        let windows = HashMap::from([("s".to_string(), Duration::from_millis(300))]);
        let released = b
            .release_node(&dead, &|s| windows.get(s).copied())
            .await
            .expect("redis");
        assert_eq!(released, 0);
        let mut con = b.con.clone();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(session_key("s", &pid))
            .query_async(&mut con)
            .await
            .expect("redis");
        assert_eq!(ttl, -1, "the live record keeps no expiry");
    }
}
