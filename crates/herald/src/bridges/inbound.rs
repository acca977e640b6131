//! What every inbound bridge shares: a broker message becomes a `PublishRequest` (the v1 publish JSON, or the
//! raw body as the one argument of a configured room and event, `{N}` filled from the topic or subject), goes
//! through the one publish pipeline, and the answer tells the bridge whether to ack, reject or retry it.

use std::sync::Arc;

use serde_json::Value;

use super::status::BridgeStatus;
use crate::config::BridgeConfig;
use crate::publish::{PublishError, PublishRequest, Publisher};
use crate::retained::RetainedError;

/// A room or event name with `{N}` holes, filled from a message's topic levels or subject tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Token(usize),
}

impl Template {
    /// Reads `pomodoro_{1}`; a `{` must open a hole of digits closed by `}`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("'{text}': a '{{' is not closed"))?;
            let index = rest[open + 1..close]
                .parse()
                .map_err(|_| format!("'{text}': {{...}} must hold a level number, like {{1}}"))?;
            parts.push(Part::Token(index));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("a room or event must not be empty".into());
        }
        Ok(Template(parts))
    }

    /// The name for a message whose topic levels (or subject tokens) are `tokens`.
    pub fn fill(&self, tokens: &[&str]) -> Result<String, String> {
        let mut name = String::new();
        for part in &self.0 {
            match part {
                Part::Text(text) => name.push_str(text),
                Part::Token(i) => name.push_str(
                    tokens
                        .get(*i)
                        .ok_or_else(|| format!("the topic has no level {i}"))?,
                ),
            }
        }
        Ok(name)
    }
}

/// What the bridge does with a message after herald tried to publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Published (mailbox appends durable): ack it.
    Published,
    /// It can never be published: reject it without requeue (dead-letter), and go on.
    Rejected(String),
    /// herald could not publish it now (its store or bus failed): leave it with the broker, to come again.
    Retry(String),
}

/// How one bridge turns messages into publishes.
#[derive(Debug, Clone)]
pub struct Inbound {
    site: String,
    raw: Option<(Template, Template)>,
    retain: bool,
    if_changed: bool,
    publisher: Publisher,
    max_bytes: usize,
    pub status: Arc<BridgeStatus>,
}

impl Inbound {
    /// The bridge `config` (validated) over `publisher`; bodies over `max_bytes` are rejected.
    pub fn new(
        config: &BridgeConfig,
        publisher: Publisher,
        max_bytes: usize,
        status: Arc<BridgeStatus>,
    ) -> Result<Inbound, String> {
        let raw = match (&config.room, &config.event) {
            (Some(room), Some(event)) => Some((Template::parse(room)?, Template::parse(event)?)),
            _ => None,
        };
        Ok(Inbound {
            site: config.site.clone(),
            raw,
            retain: config.retain,
            if_changed: config.if_changed,
            publisher,
            max_bytes,
            status,
        })
    }

    /// The largest body published; a larger one is rejected.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The publish a message asks for; `tokens` are its topic levels or subject tokens.
    pub fn request(&self, body: &[u8], tokens: &[&str]) -> Result<PublishRequest, String> {
        if body.len() > self.max_bytes {
            return Err(format!(
                "the message is {} bytes, over the limit of {}",
                body.len(),
                self.max_bytes
            ));
        }
        let request = match &self.raw {
            Some((room, event)) => {
                let arg = serde_json::from_slice(body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
                PublishRequest {
                    rooms: vec![room.fill(tokens)?],
                    event: event.fill(tokens)?,
                    args: vec![arg],
                    retain: self.retain,
                    if_changed: self.if_changed,
                    ..PublishRequest::default()
                }
            }
            None => serde_json::from_slice(body).map_err(|e| {
                format!(
                    "the body is not a publish (JSON with rooms, sockets or all, event, args): {e}"
                )
            })?,
        };
        request.validate().map_err(|e| e.to_string())?;
        Ok(request)
    }

    /// Publishes one message and says what to tell the broker; counts it in the bridge's status.
    pub async fn handle(&self, body: &[u8], tokens: &[&str]) -> Handled {
        let handled = match self.request(body, tokens) {
            Err(reason) => Handled::Rejected(reason),
            Ok(request) => self.publish(&request).await,
        };
        self.status.count(&handled);
        if let Handled::Rejected(reason) | Handled::Retry(reason) = &handled {
            tracing::warn!(bridge = %self.status.label, reason, "a bridge message was not published");
        }
        handled
    }

    async fn publish(&self, request: &PublishRequest) -> Handled {
        let Some(site) = self.publisher.sites.get(&self.site) else {
            return Handled::Rejected(format!("no site '{}'", self.site));
        };
        match self.publisher.publish(&site, request, false).await {
            Ok(_) => Handled::Published,
            Err(PublishError::BadRequest(reason)) => Handled::Rejected(reason),
            Err(e @ PublishError::Retained(RetainedError::Full { .. })) => {
                Handled::Rejected(e.to_string())
            }
            Err(e) => Handled::Retry(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_topic_levels() {
        let room = Template::parse("pomodoro_{1}").expect("valid");
        assert_eq!(
            room.fill(&["pomodoro", "desk", "state"]).expect("filled"),
            "pomodoro_desk"
        );
        assert_eq!(
            Template::parse("{0}{2}")
                .expect("valid")
                .fill(&["a", "b", "c"])
                .expect("filled"),
            "ac"
        );
        assert!(room.fill(&["pomodoro"]).is_err());
        for bad in ["a{", "a{x}", "", "{}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
