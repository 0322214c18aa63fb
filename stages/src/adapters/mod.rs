//! Protocol adapters: where clients meet the pipeline. HTTP/3 over QUIC (`h3`) and HTTP/1.1 or
//! HTTP/2 over TCP (`tcp`) each accept connections, guard request heads, build exchanges and
//! answer through their own responder; nothing below them knows which protocol it serves.

pub mod client_limit;
pub mod h3;
pub mod sockets;
pub mod swap;
pub mod tcp;

/// What can go wrong binding a listener.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("listener \"{listener}\": cannot bind {transport} {addr}: {source}")]
    Bind {
        listener: String,
        transport: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("idle_timeout: {0}")]
    IdleTimeout(#[source] quinn::VarIntBoundsExceeded),
    #[error("alt_svc: {0}")]
    AltSvc(#[source] http::header::InvalidHeaderValue),
}
