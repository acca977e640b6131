//! One Socket.IO packet: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]`.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;

use crate::DecodeError;

/// The seven Socket.IO packet types, numbered as on the wire. Revision 4 calls type 4 `ERROR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

impl PacketType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'0' => PacketType::Connect,
            b'1' => PacketType::Disconnect,
            b'2' => PacketType::Event,
            b'3' => PacketType::Ack,
            b'4' => PacketType::ConnectError,
            b'5' => PacketType::BinaryEvent,
            b'6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    /// Whether binary attachments follow this packet.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }

    fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Event => "EVENT",
            PacketType::Ack => "ACK",
            PacketType::ConnectError => "CONNECT_ERROR",
            PacketType::BinaryEvent => "BINARY_EVENT",
            PacketType::BinaryAck => "BINARY_ACK",
        }
    }
}

/// A decoded Socket.IO packet; the namespace borrows from the input text.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet<'a> {
    pub kind: PacketType,
    /// The namespace, `/` when the packet names none.
    pub nsp: &'a str,
    /// The query string a revision-4 CONNECT appends to its namespace (`/admin?token=x`).
    pub query: Option<&'a str>,
    /// How many binary attachments follow (binary types only).
    pub attachments: usize,
    pub id: Option<u64>,
    pub data: Option<Value>,
}

impl Packet<'_> {
    /// For an EVENT, its name and arguments.
    pub fn event(&self) -> Option<(&str, &[Value])> {
        match (&self.kind, &self.data) {
            (PacketType::Event | PacketType::BinaryEvent, Some(Value::Array(items))) => {
                let name = items.first()?.as_str()?;
                Some((name, &items[1..]))
            }
            _ => None,
        }
    }
}

/// A Socket.IO packet split into its header and its data, the data still JSON text: for code that passes the
/// data on rather than reading it (a packet re-framed for another protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPacket<'a> {
    pub kind: PacketType,
    /// The namespace, `/` when the packet names none.
    pub nsp: &'a str,
    /// The query string a revision-4 CONNECT appends to its namespace.
    pub query: Option<&'a str>,
    /// How many binary attachments follow (binary types only).
    pub attachments: usize,
    pub id: Option<u64>,
    /// The data as JSON text, unparsed.
    pub data: Option<&'a str>,
}

/// Splits one Socket.IO packet into its header and its data, without parsing the data. At most
/// `max_attachments` binary attachments are accepted.
pub fn split(text: &str, max_attachments: usize) -> Result<RawPacket<'_>, DecodeError> {
    let bytes = text.as_bytes();
    let first = *bytes.first().ok_or(DecodeError::Empty)?;
    let kind = PacketType::from_byte(first)
        .ok_or_else(|| DecodeError::UnknownType(text.chars().next().unwrap_or('\u{fffd}')))?;
    let mut at = 1;

    let mut attachments = 0;
    if kind.is_binary() {
        let dash = text[at..]
            .find('-')
            .ok_or(DecodeError::InvalidAttachments)?
            + at;
        let digits = &text[at..dash];
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecodeError::InvalidAttachments);
        }
        attachments = digits
            .parse()
            .map_err(|_| DecodeError::InvalidAttachments)?;
        if attachments > max_attachments {
            return Err(DecodeError::TooManyAttachments {
                count: attachments,
                limit: max_attachments,
            });
        }
        at = dash + 1;
    }

    let (mut nsp, mut query) = ("/", None);
    if bytes.get(at) == Some(&b'/') {
        let end = text[at..].find(',').map_or(text.len(), |i| i + at);
        let full = &text[at..end];
        (nsp, query) = match full.split_once('?') {
            Some((n, q)) => (n, Some(q)),
            None => (full, None),
        };
        at = if end < text.len() { end + 1 } else { end };
    }

    let digits_end = bytes[at..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(bytes.len(), |i| i + at);
    let id = if digits_end > at {
        Some(
            text[at..digits_end]
                .parse::<u64>()
                .map_err(|_| DecodeError::InvalidAckId)?,
        )
    } else {
        None
    };
    at = digits_end;

    Ok(RawPacket {
        kind,
        nsp,
        query,
        attachments,
        id,
        data: (at < text.len()).then(|| &text[at..]),
    })
}

/// Decodes one Socket.IO packet from an Engine.IO text message, accepting at most `max_attachments` binary
/// attachments.
pub fn decode(text: &str, max_attachments: usize) -> Result<Packet<'_>, DecodeError> {
    let raw = split(text, max_attachments)?;
    let data = match raw.data {
        Some(json) => Some(
            serde_json::from_str::<Value>(json)
                .map_err(|e| DecodeError::InvalidJson(e.to_string()))?,
        ),
        None => None,
    };
    check_shape(raw.kind, data.as_ref())?;
    Ok(Packet {
        kind: raw.kind,
        nsp: raw.nsp,
        query: raw.query,
        attachments: raw.attachments,
        id: raw.id,
        data,
    })
}

fn check_shape(kind: PacketType, data: Option<&Value>) -> Result<(), DecodeError> {
    let (ok, expected) = match kind {
        PacketType::Connect => (
            matches!(data, None | Some(Value::Object(_))),
            "no data or an object",
        ),
        PacketType::Disconnect => (data.is_none(), "no data"),
        PacketType::ConnectError => (
            matches!(data, Some(Value::Object(_) | Value::String(_))),
            "an object or a string",
        ),
        PacketType::Event | PacketType::BinaryEvent => (
            matches!(data, Some(Value::Array(a)) if matches!(a.first(), Some(Value::String(_) | Value::Number(_)))),
            "an array starting with the event name",
        ),
        PacketType::Ack | PacketType::BinaryAck => {
            (matches!(data, Some(Value::Array(_))), "an array")
        }
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::InvalidPayload {
            packet: kind.name(),
            expected,
        })
    }
}

/// Everything of a packet but its data, for encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub kind: PacketType,
    pub nsp: &'a str,
    pub id: Option<u64>,
    pub attachments: usize,
}

impl<'a> Header<'a> {
    /// A header of `kind` in namespace `nsp`, without ack id or attachments.
    pub fn new(kind: PacketType, nsp: &'a str) -> Self {
        Header {
            kind,
            nsp,
            id: None,
            attachments: 0,
        }
    }
}

/// Appends the packet `header` + `data` to `out`.
pub fn encode<T: Serialize + ?Sized>(
    header: &Header<'_>,
    data: Option<&T>,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    out.push(b'0' + header.kind as u8);
    if header.kind.is_binary() {
        push_decimal(out, header.attachments as u64);
        out.push(b'-');
    }
    if header.nsp != "/" && !header.nsp.is_empty() {
        out.extend_from_slice(header.nsp.as_bytes());
        out.push(b',');
    }
    if let Some(id) = header.id {
        push_decimal(out, id);
    }
    if let Some(data) = data {
        serde_json::to_writer(&mut *out, data)?;
    }
    Ok(())
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// An event's data, `[name, ...args]`, serialized without building the array first.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a, T> {
    pub name: &'a str,
    pub args: &'a [T],
}

impl<T: Serialize> Serialize for Event<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.args.len() + 1))?;
        seq.serialize_element(self.name)?;
        for arg in self.args {
            seq.serialize_element(arg)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(input: &str, expected: Result<Packet<'_>, DecodeError>) {
        assert_eq!(decode(input, 10), expected, "decoding {input:?}");
        if let Ok(p) = expected {
            if p.query.is_none() {
                let header = Header {
                    kind: p.kind,
                    nsp: p.nsp,
                    id: p.id,
                    attachments: p.attachments,
                };
                let mut out = Vec::new();
                encode(&header, p.data.as_ref(), &mut out).expect("encodes");
                assert_eq!(
                    String::from_utf8(out).expect("utf8"),
                    input,
                    "re-encoding {input:?}"
                );
            }
        }
    }

    fn packet(kind: PacketType, nsp: &str, id: Option<u64>, data: Option<Value>) -> Packet<'_> {
        Packet {
            kind,
            nsp,
            query: None,
            attachments: 0,
            id,
            data,
        }
    }

    #[test]
    fn valid_packets() {
        use PacketType::*;
        check("0", Ok(packet(Connect, "/", None, None)));
        check(
            "0/admin,{\"token\":\"1\"}",
            Ok(packet(Connect, "/admin", None, Some(json!({"token": "1"})))),
        );
        check("1/admin,", Ok(packet(Disconnect, "/admin", None, None)));
        check(
            "2[\"hello\",1]",
            Ok(packet(Event, "/", None, Some(json!(["hello", 1])))),
        );
        check(
            "2/admin,456[\"project:delete\",123]",
            Ok(packet(
                Event,
                "/admin",
                Some(456),
                Some(json!(["project:delete", 123])),
            )),
        );
        check(
            "3/admin,456[]",
            Ok(packet(Ack, "/admin", Some(456), Some(json!([])))),
        );
        check(
            "4{\"message\":\"Not authorized\"}",
            Ok(packet(
                ConnectError,
                "/",
                None,
                Some(json!({"message": "Not authorized"})),
            )),
        );
        check(
            "51-[\"hello\",{\"_placeholder\":true,\"num\":0}]",
            Ok(Packet {
                attachments: 1,
                ..packet(
                    BinaryEvent,
                    "/",
                    None,
                    Some(json!(["hello", {"_placeholder": true, "num": 0}])),
                )
            }),
        );
        check(
            "61-/admin,456[{\"_placeholder\":true,\"num\":0}]",
            Ok(Packet {
                attachments: 1,
                ..packet(
                    BinaryAck,
                    "/admin",
                    Some(456),
                    Some(json!([{"_placeholder": true, "num": 0}])),
                )
            }),
        );
    }

    #[test]
    fn v4_connect_carries_a_query() {
        let p = decode("0/admin?token=abc&x=1", 10).expect("valid");
        assert_eq!((p.nsp, p.query), ("/admin", Some("token=abc&x=1")));
    }

    #[test]
    fn invalid_packets() {
        check("", Err(DecodeError::Empty));
        check("7", Err(DecodeError::UnknownType('7')));
        check(
            "2[\"a\"",
            Err(DecodeError::InvalidJson(
                "EOF while parsing a list at line 1 column 4".into(),
            )),
        );
        check(
            "2[]",
            Err(DecodeError::InvalidPayload {
                packet: "EVENT",
                expected: "an array starting with the event name",
            }),
        );
        check(
            "2{}",
            Err(DecodeError::InvalidPayload {
                packet: "EVENT",
                expected: "an array starting with the event name",
            }),
        );
        check(
            "1{}",
            Err(DecodeError::InvalidPayload {
                packet: "DISCONNECT",
                expected: "no data",
            }),
        );
        check(
            "0[]",
            Err(DecodeError::InvalidPayload {
                packet: "CONNECT",
                expected: "no data or an object",
            }),
        );
        check(
            "3{}",
            Err(DecodeError::InvalidPayload {
                packet: "ACK",
                expected: "an array",
            }),
        );
        check("5[\"a\"]", Err(DecodeError::InvalidAttachments));
        check("5x-[\"a\"]", Err(DecodeError::InvalidAttachments));
        check(
            "511-[\"a\"]",
            Err(DecodeError::TooManyAttachments {
                count: 11,
                limit: 10,
            }),
        );
        check(
            "299999999999999999999999[\"a\"]",
            Err(DecodeError::InvalidAckId),
        );
    }

    #[test]
    fn floats_survive_a_relay_exactly() {
        // Found by the socketio_packet fuzz target: without serde_json's float_roundtrip about 1 in 10 doubles
        // printed by JavaScript came back one ULP off.
        let p = decode("2[\"x\",0.9242944458879899,107777737777777777723]", 10).expect("valid");
        let data = p.data.expect("data");
        assert_eq!(data[1].as_f64(), Some(0.9242944458879899));
        let mut out = Vec::new();
        encode(&Header::new(PacketType::Event, "/"), Some(&data), &mut out).expect("encodes");
        assert_eq!(
            decode(std::str::from_utf8(&out).expect("utf8"), 10)
                .expect("valid")
                .data,
            Some(data)
        );
    }

    #[test]
    fn event_accessor() {
        let p = decode("2[\"ev\",1,2]", 0).expect("valid");
        assert_eq!(p.event(), Some(("ev", &[json!(1), json!(2)][..])));
    }

    #[test]
    fn encode_event_without_building_an_array() {
        let mut out = Vec::new();
        let header = Header {
            id: Some(7),
            ..Header::new(PacketType::Event, "/chat")
        };
        encode(
            &header,
            Some(&Event {
                name: "msg",
                args: &[json!("hi"), json!({"a": 1})],
            }),
            &mut out,
        )
        .expect("encodes");
        assert_eq!(out, b"2/chat,7[\"msg\",\"hi\",{\"a\":1}]");
    }
}
