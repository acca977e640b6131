//! The embedded mailbox store: one redb file in the data directory, written by one thread that commits every
//! write that arrived meanwhile in one transaction (group commit), so a burst costs one fsync, not one each.
//!
//! Tables (`dev` is `site␟user␟device`, `user` is `site␟user`, ␟ = U+001F, which names may not hold):
//! - `entries`: `(dev, offset)` → `[resync u8][event length u32][event][payload]`
//! - `devices`: `dev` → `Meta` (next offset, count, bytes, expiry, overflow mark)
//! - `user_rooms`: `user` → the user's lowercase shared rooms, ␟-separated
//! - `room_users`: `(site␟room, user)` → `()`, the index shared-room publishes expand through
//! - `retained`: `(site␟room, event)` → `[at u64][args]`, the retained values (`crate::retained`); one room's
//!   are one range, in event order
//! - `retained_usage`: `site` → `[count u64][bytes u64]`, what a site's retained values take, kept in the same
//!   transaction as the values so the caps are checked against exact totals
//!
//! Files written before retained state existed lack the last two tables; `open` creates them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

mod migrate;

use super::store::{
    now_ms, valid_name, AckOutcome, Caps, DeviceKey, DeviceStatus, Entry, MailboxStore, NewEntry,
    Page, Queued, StoreError,
};
use crate::retained::{RetainCaps, RetainRequest, Retained, RetainedError, RetainedStore};

const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const USER_ROOMS: TableDefinition<&str, &str> = TableDefinition::new("user_rooms");
const ROOM_USERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("room_users");
const RETAINED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("retained");
const RETAINED_USAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("retained_usage");

const SEP: char = '\u{1f}';
/// Most writes one transaction commits; bounds the latency of the first writer in a burst.
const MAX_GROUP: usize = 4096;
/// Writes waiting for the writer thread; senders wait when it is full (back-pressure on publishers).
const QUEUE: usize = 16_384;

/// The embedded store. Cloning shares the database and the writer thread.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<DbSlot>,
    writes: mpsc::Sender<Job>,
}

/// The open database, which the writer closes and opens again after a failed write: redb answers every
/// operation after an I/O error (a full disk) with "previous I/O error" until the file is reopened, so without
/// this a disk that filled once would stop the store for good.
struct DbSlot {
    path: std::path::PathBuf,
    current: parking_lot::RwLock<Option<Arc<Database>>>,
}

/// How long a reopen waits for reads still running on the old handle.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl DbSlot {
    /// The database, unless a failed write closed it and the writer has not reopened it yet.
    fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.current.read().clone().ok_or(StoreError::Embedded(
            "the mailbox file is closed after a failed write; the next write reopens it".into(),
        ))
    }

    /// Closes the database after a failed write; the next write reopens it.
    fn close(&self) {
        self.current.write().take();
    }

    /// The database for the writer, reopened first if a failed write closed it.
    fn for_writer(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.current.read().clone() {
            return Ok(db);
        }
        let mut current = self.current.write();
        // redb locks the file, so the old handle must be gone first; a read still running may hold it briefly.
        let started = std::time::Instant::now();
        let db = loop {
            match Database::create(&self.path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if started.elapsed() < REOPEN_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened.map_err(embedded)?,
            }
        };
        let db = Arc::new(db);
        *current = Some(Arc::clone(&db));
        tracing::info!(path = %self.path.display(), "reopened the mailbox file after a failed write");
        Ok(db)
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path` and starts its writer thread. A file left by a crash is
    /// repaired here, before herald serves anyone, and a file written by redb 2 (herald before issue 14) is
    /// migrated to redb 4, keeping the old one as `<name>.redb2-backup` (see `migrate`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Embedded(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = match Database::create(path) {
            // A file written by redb 2, herald's store before issue 14: copied into redb 4's format first.
            Err(redb::DatabaseError::UpgradeRequired(version)) => {
                tracing::warn!(
                    path = %path.display(),
                    version,
                    "the mailbox file is in redb 2's format; migrating it"
                );
                migrate::from_redb2(path)?;
                Database::create(path)
            }
            opened => opened,
        }
        .map_err(|e| StoreError::Embedded(format!("cannot open {}: {e}", path.display())))?;
        create_tables(&db)?;
        let db = Arc::new(DbSlot {
            path: path.to_path_buf(),
            current: parking_lot::RwLock::new(Some(Arc::new(db))),
        });
        let (writes, queue) = mpsc::channel(QUEUE);
        let writer_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("herald-mailbox-writer".into())
            .spawn(move || writer(&writer_db, queue))
            .map_err(|e| StoreError::Embedded(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedStore { db, writes })
    }

    /// Marks every device left recorded as connected (by a herald that was killed) disconnected, expiring its
    /// site's TTL from now; returns how many. Only the node that owns the file may call it, at start: every
    /// device is offline then, and one left connected would never expire.
    pub async fn release_connected(
        &self,
        ttl_by_site: &[(String, std::time::Duration)],
    ) -> Result<usize, StoreError> {
        let now = now_ms();
        let expires_at_by_site = ttl_by_site
            .iter()
            .map(|(site, ttl)| (site.clone(), now.saturating_add(ttl.as_millis() as u64)))
            .collect();
        match self.write(Op::Release { expires_at_by_site }).await? {
            Reply::Swept(n) => Ok(n),
            _ => Err(StoreError::Embedded("unexpected writer reply".into())),
        }
    }

    async fn write(&self, work: impl Into<Work>) -> Result<Reply, StoreError> {
        let (reply, answer) = oneshot::channel();
        let work = work.into();
        self.writes
            .send(Job { work, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.get()?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(embedded)?;
            f(&txn)
        })
        .await
        .map_err(|e| StoreError::Embedded(format!("read task failed: {e}")))?
    }
}

/// A redb error as a store error; a full disk is told apart, since its cure is the operator's.
fn embedded(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull,
        other => StoreError::Embedded(other.to_string()),
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Whether a failed write left redb needing the file reopened.
fn needs_reopen(e: &StoreError) -> bool {
    matches!(e, StoreError::DiskFull)
        || matches!(e, StoreError::Embedded(text) if text.contains("I/O") || text.contains("os error"))
}

fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(embedded)?;
    txn.open_table(ENTRIES).map_err(embedded)?;
    txn.open_table(DEVICES).map_err(embedded)?;
    txn.open_table(USER_ROOMS).map_err(embedded)?;
    txn.open_table(ROOM_USERS).map_err(embedded)?;
    txn.open_table(RETAINED).map_err(embedded)?;
    txn.open_table(RETAINED_USAGE).map_err(embedded)?;
    txn.commit().map_err(embedded)
}

/// A device's bookkeeping, fixed-size little-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Meta {
    /// The offset the last append got.
    last_offset: u64,
    count: u64,
    bytes: u64,
    /// Unix ms when the mailbox expires; 0 while connected.
    expires_at: u64,
    overflowed: bool,
}

impl Meta {
    const LEN: usize = 33;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.last_offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.count.to_le_bytes());
        out[16..24].copy_from_slice(&self.bytes.to_le_bytes());
        out[24..32].copy_from_slice(&self.expires_at.to_le_bytes());
        out[32] = u8::from(self.overflowed);
        out
    }

    fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        let word = |at: usize| -> Result<u64, StoreError> {
            raw.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| StoreError::Corrupt("device record too short".into()))
        };
        Ok(Meta {
            last_offset: word(0)?,
            count: word(8)?,
            bytes: word(16)?,
            expires_at: word(24)?,
            overflowed: raw.get(32).copied().unwrap_or(0) != 0,
        })
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }
}

fn encode_entry(entry: &NewEntry<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + entry.event.len() + entry.payload.len());
    out.push(u8::from(entry.resync));
    out.extend_from_slice(&(entry.event.len() as u32).to_le_bytes());
    out.extend_from_slice(entry.event.as_bytes());
    out.extend_from_slice(entry.payload);
    out
}

/// The event name, the payload and the resync flag of a stored entry.
fn decode_entry(raw: &[u8]) -> Result<(&str, &[u8], bool), StoreError> {
    let corrupt = || StoreError::Corrupt("entry record malformed".into());
    let resync = *raw.first().ok_or_else(corrupt)? != 0;
    let len = raw
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(corrupt)? as usize;
    let event = raw.get(5..5 + len).ok_or_else(corrupt)?;
    let event = std::str::from_utf8(event).map_err(|_| corrupt())?;
    Ok((event, &raw[5 + len..], resync))
}

fn payload_len(raw: &[u8]) -> u64 {
    decode_entry(raw).map_or(0, |(_, p, _)| p.len() as u64)
}

fn dev_id(key: &DeviceKey) -> Result<String, StoreError> {
    for name in [&key.site, &key.user, &key.device] {
        if !valid_name(name) {
            return Err(StoreError::BadName(name.clone()));
        }
    }
    Ok(format!("{}{SEP}{}{SEP}{}", key.site, key.user, key.device))
}

fn user_id(site: &str, user: &str) -> Result<String, StoreError> {
    for name in [site, user] {
        if !valid_name(name) {
            return Err(StoreError::BadName(name.to_string()));
        }
    }
    Ok(format!("{site}{SEP}{user}{SEP}"))
}

/// `[prefix, end)` covers every `dev` that starts with `prefix` (which ends in ␟).
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix[..prefix.len() - SEP.len_utf8()].to_string();
    end.push('\u{20}');
    end
}

/// A write for the writer thread.
enum Op {
    Connect {
        dev: String,
        user: String,
        rooms: Vec<String>,
    },
    Disconnect {
        dev: String,
        expires_at: u64,
    },
    Append {
        users: Vec<String>,
        entry: Vec<u8>,
        payload_len: u64,
        caps: Caps,
    },
    Ack {
        dev: String,
        through: u64,
        resync_event: Option<String>,
    },
    Reset {
        dev: String,
    },
    Sweep {
        now: u64,
    },
    /// Marks every device still recorded as connected disconnected, expiring at its site's time.
    Release {
        expires_at_by_site: Vec<(String, u64)>,
    },
}

/// A write to retained state for the writer thread.
enum RetainedOp {
    Retain(OwnedRetain),
    Clear { site: String, room: String },
}

/// A `RetainRequest` with its caps, owned so it can cross to the writer thread.
struct OwnedRetain {
    site: String,
    room: String,
    event: String,
    args: String,
    at: u64,
    if_changed: bool,
    caps: RetainCaps,
}

/// Whatever the writer thread applies: both kinds share its transactions, so they share its group commit.
enum Work {
    Mailbox(Op),
    Retained(RetainedOp),
}

impl From<Op> for Work {
    fn from(op: Op) -> Self {
        Work::Mailbox(op)
    }
}

impl From<RetainedOp> for Work {
    fn from(op: RetainedOp) -> Self {
        Work::Retained(op)
    }
}

enum Reply {
    Done,
    Queued(Vec<Queued>),
    Ack(AckOutcome),
    Swept(usize),
    Retained(RetainOutcome),
}

/// What a retain did. A refusal is an answer, not a store failure: the transaction goes on for the others.
enum RetainOutcome {
    /// Written (or left alone with `if_changed`); whether the kept value changed.
    Kept { changed: bool },
    /// Refused by a cap, named as the error shows it.
    Full { limit: String },
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// The writer thread: takes every job waiting, applies them in one transaction, commits once, answers all.
fn writer(slot: &DbSlot, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (results, committed) = match slot.for_writer() {
            Ok(db) => match db.begin_write() {
                Ok(txn) => {
                    let results: Vec<_> = jobs.iter().map(|job| apply(&txn, &job.work)).collect();
                    (results, txn.commit().map_err(embedded))
                }
                Err(e) => (Vec::new(), Err(embedded(e))),
            },
            Err(e) => (Vec::new(), Err(e)),
        };
        if let Err(e) = &committed {
            if needs_reopen(e) {
                slot.close();
            }
        }
        match committed {
            Ok(()) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = jobs.len(), "mailbox commit failed");
                for job in jobs {
                    let failed = match &e {
                        StoreError::DiskFull => StoreError::DiskFull,
                        other => StoreError::Embedded(other.to_string()),
                    };
                    let _ = job.reply.send(Err(failed));
                }
            }
        }
    }
}

struct Tables<'t> {
    entries: Table<'t, (&'static str, u64), &'static [u8]>,
    devices: Table<'t, &'static str, &'static [u8]>,
    user_rooms: Table<'t, &'static str, &'static str>,
    room_users: Table<'t, (&'static str, &'static str), ()>,
}

fn apply(txn: &WriteTransaction, work: &Work) -> Result<Reply, StoreError> {
    match work {
        Work::Mailbox(op) => apply_mailbox(txn, op),
        Work::Retained(op) => apply_retained(txn, op),
    }
}

fn apply_mailbox(txn: &WriteTransaction, op: &Op) -> Result<Reply, StoreError> {
    let mut t = Tables {
        entries: txn.open_table(ENTRIES).map_err(embedded)?,
        devices: txn.open_table(DEVICES).map_err(embedded)?,
        user_rooms: txn.open_table(USER_ROOMS).map_err(embedded)?,
        room_users: txn.open_table(ROOM_USERS).map_err(embedded)?,
    };
    match op {
        Op::Connect { dev, user, rooms } => {
            let mut meta = t.meta(dev)?.unwrap_or_default();
            meta.expires_at = 0;
            t.put_meta(dev, &meta)?;
            t.set_rooms(user, rooms)?;
            Ok(Reply::Done)
        }
        Op::Disconnect { dev, expires_at } => {
            if let Some(mut meta) = t.meta(dev)? {
                meta.expires_at = *expires_at;
                t.put_meta(dev, &meta)?;
            }
            Ok(Reply::Done)
        }
        Op::Append {
            users,
            entry,
            payload_len,
            caps,
        } => {
            let mut queued = Vec::new();
            for (index, user) in users.iter().enumerate() {
                for (device, offset) in t.append(user, entry, *payload_len, *caps)? {
                    queued.push(Queued {
                        user: index,
                        device,
                        offset,
                    });
                }
            }
            Ok(Reply::Queued(queued))
        }
        Op::Ack {
            dev,
            through,
            resync_event,
        } => t
            .ack(dev, *through, resync_event.as_deref())
            .map(Reply::Ack),
        Op::Reset { dev } => {
            if let Some(mut meta) = t.meta(dev)? {
                t.remove_entries(dev, 0, u64::MAX, |_| true)?;
                meta.count = 0;
                meta.bytes = 0;
                meta.overflowed = false;
                t.put_meta(dev, &meta)?;
            }
            Ok(Reply::Done)
        }
        Op::Sweep { now } => t.sweep(*now).map(Reply::Swept),
        Op::Release { expires_at_by_site } => t.release(expires_at_by_site).map(Reply::Swept),
    }
}

impl Tables<'_> {
    fn meta(&self, dev: &str) -> Result<Option<Meta>, StoreError> {
        match self.devices.get(dev).map_err(embedded)? {
            Some(raw) => Meta::decode(raw.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_meta(&mut self, dev: &str, meta: &Meta) -> Result<(), StoreError> {
        self.devices
            .insert(dev, &meta.encode()[..])
            .map_err(embedded)?;
        Ok(())
    }

    /// Every device of `user` (a `site␟user␟` prefix) with its record.
    fn devices_of(&self, user: &str) -> Result<Vec<(String, Meta)>, StoreError> {
        let end = prefix_end(user);
        let mut found = Vec::new();
        for row in self
            .devices
            .range::<&str>(user..end.as_str())
            .map_err(embedded)?
        {
            let (dev, meta) = row.map_err(embedded)?;
            found.push((dev.value().to_string(), Meta::decode(meta.value())?));
        }
        Ok(found)
    }

    fn append(
        &mut self,
        user: &str,
        entry: &[u8],
        payload_len: u64,
        caps: Caps,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let now = now_ms();
        let mut landed = Vec::new();
        for (dev, mut meta) in self.devices_of(user)? {
            if meta.expired(now) {
                self.forget_device(&dev)?;
                continue;
            }
            meta.last_offset += 1;
            meta.count += 1;
            meta.bytes += payload_len;
            self.entries
                .insert((dev.as_str(), meta.last_offset), entry)
                .map_err(embedded)?;
            while meta.count > caps.max_entries || meta.bytes > caps.max_bytes {
                let Some(dropped) = self.pop_oldest(&dev)? else {
                    break;
                };
                meta.count -= 1;
                meta.bytes = meta.bytes.saturating_sub(dropped);
                meta.overflowed = true;
            }
            self.put_meta(&dev, &meta)?;
            landed.push((dev[user.len()..].to_string(), meta.last_offset));
        }
        Ok(landed)
    }

    /// Removes the oldest entry of `dev`; returns its payload size.
    fn pop_oldest(&mut self, dev: &str) -> Result<Option<u64>, StoreError> {
        let first = self
            .entries
            .range((dev, 0)..=(dev, u64::MAX))
            .map_err(embedded)?
            .next()
            .transpose()
            .map_err(embedded)?
            .map(|(k, v)| (k.value().1, payload_len(v.value())));
        match first {
            Some((offset, size)) => {
                self.entries.remove((dev, offset)).map_err(embedded)?;
                Ok(Some(size))
            }
            None => Ok(None),
        }
    }

    /// Removes the entries of `dev` in `[from, to]` that `matches` picks; returns (count, payload bytes).
    fn remove_entries(
        &mut self,
        dev: &str,
        from: u64,
        to: u64,
        mut matches: impl FnMut(&[u8]) -> bool,
    ) -> Result<(u64, u64), StoreError> {
        let (mut count, mut bytes) = (0, 0);
        let removed = self
            .entries
            .extract_from_if((dev, from)..=(dev, to), |_, v| matches(v))
            .map_err(embedded)?;
        for row in removed {
            let (_, v) = row.map_err(embedded)?;
            count += 1;
            bytes += payload_len(v.value());
        }
        Ok((count, bytes))
    }

    fn ack(
        &mut self,
        dev: &str,
        through: u64,
        resync_event: Option<&str>,
    ) -> Result<AckOutcome, StoreError> {
        let Some(mut meta) = self.meta(dev)? else {
            return Ok(AckOutcome::Acked);
        };
        let is_event =
            |raw: &[u8], event: &str| decode_entry(raw).is_ok_and(|(e, _, _)| e == event);
        let skipped_head = match resync_event {
            Some(event) if through > 0 => {
                let mut older = self
                    .entries
                    .range((dev, 0)..(dev, through))
                    .map_err(embedded)?;
                older.any(|row| row.is_ok_and(|(_, v)| is_event(v.value(), event)))
            }
            _ => false,
        };
        let (mut count, mut bytes) = self.remove_entries(dev, 0, through, |_| true)?;
        if let (true, Some(event)) = (skipped_head, resync_event) {
            let (c, b) = self.remove_entries(dev, through, u64::MAX, |v| is_event(v, event))?;
            count += c;
            bytes += b;
        }
        meta.count = meta.count.saturating_sub(count);
        meta.bytes = meta.bytes.saturating_sub(bytes);
        self.put_meta(dev, &meta)?;
        Ok(if skipped_head {
            AckOutcome::Resync
        } else {
            AckOutcome::Acked
        })
    }

    /// Replaces `user`'s shared rooms (lowercase) in the room index.
    fn set_rooms(&mut self, user: &str, rooms: &[String]) -> Result<(), StoreError> {
        let (site, name) = split_user(user);
        let new: Vec<String> = rooms.iter().map(|r| r.to_lowercase()).collect();
        let old = self.user_rooms.get(user).map_err(embedded)?.map(|v| {
            v.value()
                .split(SEP)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        for room in old.unwrap_or_default() {
            if !new.contains(&room) {
                let room_key = format!("{site}{SEP}{room}");
                self.room_users
                    .remove((room_key.as_str(), name))
                    .map_err(embedded)?;
            }
        }
        for room in &new {
            let room_key = format!("{site}{SEP}{room}");
            self.room_users
                .insert((room_key.as_str(), name), ())
                .map_err(embedded)?;
        }
        let joined = new.join(&SEP.to_string());
        self.user_rooms
            .insert(user, joined.as_str())
            .map_err(embedded)?;
        Ok(())
    }

    fn forget_device(&mut self, dev: &str) -> Result<(), StoreError> {
        self.remove_entries(dev, 0, u64::MAX, |_| true)?;
        self.devices.remove(dev).map_err(embedded)?;
        let user_end = dev.rfind(SEP).map_or(dev.len(), |at| at + SEP.len_utf8());
        let user = &dev[..user_end];
        if self.devices_of(user)?.is_empty() {
            self.set_rooms(user, &[])?;
            self.user_rooms.remove(user).map_err(embedded)?;
        }
        Ok(())
    }

    /// Every device recorded as connected, on a site of `expires_at_by_site`, now expires then; returns how many.
    fn release(&mut self, expires_at_by_site: &[(String, u64)]) -> Result<usize, StoreError> {
        let mut released = Vec::new();
        for row in self.devices.iter().map_err(embedded)? {
            let (dev, raw) = row.map_err(embedded)?;
            let mut meta = Meta::decode(raw.value())?;
            let site = dev.value().split(SEP).next().unwrap_or_default();
            let expires_at = expires_at_by_site
                .iter()
                .find(|(s, _)| s == site)
                .map(|(_, at)| *at);
            if let (0, Some(at)) = (meta.expires_at, expires_at) {
                meta.expires_at = at.max(1);
                released.push((dev.value().to_string(), meta));
            }
        }
        for (dev, meta) in &released {
            self.put_meta(dev, meta)?;
        }
        Ok(released.len())
    }

    fn sweep(&mut self, now: u64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for row in self.devices.iter().map_err(embedded)? {
            let (dev, meta) = row.map_err(embedded)?;
            if Meta::decode(meta.value())?.expired(now) {
                expired.push(dev.value().to_string());
            }
        }
        for dev in &expired {
            self.forget_device(dev)?;
        }
        Ok(expired.len())
    }
}

/// The retained tables, opened for one write.
struct RetainedTables<'t> {
    values: Table<'t, (&'static str, &'static str), &'static [u8]>,
    usage: Table<'t, &'static str, &'static [u8]>,
}

fn apply_retained(txn: &WriteTransaction, op: &RetainedOp) -> Result<Reply, StoreError> {
    let mut t = RetainedTables {
        values: txn.open_table(RETAINED).map_err(embedded)?,
        usage: txn.open_table(RETAINED_USAGE).map_err(embedded)?,
    };
    match op {
        RetainedOp::Retain(request) => t.retain(request).map(Reply::Retained),
        RetainedOp::Clear { site, room } => t.clear(site, room).map(Reply::Swept),
    }
}

impl RetainedTables<'_> {
    fn retain(&mut self, r: &OwnedRetain) -> Result<RetainOutcome, StoreError> {
        let key = room_key(&r.site, &r.room);
        let old = self.kept_args(&key, &r.event)?;
        let same = old.as_deref() == Some(r.args.as_str());
        if same && r.if_changed {
            return Ok(RetainOutcome::Kept { changed: false });
        }
        let old_size = old
            .as_deref()
            .map(|args| retained_size(&r.room, &r.event, args));
        let size = retained_size(&r.room, &r.event, &r.args);
        let usage = match admit(self.usage(&r.site)?, old_size, size, r.caps) {
            Ok(usage) => usage,
            Err(limit) => return Ok(RetainOutcome::Full { limit }),
        };
        let value = encode_retained(r.at, &r.args);
        self.values
            .insert((key.as_str(), r.event.as_str()), value.as_slice())
            .map_err(embedded)?;
        self.put_usage(&r.site, usage)?;
        Ok(RetainOutcome::Kept { changed: !same })
    }

    /// The arguments kept for `(room_key, event)`, if any.
    fn kept_args(&self, room_key: &str, event: &str) -> Result<Option<String>, StoreError> {
        match self.values.get((room_key, event)).map_err(embedded)? {
            Some(raw) => Ok(Some(decode_retained(raw.value())?.1.to_string())),
            None => Ok(None),
        }
    }

    fn usage(&self, site: &str) -> Result<Usage, StoreError> {
        match self.usage.get(site).map_err(embedded)? {
            Some(raw) => Usage::decode(raw.value()),
            None => Ok(Usage::default()),
        }
    }

    /// Stores `usage`, or drops the row of a site that keeps nothing, so forgotten sites leave no trace.
    fn put_usage(&mut self, site: &str, usage: Usage) -> Result<(), StoreError> {
        if usage.count == 0 {
            self.usage.remove(site).map_err(embedded)?;
        } else {
            self.usage
                .insert(site, &usage.encode()[..])
                .map_err(embedded)?;
        }
        Ok(())
    }

    /// Removes every value of `room`; returns how many there were.
    fn clear(&mut self, site: &str, room: &str) -> Result<usize, StoreError> {
        let key = room_key(site, room);
        let end = room_end(&key);
        let (mut count, mut bytes) = (0u64, 0u64);
        let removed = self
            .values
            .extract_from_if((key.as_str(), "")..(end.as_str(), ""), |_, _| true)
            .map_err(embedded)?;
        for row in removed {
            let (k, v) = row.map_err(embedded)?;
            // Sized from the raw record, not decoded: a corrupt value must still leave, and free its bytes.
            let args_len = v.value().len().saturating_sub(AT_LEN);
            count += 1;
            bytes += (room.len() + k.value().1.len() + args_len) as u64;
        }
        if count > 0 {
            let usage = self.usage(site)?;
            let left = Usage {
                count: usage.count.saturating_sub(count),
                bytes: usage.bytes.saturating_sub(bytes),
            };
            self.put_usage(site, left)?;
        }
        Ok(count as usize)
    }
}

/// The site's totals once a value of `size` bytes is stored in place of one of `old` bytes (`None`: a new
/// `(room, event)`), or the cap that refuses it, as the error names it.
fn admit(usage: Usage, old: Option<u64>, size: u64, caps: RetainCaps) -> Result<Usage, String> {
    let bytes_cap = || format!("max_retained_bytes {}", caps.max_bytes);
    let Some(old) = old else {
        if usage.count >= caps.max_entries {
            return Err(format!("max_retained {}", caps.max_entries));
        }
        let bytes = usage.bytes.saturating_add(size);
        if bytes > caps.max_bytes {
            return Err(bytes_cap());
        }
        return Ok(Usage {
            count: usage.count + 1,
            bytes,
        });
    };
    let bytes = usage.bytes.saturating_sub(old).saturating_add(size);
    // Only growth is refused: a site left above a lowered cap can still update its values in place.
    if size > old && bytes > caps.max_bytes {
        return Err(bytes_cap());
    }
    Ok(Usage {
        count: usage.count,
        bytes,
    })
}

/// A site's retained totals, fixed-size little-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    count: u64,
    bytes: u64,
}

impl Usage {
    fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.count.to_le_bytes());
        out[8..].copy_from_slice(&self.bytes.to_le_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        let word = |at: usize| -> Result<u64, StoreError> {
            raw.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| StoreError::Corrupt("retained usage record too short".into()))
        };
        Ok(Usage {
            count: word(0)?,
            bytes: word(8)?,
        })
    }
}

/// Bytes of a retained record's `at` prefix.
const AT_LEN: usize = 8;

/// What a retained value counts against its site's `max_bytes`.
fn retained_size(room: &str, event: &str, args: &str) -> u64 {
    (room.len() + event.len() + args.len()) as u64
}

fn encode_retained(at: u64, args: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(AT_LEN + args.len());
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(args.as_bytes());
    out
}

/// The `at` and arguments of a retained record.
fn decode_retained(raw: &[u8]) -> Result<(u64, &str), StoreError> {
    let corrupt = || StoreError::Corrupt("retained record malformed".into());
    let at = raw
        .get(..AT_LEN)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(corrupt)?;
    let args = std::str::from_utf8(&raw[AT_LEN..]).map_err(|_| corrupt())?;
    Ok((at, args))
}

fn room_key(site: &str, room: &str) -> String {
    format!("{site}{SEP}{room}")
}

/// The first room key past `room_key` and everything it prefixes: no valid name holds U+0000, so
/// `(room_key, "")..(room_end, "")` is exactly one room's values.
fn room_end(room_key: &str) -> String {
    format!("{room_key}\u{0}")
}

/// The values of each of `rooms` of `site`, room by room, each room's in event order (the key order).
fn read_retained(
    txn: &redb::ReadTransaction,
    site: &str,
    rooms: &[String],
) -> Result<Vec<Retained>, StoreError> {
    let values = txn.open_table(RETAINED).map_err(embedded)?;
    let mut found = Vec::new();
    for room in rooms {
        let key = room_key(site, room);
        let end = room_end(&key);
        for row in values
            .range((key.as_str(), "")..(end.as_str(), ""))
            .map_err(embedded)?
        {
            let (k, v) = row.map_err(embedded)?;
            let (at, args) = decode_retained(v.value())?;
            found.push(Retained {
                room: room.clone(),
                event: k.value().1.to_string(),
                args: args.to_string(),
                at,
            });
        }
    }
    Ok(found)
}

/// `site␟user␟` as (`site`, `user`).
fn split_user(user: &str) -> (&str, &str) {
    let trimmed = user.strip_suffix(SEP).unwrap_or(user);
    trimmed.split_once(SEP).unwrap_or((trimmed, ""))
}

fn read_meta(txn: &redb::ReadTransaction, dev: &str) -> Result<Option<Meta>, StoreError> {
    let devices = txn.open_table(DEVICES).map_err(embedded)?;
    match devices.get(dev).map_err(embedded)? {
        Some(raw) => Meta::decode(raw.value()).map(Some),
        None => Ok(None),
    }
}

fn read_page(
    txn: &redb::ReadTransaction,
    dev: &str,
    after: u64,
    max_entries: usize,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let Some(meta) = read_meta(txn, dev)?.filter(|m| !m.expired(now_ms())) else {
        return Ok(Page::default());
    };
    let entries = txn.open_table(ENTRIES).map_err(embedded)?;
    let mut page = Page {
        entries: Vec::new(),
        overflowed: meta.overflowed,
    };
    let mut bytes = 0usize;
    let start = after.saturating_add(1);
    for row in entries
        .range((dev, start)..=(dev, u64::MAX))
        .map_err(embedded)?
    {
        if page.entries.len() >= max_entries {
            break;
        }
        let (key, value) = row.map_err(embedded)?;
        let (event, payload, resync) = decode_entry(value.value())?;
        if !page.entries.is_empty() && bytes + payload.len() > max_bytes {
            break;
        }
        bytes += payload.len();
        page.entries.push(Entry {
            offset: key.value().1,
            event: event.to_string(),
            payload: Bytes::copy_from_slice(payload),
            resync,
        });
    }
    Ok(page)
}

#[async_trait]
impl MailboxStore for EmbeddedStore {
    async fn connect(&self, key: &DeviceKey, rooms: &[String]) -> Result<(), StoreError> {
        if let Some(bad) = rooms.iter().find(|r| !valid_name(r)) {
            return Err(StoreError::BadName(bad.clone()));
        }
        let op = Op::Connect {
            dev: dev_id(key)?,
            user: user_id(&key.site, &key.user)?,
            rooms: rooms.to_vec(),
        };
        self.write(op).await.map(|_| ())
    }

    async fn disconnect(&self, key: &DeviceKey, ttl: Duration) -> Result<(), StoreError> {
        let expires_at = now_ms().saturating_add(ttl.as_millis() as u64).max(1);
        let op = Op::Disconnect {
            dev: dev_id(key)?,
            expires_at,
        };
        self.write(op).await.map(|_| ())
    }

    async fn append(
        &self,
        site: &str,
        users: &[String],
        entry: NewEntry<'_>,
        caps: Caps,
    ) -> Result<Vec<Queued>, StoreError> {
        let users = users
            .iter()
            .map(|u| user_id(site, u))
            .collect::<Result<Vec<_>, _>>()?;
        let op = Op::Append {
            users,
            entry: encode_entry(&entry),
            payload_len: entry.payload.len() as u64,
            caps,
        };
        match self.write(op).await? {
            Reply::Queued(queued) => Ok(queued),
            _ => Err(StoreError::Embedded("unexpected writer reply".into())),
        }
    }

    async fn read(
        &self,
        key: &DeviceKey,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        let dev = dev_id(key)?;
        self.read_with(move |txn| read_page(txn, &dev, after, max_entries, max_bytes))
            .await
    }

    async fn ack(
        &self,
        key: &DeviceKey,
        through: u64,
        resync_event: Option<&str>,
    ) -> Result<AckOutcome, StoreError> {
        let op = Op::Ack {
            dev: dev_id(key)?,
            through,
            resync_event: resync_event.map(str::to_string),
        };
        match self.write(op).await? {
            Reply::Ack(outcome) => Ok(outcome),
            _ => Err(StoreError::Embedded("unexpected writer reply".into())),
        }
    }

    async fn reset(&self, key: &DeviceKey) -> Result<(), StoreError> {
        self.write(Op::Reset { dev: dev_id(key)? })
            .await
            .map(|_| ())
    }

    async fn users_in_room(&self, site: &str, room: &str) -> Result<Vec<String>, StoreError> {
        let room_key = format!("{site}{SEP}{}", room.to_lowercase());
        self.read_with(move |txn| {
            let index = txn.open_table(ROOM_USERS).map_err(embedded)?;
            let mut users = Vec::new();
            for row in index.range((room_key.as_str(), "")..).map_err(embedded)? {
                let (key, _) = row.map_err(embedded)?;
                let (room, user) = key.value();
                if room != room_key {
                    break;
                }
                users.push(user.to_string());
            }
            Ok(users)
        })
        .await
    }

    async fn devices(&self, site: &str, user: &str) -> Result<Vec<DeviceStatus>, StoreError> {
        let user = user_id(site, user)?;
        self.read_with(move |txn| {
            let devices = txn.open_table(DEVICES).map_err(embedded)?;
            let end = prefix_end(&user);
            let now = now_ms();
            let mut found = Vec::new();
            for row in devices
                .range::<&str>(user.as_str()..end.as_str())
                .map_err(embedded)?
            {
                let (dev, meta) = row.map_err(embedded)?;
                let meta = Meta::decode(meta.value())?;
                if meta.expired(now) {
                    continue;
                }
                found.push(DeviceStatus {
                    device: dev.value()[user.len()..].to_string(),
                    connected: meta.expires_at == 0,
                    pending: meta.count,
                    bytes: meta.bytes,
                    overflowed: meta.overflowed,
                    expires_at_ms: (meta.expires_at != 0).then_some(meta.expires_at),
                });
            }
            Ok(found)
        })
        .await
    }

    async fn sweep(&self) -> Result<usize, StoreError> {
        match self.write(Op::Sweep { now: now_ms() }).await? {
            Reply::Swept(n) => Ok(n),
            _ => Err(StoreError::Embedded("unexpected writer reply".into())),
        }
    }
}

fn unexpected_reply() -> StoreError {
    StoreError::Embedded("unexpected writer reply".into())
}

#[async_trait]
impl RetainedStore for EmbeddedStore {
    async fn retain(
        &self,
        request: RetainRequest<'_>,
        caps: RetainCaps,
    ) -> Result<bool, RetainedError> {
        for name in [request.site, request.room] {
            if !valid_name(name) {
                return Err(StoreError::BadName(name.to_string()).into());
            }
        }
        let op = RetainedOp::Retain(OwnedRetain {
            site: request.site.to_string(),
            room: request.room.to_string(),
            event: request.event.to_string(),
            args: request.args.to_string(),
            at: request.at,
            if_changed: request.if_changed,
            caps,
        });
        match self.write(op).await? {
            Reply::Retained(RetainOutcome::Kept { changed }) => Ok(changed),
            Reply::Retained(RetainOutcome::Full { limit }) => Err(RetainedError::Full {
                site: request.site.to_string(),
                limit,
            }),
            _ => Err(unexpected_reply().into()),
        }
    }

    async fn rooms(&self, site: &str, rooms: &[String]) -> Result<Vec<Retained>, RetainedError> {
        // A name `retain` refuses holds nothing; answering so keeps one odd room from failing a whole join.
        let rooms: Vec<String> = rooms.iter().filter(|r| valid_name(r)).cloned().collect();
        if !valid_name(site) || rooms.is_empty() {
            return Ok(Vec::new());
        }
        let site = site.to_string();
        Ok(self
            .read_with(move |txn| read_retained(txn, &site, &rooms))
            .await?)
    }

    async fn clear(&self, site: &str, room: &str) -> Result<usize, RetainedError> {
        if !valid_name(site) || !valid_name(room) {
            return Ok(0);
        }
        let op = RetainedOp::Clear {
            site: site.to_string(),
            room: room.to_string(),
        };
        match self.write(op).await? {
            Reply::Swept(count) => Ok(count),
            _ => Err(unexpected_reply().into()),
        }
    }

    async fn retains_nothing(&self, site: &str) -> Result<Option<bool>, RetainedError> {
        let site = site.to_string();
        let count = self
            .read_with(move |txn| {
                let usage = txn.open_table(RETAINED_USAGE).map_err(embedded)?;
                match usage.get(site.as_str()).map_err(embedded)? {
                    Some(raw) => Ok(Usage::decode(raw.value())?.count),
                    None => Ok(0),
                }
            })
            .await?;
        Ok(Some(count == 0))
    }
}

/// How many entries the store holds in all, for tests and the benchmark.
pub fn entry_count(store: &EmbeddedStore) -> Result<u64, StoreError> {
    let txn = store.db.get()?.begin_read().map_err(embedded)?;
    let entries = txn.open_table(ENTRIES).map_err(embedded)?;
    entries.len().map_err(embedded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retained::contract::{listed, request, ROOMY as ROOMY_RETAINED};

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("herald-mbx-{}", rand::random::<u64>()))
    }

    /// Opens the store at `path`, waiting for a dropped store's writer thread to let go of the file.
    async fn reopen(path: &Path) -> EmbeddedStore {
        let started = std::time::Instant::now();
        loop {
            match EmbeddedStore::open(path) {
                Ok(store) => return store,
                Err(e) if started.elapsed() > Duration::from_secs(10) => panic!("reopen: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_store_passes_the_retained_contract() {
        let dir = temp_dir();
        let store = EmbeddedStore::open(&dir.join("mailbox.redb")).expect("opens");
        crate::retained::contract::run_all(Arc::new(store)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn retained_values_survive_reopening() {
        let dir = temp_dir();
        let path = dir.join("mailbox.redb");
        let caps = RetainCaps {
            max_entries: 2,
            max_bytes: 1 << 20,
        };
        {
            let store = EmbeddedStore::open(&path).expect("opens");
            for (room, event) in [("lobby", "score"), ("news", "headline")] {
                let kept = store
                    .retain(request("s", room, event, "[1]", 5), caps)
                    .await;
                assert!(kept.expect("retain"));
            }
        }
        let store = reopen(&path).await;
        assert_eq!(
            listed(&store, "s", &["news", "lobby"]).await,
            vec![
                ("news".into(), "headline".into(), "[1]".into(), 5),
                ("lobby".into(), "score".into(), "[1]".into(), 5),
            ]
        );
        // The site's usage survived with its values: the count cap still counts both.
        let third = store.retain(request("s", "x", "ev", "[]", 6), caps).await;
        assert!(
            matches!(third, Err(RetainedError::Full { .. })),
            "{third:?}"
        );
        assert_eq!(store.clear("s", "news").await.expect("clear"), 1);
        let third = store.retain(request("s", "x", "ev", "[]", 6), caps).await;
        assert!(third.expect("room again"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_file_from_before_retained_state_opens_and_retains() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("mailbox.redb");
        {
            // The four tables herald wrote before retained state, and no more.
            let db = Database::create(&path).expect("creates");
            let txn = db.begin_write().expect("write");
            txn.open_table(ENTRIES).expect("entries");
            txn.open_table(DEVICES).expect("devices");
            txn.open_table(USER_ROOMS).expect("user_rooms");
            txn.open_table(ROOM_USERS).expect("room_users");
            txn.commit().expect("commit");
        }
        let store = EmbeddedStore::open(&path).expect("opens");
        assert!(listed(&store, "s", &["r"]).await.is_empty());
        let kept = store
            .retain(request("s", "r", "ev", "[1]", 1), ROOMY_RETAINED)
            .await;
        assert!(kept.expect("retain"));
        assert_eq!(listed(&store, "s", &["r"]).await.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_store_passes_the_contract() {
        let dir = std::env::temp_dir().join(format!("herald-mbx-{}", rand::random::<u64>()));
        let store = EmbeddedStore::open(&dir.join("mailbox.redb")).expect("opens");
        crate::mailbox::contract::run_all(Arc::new(store)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn devices_left_connected_by_a_killed_herald_are_released_at_start() {
        let dir = std::env::temp_dir().join(format!("herald-mbx-{}", rand::random::<u64>()));
        let store = EmbeddedStore::open(&dir.join("mailbox.redb")).expect("opens");
        let left = DeviceKey::new("s", "user_1", "phone");
        let away = DeviceKey::new("s", "user_1", "tablet");
        let other = DeviceKey::new("t", "user_1", "phone");
        for key in [&left, &away, &other] {
            store.connect(key, &[]).await.expect("connect");
        }
        store
            .disconnect(&away, Duration::from_secs(5))
            .await
            .expect("disconnect");
        let ttls = [("s".to_string(), Duration::from_secs(60))];
        assert_eq!(store.release_connected(&ttls).await.expect("release"), 1);
        let devices = store.devices("s", "user_1").await.expect("devices");
        let phone = devices.iter().find(|d| d.device == "phone").expect("phone");
        assert!(!phone.connected);
        let expires = phone.expires_at_ms.expect("expires") - now_ms();
        assert!((59_000..=60_000).contains(&expires), "{expires}");
        let tablet = devices
            .iter()
            .find(|d| d.device == "tablet")
            .expect("tablet");
        assert!(
            tablet.expires_at_ms.expect("expires") - now_ms() <= 5_000,
            "untouched"
        );
        // A site it was not given keeps its devices as they are.
        let kept = store.devices("t", "user_1").await.expect("devices");
        assert!(kept[0].connected);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn entries_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("herald-mbx-{}", rand::random::<u64>()));
        let path = dir.join("mailbox.redb");
        let key = DeviceKey::new("s", "user_1", "d");
        {
            let store = EmbeddedStore::open(&path).expect("opens");
            store.connect(&key, &[]).await.expect("connect");
            let entry = NewEntry {
                event: "ev",
                payload: b"[\"ev\",1]",
                resync: false,
            };
            let caps = crate::mailbox::contract::ROOMY;
            store
                .append("s", &["user_1".to_string()], entry, caps)
                .await
                .expect("append");
        }
        // The writer thread still holds the first handle until its queue closes; wait for it to let go.
        let store = loop {
            match EmbeddedStore::open(&path) {
                Ok(store) => break store,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let page = store.read(&key, 0, 10, usize::MAX).await.expect("read");
        assert_eq!(page.entries.len(), 1);
        assert_eq!(&page.entries[0].payload[..], b"[\"ev\",1]");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
