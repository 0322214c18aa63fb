//! HTTP/2 and HTTP/3 request-head rules (RFC 9113 §8.3, RFC 9114 §4.3), checked with frames
//! written by hand: a malformed head resets only its own stream with the protocol's error code
//! (HTTP/2 PROTOCOL_ERROR, HTTP/3 H3_MESSAGE_ERROR) and the connection keeps serving.

mod support;

use support::frames::{H3Raw, h2_frame, h2_open, h3_headers, hpack};
use support::proxy::{Proxy, pipeline_with};
use support::{TempDir, TestCert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REST: &str = "[[routes]]\nname = \"hi\"\nrespond = { status = 200, body = \"hi\" }\n";

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
        // RFC 9114 §4.3 / RFC 9113 §8.3: a response pseudo-header in a request.
        (
            ":status in a request",
            [&GOOD[..], &[(":status", "200")]].concat(),
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
    let mut tls = h2_open(proxy.tcp_addr.expect("tcp"), &cert.der).await;
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
            // The proxy may already have closed the connection (a GOAWAY follows a
            // connection error at once): a failed ack is not the test's concern, the frames
            // read are.
            0x4 if head[4] & 1 == 0 => {
                let _ = tls.write_all(&h2_frame(0x4, 1, 0, &[])).await;
            }
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
    let raw = H3Raw::connect(proxy.h3_addr, &cert.der).await;
    let send = |fields: Vec<(&'static str, &'static str)>| {
        let raw = &raw;
        async move { raw.send(&h3_headers(&fields), true).await }
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
    assert!(raw.conn.close_reason().is_none());
}
