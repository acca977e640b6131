//! Polling payloads: several Engine.IO packets in one HTTP body. v4 separates text packets with U+001E; v3
//! prefixes each with its length in UTF-16 code units (`5:hello`), or, from binary-capable clients, uses the
//! binary framing `<0|1><length digits><0xFF><data>`.

use bytes::Bytes;

use super::packet::encode_base64;
use super::{Packet, Version};
use crate::DecodeError;

const SEPARATOR: char = '\u{1e}';

/// A packet queued for a client, already encoded once so a broadcast shares it among recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// A complete Engine.IO text packet, type digit included (`42["event"]`, `2`, `6`).
    /// Invariant: valid UTF-8 (construct it with [`OutFrame::text`]).
    Text(Bytes),
    /// A binary message's raw data (a Socket.IO attachment), without any type prefix.
    Binary(Bytes),
}

impl OutFrame {
    /// A text frame from an encoded packet.
    pub fn text(packet: impl Into<String>) -> Self {
        OutFrame::Text(Bytes::from(packet.into()))
    }

    /// Bytes this frame occupies in memory, for queue accounting.
    pub fn len(&self) -> usize {
        match self {
            OutFrame::Text(b) | OutFrame::Binary(b) => b.len(),
        }
    }

    /// Whether the frame carries no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends `frames` to `out` as one polling payload of the given revision. Binary frames become base64 text,
/// which every client of both revisions decodes.
pub fn encode_payload<'f>(
    frames: impl IntoIterator<Item = &'f OutFrame>,
    version: Version,
    out: &mut String,
) {
    for (i, frame) in frames.into_iter().enumerate() {
        match version {
            Version::V4 => {
                if i > 0 {
                    out.push(SEPARATOR);
                }
                push_frame(frame, version, out);
            }
            Version::V3 => {
                let mut packet = String::new();
                push_frame(frame, version, &mut packet);
                let units = if packet.is_ascii() {
                    packet.len()
                } else {
                    packet.encode_utf16().count()
                };
                out.push_str(&units.to_string());
                out.push(':');
                out.push_str(&packet);
            }
        }
    }
}

fn push_frame(frame: &OutFrame, version: Version, out: &mut String) {
    match frame {
        // Text frames are valid UTF-8 by construction; a broken one is skipped rather than sent garbled.
        OutFrame::Text(b) => out.push_str(std::str::from_utf8(b).unwrap_or("6")),
        OutFrame::Binary(b) => encode_base64(b, version, out),
    }
}

/// Decodes a text polling payload into its packets, lazily; the iterator ends after the first error.
pub fn decode_payload(body: &str, version: Version) -> PayloadDecoder<'_> {
    PayloadDecoder {
        rest: body,
        version,
        started: false,
        done: false,
    }
}

/// Iterator over the packets of a text polling payload, see [`decode_payload`].
#[derive(Debug, Clone)]
pub struct PayloadDecoder<'a> {
    rest: &'a str,
    version: Version,
    started: bool,
    done: bool,
}

impl<'a> Iterator for PayloadDecoder<'a> {
    type Item = Result<Packet<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let first = !self.started;
        self.started = true;
        let item = match self.version {
            Version::V4 => self.next_v4(),
            Version::V3 => self.next_v3(first),
        }?;
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

impl<'a> PayloadDecoder<'a> {
    fn next_v4(&mut self) -> Option<Result<Packet<'a>, DecodeError>> {
        let (packet, rest) = match self.rest.find(SEPARATOR) {
            Some(at) => (
                &self.rest[..at],
                Some(&self.rest[at + SEPARATOR.len_utf8()..]),
            ),
            None => (self.rest, None),
        };
        match rest {
            Some(rest) => self.rest = rest,
            None => self.done = true,
        }
        Some(Packet::decode_text(packet, self.version))
    }

    fn next_v3(&mut self, first: bool) -> Option<Result<Packet<'a>, DecodeError>> {
        if self.rest.is_empty() {
            // An empty body is not a payload; an exhausted one simply ends.
            return first.then_some(Err(DecodeError::Empty));
        }
        Some(self.take_v3_packet())
    }

    fn take_v3_packet(&mut self) -> Result<Packet<'a>, DecodeError> {
        let colon = self.rest.find(':').ok_or(DecodeError::InvalidLength)?;
        let digits = &self.rest[..colon];
        if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecodeError::InvalidLength);
        }
        let units: usize = digits.parse().map_err(|_| DecodeError::InvalidLength)?;
        let body = &self.rest[colon + 1..];
        let end = utf16_prefix_end(body, units).ok_or(DecodeError::InvalidLength)?;
        let packet = &body[..end];
        self.rest = &body[end..];
        Packet::decode_text(packet, self.version)
    }
}

/// The byte index in `s` after its first `units` UTF-16 code units, if `s` has that many on a char boundary.
fn utf16_prefix_end(s: &str, units: usize) -> Option<usize> {
    let mut count = 0;
    for (index, ch) in s.char_indices() {
        if count == units {
            return Some(index);
        }
        count += ch.len_utf16();
        if count > units {
            return None;
        }
    }
    (count == units).then_some(s.len())
}

/// Decodes a v3 binary polling payload (`Content-Type: application/octet-stream`). Each packet is a flag byte
/// (0 text, 1 binary), its byte length as one byte per decimal digit, 0xFF, then the packet.
pub fn decode_binary_payload_v3(body: &Bytes) -> Result<Vec<Packet<'_>>, DecodeError> {
    let mut packets = Vec::new();
    let mut at = 0;
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    while at < body.len() {
        let is_binary = match body[at] {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::InvalidLength),
        };
        at += 1;
        let mut len: usize = 0;
        let mut digits = 0;
        loop {
            let b = *body.get(at).ok_or(DecodeError::InvalidLength)?;
            at += 1;
            if b == 0xFF {
                break;
            }
            digits += 1;
            if b > 9 || digits > 10 {
                return Err(DecodeError::InvalidLength);
            }
            len = len * 10 + usize::from(b);
        }
        if digits == 0 {
            return Err(DecodeError::InvalidLength);
        }
        let end = at
            .checked_add(len)
            .filter(|&e| e <= body.len())
            .ok_or(DecodeError::InvalidLength)?;
        let data = &body[at..end];
        packets.push(if is_binary {
            Packet::decode_binary_frame(body.slice(at..end), Version::V3)?
        } else {
            let text = std::str::from_utf8(data).map_err(|_| DecodeError::InvalidUtf8)?;
            Packet::decode_text(text, Version::V3)?
        });
        at = end;
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str, version: Version) -> Vec<Result<Packet<'_>, DecodeError>> {
        decode_payload(body, version).collect()
    }

    #[test]
    fn v4_payloads() {
        assert_eq!(
            decode("4hello\u{1e}2\u{1e}bAQ==", Version::V4),
            vec![
                Ok(Packet::Message("hello")),
                Ok(Packet::Ping("")),
                Ok(Packet::Binary(Bytes::from_static(&[1])))
            ]
        );
        assert_eq!(decode("", Version::V4), vec![Err(DecodeError::Empty)]);
        assert_eq!(
            decode("4a\u{1e}", Version::V4),
            vec![Ok(Packet::Message("a")), Err(DecodeError::Empty)]
        );
        assert_eq!(
            decode("9\u{1e}4a", Version::V4),
            vec![Err(DecodeError::UnknownType('9'))]
        );
    }

    #[test]
    fn v3_payloads_count_utf16_units() {
        assert_eq!(
            decode("6:4hello2:4€3:4😀1:6", Version::V3),
            vec![
                Ok(Packet::Message("hello")),
                Ok(Packet::Message("€")),
                Ok(Packet::Message("😀")),
                Ok(Packet::Noop)
            ]
        );
        assert_eq!(decode("", Version::V3), vec![Err(DecodeError::Empty)]);
        assert_eq!(
            decode("5:4", Version::V3),
            vec![Err(DecodeError::InvalidLength)]
        );
        assert_eq!(
            decode("x:4", Version::V3),
            vec![Err(DecodeError::InvalidLength)]
        );
        assert_eq!(
            decode("2:4😀", Version::V3),
            vec![Err(DecodeError::InvalidLength)]
        );
        assert_eq!(
            decode("99999999999999999999:4", Version::V3),
            vec![Err(DecodeError::InvalidLength)]
        );
    }

    #[test]
    fn encode_both_revisions() {
        let frames = [
            OutFrame::text("4hi"),
            OutFrame::text("4€"),
            OutFrame::Binary(Bytes::from_static(&[1, 2, 3])),
        ];
        let mut v4 = String::new();
        encode_payload(&frames, Version::V4, &mut v4);
        assert_eq!(v4, "4hi\u{1e}4€\u{1e}bAQID");
        let mut v3 = String::new();
        encode_payload(&frames, Version::V3, &mut v3);
        assert_eq!(v3, "3:4hi2:4€6:b4AQID");
        // What we encode, we decode.
        let back: Vec<_> = decode_payload(&v3, Version::V3).collect();
        assert_eq!(back.len(), 3);
        assert!(back.iter().all(Result::is_ok));
    }

    #[test]
    fn v3_binary_payloads() {
        // "42" as text, then a binary message [4, 7, 8].
        let body = Bytes::from_static(&[0, 2, 0xFF, b'4', b'2', 1, 3, 0xFF, 4, 7, 8]);
        assert_eq!(
            decode_binary_payload_v3(&body),
            Ok(vec![
                Packet::Message("2"),
                Packet::Binary(Bytes::from_static(&[7, 8]))
            ])
        );
        for bad in [
            &[][..],
            &[2, 1, 0xFF, b'6'],
            &[0, 9, 0xFF, b'6'],
            &[0, 0xFF, b'6'],
            &[0, 1],
        ] {
            assert!(
                decode_binary_payload_v3(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
