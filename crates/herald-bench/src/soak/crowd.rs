//! The churning population: `clients` slots, each a client that lives a random time, then leaves (a close, or
//! a dropped connection) and is replaced at once. Every `1/slow_share`th slot is a slow reader: it reads for a
//! few seconds, then stops reading for longer than the server's deadlines and checks that the server dropped it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::time::{timeout_at, Instant};

use super::conn::Conn;
use super::Ctx;
use crate::stats::{Deliveries, Order};

#[derive(Default)]
pub struct CrowdStats {
    pub connects_ws: AtomicU64,
    pub connects_polling: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Clients connected now (normal and slow).
    pub online: AtomicU64,
    /// Normal clients that left on their own, cleanly or by dropping the connection.
    pub left: AtomicU64,
    /// Normal clients whose connection ended before they meant to leave.
    pub dropped_by_server: AtomicU64,
    pub slow_stalls: AtomicU64,
    /// Slow readers the server had disconnected by the time they read again.
    pub slow_dropped: AtomicU64,
    /// Slow readers still connected after their stall: the server kept a client that took nothing.
    pub slow_survived: AtomicU64,
    pub firehose_received: AtomicU64,
    /// Public-room messages slow readers got (not in the latency figures).
    pub slow_public: AtomicU64,
    /// Public-room deliveries: count, duplicates, order and latency.
    pub public: Deliveries,
    /// Socket ids of the slow readers connected now: the firehose's recipients.
    pub slow_sids: Mutex<HashSet<String>>,
}

impl CrowdStats {
    pub fn slow_sids(&self) -> Vec<String> {
        match self.slow_sids.lock() {
            Ok(sids) => sids.iter().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    fn slow_sid(&self, sid: &str, present: bool) {
        if let Ok(mut sids) = self.slow_sids.lock() {
            if present {
                sids.insert(sid.to_string());
            } else {
                sids.remove(sid);
            }
        }
    }
}

/// Slot `i` of the population, from its place in the ramp until the churn stops.
pub async fn slot(i: usize, ctx: Arc<Ctx>, stats: Arc<CrowdStats>) {
    let plan = &ctx.plan;
    let every = (1.0 / plan.slow_share.max(1e-9)).round().max(1.0) as usize;
    let slow = plan.slow_share > 0.0 && i.is_multiple_of(every);
    // Spread evenly: slot i is anonymous when the running count of anonymous slots steps up at i.
    let share = plan.anonymous_share;
    let anonymous = !slow && ((i + 1) as f64 * share).floor() > (i as f64 * share).floor();
    let ramp = plan.ramp.mul_f64(i as f64 / plan.clients.max(1) as f64);
    tokio::time::sleep(ramp.min(ctx.stop_at.saturating_duration_since(Instant::now()))).await;
    let mut first_error = true;
    while Instant::now() < ctx.stop_at {
        let auth = if anonymous {
            json!({})
        } else {
            match ctx.target.token(&format!("c{i}"), &[format!("user_c{i}")]) {
                Ok(token) => json!({ "token": token }),
                Err(_) => return,
            }
        };
        let transport = ctx.transport();
        let conn = ctx.open(&auth, transport).await;
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                if stats.connect_errors.fetch_add(1, Ordering::Relaxed) < 5 && first_error {
                    eprintln!("[soak] client {i}: {e:#}");
                    first_error = false;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match transport {
            super::conn::Transport::Websocket => &stats.connects_ws,
            super::conn::Transport::Polling => &stats.connects_polling,
        }
        .fetch_add(1, Ordering::Relaxed);
        stats.online.fetch_add(1, Ordering::Relaxed);
        if slow {
            slow_life(conn, &ctx, &stats).await;
        } else {
            normal_life(conn, &ctx, &stats).await;
        }
        stats.online.fetch_sub(1, Ordering::Relaxed);
    }
}

fn uniform(range: (f64, f64)) -> Duration {
    let (lo, hi) = range;
    Duration::from_secs_f64(if hi > lo {
        rand::rng().random_range(lo..hi)
    } else {
        lo
    })
}

/// Reads until the client's time is up (or the churn stops), then leaves: a clean close four times in five.
async fn normal_life(mut conn: Conn, ctx: &Ctx, stats: &CrowdStats) {
    let deadline = (Instant::now() + uniform(ctx.plan.life)).min(ctx.stop_at);
    let mut order = Order::default();
    loop {
        match timeout_at(deadline, conn.recv()).await {
            Ok(Some(packet)) => on_packet(&packet, ctx, stats, Some(&mut order)),
            Ok(None) => {
                stats.dropped_by_server.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => break,
        }
    }
    stats.left.fetch_add(1, Ordering::Relaxed);
    // When the churn stops everyone leaves cleanly, so the teardown leaves no session to its ping timeout.
    if deadline >= ctx.stop_at || rand::rng().random_bool(0.8) {
        conn.close().await;
    }
}

/// Reads a few seconds, stops reading for a stall longer than the server's deadlines, then reads again and
/// expects to find the connection closed.
async fn slow_life(mut conn: Conn, ctx: &Ctx, stats: &CrowdStats) {
    stats.slow_sid(&conn.sid, true);
    let reading = (Instant::now() + uniform((2.0, 10.0))).min(ctx.stop_at);
    while let Ok(packet) = timeout_at(reading, conn.recv()).await {
        match packet {
            Some(packet) => on_packet(&packet, ctx, stats, None),
            None => {
                stats.slow_sid(&conn.sid, false);
                stats.dropped_by_server.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    stats.slow_stalls.fetch_add(1, Ordering::Relaxed);
    let stall_end = Instant::now() + uniform(ctx.plan.stall);
    tokio::time::sleep_until(stall_end.min(ctx.stop_at)).await;
    stats.slow_sid(&conn.sid, false);
    if stall_end > ctx.stop_at {
        // The churn stopped first: the stall was cut short, nothing to check.
        conn.close().await;
        return;
    }
    // The backlog the kernel still holds comes first, then the end of the connection.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match timeout_at(end, conn.recv()).await {
            Ok(Some(packet)) => on_packet(&packet, ctx, stats, None),
            Ok(None) => {
                stats.slow_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                stats.slow_survived.fetch_add(1, Ordering::Relaxed);
                conn.close().await;
                return;
            }
        }
    }
}

/// Counts one packet; public-room messages go into the latency and order figures unless `order` is `None` (a
/// slow reader, whose backlog arrives late on purpose).
fn on_packet(packet: &str, ctx: &Ctx, stats: &CrowdStats, order: Option<&mut Order>) {
    let Some(rest) = packet.strip_prefix(ctx.event_prefix.as_str()) else {
        return;
    };
    if let Some(payload) = rest.strip_prefix("\"m\",") {
        match order {
            Some(order) => stats.public.record(payload, order),
            None => {
                stats.slow_public.fetch_add(1, Ordering::Relaxed);
            }
        }
    } else if rest.starts_with("\"f\",") {
        stats.firehose_received.fetch_add(1, Ordering::Relaxed);
    }
}
