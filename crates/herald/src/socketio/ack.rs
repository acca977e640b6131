//! Acknowledgements both ways: the sender a handler uses to answer a client, and the table of answers the
//! server waits for.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use super::socket::Socket;

/// A client's answer to a server emit-with-ack.
#[derive(Debug, Clone, PartialEq)]
pub struct AckReply {
    pub args: Vec<Value>,
    pub binaries: Vec<Bytes>,
}

/// Why an emit-with-ack got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("the client did not acknowledge in time")]
    Timeout,
    #[error("the socket disconnected before acknowledging")]
    Disconnected,
    #[error("the socket's outbox is full")]
    NotSent,
}

/// Answers one client event's acknowledgement; sending consumes it, so a client gets at most one answer.
#[derive(Debug)]
pub struct AckSender {
    socket: Weak<Socket>,
    id: u64,
}

impl AckSender {
    pub(crate) fn new(socket: &Arc<Socket>, id: u64) -> Self {
        AckSender {
            socket: Arc::downgrade(socket),
            id,
        }
    }

    /// Sends the acknowledgement with `args` (and binary attachments referenced by placeholders in them).
    pub fn send(self, args: &[Value], binaries: &[Bytes]) -> bool {
        match self.socket.upgrade() {
            Some(socket) => socket.send_ack(self.id, args, binaries),
            None => false,
        }
    }
}

/// The acknowledgements a socket waits for, by ack id. Empty maps allocate nothing, so idle sockets pay nothing.
#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    next_id: u64,
    waiting: HashMap<u64, oneshot::Sender<AckReply>>,
}

impl PendingAcks {
    pub(crate) fn register(&mut self) -> (u64, oneshot::Receiver<AckReply>) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(id, tx);
        (id, rx)
    }

    pub(crate) fn resolve(&mut self, id: u64, reply: AckReply) {
        if let Some(tx) = self.waiting.remove(&id) {
            let _ = tx.send(reply);
        }
    }

    /// Resolves every answer awaited up to `id`, as a plain client's cumulative ack does; each gets no
    /// arguments.
    pub(crate) fn resolve_through(&mut self, id: u64) {
        let due: Vec<u64> = self.waiting.keys().copied().filter(|&k| k <= id).collect();
        for key in due {
            self.resolve(
                key,
                AckReply {
                    args: Vec::new(),
                    binaries: Vec::new(),
                },
            );
        }
        if self.waiting.is_empty() {
            self.waiting = HashMap::new();
        }
    }

    pub(crate) fn forget(&mut self, id: u64) {
        self.waiting.remove(&id);
        if self.waiting.is_empty() {
            self.waiting = HashMap::new();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.waiting = HashMap::new();
    }
}
