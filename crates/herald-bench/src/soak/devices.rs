//! Mailbox devices: user `d<k>` with one device `dev<k>`, connecting and disconnecting over and over. Each acks
//! every `_batch` page and every live entry at once, and records every sequence number it gets in the ledger.
//! Once the churn stops, each connects one last time and stays until released, so its mailbox drains.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

use super::conn::{Conn, Transport};
use super::ledger::Ledger;
use super::Ctx;

#[derive(Default)]
pub struct DeviceStats {
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Devices that connected at least once (their mailbox exists).
    pub registered: AtomicU64,
    pub online: AtomicU64,
    /// Connections that ended before the device meant to leave.
    pub dropped_by_server: AtomicU64,
    pub batches: AtomicU64,
    pub acks: AtomicU64,
    pub settings: AtomicU64,
    pub resyncs: AtomicU64,
    /// Entries of another user's mailbox.
    pub foreign: AtomicU64,
    pub malformed: AtomicU64,
}

pub struct Device {
    pub k: usize,
    pub ctx: Arc<Ctx>,
    pub ledger: Arc<Ledger>,
    pub stats: Arc<DeviceStats>,
    /// Turns true when the final drain is over.
    pub release: watch::Receiver<bool>,
}

impl Device {
    pub async fn run(mut self) {
        let token = match self
            .ctx
            .target
            .token(&format!("d{}", self.k), &[format!("user_d{}", self.k)])
        {
            Ok(token) => token,
            Err(_) => return,
        };
        let auth = json!({ "token": token, "deviceId": format!("dev{}", self.k) });
        let (online, offline) = (self.ctx.plan.device_online, self.ctx.plan.device_offline);
        let mut conn_no = 0u32;
        let mut registered = false;
        while !*self.release.borrow() {
            let transport = self.ctx.transport();
            let mut conn = match self.ctx.open(&auth, transport).await {
                Ok(conn) => conn,
                Err(e) => {
                    if self.stats.connect_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("[soak] device {}: {e:#}", self.k);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            conn_no += 1;
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            if !registered {
                registered = true;
                self.stats.registered.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.online.fetch_add(1, Ordering::Relaxed);
            let final_round = Instant::now() >= self.ctx.stop_at;
            let deadline = if final_round {
                None
            } else {
                let secs = rand::rng().random_range(online.0..online.1.max(online.0 + 0.001));
                Some((Instant::now() + Duration::from_secs_f64(secs)).min(self.ctx.stop_at))
            };
            let left = self.read(&mut conn, conn_no, deadline).await;
            self.stats.online.fetch_sub(1, Ordering::Relaxed);
            if !left {
                self.stats.dropped_by_server.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // A clean close four times in five (and always at the end); otherwise the connection just drops,
            // as a phone's does.
            let at_stop = !matches!(deadline, Some(d) if d < self.ctx.stop_at);
            if at_stop || rand::rng().random_bool(0.8) {
                conn.close().await;
            } else {
                drop(conn);
            }
            if final_round {
                return;
            }
            let secs = rand::rng().random_range(offline.0..offline.1.max(offline.0 + 0.001));
            let back = (Instant::now() + Duration::from_secs_f64(secs)).min(self.ctx.stop_at);
            tokio::time::sleep_until(back).await;
        }
    }

    /// Reads and acks until `deadline` (or, without one, until released): true when the device chose to
    /// leave, false when the connection ended under it.
    async fn read(&mut self, conn: &mut Conn, conn_no: u32, deadline: Option<Instant>) -> bool {
        let far = Instant::now() + Duration::from_secs(86_400);
        loop {
            let packet = tokio::select! {
                packet = timeout_at(deadline.unwrap_or(far), conn.recv()) => match packet {
                    Ok(Some(packet)) => packet,
                    Ok(None) => return false,
                    Err(_) => return true,
                },
                changed = self.release.changed(), if deadline.is_none() => {
                    if changed.is_err() || *self.release.borrow() {
                        return true;
                    }
                    continue;
                }
            };
            if let Some(id) = self.on_packet(&packet, conn_no) {
                let ack = format!("43{},{id}[]", self.ctx.target.namespace());
                if conn.send(ack).await.is_err() {
                    return false;
                }
                self.stats.acks.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records what `packet` carries; returns its ack id when it asks for one.
    fn on_packet(&self, packet: &str, conn_no: u32) -> Option<u64> {
        let rest = packet.strip_prefix(self.ctx.event_head.as_str())?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let id = rest[..digits].parse::<u64>().ok();
        let Ok(Value::Array(event)) = serde_json::from_str::<Value>(&rest[digits..]) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return id;
        };
        match event.first().and_then(Value::as_str) {
            Some("m") => self.entry(event.get(1), conn_no),
            Some("_batch") => {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                for entry in event.get(1).and_then(Value::as_array).into_iter().flatten() {
                    self.entry(entry.get(1), conn_no);
                }
            }
            Some("_settings") => {
                self.stats.settings.fetch_add(1, Ordering::Relaxed);
            }
            Some("_resync") => {
                self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        id
    }

    /// One mailbox entry `{"u": user, "s": seq, ...}`; public-room messages carry no `u`.
    fn entry(&self, payload: Option<&Value>, conn_no: u32) {
        let Some(payload) = payload else { return };
        let (Some(user), Some(seq)) = (payload["u"].as_u64(), payload["s"].as_u64()) else {
            return;
        };
        if user as usize != self.k {
            self.stats.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.ledger.receive(self.k, seq, conn_no);
    }
}

/// The transport of one connection: polling with probability `polling_share`.
pub fn pick(polling_share: f64) -> Transport {
    if rand::rng().random_bool(polling_share.clamp(0.0, 1.0)) {
        Transport::Polling
    } else {
        Transport::Websocket
    }
}
