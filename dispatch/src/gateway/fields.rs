//! Field violations in the caller's words: what a JSON field must hold, from the proto's
//! descriptors (rather than the JSON parser's internals), and field paths written the way the
//! caller wrote them (`options.maxAttempts` for a camelCase body, `options.max_attempts` for a
//! snake_case one).

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value};

struct Index {
    /// Message full name (no leading dot) → its fields.
    messages: HashMap<String, Vec<FieldDescriptorProto>>,
    /// Message full names that are map entries.
    map_entries: BTreeSet<String>,
    /// Enum full name → value names.
    enums: HashMap<String, Vec<String>>,
    /// `dispatch.v1.JobService/CreateJob` → input message full name.
    inputs: HashMap<String, String>,
    /// `dispatch.v1.JobService/CreateJob` → output message full name.
    outputs: HashMap<String, String>,
}

/// Messages whose JSON shows every scalar field, zero or not (proto3 JSON leaves out the
/// defaults): a queue with no failed job says `"failed": 0`.
const EVERY_FIELD: &[&str] = &[
    "dispatch.v1.QueueInfo",
    "dispatch.v1.StatsMinute",
    "dispatch.v1.WorkerInfo",
];

static INDEX: LazyLock<Index> = LazyLock::new(|| {
    let mut index = Index {
        messages: HashMap::new(),
        map_entries: BTreeSet::new(),
        enums: HashMap::new(),
        inputs: HashMap::new(),
        outputs: HashMap::new(),
    };
    let Ok(set) = FileDescriptorSet::decode(dispatch_client::FILE_DESCRIPTOR_SET) else {
        return index;
    };
    for file in &set.file {
        let package = file.package();
        for e in &file.enum_type {
            index.enums.insert(
                format!("{package}.{}", e.name()),
                e.value.iter().map(|v| v.name().to_string()).collect(),
            );
        }
        for m in &file.message_type {
            add_message(&mut index, &format!("{package}.{}", m.name()), m);
        }
        for s in &file.service {
            for m in &s.method {
                let rpc = format!("{package}.{}/{}", s.name(), m.name());
                index
                    .inputs
                    .insert(rpc.clone(), m.input_type().trim_start_matches('.').to_string());
                index
                    .outputs
                    .insert(rpc, m.output_type().trim_start_matches('.').to_string());
            }
        }
    }
    index
});

fn add_message(index: &mut Index, name: &str, m: &prost_types::DescriptorProto) {
    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
        index.map_entries.insert(name.to_string());
    }
    index.messages.insert(name.to_string(), m.field.clone());
    for nested in &m.nested_type {
        add_message(index, &format!("{name}.{}", nested.name()), nested);
    }
}

/// The field at `path` (`jobs[0].options.maxAttempts`) of the input message of `rpc`, and
/// whether the path ends at one element of a repeated field.
fn field_at(rpc: &str, path: &str) -> Option<(FieldDescriptorProto, bool)> {
    let mut message = INDEX.inputs.get(rpc)?.clone();
    let mut found = None;
    for segment in path.split('.') {
        let (name, element) = match segment.split_once('[') {
            Some((n, _)) => (n, true),
            None => (segment, false),
        };
        let fields = INDEX.messages.get(&message)?;
        let f = fields
            .iter()
            .find(|f| f.json_name() == name || f.name() == name)?
            .clone();
        if f.r#type() == Type::Message {
            message = f.type_name().trim_start_matches('.').to_string();
        }
        found = Some((f, element));
    }
    found
}

/// What a value of this (scalar or message) type must look like.
fn kind(f: &FieldDescriptorProto) -> String {
    match f.r#type() {
        Type::Uint32 | Type::Fixed32 => "a whole number from 0 to 4294967295".into(),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => "a whole number".into(),
        Type::Uint64 | Type::Fixed64 => "a whole number of at least 0 (a JSON number or a string of digits)".into(),
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => "a whole number (a JSON number or a string of digits)".into(),
        Type::Double | Type::Float => "a number".into(),
        Type::Bool => "true or false".into(),
        Type::String => "a string".into(),
        Type::Bytes => "base64 text".into(),
        Type::Enum => {
            let values = INDEX
                .enums
                .get(f.type_name().trim_start_matches('.'))
                .map(|v| v.join(", "))
                .unwrap_or_default();
            format!("one of {values}")
        }
        Type::Message | Type::Group => match f.type_name() {
            ".google.protobuf.Duration" => "a duration in seconds ending in s, like \"1.5s\"".into(),
            ".google.protobuf.Timestamp" => "an RFC 3339 time, like \"2026-01-02T15:04:05Z\"".into(),
            ".google.protobuf.Value" => "any JSON value".into(),
            ".google.protobuf.Struct" => "a JSON object".into(),
            _ => "a JSON object".into(),
        },
    }
}

/// What the field at `path` of `rpc`'s request must hold, for a value that did not parse;
/// `None` when the path names no known field.
pub fn expected(rpc: &str, path: &str) -> Option<String> {
    let (f, element) = field_at(rpc, path)?;
    let map_entry = f.r#type() == Type::Message && INDEX.map_entries.contains(f.type_name().trim_start_matches('.'));
    if map_entry {
        let value = INDEX
            .messages
            .get(f.type_name().trim_start_matches('.'))
            .and_then(|entry| entry.iter().find(|e| e.name() == "value"))
            .map(kind)
            .unwrap_or_else(|| "values".into());
        return Some(format!("must be a JSON object whose values are each {value}"));
    }
    if f.label() == Label::Repeated && !element {
        return Some(format!("must be a list, each item {}", kind(&f)));
    }
    Some(format!("must be {}", kind(&f)))
}

/// Adds the default of every scalar field left out of the messages of [`EVERY_FIELD`] in
/// `rpc`'s response JSON (64-bit integers as strings, as proto3 JSON writes them).
pub fn show_defaults(rpc: &str, json: &mut Value) {
    fn walk(message: &str, v: &mut Value) {
        let Some(fields) = INDEX.messages.get(message) else {
            return;
        };
        let Value::Object(obj) = v else { return };
        let every = EVERY_FIELD.contains(&message);
        for f in fields {
            match f.r#type() {
                Type::Message => {
                    let inner = f.type_name().trim_start_matches('.');
                    if INDEX.map_entries.contains(inner) {
                        if every {
                            obj.entry(f.json_name()).or_insert_with(|| Value::Object(Map::new()));
                        }
                        continue;
                    }
                    match obj.get_mut(f.json_name()) {
                        Some(Value::Array(items)) => items.iter_mut().for_each(|i| walk(inner, i)),
                        Some(item) => walk(inner, item),
                        None => {}
                    }
                }
                _ if !every => {}
                _ if f.label() == Label::Repeated => {
                    obj.entry(f.json_name()).or_insert_with(|| Value::Array(Vec::new()));
                }
                Type::Bool => {
                    obj.entry(f.json_name()).or_insert(Value::Bool(false));
                }
                Type::String | Type::Bytes => {
                    obj.entry(f.json_name()).or_insert_with(|| Value::String(String::new()));
                }
                Type::Enum => {
                    let first = INDEX
                        .enums
                        .get(f.type_name().trim_start_matches('.'))
                        .and_then(|v| v.first().cloned())
                        .unwrap_or_default();
                    obj.entry(f.json_name()).or_insert(Value::String(first));
                }
                // Proto3 JSON writes 64-bit integers as strings.
                Type::Int64 | Type::Uint64 | Type::Sint64 | Type::Fixed64 | Type::Sfixed64 => {
                    obj.entry(f.json_name()).or_insert_with(|| Value::String("0".into()));
                }
                _ => {
                    obj.entry(f.json_name()).or_insert_with(|| Value::from(0));
                }
            }
        }
    }
    if let Some(message) = INDEX.outputs.get(rpc) {
        walk(message, json);
    }
}

/// The keys written with an underscore anywhere in a request body (`max_attempts`): the
/// caller's spelling of those fields is snake_case.
pub fn snake_keys(json: &Map<String, Value>) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k.contains('_') {
                        out.insert(k.clone());
                    }
                    walk(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for (k, v) in json {
        if k.contains('_') {
            out.insert(k.clone());
        }
        walk(v, &mut out);
    }
    out
}

/// A field path the services wrote in proto names (`jobs[0].options.max_attempts`), each
/// segment in lowerCamelCase unless the caller wrote it snake_case.
pub fn as_written(path: &str, snake: &BTreeSet<String>) -> String {
    path.split('.')
        .map(|segment| {
            let (name, rest) = match segment.find('[') {
                Some(i) => segment.split_at(i),
                None => (segment, ""),
            };
            if !name.contains('_') || snake.contains(name) {
                return segment.to_string();
            }
            let mut camel = String::with_capacity(name.len());
            let mut upper = false;
            for c in name.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    camel.extend(c.to_uppercase());
                    upper = false;
                } else {
                    camel.push(c);
                }
            }
            camel + rest
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// `status` with its field violations' paths (and its message) as the caller wrote them.
pub fn in_callers_words(status: tonic::Status, snake: &BTreeSet<String>) -> tonic::Status {
    use tonic_types::StatusExt;
    if status.code() != tonic::Code::InvalidArgument {
        return status;
    }
    let details = status.get_error_details();
    let Some(bad) = details.bad_request() else {
        return status;
    };
    let mut out = tonic_types::ErrorDetails::new();
    let mut summary = Vec::new();
    for v in &bad.field_violations {
        let field = as_written(&v.field, snake);
        summary.push(format!("{field}: {}", v.description));
        out.add_bad_request_violation(field, v.description.clone());
    }
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid request: {}", summary.join("; ")),
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "dispatch.v1.JobService/CreateJob";

    #[test]
    fn a_bad_value_is_described_by_its_field_type() {
        assert_eq!(
            expected(CREATE, "options.maxAttempts").unwrap(),
            "must be a whole number from 0 to 4294967295"
        );
        assert_eq!(
            expected(CREATE, "options.max_attempts").unwrap(),
            "must be a whole number from 0 to 4294967295"
        );
        assert!(expected(CREATE, "options.timeout").unwrap().contains("\"1.5s\""));
        assert!(expected(CREATE, "options.runAt").unwrap().contains("RFC 3339"));
        assert!(expected(CREATE, "options.labels").unwrap().contains("each a string"));
        assert_eq!(
            expected(
                "dispatch.v1.JobService/CreateJobs",
                "jobs[2].options.backoff.multiplier"
            )
            .unwrap(),
            "must be a number"
        );
        assert!(
            expected("dispatch.v1.JobService/CreateJobs", "jobs")
                .unwrap()
                .starts_with("must be a list")
        );
        assert!(
            expected("dispatch.v1.JobService/ListJobs", "state")
                .unwrap()
                .contains("JOB_STATE_QUEUED")
        );
        assert!(
            expected("dispatch.v1.JobService/ListJobs", "labels")
                .unwrap()
                .starts_with("must be a list")
        );
        assert_eq!(expected(CREATE, "nope"), None);
        assert_eq!(expected("no.Such/Rpc", "queue"), None);
    }

    #[test]
    fn queue_counts_show_zeros() {
        let mut v: Value =
            serde_json::from_str(r#"{"queues":[{"name":"a","depth":"2"},{"name":"b","failed":"1"}]}"#).unwrap();
        show_defaults("dispatch.v1.JobService/ListQueues", &mut v);
        let a = &v["queues"][0];
        assert_eq!(
            (&a["depth"], &a["failed"], &a["running"]),
            (&Value::from("2"), &Value::from("0"), &Value::from("0"))
        );
        assert_eq!(a["paused"], Value::Bool(false));
        assert_eq!(v["queues"][1]["depth"], "0");
        // Timestamps stay out when unset; other messages keep proto3's omissions.
        assert!(a.get("pausedAt").is_none());
        let mut job: Value = serde_json::from_str(r#"{"job":{"id":"x"}}"#).unwrap();
        show_defaults("dispatch.v1.JobService/GetJob", &mut job);
        assert!(job["job"].get("attempt").is_none());
        let mut q: Value = serde_json::from_str(r#"{"queue":{"name":"a","paused":true}}"#).unwrap();
        show_defaults("dispatch.v1.JobService/PauseQueue", &mut q);
        assert_eq!(q["queue"]["cancelled"], "0");
    }

    #[test]
    fn paths_follow_the_callers_spelling() {
        let none = BTreeSet::new();
        assert_eq!(
            as_written("jobs[0].options.max_attempts", &none),
            "jobs[0].options.maxAttempts"
        );
        assert_eq!(as_written("page_size", &none), "pageSize");
        assert_eq!(as_written("queue", &none), "queue");
        let body: Map<String, Value> =
            serde_json::from_str(r#"{"options":{"max_attempts":-1,"run_at":"x"},"page_size":1}"#).unwrap();
        let snake = snake_keys(&body);
        assert_eq!(as_written("options.max_attempts", &snake), "options.max_attempts");
        assert_eq!(as_written("options.idempotency_key", &snake), "options.idempotencyKey");
        let s = in_callers_words(
            crate::gateway::error::field_violation("options.idempotency_key", "too long"),
            &snake,
        );
        assert_eq!(s.message(), "invalid request: options.idempotencyKey: too long");
    }
}
