//! What each packet from a client does to its session, the same for every transport.

use std::sync::Arc;

use herald_protocol::engineio::{OutFrame, Packet, Version};

use super::session::{CloseReason, Session};
use super::{Engine, EngineHandler, Message};

/// What the transport must note after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    Nothing,
    /// A heartbeat from the peer: a v4 pong or a v3 ping.
    Heartbeat,
}

impl<H: EngineHandler> Engine<H> {
    /// Applies one packet; an `Err` is the reason to close the session.
    pub(crate) fn on_packet(
        &self,
        session: &Arc<Session<H::Conn>>,
        packet: Packet<'_>,
    ) -> Result<Heard, CloseReason> {
        match packet {
            Packet::Message(text) => self.inner.handler.on_message(session, Message::Text(text)),
            Packet::Binary(data) => self
                .inner
                .handler
                .on_message(session, Message::Binary(data)),
            Packet::Ping(data) => {
                // v3 clients drive the heartbeat; v4 clients never ping, but answering is harmless.
                let mut pong = String::with_capacity(1 + data.len());
                Packet::Pong(data).encode_text(session.version(), &mut pong);
                session
                    .send(OutFrame::text(pong))
                    .map_err(|_| CloseReason::OutboxFull)?;
                return Ok(if session.version() == Version::V3 {
                    Heard::Heartbeat
                } else {
                    Heard::Nothing
                });
            }
            Packet::Pong(_) => return Ok(Heard::Heartbeat),
            Packet::Close => return Err(CloseReason::TransportClose),
            Packet::Noop => {}
            Packet::Open(_) | Packet::Upgrade => return Err(CloseReason::ParseError),
        }
        Ok(Heard::Nothing)
    }
}
