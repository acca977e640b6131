//! The one publish pipeline, whatever the source (HTTP API, `/send`, batch, the socket.io emitter): validate,
//! append to the mailboxes of the users it names (durably, before the answer), encode the live part once, log it
//! for connection-state recovery and hand it to the cluster bus, then fan it out to this node's sockets. Other
//! nodes fan out what the bus brings them (`Publisher::start`).

pub mod tap;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_protocol::engineio::OutFrame;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::{Broadcast, BusError, Cluster};
use crate::mailbox::store::valid_name;
use crate::mailbox::StoreError;
pub use crate::metrics::Source;
use crate::sites::{Site, Sites};
use crate::socketio::{self, Missed, Outgoing, Target, RESERVED_EVENTS};

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request itself is wrong; the text says how.
    #[error("{0}")]
    BadRequest(String),
    /// The mailbox store failed; nothing was promised durable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster bus failed; other nodes may not have it.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Retained state could not be kept; nothing was published.
    #[error(transparent)]
    Retained(#[from] crate::retained::RetainedError),
}

/// A publish through herald's own API.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Rooms to reach (a socket id counts as a room holding that socket).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Reach every socket of the site.
    #[serde(default)]
    pub all: bool,
    /// Socket ids to reach.
    #[serde(default)]
    pub sockets: Vec<String>,
    /// Rooms or socket ids to leave out.
    #[serde(default)]
    pub except: Vec<String>,
    pub event: String,
    #[serde(default)]
    pub args: Vec<Value>,
    /// Drop the message for clients that are behind instead of queueing it; never stored in mailboxes.
    #[serde(default)]
    pub volatile: bool,
    /// crossroads' `resync`: an ack that skips an older pending entry of this event clears it and emits `_resync`.
    #[serde(default)]
    pub resync: bool,
    /// Keep `args` as the last value of `(room, event)` in each room, for sockets that join later.
    #[serde(default)]
    pub retain: bool,
    /// With `retain`: skip the rooms whose retained value already equals `args`.
    #[serde(default)]
    pub if_changed: bool,
    /// Live only, never to mailboxes (a client's relayed event), whatever the site keeps.
    #[serde(skip)]
    pub live_only: bool,
    /// Binary attachments that `args` point to with socket.io placeholders (the emitter's binary arguments);
    /// never from JSON. Delivered live only: a mailbox stores JSON.
    #[serde(skip)]
    pub binaries: Vec<Bytes>,
}

impl PublishRequest {
    /// Checks everything that does not depend on who is connected.
    pub fn validate(&self) -> Result<(), PublishError> {
        if self.event.is_empty() {
            return Err(PublishError::BadRequest("event must not be empty".into()));
        }
        if RESERVED_EVENTS.contains(&self.event.as_str()) {
            return Err(PublishError::BadRequest(format!(
                "event name '{}' is reserved by socket.io",
                self.event
            )));
        }
        if !self.all && self.rooms.is_empty() && self.sockets.is_empty() {
            return Err(PublishError::BadRequest(
                "say who receives it: rooms, sockets or all".into(),
            ));
        }
        if self.all && !(self.rooms.is_empty() && self.sockets.is_empty()) {
            return Err(PublishError::BadRequest(
                "all cannot be combined with rooms or sockets".into(),
            ));
        }
        self.validate_retain()
    }

    fn validate_retain(&self) -> Result<(), PublishError> {
        let bad = |message: &str| Err(PublishError::BadRequest(message.into()));
        if self.if_changed && !self.retain {
            return bad("if_changed needs retain");
        }
        if !self.retain {
            return Ok(());
        }
        if self.all || !self.sockets.is_empty() || self.rooms.is_empty() {
            return bad("retain needs rooms, and only rooms: a retained value belongs to a room");
        }
        if !self.binaries.is_empty() {
            return bad("binary arguments cannot be retained");
        }
        if !valid_name(&self.event) || self.rooms.iter().any(|r| !valid_name(r)) {
            return bad(
                "a retained event or room name is at most 256 bytes, without control characters",
            );
        }
        Ok(())
    }
}

/// What one publish reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Sockets on the node that took the publish that a live broadcast was queued for (public channel, `all`,
    /// socket ids, sites without mailboxes). Other nodes fan out the same broadcast without waiting: they are
    /// not counted.
    pub matched: usize,
    /// Mailbox entries written, one per device of each user reached, on any node; durable when the answer is
    /// sent.
    pub queued: usize,
    /// Of those, entries handed straight to a device connected to this node.
    pub online: usize,
    /// With `retain`: whether the retained value of some room changed. With `if_changed`, nothing was sent
    /// when it is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
}

/// The publish pipeline of this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub sites: Sites,
    pub cluster: Arc<Cluster>,
    /// Who publishes through this handle, for `herald_publishes_total` (`with_source`). Default `Api`.
    pub source: Source,
    /// The admin console's live tails of what goes through.
    pub tap: tap::Tap,
}

impl Publisher {
    /// Starts fanning out the broadcasts other nodes send over the bus.
    pub async fn start(&self) -> Result<(), BusError> {
        let Some(mut incoming) = self.cluster.bus.subscribe().await? else {
            return Ok(());
        };
        let sites = self.sites.clone();
        let node = Arc::clone(&self.cluster.node);
        let tap = self.tap.clone();
        tokio::spawn(async move {
            while let Some(broadcast) = incoming.recv().await {
                if broadcast.origin == node {
                    continue;
                }
                if let Some(site) = sites.get(&broadcast.site) {
                    let matched = fan_out(&site, &broadcast);
                    site.metrics.totals.delivered(matched);
                    if tap.is_active() {
                        tap.carried(&broadcast, matched);
                    }
                }
            }
        });
        Ok(())
    }

    /// This pipeline, its publishes counted as from `source`: the handle a source (a bridge, the emitter, the
    /// client-event routes) is given.
    pub fn with_source(&self, source: Source) -> Publisher {
        Publisher {
            source,
            ..self.clone()
        }
    }

    /// Publishes a request to `site`: mailboxes first (so a 200 means durable), then the live broadcast.
    /// `resync` is crossroads' `resync=true`. Counted as from this handle's source.
    pub async fn publish(
        &self,
        site: &Site,
        request: &PublishRequest,
        resync: bool,
    ) -> Result<Outcome, PublishError> {
        self.publish_from(self.source, site, request, resync).await
    }

    /// [`Publisher::publish`], counted as from `source`.
    pub async fn publish_from(
        &self,
        source: Source,
        site: &Site,
        request: &PublishRequest,
        resync: bool,
    ) -> Result<Outcome, PublishError> {
        let started = Instant::now();
        let result = self.publish_timed(site, request, resync).await;
        site.metrics.publish_duration.record(started.elapsed());
        if let Ok(outcome) = &result {
            site.metrics.published(source);
            site.metrics
                .totals
                .published(outcome.matched + outcome.online);
        }
        if self.tap.is_active() {
            self.tap.published(
                source,
                &self.cluster.node,
                &site.config.name,
                request,
                &result,
            );
        }
        result
    }

    async fn publish_timed(
        &self,
        site: &Site,
        request: &PublishRequest,
        resync: bool,
    ) -> Result<Outcome, PublishError> {
        request.validate()?;
        let mut outcome = Outcome::default();
        let narrowed;
        let request = if request.retain {
            // Kept before it is sent: a socket that joins meanwhile reads the old value and then gets this
            // one live, or reads this one.
            let changed = site
                .retained
                .keep(
                    &request.rooms,
                    &request.event,
                    &request.args,
                    request.if_changed,
                )
                .await?;
            outcome.changed = Some(!changed.is_empty());
            if request.if_changed && changed.len() < request.rooms.len() {
                if changed.is_empty() {
                    return Ok(outcome);
                }
                narrowed = PublishRequest {
                    rooms: changed,
                    ..request.clone()
                };
                &narrowed
            } else {
                request
            }
        } else {
            request
        };
        // Volatile messages are for whoever is connected now: never stored. Binary ones cannot be.
        let (mailboxed, mut live): (Vec<&String>, Vec<&String>) =
            request.rooms.iter().partition(|room| {
                !request.volatile
                    && !request.live_only
                    && request.binaries.is_empty()
                    && site.is_mailboxed(room)
            });
        if !mailboxed.is_empty() {
            let reached = to_mailboxes(site, request, &mailboxed, resync).await?;
            outcome.queued = reached.queued;
            outcome.online = reached.online;
            // A room no user of the site is in may be a socket id on another node, or a room of sockets
            // without a user: it goes live.
            live.extend(reached.empty_rooms);
        }
        if request.all || !live.is_empty() || !request.sockets.is_empty() {
            outcome.matched = self.broadcast(site, request, &live).await?;
        }
        Ok(outcome)
    }

    async fn broadcast(
        &self,
        site: &Site,
        request: &PublishRequest,
        live: &[&String],
    ) -> Result<usize, PublishError> {
        let (text, binaries) = socketio::encode_event(
            site.namespace.name(),
            &request.event,
            &request.args,
            &request.binaries,
        )
        .map_err(|e| PublishError::BadRequest(e.to_string()))?;
        let mut broadcast = Broadcast {
            origin: Arc::clone(&self.cluster.node),
            site: site.config.name.clone(),
            rooms: live
                .iter()
                .map(|r| r.to_string())
                .chain(request.sockets.iter().cloned())
                .collect(),
            except: request.except.clone(),
            volatile: request.volatile,
            text,
            binaries,
            offset: None,
        };
        let window = (!request.volatile && site.config.recovery_window_ms > 0)
            .then(|| Duration::from_millis(site.config.recovery_window_ms));
        broadcast.offset = self.cluster.bus.send(&broadcast, window).await?;
        Ok(fan_out(site, &broadcast))
    }
}

/// Queues `broadcast` for the matching sockets of this node; returns how many.
pub fn fan_out(site: &Site, broadcast: &Broadcast) -> usize {
    let rooms: Vec<&str> = broadcast.rooms.iter().map(String::as_str).collect();
    let except: Vec<&str> = broadcast.except.iter().map(String::as_str).collect();
    let target = Target {
        rooms: &rooms,
        except_rooms: &except,
        except_sockets: &[],
        volatile: broadcast.volatile,
    };
    let plain = frames(broadcast, None);
    let logged = broadcast
        .offset
        .as_ref()
        .map(|offset| (offset, frames(broadcast, Some(offset))));
    let outgoing = Outgoing {
        plain: &plain,
        logged: logged.as_ref().map(|(o, f)| (*o, f.as_slice())),
    };
    let delivered = site.namespace.broadcast_frames(&target, outgoing);
    site.metrics.deliveries.increment(delivered as u64);
    delivered
}

/// A broadcast's frames, with `offset` as the last argument when given.
fn frames(broadcast: &Broadcast, offset: Option<&str>) -> Vec<OutFrame> {
    let text = match offset {
        Some(offset) => socketio::with_offset(&broadcast.text, offset),
        None => broadcast.text.clone(),
    };
    let mut frames = Vec::with_capacity(1 + broadcast.binaries.len());
    frames.push(OutFrame::Text(text));
    frames.extend(broadcast.binaries.iter().cloned().map(OutFrame::Binary));
    frames
}

/// Of the logged `packets`, those that reach a socket in `rooms` (its own id among them), ready to send.
pub fn missed_by(rooms: &[String], packets: &[Broadcast]) -> Vec<Missed> {
    let within = |names: &[String]| names.iter().any(|n| rooms.contains(n));
    packets
        .iter()
        .filter(|b| !b.volatile && (b.rooms.is_empty() || within(&b.rooms)) && !within(&b.except))
        .filter_map(|b| {
            let offset = b.offset.as_ref()?;
            Some(Missed {
                offset: Some(Arc::clone(offset)),
                frames: frames(b, Some(offset)),
            })
        })
        .collect()
}

/// What appending to mailboxes did.
struct Reached<'a> {
    queued: usize,
    online: usize,
    /// Shared rooms that no user of the site is in.
    empty_rooms: Vec<&'a String>,
}

/// Appends to the mailbox of every device of the users `rooms` name: a user room names its user, a shared
/// room every user who joined it (on any node).
async fn to_mailboxes<'a>(
    site: &Site,
    request: &PublishRequest,
    rooms: &[&'a String],
    resync: bool,
) -> Result<Reached<'a>, PublishError> {
    let mut reached = Reached {
        queued: 0,
        online: 0,
        empty_rooms: Vec::new(),
    };
    let Some(mailbox) = &site.mailbox else {
        return Ok(reached);
    };
    let mut users: Vec<String> = Vec::new();
    for room in rooms {
        match site.user_room(room) {
            Some(user) => users.push(user.to_string()),
            // No one can be in a room whose name a store cannot hold (joins and auth answers refuse them).
            None if !valid_name(room) => {}
            None => {
                let members = mailbox.users_in_room(&site.config.name, room).await?;
                if members.is_empty() {
                    reached.empty_rooms.push(room);
                }
                users.extend(members);
            }
        }
    }
    users.sort_unstable();
    users.dedup();
    // `except` leaves out user rooms (socket ids in it only narrow the live broadcast).
    users.retain(|u| !request.except.contains(u));
    users.retain(|u| valid_name(u));
    if users.is_empty() {
        return Ok(reached);
    }
    let mut payload = Vec::with_capacity(64);
    let array = herald_protocol::socketio::Event {
        name: &request.event,
        args: &request.args,
    };
    serde_json::to_writer(&mut payload, &array)
        .map_err(|e| PublishError::BadRequest(format!("args are not serializable: {e}")))?;
    let delivery = mailbox
        .deliver(&site.config.name, &users, &request.event, &payload, resync)
        .await?;
    site.metrics
        .mailbox_appends
        .increment(delivery.queued as u64);
    reached.queued = delivery.queued;
    reached.online = delivery.online;
    Ok(reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(rooms: &[&str], except: &[&str], offset: &str) -> Broadcast {
        Broadcast {
            origin: "n".into(),
            site: "s".into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            except: except.iter().map(|r| r.to_string()).collect(),
            volatile: false,
            text: Bytes::from_static(b"42/s,[\"ev\"]"),
            binaries: vec![],
            offset: Some(offset.into()),
        }
    }

    #[test]
    fn a_socket_misses_what_reached_its_rooms_and_not_what_left_it_out() {
        let packets = [
            logged(&[], &[], "1-0"),
            logged(&["news"], &[], "2-0"),
            logged(&["other"], &[], "3-0"),
            logged(&["news"], &["sock"], "4-0"),
            logged(&["sock"], &[], "5-0"),
        ];
        let rooms = vec!["sock".to_string(), "news".to_string()];
        let missed = missed_by(&rooms, &packets);
        let offsets: Vec<&str> = missed.iter().filter_map(|m| m.offset.as_deref()).collect();
        assert_eq!(offsets, ["1-0", "2-0", "5-0"]);
        assert_eq!(
            missed[0].frames,
            vec![OutFrame::text("42/s,[\"ev\",\"1-0\"]")]
        );
    }
}
