//! The `events` scenario's baseline: the generator calls the backend itself, with the body a socket.io server
//! would send for the same emit (`{"site", "event", "args", "socket"}` and the client's token), one call at a
//! time per caller. A routed ack's latency minus this one is what the server adds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::stats::now_us;
use crate::tally::{Schedule, Tally};

/// What every direct caller shares.
pub struct Direct {
    pub http: reqwest::Client,
    pub url: String,
    pub site: String,
    pub event: String,
}

impl Direct {
    pub fn new(url: String, site: String, event: String, callers: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // One kept-alive connection per caller, as a server's pool would hold under the same load.
            .pool_max_idle_per_host(callers)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the direct HTTP client")?;
        Ok(Direct {
            http,
            url,
            site,
            event,
        })
    }
}

/// Caller `i` (user `u<i>`, authenticated with `token`) calls on `schedule` until its end.
pub async fn run(direct: Arc<Direct>, i: usize, token: String, schedule: Schedule) -> Tally {
    let mut tally = Tally::default();
    let (mut seq, mut due) = (0u64, schedule.first);
    loop {
        tokio::time::sleep_until(due.min(schedule.end).into()).await;
        if Instant::now() >= schedule.end {
            break;
        }
        tally.sent += 1;
        match call(&direct, i, &token, seq).await {
            Ok(first) => tally.answer(Some(seq), first.as_ref(), schedule.measure_from_us),
            Err(e) => tally.error(format!("{e:#}")),
        }
        seq += 1;
        due = schedule
            .interval
            .map_or_else(Instant::now, |interval| due + interval);
    }
    tally
}

/// One call; the first argument of the reply.
async fn call(direct: &Direct, i: usize, token: &str, seq: u64) -> anyhow::Result<Option<Value>> {
    let id = format!("direct-{i}");
    let body = json!({
        "site": direct.site,
        "event": direct.event,
        "args": [{ "s": seq, "t": now_us() }],
        "socket": { "id": id, "user": format!("u{i}"), "deviceId": null, "rooms": [id] },
    });
    let response = direct
        .http
        .post(&direct.url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .context("calling the backend")?;
    if !response.status().is_success() {
        bail!("the backend answered {}", response.status());
    }
    let answer: Value = serde_json::from_slice(&response.bytes().await?)
        .context("the backend's answer is not JSON")?;
    Ok(answer["reply"].get(0).cloned())
}
