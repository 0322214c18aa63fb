//! Protocol adapters: where clients meet the pipeline. HTTP/3 over QUIC (`h3`) and HTTP/1.1 or
//! HTTP/2 over TCP (`tcp`) each accept connections, guard request heads, build exchanges and
//! answer through their own responder; nothing below them knows which protocol it serves.

pub mod client_limit;
pub mod h3;
pub mod tcp;
