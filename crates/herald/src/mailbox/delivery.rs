//! One device's delivery task, from connect to disconnect: `_settings`, the replay of its mailbox in `_batch`
//! pages (each acked before the next), then live entries in offset order, each with an ack that clears it.
//! A plain client gets no `_settings` and no `_batch`: its entries one by one, acked one by one on a plain
//! WebSocket, and numbered but never acked on an event stream, whose `Last-Event-ID` acks them when it comes
//! back.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::service::Mailbox;
use super::store::{AckOutcome, DeviceKey, Entry, Page, StoreError};
use crate::sites::{ClientInfo, RoomFilter};
use crate::socketio::{Plain, Socket};

/// Why a delivery task woke.
#[derive(Debug)]
pub(super) enum Wake {
    /// An entry appended on this node, handed over so the common case needs no read.
    Entry(Entry),
    /// Another node appended for this user: read the mailbox.
    Poll,
}

/// Why delivery stopped.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the client left")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How far a delivery task got, so a run resumed after a store failure does not repeat it.
#[derive(Debug, Default)]
struct Progress {
    settings_sent: bool,
    /// The first replay is done: a resumed run catches up with live entries rather than `_batch` pages.
    replayed: bool,
}

/// The first wait after a store failure; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Tries to mark a device disconnected (about 20 s with the waits above).
const DISCONNECT_ATTEMPTS: u32 = 12;

/// A live entry waiting for its ack: resolves to (offset, the event if it asked for resync, acked?).
type AckWait = Pin<Box<dyn Future<Output = (u64, Option<String>, bool)> + Send>>;

/// A delivery task's entries sent and not acked yet, and its share of the node's sum (`Mailbox::unacked`,
/// `herald_mailbox_pending`). Offsets grow by one per entry, so the count is `sent - acked`; an entry a cap or a
/// resync removed counts until the next ack passes it.
#[derive(Debug, Default)]
pub(super) struct Unacked {
    /// The highest offset sent to the client.
    sent: u64,
    /// The highest offset the store holds nothing at or before: acked, or gone before this task read.
    acked: u64,
    /// What this task added to the node's sum.
    counted: u64,
}

impl Unacked {
    fn sent(&mut self, through: u64, sum: &AtomicU64) {
        self.sent = self.sent.max(through);
        self.recount(sum);
    }

    fn acked(&mut self, through: u64, sum: &AtomicU64) {
        self.acked = self.acked.max(through);
        self.recount(sum);
    }

    /// The task ends: its entries leave the node's sum (they stay in the mailbox for the next connection).
    fn release(&mut self, sum: &AtomicU64) {
        sum.fetch_sub(self.counted, Ordering::Relaxed);
        self.counted = 0;
    }

    fn recount(&mut self, sum: &AtomicU64) {
        let now = self.sent.saturating_sub(self.acked);
        if now >= self.counted {
            sum.fetch_add(now - self.counted, Ordering::Relaxed);
        } else {
            sum.fetch_sub(self.counted - now, Ordering::Relaxed);
        }
        self.counted = now;
    }
}

pub(super) struct Task {
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) socket: Arc<Socket>,
    pub(super) key: DeviceKey,
    pub(super) rooms: RoomFilter,
    pub(super) ttl: Duration,
    pub(super) wakes: mpsc::Receiver<Wake>,
    /// The site's `herald_deliveries_total`: entries sent.
    pub(super) delivered: metrics::Counter,
    pub(super) unacked: Unacked,
}

impl Task {
    pub(super) async fn run(mut self) {
        let mut cursor = 0;
        let mut progress = Progress::default();
        let mut retry = RETRY_FIRST;
        loop {
            match self.deliver(&mut cursor, &mut progress).await {
                // A store outage never costs an online client its connection: delivery waits for the store and
                // resumes from its cursor. Acks lost meanwhile are cumulative, so the next one covers them.
                Err(Stop::Store(e)) if self.socket.connected() => {
                    tracing::warn!(error = %e, socket = self.socket.id(), retry_ms = retry.as_millis() as u64,
                        "mailbox store failed; delivery resumes when it answers");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
                _ => break,
            }
        }
        self.unacked.release(&self.mailbox.unacked);
        self.mailbox.detach(&self.key, self.socket.id());
        if !self.mailbox.replaced(&self.key, self.socket.id()) {
            self.mark_disconnected().await;
        }
        self.mailbox.delivery_ended(&self.key);
    }

    /// One run of delivery from where `cursor` and `progress` say it is, until the client leaves or the store
    /// fails.
    async fn deliver(&mut self, cursor: &mut u64, progress: &mut Progress) -> Result<(), Stop> {
        let rooms = self.rooms.shared_rooms(&self.socket);
        self.store().connect(&self.key, &rooms).await?;
        let plain = self.socket.session().conn.plain();
        if !progress.settings_sent {
            if plain.is_none() {
                // After the device is registered, so a client that saw `_settings` misses no publish.
                let settings = serde_json::json!({ "device_ttl": self.ttl.as_secs() });
                self.socket
                    .emit("_settings", &[settings])
                    .map_err(|_| Stop::Gone)?;
            }
            let acked = self
                .socket
                .data::<ClientInfo>()
                .and_then(|i| i.acked_through);
            if let (Some(through), Some(_)) = (acked, plain) {
                self.store().ack(&self.key, through, None).await?;
                self.unacked.acked(through, &self.mailbox.unacked);
            }
            progress.settings_sent = true;
        }
        let mut acks = FuturesUnordered::new();
        if progress.replayed || plain.is_some() {
            self.catch_up(cursor, &mut acks).await?;
        } else {
            self.replay(cursor, &mut acks).await?;
            progress.replayed = true;
        }
        self.live(cursor, acks).await
    }

    /// Marks the device disconnected, so its mailbox expires; retried for a while when the store is down,
    /// since a device left marked connected would never expire.
    async fn mark_disconnected(&self) {
        let mut retry = RETRY_FIRST;
        for attempt in 1..=DISCONNECT_ATTEMPTS {
            match self.store().disconnect(&self.key, self.ttl).await {
                Ok(()) => return,
                Err(e) if attempt == DISCONNECT_ATTEMPTS => {
                    tracing::warn!(error = %e, "could not mark a device disconnected")
                }
                Err(_) => {
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    fn store(&self) -> &Arc<dyn super::store::MailboxStore> {
        self.mailbox.store()
    }

    /// Sends everything pending as `_batch` pages until the mailbox is empty. A page is sent only once the one
    /// before it was acked (or its ack timed out); the last page's ack joins `acks`, so live entries need not
    /// wait for a client that never acks a `_batch`.
    async fn replay(
        &mut self,
        cursor: &mut u64,
        acks: &mut FuturesUnordered<AckWait>,
    ) -> Result<(), Stop> {
        let ack_timeout = Duration::from_millis(self.mailbox.settings().batch_ack_timeout_ms);
        let mut outstanding: Option<AckWait> = None;
        loop {
            let page = self.next_page(*cursor).await?;
            let Some(last) = page.entries.last().map(|e| e.offset) else {
                acks.extend(outstanding);
                return Ok(());
            };
            if let Some(previous) = outstanding.take() {
                match tokio::time::timeout(ack_timeout, previous).await {
                    Ok((through, _, true)) => {
                        self.store().ack(&self.key, through, None).await?;
                        self.unacked.acked(through, &self.mailbox.unacked);
                    }
                    Ok((_, _, false)) => return Err(Stop::Gone),
                    // A client without a `_batch` handler never acks: go on; a later ack is cumulative.
                    Err(_) => {
                        tracing::debug!(socket = self.socket.id(), "a _batch went unacknowledged")
                    }
                }
            }
            let raw = RawValue::from_string(batch_json(&page.entries)).map_err(|_| Stop::Gone)?;
            let reply = self
                .socket
                .emit_json_with_ack(&raw)
                .map_err(|_| Stop::Gone)?;
            self.delivered.increment(page.entries.len() as u64);
            self.unacked.sent(last, &self.mailbox.unacked);
            outstanding = Some(Box::pin(async move { (last, None, reply.await.is_ok()) }));
            *cursor = last;
        }
    }

    /// Delivers entries as they come, in offset order, until the socket leaves.
    async fn live(
        &mut self,
        cursor: &mut u64,
        mut acks: FuturesUnordered<AckWait>,
    ) -> Result<(), Stop> {
        let refresh_every = (self.ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut refresh = tokio::time::interval(refresh_every);
        refresh.tick().await;
        loop {
            tokio::select! {
                wake = self.wakes.recv() => match wake {
                    None => return Err(Stop::Gone),
                    Some(Wake::Entry(entry)) if entry.offset <= *cursor => {}
                    Some(Wake::Entry(entry)) if entry.offset == *cursor + 1 => {
                        acks.extend(self.send_live(entry)?);
                        *cursor += 1;
                    }
                    Some(_) => self.catch_up(cursor, &mut acks).await?,
                },
                Some((offset, resync_event, acked)) = acks.next(), if !acks.is_empty() => {
                    if !acked {
                        return Err(Stop::Gone);
                    }
                    let outcome = self.store().ack(&self.key, offset, resync_event.as_deref()).await?;
                    self.unacked.acked(offset, &self.mailbox.unacked);
                    if outcome == AckOutcome::Resync {
                        let _ = self.socket.emit("_resync", &[]);
                    }
                }
                _ = refresh.tick(), if self.mailbox.shared() => {
                    // Another node may have marked this device disconnected after it moved here.
                    let rooms = self.rooms.shared_rooms(&self.socket);
                    self.store().connect(&self.key, &rooms).await?;
                }
            }
        }
    }

    /// Reads and sends what this task has not seen yet (wakes were dropped, or came from another node).
    async fn catch_up(
        &mut self,
        cursor: &mut u64,
        acks: &mut FuturesUnordered<AckWait>,
    ) -> Result<(), Stop> {
        let page_entries = self.mailbox.settings().page_entries;
        loop {
            let page = self.next_page(*cursor).await?;
            let full = page.entries.len() >= page_entries;
            for entry in page.entries {
                *cursor = entry.offset;
                acks.extend(self.send_live(entry)?);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// The page after `cursor`; an overflowed mailbox is emptied and the client told to resync first.
    async fn next_page(&mut self, cursor: u64) -> Result<Page, Stop> {
        let mailbox = Arc::clone(&self.mailbox);
        let settings = mailbox.settings();
        loop {
            let page = self
                .store()
                .read(
                    &self.key,
                    cursor,
                    settings.page_entries,
                    settings.page_bytes,
                )
                .await?;
            if !page.overflowed {
                // The first read starts at the mailbox's head: whatever came before it was acked earlier.
                if let (0, Some(first)) = (cursor, page.entries.first()) {
                    let before = first.offset.saturating_sub(1);
                    self.unacked.acked(before, &self.mailbox.unacked);
                }
                return Ok(page);
            }
            self.resync().await?;
        }
    }

    /// Empties an overflowed mailbox and tells the client to resync from its backend.
    async fn resync(&mut self) -> Result<(), Stop> {
        self.store().reset(&self.key).await?;
        let sent = self.unacked.sent;
        self.unacked.acked(sent, &self.mailbox.unacked);
        self.socket.emit("_resync", &[]).map_err(|_| Stop::Gone)
    }

    /// Sends one entry; the wait for its ack, unless the client is an event stream, which cannot ack.
    fn send_live(&mut self, entry: Entry) -> Result<Option<AckWait>, Stop> {
        let raw: &RawValue = match serde_json::from_slice(&entry.payload) {
            Ok(raw) => raw,
            Err(e) => {
                // Only herald writes entries; a bad one is skipped and cleared by the next cumulative ack.
                tracing::warn!(error = %e, offset = entry.offset, "skipped a mailbox entry that is not JSON");
                let offset = entry.offset;
                return Ok(Some(Box::pin(async move { (offset, None, true) })));
            }
        };
        if self.socket.session().conn.plain() == Some(Plain::EventStream) {
            self.socket
                .emit_json_numbered(raw, entry.offset)
                .map_err(|_| Stop::Gone)?;
            self.delivered.increment(1);
            self.unacked.sent(entry.offset, &self.mailbox.unacked);
            return Ok(None);
        }
        let reply = self
            .socket
            .emit_json_with_ack(raw)
            .map_err(|_| Stop::Gone)?;
        self.delivered.increment(1);
        self.unacked.sent(entry.offset, &self.mailbox.unacked);
        let resync_event = entry.resync.then_some(entry.event);
        let offset = entry.offset;
        Ok(Some(Box::pin(async move {
            (offset, resync_event, reply.await.is_ok())
        })))
    }
}

/// `["_batch", [entry, ...]]` from stored `[event, ...args]` arrays, without re-encoding them.
fn batch_json(entries: &[Entry]) -> String {
    let size: usize = entries.iter().map(|e| e.payload.len() + 1).sum();
    let mut out = String::with_capacity(size + 16);
    out.push_str("[\"_batch\",[");
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(std::str::from_utf8(&entry.payload).unwrap_or("null"));
    }
    out.push_str("]]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacked_entries_are_sent_minus_acked_and_leave_with_the_task() {
        let sum = AtomicU64::new(5);
        let mut task = Unacked::default();
        // The first page starts at 41: entries up to 40 were acked before.
        task.acked(40, &sum);
        task.sent(45, &sum);
        assert_eq!(sum.load(Ordering::Relaxed), 10);
        task.acked(43, &sum);
        assert_eq!(sum.load(Ordering::Relaxed), 7);
        task.acked(42, &sum);
        assert_eq!(sum.load(Ordering::Relaxed), 7, "acks are cumulative");
        task.sent(44, &sum);
        assert_eq!(
            sum.load(Ordering::Relaxed),
            7,
            "a wake for an entry already sent"
        );
        task.release(&sum);
        assert_eq!(
            sum.load(Ordering::Relaxed),
            5,
            "the other tasks' share stays"
        );
    }

    #[test]
    fn batches_are_arrays_of_stored_arrays() {
        let entry = |offset, payload: &'static str| Entry {
            offset,
            event: "ev".into(),
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            resync: false,
        };
        let json = batch_json(&[entry(1, r#"["ev",1]"#), entry(2, r#"["ev",{"a":2}]"#)]);
        assert_eq!(json, r#"["_batch",[["ev",1],["ev",{"a":2}]]]"#);
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value[1].as_array().map(Vec::len), Some(2));
    }
}
