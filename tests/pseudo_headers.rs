//! HTTP/2 and HTTP/3 request-head rules (RFC 9113 §8.3, RFC 9114 §4.3), checked with frames
//! written by hand: a malformed head resets only its own stream with the protocol's error code
//! (HTTP/2 PROTOCOL_ERROR, HTTP/3 H3_MESSAGE_ERROR) and the connection keeps serving.

mod support;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{client_config, tls_connect};
use support::{TempDir, TestCert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REST: &str = "[[routes]]\nname = \"hi\"\nrespond = { status = 200, body = \"hi\" }\n";

/// HPACK/QPACK-style integer with an `n`-bit prefix.
fn int(buf: &mut BytesMut, first: u8, n: u32, v: usize) {
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
fn hpack(fields: &[(&str, &str)]) -> BytesMut {
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
fn qpack(fields: &[(&str, &str)]) -> BytesMut {
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

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const GOOD: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "localhost"),
    (":path", "/hello"),
];

fn malformed() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "no :path",
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "localhost"),
            ],
        ),
        ("upper-case name", [&GOOD[..], &[("X-Upper", "1")]].concat()),
        (
            "connection-specific field",
            [&GOOD[..], &[("connection", "keep-alive")]].concat(),
        ),
        (
            "pseudo-header after a field",
            vec![
                (":method", "GET"),
                ("x-a", "1"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", "/"),
            ],
        ),
        (
            "a pseudo-header twice",
            [&GOOD[..], &[(":path", "/other")]].concat(),
        ),
        (
            "unknown pseudo-header",
            [&GOOD[..], &[(":protocol-x", "1")]].concat(),
        ),
        (
            "TE other than trailers",
            [&GOOD[..], &[("te", "gzip")]].concat(),
        ),
    ]
}

/// Frames of one HTTP/2 connection: a malformed head on stream 1, a good one on stream 3.
/// Returns (RST_STREAM codes by stream, GOAWAY code, whether stream 3 was answered).
async fn h2_exchange(
    proxy: &Proxy,
    cert: &TestCert,
    fields: &[(&str, &str)],
) -> (Vec<(u32, u32)>, Option<u32>, bool) {
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"h2"]);
    let (mut tls, _) = tls_connect(proxy.tcp_addr.expect("tcp"), "localhost", cfg)
        .await
        .expect("tls");
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    tls.write_all(&h2_frame(0x4, 0, 0, &[]))
        .await
        .expect("settings");
    tls.write_all(&h2_frame(0x1, 0x5, 1, &hpack(fields)))
        .await
        .expect("headers");
    tls.write_all(&h2_frame(0x1, 0x5, 3, &hpack(&GOOD)))
        .await
        .expect("headers");
    let (mut resets, mut goaway, mut answered, mut first_answered) =
        (Vec::new(), None, false, false);
    let good = fields == GOOD;
    while !(answered && (first_answered || !good)) && goaway.is_none() {
        let mut head = [0u8; 9];
        match tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut head))
            .await
        {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        tls.read_exact(&mut payload).await.expect("payload");
        let word = |i: usize| {
            u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
        };
        match head[3] {
            0x4 if head[4] & 1 == 0 => tls.write_all(&h2_frame(0x4, 1, 0, &[])).await.expect("ack"),
            0x3 => resets.push((id, word(0))),
            0x1 if id == 3 => answered = true,
            0x1 => first_answered = true,
            0x7 => goaway = Some(word(4)),
            _ => {}
        }
    }
    assert_eq!(
        first_answered, good,
        "stream 1 must be answered exactly when its head is good: {fields:?}"
    );
    (resets, goaway, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_malformed_heads_reset_their_stream_with_protocol_error() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(r#"["h2"]"#, &cert.toml(), REST));
    for (what, fields) in malformed() {
        let (resets, goaway, answered) = h2_exchange(&proxy, &cert, &fields).await;
        if what == "upper-case name" || what == "unknown pseudo-header" {
            // The h2 crate fails HPACK decoding on these and treats them as connection errors:
            // GOAWAY with PROTOCOL_ERROR (RFC 9113 §5.4 allows a stream error to be treated
            // as a connection error).
            assert_eq!(goaway, Some(1), "{what}: {resets:?}");
            continue;
        }
        assert_eq!(
            resets,
            vec![(1, 1)],
            "{what}: RST_STREAM(1, PROTOCOL_ERROR) expected (goaway {goaway:?})"
        );
        assert!(
            answered && goaway.is_none(),
            "{what}: the next stream on the connection must be served"
        );
    }
    // And other connections never noticed.
    let (resets, goaway, answered) = h2_exchange(&proxy, &cert, &GOOD).await;
    assert!(resets.is_empty() && goaway.is_none() && answered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_malformed_heads_reset_their_stream_with_message_error() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &cert.toml(), REST));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
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
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(proxy.h3_addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    // Our control stream: type 0x00, then an empty SETTINGS frame.
    let mut control = conn.open_uni().await.expect("control");
    control
        .write_all(&[0x00, 0x04, 0x00])
        .await
        .expect("settings");

    let send = |fields: Vec<(&'static str, &'static str)>| {
        let conn = conn.clone();
        async move {
            let (mut tx, mut rx) = conn.open_bi().await.expect("bidi");
            let block = qpack(&fields);
            let mut frame = BytesMut::new();
            frame.put_u8(0x01);
            int(&mut frame, 0, 6, block.len()); // QUIC varint: 1 byte up to 63, 2 bytes below
            if block.len() >= 63 {
                frame.truncate(1);
                frame.put_u16(0x4000 | block.len() as u16);
            }
            frame.extend_from_slice(&block);
            tx.write_all(&frame).await.expect("headers");
            let _ = tx.finish();
            rx.read_to_end(64 * 1024).await
        }
    };
    for (what, fields) in malformed() {
        match send(fields).await {
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                assert_eq!(
                    code.into_inner(),
                    0x10e,
                    "{what}: H3_MESSAGE_ERROR expected"
                );
            }
            other => panic!("{what}: expected a stream reset, got {other:?}"),
        }
    }
    // Field order and repeats are Spooky's own check (h3 cannot see them): counted.
    for reason in ["pseudo_after_field", "repeated_pseudo"] {
        proxy
            .wait_metric("spooky_h3_refused_total", &[("reason", reason)], |v| {
                v == 1.0
            })
            .await;
    }
    // The connection is fine: a well-formed request is answered.
    let answer = send(GOOD.to_vec()).await.expect("good request");
    assert!(answer.first() == Some(&0x01), "a HEADERS frame comes back");
    assert!(conn.close_reason().is_none());
}
