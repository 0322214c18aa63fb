//! Hand-written HTTP/2 and HTTP/3 frames, for probes no well-behaved client library would
//! send (malformed heads, lengths that disagree with the data, pseudo-headers in trailers).

use bytes::{BufMut, BytesMut};

/// HPACK/QPACK-style integer with an `n`-bit prefix.
pub fn int(buf: &mut BytesMut, first: u8, n: u32, v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        buf.put_u8(first | v as u8);
        return;
    }
    buf.put_u8(first | max as u8);
    let mut rest = v - max;
    while rest >= 128 {
        buf.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    buf.put_u8(rest as u8);
}

/// An HPACK block of literal fields without indexing, new names, no Huffman.
pub fn hpack(fields: &[(&str, &str)]) -> BytesMut {
    let mut b = BytesMut::new();
    for (k, v) in fields {
        b.put_u8(0x00);
        int(&mut b, 0, 7, k.len());
        b.put_slice(k.as_bytes());
        int(&mut b, 0, 7, v.len());
        b.put_slice(v.as_bytes());
    }
    b
}

/// A QPACK field section (no dynamic table) of literal names and values.
pub fn qpack(fields: &[(&str, &str)]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(0); // required insert count
    b.put_u8(0); // delta base
    for (k, v) in fields {
        int(&mut b, 0x20, 3, k.len()); // 001N H=0, 3-bit name length
        b.put_slice(k.as_bytes());
        int(&mut b, 0, 7, v.len());
        b.put_slice(v.as_bytes());
    }
    b
}

pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HTTP/2 connection over TLS (ALPN `h2`) with the client preface and an empty SETTINGS
/// frame sent; the caller writes frames and acknowledges the server's SETTINGS.
pub async fn h2_open(
    addr: std::net::SocketAddr,
    root: &rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let cfg = super::tcp::client_config(std::slice::from_ref(root), &[b"h2"]);
    let (mut tls, _) = super::tcp::tls_connect(addr, "localhost", cfg)
        .await
        .expect("tls");
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    tls.write_all(&h2_frame(0x4, 0, 0, &[]))
        .await
        .expect("settings");
    tls
}

/// A QUIC variable-length integer (RFC 9000 §16).
pub fn varint(buf: &mut BytesMut, v: u64) {
    match v {
        0..=63 => buf.put_u8(v as u8),
        64..=16383 => buf.put_u16(0x4000 | v as u16),
        16384..=1_073_741_823 => buf.put_u32(0x8000_0000 | v as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | v),
    }
}

/// An HTTP/3 frame of `kind` with `payload`.
pub fn h3_frame(kind: u64, payload: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    varint(&mut f, kind);
    varint(&mut f, payload.len() as u64);
    f.extend_from_slice(payload);
    f
}

/// An HTTP/3 HEADERS frame of literal fields.
pub fn h3_headers(fields: &[(&str, &str)]) -> BytesMut {
    h3_frame(0x01, &qpack(fields))
}

/// An HTTP/3 DATA frame.
pub fn h3_data(data: &[u8]) -> BytesMut {
    h3_frame(0x00, data)
}

/// A raw HTTP/3 client connection: QUIC with ALPN `h3` and our control stream open (it must
/// stay open: closing a control stream is a connection error).
pub struct H3Raw {
    pub conn: quinn::Connection,
    _control: quinn::SendStream,
    _endpoint: quinn::Endpoint,
}

impl H3Raw {
    pub async fn connect(
        addr: std::net::SocketAddr,
        root: &rustls::pki_types::CertificateDer<'static>,
    ) -> H3Raw {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).expect("root");
        let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
        let conn = endpoint
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        // Our control stream: type 0x00, then an empty SETTINGS frame.
        let mut control = conn.open_uni().await.expect("control");
        control
            .write_all(&[0x00, 0x04, 0x00])
            .await
            .expect("settings");
        H3Raw {
            conn,
            _control: control,
            _endpoint: endpoint,
        }
    }

    /// Opens a request stream, writes `bytes`, finishes it when `finish`, and reads the
    /// answer to its end (bounded: 10 s).
    pub async fn send(&self, bytes: &[u8], finish: bool) -> Result<Vec<u8>, quinn::ReadToEndError> {
        let (mut tx, mut rx) = self.conn.open_bi().await.expect("bidi");
        tx.write_all(bytes).await.expect("write");
        if finish {
            let _ = tx.finish();
        }
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            rx.read_to_end(64 * 1024),
        )
        .await
        .expect("an answer or a reset within 10 s")
    }
}

/// The stream reset code of an HTTP/3 answer, if it was reset.
pub fn reset_code(r: &Result<Vec<u8>, quinn::ReadToEndError>) -> Option<u64> {
    match r {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => Some(code.into_inner()),
        _ => None,
    }
}
