//! Emits an OpenAPI 3.1 document for the REST routes. Schemas follow the proto3 JSON mapping
//! as pbjson implements it: camelCase names, 64-bit integers as strings, enums by name,
//! `Duration` as `"1.5s"`, `Timestamp` as RFC 3339, `Value` as any JSON.

use std::collections::BTreeMap;

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::{Api, Route, Segment};

/// Document-level facts that are not in the proto.
pub struct Info<'a> {
    pub title: &'a str,
    pub version: &'a str,
    pub description: &'a str,
}

/// HTTP statuses every operation may answer with, besides 200, and why.
const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "INVALID_ARGUMENT: a field violation, malformed JSON or a bad query parameter.",
    ),
    ("404", "NOT_FOUND: no such job."),
    ("409", "ABORTED or ALREADY_EXISTS."),
    (
        "412",
        "FAILED_PRECONDITION: the job is not in a state that allows this, or the lease is stale.",
    ),
    (
        "429",
        "RESOURCE_EXHAUSTED: dispatch is at capacity; retry with backoff.",
    ),
    ("503", "UNAVAILABLE: the job store or bus is unreachable; retry."),
];

/// Extra statuses for operations that take a JSON body.
const BODY_ERRORS: &[(&str, &str)] = &[
    ("413", "The body is larger than the configured limit."),
    ("415", "The body is not `application/json`."),
];

/// The OpenAPI document as JSON (keys sorted, so the output is stable).
pub fn generate(api: &Api, info: &Info) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in &api.routes {
        let op = operation(api, r, &mut schemas);
        paths
            .entry(r.template.clone())
            .or_default()
            .insert(r.http_method.to_lowercase(), op);
    }
    // Message schemas may refer to more messages: resolve until closed.
    let mut components = Map::new();
    while let Some(m) = schemas.next_pending() {
        let s = message_schema(api, &m, &mut schemas);
        components.insert(schemas.name_of(m.full_name()), s);
    }
    for e in schemas.enums.values() {
        components.insert(
            schemas.name_of(e.full_name()),
            json!({
                "type": "string",
                "description": api.comment(e.parent_file().name(), e.path()),
                "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>(),
            }),
        );
    }
    components.insert("Status".into(), error_schema());
    let mut responses = Map::new();
    responses.insert(
        "Error".into(),
        json!({
            "description": "An error in the Google JSON error shape.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": info.title, "version": info.version, "description": info.description},
        "paths": paths,
        "components": {"schemas": components, "responses": responses},
    })
}

fn operation(api: &Api, r: &Route, schemas: &mut Schemas) -> Value {
    let mut params = Vec::new();
    for s in &r.segments {
        if let Segment::Field(f) = s
            && let Some(fd) = r.input.get_field_by_name(f)
        {
            params.push(json!({
                "name": f,
                "in": "path",
                "required": true,
                "description": api.field_doc(&fd),
                "schema": {"type": "string"},
            }));
        }
    }
    for fd in r.query_fields() {
        let mut p = json!({
            "name": fd.json_name(),
            "in": "query",
            "required": false,
            "description": api.field_doc(&fd),
            "schema": field_schema(api, &fd, schemas),
        });
        if fd.is_list() {
            p["style"] = json!("form");
            p["explode"] = json!(true);
        }
        params.push(p);
    }
    let (summary, description) = split_doc(&r.doc);
    let mut op = json!({
        "operationId": r.operation_id(),
        "tags": [r.service],
        "summary": summary,
        "description": description,
        "parameters": params,
    });
    if r.body {
        let path_fields = r.path_fields();
        let body_schema = if path_fields.is_empty() {
            schemas.reference(&r.input)
        } else {
            // The path carries some fields: the body holds the rest.
            let props: Map<String, Value> = r
                .input
                .fields()
                .filter(|f| !path_fields.iter().any(|p| p.number() == f.number()))
                .map(|f| (f.json_name().to_string(), field_schema(api, &f, schemas)))
                .collect();
            json!({"type": "object", "properties": props})
        };
        op["requestBody"] = json!({
            "required": false,
            "description": "The request as JSON. An empty body is the same as `{}`.",
            "content": {"application/json": {"schema": body_schema}},
        });
    }
    let mut responses = Map::new();
    if r.server_streaming {
        // Each event is described by `itemSchema` (OpenAPI 3.2's field for sequential media,
        // which validators such as schemathesis read in 3.1 documents too); the stream's own
        // `schema` says nothing, so client generators hand the body over as text instead of
        // parsing it as one JSON document (openapi-python-client raised on it before).
        let event = json!({
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"type": "string", "enum": ["message", "error"]},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [schemas.reference(&r.output), {"$ref": "#/components/schemas/Status"}]},
                    "description": format!("A `{}` as JSON; for `event: error`, a Status.", r.output.name()),
                },
            },
        });
        responses.insert(
            "200".into(),
            json!({
                "description": format!(
                    "Server-Sent Events: one event per `{}`, whose `data` is its JSON. An error after \
                     the stream started ends it with `event: error` and a Status as data. Read it \
                     with an SSE client; a generated client gets the events' text.",
                    r.output.name()
                ),
                "content": {"text/event-stream": {
                    "schema": {"description": "The event stream, as text; `itemSchema` describes each event."},
                    "itemSchema": event,
                }},
            }),
        );
    } else {
        responses.insert(
            "200".into(),
            json!({
                "description": "OK",
                "content": {"application/json": {"schema": schemas.reference(&r.output)}},
            }),
        );
    }
    let extra: &[(&str, &str)] = if r.body { BODY_ERRORS } else { &[] };
    for (code, why) in ERRORS.iter().chain(extra) {
        responses.insert(
            (*code).into(),
            json!({
                "description": why,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
            }),
        );
    }
    responses.insert("default".into(), json!({"$ref": "#/components/responses/Error"}));
    op["responses"] = Value::Object(responses);
    op
}

fn split_doc(doc: &str) -> (String, String) {
    let first = doc.split("\n\n").next().unwrap_or("").replace('\n', " ");
    (first, doc.to_string())
}

fn message_schema(api: &Api, m: &MessageDescriptor, schemas: &mut Schemas) -> Value {
    let props: Map<String, Value> = m
        .fields()
        .map(|f| (f.json_name().to_string(), field_schema(api, &f, schemas)))
        .collect();
    json!({
        "type": "object",
        "description": api.message_doc(m),
        "properties": props,
    })
}

fn field_schema(api: &Api, f: &FieldDescriptor, schemas: &mut Schemas) -> Value {
    let mut s = if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            unreachable!("map fields are messages")
        };
        let value = entry.map_entry_value_field();
        json!({"type": "object", "additionalProperties": kind_schema(&value.kind(), schemas)})
    } else if f.is_list() {
        json!({"type": "array", "items": kind_schema(&f.kind(), schemas)})
    } else {
        kind_schema(&f.kind(), schemas)
    };
    let doc = api.field_doc(f);
    if !doc.is_empty() {
        if s.get("$ref").is_some() {
            // Tools built for OpenAPI 3.0 ignore siblings of $ref: wrap it.
            s = json!({"allOf": [s], "description": doc});
        } else {
            s["description"] = json!(doc);
        }
    }
    s
}

fn kind_schema(k: &Kind, schemas: &mut Schemas) -> Value {
    match k {
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Double => json!({"type": "number", "format": "double"}),
        Kind::Float => json!({"type": "number", "format": "float"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({"type": "integer", "format": "int32"}),
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"})
        }
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}),
        Kind::Enum(e) => schemas.enum_reference(e),
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Value" => json!({"description": "Any JSON value."}),
            "google.protobuf.Struct" => json!({"type": "object"}),
            "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
            "google.protobuf.Duration" => json!({
                "type": "string",
                "description": "A duration in seconds with an `s` suffix, e.g. `\"1.5s\"`.",
                "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$",
            }),
            "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            "google.protobuf.Empty" => json!({"type": "object"}),
            "google.protobuf.FieldMask" => json!({"type": "string"}),
            _ => schemas.reference(m),
        },
    }
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "The Google JSON error shape. `details` holds `google.rpc` details such as \
                        `BadRequest` with `fieldViolations`.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status code."},
                    "message": {"type": "string"},
                    "status": {"type": "string", "description": "The gRPC status name, e.g. `NOT_FOUND`."},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"@type": {"type": "string"}},
                        },
                    },
                },
            },
        },
    })
}

/// Messages and enums referred to so far, and the short names they get in `components`.
#[derive(Default)]
struct Schemas {
    messages: BTreeMap<String, MessageDescriptor>,
    done: std::collections::BTreeSet<String>,
    enums: BTreeMap<String, EnumDescriptor>,
}

impl Schemas {
    fn reference(&mut self, m: &MessageDescriptor) -> Value {
        self.messages
            .entry(m.full_name().to_string())
            .or_insert_with(|| m.clone());
        json!({"$ref": format!("#/components/schemas/{}", self.name_of(m.full_name()))})
    }

    fn enum_reference(&mut self, e: &EnumDescriptor) -> Value {
        self.enums.entry(e.full_name().to_string()).or_insert_with(|| e.clone());
        json!({"$ref": format!("#/components/schemas/{}", self.name_of(e.full_name()))})
    }

    fn next_pending(&mut self) -> Option<MessageDescriptor> {
        let name = self.messages.keys().find(|k| !self.done.contains(*k))?.clone();
        self.done.insert(name.clone());
        self.messages.get(&name).cloned()
    }

    /// The name after the package (`dispatch.v1.Job` → `Job`, nested `A.B` → `A.B`).
    fn name_of(&self, full: &str) -> String {
        let package_len = self
            .messages
            .get(full)
            .map(|m| m.package_name().len())
            .or_else(|| self.enums.get(full).map(|e| e.package_name().len()))
            .unwrap_or(0);
        if package_len == 0 {
            full.to_string()
        } else {
            full[package_len + 1..].to_string()
        }
    }
}
