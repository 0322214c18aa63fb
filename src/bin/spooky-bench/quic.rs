//! Raw QUIC, no HTTP/3: the floor an HTTP/3 download through Spooky is measured against.
//!
//! `quic-serve` answers every bidirectional stream with `size` bytes once the client has
//! finished its side; `load --proto quic` opens one stream per request, sends one byte and
//! reads the whole answer. Both ends use quinn's default transport settings, as Spooky's
//! listeners do (beyond their stream and idle limits), so the ratio of the two download
//! rates is what HTTP/3 framing, the proxy's pipeline and its upstream hop cost.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use spooky::h3client::Error;

/// The ALPN both ends speak: nothing else connects by mistake.
const ALPN: &[u8] = b"spooky-bench-raw";

/// One 64 KiB chunk, shared by every answer (quinn keeps the `Bytes`, it does not copy them).
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// Serves `size` bytes on every stream of every connection to `addr`, until killed. Prints
/// `quic listening on ADDR` once bound (`addr` may have port 0).
pub async fn serve(addr: SocketAddr, size: usize) -> Result<(), Error> {
    let ck = spooky_stages::tls::self_signed()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(ck.chain, ck.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let endpoint = quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(quic)), addr)
        .map_err(|e| format!("quic-serve: binding UDP {addr}: {e}"))?;
    println!("quic listening on {}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(answer(send, recv, size));
            }
        });
    }
    Ok(())
}

/// Reads the (tiny) request to its end, then writes `size` bytes and finishes.
async fn answer(mut send: quinn::SendStream, mut recv: quinn::RecvStream, size: usize) {
    if recv.read_to_end(1024).await.is_err() {
        return;
    }
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK.len());
        if send
            .write_chunk(Bytes::from_static(&CHUNK[..n]))
            .await
            .is_err()
        {
            return;
        }
        left -= n;
    }
    let _ = send.finish();
    // The stream's data goes out after this returns; the connection outlives it.
}

/// A raw QUIC connection to a `quic-serve` at `addr` (any certificate accepted).
pub async fn connect(addr: SocketAddr) -> Result<quinn::Connection, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(spooky_stages::upstreams::tls::NoVerify(
            provider,
        )))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let local: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connecting = endpoint.connect(addr, "localhost")?;
    let why = |e: String| {
        format!("no raw QUIC handshake with {addr} (is `spooky-bench quic-serve` there?): {e}")
    };
    let conn = tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
        .await
        .map_err(|_| why("nothing within 5s".into()))?
        .map_err(|e| why(e.to_string()))?;
    Ok(conn)
}

/// One request: a stream with one byte sent; the number of bytes that came back.
pub async fn fetch(conn: &quinn::Connection) -> Result<u64, Error> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"x").await?;
    send.finish()?;
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        got += chunk.bytes.len() as u64;
    }
    Ok(got)
}
