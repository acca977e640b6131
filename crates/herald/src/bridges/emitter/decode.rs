//! The emitter's wire format, read defensively: channel names, the broadcast payload `[uid, packet, opts]`
//! (msgpack as notepack.io writes it, or JSON from an emitter given a JSON parser) and the request payload
//! (JSON since `@socket.io/redis-emitter` 4, msgpack accepted as the adapter accepts it). Pure: no IO, and no
//! input panics; whatever cannot be read is a [`DecodeError`].

use bytes::Bytes;
use rmpv::Value as Mp;
use serde_json::{Map, Number, Value};

/// Deepest nesting read, as deep as serde_json reads a JSON publish.
const MAX_DEPTH: usize = 128;

/// socket.io-parser's packet types that carry an event.
const EVENT: i64 = 2;
const BINARY_EVENT: i64 = 5;

/// The request types the adapter defines that act on sockets (the others ask for answers herald does not give).
const REMOTE_JOIN: i64 = 2;
const REMOTE_LEAVE: i64 = 3;
const REMOTE_DISCONNECT: i64 = 4;

/// Why a payload was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a payload of the emitter protocol at all (the reason names where it broke, never the bytes).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A well-formed message herald does not act on (another packet or request type).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

fn malformed(what: &str) -> DecodeError {
    DecodeError::Malformed(what.to_string())
}

/// What a channel under the prefix carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    /// `<prefix>#<nsp>#` or `<prefix>#<nsp>#<room>#`: a broadcast (the payload names the namespace).
    Broadcast { nsp: &'a str },
    /// `<prefix>-request#<nsp>#`: socketsJoin, socketsLeave, disconnectSockets.
    Request { nsp: &'a str },
}

/// What `channel` carries under `prefix`, if it is one of the emitter's channels.
pub fn parse_channel<'a>(prefix: &str, channel: &'a str) -> Option<Channel<'a>> {
    let rest = channel.strip_prefix(prefix)?;
    if let Some(rest) = rest.strip_prefix("-request#") {
        let nsp = rest.strip_suffix('#')?;
        return nsp.starts_with('/').then_some(Channel::Request { nsp });
    }
    let rest = rest.strip_prefix('#')?;
    let (nsp, _room) = rest.split_once('#')?;
    nsp.starts_with('/').then_some(Channel::Broadcast { nsp })
}

/// A Redis glob pattern matching exactly the channels that start with `literal`, then anything.
pub fn glob_prefix(literal: &str) -> String {
    let mut pattern = String::with_capacity(literal.len() + 1);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// One emitted event, ready for the publish pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmittedEvent {
    /// Who sent it: `emitter` for every emitter (a socket.io node's adapter sends its own uid).
    pub uid: String,
    /// The namespace, `/` when the packet names none.
    pub nsp: String,
    pub event: String,
    /// The arguments, binary values replaced by socket.io placeholders into `binaries`.
    pub args: Vec<Value>,
    pub binaries: Vec<Bytes>,
    /// Rooms to reach; none reaches the whole namespace.
    pub rooms: Vec<String>,
    pub except: Vec<String>,
    pub volatile: bool,
}

/// Reads a broadcast payload.
pub fn decode_broadcast(payload: &[u8]) -> Result<EmittedEvent, DecodeError> {
    let top = match payload.first() {
        Some(b'[') => from_json(payload)?,
        Some(_) => from_msgpack(payload)?,
        None => return Err(malformed("empty payload")),
    };
    let Mp::Array(mut top) = top else {
        return Err(malformed("not an array [uid, packet, opts]"));
    };
    if top.len() < 2 {
        return Err(malformed("fewer than 2 items in [uid, packet, opts]"));
    }
    top.truncate(3);
    let opts = if top.len() > 2 { top.pop() } else { None };
    let packet = top.pop();
    let uid = top.first().and_then(text).unwrap_or_default();
    let Some(Mp::Map(packet)) = packet else {
        return Err(malformed("the packet is not a map"));
    };
    let mut kind = None;
    let mut data = None;
    let mut nsp = None;
    for (key, value) in packet {
        match text(&key).as_deref() {
            Some("type") => kind = value.as_i64(),
            Some("data") => data = Some(value),
            Some("nsp") => nsp = text(&value),
            _ => {}
        }
    }
    match kind {
        Some(EVENT | BINARY_EVENT) => {}
        Some(other) => {
            return Err(DecodeError::Unsupported(format!(
                "packet type {other} is not an event"
            )))
        }
        None => return Err(malformed("the packet has no numeric type")),
    }
    let Some(Mp::Array(data)) = data else {
        return Err(malformed("the packet's data is not an array"));
    };
    let mut data = data.into_iter();
    let event = data
        .next()
        .as_ref()
        .and_then(text)
        .ok_or_else(|| malformed("the event name is not a string"))?;
    let mut binaries = Vec::new();
    let args = data
        .map(|v| to_json(v, &mut binaries).unwrap_or(Value::Null))
        .collect();
    let mut out = EmittedEvent {
        uid,
        nsp: nsp.unwrap_or_else(|| "/".into()),
        event,
        args,
        binaries,
        ..EmittedEvent::default()
    };
    if let Some(Mp::Map(opts)) = opts {
        for (key, value) in opts {
            match text(&key).as_deref() {
                Some("rooms") => out.rooms = rooms(value),
                Some("except") => out.except = rooms(value),
                Some("flags") => out.volatile = flag(&value, "volatile"),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Which sockets a request acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The sockets in any of `rooms` (every socket when empty), less those in any of `except`.
    Rooms {
        rooms: Vec<String>,
        except: Vec<String>,
    },
    /// One socket by id (the adapter's older `remoteJoin(sid, room)` form).
    Socket(String),
}

/// What a request does to the sockets it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Join(Vec<String>),
    Leave(Vec<String>),
    /// Leave the namespace; with `close`, close the connection under it too.
    Disconnect {
        close: bool,
    },
}

/// A request every node applies to its own sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub selector: Selector,
    pub action: Action,
}

/// Reads a request payload: JSON when it starts with `{`, else msgpack (as the adapter reads it).
pub fn decode_request(payload: &[u8]) -> Result<Request, DecodeError> {
    let top = match payload.first() {
        Some(b'{') => from_json(payload)?,
        Some(_) => from_msgpack(payload)?,
        None => return Err(malformed("empty payload")),
    };
    let Mp::Map(fields) = top else {
        return Err(malformed("the request is not a map"));
    };
    let mut kind = None;
    let mut opts = None;
    let mut sid = None;
    let mut room = None;
    let mut room_list = None;
    let mut close = false;
    for (key, value) in fields {
        match text(&key).as_deref() {
            Some("type") => kind = value.as_i64(),
            Some("opts") => opts = Some(value),
            Some("sid") => sid = text(&value),
            Some("room") => room = room_name(&value),
            Some("rooms") => room_list = Some(rooms(value)),
            Some("close") => close = truthy(&value),
            _ => {}
        }
    }
    let kind = kind.ok_or_else(|| malformed("the request has no numeric type"))?;
    if !matches!(kind, REMOTE_JOIN | REMOTE_LEAVE | REMOTE_DISCONNECT) {
        return Err(DecodeError::Unsupported(format!("request type {kind}")));
    }
    let selector = match (opts, sid) {
        (Some(Mp::Map(opts)), _) => {
            let mut selected = Vec::new();
            let mut except = Vec::new();
            for (key, value) in opts {
                match text(&key).as_deref() {
                    Some("rooms") => selected = rooms(value),
                    Some("except") => except = rooms(value),
                    _ => {}
                }
            }
            Selector::Rooms {
                rooms: selected,
                except,
            }
        }
        (_, Some(sid)) => Selector::Socket(sid),
        _ => return Err(malformed("the request names neither opts nor sid")),
    };
    let named = || -> Result<Vec<String>, DecodeError> {
        match (room_list.clone(), room.clone()) {
            (Some(list), _) => Ok(list),
            (None, Some(one)) => Ok(vec![one]),
            (None, None) => Err(malformed("the request names no room")),
        }
    };
    let action = match kind {
        REMOTE_JOIN => Action::Join(named()?),
        REMOTE_LEAVE => Action::Leave(named()?),
        _ => Action::Disconnect { close },
    };
    Ok(Request { selector, action })
}

fn from_msgpack(mut payload: &[u8]) -> Result<Mp, DecodeError> {
    rmpv::decode::read_value_with_max_depth(&mut payload, MAX_DEPTH)
        .map_err(|e| DecodeError::Malformed(format!("not msgpack: {e}")))
}

fn from_json(payload: &[u8]) -> Result<Mp, DecodeError> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::Malformed(format!("not JSON: {e}")))?;
    Ok(json_to_mp(value))
}

fn json_to_mp(value: Value) -> Mp {
    match value {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Mp::from(u)
            } else if let Some(i) = n.as_i64() {
                Mp::from(i)
            } else {
                Mp::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => Mp::from(s),
        Value::Array(items) => Mp::Array(items.into_iter().map(json_to_mp).collect()),
        Value::Object(map) => Mp::Map(
            map.into_iter()
                .map(|(k, v)| (Mp::from(k), json_to_mp(v)))
                .collect(),
        ),
    }
}

/// A string where the protocol has one; old msgpack encoders (the Go and PHP emitters' libraries) may send it
/// as bin.
fn text(value: &Mp) -> Option<String> {
    match value {
        Mp::String(s) => s.as_str().map(str::to_string),
        Mp::Binary(b) => std::str::from_utf8(b).ok().map(str::to_string),
        _ => None,
    }
}

/// A room name: a string, or a number as JavaScript would print it (`to(42)`).
fn room_name(value: &Mp) -> Option<String> {
    match value {
        Mp::Integer(i) => Some(i.to_string()),
        other => text(other),
    }
}

/// A list of rooms: an array (a PHP emitter may send a map), skipping what names no room.
fn rooms(value: Mp) -> Vec<String> {
    let items = match value {
        Mp::Array(items) => items,
        Mp::Map(entries) => entries.into_iter().map(|(_, v)| v).collect(),
        one => vec![one],
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for room in items.iter().filter_map(room_name) {
        if !out.contains(&room) {
            out.push(room);
        }
    }
    out
}

/// Whether the flags map sets `name` (an empty PHP array arrives as an array: no flag).
fn flag(flags: &Mp, name: &str) -> bool {
    let Mp::Map(entries) = flags else {
        return false;
    };
    entries
        .iter()
        .any(|(k, v)| text(k).as_deref() == Some(name) && truthy(v))
}

fn truthy(value: &Mp) -> bool {
    match value {
        Mp::Nil => false,
        Mp::Boolean(b) => *b,
        Mp::Integer(i) => i.as_i64() != Some(0),
        _ => true,
    }
}

/// A msgpack value as the JSON socket.io sends, the way the JavaScript adapter would turn it into one: bin
/// becomes a binary attachment (a placeholder here), a timestamp an ISO date string; `None` is JavaScript's
/// `undefined` (left out of objects, `null` in arrays).
fn to_json(value: Mp, binaries: &mut Vec<Bytes>) -> Option<Value> {
    Some(match value {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(b),
        Mp::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(n)) => Value::from(n),
            (None, None) => Value::Null,
        },
        Mp::F32(f) => number(f64::from(f)),
        Mp::F64(f) => number(f),
        // Invalid UTF-8 is read as Node's `buf.toString("utf8")` reads it.
        Mp::String(s) => Value::String(
            String::from_utf8(s.into_bytes())
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        Mp::Binary(b) => placeholder(b, binaries),
        Mp::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| to_json(v, binaries).unwrap_or(Value::Null))
                .collect(),
        ),
        Mp::Map(entries) => {
            let mut object = Map::with_capacity(entries.len());
            for (key, value) in entries {
                let key = object_key(&key);
                if let Some(value) = to_json(value, binaries) {
                    object.insert(key, value);
                }
            }
            Value::Object(object)
        }
        Mp::Ext(kind, data) => return ext(kind, data, binaries),
    })
}

fn number(f: f64) -> Value {
    // JSON.stringify writes NaN and the infinities as null.
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn placeholder(data: Vec<u8>, binaries: &mut Vec<Bytes>) -> Value {
    let num = binaries.len();
    binaries.push(Bytes::from(data));
    serde_json::json!({ "_placeholder": true, "num": num })
}

/// A map key as JavaScript makes a property name of it.
fn object_key(key: &Mp) -> String {
    match key {
        Mp::String(s) => s.as_str().unwrap_or_default().to_string(),
        Mp::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        Mp::Nil => "null".into(),
        Mp::Boolean(b) => b.to_string(),
        Mp::Integer(i) => i.to_string(),
        Mp::F32(f) => f.to_string(),
        Mp::F64(f) => f.to_string(),
        Mp::Array(_) | Mp::Map(_) | Mp::Ext(..) => "[object]".into(),
    }
}

/// notepack.io's extension types: timestamps (-1) and its own type 0 (undefined, an old date, an ArrayBuffer);
/// any other type is `[type, <binary>]`, as notepack hands it to the adapter.
fn ext(kind: i8, data: Vec<u8>, binaries: &mut Vec<Bytes>) -> Option<Value> {
    match (kind, data.len()) {
        (-1, _) => Some(timestamp(&data).map_or(Value::Null, Value::String)),
        (0, 1) => None,
        (0, 8) => {
            let hi = i64::from(i32::from_be_bytes([data[0], data[1], data[2], data[3]]));
            let lo = i64::from(u32::from_be_bytes([data[4], data[5], data[6], data[7]]));
            Some(iso_date(hi * (1 << 32) + lo).map_or(Value::Null, Value::String))
        }
        (0, _) => Some(placeholder(data, binaries)),
        _ => Some(Value::Array(vec![
            Value::from(kind),
            placeholder(data, binaries),
        ])),
    }
}

/// The msgpack timestamp extension (32, 64 or 96 bits) as JavaScript's `Date.toJSON()` writes it.
fn timestamp(data: &[u8]) -> Option<String> {
    let (secs, nanos): (i64, u32) = match data.len() {
        4 => (i64::from(u32::from_be_bytes(data.try_into().ok()?)), 0),
        8 => {
            let all = u64::from_be_bytes(data.try_into().ok()?);
            ((all & 0x3_ffff_ffff) as i64, (all >> 34) as u32)
        }
        12 => (
            i64::from_be_bytes(data[4..12].try_into().ok()?),
            u32::from_be_bytes(data[0..4].try_into().ok()?),
        ),
        _ => return None,
    };
    let ms = secs
        .checked_mul(1000)?
        .checked_add(i64::from(nanos / 1_000_000))?;
    iso_date(ms)
}

/// Milliseconds since the epoch as `Date.toISOString()` writes them; `None` out of a Date's range (JavaScript
/// writes an invalid date as `null`).
fn iso_date(ms: i64) -> Option<String> {
    const MAX_MS: i64 = 8_640_000_000_000_000;
    if !(-MAX_MS..=MAX_MS).contains(&ms) {
        return None;
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else if year < 0 {
        format!("-{:06}", -year)
    } else {
        format!("+{year:06}")
    };
    Some(format!(
        "{year}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z"
    ))
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), after Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What `tests/js/emitter-fixtures.mjs` recorded from the real `@socket.io/redis-emitter` 5.1.0.
    fn fixture(name: &str) -> (&'static str, &'static [u8]) {
        const CHANNELS: &str = include_str!("fixtures/channels.tsv");
        let channel = CHANNELS
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('\t'))
            .expect("fixture in channels.tsv");
        let bytes: &[u8] = match name {
            "emit-all" => include_bytes!("fixtures/emit-all.bin"),
            "emit-room" => include_bytes!("fixtures/emit-room.bin"),
            "emit-rooms-except-volatile" => {
                include_bytes!("fixtures/emit-rooms-except-volatile.bin")
            }
            "emit-binary" => include_bytes!("fixtures/emit-binary.bin"),
            "emit-exotic" => include_bytes!("fixtures/emit-exotic.bin"),
            "emit-root" => include_bytes!("fixtures/emit-root.bin"),
            "emit-prefix" => include_bytes!("fixtures/emit-prefix.bin"),
            "join" => include_bytes!("fixtures/join.bin"),
            "leave" => include_bytes!("fixtures/leave.bin"),
            "disconnect-close" => include_bytes!("fixtures/disconnect-close.bin"),
            "disconnect" => include_bytes!("fixtures/disconnect.bin"),
            _ => panic!("no fixture {name}"),
        };
        (channel, bytes)
    }

    fn broadcast(name: &str) -> EmittedEvent {
        let (channel, bytes) = fixture(name);
        assert!(matches!(
            parse_channel("socket.io", channel).or_else(|| parse_channel("custom", channel)),
            Some(Channel::Broadcast { .. })
        ));
        decode_broadcast(bytes).expect("the fixture decodes")
    }

    #[test]
    fn channels_name_their_namespace() {
        let p = "socket.io";
        assert_eq!(
            parse_channel(p, "socket.io#/acme#"),
            Some(Channel::Broadcast { nsp: "/acme" })
        );
        assert_eq!(
            parse_channel(p, "socket.io#/acme#room1#"),
            Some(Channel::Broadcast { nsp: "/acme" })
        );
        assert_eq!(
            parse_channel(p, "socket.io-request#/acme#"),
            Some(Channel::Request { nsp: "/acme" })
        );
        assert_eq!(
            parse_channel(p, "socket.io#/#"),
            Some(Channel::Broadcast { nsp: "/" })
        );
        for other in [
            "socket.io-response#/acme#",
            "socket.io#acme#",
            "socket.io",
            "other#/acme#",
            "socket.io#/acme",
            "socket.io-request#/acme",
        ] {
            assert_eq!(parse_channel(p, other), None, "{other}");
        }
    }

    #[test]
    fn glob_patterns_escape_the_prefix() {
        assert_eq!(glob_prefix("socket.io#"), "socket.io#*");
        assert_eq!(glob_prefix("a*b?[c]\\^#"), "a\\*b\\?\\[c\\]\\\\\\^#*");
    }

    #[test]
    fn a_namespace_wide_emit() {
        let e = broadcast("emit-all");
        assert_eq!(e.uid, "emitter");
        assert_eq!(e.nsp, "/acme");
        assert_eq!(e.event, "hello");
        assert_eq!(e.args, vec![json!("world"), json!(42)]);
        assert!(e.rooms.is_empty() && e.except.is_empty() && !e.volatile);
        assert!(e.binaries.is_empty());
    }

    #[test]
    fn rooms_except_and_flags() {
        let e = broadcast("emit-room");
        assert_eq!(e.rooms, vec!["room1"]);
        assert_eq!(e.args, vec![json!({ "title": "t", "tags": ["a", "b"] })]);
        let e = broadcast("emit-rooms-except-volatile");
        assert_eq!(e.rooms, vec!["r1", "r2"]);
        assert_eq!(e.except, vec!["r3"]);
        assert!(e.volatile);
        assert_eq!(e.event, "tick");
        assert_eq!(
            e.args,
            vec![json!(-7), json!(1.5), json!(true), Value::Null]
        );
    }

    #[test]
    fn binary_arguments_become_attachments() {
        let e = broadcast("emit-binary");
        assert_eq!(
            e.args,
            vec![
                json!({ "_placeholder": true, "num": 0 }),
                json!({ "nested": { "_placeholder": true, "num": 1 } }),
            ]
        );
        assert_eq!(
            e.binaries,
            vec![Bytes::from_static(&[1, 2, 3]), Bytes::from_static(b"hi")]
        );
    }

    #[test]
    fn dates_undefined_array_buffers_and_big_numbers() {
        let e = broadcast("emit-exotic");
        assert_eq!(
            e.args,
            vec![
                json!("2024-01-02T03:04:05.678Z"),
                json!([null, 1]),
                json!({ "_placeholder": true, "num": 0 }),
                json!(1_099_511_627_776_u64),
            ]
        );
        assert_eq!(e.binaries, vec![Bytes::from_static(&[9, 8])]);
    }

    #[test]
    fn the_root_namespace_and_another_prefix() {
        assert_eq!(broadcast("emit-root").nsp, "/");
        let (channel, _) = fixture("emit-prefix");
        assert_eq!(parse_channel("socket.io", channel), None);
        assert_eq!(broadcast("emit-prefix").event, "hi");
    }

    #[test]
    fn requests_as_the_emitter_sends_them() {
        let (channel, bytes) = fixture("join");
        assert_eq!(
            parse_channel("socket.io", channel),
            Some(Channel::Request { nsp: "/acme" })
        );
        assert_eq!(
            decode_request(bytes),
            Ok(Request {
                selector: Selector::Rooms {
                    rooms: vec!["room1".into()],
                    except: vec!["room2".into()]
                },
                action: Action::Join(vec!["a".into(), "b".into()]),
            })
        );
        assert_eq!(
            decode_request(fixture("leave").1),
            Ok(Request {
                selector: Selector::Rooms {
                    rooms: vec![],
                    except: vec![]
                },
                action: Action::Leave(vec!["a".into()]),
            })
        );
        assert_eq!(
            decode_request(fixture("disconnect-close").1).map(|r| r.action),
            Ok(Action::Disconnect { close: true })
        );
        assert_eq!(
            decode_request(fixture("disconnect").1).map(|r| r.action),
            Ok(Action::Disconnect { close: false })
        );
    }

    #[test]
    fn older_and_msgpack_requests() {
        // The adapter's older per-socket form.
        let old = br#"{"type":2,"sid":"abc","room":"r","requestId":"x"}"#;
        assert_eq!(
            decode_request(old),
            Ok(Request {
                selector: Selector::Socket("abc".into()),
                action: Action::Join(vec!["r".into()]),
            })
        );
        // The same request as msgpack: {"type":3,"opts":{"rooms":["x"]},"rooms":["y"]}.
        let mut packed = Vec::new();
        let value = Mp::Map(vec![
            (Mp::from("type"), Mp::from(3)),
            (
                Mp::from("opts"),
                Mp::Map(vec![(Mp::from("rooms"), Mp::Array(vec![Mp::from("x")]))]),
            ),
            (Mp::from("rooms"), Mp::Array(vec![Mp::from("y")])),
        ]);
        rmpv::encode::write_value(&mut packed, &value).expect("encodes");
        assert_eq!(
            decode_request(&packed).map(|r| r.action),
            Ok(Action::Leave(vec!["y".into()]))
        );
        assert!(matches!(
            decode_request(br#"{"type":6,"uid":"emitter","data":[1]}"#),
            Err(DecodeError::Unsupported(_))
        ));
    }

    #[test]
    fn json_broadcasts_and_old_encoders() {
        let json =
            br#"["emitter",{"type":2,"data":["ev",1],"nsp":"/acme"},{"rooms":[7],"flags":[]}]"#;
        let e = decode_broadcast(json).expect("decodes");
        assert_eq!((e.event.as_str(), e.rooms), ("ev", vec!["7".to_string()]));
        assert!(!e.volatile);
        // Strings sent as bin by an old encoder, no nsp (the adapter reads `/`), no opts.
        let value = Mp::Array(vec![
            Mp::Binary(b"emitter".to_vec()),
            Mp::Map(vec![
                (Mp::Binary(b"type".to_vec()), Mp::from(2)),
                (
                    Mp::Binary(b"data".to_vec()),
                    Mp::Array(vec![Mp::Binary(b"ev".to_vec())]),
                ),
            ]),
        ]);
        let mut packed = Vec::new();
        rmpv::encode::write_value(&mut packed, &value).expect("encodes");
        let e = decode_broadcast(&packed).expect("decodes");
        assert_eq!(
            (e.uid.as_str(), e.nsp.as_str(), e.event.as_str()),
            ("emitter", "/", "ev")
        );
    }

    #[test]
    fn extension_types_are_tolerated() {
        let value = Mp::Array(vec![
            Mp::from("emitter"),
            Mp::Map(vec![
                (Mp::from("type"), Mp::from(2)),
                (
                    Mp::from("data"),
                    Mp::Array(vec![
                        Mp::from("ev"),
                        Mp::Ext(-1, vec![0, 0, 0, 0]),
                        Mp::Ext(-1, vec![0; 12]),
                        Mp::Ext(-1, vec![1, 2, 3]),
                        Mp::Ext(0, vec![0]),
                        Mp::Ext(0, vec![0, 0, 0, 0, 0, 0, 0, 1]),
                        Mp::Ext(42, vec![7]),
                        Mp::Map(vec![(Mp::from("gone"), Mp::Ext(0, vec![0]))]),
                        Mp::F64(f64::NAN),
                    ]),
                ),
                (Mp::from("nsp"), Mp::from("/acme")),
            ]),
            Mp::Nil,
        ]);
        let mut packed = Vec::new();
        rmpv::encode::write_value(&mut packed, &value).expect("encodes");
        let e = decode_broadcast(&packed).expect("decodes");
        assert_eq!(
            e.args,
            vec![
                json!("1970-01-01T00:00:00.000Z"),
                json!("1970-01-01T00:00:00.000Z"),
                Value::Null,
                Value::Null,
                json!("1970-01-01T00:00:00.001Z"),
                json!([42, { "_placeholder": true, "num": 0 }]),
                json!({}),
                Value::Null,
            ]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_as_node_does() {
        let value = Mp::Array(vec![
            Mp::from("emitter"),
            Mp::Map(vec![
                (Mp::from("type"), Mp::from(2)),
                (
                    Mp::from("data"),
                    Mp::Array(vec![Mp::from("ev"), Mp::from("zA")]),
                ),
            ]),
        ]);
        let mut packed = Vec::new();
        rmpv::encode::write_value(&mut packed, &value).expect("encodes");
        let at = packed
            .windows(2)
            .position(|w| w == b"zA")
            .expect("the string");
        packed[at] = 0xff;
        let e = decode_broadcast(&packed).expect("decodes");
        assert_eq!(e.args, vec![json!("\u{fffd}A")]);
    }

    #[test]
    fn dates_match_javascript() {
        assert_eq!(iso_date(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(iso_date(-1).as_deref(), Some("1969-12-31T23:59:59.999Z"));
        assert_eq!(
            iso_date(951_782_400_000).as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
        assert_eq!(
            iso_date(253_402_300_800_000).as_deref(),
            Some("+010000-01-01T00:00:00.000Z")
        );
        assert_eq!(iso_date(8_640_000_000_000_001), None);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let cases: &[&[u8]] = &[
            b"",
            b"[",
            b"{",
            &[0x93],
            &[0x93, 0xa1, b'x'],
            &[0xc1],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            &[0xc6, 0xff, 0xff, 0xff, 0xff, 1],
            b"[1,2,3]",
            br#"["e",{"type":2,"data":[]},{}]"#,
            br#"["e",{"type":2,"data":[1]},{}]"#,
            br#"["e",{"type":3,"data":["x"]},{}]"#,
            br#"["e",{"data":["x"]},{}]"#,
            br#"["e","packet",{}]"#,
            br#"{"a":1}"#,
        ];
        for case in cases {
            assert!(decode_broadcast(case).is_err(), "{case:?}");
        }
        let requests: &[&[u8]] = &[
            b"",
            b"{",
            b"[]",
            br#"{"type":2}"#,
            br#"{"type":2,"opts":{}}"#,
            br#"{"opts":{},"rooms":[]}"#,
            &[0x81, 0xa4, b't', b'y', b'p', b'e'],
        ];
        for case in requests {
            assert!(decode_request(case).is_err(), "{case:?}");
        }
        // Nesting deeper than the limit is refused, not a stack overflow.
        let mut deep = vec![0x91_u8; 100_000];
        deep.push(0xc0);
        assert!(decode_broadcast(&deep).is_err());
        let deep_json = "[".repeat(100_000);
        assert!(decode_broadcast(deep_json.as_bytes()).is_err());
    }
}
