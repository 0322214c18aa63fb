//! Connections to backends: TCP, and TLS for `https://` backends — verification on by default
//! against the Mozilla roots bundled by `webpki-roots` (the same on every machine, no system
//! files), or only the private CAs of `ca_file`/`ca_dir` when given; `server_name` overrides
//! SNI and the name checked; a client certificate for upstream mTLS; `verify = "off"` as an
//! explicit, loudly logged opt-out. ALPN offers `h2` and `http/1.1` as the backend's
//! `protocol` allows, and hyper switches to HTTP/2 when the backend picks it.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::body::BoxError;
use crate::tls::provider;
use crate::upstreams::config::{BackendProtocol, UpstreamTls, Verify};
use crate::upstreams::error::{ConnectError, UpstreamError};

/// Reads every PEM certificate of a file.
fn certs_in(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| UpstreamError::Pem {
            path: path.to_path_buf(),
            source,
        })
}

/// The TLS client config for one upstream.
pub fn client_config(
    tls: &UpstreamTls,
    alpn: Vec<Vec<u8>>,
    upstream: &str,
) -> Result<rustls::ClientConfig, UpstreamError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(UpstreamError::Versions)?;
    let builder = if tls.verify == Verify::Off {
        tracing::warn!(
            upstream,
            "TLS verification of this upstream's backends is OFF (verify = \"off\"): anyone on the path can impersonate them"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let mut private = Vec::new();
        if let Some(f) = &tls.ca_file {
            private.extend(certs_in(f)?);
        }
        if let Some(d) = &tls.ca_dir {
            let entries = std::fs::read_dir(d).map_err(|source| UpstreamError::CaDir {
                path: d.clone(),
                source,
            })?;
            let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.extension().is_some_and(|x| x == "pem" || x == "crt"))
            {
                private.extend(certs_in(f)?);
            }
        }
        if private.is_empty() && (tls.ca_file.is_some() || tls.ca_dir.is_some()) {
            return Err(UpstreamError::NoCa);
        }
        if private.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for c in private {
            roots.add(c).map_err(UpstreamError::Ca)?;
        }
        builder.with_root_certificates(roots)
    };
    let mut cfg = match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => {
            let chain = certs_in(c)?;
            let key = PrivateKeyDer::from_pem_file(k).map_err(|source| UpstreamError::Pem {
                path: k.clone(),
                source,
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(UpstreamError::ClientCert)?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn;
    Ok(cfg)
}

/// ALPN to offer for a backend protocol.
pub fn alpn_for(protocol: BackendProtocol) -> Vec<Vec<u8>> {
    match protocol {
        BackendProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        BackendProtocol::H2 => vec![b"h2".to_vec()],
        BackendProtocol::Http1 => vec![b"http/1.1".to_vec()],
        BackendProtocol::H2c => Vec::new(),
    }
}

/// Connects to one backend, whatever the request URI says (the URI carries the client's
/// authority for the upstream request; the address comes from config).
#[derive(Clone)]
pub struct BackendConnector {
    addr: Arc<str>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl BackendConnector {
    pub fn new(
        addr: &str,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        connect_timeout: Duration,
    ) -> Self {
        BackendConnector {
            addr: addr.into(),
            tls: tls.map(|(cfg, name)| (TlsConnector::from(cfg), name)),
            connect_timeout,
        }
    }
}

impl tower_service::Service<Uri> for BackendConnector {
    type Response = TokioIo<BackendStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(&*this.addr))
                .await
                .map_err(|_| ConnectError::TcpTimeout(this.addr.to_string()))?
                .map_err(|source| ConnectError::Tcp {
                    addr: this.addr.to_string(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let stream = match this.tls {
                None => BackendStream::Plain(tcp),
                Some((connector, name)) => {
                    let tls =
                        tokio::time::timeout(this.connect_timeout, connector.connect(name, tcp))
                            .await
                            .map_err(|_| ConnectError::TlsTimeout(this.addr.to_string()))?
                            .map_err(|source| ConnectError::Tls {
                                addr: this.addr.to_string(),
                                source,
                            })?;
                    BackendStream::Tls(Box::new(tls))
                }
            };
            Ok(TokioIo::new(stream))
        })
    }
}

/// A connection to a backend, plain or TLS.
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for BackendStream {
    fn connected(&self) -> Connected {
        match self {
            BackendStream::Plain(_) => Connected::new(),
            BackendStream::Tls(t) if t.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            BackendStream::Tls(_) => Connected::new(),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts any server certificate (handshake signatures are still checked): the upstream
/// `verify = "off"` opt-out, and `spooky-bench` against a self-signed quickstart.
#[derive(Debug)]
pub struct NoVerify(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
