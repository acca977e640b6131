//! Socket.IO packets as herald's plain clients get them: one JSON text frame each on a plain WebSocket
//! (`{"type":"event","event":…,"args":[…]}`), one event block each on an event stream (`id:`, `event:`,
//! `data:`). A broadcast is converted once for all the plain clients it reaches ([`PlainCache`]); a packet for
//! one socket (its welcome, a reply, a mailbox entry) as it leaves ([`convert`]). The arguments are spliced
//! from the packet's JSON text, never parsed into values and encoded again.

use std::cell::OnceCell;

use base64::Engine as _;
use bytes::Bytes;
use herald_protocol::engineio::OutFrame;
use herald_protocol::socketio::{self as sio, PacketType};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::engine::{PlainFrame, Refused, Transport};

use super::namespace::Outgoing;
use super::socket::Missed;

/// Which plain protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// JSON text frames both ways.
    WebSocket,
    /// Server-Sent Events, server to client only.
    EventStream,
}

impl Plain {
    /// The plain protocol of a session that started on `transport`, if it is one.
    pub fn of(transport: Transport) -> Option<Plain> {
        match transport {
            Transport::PlainWebSocket => Some(Plain::WebSocket),
            Transport::EventStream => Some(Plain::EventStream),
            Transport::Polling | Transport::WebSocket => None,
        }
    }
}

/// One broadcast converted for plain clients, each protocol at most once, when the first such client needs it.
#[derive(Default)]
pub(crate) struct PlainCache {
    websocket: OnceCell<Option<OutFrame>>,
    event_stream: OnceCell<Option<OutFrame>>,
}

impl PlainCache {
    /// The frame a `kind` client gets for `outgoing`; `None` when the packet cannot be converted.
    pub(crate) fn frame(&self, kind: Plain, outgoing: &Outgoing<'_>) -> Option<&OutFrame> {
        let cell = match kind {
            Plain::WebSocket => &self.websocket,
            Plain::EventStream => &self.event_stream,
        };
        cell.get_or_init(|| {
            let offset = outgoing.logged.map(|(offset, _)| &**offset);
            broadcast(kind, outgoing.plain, offset)
        })
        .as_ref()
    }
}

/// The plain frame of a broadcast's `frames` (the event packet, then its attachments), with `offset` as the
/// event's id when it was logged.
fn broadcast(kind: Plain, frames: &[OutFrame], offset: Option<&str>) -> Option<OutFrame> {
    let OutFrame::Text(text) = frames.first()? else {
        return None;
    };
    let text = std::str::from_utf8(text.get(1..)?).ok()?;
    let packet = sio::split(text, usize::MAX).ok()?;
    let data = with_attachments(&packet, &frames[1..])?;
    let event = EventParts::of(&data, false)?;
    let id = offset.map(Id::Offset);
    Some(OutFrame::Text(event.encode(kind, id)))
}

/// Packets that must reach a plain socket before live ones (missed or retained), converted. A missed packet
/// carries its offset as last argument, which becomes its id.
pub(crate) fn missed(kind: Plain, packets: Vec<Missed>) -> Vec<Missed> {
    packets
        .into_iter()
        .filter_map(|packet| {
            let OutFrame::Text(text) = packet.frames.first()? else {
                return None;
            };
            let text = std::str::from_utf8(text.get(1..)?).ok()?;
            let raw = sio::split(text, usize::MAX).ok()?;
            let data = with_attachments(&raw, &packet.frames[1..])?;
            let event = EventParts::of(&data, packet.offset.is_some())?;
            let frame = event.encode(kind, packet.offset.as_deref().map(Id::Offset));
            Some(Missed {
                offset: packet.offset,
                frames: vec![OutFrame::Text(frame)],
            })
        })
        .collect()
}

/// The packet's data, its binary attachments (the frames after it) put in as `{"base64": "…"}`.
fn with_attachments(packet: &sio::RawPacket<'_>, rest: &[OutFrame]) -> Option<String> {
    let data = packet.data?;
    if packet.attachments == 0 {
        return Some(data.to_string());
    }
    let mut value: Value = serde_json::from_str(data).ok()?;
    let binaries: Vec<&Bytes> = rest
        .iter()
        .filter_map(|f| match f {
            OutFrame::Binary(b) => Some(b),
            OutFrame::Text(_) => None,
        })
        .collect();
    inline_binaries(&mut value, &binaries);
    Some(value.to_string())
}

fn inline_binaries(value: &mut Value, binaries: &[&Bytes]) {
    match value {
        Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
            let data = map
                .get("num")
                .and_then(Value::as_u64)
                .and_then(|n| binaries.get(n as usize));
            if let Some(data) = data {
                let encoded = base64::engine::general_purpose::STANDARD.encode(data);
                *value = serde_json::json!({ "base64": encoded });
            }
        }
        Value::Object(map) => map.values_mut().for_each(|v| inline_binaries(v, binaries)),
        Value::Array(items) => items.iter_mut().for_each(|v| inline_binaries(v, binaries)),
        _ => {}
    }
}

/// What a plain event frame carries as its `id`.
#[derive(Debug, Clone, Copy)]
enum Id<'a> {
    /// The number the client acks (plain WebSocket), or a mailbox entry's number (event stream).
    Ack(u64),
    /// The offset of a logged broadcast in its site's recovery log.
    Offset(&'a str),
}

/// An event's name and arguments as JSON text, sliced from its packet.
struct EventParts<'a> {
    name: &'a str,
    args: String,
}

impl<'a> EventParts<'a> {
    /// Splits `["name", ...args]`; with `drop_last`, the last argument (a logged packet's offset) is left out.
    fn of(data: &'a str, drop_last: bool) -> Option<Self> {
        let items: Vec<&RawValue> = serde_json::from_str(data).ok()?;
        let name = items.first()?.get();
        let mut args: &[&RawValue] = items.get(1..).unwrap_or_default();
        if drop_last {
            args = args.split_last().map_or(args, |(_, rest)| rest);
        }
        let (Some(first), Some(last)) = (args.first(), args.last()) else {
            return Some(EventParts {
                name,
                args: "[]".to_string(),
            });
        };
        let start = offset_in(data, first.get())?;
        let end = offset_in(data, last.get())? + last.get().len();
        Some(EventParts {
            name,
            args: format!("[{}]", data.get(start..end)?),
        })
    }

    fn encode(&self, kind: Plain, id: Option<Id<'_>>) -> Bytes {
        let args = self.args.as_str();
        match kind {
            Plain::WebSocket => {
                let mut out = String::with_capacity(40 + self.name.len() + args.len());
                out.push_str(r#"{"type":"event","event":"#);
                out.push_str(self.name);
                out.push_str(r#","args":"#);
                out.push_str(args);
                match id {
                    Some(Id::Ack(id)) => {
                        out.push_str(r#","id":"#);
                        out.push_str(&id.to_string());
                    }
                    Some(Id::Offset(offset)) => {
                        out.push_str(r#","offset":"#);
                        push_json_string(&mut out, offset);
                    }
                    None => {}
                }
                out.push('}');
                Bytes::from(out)
            }
            Plain::EventStream => {
                let name: String = serde_json::from_str::<String>(self.name)
                    .unwrap_or_else(|_| self.name.to_string())
                    .chars()
                    .filter(|c| *c != '\n' && *c != '\r')
                    .collect();
                let mut out = String::with_capacity(32 + name.len() + args.len());
                match id {
                    Some(Id::Ack(id)) => out.push_str(&format!("id: {id}\n")),
                    Some(Id::Offset(offset)) => out.push_str(&format!("id: {offset}\n")),
                    None => {}
                }
                out.push_str("event: ");
                out.push_str(&name);
                out.push_str("\ndata: ");
                // JSON text holds line breaks only as whitespace between tokens, which can go.
                out.extend(args.chars().filter(|c| *c != '\n' && *c != '\r'));
                out.push_str("\n\n");
                Bytes::from(out)
            }
        }
    }
}

/// Where `part`, a slice of `whole`, starts in it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

fn push_json_string(out: &mut String, text: &str) {
    // Serializing a string cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

/// Converts the frames queued for one plain session, in order, into what goes on its wire. Frames that are
/// plain already (converted broadcasts, herald's own error frames) pass through. `welcome` answers the rooms
/// of the socket a CONNECT answer is for.
pub(crate) fn convert(
    kind: Plain,
    frames: impl IntoIterator<Item = OutFrame>,
    welcome: impl Fn(&str) -> Vec<String>,
    out: &mut Vec<PlainFrame>,
) {
    let mut frames = frames.into_iter().peekable();
    while let Some(frame) = frames.next() {
        let OutFrame::Text(text) = frame else {
            // An attachment whose packet could not be converted.
            continue;
        };
        if text.first() != Some(&b'4') {
            out.push(PlainFrame::Text(text));
            continue;
        }
        let Some(packet) = std::str::from_utf8(&text[1..])
            .ok()
            .and_then(|t| sio::split(t, usize::MAX).ok())
        else {
            continue;
        };
        let mut attachments = Vec::with_capacity(packet.attachments);
        while attachments.len() < packet.attachments {
            match frames.peek() {
                Some(OutFrame::Binary(_)) => attachments.extend(frames.next()),
                _ => break,
            }
        }
        one(kind, &packet, &attachments, &welcome, out);
    }
}

fn one(
    kind: Plain,
    packet: &sio::RawPacket<'_>,
    attachments: &[OutFrame],
    welcome: &impl Fn(&str) -> Vec<String>,
    out: &mut Vec<PlainFrame>,
) {
    match packet.kind {
        PacketType::Connect => {
            let sid = packet
                .data
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .and_then(|v| v.get("sid")?.as_str().map(str::to_string))
                .unwrap_or_default();
            let rooms = welcome(packet.nsp);
            let mut welcome = String::with_capacity(64);
            welcome.push_str(r#"{"type":"welcome","socket":"#);
            push_json_string(&mut welcome, &sid);
            welcome.push_str(r#","rooms":"#);
            welcome.push_str(&serde_json::to_string(&rooms).unwrap_or_else(|_| "[]".into()));
            welcome.push('}');
            let frame = match kind {
                Plain::WebSocket => welcome,
                Plain::EventStream => format!("event: welcome\ndata: {welcome}\n\n"),
            };
            out.push(PlainFrame::Text(Bytes::from(frame)));
        }
        PacketType::ConnectError => {
            let message = packet
                .data
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .map(|v| match v {
                    Value::String(message) => message,
                    other => other
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("refused")
                        .to_string(),
                })
                .unwrap_or_else(|| "refused".to_string());
            if kind == Plain::WebSocket {
                out.push(PlainFrame::Text(error_frame(None, &message)));
            }
            out.push(PlainFrame::Close(Refused::policy(message)));
        }
        PacketType::Disconnect => {
            out.push(PlainFrame::Close(Refused::normal(
                "server namespace disconnect",
            )));
        }
        PacketType::Event | PacketType::BinaryEvent => {
            let Some(data) = with_attachments(packet, attachments) else {
                return;
            };
            if let Some(event) = EventParts::of(&data, false) {
                out.push(PlainFrame::Text(event.encode(kind, packet.id.map(Id::Ack))));
            }
        }
        PacketType::Ack | PacketType::BinaryAck => {
            let (Plain::WebSocket, Some(id)) = (kind, packet.id) else {
                return;
            };
            let Some(args) = with_attachments(packet, attachments) else {
                return;
            };
            let frame = match failure(&args) {
                Some(error) => error_frame(Some(id), &error),
                None => Bytes::from(format!(r#"{{"type":"reply","id":{id},"args":{args}}}"#)),
            };
            out.push(PlainFrame::Text(frame));
        }
    }
}

/// The reason of an answer that is only `[{"error": "<reason>"}]`: how the client-event pipeline says an event
/// failed, which a plain client gets as an error frame.
fn failure(args: &str) -> Option<String> {
    if !args.contains("\"error\"") {
        return None;
    }
    match serde_json::from_str::<Value>(args).ok()? {
        Value::Array(mut items) if items.len() == 1 => match items.pop()? {
            Value::Object(map) if map.len() == 1 => map.get("error")?.as_str().map(str::to_string),
            _ => None,
        },
        _ => None,
    }
}

/// A plain WebSocket's error frame: `{"type":"error","id":n,"error":"…"}`, the id when the error answers one.
pub(crate) fn error_frame(id: Option<u64>, error: &str) -> Bytes {
    let mut frame = String::with_capacity(32 + error.len());
    frame.push_str(r#"{"type":"error","#);
    if let Some(id) = id {
        frame.push_str(&format!(r#""id":{id},"#));
    }
    frame.push_str(r#""error":"#);
    push_json_string(&mut frame, error);
    frame.push('}');
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn texts(out: &[PlainFrame]) -> Vec<String> {
        out.iter()
            .map(|f| match f {
                PlainFrame::Text(t) => String::from_utf8_lossy(t).into_owned(),
                PlainFrame::Close(r) => format!("close {} {}", r.code, r.reason),
            })
            .collect()
    }

    fn run(kind: Plain, frames: Vec<OutFrame>) -> Vec<String> {
        let mut out = Vec::new();
        convert(kind, frames, |_| vec!["news".to_string()], &mut out);
        texts(&out)
    }

    #[test]
    fn events_replies_and_welcomes_become_json_frames() {
        let frames = vec![
            OutFrame::text(r#"40/s,{"sid":"abc"}"#),
            OutFrame::text(r#"42/s,["news",{"a":[1,2]},"x"]"#),
            OutFrame::text(r#"42/s,7["entry",1]"#),
            OutFrame::text(r#"43/s,3[{"ok":true}]"#),
            OutFrame::text(r#"43/s,4[{"error":"too low"}]"#),
            OutFrame::text(r#"42/s,["bare"]"#),
            OutFrame::text(r#"{"type":"error","error":"already plain"}"#),
        ];
        assert_eq!(
            run(Plain::WebSocket, frames),
            [
                r#"{"type":"welcome","socket":"abc","rooms":["news"]}"#,
                r#"{"type":"event","event":"news","args":[{"a":[1,2]},"x"]}"#,
                r#"{"type":"event","event":"entry","args":[1],"id":7}"#,
                r#"{"type":"reply","id":3,"args":[{"ok":true}]}"#,
                r#"{"type":"error","id":4,"error":"too low"}"#,
                r#"{"type":"event","event":"bare","args":[]}"#,
                r#"{"type":"error","error":"already plain"}"#,
            ]
        );
    }

    #[test]
    fn a_refusal_is_an_error_frame_then_a_policy_close() {
        let frames = vec![OutFrame::text(r#"44/s,{"message":"bad token"}"#)];
        assert_eq!(
            run(Plain::WebSocket, frames.clone()),
            [
                r#"{"type":"error","error":"bad token"}"#,
                "close 1008 bad token"
            ]
        );
        assert_eq!(run(Plain::EventStream, frames), ["close 1008 bad token"]);
        assert_eq!(
            run(Plain::WebSocket, vec![OutFrame::text("41/s,")]),
            ["close 1000 server namespace disconnect"]
        );
    }

    #[test]
    fn event_stream_blocks_carry_ids_names_and_the_arguments() {
        let frames = vec![
            OutFrame::text(r#"40/s,{"sid":"abc"}"#),
            OutFrame::text(r#"42/s,12["state",{"on":true}]"#),
            OutFrame::text(r#"43/s,3[1]"#),
        ];
        assert_eq!(
            run(Plain::EventStream, frames),
            [
                "event: welcome\ndata: {\"type\":\"welcome\",\"socket\":\"abc\",\"rooms\":[\"news\"]}\n\n",
                "id: 12\nevent: state\ndata: [{\"on\":true}]\n\n",
            ]
        );
    }

    #[test]
    fn binary_attachments_are_inlined_as_base64() {
        let frames = vec![
            OutFrame::text(r#"451-/s,["file",{"_placeholder":true,"num":0}]"#),
            OutFrame::Binary(Bytes::from_static(b"\x01\x02")),
        ];
        assert_eq!(
            run(Plain::WebSocket, frames),
            [r#"{"type":"event","event":"file","args":[{"base64":"AQI="}]}"#]
        );
    }

    #[test]
    fn a_broadcast_is_converted_once_per_protocol_with_its_offset() {
        let plain = vec![OutFrame::text(r#"42/s,["news",1]"#)];
        let logged = vec![OutFrame::text(r#"42/s,["news",1,"5-0"]"#)];
        let offset: Arc<str> = "5-0".into();
        let outgoing = Outgoing {
            plain: &plain,
            logged: Some((&offset, &logged)),
        };
        let cache = PlainCache::default();
        let ws = cache.frame(Plain::WebSocket, &outgoing).cloned();
        assert_eq!(
            ws,
            Some(OutFrame::text(
                r#"{"type":"event","event":"news","args":[1],"offset":"5-0"}"#
            ))
        );
        let sse = cache.frame(Plain::EventStream, &outgoing).cloned();
        assert_eq!(
            sse,
            Some(OutFrame::text("id: 5-0\nevent: news\ndata: [1]\n\n"))
        );
        let first = cache
            .frame(Plain::WebSocket, &outgoing)
            .map(|f| f as *const _);
        let again = cache
            .frame(Plain::WebSocket, &outgoing)
            .map(|f| f as *const _);
        assert_eq!(first, again, "converted once");
    }

    #[test]
    fn missed_packets_lose_their_offset_argument_to_the_id() {
        let packets = vec![
            Missed {
                offset: Some("9-1".into()),
                frames: vec![OutFrame::text(r#"42/s,["news",{"n":1},"9-1"]"#)],
            },
            Missed {
                offset: None,
                frames: vec![OutFrame::text(r#"42/s,["price",10]"#)],
            },
        ];
        let converted: Vec<_> = missed(Plain::EventStream, packets)
            .into_iter()
            .flat_map(|m| m.frames)
            .collect();
        assert_eq!(
            converted,
            vec![
                OutFrame::text("id: 9-1\nevent: news\ndata: [{\"n\":1}]\n\n"),
                OutFrame::text("event: price\ndata: [10]\n\n"),
            ]
        );
    }
}
