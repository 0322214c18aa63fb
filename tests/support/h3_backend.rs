//! An HTTP/3 backend (quinn + h3) for the tests of HTTP/3 to backends: it echoes the request
//! body and says what it saw in response headers (`x-method`, `x-path`, `x-authority`,
//! `x-host`, `x-body-len`, `x-forwarded-for`); `/big/N` answers N bytes; a gRPC request
//! (`content-type: application/grpc`) gets its messages back and trailers `grpc-status: 0`
//! plus `x-h3-trailer`. It counts the QUIC connections it accepted and the requests whose
//! body ended short (reset by the client).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::tls_backend::Issued;

pub struct H3Backend {
    pub addr: SocketAddr,
    /// QUIC connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests answered.
    pub answered: Arc<AtomicUsize>,
    /// Requests whose body was reset by the client (never answered).
    pub reset: Arc<AtomicUsize>,
    /// Request bodies read to their end.
    pub whole_bodies: Arc<AtomicUsize>,
    /// Requests whose head arrived.
    pub started: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<quinn::Connection>>>,
    _endpoint: quinn::Endpoint,
}

impl H3Backend {
    /// Serves on an OS-picked loopback UDP port with `cert`; with `client_ca` (a CA's PEM),
    /// only clients with a certificate it issued are accepted.
    pub async fn start(cert: &Issued, client_ca: Option<&str>) -> H3Backend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions");
        let builder = match client_ca {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.expect("ca pem")).expect("ca");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut tls = builder
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())
            .expect("cert");
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
        let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let reset = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let whole = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, a, r, st, w, all, e) = (
            connections.clone(),
            answered.clone(),
            reset.clone(),
            started.clone(),
            whole.clone(),
            conns.clone(),
            endpoint.clone(),
        );
        tokio::spawn(async move {
            while let Some(incoming) = e.accept().await {
                let (c, a, r, st, w, all) = (
                    c.clone(),
                    a.clone(),
                    r.clone(),
                    st.clone(),
                    w.clone(),
                    all.clone(),
                );
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    c.fetch_add(1, Ordering::SeqCst);
                    all.lock().expect("conns").push(conn.clone());
                    let Ok(mut h3) = h3::server::builder()
                        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
                        .await
                    else {
                        return;
                    };
                    while let Ok(Some(resolver)) = h3.accept().await {
                        let (a, r, st, w) = (a.clone(), r.clone(), st.clone(), w.clone());
                        tokio::spawn(async move {
                            let Ok((req, stream)) = resolver.resolve_request().await else {
                                return;
                            };
                            st.fetch_add(1, Ordering::SeqCst);
                            if answer(req, stream, &w).await.is_ok() {
                                a.fetch_add(1, Ordering::SeqCst);
                            } else {
                                r.fetch_add(1, Ordering::SeqCst);
                            }
                        });
                    }
                });
            }
        });
        H3Backend {
            addr,
            connections,
            answered,
            reset,
            whole_bodies: whole,
            started,
            conns,
            _endpoint: endpoint,
        }
    }

    /// Closes every connection accepted so far (new ones are still accepted).
    pub fn close_all(&self) {
        for c in self.conns.lock().expect("conns").drain(..) {
            c.close(quinn::VarInt::from_u32(0x100), b"closed by the test");
        }
    }
}

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

async fn answer(
    req: http::Request<()>,
    mut stream: Stream,
    whole: &AtomicUsize,
) -> Result<(), h3::error::StreamError> {
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        while chunk.has_remaining() {
            let c = chunk.chunk();
            body.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    let request_trailers = stream.recv_trailers().await?;
    whole.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let grpc = header("content-type").starts_with("application/grpc");
    let mut resp = Response::builder()
        .status(200)
        .header("x-method", req.method().as_str())
        .header("x-path", req.uri().path())
        .header(
            "x-authority",
            req.uri().authority().map_or("", |a| a.as_str()),
        )
        .header("x-host", header("host"))
        .header("x-forwarded-for", header("x-forwarded-for"))
        .header("x-body-len", body.len().to_string())
        .header(
            "x-request-trailer",
            request_trailers
                .as_ref()
                .and_then(|t| t.get("x-client-trailer"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
    if grpc {
        resp = resp.header("content-type", "application/grpc");
    }
    let resp = resp.body(()).expect("response");
    stream.send_response(resp).await?;
    let out: Bytes = match req.uri().path().strip_prefix("/big/") {
        Some(n) => Bytes::from(vec![b'b'; n.parse().unwrap_or(0)]),
        None => body.freeze(),
    };
    // In chunks, as a real server writes a large body.
    for c in out.chunks(16 * 1024) {
        stream.send_data(Bytes::copy_from_slice(c)).await?;
    }
    if grpc {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("x-h3-trailer", HeaderValue::from_static("yes"));
        stream.send_trailers(t).await?;
    }
    stream.finish().await
}
