//! The node registry: which nodes are alive and where they are reached, and what a node that died left behind.
//!
//! Every node beats every `node_ttl_ms / 3`: it sets its own key with a `node_ttl_ms` expiry and reads every
//! node's remaining time in the same script. The answers feed the in-memory view that `peers()` and `url_of()`
//! read, so no request ever waits on Redis; a node leaves the view when its key expires, whether or not a beat
//! of ours has run since.
//!
//! Keys (in the URL's database, all with the hash tag `{nodes}` so each script touches one cluster slot):
//! - `herald:{nodes}:all`: hash node id → URL, every node that registered and was not reaped yet
//! - `herald:{nodes}:alive:<id>`: the node's URL, expiring `node_ttl_ms` after its last beat
//! - `herald:{nodes}:users:<id>`: hash `<site>␟<user id>` → token: the users of presence sites who have a
//!   socket on the node (from their first socket until `updateUserUrl` heard they left), with the token
//!   `updateUserUrl` is called with
//! - `herald:{nodes}:devices:<id>`: set of `<site>␟<user room>␟<device>`: mailbox devices connected to the node
//! - `herald:{nodes}:reap:<id>`: which survivor claimed the dead node's cleanup (`SET NX`, a minute)
//!
//! A node in `all` whose `alive` key is gone is dead. The first survivor to claim it reaps it: the users and
//! devices it had that no live node has are handed to each `Reap` (presence reports `last_disconnected`, the
//! mailbox marks devices disconnected, and whatever the gateway added), then its records are deleted, unless it
//! came back meanwhile. A node that finds its own `alive` key gone when it beats (Redis lost it, or it stalled
//! past its TTL) writes its records again.
//!
//! The node's own records are written by one task from an in-memory copy: changes mark entries dirty and the
//! task writes what is dirty, so a Redis outage delays the records (bounded by what is connected) and loses
//! nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{BusError, Directory};
use crate::mailbox::{DeviceKey, MailboxStore, Presence, PresenceTarget, PresenceUser};
use crate::secret::Secret;

/// Separates the parts of a record; names hold no control characters.
const SEP: char = '\u{1f}';
/// How long a survivor's claim on a dead node's cleanup holds.
const CLAIM: Duration = Duration::from_secs(60);
/// Records checked per pipeline when a dead node is reaped.
const CHUNK: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

const ALL: &str = "herald:{nodes}:all";

fn alive_key(node: &str) -> String {
    format!("herald:{{nodes}}:alive:{node}")
}

fn users_key(node: &str) -> String {
    format!("herald:{{nodes}}:users:{node}")
}

fn devices_key(node: &str) -> String {
    format!("herald:{{nodes}}:devices:{node}")
}

fn claim_key(node: &str) -> String {
    format!("herald:{{nodes}}:reap:{node}")
}

/// A user a dead node had connected and no live node has.
#[derive(Debug, Clone)]
pub struct LostUser {
    pub site: String,
    /// The user room without its prefix, as `updateUserUrl` names users.
    pub id: String,
    pub token: Option<Secret>,
}

/// What a dead node left that no live node has.
#[derive(Debug, Clone, Default)]
pub struct DeadNode {
    pub id: String,
    pub users: Vec<LostUser>,
    pub devices: Vec<DeviceKey>,
}

/// Something to release when a node dies; `reap` runs on the one survivor that claimed the dead node, before
/// the node's records are deleted.
#[async_trait]
pub trait Reap: Send + Sync + 'static {
    async fn reap(&self, dead: &DeadNode);
}

/// The records of this node's users and devices, kept in memory and written to Redis by the registry. Cheap
/// to clone.
#[derive(Clone, Default)]
pub struct NodeRecords {
    inner: Arc<RecordsInner>,
}

impl std::fmt::Debug for NodeRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRecords").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct RecordsInner {
    state: Mutex<Records>,
    changed: Notify,
}

#[derive(Default)]
struct Records {
    /// `<site>␟<user id>` → token (empty when none).
    users: HashMap<String, String>,
    /// `<site>␟<user room>␟<device>` → sockets delivering it here.
    devices: HashMap<String, usize>,
    dirty_users: HashSet<String>,
    dirty_devices: HashSet<String>,
}

fn user_field(site: &str, user: &str) -> String {
    format!("{site}{SEP}{user}")
}

fn device_member(key: &DeviceKey) -> String {
    format!("{}{SEP}{}{SEP}{}", key.site, key.user, key.device)
}

impl NodeRecords {
    /// A user of a presence site has a socket here (from the first).
    pub fn user_present(&self, site: &str, user: &str, token: Option<&Secret>) {
        let field = user_field(site, user);
        let token = token.map(|t| t.expose().to_string()).unwrap_or_default();
        let mut state = self.inner.state.lock();
        if state.users.get(&field) != Some(&token) {
            state.users.insert(field.clone(), token);
            state.dirty_users.insert(field);
            self.inner.changed.notify_one();
        }
    }

    /// The user left this node and `updateUserUrl` was told.
    pub fn user_gone(&self, site: &str, user: &str) {
        let field = user_field(site, user);
        let mut state = self.inner.state.lock();
        if state.users.remove(&field).is_some() {
            state.dirty_users.insert(field);
            self.inner.changed.notify_one();
        }
    }

    /// A socket started delivering `key`'s mailbox here.
    pub fn device_attached(&self, key: &DeviceKey) {
        let member = device_member(key);
        let mut state = self.inner.state.lock();
        let count = state.devices.entry(member.clone()).or_default();
        *count += 1;
        if *count == 1 {
            state.dirty_devices.insert(member);
            self.inner.changed.notify_one();
        }
    }

    /// A delivery of `key` here ended (and marked the device disconnected unless another socket took over).
    pub fn device_detached(&self, key: &DeviceKey) {
        let member = device_member(key);
        let mut state = self.inner.state.lock();
        let Some(count) = state.devices.get_mut(&member) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            state.devices.remove(&member);
            state.dirty_devices.insert(member);
            self.inner.changed.notify_one();
        }
    }

    /// Everything is to be written again (this node's records were lost).
    fn all_dirty(&self) {
        let mut state = self.inner.state.lock();
        let Records {
            users,
            devices,
            dirty_users,
            dirty_devices,
        } = &mut *state;
        dirty_users.extend(users.keys().cloned());
        dirty_devices.extend(devices.keys().cloned());
        self.inner.changed.notify_one();
    }

    /// Writes the dirty records of node `node` until the registry stops.
    async fn write(self, node: Arc<str>, mut con: ConnectionManager) {
        let (users, devices) = (users_key(&node), devices_key(&node));
        let mut backoff = BACKOFF_MIN;
        loop {
            self.inner.changed.notified().await;
            loop {
                let (pipe, taken) = {
                    let mut state = self.inner.state.lock();
                    if state.dirty_users.is_empty() && state.dirty_devices.is_empty() {
                        break;
                    }
                    let taken_users = std::mem::take(&mut state.dirty_users);
                    let taken_devices = std::mem::take(&mut state.dirty_devices);
                    let mut pipe = redis::pipe();
                    for field in &taken_users {
                        match state.users.get(field) {
                            Some(token) => pipe.hset(&users, field, token).ignore(),
                            None => pipe.hdel(&users, field).ignore(),
                        };
                    }
                    for member in &taken_devices {
                        if state.devices.contains_key(member) {
                            pipe.sadd(&devices, member).ignore();
                        } else {
                            pipe.srem(&devices, member).ignore();
                        }
                    }
                    (pipe, (taken_users, taken_devices))
                };
                match pipe.query_async::<()>(&mut con).await {
                    Ok(()) => backoff = BACKOFF_MIN,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cluster registry: cannot write this node's records");
                        {
                            let mut state = self.inner.state.lock();
                            state.dirty_users.extend(taken.0);
                            state.dirty_devices.extend(taken.1);
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }
}

/// KEYS: all, own alive key. ARGV: id, URL, TTL ms. Returns whether our key was there, then
/// `{id, url, pttl}` for every registered node.
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local existed = redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local nodes = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #nodes, 2 do
  out[#out + 1] = {nodes[i], nodes[i + 1], redis.call('PTTL', 'herald:{nodes}:alive:' .. nodes[i])}
end
return {existed, out}
"#,
    )
});

/// KEYS: all, alive, users, devices of a dead node. ARGV: its id. Deletes its records unless it came back.
static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// A live peer as this node last heard of it.
/// How often one unknown node id may be looked up in Redis.
const LOOKUP_EVERY: Duration = Duration::from_secs(1);
/// Most unknown node ids remembered for `LOOKUP_EVERY`.
const MAX_LOOKUPS: usize = 1024;

#[derive(Debug, Clone)]

struct Peer {
    url: String,
    /// When its key expires unless it beats again.
    until: Instant,
}

/// The node registry of this node: the `Directory` of a cluster.
pub struct Registry {
    node: Arc<str>,
    url: String,
    ttl: Duration,
    con: ConnectionManager,
    view: RwLock<HashMap<Arc<str>, Peer>>,
    records: NodeRecords,
    reapers: Mutex<Vec<Arc<dyn Reap>>>,
    /// Dead nodes this node is reaping now.
    reaping: Mutex<HashSet<String>>,
    /// When each unknown node id was last looked up in Redis, so made-up sids cannot turn into a stream of
    /// Redis calls: one lookup per id per second, and at most `MAX_LOOKUPS` ids remembered.
    lookups: Mutex<HashMap<String, Instant>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("node", &self.node)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Connects to Redis at `url` for node `node`, reached at `node_url`, dead `ttl` after its last beat.
    pub async fn connect(
        redis_url: &str,
        trust: &crate::tls::Trust,
        node: Arc<str>,
        node_url: String,
        ttl: Duration,
    ) -> Result<Arc<Registry>, BusError> {
        let client = super::redis::open_client(redis_url, trust).map_err(BusError::Unavailable)?;
        let con = super::redis::manager(&client, redis_url)
            .await
            .map_err(BusError::Unavailable)?;
        Ok(Arc::new(Registry {
            node,
            url: node_url,
            ttl: ttl.max(Duration::from_millis(300)),
            con,
            view: RwLock::new(HashMap::new()),
            records: NodeRecords::default(),
            reapers: Mutex::new(Vec::new()),
            reaping: Mutex::new(HashSet::new()),
            lookups: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// This node's records, for presence and the mailbox to keep.
    pub fn records(&self) -> NodeRecords {
        self.records.clone()
    }

    /// Adds something to release when a node dies.
    pub fn add_reaper(&self, reaper: Arc<dyn Reap>) {
        self.reapers.lock().push(reaper);
    }

    /// Registers this node (one beat, so peers see it before it serves) and starts beating and writing its
    /// records.
    pub async fn start(self: &Arc<Self>) -> Result<(), BusError> {
        self.beat().await?;
        let writer = tokio::spawn(
            self.records
                .clone()
                .write(Arc::clone(&self.node), self.con.clone()),
        );
        let weak = Arc::downgrade(self);
        let every = self.ttl / 3;
        let beating = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = registry.beat().await {
                    tracing::warn!(error = %e, "cluster registry: heartbeat failed");
                }
            }
        });
        let mut tasks = self.tasks.lock();
        tasks.push(writer.abort_handle());
        tasks.push(beating.abort_handle());
        Ok(())
    }

    /// Stops beating and writing, leaving this node's key to expire: to the others, this node dies. For tests
    /// (a node that crashed) and for `deregister`.
    #[doc(hidden)]
    pub fn stop(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }

    /// Leaves the cluster at a graceful stop: beating stops and the node's key is deleted, so a survivor reaps
    /// what the node still had at once (at its next beat) rather than after the TTL.
    pub async fn deregister(&self) {
        self.stop();
        let mut con = self.con.clone();
        let mut del = redis::cmd("DEL");
        del.arg(alive_key(&self.node));
        let gone = del.query_async::<()>(&mut con);
        match tokio::time::timeout(Duration::from_secs(2), gone).await {
            Ok(Ok(())) => tracing::info!(node = %self.node, "left the cluster"),
            _ => {
                tracing::warn!(node = %self.node, "could not leave the cluster; peers will see this node expire")
            }
        }
    }

    /// Asks Redis for node `id`, which the view does not know (it started since our last beat); adds it to the
    /// view when it is alive.
    async fn look_up(&self, id: &str) -> Option<String> {
        let now = Instant::now();
        {
            let mut lookups = self.lookups.lock();
            if lookups
                .get(id)
                .is_some_and(|at| now.duration_since(*at) < LOOKUP_EVERY)
            {
                return None;
            }
            if lookups.len() >= MAX_LOOKUPS {
                lookups.clear();
            }
            lookups.insert(id.to_string(), now);
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.hget(ALL, id).pttl(alive_key(id));
        let asked = pipe.query_async::<(Option<String>, i64)>(&mut con);
        let (url, pttl) = match tokio::time::timeout(self.ttl / 2, asked).await {
            Ok(Ok((Some(url), pttl))) if pttl > 0 => (url, pttl),
            _ => return None,
        };
        let until = now + Duration::from_millis(pttl as u64);
        self.view.write().insert(
            id.into(),
            Peer {
                url: url.clone(),
                until,
            },
        );
        Some(url)
    }

    /// One heartbeat: refreshes our key and the view, and reaps the nodes found dead.
    async fn beat(self: &Arc<Self>) -> Result<(), BusError> {
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut call = BEAT.prepare_invoke();
        call.key(ALL)
            .key(alive_key(&self.node))
            .arg(&*self.node)
            .arg(&self.url)
            .arg(ttl_ms);
        let mut con = self.con.clone();
        let asked = Instant::now();
        let reply = tokio::time::timeout(self.ttl / 2, call.invoke_async(&mut con)).await;
        let (existed, nodes): (u8, Vec<(String, String, i64)>) = match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(BusError::Unavailable(e.to_string())),
            Err(_) => return Err(BusError::TimedOut),
        };
        if existed == 0 {
            // First beat, or our key expired (Redis lost it, or we stalled): our records may be gone.
            self.records.all_dirty();
        }
        let mut live = HashMap::new();
        let mut dead = Vec::new();
        for (id, url, pttl) in nodes {
            if *id == *self.node {
                continue;
            }
            match pttl {
                -2 => dead.push(id),
                // No expiry: never set by herald, but alive.
                -1 => {
                    live.insert(
                        id.into(),
                        Peer {
                            url,
                            until: asked + self.ttl,
                        },
                    );
                }
                ms => {
                    let until = asked + Duration::from_millis(ms.max(0) as u64);
                    live.insert(id.into(), Peer { url, until });
                }
            }
        }
        let live_ids: Vec<String> = live.keys().map(|id: &Arc<str>| id.to_string()).collect();
        *self.view.write() = live;
        for id in dead {
            if !self.reaping.lock().insert(id.clone()) {
                continue;
            }
            let registry = Arc::clone(self);
            let mut live = live_ids.clone();
            live.push(self.node.to_string());
            tokio::spawn(async move {
                if let Err(e) = registry.reap(&id, &live).await {
                    tracing::warn!(node = %id, error = %e, "cluster registry: reaping a dead node failed; retried");
                }
                registry.reaping.lock().remove(&id);
            });
        }
        Ok(())
    }

    /// Claims dead node `id` and, if the claim is ours, releases what it had that none of `live` has.
    async fn reap(&self, id: &str, live: &[String]) -> Result<(), redis::RedisError> {
        let mut con = self.con.clone();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(claim_key(id))
            .arg(&*self.node)
            .arg("NX")
            .arg("PX")
            .arg(CLAIM.as_millis() as u64)
            .query_async(&mut con)
            .await?;
        if claimed.is_none() {
            return Ok(());
        }
        let users: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(users_key(id))
            .query_async(&mut con)
            .await?;
        let devices: Vec<String> = redis::cmd("SMEMBERS")
            .arg(devices_key(id))
            .query_async(&mut con)
            .await?;
        let users: Vec<(String, String)> = users.into_iter().collect();
        let mut dead = DeadNode {
            id: id.to_string(),
            ..DeadNode::default()
        };
        for chunk in users.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for (field, _) in chunk {
                for node in live {
                    pipe.hexists(users_key(node), field);
                }
            }
            let held: Vec<bool> = pipe.query_async(&mut con).await?;
            for (i, (field, token)) in chunk.iter().enumerate() {
                let elsewhere = held[i * live.len()..(i + 1) * live.len()]
                    .iter()
                    .any(|&h| h);
                let Some((site, user)) = field.split_once(SEP) else {
                    continue;
                };
                if !elsewhere {
                    dead.users.push(LostUser {
                        site: site.to_string(),
                        id: user.to_string(),
                        token: (!token.is_empty()).then(|| Secret::new(token)),
                    });
                }
            }
        }
        for chunk in devices.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for member in chunk {
                for node in live {
                    pipe.sismember(devices_key(node), member);
                }
            }
            let held: Vec<bool> = pipe.query_async(&mut con).await?;
            for (i, member) in chunk.iter().enumerate() {
                let elsewhere = held[i * live.len()..(i + 1) * live.len()]
                    .iter()
                    .any(|&h| h);
                let mut parts = member.splitn(3, SEP);
                let (Some(site), Some(user), Some(device)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if !elsewhere {
                    dead.devices.push(DeviceKey::new(site, user, device));
                }
            }
        }
        let back: bool = redis::cmd("EXISTS")
            .arg(alive_key(id))
            .query_async(&mut con)
            .await?;
        if back {
            tracing::info!(node = %id, "a node presumed dead beat again; nothing reaped");
            return Ok(());
        }
        tracing::info!(
            node = %id,
            users = dead.users.len(),
            devices = dead.devices.len(),
            "reaping a dead node"
        );
        let reapers: Vec<Arc<dyn Reap>> = self.reapers.lock().clone();
        for reaper in reapers {
            reaper.reap(&dead).await;
        }
        let mut forget = FORGET.prepare_invoke();
        forget
            .key(ALL)
            .key(alive_key(id))
            .key(users_key(id))
            .key(devices_key(id))
            .arg(id);
        forget.invoke_async::<u8>(&mut con).await?;
        Ok(())
    }
}

impl Directory for Registry {
    fn url_of(&self, id: &str) -> Option<String> {
        if *id == *self.node {
            return Some(self.url.clone());
        }
        let now = Instant::now();
        self.view
            .read()
            .get(id)
            .filter(|peer| peer.until > now)
            .map(|peer| peer.url.clone())
    }

    fn peers(&self) -> Vec<(Arc<str>, String)> {
        let now = Instant::now();
        let mut peers: Vec<(Arc<str>, String)> = self
            .view
            .read()
            .iter()
            .filter(|(_, peer)| peer.until > now)
            .map(|(id, peer)| (Arc::clone(id), peer.url.clone()))
            .collect();
        peers.sort();
        peers
    }

    fn resolve<'a>(&'a self, id: &'a str) -> futures_util::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            if let Some(url) = self.url_of(id) {
                return Some(url);
            }
            self.look_up(id).await
        })
    }
}

/// Reports the users a dead node had as gone to their sites' `updateUserUrl`.
pub struct PresenceReaper {
    pub presence: Arc<Presence>,
    /// Each presence site's target, as the sites are now.
    pub targets: super::PerSite<PresenceTarget>,
}

#[async_trait]
impl Reap for PresenceReaper {
    async fn reap(&self, dead: &DeadNode) {
        for user in &dead.users {
            let Some(target) = (self.targets)(&user.site) else {
                continue;
            };
            self.presence.report_gone(
                &target,
                PresenceUser {
                    site: user.site.clone(),
                    id: user.id.clone(),
                    token: user.token.clone(),
                },
            );
        }
    }
}

/// Marks the mailbox devices a dead node had connected as disconnected, expiring after their site's TTL.
pub struct DeviceReaper {
    pub store: Arc<dyn MailboxStore>,
    /// Each mailbox site's device TTL, as the sites are now.
    pub ttls: super::PerSite<Duration>,
}

#[async_trait]
impl Reap for DeviceReaper {
    async fn reap(&self, dead: &DeadNode) {
        for key in &dead.devices {
            let Some(ttl) = (self.ttls)(&key.site) else {
                continue;
            };
            if let Err(e) = self.store.disconnect(key, ttl).await {
                tracing::warn!(node = %dead.id, error = %e, "could not mark a dead node's device disconnected");
            }
        }
    }
}
