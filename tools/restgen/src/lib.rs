//! Build-time generator for the REST gateway, driven by the `google.api.http` annotations
//! in the proto descriptors (the one source of truth for gRPC and REST).
//!
//! # Layout
//! - [`Api::from_descriptor_set`] (this file): reads an encoded `FileDescriptorSet` (with
//!   extension options kept, e.g. from `protox`'s `encode_file_descriptor_set`) into routes.
//! - [`rust`]: the Rust route table and the typed `call` function the gateway dispatches to.
//! - [`openapi`]: the OpenAPI 3 document, following the proto3 JSON mapping.
//! - [`html`]: a self-contained HTML API reference.
//!
//! Supported path templates: literal segments, single-segment variables (`{id}`) naming a
//! top-level string field of the request, and a trailing custom verb (`/api/job/{id}:cancel`).
//! Bodies: `body: "*"` or none. Anything else is refused at build time with a clear error.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value};

pub mod html;
pub mod openapi;
pub mod rust;

/// A failure to read the descriptors or an annotation this generator does not support.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this text.
    Literal(String),
    /// Any one non-empty segment, bound to the request field with this proto name.
    Field(String),
}

/// One REST binding of an RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// Proto service name, e.g. `JobService`.
    pub service: String,
    /// Proto package, e.g. `dispatch.v1`.
    pub package: String,
    /// Proto method name, e.g. `CancelJob`.
    pub method: String,
    /// Upper-case HTTP method.
    pub http_method: String,
    /// The template as written in the proto, e.g. `/api/job/{id}:cancel`.
    pub template: String,
    pub segments: Vec<Segment>,
    /// Custom verb after the last segment (`cancel` in `{id}:cancel`).
    pub verb: Option<String>,
    /// True for `body: "*"`: the whole request message is the JSON body.
    pub body: bool,
    pub server_streaming: bool,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    /// Leading comment of the RPC.
    pub doc: String,
}

impl Route {
    /// Request fields bound by the path.
    pub fn path_fields(&self) -> Vec<FieldDescriptor> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Field(f) => self.input.get_field_by_name(f),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// Request fields read from the query string: every top-level field that is neither in
    /// the path nor in the body (Google's transcoding rules; nested messages are not offered).
    pub fn query_fields(&self) -> Vec<FieldDescriptor> {
        if self.body {
            return Vec::new();
        }
        let path = self.path_fields();
        self.input
            .fields()
            .filter(|f| !path.iter().any(|p| p.number() == f.number()))
            .filter(|f| !f.is_map() && query_kind(f).is_some())
            .collect()
    }

    /// `JobService.CancelJob` style id, unique per route.
    pub fn operation_id(&self) -> String {
        format!("{}_{}", self.service, self.method)
    }
}

/// How a query-string value becomes JSON for a field, or `None` when the field cannot be
/// set from the query string (messages other than well-known scalars).
pub fn query_kind(f: &FieldDescriptor) -> Option<&'static str> {
    Some(match f.kind() {
        Kind::String | Kind::Bytes | Kind::Enum(_) => "Text",
        Kind::Bool => "Bool",
        Kind::Double
        | Kind::Float
        | Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Fixed32
        | Kind::Fixed64
        | Kind::Sfixed32
        | Kind::Sfixed64 => "Number",
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Duration" | "google.protobuf.Timestamp" | "google.protobuf.FieldMask" => "Text",
            _ => return None,
        },
    })
}

/// Everything the generators need: the routes and the descriptors they refer to.
pub struct Api {
    pub pool: DescriptorPool,
    pub routes: Vec<Route>,
    comments: HashMap<(String, Vec<i32>), String>,
}

impl Api {
    /// Reads every service method carrying a `google.api.http` rule in `packages`.
    pub fn from_descriptor_set(bytes: &[u8], packages: &[&str]) -> Result<Api, Error> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| Error(format!("decoding descriptors: {e}")))?;
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            return err("google/api/annotations.proto is not in the descriptor set (include imports)");
        };
        let mut comments = HashMap::new();
        for file in pool.files() {
            if let Some(info) = &file.file_descriptor_proto().source_code_info {
                for loc in &info.location {
                    if let Some(c) = &loc.leading_comments {
                        comments.insert((file.name().to_string(), loc.path.clone()), clean_comment(c));
                    }
                }
            }
        }
        let mut routes = Vec::new();
        for service in pool.services() {
            if !packages.contains(&service.package_name()) {
                continue;
            }
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule = options.get_extension(&http);
                let Value::Message(rule) = rule.as_ref() else {
                    return err(format!("{}: google.api.http is not a message", method.full_name()));
                };
                let route = route_from_rule(&method, rule, &comments)?;
                if routes
                    .iter()
                    .any(|r: &Route| r.http_method == route.http_method && r.template == route.template)
                {
                    return err(format!("{} {} is bound twice", route.http_method, route.template));
                }
                routes.push(route);
            }
        }
        Ok(Api { pool, routes, comments })
    }

    /// The leading comment of a message, field or enum, by its file and source path.
    pub fn comment(&self, file: &str, path: &[i32]) -> &str {
        self.comments
            .get(&(file.to_string(), path.to_vec()))
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Leading comment of a message.
    pub fn message_doc(&self, m: &MessageDescriptor) -> &str {
        self.comment(m.parent_file().name(), m.path())
    }

    /// Leading comment of a field.
    pub fn field_doc(&self, f: &FieldDescriptor) -> &str {
        self.comment(f.parent_file().name(), f.path())
    }
}

fn route_from_rule(
    method: &MethodDescriptor,
    rule: &prost_reflect::DynamicMessage,
    comments: &HashMap<(String, Vec<i32>), String>,
) -> Result<Route, Error> {
    let name = method.full_name().to_string();
    if method.is_client_streaming() {
        return err(format!("{name}: client-streaming RPCs cannot be bound to REST"));
    }
    let text = |field: &str| match rule.get_field_by_name(field).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let mut binding = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            binding = Some((verb.to_uppercase(), text(verb)));
        }
    }
    let Some((http_method, template)) = binding else {
        return err(format!("{name}: only get/put/post/delete/patch bindings are supported"));
    };
    if rule.has_field_by_name("additional_bindings")
        && matches!(rule.get_field_by_name("additional_bindings").as_deref(), Some(Value::List(l)) if !l.is_empty())
    {
        return err(format!("{name}: additional_bindings are not supported"));
    }
    let body = match text("body").as_str() {
        "" => false,
        "*" => true,
        other => return err(format!("{name}: body \"{other}\" is not supported; use \"*\" or none")),
    };
    if body && http_method == "GET" {
        return err(format!("{name}: a GET binding cannot have a body"));
    }
    if !text("response_body").is_empty() {
        return err(format!("{name}: response_body is not supported"));
    }
    let (segments, verb) = parse_template(&template).map_err(|e| Error(format!("{name}: {template}: {e}")))?;
    let input = method.input();
    for s in &segments {
        if let Segment::Field(f) = s {
            match input.get_field_by_name(f) {
                Some(fd) if fd.kind() == Kind::String && !fd.is_list() => {}
                Some(_) => return err(format!("{name}: path field `{f}` must be a singular string")),
                None => return err(format!("{name}: path field `{f}` is not in {}", input.full_name())),
            }
        }
    }
    let doc = comments
        .get(&(method.parent_file().name().to_string(), method.path().to_vec()))
        .cloned()
        .unwrap_or_default();
    Ok(Route {
        service: method.parent_service().name().to_string(),
        package: method.parent_service().package_name().to_string(),
        method: method.name().to_string(),
        http_method,
        template,
        segments,
        verb,
        body,
        server_streaming: method.is_server_streaming(),
        input,
        output: method.output(),
        doc,
    })
}

/// Parses `/a/{field}/b:verb` into segments and an optional verb.
pub fn parse_template(t: &str) -> Result<(Vec<Segment>, Option<String>), String> {
    let Some(rest) = t.strip_prefix('/') else {
        return Err("must start with /".into());
    };
    // The verb is after the last ':' that follows the last '/' and is not inside braces.
    let last = rest.rsplit('/').next().unwrap_or("");
    let (rest, verb) = match last.rfind(':') {
        Some(i) if !last[i..].contains('}') => {
            let cut = rest.len() - (last.len() - i);
            (&rest[..cut], Some(rest[cut + 1..].to_string()))
        }
        _ => (rest, None),
    };
    if let Some(v) = &verb
        && (v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(format!("bad verb `{v}`"));
    }
    let mut segments = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err("empty segment".into());
        }
        if let Some(inner) = seg.strip_prefix('{') {
            let Some(field) = inner.strip_suffix('}') else {
                return Err(format!("variable `{seg}` must fill its whole segment"));
            };
            if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "variable `{{{field}}}`: only top-level fields without `=` patterns"
                ));
            }
            segments.push(Segment::Field(field.to_string()));
        } else if seg.contains(['{', '}', '*']) {
            return Err(format!(
                "segment `{seg}`: wildcards and partial variables are not supported"
            ));
        } else {
            segments.push(Segment::Literal(seg.to_string()));
        }
    }
    Ok((segments, verb))
}

/// Strips the single leading space protoc leaves on each comment line.
fn clean_comment(c: &str) -> String {
    c.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// `CancelJob` → `cancel_job`.
pub fn snake_case(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_with_verbs_and_fields() {
        let (s, v) = parse_template("/api/job/{id}:cancel").unwrap();
        assert_eq!(
            s,
            vec![
                Segment::Literal("api".into()),
                Segment::Literal("job".into()),
                Segment::Field("id".into())
            ]
        );
        assert_eq!(v.as_deref(), Some("cancel"));
        let (s, v) = parse_template("/api/jobs:batch").unwrap();
        assert_eq!(s, vec![Segment::Literal("api".into()), Segment::Literal("jobs".into())]);
        assert_eq!(v.as_deref(), Some("batch"));
        let (s, v) = parse_template("/api/job/{id}/events").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(v, None);
    }

    #[test]
    fn unsupported_templates_are_refused() {
        for t in [
            "api/job",
            "/api//job",
            "/api/{name=jobs/*}",
            "/api/v{n}",
            "/api/**",
            "/api/job:",
        ] {
            assert!(parse_template(t).is_err(), "{t} should be refused");
        }
    }

    #[test]
    fn snake_case_of_rpc_names() {
        assert_eq!(snake_case("CancelJob"), "cancel_job");
        assert_eq!(snake_case("Heartbeat"), "heartbeat");
    }
}
