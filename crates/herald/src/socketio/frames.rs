//! Encoding outbound Socket.IO packets into Engine.IO frames, once, so a broadcast shares them.

use bytes::Bytes;
use herald_protocol::engineio::OutFrame;
use herald_protocol::socketio::{encode, Event, Header, PacketType};
use serde::Serialize;
use serde_json::Value;

/// An event (or ack) could not be encoded: its arguments are not JSON-serializable.
#[derive(Debug, thiserror::Error)]
#[error("arguments are not serializable as JSON: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// Frames for `event(...args)` in `nsp`: the text packet, then one frame per binary attachment.
pub(crate) fn event(
    nsp: &str,
    ack_id: Option<u64>,
    name: &str,
    args: &[Value],
    binaries: &[Bytes],
) -> Result<Vec<OutFrame>, EncodeError> {
    let kind = if binaries.is_empty() {
        PacketType::Event
    } else {
        PacketType::BinaryEvent
    };
    packet(kind, nsp, ack_id, &Event { name, args }, binaries)
}

/// The text frame of `event(...args)` in `nsp` and its binary attachments, for a broadcast that travels as
/// bytes (the cluster bus) before it is queued.
pub fn encode_event(
    nsp: &str,
    name: &str,
    args: &[Value],
    binaries: &[Bytes],
) -> Result<(Bytes, Vec<Bytes>), EncodeError> {
    let mut frames = event(nsp, None, name, args, binaries)?.into_iter();
    let text = match frames.next() {
        Some(OutFrame::Text(text)) => text,
        // `event` always starts with the text frame.
        _ => Bytes::new(),
    };
    Ok((text, binaries.to_vec()))
}

/// An event's text frame with `offset` appended as its last argument, as socket.io's connection-state recovery
/// sends it (the client remembers the last one it saw). The frame ends with the arguments' closing `]`.
pub fn with_offset(text: &Bytes, offset: &str) -> Bytes {
    let body = text.strip_suffix(b"]").unwrap_or(text);
    let mut out = Vec::with_capacity(body.len() + offset.len() + 4);
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(offset.as_bytes());
    out.extend_from_slice(b"\"]");
    Bytes::from(out)
}

/// The frame of an event whose `[name, ...args]` array is already JSON, with ack id `ack_id`.
pub(crate) fn raw_event(nsp: &str, ack_id: u64, array: &serde_json::value::RawValue) -> OutFrame {
    let mut out = Vec::with_capacity(16 + nsp.len() + array.get().len());
    out.push(b'4');
    let header = Header {
        kind: PacketType::Event,
        nsp,
        id: Some(ack_id),
        attachments: 0,
    };
    // A RawValue is JSON already, so serializing it cannot fail.
    let _ = encode(&header, Some(array), &mut out);
    OutFrame::Text(Bytes::from(out))
}

/// Frames answering the client's ack `id` with `args`.
pub(crate) fn ack(
    nsp: &str,
    id: u64,
    args: &[Value],
    binaries: &[Bytes],
) -> Result<Vec<OutFrame>, EncodeError> {
    let kind = if binaries.is_empty() {
        PacketType::Ack
    } else {
        PacketType::BinaryAck
    };
    packet(kind, nsp, Some(id), args, binaries)
}

/// A packet without binary attachments, as one text frame.
pub(crate) fn simple<T: Serialize + ?Sized>(
    kind: PacketType,
    nsp: &str,
    data: Option<&T>,
) -> OutFrame {
    let mut out = Vec::with_capacity(32);
    out.push(b'4');
    // Only string-keyed JSON values reach here, which always serialize.
    let _ = encode(&Header::new(kind, nsp), data, &mut out);
    OutFrame::Text(Bytes::from(out))
}

fn packet<T: Serialize + ?Sized>(
    kind: PacketType,
    nsp: &str,
    id: Option<u64>,
    data: &T,
    binaries: &[Bytes],
) -> Result<Vec<OutFrame>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.push(b'4');
    let header = Header {
        kind,
        nsp,
        id,
        attachments: binaries.len(),
    };
    encode(&header, Some(data), &mut out)?;
    let mut frames = Vec::with_capacity(1 + binaries.len());
    frames.push(OutFrame::Text(Bytes::from(out)));
    frames.extend(binaries.iter().cloned().map(OutFrame::Binary));
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_offset_becomes_the_last_argument() {
        let (text, _) = encode_event("/s", "news", &[json!({"a": [1]})], &[]).expect("encodes");
        assert_eq!(
            with_offset(&text, "17-0"),
            Bytes::from_static(b"42/s,[\"news\",{\"a\":[1]},\"17-0\"]")
        );
    }

    #[test]
    fn event_frames_carry_the_engine_message_prefix() {
        let frames = event(
            "/chat",
            Some(3),
            "hi",
            &[json!(1)],
            &[Bytes::from_static(b"\x01")],
        )
        .expect("encodes");
        assert_eq!(
            frames,
            vec![
                OutFrame::text("451-/chat,3[\"hi\",1]"),
                OutFrame::Binary(Bytes::from_static(b"\x01"))
            ]
        );
        let raw = serde_json::from_str::<&serde_json::value::RawValue>(r#"["ev",{"a":1}]"#)
            .expect("json");
        assert_eq!(
            raw_event("/s", 7, raw),
            OutFrame::text("42/s,7[\"ev\",{\"a\":1}]")
        );
        assert_eq!(
            simple::<Value>(PacketType::Disconnect, "/", None),
            OutFrame::text("41")
        );
    }
}
