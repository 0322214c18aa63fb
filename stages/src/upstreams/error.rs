//! What can go wrong building an upstream (its backends' addresses, TLS, clients) and
//! connecting to a backend: one error type per boundary, each keeping its source.

use std::path::PathBuf;

/// Building an upstream from its config.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("\"{url}\" is not a URL: {source}")]
    NotUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("\"{0}\": expected an http:// or https:// URL")]
    Scheme(String),
    #[error("\"{0}\": expected a host, as in http://127.0.0.1:8080")]
    NoHost(String),
    #[error("\"{0}\": a backend URL takes no path or query")]
    Path(String),
    #[error("server_name \"{name}\": {source}")]
    ServerName {
        name: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    #[error("{}: not PEM certificates: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: {source}", path.display())]
    CaDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ca_file/ca_dir hold no certificate")]
    NoCa,
    /// A key validation reports first, with file and line.
    #[error("{0}")]
    Config(String),
    #[error("CA certificate: {0}")]
    Ca(#[source] rustls::Error),
    #[error("client certificate: {0}")]
    ClientCert(#[source] rustls::Error),
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
}

/// Connecting to a backend (the cause of an attempt's `Connect` failure).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("tcp connect to {0} timed out")]
    TcpTimeout(String),
    #[error("tcp connect to {addr}")]
    Tcp {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {0} timed out")]
    TlsTimeout(String),
    #[error("QUIC handshake with {0} timed out")]
    QuicTimeout(String),
    #[error("QUIC connection to {addr}")]
    Quic {
        addr: String,
        #[source]
        source: crate::body::BoxError,
    },
    #[error("TLS handshake with {addr}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}
