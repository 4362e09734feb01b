//! Conversions between `serde_json::Value` and `google.protobuf.Value`.
//!
//! `pbjson_types::Value` serialises as the plain JSON value it holds, so serde does the work.

use pbjson_types::value::Kind;

/// Converts any JSON value to a protobuf `Value`. `null` becomes an explicit `NullValue`
/// (a `Value` with no kind is not valid on the wire for other languages' decoders).
pub fn to_proto(value: &serde_json::Value) -> pbjson_types::Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(pbjson_types::ListValue {
            values: a.iter().map(to_proto).collect(),
        }),
        J::Object(o) => Kind::StructValue(pbjson_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
        }),
    };
    pbjson_types::Value { kind: Some(kind) }
}

/// Converts a protobuf `Value` to JSON; an unset value is `null`. Numbers with no fraction
/// (within ±2^53) come back as integers, so `{"durationMs": 500}` reads as `as_u64() == 500`.
pub fn from_proto(value: Option<&pbjson_types::Value>) -> serde_json::Value {
    use serde_json::Value as J;
    let Some(kind) = value.and_then(|v| v.kind.as_ref()) else {
        return J::Null;
    };
    match kind {
        Kind::NullValue(_) => J::Null,
        Kind::BoolValue(b) => J::Bool(*b),
        Kind::NumberValue(n) => number(*n),
        Kind::StringValue(s) => J::String(s.clone()),
        Kind::ListValue(l) => J::Array(l.values.iter().map(|v| from_proto(Some(v))).collect()),
        Kind::StructValue(s) => J::Object(s.fields.iter().map(|(k, v)| (k.clone(), from_proto(Some(v)))).collect()),
    }
}

/// `n` as JSON, integral values without a fraction (`3`, not `3.0`), as a JSON user wrote them.
fn number(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Rewrites integral floats anywhere in `v` as integers. pbjson prints every
/// `google.protobuf.Value` number as an f64 (`3.0`); payloads and results should come back as
/// they were sent (`3`). Both are the same number to a proto3 JSON parser.
pub fn normalize_numbers(v: &mut serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                *v = number(f);
            }
        }
        J::Array(items) => items.iter_mut().for_each(normalize_numbers),
        J::Object(fields) => fields.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_floats_print_as_integers() {
        let mut v = serde_json::json!({"n": 3.0, "x": [1.5, 2.0, {"y": -4.0}], "s": "3.0"});
        normalize_numbers(&mut v);
        assert_eq!(v.to_string(), r#"{"n":3,"s":"3.0","x":[1.5,2,{"y":-4}]}"#);
    }

    #[test]
    fn round_trip_keeps_structure() {
        let v = serde_json::json!({"objectId": "x", "n": 1.5, "list": [true, null, "s"]});
        assert_eq!(from_proto(Some(&to_proto(&v))), v);
        assert_eq!(from_proto(None), serde_json::Value::Null);
        assert!(to_proto(&serde_json::Value::Null).kind.is_some());
        assert_eq!(from_proto(Some(&to_proto(&serde_json::json!(500)))).as_u64(), Some(500));
    }
}
