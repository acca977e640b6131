//! The one error type of every decoder in this crate.

/// Why some bytes are not a valid packet. Each variant is a reason a peer could be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("invalid base64 in binary packet")]
    InvalidBase64,
    #[error("binary frame is not an Engine.IO v3 message")]
    InvalidBinaryFrame,
    #[error("invalid length prefix in polling payload")]
    InvalidLength,
    #[error("polling payload is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid attachment count")]
    InvalidAttachments,
    #[error("too many binary attachments: {count}, limit is {limit}")]
    TooManyAttachments { count: usize, limit: usize },
    #[error("invalid ack id")]
    InvalidAckId,
    #[error("invalid namespace")]
    InvalidNamespace,
    #[error("invalid JSON data: {0}")]
    InvalidJson(String),
    #[error("invalid payload for {packet}: {expected}")]
    InvalidPayload {
        packet: &'static str,
        expected: &'static str,
    },
    #[error("binary placeholder {0} has no matching attachment")]
    InvalidPlaceholder(u64),
}
