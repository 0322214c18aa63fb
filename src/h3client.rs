//! A minimal HTTP/3 client (quinn + h3) for load generation and tests.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use h3::client::SendRequest;
use http::{HeaderMap, Request, StatusCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use spooky_stages::upstreams::tls::NoVerify;

/// Boxed error.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How the client checks the server's certificate.
pub enum Trust {
    /// Accept any certificate (the quickstart's self-signed one, benchmarks on loopback).
    Insecure,
    /// Verify against these roots.
    Roots(Vec<CertificateDer<'static>>),
}

/// A QUIC client endpoint.
pub struct H3Client {
    endpoint: quinn::Endpoint,
}

/// One HTTP/3 connection; clone `send` to run requests concurrently.
pub struct H3Conn {
    pub send: SendRequest<h3_quinn::OpenStreams, Bytes>,
    pub conn: quinn::Connection,
    driver: tokio::task::JoinHandle<()>,
}

/// A whole response.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl H3Client {
    /// A client endpoint on an ephemeral port. Must run inside tokio.
    pub fn new(trust: Trust) -> Result<Self, Error> {
        H3Client::with_identity(trust, None)
    }

    /// A client that presents a certificate (mTLS).
    pub fn with_identity(
        trust: Trust,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match trust {
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider))),
            Trust::Roots(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c)?;
                }
                builder.with_root_certificates(roots)
            }
        };
        let mut tls = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"h3".to_vec()];
        // Resumed connections may send 0-RTT data (only through `connect_early`).
        tls.enable_early_data = true;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        Ok(H3Client { endpoint })
    }

    /// Moves the endpoint to a new local UDP socket (another port): its connections migrate,
    /// as a client's do when its address changes. Returns the new local address.
    pub fn rebind(&self) -> Result<SocketAddr, Error> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let addr = socket.local_addr()?;
        self.endpoint.rebind(socket)?;
        Ok(addr)
    }

    /// Connects and sets up HTTP/3.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<H3Conn, Error> {
        let conn = self.endpoint.connect(addr, server_name)?.await?;
        H3Conn::over(conn).await
    }

    /// Resumes a session with `server_name` (an earlier connection's ticket) and sets up
    /// HTTP/3 at once: requests sent before the handshake completes go in 0-RTT data. Fails
    /// when there is no ticket to resume; the future resolves when the handshake completes,
    /// `true` if the server accepted the 0-RTT data (if not, what was sent in it fails).
    pub async fn connect_early(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<(H3Conn, quinn::ZeroRttAccepted), Error> {
        let connecting = self.endpoint.connect(addr, server_name)?;
        let (conn, accepted) = connecting
            .into_0rtt()
            .map_err(|_| "no session to resume: 0-RTT is not possible")?;
        Ok((H3Conn::over(conn).await?, accepted))
    }
}

impl H3Conn {
    async fn over(conn: quinn::Connection) -> Result<H3Conn, Error> {
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            // The driver returns on GOAWAY too; dropping it then would close the connection
            // under requests still in flight. Keep it until the H3Conn goes.
            std::future::pending::<()>().await;
            drop(driver);
        });
        Ok(H3Conn { send, conn, driver })
    }

    /// Sends a request with an optional body and reads the whole response.
    pub async fn request(&self, req: Request<()>, body: Option<Bytes>) -> Result<Response, Error> {
        let mut send = self.send.clone();
        let mut stream = send.send_request(req).await?;
        // RFC 9114 §4.1: a server may answer before reading the whole request and then stop
        // the request stream (STOP_SENDING with H3_NO_ERROR); the response still counts, so
        // a failed send is not an error here: the response below decides.
        let sent = match body {
            Some(b) => stream.send_data(b).await,
            None => Ok(()),
        };
        if sent.is_ok() {
            let _ = stream.finish().await;
        }
        let resp = stream.recv_response().await?;
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                body.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        let trailers = stream.recv_trailers().await?;
        Ok(Response {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: body.freeze(),
            trailers,
        })
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Response, Error> {
        self.request(Request::get(url).body(())?, None).await
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0x100), b"done");
    }
}

impl Drop for H3Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
