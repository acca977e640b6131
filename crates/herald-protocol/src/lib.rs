//! Pure codecs for the socket.io wire protocols: Engine.IO (v3, v4) packets and polling payloads, and Socket.IO
//! (v4, v5) packets with binary attachments.
//!
//! This crate does no IO and knows no async runtime. Every decoder is total: any input yields a packet or a
//! [`DecodeError`] that names the reason, never a panic (each decoder has a `cargo fuzz` target in `fuzz/`).

pub mod engineio;
mod error;
pub mod socketio;

pub use error::DecodeError;
