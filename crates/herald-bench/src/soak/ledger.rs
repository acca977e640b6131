//! The mailbox ledger: per user, every sequence number published to the user's room with how the API answered,
//! and every receipt with the connection it came on. The verdict tells lost entries (answered 200 with a queued
//! entry, never received), duplicates within one connection and order faults (herald's bugs), and the replays
//! of entries a device got but had not had acked when its connection ended (at-least-once, legitimate).

use std::sync::Mutex;

use serde::Serialize;

/// How the publish API answered one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not answered yet.
    InFlight,
    /// 200 with `queued` ≥ 1: the entry is durable in the device's mailbox and must arrive.
    Queued,
    /// 200 with `queued` 0: the user had no device mailbox.
    NotQueued,
    /// An error or a non-200 answer: the entry may or may not exist.
    Failed,
}

#[derive(Default)]
struct UserLog {
    answers: Vec<Answer>,
    receipts: Vec<u32>,
    /// The connection each sequence number was last received on.
    conn_of: Vec<u32>,
    /// The connection and sequence number of the last receipt.
    last: Option<(u32, u64)>,
    duplicates: u64,
    out_of_order: u64,
    redelivered: u64,
    phantom: u64,
}

pub struct Ledger {
    users: Vec<Mutex<UserLog>>,
}

/// What the ledger says at the end.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verdict {
    pub published: u64,
    pub queued: u64,
    pub not_queued: u64,
    pub failed: u64,
    pub received_distinct: u64,
    pub receipts: u64,
    /// Answered `Queued`, never received.
    pub lost: u64,
    /// Received twice on one connection.
    pub duplicates: u64,
    /// Received on one connection after a later sequence number.
    pub out_of_order: u64,
    /// Received again on a later connection: replays of entries not acked when a connection ended.
    pub redelivered: u64,
    /// Received, but never published.
    pub phantom: u64,
    /// Received although the publish failed or was unanswered.
    pub received_unconfirmed: u64,
    /// Up to ten lost entries as (user, seq).
    pub lost_examples: Vec<(usize, u64)>,
}

impl Ledger {
    pub fn new(users: usize) -> Self {
        Ledger {
            users: (0..users).map(|_| Mutex::new(UserLog::default())).collect(),
        }
    }

    fn user(&self, user: usize) -> std::sync::MutexGuard<'_, UserLog> {
        match self.users[user].lock() {
            Ok(log) => log,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The next sequence number of `user`, marked in flight.
    pub fn next_seq(&self, user: usize) -> u64 {
        let mut log = self.user(user);
        log.answers.push(Answer::InFlight);
        log.receipts.push(0);
        log.conn_of.push(0);
        (log.answers.len() - 1) as u64
    }

    pub fn answered(&self, user: usize, seq: u64, answer: Answer) {
        if let Some(slot) = self.user(user).answers.get_mut(seq as usize) {
            *slot = answer;
        }
    }

    /// `user`'s device received `seq` on its connection number `conn` (counted from 1).
    pub fn receive(&self, user: usize, seq: u64, conn: u32) {
        let mut log = self.user(user);
        let i = seq as usize;
        if i >= log.answers.len() {
            log.phantom += 1;
            return;
        }
        match log.last {
            Some((c, last)) if c == conn && seq <= last => {
                if log.conn_of[i] == conn && log.receipts[i] > 0 {
                    log.duplicates += 1;
                } else {
                    log.out_of_order += 1;
                }
            }
            _ if log.receipts[i] > 0 => log.redelivered += 1,
            _ => {}
        }
        log.receipts[i] += 1;
        log.conn_of[i] = conn;
        log.last = Some((conn, seq));
    }

    pub fn verdict(&self) -> Verdict {
        let mut v = Verdict::default();
        for (user, log) in self.users.iter().enumerate() {
            let log = match log.lock() {
                Ok(log) => log,
                Err(poisoned) => poisoned.into_inner(),
            };
            v.duplicates += log.duplicates;
            v.out_of_order += log.out_of_order;
            v.redelivered += log.redelivered;
            v.phantom += log.phantom;
            for (seq, (&answer, &receipts)) in log.answers.iter().zip(&log.receipts).enumerate() {
                v.published += 1;
                v.receipts += u64::from(receipts);
                v.received_distinct += u64::from(receipts > 0);
                match answer {
                    Answer::Queued => v.queued += 1,
                    Answer::NotQueued => v.not_queued += 1,
                    Answer::Failed | Answer::InFlight => v.failed += 1,
                }
                if answer == Answer::Queued && receipts == 0 {
                    v.lost += 1;
                    if v.lost_examples.len() < 10 {
                        v.lost_examples.push((user, seq as u64));
                    }
                }
                if matches!(answer, Answer::Failed | Answer::InFlight) && receipts > 0 {
                    v.received_unconfirmed += 1;
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_loss_duplicates_order_and_replays() {
        let ledger = Ledger::new(2);
        for _ in 0..5 {
            let seq = ledger.next_seq(0);
            ledger.answered(0, seq, Answer::Queued);
        }
        let failed = ledger.next_seq(1);
        ledger.answered(1, failed, Answer::Failed);
        // Connection 1 gets 0, 1, 2 (and 1 twice); connection 2 replays 2, then 3 and 1 out of order.
        for seq in [0, 1, 1, 2] {
            ledger.receive(0, seq, 1);
        }
        for seq in [2, 3, 1] {
            ledger.receive(0, seq, 2);
        }
        ledger.receive(0, 99, 2);
        ledger.receive(1, failed, 1);
        let v = ledger.verdict();
        assert_eq!(v.published, 6);
        assert_eq!(v.queued, 5);
        assert_eq!(v.failed, 1);
        assert_eq!(v.lost, 1);
        assert_eq!(v.lost_examples, vec![(0, 4)]);
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.redelivered, 1);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.phantom, 1);
        assert_eq!(v.received_unconfirmed, 1);
        assert_eq!(v.received_distinct, 5);
    }
}
