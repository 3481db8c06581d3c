//! OpenTelemetry traces for the `berth` binary (feature `otel`).
//!
//! Off unless the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then every `tracing` span, one per request
//! among them, is exported over OTLP/HTTP (protobuf) by a batch processor. The other standard
//! `OTEL_*` variables (service name, resource attributes, batch settings, headers) apply.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// A boxed tracing layer over subscriber `S`.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The exporter pipeline; flushes on [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}

/// The tracing layer that exports spans, if OTLP is configured. Call before starting the async
/// runtime: the exporter runs its own blocking HTTP client.
pub fn layer<S>() -> anyhow::Result<(Option<BoxedLayer<S>>, Telemetry)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !configured() {
        return Ok((None, Telemetry { provider: None }));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("configuring the OTLP span exporter")?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("berth");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("berth");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
    Ok((
        Some(layer),
        Telemetry {
            provider: Some(provider),
        },
    ))
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("OpenTelemetry shutdown: {e}");
        }
    }
}
