//! One publish: validate a request, append it to the mailboxes of the users it names (durably, before the answer),
//! and broadcast the rest to the site's namespace, encoded once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use crate::mailbox::store::valid_name;
use crate::sites::Site;
use crate::socketio::{Target, RESERVED_EVENTS};

/// A publish through herald's own API.
#[derive(Debug, Clone, Default, Deserialize)]
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
}

impl PublishRequest {
    /// Checks everything that does not depend on who is connected.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.event.is_empty() {
            return Err(ApiError::BadRequest("event must not be empty".into()));
        }
        if RESERVED_EVENTS.contains(&self.event.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "event name '{}' is reserved by socket.io",
                self.event
            )));
        }
        if !self.all && self.rooms.is_empty() && self.sockets.is_empty() {
            return Err(ApiError::BadRequest(
                "say who receives it: rooms, sockets or all".into(),
            ));
        }
        if self.all && !(self.rooms.is_empty() && self.sockets.is_empty()) {
            return Err(ApiError::BadRequest(
                "all cannot be combined with rooms or sockets".into(),
            ));
        }
        Ok(())
    }
}

/// What one publish reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Sockets a live broadcast was queued for (public channel, `all`, socket ids, sites without mailboxes).
    pub matched: usize,
    /// Mailbox entries written, one per device of each user reached; durable when the answer is sent.
    pub queued: usize,
    /// Of those, entries handed straight to a device connected to this node.
    pub online: usize,
}

/// Publishes a validated request: mailboxes first (so a 200 means durable), then the live broadcast.
/// `resync` is crossroads' `resync=true`.
pub async fn publish(
    site: &Site,
    request: &PublishRequest,
    resync: bool,
) -> Result<Outcome, ApiError> {
    request.validate()?;
    // Volatile messages are for whoever is connected now: never stored.
    let (mailboxed, live): (Vec<&String>, Vec<&String>) = request
        .rooms
        .iter()
        .partition(|room| !request.volatile && site.is_mailboxed(room));
    let mut outcome = Outcome::default();
    if !mailboxed.is_empty() {
        let (queued, online) = to_mailboxes(site, request, &mailboxed, resync).await?;
        outcome.queued = queued;
        outcome.online = online;
    }
    if request.all || !live.is_empty() || !request.sockets.is_empty() {
        outcome.matched = broadcast(site, request, &live)?;
    }
    Ok(outcome)
}

fn broadcast(site: &Site, request: &PublishRequest, live: &[&String]) -> Result<usize, ApiError> {
    let rooms: Vec<&str> = live
        .iter()
        .copied()
        .chain(&request.sockets)
        .map(String::as_str)
        .collect();
    let except: Vec<&str> = request.except.iter().map(String::as_str).collect();
    let target = Target {
        rooms: &rooms,
        except_rooms: &except,
        except_sockets: &[],
        volatile: request.volatile,
    };
    site.namespace
        .broadcast(&target, &request.event, &request.args, &[])
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Appends to the mailbox of every device of the users `rooms` name: a user room names its user, a shared
/// room every user who joined it (on any node). Returns (queued, online).
async fn to_mailboxes(
    site: &Site,
    request: &PublishRequest,
    rooms: &[&String],
    resync: bool,
) -> Result<(usize, usize), ApiError> {
    let Some(mailbox) = &site.mailbox else {
        return Ok((0, 0));
    };
    let mut users: Vec<String> = Vec::new();
    for room in rooms {
        match site.user_room(room) {
            Some(user) => users.push(user.to_string()),
            // No one can be in a room whose name a store cannot hold (joins and auth answers refuse them).
            None if !valid_name(room) => {}
            None => users.extend(
                mailbox
                    .users_in_room(&site.config.name, room)
                    .await
                    .map_err(ApiError::store)?,
            ),
        }
    }
    users.sort_unstable();
    users.dedup();
    // `except` leaves out user rooms (socket ids in it only narrow the live broadcast).
    users.retain(|u| !request.except.contains(u));
    users.retain(|u| valid_name(u));
    let mut payload = Vec::with_capacity(64);
    let array = herald_protocol::socketio::Event {
        name: &request.event,
        args: &request.args,
    };
    serde_json::to_writer(&mut payload, &array)
        .map_err(|e| ApiError::BadRequest(format!("args are not serializable: {e}")))?;
    let delivery = mailbox
        .deliver(&site.config.name, &users, &request.event, &payload, resync)
        .await
        .map_err(ApiError::store)?;
    Ok((delivery.queued, delivery.online))
}
