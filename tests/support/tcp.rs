//! HTTP/1.1 and HTTP/2 clients over TLS (tokio-rustls + hyper), for the TCP side of listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// A TLS client config trusting `roots`, offering `alpn`.
pub fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
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
        let (tls, _) = tls_connect(addr, "localhost", client_config(roots, &[alpn]))
            .await
            .expect("tls");
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2");
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
            tokio::spawn(conn);
            Sender::H1(send)
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        match self {
            Sender::H1(s) => s.send_request(req).await.expect("h1 request"),
            Sender::H2(s) => s.send_request(req).await.expect("h2 request"),
        }
    }
}

/// Collects a response body (and its trailers).
pub async fn body(resp: Response<Incoming>) -> (Bytes, Option<http::HeaderMap>) {
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}
