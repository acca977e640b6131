//! Publishing through the server's HTTP API (`POST /send`), one request at a time per publisher so that the
//! order of one publisher's messages is defined: each carries a sequence number and a send timestamp.

use anyhow::{bail, Context};

use crate::stats::now_us;
use crate::target::Target;

pub struct Publisher {
    http: reqwest::Client,
    /// `POST /send` of each node; publishes name the node they go through.
    urls: Vec<String>,
    /// `x`s that bring each socket.io frame to the requested size.
    padding: String,
    event_prefix_len: usize,
}

impl Publisher {
    /// `size` is the length of the socket.io frame a subscriber receives, `42/<site>,["m",{...}]`. Publishes
    /// may go through any of `nodes` (one server, or the nodes of a cluster).
    pub fn new(nodes: &[Target], size: usize) -> anyhow::Result<Self> {
        let target = nodes.first().context("no server to publish through")?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            // A server that stops accepting (its HTTP connection limit reached) fails the publish, not the run.
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        let event_prefix_len = format!("42{},[\"m\",", target.namespace()).len();
        Ok(Publisher {
            http,
            urls: nodes.iter().map(Target::send_url).collect(),
            padding: String::new(),
            event_prefix_len,
        }
        .sized(size))
    }

    fn sized(mut self, size: usize) -> Self {
        // Stamps grow to ~10 digits over a run; size the frame for a typical one.
        let bare = self.event_prefix_len + payload(0, 1_000_000_000, "").len() + 1;
        self.padding = "x".repeat(size.saturating_sub(bare));
        self
    }

    /// Sends message `seq` to `room` through node `node` (of those given to `new`) and waits for its answer.
    pub async fn send(&self, node: usize, room: &str, seq: u64) -> anyhow::Result<()> {
        let body = format!(
            "{{\"rooms\":[\"{room}\"],\"event\":\"m\",\"args\":[{}]}}",
            payload(seq, now_us(), &self.padding)
        );
        let response = self
            .http
            .post(&self.urls[node % self.urls.len()])
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .context("POST /send")?;
        if !response.status().is_success() {
            bail!("POST /send answered {}", response.status());
        }
        // Drain the body so the connection goes back to the pool.
        response.bytes().await.context("reading the /send answer")?;
        Ok(())
    }
}

fn payload(seq: u64, stamp: u64, padding: &str) -> String {
    format!("{{\"s\":{seq},\"t\":{stamp},\"p\":\"{padding}\"}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_requested_size() {
        let target = Target::new(
            "127.0.0.1:1".parse().expect("addr"),
            "bench".into(),
            "k".into(),
            "s",
            1,
            crate::target::Transport::Websocket,
        )
        .expect("target");
        let publisher = Publisher::new(&[target], 100).expect("publisher");
        let frame = format!(
            "42/bench,[\"m\",{}]",
            payload(5, 1_234_567_890, &publisher.padding)
        );
        assert_eq!(frame.len(), 100);
    }
}
