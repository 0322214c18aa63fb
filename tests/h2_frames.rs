//! HTTP/2 frames as the proxy reads them off a client connection (vendor/h2's frame reader,
//! which holds a read buffer only while the connection has an open stream or a partial
//! frame): a request written a byte at a time is read whole, a frame cut in two across a
//! moment with no open stream is kept, not dropped with the idle buffer, a frame longer than
//! SETTINGS_MAX_FRAME_SIZE is a FRAME_SIZE_ERROR, and a connection that ends mid-frame is
//! closed while the proxy goes on serving.

mod support;

use std::time::Duration;

use support::frames::{h2_frame, h2_open, hpack};
use support::proxy::{Proxy, admin_and_app, pipeline_with};
use support::raw_backend::RawBackend;
use support::{TempDir, TestCert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const FRAME_SIZE_ERROR: u32 = 0x6;
/// HPACK's static table entry 8, `:status: 200`, as the first byte of a header block.
const STATUS_200: u8 = 0x88;

fn start(cert: &TestCert, backend: &RawBackend) -> Proxy {
    Proxy::start(&pipeline_with(
        r#"["h2"]"#,
        &cert.toml(),
        &admin_and_app(&backend.url()),
    ))
}

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    hpack(&fields).to_vec()
}

/// A frame from the proxy: (type, flags, stream, payload), or `None` once the connection
/// ends. The proxy's SETTINGS are acknowledged on the way.
async fn next_frame(tls: &mut TlsStream<TcpStream>) -> Option<(u8, u8, u32, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut h = [0u8; 9];
        match tokio::time::timeout_at(deadline, tls.read_exact(&mut h)).await {
            Err(_) => panic!("no frame from the proxy within 10 s"),
            Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        tls.read_exact(&mut payload).await.ok()?;
        if h[3] == 0x4 && h[4] & 1 == 0 {
            // (Fails, harmlessly, once this side has shut down its writing.)
            let _ = tls.write_all(&h2_frame(0x4, 1, 0, &[])).await;
            continue;
        }
        return Some((h[3], h[4], id, payload));
    }
}

/// Reads up to the end of stream `id`'s answer; returns the first byte of its header block.
async fn answer(tls: &mut TlsStream<TcpStream>, id: u32) -> u8 {
    let mut first = None;
    loop {
        let (kind, flags, stream, payload) = next_frame(tls)
            .await
            .unwrap_or_else(|| panic!("connection ended before stream {id}'s answer"));
        assert_ne!(
            kind, GOAWAY,
            "GOAWAY instead of stream {id}'s answer: {payload:?}"
        );
        if stream != id || (kind != HEADERS && kind != DATA) {
            continue;
        }
        if kind == HEADERS && first.is_none() {
            first = payload.first().copied();
        }
        if flags & END_STREAM != 0 {
            return first.expect("a HEADERS frame before the end of the stream");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_anywhere_are_read_whole() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = RawBackend::start().await;
    let proxy = start(&cert, &backend);
    let mut tls = h2_open(proxy.tcp_addr.expect("tcp"), &cert.der).await;

    // Stream 1: a 20 000-byte upload (more than the 8 KiB a read buffer starts with), its head
    // and the start of its body written one byte per TLS record.
    let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut bytes = h2_frame(
        HEADERS,
        END_HEADERS,
        1,
        &request("POST", "/upload", &[("content-length", "20000")]),
    );
    bytes.extend(h2_frame(DATA, 0, 1, &body[..10_000]));
    bytes.extend(h2_frame(DATA, END_STREAM, 1, &body[10_000..]));
    let dribbled = bytes.len() - 19_900;
    for b in &bytes[..dribbled] {
        tls.write_all(std::slice::from_ref(b)).await.expect("byte");
        tls.flush().await.expect("flush");
    }
    tls.write_all(&bytes[dribbled..]).await.expect("rest");
    assert_eq!(answer(&mut tls, 1).await, STATUS_200, "{}", proxy.log());
    let seen = backend.state.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].line, "POST /upload HTTP/1.1");
    assert!(seen[0].complete);
    assert!(seen[0].body == body, "the upload arrived changed");

    // No stream is open now. A PING and the first 5 bytes of stream 3's HEADERS frame, in
    // one record: once the PING's answer is here the proxy has read the half frame and
    // waited with no open stream (where it drops an empty read buffer); the rest follows.
    let head = h2_frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &request("GET", "/again", &[]),
    );
    let mut first = h2_frame(PING, 0, 0, b"12345678");
    first.extend_from_slice(&head[..5]);
    tls.write_all(&first).await.expect("ping and half a frame");
    loop {
        let (kind, flags, _, payload) = next_frame(&mut tls).await.expect("ping answer");
        assert_ne!(kind, GOAWAY, "GOAWAY after half a frame: {payload:?}");
        if kind == PING && flags & 1 == 1 {
            assert_eq!(payload, b"12345678");
            break;
        }
    }
    tls.write_all(&head[5..]).await.expect("the frame's rest");
    assert_eq!(answer(&mut tls, 3).await, STATUS_200, "{}", proxy.log());
    let seen = backend.state.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].line, "GET /again HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_cut_off_frames_end_only_their_connection() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = RawBackend::start().await;
    let proxy = start(&cert, &backend);
    let addr = proxy.tcp_addr.expect("tcp");

    // One byte over the default SETTINGS_MAX_FRAME_SIZE (16 384): GOAWAY FRAME_SIZE_ERROR.
    let mut tls = h2_open(addr, &cert.der).await;
    tls.write_all(&h2_frame(
        HEADERS,
        END_HEADERS,
        1,
        &request("GET", "/a", &[]),
    ))
    .await
    .expect("headers");
    tls.write_all(&h2_frame(DATA, 0, 1, &vec![0; 16_385]))
        .await
        .expect("oversized");
    let code = loop {
        match next_frame(&mut tls).await {
            Some((GOAWAY, _, 0, payload)) => {
                break u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            }
            Some(_) => {}
            None => panic!("the connection ended without a GOAWAY"),
        }
    };
    assert_eq!(code, FRAME_SIZE_ERROR);

    // A connection that ends in the middle of a frame head, and one in the middle of a
    // frame's payload: each is closed.
    for cut in [5, 20] {
        let mut tls = h2_open(addr, &cert.der).await;
        let frame = h2_frame(HEADERS, END_HEADERS, 1, &request("GET", "/b", &[]));
        tls.write_all(&frame[..cut]).await.expect("part");
        tls.shutdown().await.expect("shutdown");
        while next_frame(&mut tls).await.is_some() {}
    }

    // Everyone else is served.
    let mut tls = h2_open(addr, &cert.der).await;
    tls.write_all(&h2_frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request("GET", "/c", &[]),
    ))
    .await
    .expect("request");
    assert_eq!(answer(&mut tls, 1).await, STATUS_200, "{}", proxy.log());
    let seen = backend.state.take();
    assert!(seen.iter().any(|r| r.line == "GET /c HTTP/1.1"), "{seen:?}");
    assert!(seen.iter().all(|r| r.line != "GET /b HTTP/1.1"), "{seen:?}");
}
