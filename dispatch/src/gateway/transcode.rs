//! The runtime the generated routes (`rest_routes.rs`) call into: path templates with custom
//! verbs, building a request message from path, query and body, and turning the RPC's answer
//! into JSON or Server-Sent Events.

use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::error;

/// One REST binding of an RPC, as generated from its `google.api.http` rule.
#[derive(Debug)]
pub struct RouteSpec {
    /// `dispatch.v1.JobService/CancelJob`.
    pub rpc: &'static str,
    pub http_method: &'static str,
    /// The template as written in the proto.
    pub template: &'static str,
    pub segments: &'static [Seg],
    /// Custom verb after the last segment (`cancel` in `{id}:cancel`).
    pub verb: Option<&'static str>,
    /// True when the whole request message is the JSON body.
    pub body: bool,
    /// True for server-streaming RPCs, served as Server-Sent Events.
    pub streaming: bool,
    /// Fields that may be set from the query string.
    pub query: &'static [QueryField],
}

/// A path segment: literal text, or a request field (by JSON name) filled from the path.
#[derive(Debug)]
pub enum Seg {
    Lit(&'static str),
    Field(&'static str),
}

/// A request field settable from the query string (by JSON or proto name).
#[derive(Debug)]
pub struct QueryField {
    pub name: &'static str,
    pub json: &'static str,
    pub kind: QueryKind,
    pub repeated: bool,
}

/// How a query value becomes JSON.
#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    /// Strings, enums by name, durations, timestamps: kept as a JSON string.
    Text,
    /// `true` / `false`.
    Bool,
    /// Numbers: a JSON string, which the proto3 JSON parser reads as a number.
    Number,
}

impl RouteSpec {
    /// The path variables (JSON name, decoded value) when `path` fits this template.
    pub fn match_path(&self, path: &str) -> Option<Vec<(&'static str, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match self.verb {
            Some(v) => {
                let rest = path.strip_suffix(v)?.strip_suffix(':')?;
                // The verb belongs to the last segment, never to an earlier one.
                if rest.ends_with('/') {
                    return None;
                }
                rest
            }
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut vars = Vec::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Seg::Lit(l) if *l == part => {}
                Seg::Lit(_) => return None,
                Seg::Field(_) if part.is_empty() => return None,
                Seg::Field(name) => {
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8_lossy()
                        .into_owned();
                    vars.push((*name, value));
                }
            }
        }
        Some(vars)
    }
}

/// What a request path and method resolve to.
pub enum Found {
    Route(usize, Vec<(&'static str, String)>),
    /// The path exists but not for this method; these methods would do.
    WrongMethod(Vec<&'static str>),
    Nothing,
}

/// Finds the route for `method` and `path`.
pub fn find(routes: &[RouteSpec], method: &Method, path: &str) -> Found {
    let mut allowed = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        if let Some(vars) = r.match_path(path) {
            if r.http_method == method.as_str() {
                return Found::Route(i, vars);
            }
            if !allowed.contains(&r.http_method) {
                allowed.push(r.http_method);
            }
        }
    }
    if allowed.is_empty() {
        Found::Nothing
    } else {
        Found::WrongMethod(allowed)
    }
}

/// Adds the query string's fields to `obj`; unknown or malformed ones are field violations.
pub fn merge_query(spec: &RouteSpec, query: &str, obj: &mut Map<String, Value>) -> Result<(), tonic::Status> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| error::field_violation("query", &format!("malformed query string: {e}")))?;
    for (key, raw) in pairs {
        let Some(field) = spec.query.iter().find(|f| f.json == key || f.name == key) else {
            let known: Vec<&str> = spec.query.iter().map(|f| f.json).collect();
            let hint = if known.is_empty() {
                "this route takes no query parameters".to_string()
            } else {
                format!("known: {}", known.join(", "))
            };
            return Err(error::field_violation(
                &key,
                &format!("unknown query parameter ({hint})"),
            ));
        };
        let value = match field.kind {
            QueryKind::Text | QueryKind::Number => Value::String(raw),
            QueryKind::Bool => match raw.as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => return Err(error::field_violation(field.json, "must be true or false")),
            },
        };
        if field.repeated {
            match obj.entry(field.json).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(items) => items.push(value),
                _ => return Err(error::field_violation(field.json, "given twice")),
            }
        } else if obj.insert(field.json.to_string(), value).is_some() {
            return Err(error::field_violation(field.json, "given more than once"));
        }
    }
    Ok(())
}

/// A transcoded call: the request as a proto3-JSON object, the headers worth forwarding, and
/// the token that ends streams at shutdown.
pub struct Input {
    /// `dispatch.v1.JobService/CreateJob`.
    pub rpc: &'static str,
    pub json: Map<String, Value>,
    pub headers: HeaderMap,
    pub shutdown: CancellationToken,
    pub sse_keep_alive: Duration,
    /// The caller, when authentication is on (checked before the request is decoded).
    pub identity: Option<crate::auth::Identity>,
}

/// HTTP headers copied into gRPC metadata (trace context, identity, request ids).
const FORWARDED: &[&str] = &[
    "traceparent",
    "tracestate",
    "authorization",
    "user-agent",
    "x-request-id",
];

/// Parses the JSON object into the request message of `rpc`; a value of the wrong kind is a
/// field violation naming the JSON path as written (e.g. `options.maxAttempts`) and saying
/// what the field takes.
fn decode<Req: DeserializeOwned>(rpc: &str, json: Map<String, Value>) -> Result<Req, tonic::Status> {
    serde_path_to_error::deserialize(Value::Object(json)).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            return error::field_violation(
                "body",
                &format!("must be a JSON object of the request: {}", e.into_inner()),
            );
        }
        let description = super::fields::expected(rpc, &path).unwrap_or_else(|| e.into_inner().to_string());
        error::field_violation(&path, &description)
    })
}

fn request<Req>(msg: Req, headers: &HeaderMap, identity: Option<&crate::auth::Identity>) -> tonic::Request<Req> {
    let mut req = tonic::Request::new(msg);
    if let Some(id) = identity {
        req.extensions_mut().insert(id.clone());
    }
    for name in FORWARDED {
        if let Some(v) = headers.get(*name).and_then(|v| v.to_str().ok())
            && let Ok(v) = v.parse()
        {
            req.metadata_mut().insert(*name, v);
        }
    }
    req
}

/// The proto3 JSON of a response of `rpc`, with integral numbers printed as integers and
/// counts shown even when zero.
fn to_json<T: Serialize>(rpc: &str, msg: &T) -> Result<Value, serde_json::Error> {
    let mut v = serde_json::to_value(msg)?;
    dispatch_client::json::normalize_numbers(&mut v);
    super::fields::show_defaults(rpc, &mut v);
    Ok(v)
}

/// A unary RPC: JSON in, JSON out (200), or the error shape.
pub async fn unary<Req, Resp, F, Fut>(input: Input, call: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let snake = super::fields::snake_keys(&input.json);
    let msg = match decode::<Req>(input.rpc, input.json) {
        Ok(m) => m,
        Err(s) => return error::response(&s),
    };
    match call(request(msg, &input.headers, input.identity.as_ref()))
        .await
        .map_err(|s| super::fields::in_callers_words(s, &snake))
    {
        Ok(resp) => match to_json(input.rpc, resp.get_ref()) {
            Ok(v) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                v.to_string(),
            )
                .into_response(),
            Err(e) => error::response(&tonic::Status::internal(format!("encoding the response: {e}"))),
        },
        Err(s) => error::response(&s),
    }
}

/// A server-streaming RPC as Server-Sent Events: one `data:` JSON line per message. An
/// error before the first message is an ordinary error response; one after it is sent as an
/// `event: error` carrying the error shape, and ends the stream.
pub async fn server_stream<Req, Resp, St, F, Fut>(input: Input, call: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize + Send + 'static,
    St: Stream<Item = Result<Resp, tonic::Status>> + Send + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<St>, tonic::Status>>,
{
    let snake = super::fields::snake_keys(&input.json);
    let rpc = input.rpc;
    let msg = match decode::<Req>(input.rpc, input.json) {
        Ok(m) => m,
        Err(s) => return error::response(&s),
    };
    let stream = match call(request(msg, &input.headers, input.identity.as_ref())).await {
        Ok(resp) => resp.into_inner(),
        Err(s) => return error::response(&super::fields::in_callers_words(s, &snake)),
    };
    let events = stream
        .scan(false, |failed, item| {
            // Stop after the first error has been sent.
            if *failed {
                return futures::future::ready(None);
            }
            let event = match item {
                Ok(msg) => match to_json(rpc, &msg) {
                    Ok(v) => Event::default().data(v.to_string()),
                    Err(e) => Event::default().event("error").data(e.to_string()),
                },
                Err(status) => {
                    *failed = true;
                    let http = error::http_status(status.code());
                    Event::default()
                        .event("error")
                        .json_data(error::body(&status, http))
                        .unwrap_or_else(|_| Event::default().event("error").data(status.message()))
                }
            };
            futures::future::ready(Some(Ok::<_, std::convert::Infallible>(event)))
        })
        .take_until(input.shutdown.cancelled_owned());
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(input.sse_keep_alive))
        .into_response()
}

/// The generated `call` was given an index with no route (never happens with `find`).
pub fn no_route() -> Response {
    error::response(&tonic::Status::not_found("no such route"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: RouteSpec = RouteSpec {
        rpc: "t.S/Get",
        http_method: "GET",
        template: "/api/job/{id}",
        segments: &[Seg::Lit("api"), Seg::Lit("job"), Seg::Field("id")],
        verb: None,
        body: false,
        streaming: false,
        query: &[QueryField {
            name: "page_size",
            json: "pageSize",
            kind: QueryKind::Number,
            repeated: false,
        }],
    };
    const CANCEL: RouteSpec = RouteSpec {
        rpc: "t.S/Cancel",
        http_method: "POST",
        template: "/api/job/{id}:cancel",
        segments: &[Seg::Lit("api"), Seg::Lit("job"), Seg::Field("id")],
        verb: Some("cancel"),
        body: true,
        streaming: false,
        query: &[],
    };

    #[test]
    fn templates_match_with_verbs_and_decoding() {
        assert_eq!(
            GET.match_path("/api/job/a%20b").unwrap(),
            vec![("id", "a b".to_string())]
        );
        assert_eq!(
            CANCEL.match_path("/api/job/x:cancel").unwrap(),
            vec![("id", "x".to_string())]
        );
        assert!(CANCEL.match_path("/api/job/x").is_none());
        assert!(CANCEL.match_path("/api/job/:cancel").is_none());
        assert!(GET.match_path("/api/job/").is_none());
        assert!(GET.match_path("/api/job/x/y").is_none());
        assert!(GET.match_path("/api/jobs/x").is_none());
    }

    #[test]
    fn method_picks_the_route_or_lists_the_allowed() {
        let routes = [GET, CANCEL];
        assert!(matches!(
            find(&routes, &Method::POST, "/api/job/x:cancel"),
            Found::Route(1, _)
        ));
        // GET on the verb path is GetJob of an id that contains ":cancel".
        assert!(matches!(
            find(&routes, &Method::GET, "/api/job/x:cancel"),
            Found::Route(0, _)
        ));
        match find(&routes, &Method::DELETE, "/api/job/x") {
            Found::WrongMethod(m) => assert_eq!(m, vec!["GET"]),
            _ => panic!("expected 405"),
        }
        assert!(matches!(find(&routes, &Method::GET, "/nope"), Found::Nothing));
    }

    #[test]
    fn query_values_become_json_fields() {
        let mut obj = Map::new();
        merge_query(&GET, "page_size=10", &mut obj).unwrap();
        assert_eq!(obj["pageSize"], Value::String("10".into()));
        let mut obj = Map::new();
        let err = merge_query(&GET, "pagesize=10", &mut obj).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(merge_query(&GET, "pageSize=1&pageSize=2", &mut Map::new()).is_err());
        assert!(merge_query(&CANCEL, "x=1", &mut Map::new()).is_err());
    }
}
