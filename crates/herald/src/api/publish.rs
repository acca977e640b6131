//! One publish: validate a request and broadcast it to a site's namespace, encoded once.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
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
    /// Drop the message for clients that are behind instead of queueing it.
    #[serde(default)]
    pub volatile: bool,
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

/// Broadcasts a validated request; returns how many sockets it was queued for.
pub fn publish(site: &Site, request: &PublishRequest) -> Result<usize, ApiError> {
    request.validate()?;
    let rooms: Vec<&str> = request
        .rooms
        .iter()
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
