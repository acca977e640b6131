//! The tap on the publish pipeline: the admin console's live tail of what is published to a site or a room,
//! from any source (the API, `/send`, the emitter, the bridges, clients, the console, other nodes).
//!
//! Nobody tailing costs one relaxed atomic load per publish. A tail gets JSON records through a bounded queue;
//! a viewer that does not read fast enough loses records, and the next thing it reads says how many.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Outcome, PublishError, PublishRequest};
use crate::cluster::Broadcast;
use crate::metrics::Source;

/// Most tails open at once, on this node.
pub const MAX_TAILS: usize = 16;
/// Records queued for one tail before it starts losing them.
pub const TAIL_QUEUE: usize = 256;
/// Arguments longer than this (as JSON) reach a tail as a preview: a tail's queue stays a few MB at most.
pub const MAX_TAILED_ARGS: usize = 16 * 1024;
/// How much of long arguments a preview shows.
const PREVIEW: usize = 1024;

/// The taps of one node's publish pipeline. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tap(Arc<Taps>);

#[derive(Debug, Default)]
struct Taps {
    /// How many tails are open: the one thing a publish reads when nobody tails.
    active: AtomicUsize,
    tails: Mutex<Vec<Slot>>,
    next_id: AtomicU64,
}

/// One tail as the pipeline sees it.
#[derive(Debug)]
struct Slot {
    id: u64,
    site: String,
    room: Option<String>,
    sender: mpsc::Sender<Arc<str>>,
    dropped: Arc<AtomicU64>,
}

/// Why a tail could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_TAILS} tails are open on this node already; close one")]
pub struct TooManyTails;

/// An open tail: records of the publishes to its site (or room) made after it opened. Dropping it closes it.
#[derive(Debug)]
pub struct Tail {
    id: u64,
    records: mpsc::Receiver<Arc<str>>,
    dropped: Arc<AtomicU64>,
    tap: Tap,
}

/// What a tail reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tailed {
    /// One publish, as a JSON object.
    Publish(Arc<str>),
    /// This many records were lost since the last read: the viewer did not keep up.
    Lagged(u64),
}

/// Who a publish reached, as a tail matches it.
struct Reach<'a> {
    all: bool,
    rooms: &'a [String],
    sockets: &'a [String],
}

impl Tap {
    /// Whether anyone tails; publishes check this before anything else.
    pub fn is_active(&self) -> bool {
        self.0.active.load(Ordering::Relaxed) != 0
    }

    /// Opens a tail of the publishes to `site`, or to `room` of it (a publish to `all` reaches every room).
    pub fn open(&self, site: &str, room: Option<&str>) -> Result<Tail, TooManyTails> {
        let mut tails = self.0.tails.lock();
        if tails.len() >= MAX_TAILS {
            return Err(TooManyTails);
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, records) = mpsc::channel(TAIL_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tails.push(Slot {
            id,
            site: site.to_string(),
            room: room.map(str::to_string),
            sender,
            dropped: Arc::clone(&dropped),
        });
        self.0.active.store(tails.len(), Ordering::Relaxed);
        Ok(Tail {
            id,
            records,
            dropped,
            tap: self.clone(),
        })
    }

    /// How many tails are open.
    pub fn open_tails(&self) -> usize {
        self.0.active.load(Ordering::Relaxed)
    }

    /// Ends every tail (the process is shutting down): each reads its queue, then nothing.
    pub fn close_all(&self) {
        let mut tails = self.0.tails.lock();
        tails.clear();
        self.0.active.store(0, Ordering::Relaxed);
    }

    fn close(&self, id: u64) {
        let mut tails = self.0.tails.lock();
        tails.retain(|slot| slot.id != id);
        self.0.active.store(tails.len(), Ordering::Relaxed);
    }

    /// Hands a publish this node took to the tails it reaches. Call only when [`Tap::is_active`].
    pub(crate) fn published(
        &self,
        source: Source,
        node: &str,
        site: &str,
        request: &PublishRequest,
        result: &Result<Outcome, PublishError>,
    ) {
        let reach = Reach {
            all: request.all,
            rooms: &request.rooms,
            sockets: &request.sockets,
        };
        self.offer(site, &reach, || {
            let mut record = json!({
                "source": source.as_str(),
                "node": node,
                "event": request.event,
                "rooms": request.rooms,
                "sockets": request.sockets,
                "all": request.all,
                "except": request.except,
                "retain": request.retain,
                "volatile": request.volatile,
            });
            put_args(&mut record, &Value::from(request.args.clone()));
            if !request.binaries.is_empty() {
                record["binaries"] = json!(request.binaries.len());
            }
            match result {
                Ok(outcome) => record["outcome"] = json!(outcome),
                Err(error) => record["error"] = json!(error.to_string()),
            }
            record
        });
    }

    /// Hands a broadcast another node took (and the bus brought) to the tails it reaches; `matched` is how many
    /// sockets of this node it was queued for. Call only when [`Tap::is_active`].
    pub(crate) fn carried(&self, broadcast: &Broadcast, matched: usize) {
        // The bus does not say which of its rooms are socket ids: a tail of a socket's id matches it as a room.
        let reach = Reach {
            all: broadcast.rooms.is_empty(),
            rooms: &broadcast.rooms,
            sockets: &[],
        };
        self.offer(&broadcast.site, &reach, || {
            let mut record = json!({
                "source": "peer",
                "node": &*broadcast.origin,
                "rooms": broadcast.rooms,
                "all": broadcast.rooms.is_empty(),
                "except": broadcast.except,
                "volatile": broadcast.volatile,
                "outcome": {"matched": matched},
            });
            let text = String::from_utf8_lossy(&broadcast.text);
            let packet = text.strip_prefix('4').unwrap_or(&text);
            match herald_protocol::socketio::decode(packet, broadcast.binaries.len()) {
                Ok(packet) => {
                    if let Some((event, args)) = packet.event() {
                        record["event"] = json!(event);
                        put_args(&mut record, &Value::from(args.to_vec()));
                    }
                }
                Err(e) => record["error"] = json!(format!("undecodable packet: {e}")),
            }
            record
        });
    }

    /// Sends the record `make` builds (once, and only if some tail wants it) to the tails of `site` that
    /// `reach` matches; a full queue counts a loss instead.
    fn offer(&self, site: &str, reach: &Reach<'_>, make: impl FnOnce() -> Value) {
        let tails = self.0.tails.lock();
        let mut wanted = tails
            .iter()
            .filter(|slot| slot.wants(site, reach))
            .peekable();
        if wanted.peek().is_none() {
            return;
        }
        let mut record = make();
        record["site"] = json!(site);
        record["at"] = json!(crate::mailbox::store::now_ms());
        let text: Arc<str> = record.to_string().into();
        for slot in wanted {
            if slot.sender.try_send(Arc::clone(&text)).is_err() {
                slot.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Slot {
    fn wants(&self, site: &str, reach: &Reach<'_>) -> bool {
        if self.site != site {
            return false;
        }
        match &self.room {
            None => true,
            Some(room) => {
                reach.all
                    || reach.rooms.iter().any(|r| r == room)
                    || reach.sockets.iter().any(|s| s == room)
            }
        }
    }
}

/// Puts `args` into `record`, or a preview of them when they are long.
fn put_args(record: &mut Value, args: &Value) {
    let text = args.to_string();
    if text.len() <= MAX_TAILED_ARGS {
        record["args"] = args.clone();
        return;
    }
    let mut end = PREVIEW;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    record["argsPreview"] = json!(&text[..end]);
    record["argsBytes"] = json!(text.len());
}

impl Tail {
    /// The next record, waiting for one; `None` once the tail was closed (shutdown).
    pub async fn next(&mut self) -> Option<Tailed> {
        let lost = self.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            return Some(Tailed::Lagged(lost));
        }
        let record = self.records.recv().await?;
        Some(Tailed::Publish(record))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.tap.close(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(rooms: &[&str], event: &str) -> PublishRequest {
        PublishRequest {
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            event: event.into(),
            args: vec![json!({"n": 1})],
            ..PublishRequest::default()
        }
    }

    fn record(tailed: Option<Tailed>) -> Value {
        match tailed {
            Some(Tailed::Publish(text)) => serde_json::from_str(&text).expect("JSON"),
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_tail_gets_its_room_and_site_only() {
        let tap = Tap::default();
        assert!(!tap.is_active());
        let mut room = tap.open("shop", Some("lobby")).expect("opens");
        let mut site = tap.open("shop", None).expect("opens");
        assert!(tap.is_active());
        let ok = Ok(Outcome::default());
        tap.published(Source::Api, "n1", "shop", &request(&["other"], "a"), &ok);
        tap.published(Source::Api, "n1", "news", &request(&["lobby"], "b"), &ok);
        tap.published(Source::Admin, "n1", "shop", &request(&["lobby"], "c"), &ok);
        let first = record(site.next().await);
        assert_eq!(first["event"], "a");
        assert_eq!(record(site.next().await)["event"], "c");
        let seen = record(room.next().await);
        assert_eq!(
            (&seen["event"], &seen["source"], &seen["args"]),
            (&json!("c"), &json!("admin"), &json!([{"n": 1}]))
        );
        assert_eq!(
            seen["outcome"],
            json!({"matched": 0, "queued": 0, "online": 0})
        );
        drop(room);
        drop(site);
        assert!(!tap.is_active(), "closed tails cost nothing");
    }

    #[tokio::test]
    async fn a_slow_tail_loses_records_and_is_told_how_many() {
        let tap = Tap::default();
        let mut tail = tap.open("shop", None).expect("opens");
        let ok = Ok(Outcome::default());
        for _ in 0..TAIL_QUEUE + 5 {
            tap.published(Source::Api, "n1", "shop", &request(&["r"], "e"), &ok);
        }
        assert_eq!(tail.next().await, Some(Tailed::Lagged(5)));
        for _ in 0..TAIL_QUEUE {
            assert!(matches!(tail.next().await, Some(Tailed::Publish(_))));
        }
        tap.close_all();
        assert_eq!(tail.next().await, None, "closed at shutdown");
    }

    #[tokio::test]
    async fn a_broadcast_from_another_node_is_decoded_for_its_tails() {
        let tap = Tap::default();
        let mut tail = tap.open("shop", Some("lobby")).expect("opens");
        let (text, binaries) =
            crate::socketio::encode_event("/shop", "news", &[json!({"a": 1}), json!("two")], &[])
                .expect("encodes");
        let broadcast = Broadcast {
            origin: "n2".into(),
            site: "shop".into(),
            rooms: vec!["lobby".into()],
            except: vec![],
            volatile: false,
            text,
            binaries,
            offset: None,
        };
        tap.carried(&broadcast, 3);
        let seen = record(tail.next().await);
        assert_eq!(
            (
                &seen["source"],
                &seen["node"],
                &seen["event"],
                &seen["args"]
            ),
            (
                &json!("peer"),
                &json!("n2"),
                &json!("news"),
                &json!([{"a": 1}, "two"])
            )
        );
        assert_eq!(seen["outcome"], json!({"matched": 3}));
    }

    #[test]
    fn tails_are_bounded_and_long_arguments_previewed() {
        let tap = Tap::default();
        let tails: Vec<Tail> = (0..MAX_TAILS)
            .map(|_| tap.open("s", None).expect("opens"))
            .collect();
        assert!(tap.open("s", None).is_err());
        drop(tails);
        assert_eq!(tap.open_tails(), 0);
        let mut record = json!({});
        put_args(&mut record, &json!(["é".repeat(MAX_TAILED_ARGS)]));
        assert!(record.get("args").is_none());
        assert!(record["argsPreview"].as_str().expect("a preview").len() <= PREVIEW);
        assert_eq!(record["argsBytes"], json!(2 * MAX_TAILED_ARGS + 4));
    }
}
