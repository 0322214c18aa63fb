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
        BackendProtocol::H3 => vec![b"h3".to_vec()],
    }
}

/// Connects to one backend, whatever the request URI says (the URI carries the client's
/// authority for the upstream request; the address comes from config).
#[derive(Clone)]
pub struct BackendConnector {
    addr: Arc<str>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    metrics: Arc<ConnMetrics>,
}

/// A pool's connections: open now (the open and idle gauges are set from it at scrape time),
/// and connects by result.
pub struct ConnMetrics {
    pub(crate) open_now: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) ok: metrics::Counter,
    pub(crate) failed: metrics::Counter,
    pub(crate) timeout: metrics::Counter,
}

impl ConnMetrics {
    /// The metrics of the pool `upstream`'s backend `backend` uses (registered at zero).
    pub fn new(upstream: &str, backend: &str) -> ConnMetrics {
        use crate::metrics::UPSTREAM_CONNECTS;
        let (u, b) = (upstream.to_string(), backend.to_string());
        let connects = |result: &'static str| {
            let c = metrics::counter!(UPSTREAM_CONNECTS, "upstream" => u.clone(), "backend" => b.clone(), "result" => result);
            c.increment(0);
            c
        };
        ConnMetrics {
            open_now: Arc::default(),
            ok: connects("ok"),
            failed: connects("failed"),
            timeout: connects("timeout"),
        }
    }
}

impl ConnMetrics {
    /// The pool's open connections, counted as they open and close.
    pub fn open_now(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.open_now.clone()
    }
}

impl BackendConnector {
    pub fn new(
        addr: &str,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        connect_timeout: Duration,
        metrics: ConnMetrics,
    ) -> Self {
        BackendConnector {
            addr: addr.into(),
            tls: tls.map(|(cfg, name)| (TlsConnector::from(cfg), name)),
            connect_timeout,
            metrics: Arc::new(metrics),
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
        Box::pin(async move { Ok(TokioIo::new(this.open().await?)) })
    }
}

impl BackendConnector {
    /// A new connection to the backend, counted (connects by result, open while it lives).
    pub async fn open(self) -> Result<BackendStream, ConnectError> {
        let m = self.metrics.clone();
        let connected = self.connect().await;
        match &connected {
            Ok(_) => m.ok.increment(1),
            Err(ConnectError::TcpTimeout(_) | ConnectError::TlsTimeout(_)) => {
                m.timeout.increment(1)
            }
            Err(_) => m.failed.increment(1),
        }
        let io = connected?;
        m.open_now
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(BackendStream { io, metrics: m })
    }

    /// TCP, then TLS for `https://` backends, each within `connect_timeout`.
    async fn connect(self) -> Result<Io, ConnectError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.addr))
            .await
            .map_err(|_| ConnectError::TcpTimeout(self.addr.to_string()))?
            .map_err(|source| ConnectError::Tcp {
                addr: self.addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(match self.tls {
            None => Io::Plain(tcp),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp))
                    .await
                    .map_err(|_| ConnectError::TlsTimeout(self.addr.to_string()))?
                    .map_err(|source| ConnectError::Tls {
                        addr: self.addr.to_string(),
                        source,
                    })?;
                Io::Tls(Box::new(tls))
            }
        })
    }
}

/// A connection to a backend, counted in its pool's open connections while it lives.
pub struct BackendStream {
    io: Io,
    metrics: Arc<ConnMetrics>,
}

/// Plain or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Drop for BackendStream {
    fn drop(&mut self) {
        self.metrics
            .open_now
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Connection for BackendStream {
    fn connected(&self) -> Connected {
        match &self.io {
            Io::Plain(_) => Connected::new(),
            Io::Tls(t) if t.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            Io::Tls(_) => Connected::new(),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
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
