//! Socket.IO: the application protocol carried in Engine.IO messages. One packet format serves revisions 4
//! (socket.io 2.x) and 5 (3.x/4.x); they differ only in how a namespace is joined, which the server handles.

mod binary;
mod packet;

pub use binary::{check_placeholders, placeholder};
pub use packet::{decode, encode, split, Event, Header, Packet, PacketType, RawPacket};
