//! Engine.IO: the transport protocol under socket.io. Packets, the handshake, and the polling payload framing of
//! protocol revisions 3 (socket.io 1.x/2.x clients) and 4 (socket.io 3.x/4.x clients).

mod handshake;
mod packet;
mod payload;

pub use handshake::Handshake;
pub use packet::{Packet, PacketType};
pub use payload::{
    decode_binary_payload_v3, decode_payload, encode_payload, OutFrame, PayloadDecoder,
};

/// The Engine.IO protocol revision a client speaks, from the `EIO` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// socket.io 1.x and 2.x clients: the client pings, payloads are length-prefixed.
    V3,
    /// socket.io 3.x and 4.x clients: the server pings, payloads are separated by U+001E.
    V4,
}

impl Version {
    /// Parses the `EIO` query value; only revisions 3 and 4 are spoken.
    pub fn from_query(eio: &str) -> Option<Self> {
        match eio {
            "3" => Some(Version::V3),
            "4" => Some(Version::V4),
            _ => None,
        }
    }
}
