//! Logs and traces for dispatch and the worker.
//!
//! - [`init`]: `tracing` subscriber with human or JSON lines (JSON lines carry the fields of
//!   every enclosing span at top level, so a line inside a job span has `job_id`, `queue`,
//!   `attempt` and `trace_id`), plus OpenTelemetry export over OTLP/gRPC when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set. The standard `OTEL_*`
//!   variables apply (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_BSP_*`...). Without an endpoint no exporter exists and spans cost what plain
//!   `tracing` spans cost.
//! - W3C trace context: [`traceparent`] of a span, [`set_parent`] of a span from a
//!   `traceparent`, [`inject`] into gRPC metadata, [`trace_id`] for log fields.

mod json;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// True when spans are exported (an OTLP endpoint is configured). Callers skip work that only
/// matters for export, such as per-message spans in a batch.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter on drop. Keep it alive for the life of the process.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        shutdown();
    }
}

/// Flushes pending spans and stops the exporter (also done by dropping the [`Guard`]).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        // Blocks while the batch processor exports; its gRPC channel runs on the Tokio runtime.
        let p = p.clone();
        let _ = std::thread::spawn(move || p.shutdown()).join();
    }
}

fn otlp_configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), human or JSON lines, and
/// the OTLP exporter when configured. `service` is the default `service.name`
/// (`OTEL_SERVICE_NAME` wins). Must run inside a Tokio runtime. Returns an error only when
/// the exporter cannot be built.
pub fn init(service: &'static str, json: bool) -> Result<Guard, String> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::FlatJson)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let otel_layer = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(service);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer(service);
        let _ = PROVIDER.set(provider);
        EXPORTING.store(true, Ordering::Relaxed);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    } else {
        None
    };
    use tracing_subscriber::Layer;
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(Guard(()))
}

/// The W3C `traceparent` of `span`, when it belongs to a trace (an exported span, or one
/// whose parent was set from a `traceparent`).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span a `traceparent` names. Ignores a malformed value.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span` as 32 hex digits, or else the one in `fallback` (a traceparent),
/// or empty. For the `trace_id` log field.
pub fn trace_id(span: &tracing::Span, fallback: &str) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        return sc.trace_id().to_string();
    }
    fallback
        .split('-')
        .nth(1)
        .filter(|t| t.len() == 32)
        .unwrap_or("")
        .to_string()
}

/// Puts the `traceparent` of `span` into outgoing gRPC metadata, or `fallback` when the span
/// is not part of a trace.
pub fn inject(span: &tracing::Span, fallback: &str, metadata: &mut tonic::metadata::MetadataMap) {
    let tp = traceparent(span).unwrap_or_else(|| fallback.to_string());
    if let Ok(v) = tp.parse()
        && !tp.is_empty()
    {
        metadata.insert("traceparent", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_falls_back_to_the_traceparent() {
        let span = tracing::Span::none();
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(trace_id(&span, tp), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(trace_id(&span, "garbage"), "");
        assert_eq!(traceparent(&span), None);
    }
}
