//! HTTPS and h2c backends (hyper over tokio-rustls) and a private CA (rcgen) for upstream TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TempDir;

/// A private certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate issued by a [`Ca`], as DER and as PEM files.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca"),
        }
    }

    /// Writes the CA certificate as PEM.
    pub fn write(&self, path: &PathBuf) {
        std::fs::write(path, self.issuer.pem()).expect("write ca");
    }

    /// A leaf certificate for `sans`, written under `dir` as `<file>.pem` / `<file>.key`.
    pub fn issue(&self, dir: &TempDir, file: &str, sans: &[&str]) -> Issued {
        let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let cert_path = dir.0.join(format!("{file}.pem"));
        let key_path = dir.0.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        Issued {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
            cert_path,
            key_path,
        }
    }
}

/// Which HTTP the backend saw, in the body: `tls-backend <version> <path>`.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!(
        "tls-backend {:?} {} host={}\n",
        req.version(),
        req.uri().path(),
        req.headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .or(req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// An HTTPS backend offering `alpn` (`h2`, `http/1.1`).
pub async fn https_backend(cert: &Issued, alpn: &[&[u8]]) -> SocketAddr {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(cert.chain.clone(), cert.key.clone_key())
    .expect("server cert");
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service_fn(answer))
                    .await;
            });
        }
    });
    addr
}

/// A plaintext HTTP/2 backend (prior knowledge).
pub async fn h2c_backend() -> SocketAddr {
    serve_h2c(|| service_fn(answer)).await
}

/// Serves plaintext HTTP/2 (prior knowledge) on an OS-picked loopback port. `service` is
/// called once per accepted connection, for the service that connection runs.
pub async fn serve_h2c<S, B>(service: impl Fn() -> S + Send + 'static) -> SocketAddr
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_plain(move |tcp| {
        let svc = service();
        async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    })
    .await
}

/// Serves plaintext HTTP/1.1 on an OS-picked loopback port, as [`serve_h2c`] serves HTTP/2.
pub async fn serve_http1<S, B>(service: impl Fn() -> S + Send + 'static) -> SocketAddr
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_plain(move |tcp| {
        let svc = service();
        async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    })
    .await
}

/// Accepts TCP connections on an OS-picked loopback port, each served on a task of its own
/// by the future `serve` makes of it.
async fn serve_plain<F>(serve: impl Fn(tokio::net::TcpStream) -> F + Send + 'static) -> SocketAddr
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(tcp));
        }
    });
    addr
}
