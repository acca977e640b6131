//! crossroads' `POST /send?site=&apiKey=&resync=` with a JSON or form body `{rooms, event, args}`, answered as
//! crossroads answers, so its backends run unchanged.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::extract::ApiQuery;
use super::ApiState;
use crate::publish::{PublishRequest, Source};

#[derive(Debug, Deserialize)]
pub struct SendQuery {
    site: Option<String>,
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
    /// `resync=true`: an ack that skips an older entry of this event clears that event and emits `_resync`.
    resync: Option<String>,
}

pub async fn send(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<SendQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<&'static str, ApiError> {
    let (Some(site_name), Some(key)) = (
        query.site.filter(|s| !s.is_empty()),
        query.api_key.filter(|k| !k.is_empty()),
    ) else {
        return Err(ApiError::MissingSiteOrKey);
    };
    // crossroads answers an unknown site like a wrong key.
    let site = state
        .sites
        .get(&site_name)
        .filter(|site| site.accepts_key(&key))
        .ok_or(ApiError::InvalidLegacyKey)?;
    state.charge(&key, &site_name, 1)?;
    let body = super::read_body(body, &headers, state.max_publish_bytes).await?;
    let request = parse(&headers, &body)?;
    // crossroads tests `req.query.resync` for truthiness: any non-empty value turns it on.
    let resync = query
        .resync
        .is_some_and(|r| !r.is_empty() && r != "false" && r != "0");
    let outcome = state
        .publisher
        .publish_from(Source::Send, &site, &request, resync)
        .await?;
    tracing::debug!(site = %site_name, event = %request.event, ?outcome, "published through /send");
    Ok("OK")
}

/// Reads `{rooms, event, args}` from JSON or a form; `rooms` and `args` may be one value or many.
fn parse(headers: &HeaderMap, body: &Bytes) -> Result<PublishRequest, ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let value = if is_form {
        form_to_json(body)
    } else {
        json(body)?
    };
    let event = match value.get("event") {
        Some(Value::String(event)) => event.clone(),
        _ => {
            return Err(ApiError::BadRequest(
                "event is required and must be a string".into(),
            ))
        }
    };
    let rooms = match value.get("rooms") {
        Some(Value::String(room)) => vec![room.clone()],
        Some(Value::Array(rooms)) => rooms
            .iter()
            .map(|r| r.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::BadRequest("rooms must be strings".into()))?,
        _ => {
            return Err(ApiError::BadRequest(
                "rooms is required: a room or a list of rooms".into(),
            ))
        }
    };
    let args = match value.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(args)) => args.clone(),
        Some(one) => vec![one.clone()],
    };
    Ok(PublishRequest {
        rooms,
        event,
        args,
        retain: flag(&value, "retain")?,
        if_changed: flag(&value, "if_changed")?,
        ..PublishRequest::default()
    })
}

/// An optional yes/no field: a JSON boolean, or in a form `true`/`1` (`false`/`0`/empty for no).
fn flag(body: &Value, name: &str) -> Result<bool, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if matches!(s.as_str(), "true" | "1") => Ok(true),
        Some(Value::String(s)) if matches!(s.as_str(), "false" | "0" | "") => Ok(false),
        Some(_) => Err(ApiError::BadRequest(format!(
            "{name} must be true or false"
        ))),
    }
}

fn json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))
}

/// A form body as JSON: `rooms`, `rooms[]` and `rooms[0]` all add to the list `rooms`; other keys are strings.
fn form_to_json(body: &Bytes) -> Value {
    let mut object = serde_json::Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let (name, is_list) = match key.find('[') {
            Some(at) => (&key[..at], true),
            None => (&key[..], false),
        };
        let value = Value::String(value.into_owned());
        match object.get_mut(name) {
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => *existing = Value::Array(vec![existing.take(), value]),
            None if is_list => {
                object.insert(name.to_string(), Value::Array(vec![value]));
            }
            None => {
                object.insert(name.to_string(), value);
            }
        }
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &'static str) -> Result<PublishRequest, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().expect("header"),
        );
        parse(&headers, &Bytes::from_static(body.as_bytes()))
    }

    #[test]
    fn form_bodies_like_express_extended() {
        let r = form("rooms[]=a&rooms[]=b&event=ev&args=x").expect("valid");
        assert_eq!(
            (r.rooms, r.event.as_str(), r.args),
            (
                vec!["a".to_string(), "b".into()],
                "ev",
                vec![Value::from("x")]
            )
        );
        let r = form("rooms=a&event=ev").expect("valid");
        assert_eq!((r.rooms, r.args.len()), (vec!["a".to_string()], 0));
        assert!(matches!(form("rooms=a"), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn json_bodies_take_one_or_many() {
        let headers = HeaderMap::new();
        let r = parse(
            &headers,
            &Bytes::from_static(br#"{"rooms":"r","event":"e","args":{"a":1}}"#),
        )
        .expect("valid");
        assert_eq!(
            (r.rooms, r.args),
            (vec!["r".to_string()], vec![serde_json::json!({"a":1})])
        );
        assert!(matches!(
            parse(&headers, &Bytes::from_static(b"{")),
            Err(ApiError::BadRequest(_))
        ));
    }
}
