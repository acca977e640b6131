//! One Engine.IO packet: its type digit and its data, in text or binary form.

use base64::Engine as _;
use bytes::Bytes;

use super::Version;
use crate::DecodeError;

/// The seven Engine.IO packet types, numbered as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Open = 0,
    Close = 1,
    Ping = 2,
    Pong = 3,
    Message = 4,
    Upgrade = 5,
    Noop = 6,
}

impl PacketType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'0' => PacketType::Open,
            b'1' => PacketType::Close,
            b'2' => PacketType::Ping,
            b'3' => PacketType::Pong,
            b'4' => PacketType::Message,
            b'5' => PacketType::Upgrade,
            b'6' => PacketType::Noop,
            _ => return None,
        })
    }

    /// The ASCII digit that starts a text packet of this type.
    pub fn digit(self) -> char {
        (b'0' + self as u8) as char
    }
}

/// A decoded Engine.IO packet, borrowing its text from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Open(&'a str),
    Close,
    /// A heartbeat; its data is `probe` during a transport upgrade.
    Ping(&'a str),
    Pong(&'a str),
    /// A text message: a Socket.IO packet.
    Message(&'a str),
    /// A binary message: a Socket.IO binary attachment.
    Binary(Bytes),
    Upgrade,
    Noop,
}

impl<'a> Packet<'a> {
    /// Decodes a text packet: a WebSocket text frame, or one packet out of a polling payload. In the latter a
    /// binary message is base64 text after `b` (v4) or `b4` (v3).
    pub fn decode_text(text: &'a str, version: Version) -> Result<Self, DecodeError> {
        let first = *text.as_bytes().first().ok_or(DecodeError::Empty)?;
        if first == b'b' {
            let b64 = match version {
                Version::V4 => &text[1..],
                Version::V3 => text
                    .strip_prefix("b4")
                    .ok_or(DecodeError::InvalidBinaryFrame)?,
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| DecodeError::InvalidBase64)?;
            return Ok(Packet::Binary(Bytes::from(raw)));
        }
        let kind = PacketType::from_byte(first)
            .ok_or_else(|| DecodeError::UnknownType(text.chars().next().unwrap_or('\u{fffd}')))?;
        // The first byte is an ASCII digit, so slicing after it is on a char boundary.
        let data = &text[1..];
        Ok(match kind {
            PacketType::Open => Packet::Open(data),
            PacketType::Close => Packet::Close,
            PacketType::Ping => Packet::Ping(data),
            PacketType::Pong => Packet::Pong(data),
            PacketType::Message => Packet::Message(data),
            PacketType::Upgrade => Packet::Upgrade,
            PacketType::Noop => Packet::Noop,
        })
    }

    /// Decodes a WebSocket binary frame. v4 frames are the raw attachment; v3 frames carry the type byte `4` first.
    pub fn decode_binary_frame(
        frame: Bytes,
        version: Version,
    ) -> Result<Packet<'static>, DecodeError> {
        match version {
            Version::V4 => Ok(Packet::Binary(frame)),
            Version::V3 => match frame.first() {
                Some(4) => Ok(Packet::Binary(frame.slice(1..))),
                Some(_) => Err(DecodeError::InvalidBinaryFrame),
                None => Err(DecodeError::Empty),
            },
        }
    }

    /// Appends this packet's text form to `out`; binary data becomes base64 as in a polling payload.
    pub fn encode_text(&self, version: Version, out: &mut String) {
        let (kind, data) = match self {
            Packet::Open(d) => (PacketType::Open, *d),
            Packet::Close => (PacketType::Close, ""),
            Packet::Ping(d) => (PacketType::Ping, *d),
            Packet::Pong(d) => (PacketType::Pong, *d),
            Packet::Message(d) => (PacketType::Message, *d),
            Packet::Upgrade => (PacketType::Upgrade, ""),
            Packet::Noop => (PacketType::Noop, ""),
            Packet::Binary(raw) => return encode_base64(raw, version, out),
        };
        out.push(kind.digit());
        out.push_str(data);
    }
}

/// Appends a binary message in its polling text form: `b<base64>` (v4) or `b4<base64>` (v3).
pub(crate) fn encode_base64(raw: &[u8], version: Version, out: &mut String) {
    out.push_str(match version {
        Version::V4 => "b",
        Version::V3 => "b4",
    });
    base64::engine::general_purpose::STANDARD.encode_string(raw, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, version: Version, expected: Result<Packet<'_>, DecodeError>) {
        assert_eq!(
            Packet::decode_text(input, version),
            expected,
            "decoding {input:?}"
        );
        if let Ok(packet) = expected {
            let mut out = String::new();
            packet.encode_text(version, &mut out);
            assert_eq!(out, input, "re-encoding {input:?}");
        }
    }

    #[test]
    fn text_packets_round_trip() {
        use Version::*;
        check("0{\"sid\":\"x\"}", V4, Ok(Packet::Open("{\"sid\":\"x\"}")));
        check("1", V4, Ok(Packet::Close));
        check("2", V4, Ok(Packet::Ping("")));
        check("2probe", V3, Ok(Packet::Ping("probe")));
        check("3probe", V4, Ok(Packet::Pong("probe")));
        check("4hello €", V4, Ok(Packet::Message("hello €")));
        check("5", V4, Ok(Packet::Upgrade));
        check("6", V3, Ok(Packet::Noop));
        check(
            "bAQID",
            V4,
            Ok(Packet::Binary(Bytes::from_static(&[1, 2, 3]))),
        );
        check(
            "b4AQID",
            V3,
            Ok(Packet::Binary(Bytes::from_static(&[1, 2, 3]))),
        );
    }

    #[test]
    fn bad_text_packets_are_errors() {
        use Version::*;
        check("", V4, Err(DecodeError::Empty));
        check("7", V4, Err(DecodeError::UnknownType('7')));
        check("€", V4, Err(DecodeError::UnknownType('€')));
        check("b!!", V4, Err(DecodeError::InvalidBase64));
        check("bAQID", V3, Err(DecodeError::InvalidBinaryFrame));
    }

    #[test]
    fn binary_frames() {
        let raw = Bytes::from_static(&[4, 9, 9]);
        assert_eq!(
            Packet::decode_binary_frame(raw.clone(), Version::V3),
            Ok(Packet::Binary(Bytes::from_static(&[9, 9])))
        );
        assert_eq!(
            Packet::decode_binary_frame(raw.clone(), Version::V4),
            Ok(Packet::Binary(raw))
        );
        assert_eq!(
            Packet::decode_binary_frame(Bytes::from_static(&[2]), Version::V3),
            Err(DecodeError::InvalidBinaryFrame)
        );
        assert_eq!(
            Packet::decode_binary_frame(Bytes::new(), Version::V3),
            Err(DecodeError::Empty)
        );
    }
}
