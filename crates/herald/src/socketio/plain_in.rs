//! What a plain WebSocket client sends: `{"type":"event","event":…,"args":[…],"id":n}` goes to its namespace's
//! handler as any client event does (the same pipeline as a Socket.IO emit), and `{"type":"ack","id":n}`
//! answers every server emit awaiting an ack up to `n`. Anything else is answered with an error frame: nothing a
//! client sends closes it, but a frame over the size limit.

use std::sync::Arc;

use herald_protocol::engineio::OutFrame;
use serde_json::Value;

use super::ack::AckSender;
use super::conn::Conn;
use super::handler::IncomingEvent;
use super::plain::error_frame;
use super::RESERVED_EVENTS;
use crate::engine::Session;

/// Takes one text frame from a plain WebSocket client.
pub(super) fn on_text(session: &Arc<Session<Conn>>, text: &str) {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return refuse(session, None, &format!("malformed frame: {e}")),
    };
    let id = value.get("id").and_then(Value::as_u64);
    if value.get("id").is_some_and(|v| !v.is_u64()) {
        return refuse(session, None, "\"id\" must be a non-negative integer");
    }
    match value.get("type").and_then(Value::as_str) {
        Some("event") => event(session, value, id),
        Some("ack") => match (id, session.conn.first_socket()) {
            (Some(id), Some(socket)) => socket.acks.lock().resolve_through(id),
            (None, _) => refuse(session, None, "an ack needs its \"id\""),
            (Some(_), None) => {}
        },
        Some(other) => refuse(
            session,
            id,
            &format!("unknown frame type '{other}': send \"event\" or \"ack\""),
        ),
        None => refuse(
            session,
            id,
            "a frame is a JSON object with a \"type\" (\"event\" or \"ack\")",
        ),
    }
}

fn event(session: &Arc<Session<Conn>>, mut value: Value, id: Option<u64>) {
    let Some(socket) = session.conn.first_socket() else {
        return refuse(
            session,
            id,
            "the connection is not accepted yet: wait for its welcome",
        );
    };
    let name = match value.get_mut("event").map(Value::take) {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return refuse(session, id, "an event needs its \"event\" name"),
    };
    if RESERVED_EVENTS.contains(&name.as_str()) {
        return refuse(session, id, &format!("event name '{name}' is reserved"));
    }
    let args = match value.get_mut("args").map(Value::take) {
        Some(Value::Array(args)) => args,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return refuse(session, id, "\"args\" must be an array"),
    };
    let event = IncomingEvent {
        name,
        args,
        binaries: Vec::new(),
        ack: id.map(|id| AckSender::new(&socket, id)),
    };
    socket.namespace().handler().on_event(&socket, event);
}

fn refuse(session: &Session<Conn>, id: Option<u64>, error: &str) {
    let _ = session.send(OutFrame::Text(error_frame(id, error)));
}
