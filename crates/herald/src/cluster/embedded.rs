//! The bus of a single node: nothing to carry, but each site's recovery log, kept in memory and bounded by the
//! site's window and `recovery_max_packets`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::bus::{Broadcast, Bus, BusError, Offset};
use crate::mailbox::store::now_ms;

/// An offset as the numbers it orders by.
pub(crate) fn parse_offset(offset: &str) -> Option<(u64, u64)> {
    let (ms, seq) = offset.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[derive(Default)]
struct Log {
    packets: VecDeque<((u64, u64), Broadcast)>,
    last: (u64, u64),
    /// The first offset this process logged: an older one is from before it, and cannot be trusted.
    born: Option<(u64, u64)>,
    /// The newest offset dropped, for room or for age: a client behind it may have missed packets that are
    /// gone, so it cannot recover.
    lost_through: Option<(u64, u64)>,
}

/// The recovery logs of one node.
pub struct EmbeddedBus {
    max_packets: usize,
    logs: Mutex<HashMap<String, Log>>,
}

impl EmbeddedBus {
    pub fn new(max_packets: usize) -> Self {
        EmbeddedBus {
            max_packets,
            logs: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn send(
        &self,
        broadcast: &Broadcast,
        window: Option<Duration>,
    ) -> Result<Option<Offset>, BusError> {
        let Some(window) = window else {
            return Ok(None);
        };
        let now = now_ms();
        let mut logs = self.logs.lock();
        let log = logs.entry(broadcast.site.clone()).or_default();
        let id = if now > log.last.0 {
            (now, 0)
        } else {
            (log.last.0, log.last.1 + 1)
        };
        log.last = id;
        log.born.get_or_insert(id);
        let horizon = now.saturating_sub(window.as_millis() as u64);
        while log.packets.front().is_some_and(|(at, _)| at.0 < horizon) {
            if let Some((at, _)) = log.packets.pop_front() {
                log.lost_through = Some(at);
            }
        }
        while log.packets.len() >= self.max_packets {
            if let Some((at, _)) = log.packets.pop_front() {
                log.lost_through = Some(at);
            }
        }
        let offset: Offset = format!("{}-{}", id.0, id.1).into();
        let mut logged = broadcast.clone();
        logged.offset = Some(offset.clone());
        log.packets.push_back((id, logged));
        Ok(Some(offset))
    }

    async fn since(&self, site: &str, offset: &str) -> Result<Option<Vec<Broadcast>>, BusError> {
        let Some(after) = parse_offset(offset) else {
            return Ok(None);
        };
        let logs = self.logs.lock();
        let Some(log) = logs.get(site) else {
            // Nothing was logged since this process started: an offset from before it cannot be trusted.
            return Ok(None);
        };
        let before_birth = log.born.is_none_or(|born| after < born);
        if before_birth || after > log.last || log.lost_through.is_some_and(|lost| after < lost) {
            return Ok(None);
        }
        let missed = log
            .packets
            .iter()
            .filter(|(at, _)| *at > after)
            .map(|(_, b)| b.clone())
            .collect();
        Ok(Some(missed))
    }

    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Broadcast>>, BusError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(site: &str, text: &'static str) -> Broadcast {
        Broadcast {
            origin: "node".into(),
            site: site.into(),
            rooms: vec![],
            except: vec![],
            volatile: false,
            text: Bytes::from_static(text.as_bytes()),
            binaries: vec![],
            offset: None,
        }
    }

    async fn log(bus: &EmbeddedBus, text: &'static str) -> Offset {
        let window = Some(Duration::from_secs(60));
        let sent = bus.send(&packet("s", text), window).await;
        sent.expect("the embedded bus never fails")
            .expect("a packet sent with a window is logged")
    }

    async fn since(bus: &EmbeddedBus, site: &str, offset: &str) -> Option<Vec<Broadcast>> {
        let found = bus.since(site, offset).await;
        found.expect("the embedded bus never fails")
    }

    #[tokio::test]
    async fn logs_in_order_and_answers_what_came_after_an_offset() {
        let bus = EmbeddedBus::new(100);
        let first = log(&bus, "a").await;
        let second = log(&bus, "b").await;
        assert!(parse_offset(&second) > parse_offset(&first));
        let unlogged = bus.send(&packet("s", "c"), None).await;
        assert!(matches!(unlogged, Ok(None)));
        let missed = since(&bus, "s", &first).await.expect("recoverable");
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].text, "b");
        assert_eq!(missed[0].offset.as_deref(), Some(&*second));
        assert_eq!(since(&bus, "s", &second).await, Some(vec![]));
        assert_eq!(since(&bus, "other", &first).await, None);
        assert_eq!(since(&bus, "s", "junk").await, None);
        assert_eq!(
            since(&bus, "s", "1-0").await,
            None,
            "an offset from before this process"
        );
    }

    #[tokio::test]
    async fn a_client_behind_packets_gone_for_age_cannot_recover() {
        let bus = EmbeddedBus::new(100);
        let short = Some(Duration::from_millis(1));
        let first = bus
            .send(&packet("s", "a"), short)
            .await
            .ok()
            .flatten()
            .expect("logged");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = bus
            .send(&packet("s", "b"), short)
            .await
            .ok()
            .flatten()
            .expect("logged");
        tokio::time::sleep(Duration::from_millis(5)).await;
        bus.send(&packet("s", "c"), short)
            .await
            .ok()
            .flatten()
            .expect("logged");
        assert_eq!(since(&bus, "s", &first).await, None);
        let missed = since(&bus, "s", &second).await.expect("recoverable");
        assert_eq!(missed.len(), 1);
    }

    #[tokio::test]
    async fn a_client_behind_packets_dropped_for_room_cannot_recover() {
        let bus = EmbeddedBus::new(2);
        let first = log(&bus, "a").await;
        let second = log(&bus, "b").await;
        log(&bus, "c").await;
        log(&bus, "d").await;
        assert_eq!(since(&bus, "s", &first).await, None);
        let missed = since(&bus, "s", &second).await.expect("recoverable");
        assert_eq!(missed.len(), 2);
    }
}
