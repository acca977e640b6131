//! The bus's wire format: a `Broadcast` as one compact binary envelope, encoded once by the node that took the
//! publish and decoded once by each node that receives it.
//!
//! Layout (integers are LEB128 varints, strings and byte strings are a varint length then the bytes):
//!
//! ```text
//! version (1 byte, 1) · flags (1 byte: bit 0 volatile) · origin · site
//! · rooms: count, then each · except: count, then each · text · binaries: count, then each
//! · offset: every byte left, ASCII `<ms>-<seq>`; none when nothing is left
//! ```
//!
//! The offset comes last so that the Redis script that logs a packet can append the stream id it got to the
//! envelope it was given, without decoding it: the log keeps the envelope without an offset (the entry's id is
//! its offset), and the channel carries the envelope followed by that id.

use std::sync::Arc;

use bytes::Bytes;

use super::bus::Broadcast;

const VERSION: u8 = 1;
const VOLATILE: u8 = 1;

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the envelope ends early")]
    Truncated,
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("unknown envelope flags {0:#x}")]
    Flags(u8),
    #[error("a length does not fit")]
    Length,
    #[error("a name is not UTF-8")]
    Utf8,
    #[error("the offset is not <ms>-<seq>")]
    Offset,
}

/// `broadcast` as an envelope, without its offset (the bus adds the offset it logged the packet at).
pub fn encode(broadcast: &Broadcast) -> Vec<u8> {
    let strings = broadcast.origin.len()
        + broadcast.site.len()
        + broadcast.rooms.iter().map(|r| r.len() + 2).sum::<usize>()
        + broadcast.except.iter().map(|r| r.len() + 2).sum::<usize>();
    let binaries: usize = broadcast.binaries.iter().map(|b| b.len() + 5).sum();
    let mut out = Vec::with_capacity(32 + strings + broadcast.text.len() + binaries);
    out.push(VERSION);
    out.push(if broadcast.volatile { VOLATILE } else { 0 });
    put_bytes(&mut out, broadcast.origin.as_bytes());
    put_bytes(&mut out, broadcast.site.as_bytes());
    put_list(&mut out, &broadcast.rooms);
    put_list(&mut out, &broadcast.except);
    put_bytes(&mut out, &broadcast.text);
    put_varint(&mut out, broadcast.binaries.len() as u64);
    for binary in &broadcast.binaries {
        put_bytes(&mut out, binary);
    }
    out
}

/// `encode` with `offset` appended, as the bus carries a logged packet.
pub fn encode_with_offset(broadcast: &Broadcast, offset: &str) -> Vec<u8> {
    let mut out = encode(broadcast);
    out.extend_from_slice(offset.as_bytes());
    out
}

/// Reads an envelope. Never panics, and allocates no more than the input's size suggests.
pub fn decode(envelope: &Bytes) -> Result<Broadcast, WireError> {
    let mut r = Reader {
        data: envelope,
        at: 0,
    };
    let version = r.byte()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let flags = r.byte()?;
    if flags & !VOLATILE != 0 {
        return Err(WireError::Flags(flags));
    }
    let origin: Arc<str> = r.string()?.into();
    let site = r.string()?;
    let rooms = r.list()?;
    let except = r.list()?;
    let text = r.bytes()?;
    let count = r.count()?;
    let mut binaries = Vec::with_capacity(count);
    for _ in 0..count {
        binaries.push(r.bytes()?);
    }
    let rest = &envelope[r.at..];
    let offset = if rest.is_empty() {
        None
    } else {
        let text = std::str::from_utf8(rest).map_err(|_| WireError::Offset)?;
        super::embedded::parse_offset(text).ok_or(WireError::Offset)?;
        Some(text.into())
    };
    Ok(Broadcast {
        origin,
        site,
        rooms,
        except,
        volatile: flags & VOLATILE != 0,
        text,
        binaries,
        offset,
    })
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    put_varint(out, items.len() as u64);
    for item in items {
        put_bytes(out, item.as_bytes());
    }
}

struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, WireError> {
        let b = *self.data.get(self.at).ok_or(WireError::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or(WireError::Length)?;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(WireError::Length)
    }

    /// A length or count that cannot exceed the bytes left (each item takes at least one byte).
    fn count(&mut self) -> Result<usize, WireError> {
        let n = self.varint()?;
        let left = self.data.len() - self.at;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or(WireError::Truncated)
    }

    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let len = self.count()?;
        let slice = self.data.slice(self.at..self.at + len);
        self.at += len;
        Ok(slice)
    }

    fn string(&mut self) -> Result<String, WireError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Utf8)
    }

    fn list(&mut self) -> Result<Vec<String>, WireError> {
        let count = self.count()?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.string()?);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Broadcast {
        Broadcast {
            origin: "node0001".into(),
            site: "shop".into(),
            rooms: vec!["lobby".into(), "ü".repeat(100)],
            except: vec!["sock".into()],
            volatile: true,
            text: Bytes::from_static(b"451-/shop,[\"ev\",{\"_placeholder\":true,\"num\":0}]"),
            binaries: vec![Bytes::from(vec![0u8, 1, 2, 255]), Bytes::new()],
            offset: None,
        }
    }

    #[test]
    fn broadcasts_round_trip_with_and_without_an_offset() {
        let broadcast = sample();
        let decoded = decode(&Bytes::from(encode(&broadcast))).expect("valid");
        assert_eq!(decoded, broadcast);
        let logged = decode(&Bytes::from(encode_with_offset(
            &broadcast,
            "1700000000000-3",
        )));
        let mut expected = broadcast.clone();
        expected.offset = Some("1700000000000-3".into());
        assert_eq!(logged, Ok(expected));
        let empty = Broadcast {
            rooms: vec![],
            except: vec![],
            binaries: vec![],
            volatile: false,
            ..broadcast
        };
        assert_eq!(decode(&Bytes::from(encode(&empty))), Ok(empty));
    }

    #[test]
    fn bad_envelopes_are_errors_not_panics() {
        let good = encode_with_offset(&sample(), "1-2");
        // Every prefix, and every single-byte corruption, decodes or fails cleanly.
        for end in 0..good.len() {
            let _ = decode(&Bytes::copy_from_slice(&good[..end]));
        }
        for at in 0..good.len() {
            for value in [0u8, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let _ = decode(&Bytes::from(bad));
            }
        }
        assert_eq!(decode(&Bytes::new()), Err(WireError::Truncated));
        assert_eq!(
            decode(&Bytes::from_static(&[9, 0])),
            Err(WireError::Version(9))
        );
        let huge = [
            1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(decode(&Bytes::copy_from_slice(&huge)).is_err());
        let mut junk_offset = encode(&sample());
        junk_offset.extend_from_slice(b"not-an-offset");
        assert_eq!(decode(&Bytes::from(junk_offset)), Err(WireError::Offset));
    }
}
