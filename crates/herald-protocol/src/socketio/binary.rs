//! Binary attachments: a binary packet's JSON holds `{"_placeholder":true,"num":n}` where attachment `n` goes;
//! the attachments follow as separate Engine.IO binary messages.

use serde_json::Value;

use crate::DecodeError;

/// The JSON that stands for attachment `num`.
pub fn placeholder(num: usize) -> Value {
    serde_json::json!({ "_placeholder": true, "num": num })
}

/// Checks that every placeholder in `value` names one of `attachments` attachments.
pub fn check_placeholders(value: &Value, attachments: usize) -> Result<(), DecodeError> {
    match value {
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_placeholders(v, attachments)),
        Value::Object(map) => {
            if map.get("_placeholder") == Some(&Value::Bool(true)) {
                let num = map
                    .get("num")
                    .and_then(Value::as_u64)
                    .ok_or(DecodeError::InvalidPlaceholder(u64::MAX))?;
                if usize::try_from(num).map_or(true, |n| n >= attachments) {
                    return Err(DecodeError::InvalidPlaceholder(num));
                }
                return Ok(());
            }
            map.values()
                .try_for_each(|v| check_placeholders(v, attachments))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_must_name_an_attachment() {
        let ok = json!(["ev", {"a": [placeholder(0)]}, placeholder(1)]);
        assert_eq!(check_placeholders(&ok, 2), Ok(()));
        assert_eq!(
            check_placeholders(&ok, 1),
            Err(DecodeError::InvalidPlaceholder(1))
        );
        let bad = json!([{"_placeholder": true, "num": "x"}]);
        assert!(check_placeholders(&bad, 5).is_err());
    }
}
