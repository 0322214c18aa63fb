//! `spooky-stages`: the stage contract, the engine, the protocol adapters and the eight stages.
//!
//! ```text
//! ingress → admission → route → queue → select → hedge-retry → dispatch → egress
//! ```
//!
//! The folders are the architecture; arrows point down, and there are no circles
//! (`python3 ../shared/tools/modgraph.py stages/src` checks it in CI):
//!
//! ```text
//! adapters ─► engine ─► config ─► stages ─► contract ─► upstreams ─► body, http, units, metrics
//!   (h3, tcp)   (chain,    (TOML)    (eight)   (exchange,   (registry,
//!               inlets)                         flow, …)     clients)
//! ```
//!
//! * [`contract`] — what flows (the exchange), what a stage answers (the flow), the decisions.
//! * [`engine`] — builds the declared chain with bounded inlets and concurrency.
//! * [`stages`] — one module per stage.
//! * [`adapters`] — HTTP/3 and TCP (HTTP/1.1, HTTP/2) in front of the engine.
//! * [`upstreams`] — backends, their pooled clients, TLS towards them, balancing.
//! * [`tls`] — listeners' certificates (SNI, reload, mTLS).
//! * [`config`] — the pipeline TOML, parsed and validated with file:line:column errors.
//! * [`access_log`] — one line per exchange from its record, written off the data path.
//! * [`trace`] — sampled exchanges' spans over OTLP (the `otlp` feature).
//! * [`body`], [`by_key`], [`http`], [`units`], [`metrics`], [`workers`] — leaves every layer may
//!   use.

pub mod access_log;
pub mod adapters;
pub mod body;
pub mod by_key;
pub mod config;
pub mod contract;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod stages;
pub mod tls;
pub mod trace;
pub mod units;
pub mod upstreams;
pub mod workers;

pub use engine::Pipeline;
pub use engine::generation::Pipelines;
