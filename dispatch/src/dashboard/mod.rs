//! The dashboard: one page of plain HTML, CSS and JavaScript compiled into the binary (no
//! CDN, no build step, works offline), served at `/` on the HTTP port. It reads and acts
//! through the REST API like any other client, so every action is checked against the
//! caller's key; the files themselves hold no data and are served to anyone.
//!
//! Pages (hash routes): `#/` queues with counts and the last hour's chart, `#/queue/NAME`
//! jobs by state with filters, pause/resume and bulk retry/cancel, `#/job/ID` one job with
//! its history, `#/workers` the workers connected now.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The page may load only its own script and style, call only its own origin, and not be
/// framed by another site.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `/`, `/ui/app.js`, `/ui/app.css` and `/ui/config.json` (the Jaeger URL for trace links).
pub fn router(jaeger_url: &str) -> axum::Router {
    let config = serde_json::json!({ "jaegerUrl": jaeger_url.trim_end_matches('/') }).to_string();
    axum::Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/config.json",
            get(move || {
                let config = config.clone();
                async move { asset("application/json", config) }
            }),
        )
}

fn asset(content_type: &'static str, body: impl Into<String>) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body.into()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
