//! `spooky-stages`: the stage contract, the engine, the protocol adapters and the eight stages.
//!
//! ```text
//! ingress → admission → route → queue → select → hedge-retry → dispatch → egress
//! ```
//!
//! * [`exchange`] / [`flow`] — what flows, and what a stage answers.
//! * [`engine`] — builds the declared chain with bounded inlets and concurrency.
//! * [`stages`] — one module per stage.
//! * [`h3_server`] — the HTTP/3 adapter (quinn + h3) that feeds ingress.
//! * [`config`] — the pipeline TOML, parsed and validated with file:line:column errors.

pub mod body;
pub mod client_limit;
pub mod config;
pub mod conn_clock;
pub mod engine;
pub mod exchange;
pub mod flow;
pub mod grpc;
pub mod h1_guard;
pub mod h3_guard;
pub mod h3_server;
pub mod headers;
pub mod identity;
pub mod metrics;
pub mod path;
pub mod responder;
pub mod stages;
pub mod tcp_server;
pub mod tls;
pub mod upstream;
pub mod upstream_tls;

pub use engine::Pipeline;
