//! The HTTP side: the REST gateway generated from the proto's `google.api.http` annotations
//! (see `tools/restgen` and `build.rs`), the OpenAPI document and the HTML reference.
//!
//! - [`transcode`]: the runtime of the generated routes (matching, JSON, SSE).
//! - [`error`]: gRPC status → HTTP status and the Google JSON error shape.
//!
//! Every `/api/...` request goes through one handler: it finds the generated route (custom
//! verbs such as `:cancel` included), reads the body within the limit, builds the request
//! message from body, query and path, and calls the same service code as gRPC.

pub mod error;
mod fields;
pub mod transcode;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Http;
use crate::service::{JobApi, WorkerApi};
use transcode::{Found, Input};

/// The generated route table (`ROUTES`), `Services` and `call`.
#[allow(clippy::all)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/rest_routes.rs"));
}

pub use generated::ROUTES;

/// The OpenAPI 3 document generated from the proto at build time.
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The HTML API reference generated with it.
pub const API_HTML: &str = include_str!(concat!(env!("OUT_DIR"), "/api.html"));

#[derive(Clone)]
struct Gateway {
    services: generated::Services<JobApi, WorkerApi>,
    limits: Http,
    keys: Option<crate::auth::Keys>,
    shutdown: CancellationToken,
}

/// The HTTP router: REST routes under `/api`, `/api/openapi.json`, `/api/docs`. With `keys`,
/// every route needs a key whose role may call its RPC (the OpenAPI document and the docs
/// page stay open).
pub fn router(
    jobs: JobApi,
    workers: WorkerApi,
    limits: Http,
    keys: Option<crate::auth::Keys>,
    shutdown: CancellationToken,
) -> axum::Router {
    let origins = std::sync::Arc::new(limits.cors_origins.clone());
    let gateway = Gateway {
        services: generated::Services {
            job_service: std::sync::Arc::new(jobs),
            worker_service: std::sync::Arc::new(workers),
        },
        limits,
        keys,
        shutdown,
    };
    axum::Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/docs", get(docs))
        .method_not_allowed_fallback(|req: Request| async move { method_not_allowed(req.uri().path(), &["GET"]) })
        .fallback(handle)
        .with_state(gateway)
        .layer(axum::middleware::from_fn_with_state(origins, cors))
}

/// CORS for the origins in `http.cors_origins` (none by default: browsers then refuse pages
/// of other origins): a preflight from one of them is answered here (204, the methods and
/// the `authorization` and `content-type` headers allowed, cached 10 min); its requests get
/// `Access-Control-Allow-Origin` naming it. Authentication applies as to any other caller.
async fn cors(
    State(origins): State<std::sync::Arc<Vec<String>>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| origins.iter().any(|a| a == "*" || a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight = req.method() == axum::http::Method::OPTIONS
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(header::VARY, HeaderValue::from_static("origin"));
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        } else {
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after, www-authenticate"),
            );
        }
    }
    resp
}

/// `GET /metrics`: the Prometheus text exposition of `metrics`.
pub fn metrics_router(metrics: crate::metrics::Metrics, store: crate::store::Store) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let (metrics, store) = (metrics.clone(), store.clone());
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    metrics.render(&store).await,
                )
            }
        }),
    )
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn docs() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], API_HTML).into_response()
}

fn method_not_allowed(path: &str, allowed: &[&str]) -> Response {
    let status = tonic::Status::unimplemented(format!("method not allowed on {path}; use {}", allowed.join(" or ")));
    let mut resp = error::with_status(&status, StatusCode::METHOD_NOT_ALLOWED);
    if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

fn bad_request(message: String) -> Response {
    error::response(&tonic::Status::invalid_argument(message))
}

async fn handle(State(g): State<Gateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let (index, vars) = match transcode::find(ROUTES, &parts.method, &path) {
        Found::Route(i, vars) => (i, vars),
        Found::WrongMethod(allowed) => return method_not_allowed(&path, &allowed),
        Found::Nothing => {
            return error::response(&tonic::Status::not_found(format!(
                "no route for {} {path}; see /api/docs",
                parts.method
            )));
        }
    };
    let spec = &ROUTES[index];
    let identity = match &g.keys {
        None => None,
        Some(keys) => {
            let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match keys.check(spec.rpc, authorization) {
                Ok(id) => Some(id),
                Err(refusal) => {
                    crate::auth::audit_refusal(spec.rpc, &refusal, None);
                    let mut resp = error::response(&refusal.status(spec.rpc));
                    if matches!(refusal, crate::auth::Refusal::Unauthenticated(_)) {
                        resp.headers_mut()
                            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    }
                    return resp;
                }
            }
        }
    };
    let mut json = Map::new();
    if spec.body {
        let deadline = Duration::from_millis(g.limits.body_timeout_ms);
        match read_json_body(&parts.headers, body, g.limits.max_body_bytes, deadline).await {
            Ok(obj) => json = obj,
            Err(resp) => return resp,
        }
    }
    if let Some(q) = parts.uri.query()
        && let Err(s) = transcode::merge_query(spec, q, &mut json)
    {
        return error::response(&s);
    }
    for (field, value) in vars {
        json.insert(field.to_string(), Value::String(value));
    }
    let input = Input {
        rpc: spec.rpc,
        json,
        headers: parts.headers,
        shutdown: g.shutdown.clone(),
        sse_keep_alive: Duration::from_millis(g.limits.sse_keep_alive_ms),
        identity,
    };
    generated::call(&g.services, index, input).await
}

/// The body as a JSON object: empty means `{}`; anything else must be `application/json`,
/// within `limit` bytes, arrived within `deadline`, and an object.
async fn read_json_body(
    headers: &axum::http::HeaderMap,
    body: Body,
    limit: usize,
    deadline: Duration,
) -> Result<Map<String, Value>, Response> {
    let too_large = || {
        error::with_status(
            &tonic::Status::invalid_argument(format!("request body is larger than {limit} bytes")),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(read) => read,
        Err(_) => {
            return Err(error::with_status(
                &tonic::Status::deadline_exceeded(format!(
                    "the request body did not arrive within {} ms",
                    deadline.as_millis()
                )),
                StatusCode::REQUEST_TIMEOUT,
            ));
        }
    };
    let bytes = match read {
        Ok(b) => b,
        Err(e) => {
            // The only error besides an I/O one is the length limit.
            let is_limit = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return Err(if is_limit {
                too_large()
            } else {
                bad_request(format!("reading the request body: {e}"))
            });
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        let shown = if content_type.is_empty() { "none" } else { content_type };
        return Err(error::with_status(
            &tonic::Status::invalid_argument(format!(
                "request body must be JSON (Content-Type: application/json), got {shown}"
            )),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(bad_request("request body must be a JSON object".into())),
        Err(e) => Err(bad_request(format!("malformed JSON: {e}"))),
    }
}
