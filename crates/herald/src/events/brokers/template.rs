//! The routing key, topic or subject of a broker route: text with `{user}`, `{event}`, `{socket}` and `{site}`
//! holes, each filled by exactly one word (AMQP), level (MQTT) or token (NATS). A value that would split it or
//! make it a wildcard is refused, never escaped: the client's ack names the placeholder and what it held, and
//! no two different values can reach the same topic.

use crate::config::BrokerKind;

/// A placeholder's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    User,
    Event,
    Socket,
    Site,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Placeholder> {
        match name {
            "user" => Some(Placeholder::User),
            "event" => Some(Placeholder::Event),
            "socket" => Some(Placeholder::Socket),
            "site" => Some(Placeholder::Site),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Placeholder::User => "user",
            Placeholder::Event => "event",
            Placeholder::Socket => "socket",
            Placeholder::Site => "site",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// What fills the placeholders of one event.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// None when the socket's site names no users (a public site).
    pub user: Option<&'a str>,
    pub event: &'a str,
    pub socket: &'a str,
    pub site: &'a str,
}

/// A parsed routing key, topic or subject of one broker kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    kind: BrokerKind,
    parts: Vec<Part>,
}

/// The longest routing key AMQP carries (a short string).
const AMQP_MAX_KEY: usize = 255;

impl Template {
    /// Reads `devices/{user}/{event}` for `kind`. The text around the placeholders must itself be a valid
    /// topic or subject to publish to: no wildcard, no empty NATS token, no whitespace in a NATS subject.
    pub fn parse(kind: BrokerKind, text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("'{text}': a '}}' closes no placeholder"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("'{text}': a '{{' is not closed"))?;
            let name = &rest[open + 1..close];
            let placeholder = Placeholder::parse(name).ok_or_else(|| {
                format!(
                    "'{text}': {{{name}}} is not one of {{user}}, {{event}}, {{socket}}, {{site}}"
                )
            })?;
            parts.push(Part::Value(placeholder));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let template = Template { kind, parts };
        template.check_text(text)?;
        Ok(template)
    }

    /// Whether `{user}` is one of the placeholders.
    pub fn uses_user(&self) -> bool {
        self.parts.contains(&Part::Value(Placeholder::User))
    }

    /// The literal text's own rules, per kind.
    fn check_text(&self, text: &str) -> Result<(), String> {
        let literal: String = self
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Text(text) => Some(text.as_str()),
                Part::Value(_) => None,
            })
            .collect();
        match self.kind {
            BrokerKind::Amqp => {
                if literal.len() > AMQP_MAX_KEY {
                    return Err(format!("'{text}' is longer than {AMQP_MAX_KEY} bytes"));
                }
            }
            BrokerKind::Mqtt => {
                if self.parts.is_empty() {
                    return Err("the topic must not be empty".into());
                }
                if literal.contains(['+', '#', '\0']) {
                    return Err(format!(
                        "'{text}': a topic to publish to holds no wildcard (+, #)"
                    ));
                }
            }
            BrokerKind::Nats => {
                if literal.contains(['*', '>']) || literal.chars().any(char::is_whitespace) {
                    return Err(format!(
                        "'{text}': a subject to publish to holds no wildcard (*, >) and no whitespace"
                    ));
                }
                // Every placeholder fills a non-empty token, so the tokens are those of the text with any value.
                let sample = self.fill_unchecked(&Values {
                    user: Some("x"),
                    event: "x",
                    socket: "x",
                    site: "x",
                });
                if sample.is_empty() || sample.split('.').any(str::is_empty) {
                    return Err(format!("'{text}': a subject has no empty token"));
                }
            }
        }
        Ok(())
    }

    fn fill_unchecked(&self, values: &Values<'_>) -> String {
        let mut filled = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => filled.push_str(text),
                Part::Value(placeholder) => {
                    filled.push_str(value_of(*placeholder, values).unwrap_or_default())
                }
            }
        }
        filled
    }

    /// The routing key, topic or subject of one event, or why it cannot be made: a value that is missing,
    /// empty, or holds a separator, a wildcard, whitespace or a control character.
    pub fn fill(&self, values: &Values<'_>) -> Result<String, String> {
        for part in &self.parts {
            let Part::Value(placeholder) = part else {
                continue;
            };
            let name = placeholder.name();
            let value = value_of(*placeholder, values)
                .ok_or_else(|| format!("{{{name}}} has no value: this socket has no user"))?;
            if value.is_empty() {
                return Err(format!("{{{name}}} is empty"));
            }
            let separators = self.kind.separators();
            if let Some(bad) = value
                .chars()
                .find(|c| separators.contains(c) || c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "{{{name}}} holds {}, which cannot be in one {} {}",
                    shown(bad),
                    self.kind.name(),
                    match self.kind {
                        BrokerKind::Amqp => "routing-key word",
                        BrokerKind::Mqtt => "topic level",
                        BrokerKind::Nats => "subject token",
                    }
                ));
            }
        }
        let filled = self.fill_unchecked(values);
        if self.kind == BrokerKind::Amqp && filled.len() > AMQP_MAX_KEY {
            return Err(format!(
                "the routing key would be {} bytes, over {AMQP_MAX_KEY}",
                filled.len()
            ));
        }
        Ok(filled)
    }
}

fn value_of<'a>(placeholder: Placeholder, values: &Values<'a>) -> Option<&'a str> {
    match placeholder {
        Placeholder::User => values.user,
        Placeholder::Event => Some(values.event),
        Placeholder::Socket => Some(values.socket),
        Placeholder::Site => Some(values.site),
    }
}

/// A refused character as the ack shows it: quoted, or named when it would not read.
fn shown(c: char) -> String {
    if c.is_whitespace() || c.is_control() {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("'{c}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: Values<'static> = Values {
        user: Some("alice"),
        event: "bid",
        socket: "AbC-12_x",
        site: "acme",
    };

    fn fill(kind: BrokerKind, template: &str, values: Values<'_>) -> Result<String, String> {
        Template::parse(kind, template)
            .expect("a valid template")
            .fill(&values)
    }

    #[test]
    fn every_placeholder_is_filled() {
        let cases = [
            (BrokerKind::Amqp, "acme.{event}", "acme.bid"),
            (BrokerKind::Amqp, "", ""),
            (
                BrokerKind::Mqtt,
                "devices/{user}/{event}",
                "devices/alice/bid",
            ),
            (
                BrokerKind::Nats,
                "herald.{site}.{event}.{socket}",
                "herald.acme.bid.AbC-12_x",
            ),
            (BrokerKind::Nats, "{user}-{event}", "alice-bid"),
            (BrokerKind::Mqtt, "fixed", "fixed"),
        ];
        for (kind, template, expected) in cases {
            assert_eq!(
                fill(kind, template, VALUES).as_deref(),
                Ok(expected),
                "{template}"
            );
        }
    }

    #[test]
    fn a_value_cannot_add_a_level_or_a_wildcard() {
        let cases: [(BrokerKind, &str, &str, &str); 9] = [
            (BrokerKind::Mqtt, "d/{user}", "a/b", "'/'"),
            (BrokerKind::Mqtt, "d/{user}", "+", "'+'"),
            (BrokerKind::Mqtt, "d/{user}", "#", "'#'"),
            (BrokerKind::Nats, "d.{user}", "a.b", "'.'"),
            (BrokerKind::Nats, "d.{user}", "*", "'*'"),
            (BrokerKind::Nats, "d.{user}", ">", "'>'"),
            (BrokerKind::Nats, "d.{user}", "a b", "U+0020"),
            (BrokerKind::Amqp, "d.{user}", "a.b", "'.'"),
            (BrokerKind::Mqtt, "d/{user}", "a\tb", "U+0009"),
        ];
        for (kind, template, user, shown) in cases {
            let values = Values {
                user: Some(user),
                ..VALUES
            };
            let error = fill(kind, template, values).expect_err(user);
            assert!(
                error.starts_with(&format!("{{user}} holds {shown}, which cannot be in one")),
                "{error}"
            );
        }
        // What only another kind treats as a separator is an ordinary character.
        let values = Values {
            user: Some("a.b*c"),
            ..VALUES
        };
        assert_eq!(
            fill(BrokerKind::Mqtt, "d/{user}", values).as_deref(),
            Ok("d/a.b*c")
        );
        let values = Values {
            event: "x/y+z",
            ..VALUES
        };
        assert_eq!(
            fill(BrokerKind::Nats, "d.{event}", values).as_deref(),
            Ok("d.x/y+z")
        );
    }

    #[test]
    fn a_missing_or_empty_value_is_refused() {
        let anonymous = Values {
            user: None,
            ..VALUES
        };
        assert_eq!(
            fill(BrokerKind::Mqtt, "d/{user}", anonymous),
            Err("{user} has no value: this socket has no user".into())
        );
        assert_eq!(
            fill(BrokerKind::Mqtt, "d/{event}", anonymous).as_deref(),
            Ok("d/bid")
        );
        let empty = Values {
            user: Some(""),
            ..VALUES
        };
        assert_eq!(
            fill(BrokerKind::Nats, "d.{user}", empty),
            Err("{user} is empty".into())
        );
        let long = "w".repeat(250);
        let values = Values {
            event: &long,
            ..VALUES
        };
        assert_eq!(
            fill(BrokerKind::Amqp, "acme.{event}", values).map(|key| key.len()),
            Ok(255),
            "a routing key of 255 bytes fits"
        );
        let longer = "w".repeat(260);
        let values = Values {
            event: &longer,
            ..VALUES
        };
        assert_eq!(
            fill(BrokerKind::Amqp, "acme.{event}", values),
            Err("the routing key would be 265 bytes, over 255".into())
        );
    }

    #[test]
    fn templates_that_cannot_be_published_to_are_refused() {
        let cases = [
            (
                BrokerKind::Mqtt,
                "d/{nope}",
                "'d/{nope}': {nope} is not one of {user}, {event}, {socket}, {site}",
            ),
            (
                BrokerKind::Mqtt,
                "d/{user",
                "'d/{user': a '{' is not closed",
            ),
            (
                BrokerKind::Nats,
                "d.user}",
                "'d.user}': a '}' closes no placeholder",
            ),
            (BrokerKind::Mqtt, "", "the topic must not be empty"),
            (
                BrokerKind::Mqtt,
                "d/+/{user}",
                "'d/+/{user}': a topic to publish to holds no wildcard (+, #)",
            ),
            (
                BrokerKind::Nats,
                "d.>",
                "'d.>': a subject to publish to holds no wildcard (*, >) and no whitespace",
            ),
            (
                BrokerKind::Nats,
                "d..{event}",
                "'d..{event}': a subject has no empty token",
            ),
            (
                BrokerKind::Nats,
                "{event}.",
                "'{event}.': a subject has no empty token",
            ),
            (BrokerKind::Nats, "", "'': a subject has no empty token"),
        ];
        for (kind, template, expected) in cases {
            assert_eq!(
                Template::parse(kind, template),
                Err(expected.to_string()),
                "{template}"
            );
        }
        let long = "k".repeat(256);
        assert!(Template::parse(BrokerKind::Amqp, &long).is_err());
        let parsed = |t: &str| Template::parse(BrokerKind::Mqtt, t).expect("valid");
        assert!(parsed("d/{user}/x").uses_user());
        assert!(!parsed("d/{event}").uses_user());
    }
}
