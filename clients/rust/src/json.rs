//! Conversions between `serde_json::Value` and `google.protobuf.Value`.
//!
//! `pbjson_types::Value` serialises as the plain JSON value it holds, so serde does the work.

/// Converts any JSON value to a protobuf `Value`.
pub fn to_proto(value: &serde_json::Value) -> pbjson_types::Value {
    // A serde_json::Value always maps onto google.protobuf.Value.
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// Converts a protobuf `Value` to JSON; an unset value is `null`.
pub fn from_proto(value: Option<&pbjson_types::Value>) -> serde_json::Value {
    value
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_structure() {
        let v = serde_json::json!({"objectId": "x", "n": 1.5, "list": [true, null, "s"]});
        assert_eq!(from_proto(Some(&to_proto(&v))), v);
        assert_eq!(from_proto(None), serde_json::Value::Null);
    }
}
