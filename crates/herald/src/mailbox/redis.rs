//! The Redis mailbox store, for clusters: every herald node shares the mailboxes (a device that reconnects to
//! another node finds its mailbox there), and nodes tell each other about new entries over Redis pub/sub.
//!
//! Key layout. `s`, `u`, `d`, `r` are the site, user, device and lowercase room, escaped (`%`, `:`, `{`, `}`
//! become `%25`, `%3A`, `%7B`, `%7D`) so that names cannot alias each other or break a hash tag:
//! - `herald:{s:u}:devices`: hash device → expiry (Unix ms, Redis clock), `0` while connected
//! - `herald:{s:u}:rooms`: set of the user's lowercase shared rooms (what `connect` was last given)
//! - `herald:{s:u}:entries:d`: stream, one entry per message, ID `0-<offset>`, fields `e` (event),
//!   `r` (resync, `0`/`1`) and `p` (payload bytes); its length is the pending count
//! - `herald:{s:u}:meta:d`: hash `next` (the last offset given), `bytes` (pending payload bytes), `over`
//!   (`1` once a cap dropped entries, until `reset`)
//! - `herald:{s}:room:r`: set of users, the index shared-room publishes expand through. It is a hint: a user
//!   counts only while their own `rooms` set holds the room and they have an unexpired device.
//! - `herald:{retained:s}:room:R`: hash event → `<at> <args>`, the values retained in room `R` (as published,
//!   not lowercased; `crate::retained`)
//! - `herald:{retained:s}:usage`: hash `count`, `bytes`, what the site's retained values take; the retain and
//!   clear scripts keep it exact, and delete it when the site keeps nothing
//!
//! Every key of one user carries the hash tag `{s:u}`, so one user lives in one cluster slot and each Lua
//! script touches one slot only; a site's retained state shares the tag `{retained:s}` for the same reason. Every key a script touches arrives in its KEYS: Rust reads a user's device
//! names (HKEYS) and passes each device's keys; the append script reports devices that registered meanwhile,
//! and Rust appends to those in another call. Scripts take the time from Redis (`TIME`), not from the node,
//! so nodes with skewed clocks agree on what has expired, and expiry fields match the keys' own PEXPIREAT.
//!
//! Invariant: nothing scans the keyspace (no KEYS, no SCAN). A disconnected device's keys carry its expiry,
//! and when a user has no connected device left, the user's `devices` and `rooms` keys expire with the last
//! device, so abandoned users vanish by themselves and `sweep` has nothing to do. Room index sets do not
//! expire (other users share them): `users_in_room` drops the stale users it meets, and Redis deletes a set
//! when its last member goes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{AsyncCommands, FromRedisValue, Script, ScriptInvocation, Value};
use tokio::sync::mpsc;

use super::store::{
    valid_name, AckOutcome, Announcements, Caps, DeviceKey, DeviceStatus, Entry, MailboxStore,
    NewEntry, Page, Queued, StoreError,
};
use crate::cluster::redis::redact;
use crate::retained::{RetainCaps, RetainRequest, Retained, RetainedError, RetainedStore};

/// The pub/sub channel every node announces new entries on; a message is `site␟user`.
/// The announcement channel of the nodes on database `db`: pub/sub ignores database numbers, so the name
/// carries it, and clusters on other databases of the same Redis do not wake each other.
fn channel(client: &redis::Client) -> String {
    let db = client.get_connection_info().redis_settings().db();
    format!("herald:mailbox:announce:{db}")
}
/// Separates site and user in an announcement; names may not hold control characters.
const SEP: char = '\u{1f}';
/// Announcements waiting for the gateway; beyond this they are dropped, never buffered without limit.
const ANNOUNCE_QUEUE: usize = 4096;
/// How often an idle subscription pings Redis, so a silently dead connection is noticed and replaced.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Append calls per user chasing devices that register during the append; each round is rarely needed.
const APPEND_ROUNDS: usize = 8;
/// Payload bytes of concurrent append calls in flight: a 1 MB entry to many users is not copied for all at once.
const IN_FLIGHT_BYTES: usize = 16 << 20;
/// Users checked per pipeline when a room is expanded.
const PIPELINE_CHUNK: usize = 512;
/// Longest TTL honoured; keeps `now + ttl` an exact integer in Lua's doubles.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Commands that take longer than this fail (the operation may or may not have happened).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// The Redis store. Cloning is cheap: clones share one multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    con: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection info holds the password: show nothing of it.
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://[:password@]host:port/db`, or `rediss://` verified against
    /// `trust`). Errors never repeat the URL.
    pub async fn connect(url: &str, trust: &crate::tls::Trust) -> Result<RedisStore, StoreError> {
        let client = crate::cluster::redis::open_client(url, trust).map_err(StoreError::Redis)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECTION_TIMEOUT));
        let con = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| StoreError::Redis(format!("cannot connect: {}", redact(&e, url))))?;
        Ok(RedisStore { client, con })
    }

    async fn run<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        let mut con = self.con.clone();
        call.invoke_async(&mut con).await.map_err(redis_error)
    }

    /// Appends to every device of one user; returns `(device, offset)` for each device that got the entry.
    async fn append_to_user(
        &self,
        keys: &UserKeys,
        entry: NewEntry<'_>,
        caps: Caps,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut con = self.con.clone();
        let mut devices: Vec<String> = con.hkeys(keys.devices()).await.map_err(redis_error)?;
        let mut tried = HashSet::new();
        let mut landed = Vec::new();
        for _ in 0..APPEND_ROUNDS {
            if devices.is_empty() {
                return Ok(landed);
            }
            let call = append_call(keys, &devices, entry, caps);
            let (got, registered): (Vec<(String, u64)>, Vec<String>) = self.run(&call).await?;
            landed.extend(got);
            tried.extend(devices);
            devices = registered
                .into_iter()
                .filter(|d| !tried.contains(d))
                .collect();
        }
        // Devices that keep registering while we append are connecting concurrently with this publish:
        // leaving them out is an order the publisher cannot tell from "published just before they came".
        tracing::warn!(
            devices = devices.len(),
            "mailbox append gave up chasing new devices"
        );
        Ok(landed)
    }

    /// `append_to_user` for the `user`-th user of an append, as `Queued` rows.
    async fn append_queued(
        &self,
        user: usize,
        keys: &UserKeys,
        entry: NewEntry<'_>,
        caps: Caps,
    ) -> Result<Vec<Queued>, StoreError> {
        let landed = self.append_to_user(keys, entry, caps).await?;
        Ok(landed
            .into_iter()
            .map(|(device, offset)| Queued {
                user,
                device,
                offset,
            })
            .collect())
    }

    /// Points the room index at `user`'s new rooms after `connect` replaced their rooms set (`old` → `new`).
    async fn update_room_index(
        &self,
        site: &str,
        user: &str,
        keys: &UserKeys,
        old: Vec<String>,
        new: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let left: Vec<String> = old.into_iter().filter(|r| !new.contains(r)).collect();
        if new.is_empty() && left.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for room in new {
            pipe.sadd(room_key(site, room), user).ignore();
        }
        for room in &left {
            pipe.srem(room_key(site, room), user).ignore();
        }
        let mut con = self.con.clone();
        pipe.query_async::<()>(&mut con)
            .await
            .map_err(redis_error)?;
        if left.is_empty() {
            return Ok(());
        }
        // Another device of this user may have rejoined a room we just left, its SADD landing before our
        // SREM: the user's own rooms set is the truth, so put those back.
        let still: Vec<bool> = redis::cmd("SMISMEMBER")
            .arg(keys.rooms())
            .arg(&left)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        let rejoined: Vec<&String> = left
            .iter()
            .zip(still)
            .filter_map(|(room, is)| is.then_some(room))
            .collect();
        if rejoined.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for room in rejoined {
            pipe.sadd(room_key(site, room), user).ignore();
        }
        pipe.query_async::<()>(&mut con).await.map_err(redis_error)
    }

    /// Splits `users` into those who still belong to `room` (an unexpired device and the room in their own
    /// rooms set) and the stale rest.
    async fn split_members(
        &self,
        site: &str,
        room: &str,
        users: Vec<String>,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let mut con = self.con.clone();
        let (mut members, mut stale) = (Vec::new(), Vec::new());
        for chunk in users.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            pipe.cmd("TIME");
            for user in chunk {
                let keys = UserKeys::of(site, user);
                pipe.hvals(keys.devices()).sismember(keys.rooms(), room);
            }
            let replies: Vec<Value> = pipe.query_async(&mut con).await.map_err(redis_error)?;
            let mut replies = replies.into_iter();
            let now = time_ms(parse(replies.next())?);
            for user in chunk {
                let expiries: Vec<u64> = parse(replies.next())?;
                let in_room: bool = parse(replies.next())?;
                if in_room && expiries.iter().any(|&at| unexpired(at, now)) {
                    members.push(user.clone());
                } else {
                    stale.push(user.clone());
                }
            }
        }
        Ok((members, stale))
    }

    /// Removes `stale` users from `room`'s index; returns those who turned out to belong after all.
    async fn drop_stale(
        &self,
        site: &str,
        room: &str,
        stale: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        let index = room_key(site, room);
        let mut con = self.con.clone();
        redis::cmd("SREM")
            .arg(&index)
            .arg(&stale)
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_error)?;
        // A user who connected between our check and the SREM must not fall out of the index: their
        // connect's SADD may have landed before our SREM.
        let (back, _) = self.split_members(site, room, stale).await?;
        if !back.is_empty() {
            redis::cmd("SADD")
                .arg(&index)
                .arg(&back)
                .query_async::<()>(&mut con)
                .await
                .map_err(redis_error)?;
        }
        Ok(back)
    }
}

/// The keys of one user; every one carries the user's hash tag.
struct UserKeys {
    tag: String,
}

impl UserKeys {
    /// The keys of `site`'s `user`, refusing names a store may not hold.
    fn new(site: &str, user: &str) -> Result<Self, StoreError> {
        checked(site)?;
        checked(user)?;
        Ok(Self::of(site, user))
    }

    /// The keys of a device's user, refusing names a store may not hold.
    fn for_device(key: &DeviceKey) -> Result<Self, StoreError> {
        checked(&key.device)?;
        Self::new(&key.site, &key.user)
    }

    /// Without the checks: for names read back from Redis, which were checked on their way in.
    fn of(site: &str, user: &str) -> Self {
        UserKeys {
            tag: format!("herald:{{{}:{}}}", escape(site), escape(user)),
        }
    }

    fn devices(&self) -> String {
        format!("{}:devices", self.tag)
    }

    fn rooms(&self) -> String {
        format!("{}:rooms", self.tag)
    }

    fn entries(&self, device: &str) -> String {
        format!("{}:entries:{}", self.tag, escape(device))
    }

    fn meta(&self, device: &str) -> String {
        format!("{}:meta:{}", self.tag, escape(device))
    }
}

/// The index of `site`'s users in shared `room` (already lowercase).
fn room_key(site: &str, room: &str) -> String {
    format!("herald:{{{}}}:room:{}", escape(site), escape(room))
}

/// The hash of the values retained in `site`'s `room`.
fn retained_room_key(site: &str, room: &str) -> String {
    format!("herald:{{retained:{}}}:room:{}", escape(site), escape(room))
}

/// The hash of `site`'s retained totals; in the same slot as its rooms, so one script updates both.
fn retained_usage_key(site: &str) -> String {
    format!("herald:{{retained:{}}}:usage", escape(site))
}

/// `name` with the characters that structure a key escaped, so distinct names give distinct keys.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

fn checked(name: &str) -> Result<&str, StoreError> {
    if valid_name(name) {
        Ok(name)
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

/// `e` as text with `url` cut out, should the client library ever quote it (it may hold a password).
fn parse<T: FromRedisValue>(reply: Option<Value>) -> Result<T, StoreError> {
    let reply = reply.ok_or_else(|| StoreError::Redis("a pipeline reply is missing".into()))?;
    redis::from_redis_value(reply)
        .map_err(|e| StoreError::Redis(format!("unexpected reply from Redis: {e}")))
}

/// Unix ms from a `TIME` reply (seconds, microseconds).
fn time_ms((secs, micros): (u64, u64)) -> u64 {
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// Whether a device expiry from the devices hash is still in the future (`0` means connected).
fn unexpired(at: u64, now: u64) -> bool {
    at == 0 || at > now
}

/// The offset of stream entry `id` (`0-<offset>`).
fn offset_of(id: &str) -> Result<u64, StoreError> {
    id.strip_prefix("0-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("mailbox entry ID '{id}' is not 0-<offset>")))
}

/// Helpers every script starts with.
const PRELUDE: &str = r#"
-- Milliseconds on the Redis clock, which every node shares.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Integers as text without Lua's float formatting.
local function int(n)
  return string.format('%d', n)
end
-- A device's expiry (0 while connected), or nil when it is unknown or has expired.
local function live_expiry(devices, device, now)
  local at = tonumber(redis.call('HGET', devices, device) or '')
  if at == nil or (at ~= 0 and at <= now) then return nil end
  return at
end
-- Keys a write created or touched expire with their disconnected device.
local function follow(at, entries, meta)
  if at ~= 0 then
    redis.call('PEXPIREAT', entries, int(at))
    redis.call('PEXPIREAT', meta, int(at))
  end
end
-- The fields of a stream entry, by name.
local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// KEYS: devices, then entries and meta of each device. ARGV: max entries, max bytes, event, resync,
/// payload, then the devices. Returns `{{device, offset}...}` and the devices registered but not given.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local max_entries, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local event, resync, payload = ARGV[3], ARGV[4], ARGV[5]
local landed, given = {}, {}
for k = 1, #ARGV - 5 do
  local device = ARGV[5 + k]
  local entries, meta = KEYS[2 * k], KEYS[2 * k + 1]
  given[device] = true
  local at = tonumber(redis.call('HGET', KEYS[1], device) or '')
  if at ~= nil and at ~= 0 and at <= now then
    -- Expired: forget it here, since no sweep comes for it.
    redis.call('HDEL', KEYS[1], device)
    redis.call('DEL', entries, meta)
  elseif at ~= nil then
    local offset = redis.call('HINCRBY', meta, 'next', 1)
    -- A first offset means a new mailbox: a stream left without its meta would refuse lower IDs.
    if offset == 1 then redis.call('DEL', entries) end
    redis.call('XADD', entries, '0-' .. int(offset), 'e', event, 'r', resync, 'p', payload)
    local bytes = redis.call('HINCRBY', meta, 'bytes', #payload)
    local count = redis.call('XLEN', entries)
    local dropped = false
    while count > 0 and (count > max_entries or bytes > max_bytes) do
      local oldest = redis.call('XRANGE', entries, '-', '+', 'COUNT', 1)[1]
      redis.call('XDEL', entries, oldest[1])
      bytes = bytes - #(fields(oldest[2]).p or '')
      count = count - 1
      dropped = true
    end
    if dropped then redis.call('HSET', meta, 'bytes', int(bytes), 'over', '1') end
    follow(at, entries, meta)
    landed[#landed + 1] = {device, offset}
  end
end
local registered = {}
for _, device in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not given[device] then registered[#registered + 1] = device end
end
return {landed, registered}
"#,
    )
});

/// KEYS: devices, entries, meta. ARGV: device, `0-<after>`, max entries, max bytes.
/// Returns `{overflowed, {{id, event, payload, resync}...}}`.
static READ: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if live_expiry(KEYS[1], ARGV[1], now_ms()) == nil then return {0, {}} end
local limit, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local over = tonumber(redis.call('HGET', KEYS[3], 'over') or '0')
local page, bytes, cursor = {}, 0, '(' .. ARGV[2]
-- Small batches, so a byte limit stops the read before it copies megabytes it will not return.
while #page < limit do
  local batch = redis.call('XRANGE', KEYS[2], cursor, '+', 'COUNT', int(math.min(limit - #page, 16)))
  if #batch == 0 then break end
  for _, item in ipairs(batch) do
    local f = fields(item[2])
    local p = f.p or ''
    if #page > 0 and bytes + #p > max_bytes then return {over, page} end
    bytes = bytes + #p
    page[#page + 1] = {item[1], f.e or '', p, f.r or '0'}
  end
  cursor = '(' .. batch[#batch][1]
end
return {over, page}
"#,
    )
});

/// KEYS: devices, entries, meta. ARGV: device, `0-<through>`, and the resync event if any.
/// Returns 1 when an older entry of the event was pending (resync), else 0.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local at = live_expiry(KEYS[1], ARGV[1], now_ms())
if at == nil or redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local through, event = ARGV[2], ARGV[3]
local skipped, freed = false, 0
while true do
  local batch = redis.call('XRANGE', KEYS[2], '-', through, 'COUNT', 256)
  if #batch == 0 then break end
  local ids = {}
  for _, item in ipairs(batch) do
    local f = fields(item[2])
    if event ~= nil and item[1] ~= through and f.e == event then skipped = true end
    freed = freed + #(f.p or '')
    ids[#ids + 1] = item[1]
  end
  redis.call('XDEL', KEYS[2], unpack(ids))
end
if skipped then
  -- The client missed an entry of this event, so the later ones are stale too: it resyncs the event.
  local cursor = '(' .. through
  while true do
    local batch = redis.call('XRANGE', KEYS[2], cursor, '+', 'COUNT', 256)
    if #batch == 0 then break end
    for _, item in ipairs(batch) do
      local f = fields(item[2])
      if f.e == event then
        freed = freed + #(f.p or '')
        redis.call('XDEL', KEYS[2], item[1])
      end
    end
    cursor = '(' .. batch[#batch][1]
  end
end
if freed > 0 then
  redis.call('HINCRBY', KEYS[3], 'bytes', int(-freed))
  follow(at, KEYS[2], KEYS[3])
end
if skipped then return 1 end
return 0
"#,
    )
});

/// KEYS: devices, entries, meta. ARGV: device. Keeps `next`, so offsets keep growing.
static RESET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if live_expiry(KEYS[1], ARGV[1], now_ms()) == nil then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'bytes', '0', 'over', '0')
end
return 1
"#,
    )
});

/// KEYS: devices, entries, meta, rooms. ARGV: device, then the lowercase rooms.
/// Returns the rooms the user had before.
static CONNECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local at = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '')
if at ~= nil and at ~= 0 and at <= now_ms() then
  -- The old mailbox expired (Redis may not have dropped it yet): this connection starts a new one.
  redis.call('DEL', KEYS[2], KEYS[3])
end
redis.call('HSET', KEYS[1], ARGV[1], '0')
for i = 1, 4 do redis.call('PERSIST', KEYS[i]) end
local old = redis.call('SMEMBERS', KEYS[4])
redis.call('DEL', KEYS[4])
for i = 2, #ARGV do redis.call('SADD', KEYS[4], ARGV[i]) end
return old
"#,
    )
});

/// KEYS: devices, entries, meta, rooms. ARGV: device, TTL in ms. An unknown device stays unknown.
static DISCONNECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
if live_expiry(KEYS[1], ARGV[1], now) == nil then return 0 end
local expires = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], int(expires))
redis.call('PEXPIREAT', KEYS[2], int(expires))
redis.call('PEXPIREAT', KEYS[3], int(expires))
-- With no device connected, the user's own keys expire with their last device: no scan needed.
local last, connected = 0, false
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local e = tonumber(all[i + 1]) or 0
  if e == 0 then
    connected = true
  elseif e <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif e > last then
    last = e
  end
end
if not connected then
  redis.call('PEXPIREAT', KEYS[1], int(last))
  redis.call('PEXPIREAT', KEYS[4], int(last))
end
return 1
"#,
    )
});

/// A call of a device script: KEYS devices, entries, meta; ARGV[1] the device.
fn device_call<'s>(script: &'s Script, keys: &UserKeys, device: &str) -> ScriptInvocation<'s> {
    let mut call = script.prepare_invoke();
    call.key(keys.devices())
        .key(keys.entries(device))
        .key(keys.meta(device))
        .arg(device);
    call
}

/// A call of the append script for `devices` of one user.
fn append_call(
    keys: &UserKeys,
    devices: &[String],
    entry: NewEntry<'_>,
    caps: Caps,
) -> ScriptInvocation<'static> {
    let mut call = APPEND.prepare_invoke();
    call.key(keys.devices());
    for device in devices {
        call.key(keys.entries(device)).key(keys.meta(device));
    }
    call.arg(caps.max_entries)
        .arg(caps.max_bytes)
        .arg(entry.event)
        .arg(u8::from(entry.resync))
        .arg(entry.payload);
    for device in devices {
        call.arg(device);
    }
    call
}

/// Helpers of the retained scripts.
const RETAINED_PRELUDE: &str = r#"
-- A kept value is '<at> <args>': the arguments follow the first space.
local function args_of(value)
  local space = string.find(value, ' ', 1, true)
  if space == nil then return '' end
  return string.sub(value, space + 1)
end
"#;

/// What the retain script answers besides 0 (kept, unchanged) and 1 (changed).
const FULL_BY_COUNT: i64 = -1;
const FULL_BY_BYTES: i64 = -2;

/// KEYS: room, usage. ARGV: event, args, at, if_changed (`0`/`1`), max entries, max bytes, room length.
/// Returns 1 when the kept value changed, 0 when not, or a refusal (`FULL_BY_COUNT`, `FULL_BY_BYTES`).
static RETAIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        &[
            RETAINED_PRELUDE,
            r#"
local event, args, at = ARGV[1], ARGV[2], ARGV[3]
local max_entries, max_bytes, room_len = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local old = redis.call('HGET', KEYS[1], event)
local old_args = nil
if old then old_args = args_of(old) end
if old_args == args and ARGV[4] == '1' then return 0 end
local size = room_len + #event + #args
local count = tonumber(redis.call('HGET', KEYS[2], 'count') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if old_args == nil then
  if count >= max_entries then return -1 end
  if bytes + size > max_bytes then return -2 end
  count, bytes = count + 1, bytes + size
else
  local old_size = room_len + #event + #old_args
  -- Only growth is refused: a site left above a lowered cap can still update its values in place.
  if size > old_size and bytes - old_size + size > max_bytes then return -2 end
  bytes = bytes - old_size + size
end
redis.call('HSET', KEYS[1], event, at .. ' ' .. args)
redis.call('HSET', KEYS[2], 'count', int(count), 'bytes', int(bytes))
if old_args == args then return 0 end
return 1
"#,
        ]
        .concat(),
    )
});

/// KEYS: room, usage. ARGV: room length. Returns how many values the room held.
static CLEAR_RETAINED: LazyLock<Script> = LazyLock::new(|| {
    script(
        &[
            RETAINED_PRELUDE,
            r#"
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return 0 end
local room_len, count, freed = tonumber(ARGV[1]), #all / 2, 0
for i = 1, #all, 2 do freed = freed + room_len + #all[i] + #args_of(all[i + 1]) end
redis.call('DEL', KEYS[1])
local left = redis.call('HINCRBY', KEYS[2], 'count', int(-count))
redis.call('HINCRBY', KEYS[2], 'bytes', int(-freed))
-- A site that keeps nothing leaves no key behind.
if left <= 0 then redis.call('DEL', KEYS[2]) end
return count
"#,
        ]
        .concat(),
    )
});

/// A call of the retain script.
fn retain_call(request: &RetainRequest<'_>, caps: RetainCaps) -> ScriptInvocation<'static> {
    let mut call = RETAIN.prepare_invoke();
    call.key(retained_room_key(request.site, request.room))
        .key(retained_usage_key(request.site))
        .arg(request.event)
        .arg(request.args)
        .arg(request.at)
        .arg(u8::from(request.if_changed))
        .arg(caps.max_entries)
        .arg(caps.max_bytes)
        .arg(request.room.len());
    call
}

/// The retain script's answer as `retain`'s.
fn retain_answer(answer: i64, site: &str, caps: RetainCaps) -> Result<bool, RetainedError> {
    let full = |limit: String| RetainedError::Full {
        site: site.to_string(),
        limit,
    };
    match answer {
        0 => Ok(false),
        1 => Ok(true),
        FULL_BY_COUNT => Err(full(format!("max_retained {}", caps.max_entries))),
        FULL_BY_BYTES => Err(full(format!("max_retained_bytes {}", caps.max_bytes))),
        other => Err(StoreError::Redis(format!("the retain script answered {other}")).into()),
    }
}

/// A kept `<at> <args>` value of `room`'s `event`.
fn parse_retained(room: &str, event: String, value: &str) -> Result<Retained, StoreError> {
    let corrupt =
        || StoreError::Corrupt(format!("retained value of '{event}' is not '<at> <args>'"));
    let (at, args) = value.split_once(' ').ok_or_else(corrupt)?;
    let at = at.parse().map_err(|_| corrupt())?;
    Ok(Retained {
        room: room.to_string(),
        args: args.to_string(),
        event,
        at,
    })
}

#[async_trait]
impl RetainedStore for RedisStore {
    async fn retain(
        &self,
        request: RetainRequest<'_>,
        caps: RetainCaps,
    ) -> Result<bool, RetainedError> {
        checked(request.site)?;
        checked(request.room)?;
        let answer: i64 = self.run(&retain_call(&request, caps)).await?;
        retain_answer(answer, request.site, caps)
    }

    async fn rooms(&self, site: &str, rooms: &[String]) -> Result<Vec<Retained>, RetainedError> {
        // A name `retain` refuses holds nothing; answering so keeps one odd room from failing a whole join.
        let rooms: Vec<&String> = rooms.iter().filter(|r| valid_name(r)).collect();
        if !valid_name(site) || rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut found = Vec::new();
        for chunk in rooms.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.hgetall(retained_room_key(site, room));
            }
            // A BTreeMap per room: its values come out in event order, as the trait promises.
            let replies: Vec<BTreeMap<String, String>> =
                pipe.query_async(&mut con).await.map_err(redis_error)?;
            for (room, values) in chunk.iter().zip(replies) {
                for (event, value) in values {
                    found.push(parse_retained(room, event, &value)?);
                }
            }
        }
        Ok(found)
    }

    async fn clear(&self, site: &str, room: &str) -> Result<usize, RetainedError> {
        if !valid_name(site) || !valid_name(room) {
            return Ok(0);
        }
        let mut call = CLEAR_RETAINED.prepare_invoke();
        call.key(retained_room_key(site, room))
            .key(retained_usage_key(site))
            .arg(room.len());
        Ok(self.run::<usize>(&call).await?)
    }
}

#[async_trait]
impl MailboxStore for RedisStore {
    async fn connect(&self, key: &DeviceKey, rooms: &[String]) -> Result<(), StoreError> {
        let keys = UserKeys::for_device(key)?;
        let rooms: BTreeSet<String> = rooms
            .iter()
            .map(|r| checked(r).map(str::to_lowercase))
            .collect::<Result<_, _>>()?;
        let mut call = device_call(&CONNECT, &keys, &key.device);
        call.key(keys.rooms());
        for room in &rooms {
            call.arg(room);
        }
        let old: Vec<String> = self.run(&call).await?;
        self.update_room_index(&key.site, &key.user, &keys, old, &rooms)
            .await
    }

    async fn disconnect(&self, key: &DeviceKey, ttl: Duration) -> Result<(), StoreError> {
        let keys = UserKeys::for_device(key)?;
        let ttl_ms = ttl.min(MAX_TTL).as_millis() as u64;
        let mut call = device_call(&DISCONNECT, &keys, &key.device);
        call.key(keys.rooms()).arg(ttl_ms);
        self.run::<u8>(&call).await.map(|_| ())
    }

    async fn append(
        &self,
        site: &str,
        users: &[String],
        entry: NewEntry<'_>,
        caps: Caps,
    ) -> Result<Vec<Queued>, StoreError> {
        let keys = users
            .iter()
            .map(|u| UserKeys::new(site, u))
            .collect::<Result<Vec<_>, _>>()?;
        let parallel = (IN_FLIGHT_BYTES / entry.payload.len().max(1)).clamp(4, 256);
        let keys = &keys;
        // Closures over indices, not references, keep the future `Send` for `async_trait`.
        let mut queued = futures_util::stream::iter(0..keys.len())
            .map(move |user| self.append_queued(user, &keys[user], entry, caps))
            .buffer_unordered(parallel)
            .try_fold(Vec::new(), |mut all, landed| async move {
                all.extend(landed);
                Ok(all)
            })
            .await?;
        queued.sort_by(|a, b| (a.user, &a.device).cmp(&(b.user, &b.device)));
        Ok(queued)
    }

    async fn read(
        &self,
        key: &DeviceKey,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        let keys = UserKeys::for_device(key)?;
        let mut call = device_call(&READ, &keys, &key.device);
        call.arg(format!("0-{after}"))
            .arg(max_entries)
            .arg(max_bytes);
        type Row = (String, String, Vec<u8>, String);
        let (overflowed, rows): (u8, Vec<Row>) = self.run(&call).await?;
        let entries = rows
            .into_iter()
            .map(|(id, event, payload, resync)| {
                Ok(Entry {
                    offset: offset_of(&id)?,
                    event,
                    payload: Bytes::from(payload),
                    resync: resync == "1",
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Page {
            entries,
            overflowed: overflowed != 0,
        })
    }

    async fn ack(
        &self,
        key: &DeviceKey,
        through: u64,
        resync_event: Option<&str>,
    ) -> Result<AckOutcome, StoreError> {
        let keys = UserKeys::for_device(key)?;
        let mut call = device_call(&ACK, &keys, &key.device);
        call.arg(format!("0-{through}"));
        if let Some(event) = resync_event {
            call.arg(event);
        }
        let skipped: u8 = self.run(&call).await?;
        Ok(if skipped != 0 {
            AckOutcome::Resync
        } else {
            AckOutcome::Acked
        })
    }

    async fn reset(&self, key: &DeviceKey) -> Result<(), StoreError> {
        let keys = UserKeys::for_device(key)?;
        let call = device_call(&RESET, &keys, &key.device);
        self.run::<u8>(&call).await.map(|_| ())
    }

    async fn users_in_room(&self, site: &str, room: &str) -> Result<Vec<String>, StoreError> {
        checked(site)?;
        let room = checked(room)?.to_lowercase();
        let index = room_key(site, &room);
        let mut con = self.con.clone();
        let listed: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&index)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        if listed.is_empty() {
            return Ok(listed);
        }
        let (mut members, stale) = self.split_members(site, &room, listed).await?;
        if !stale.is_empty() {
            members.extend(self.drop_stale(site, &room, stale).await?);
        }
        members.sort();
        Ok(members)
    }

    async fn devices(&self, site: &str, user: &str) -> Result<Vec<DeviceStatus>, StoreError> {
        let keys = UserKeys::new(site, user)?;
        let mut con = self.con.clone();
        let (time, registered): ((u64, u64), BTreeMap<String, u64>) = redis::pipe()
            .cmd("TIME")
            .hgetall(keys.devices())
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        let now = time_ms(time);
        let live: Vec<(String, u64)> = registered
            .into_iter()
            .filter(|&(_, at)| unexpired(at, now))
            .collect();
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (device, _) in &live {
            pipe.xlen(keys.entries(device));
            pipe.cmd("HMGET")
                .arg(keys.meta(device))
                .arg("bytes")
                .arg("over");
        }
        let replies: Vec<Value> = pipe.query_async(&mut con).await.map_err(redis_error)?;
        let mut replies = replies.into_iter();
        let mut found = Vec::with_capacity(live.len());
        for (device, at) in live {
            let pending: u64 = parse(replies.next())?;
            let (bytes, over): (Option<u64>, Option<u64>) = parse(replies.next())?;
            found.push(DeviceStatus {
                device,
                connected: at == 0,
                pending,
                bytes: bytes.unwrap_or(0),
                overflowed: over.unwrap_or(0) != 0,
                expires_at_ms: (at != 0).then_some(at),
            });
        }
        Ok(found)
    }

    async fn sweep(&self) -> Result<usize, StoreError> {
        // Keys expire on their own, and scripts already treat expired devices as gone.
        Ok(0)
    }

    async fn announce(&self, site: &str, user: &str) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _receivers: usize = con
            .publish(channel(&self.client), format!("{site}{SEP}{user}"))
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<Option<Announcements>, StoreError> {
        // Subscribed before returning, so an announcement made after this call is never missed.
        let subscription = open_subscription(&self.client).await.map_err(redis_error)?;
        let (tx, rx) = mpsc::channel(ANNOUNCE_QUEUE);
        tokio::spawn(relay(self.client.clone(), subscription, tx));
        Ok(Some(rx))
    }
}

type Subscription = (PubSubSink, PubSubStream);

async fn open_subscription(client: &redis::Client) -> redis::RedisResult<Subscription> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel(client)).await?;
    Ok(pubsub.split())
}

/// Why forwarding stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    ReceiverGone,
    ConnectionLost,
}

/// Forwards announcements until the receiver is dropped, subscribing again with backoff whenever the
/// connection is lost. Announcements published while it is down are lost; the gateway's reads catch up.
async fn relay(
    client: redis::Client,
    mut subscription: Subscription,
    tx: mpsc::Sender<(String, String)>,
) {
    loop {
        if forward(subscription, &tx).await == Stopped::ReceiverGone {
            return;
        }
        let mut backoff = BACKOFF_MIN;
        subscription = loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = tx.closed() => return,
            }
            match open_subscription(&client).await {
                Ok(subscription) => {
                    tracing::info!("mailbox announcements: subscribed again");
                    break subscription;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "mailbox announcements: cannot subscribe");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
    }
}

async fn forward(
    (mut sink, mut messages): Subscription,
    tx: &mpsc::Sender<(String, String)>,
) -> Stopped {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut dropping = false;
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    tracing::warn!("mailbox announcements: connection lost");
                    return Stopped::ConnectionLost;
                };
                let Some(announcement) = parse_announcement(message.get_payload_bytes()) else {
                    continue;
                };
                match tx.try_send(announcement) {
                    Ok(()) => dropping = false,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if !dropping {
                            tracing::warn!("mailbox announcements: receiver is full, dropping");
                        }
                        dropping = true;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Stopped::ReceiverGone,
                }
            }
            _ = ping.tick() => {
                if !matches!(tokio::time::timeout(PING_TIMEOUT, sink.ping::<Value>()).await, Ok(Ok(_))) {
                    tracing::warn!("mailbox announcements: Redis stopped answering pings");
                    return Stopped::ConnectionLost;
                }
            }
            () = tx.closed() => return Stopped::ReceiverGone,
        }
    }
}

/// `site␟user` as `(site, user)`; anything else is not ours and is ignored.
fn parse_announcement(raw: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (site, user) = text.split_once(SEP)?;
    Some((site.to_string(), user.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::mailbox::contract::{fresh_site, ROOMY};

    async fn store() -> RedisStore {
        let url = std::env::var("HERALD_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        match RedisStore::connect(&url, &crate::tls::Trust::system()).await {
            Ok(store) => store,
            Err(e) => panic!(
                "this test needs Redis at 127.0.0.1:6379 (start it with: redis-server --daemonize yes \
                 --save '' --appendonly no), or its URL in HERALD_TEST_REDIS_URL: {e}"
            ),
        }
    }

    fn entry(payload: &[u8]) -> NewEntry<'_> {
        NewEntry {
            event: "ev",
            payload,
            resync: false,
        }
    }

    fn one(user: &str) -> Vec<String> {
        vec![user.to_string()]
    }

    async fn pttl(store: &RedisStore, key: &str) -> i64 {
        let mut con = store.con.clone();
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_passes_the_contract() {
        crate::mailbox::contract::run_all(Arc::new(store().await)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_passes_the_retained_contract() {
        crate::retained::contract::run_all(Arc::new(store().await)).await;
    }

    #[tokio::test]
    async fn retained_keys_follow_the_layout() {
        use crate::retained::contract::{request, ROOMY};
        let store = store().await;
        let site = crate::retained::contract::fresh_site("layout");
        let kept = store
            .retain(request(&site, "Room:1", "ev", "[1]", 7), ROOMY)
            .await;
        assert!(kept.expect("retain"));
        let room_key = format!("herald:{{retained:{site}}}:room:Room%3A1");
        let usage_key = format!("herald:{{retained:{site}}}:usage");
        let mut con = store.con.clone();
        let room: BTreeMap<String, String> = con.hgetall(&room_key).await.expect("room");
        assert_eq!(room, BTreeMap::from([("ev".into(), "7 [1]".into())]));
        let usage: BTreeMap<String, u64> = con.hgetall(&usage_key).await.expect("usage");
        // Room (6) + event (2) + args (3) bytes.
        let want = BTreeMap::from([("count".into(), 1), ("bytes".into(), 11)]);
        assert_eq!(usage, want);
        assert_eq!(store.clear(&site, "Room:1").await.expect("clear"), 1);
        let left: u64 = con.exists(&[&room_key, &usage_key]).await.expect("exists");
        assert_eq!(left, 0, "a site that keeps nothing leaves no key");
    }

    #[tokio::test]
    async fn announcements_reach_subscribers() {
        let store = store().await;
        let mut announcements = store.subscribe().await.unwrap().unwrap();
        let site = fresh_site("announce");
        store.announce(&site, "user_1").await.unwrap();
        // Other tests may announce on the same Redis meanwhile: wait for ours.
        let ours = async {
            while let Some((s, u)) = announcements.recv().await {
                if s == site {
                    return Some((s, u));
                }
            }
            None
        };
        let got = tokio::time::timeout(Duration::from_secs(5), ours).await;
        assert_eq!(got.unwrap(), Some((site.clone(), "user_1".to_string())));
    }

    #[tokio::test]
    async fn names_that_look_alike_do_not_share_keys() {
        let store = store().await;
        let site = fresh_site("alias");
        let a = DeviceKey::new(&format!("{site}:x"), "u", "d");
        let b = DeviceKey::new(&site, "x:u", "d");
        let c = DeviceKey::new(&site, "x}u{", "d");
        for key in [&a, &b, &c] {
            store.connect(key, &[]).await.unwrap();
        }
        let queued = store
            .append(&a.site, &one("u"), entry(b"[1]"), ROOMY)
            .await
            .unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(
            store
                .read(&a, 0, 10, usize::MAX)
                .await
                .unwrap()
                .entries
                .len(),
            1
        );
        assert!(store
            .read(&b, 0, 10, usize::MAX)
            .await
            .unwrap()
            .entries
            .is_empty());
        assert!(store
            .read(&c, 0, 10, usize::MAX)
            .await
            .unwrap()
            .entries
            .is_empty());
        for key in [&a, &b, &c] {
            store.disconnect(key, Duration::ZERO).await.unwrap();
        }
    }

    #[tokio::test]
    async fn disconnected_users_leave_no_key_without_a_ttl() {
        let store = store().await;
        let site = fresh_site("ttlkeys");
        let key = DeviceKey::new(&site, "user_1", "d");
        let keys = UserKeys::of(&site, "user_1");
        store.connect(&key, &["Room".to_string()]).await.unwrap();
        store
            .disconnect(&key, Duration::from_secs(60))
            .await
            .unwrap();
        // Keys the append creates after the disconnect expire with the device too.
        store
            .append(&site, &one("user_1"), entry(b"[1]"), ROOMY)
            .await
            .unwrap();
        for k in [
            keys.devices(),
            keys.rooms(),
            keys.entries("d"),
            keys.meta("d"),
        ] {
            let ttl = pttl(&store, &k).await;
            assert!(ttl > 0 && ttl <= 60_000, "{k} has PTTL {ttl}");
        }
        store.connect(&key, &["Room".to_string()]).await.unwrap();
        for k in [
            keys.devices(),
            keys.rooms(),
            keys.entries("d"),
            keys.meta("d"),
        ] {
            assert_eq!(pttl(&store, &k).await, -1, "{k} is persistent again");
        }
        store.disconnect(&key, Duration::ZERO).await.unwrap();
        for k in [
            keys.devices(),
            keys.rooms(),
            keys.entries("d"),
            keys.meta("d"),
        ] {
            assert_eq!(pttl(&store, &k).await, -2, "{k} is gone");
        }
        assert!(store.users_in_room(&site, "room").await.unwrap().is_empty());
        let mut con = store.con.clone();
        let index: Vec<String> = con.smembers(room_key(&site, "room")).await.unwrap();
        assert!(index.is_empty(), "the stale index entry was dropped");
    }

    #[tokio::test]
    async fn megabyte_entries_round_trip() {
        let store = store().await;
        let site = fresh_site("big");
        let key = DeviceKey::new(&site, "user_1", "d");
        store.connect(&key, &[]).await.unwrap();
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..3 {
            store
                .append(&site, &one("user_1"), entry(&payload), ROOMY)
                .await
                .unwrap();
        }
        let page = store.read(&key, 0, 100, 1 << 20).await.unwrap();
        assert_eq!(
            page.entries.len(),
            1,
            "the byte limit stops after one entry"
        );
        assert_eq!(&page.entries[0].payload[..], &payload[..]);
        let status = store.devices(&site, "user_1").await.unwrap();
        assert_eq!((status[0].pending, status[0].bytes), (3, 3 << 20));
        store.disconnect(&key, Duration::ZERO).await.unwrap();
    }

    #[tokio::test]
    async fn errors_never_show_the_url() {
        // A refused connection fails only after the manager's retries (seconds), so only a bad URL here.
        let url = "redis://:hunter2-secret@127.0.0.1:notaport";
        let e = RedisStore::connect(url, &crate::tls::Trust::system())
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn announcements_parse() {
        assert_eq!(
            parse_announcement("s\u{1f}user_1".as_bytes()),
            Some(("s".to_string(), "user_1".to_string()))
        );
        assert_eq!(parse_announcement(b"no separator"), None);
    }
}
