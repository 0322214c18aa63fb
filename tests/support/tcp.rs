//! HTTP/1.1 and HTTP/2 clients over TLS (tokio-rustls + hyper), for the TCP side of listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// A TLS client config trusting `roots`, offering `alpn`.
pub fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    client_config_with(roots, alpn, None)
}

/// [`client_config`] presenting a client certificate when `identity` is given.
pub fn client_config_with(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store);
    let mut cfg = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

/// TLS to `addr` with `sni`; returns the stream and the server's leaf certificate.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: rustls::ClientConfig,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        CertificateDer<'static>,
    ),
    std::io::Error,
> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tls_over(tcp, sni, cfg).await
}

/// TLS with `sni` over a connection already open (after a PROXY header, say).
pub async fn tls_over(
    tcp: tokio::net::TcpStream,
    sni: &str,
    cfg: rustls::ClientConfig,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        CertificateDer<'static>,
    ),
    std::io::Error,
> {
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let tls = TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().expect("peer certs")[0].clone();
    Ok((tls, leaf))
}

/// One HTTP connection: HTTP/2 or HTTP/1.1 by what ALPN chose.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub async fn connect(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
        alpn: &[u8],
    ) -> Sender {
        Sender::connect_with(addr, client_config(roots, &[alpn]))
            .await
            .expect("tls")
    }

    /// Connects with a prepared TLS config; the error is the handshake's.
    pub async fn connect_with(
        addr: SocketAddr,
        cfg: rustls::ClientConfig,
    ) -> Result<Sender, std::io::Error> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        Sender::over(tcp, cfg).await
    }

    /// [`Sender::connect_with`] over a connection already open.
    pub async fn over(
        tcp: tokio::net::TcpStream,
        cfg: rustls::ClientConfig,
    ) -> Result<Sender, std::io::Error> {
        let (tls, _) = tls_over(tcp, "localhost", cfg).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok(Sender::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok(Sender::H1(send))
        }
    }

    /// Plaintext HTTP/1.1 (no TLS).
    pub async fn plain(addr: SocketAddr) -> Sender {
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.expect("tcp"));
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
        tokio::spawn(conn);
        Sender::H1(send)
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        self.try_send(req).await.expect("request")
    }

    /// Sends a request; the error when the connection failed.
    pub async fn try_send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        // Wait until the connection can take a request (HTTP/1.1: the previous exchange has
        // fully finished).
        match self {
            Sender::H1(s) => {
                // As every HTTP/1.1 client must (RFC 9112 §3.2): Host, from the target.
                let mut req = req;
                if let Some(a) = req.uri().authority().cloned()
                    && !req.headers().contains_key(http::header::HOST)
                    && let Ok(v) = http::HeaderValue::from_str(a.as_str())
                {
                    req.headers_mut().insert(http::header::HOST, v);
                }
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// Collects a response body (and its trailers).
pub async fn body(resp: Response<Incoming>) -> (Bytes, Option<http::HeaderMap>) {
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

/// `GET https://localhost<path>` with an empty body.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .expect("req")
}
