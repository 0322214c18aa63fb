//! HTTP semantics shared by every layer, with no state of their own: hop-by-hop headers, path
//! normalization, host patterns, request keys, gRPC's conventions and WebSocket handshakes. Nothing here imports
//! another module of the crate.

pub mod connect_allow;
pub mod forwarded;
pub mod grpc;
pub mod headers;
pub mod host;
pub mod key;
pub mod path;
pub mod request_id;
pub mod trace_context;
pub mod upgrade;
