//! Distributed tracing (`[tracing]`, with the cargo feature `otlp`): a sampled exchange becomes
//! one span, with a child span per stage it passed and per attempt it sent to a backend,
//! exported over OTLP/gRPC. W3C `traceparent` from the client is continued (its span is the
//! exchange span's parent, its sampling decision is kept); each attempt sends the backend a
//! `traceparent` naming the attempt's span, `tracestate` passes through.
//!
//! Spans are made from the end-of-exchange record when the exchange ends, on its own task,
//! and handed to an exporter thread without waiting: when it falls behind they are dropped and
//! counted (`spooky_otlp_spans_total{outcome="dropped"}`). Built without the feature, a
//! `[tracing]` section is accepted with a warning and nothing is sampled.

#[cfg(feature = "otlp")]
mod otlp;

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use crate::contract::record::{Record, Trace};
use crate::http::trace_context::{self, TRACEPARENT};

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The OTLP/gRPC collector, `http://host:4317`.
    pub otlp_endpoint: String,
    /// The share of new traces sampled (0 to 1); a client's `traceparent` decides for its own.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "default_service")]
    pub service_name: String,
    /// Spans waiting for export; beyond it they are dropped and counted.
    #[serde(default = "default_buffer")]
    pub buffer: NonZeroUsize,
}

fn default_ratio() -> f64 {
    0.01
}

fn default_service() -> String {
    "spooky".into()
}

fn default_buffer() -> NonZeroUsize {
    NonZeroUsize::new(8192).unwrap_or(NonZeroUsize::MIN)
}

/// Whether this build can export traces.
pub const BUILT: bool = cfg!(feature = "otlp");

/// A generation's tracer: the sampling decision and where finished traces go.
pub struct Tracer {
    /// `sample_ratio` scaled to `u64::MAX`.
    threshold: u64,
    #[cfg(feature = "otlp")]
    exporter: std::sync::Arc<otlp::Exporter>,
}

impl Tracer {
    /// The tracer `[tracing]` asks for; `None` without the section, or in a build without
    /// the `otlp` feature.
    pub fn open(config: Option<&Config>) -> Option<Tracer> {
        let config = config?;
        #[cfg(feature = "otlp")]
        {
            Some(Tracer {
                threshold: (config.sample_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
                exporter: otlp::Exporter::open(config),
            })
        }
        #[cfg(not(feature = "otlp"))]
        {
            let _ = config;
            None
        }
    }

    /// Decides whether an exchange with these request headers is traced: the client's
    /// sampled flag when it sent a `traceparent`, the ratio otherwise.
    pub fn sample(&self, headers: &http::HeaderMap) -> Option<Box<Trace>> {
        let parent = headers.get(TRACEPARENT).and_then(trace_context::parse);
        let sampled = match parent {
            Some(p) => p.sampled,
            None => self.threshold == u64::MAX || fastrand::u64(..) < self.threshold,
        };
        sampled.then(|| {
            Box::new(Trace {
                trace_id: parent.map_or_else(trace_context::new_trace_id, |p| p.trace_id),
                span_id: trace_context::new_span_id(),
                parent: parent.map(|p| p.parent_id),
                attempts: Default::default(),
            })
        })
    }

    /// Exports a finished exchange's spans (a traced one), without waiting.
    pub fn export(&self, r: &Record) {
        #[cfg(feature = "otlp")]
        if r.trace.is_some() {
            self.exporter.export(r);
        }
        #[cfg(not(feature = "otlp"))]
        let _ = r;
    }
}
