//! A webhook route's answer: `{"reply": [...], "publish": [...], "join": [...], "leave": [...]}`, every part
//! optional. Pure and defensive: any bytes give a `RouteAnswer` or an error that says what is wrong.

use serde::Deserialize;
use serde_json::Value;

use crate::mailbox::store::valid_name;
use crate::publish::PublishRequest;

/// What the backend asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteAnswer {
    /// The ack's arguments; none answers the ack with no argument.
    pub reply: Vec<Value>,
    /// Published as the HTTP API would, in order.
    pub publish: Vec<AnswerPublish>,
    /// Rooms the calling socket joins, then leaves.
    pub join: Vec<String>,
    pub leave: Vec<String>,
}

/// One publish of an answer: the v1 publish body, and `except_sender`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerPublish {
    pub request: PublishRequest,
    /// Leave the calling socket out.
    pub except_sender: bool,
}

/// The answer's shape on the wire.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default)]
    reply: Option<Vec<Value>>,
    #[serde(default)]
    publish: Vec<WirePublish>,
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    leave: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePublish {
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    sockets: Vec<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    except: Vec<String>,
    event: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    volatile: bool,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    if_changed: bool,
    #[serde(default)]
    except_sender: bool,
}

/// Reads an answer body; an empty body (a 204) asks for nothing.
pub fn parse(body: &[u8]) -> Result<RouteAnswer, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RouteAnswer::default());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    // serde reads a struct from an array too (`[]` would ask for nothing): only an object is an answer.
    if !value.is_object() {
        return Err("the answer must be a JSON object".into());
    }
    let wire = Wire::deserialize(value).map_err(|e| e.to_string())?;
    if let Some(bad) = wire.join.iter().find(|r| !valid_name(r)) {
        return Err(format!(
            "cannot join '{}': a room name is at most 256 bytes, without control characters",
            bad.escape_debug()
        ));
    }
    let mut publish = Vec::with_capacity(wire.publish.len());
    for (i, p) in wire.publish.into_iter().enumerate() {
        let request = PublishRequest {
            rooms: p.rooms,
            sockets: p.sockets,
            all: p.all,
            except: p.except,
            event: p.event,
            args: p.args,
            volatile: p.volatile,
            retain: p.retain,
            if_changed: p.if_changed,
            ..PublishRequest::default()
        };
        request
            .validate()
            .map_err(|e| format!("publish[{i}]: {e}"))?;
        publish.push(AnswerPublish {
            request,
            except_sender: p.except_sender,
        });
    }
    Ok(RouteAnswer {
        reply: wire.reply.unwrap_or_default(),
        publish,
        join: wire.join,
        leave: wire.leave,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_part() {
        let body = json!({
            "reply": [{"ok": true}, 2],
            "publish": [{"rooms": ["lot_1"], "event": "bid", "args": [10], "except_sender": true, "retain": true}],
            "join": ["lot_1"],
            "leave": ["lobby"],
        });
        let answer = parse(body.to_string().as_bytes()).expect("valid");
        assert_eq!(answer.reply, vec![json!({"ok": true}), json!(2)]);
        assert_eq!(answer.join, ["lot_1"]);
        assert_eq!(answer.leave, ["lobby"]);
        let publish = &answer.publish[0];
        assert!(publish.except_sender && publish.request.retain);
        assert_eq!(publish.request.rooms, ["lot_1"]);
    }

    #[test]
    fn an_empty_body_asks_for_nothing() {
        assert_eq!(parse(b"").expect("empty"), RouteAnswer::default());
        assert_eq!(parse(b" \n").expect("blank"), RouteAnswer::default());
        assert_eq!(parse(b"{}").expect("object"), RouteAnswer::default());
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        for (body, says) in [
            (r#"[1]"#, "must be a JSON object"),
            ("[\n]", "must be a JSON object"),
            ("null", "must be a JSON object"),
            (r#"{"reply": 1}"#, "invalid type"),
            (r#"{"replies": []}"#, "unknown field"),
            (
                r#"{"publish": [{"event": "x"}]}"#,
                "publish[0]: say who receives it",
            ),
            (
                r#"{"publish": [{"all": true, "event": "x", "retain": true}]}"#,
                "publish[0]: retain needs rooms",
            ),
            (
                r#"{"publish": [{"rooms": ["a"], "event": "connect"}]}"#,
                "reserved",
            ),
            ("{\"join\": [\"a\\u0000\"]}", "cannot join"),
            ("{", "EOF"),
        ] {
            let error = parse(body.as_bytes()).expect_err(body);
            assert!(error.contains(says), "{body}: {error}");
        }
    }
}
