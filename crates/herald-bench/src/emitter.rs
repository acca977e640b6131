//! A socket.io client that emits one event with an ack on a `Schedule`: `42/<site>,<id>["<event>",{"s":id,
//! "t":µs}]`, answered `43/<site>,<id>[...]`. It sends while fewer than the window wait for their ack, so a
//! window of 1 unpaced is a closed loop and a paced caller keeps its rate while its acks are quicker than its
//! interval.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::client::{self, Ws};
use crate::stats::now_us;
use crate::tally::{Schedule, Tally};
use crate::target::Target;

pub struct Emitter {
    ws: Ws,
    /// `42/<site>,`: an event, before its ack id.
    emit_prefix: String,
    /// `43/<site>,`: an ack, before its id.
    ack_prefix: String,
    event: String,
}

/// What a frame from the server was.
enum Frame {
    Ack,
    Other,
    Closed,
}

impl Emitter {
    /// Connects as connection `i` with `token`; returns once the namespace CONNECT is acknowledged.
    pub async fn connect(
        target: &Target,
        i: usize,
        token: &str,
        event: &str,
    ) -> anyhow::Result<Self> {
        let ws = client::join(target, i, token).await?;
        let namespace = target.namespace();
        Ok(Emitter {
            ws,
            emit_prefix: format!("42{namespace},"),
            ack_prefix: format!("43{namespace},"),
            event: event.to_string(),
        })
    }

    /// Emits on `schedule` until its end, then waits for the last acks (at most its drain).
    pub async fn run(mut self, schedule: Schedule) -> Tally {
        let mut tally = Tally::default();
        let (mut in_flight, mut seq, mut due) = (0usize, 0u64, schedule.first);
        let stop = schedule.end + schedule.drain;
        loop {
            let now = Instant::now();
            let open = now < schedule.end && in_flight < schedule.window;
            if open && due <= now {
                if self.emit(seq).await.is_err() {
                    tally.disconnected += 1;
                    break;
                }
                seq += 1;
                in_flight += 1;
                tally.sent += 1;
                due = schedule.interval.map_or(now, |interval| due + interval);
                continue;
            }
            if (now >= schedule.end && in_flight == 0) || now >= stop {
                break;
            }
            // Wake for the next send, else at the end (sending stops), else when the drain is over.
            let wake = match (open, now < schedule.end) {
                (true, _) => due.min(schedule.end),
                (false, true) => schedule.end,
                (false, false) => stop,
            };
            tokio::select! {
                biased;
                frame = self.ws.next() => match self.on_frame(frame, &mut tally, schedule.measure_from_us).await {
                    Frame::Ack => in_flight = in_flight.saturating_sub(1),
                    Frame::Other => {}
                    Frame::Closed => {
                        tally.disconnected += 1;
                        break;
                    }
                },
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        tally.unanswered = in_flight as u64;
        tally
    }

    async fn emit(&mut self, seq: u64) -> Result<(), tungstenite::Error> {
        let frame = format!(
            "{}{seq}[\"{}\",{{\"s\":{seq},\"t\":{}}}]",
            self.emit_prefix,
            self.event,
            now_us()
        );
        self.ws.send(Message::text(frame)).await
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
        tally: &mut Tally,
        measure_from_us: u64,
    ) -> Frame {
        match frame {
            Some(Ok(Message::Text(text))) => {
                if let Some(ack) = text.as_str().strip_prefix(self.ack_prefix.as_str()) {
                    tally.ack(ack, measure_from_us);
                    return Frame::Ack;
                }
                // Engine.IO v4: the server pings, the client answers.
                if text.as_str() == "2" && self.ws.send(Message::text("3")).await.is_err() {
                    return Frame::Closed;
                }
                Frame::Other
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Frame::Closed,
            Some(Ok(_)) => Frame::Other,
        }
    }
}
