//! QUIC stream credit and stream bookkeeping, from a raw quinn client: the peer's streams
//! are served whatever order they are opened in and whichever frame opens them, a connection
//! never has more than `max_streams_per_connection` requests open, and closed streams give
//! their credit back. `vendor/quinn-proto` gives a stream its entries when the peer first
//! names it instead of for every stream the peer may open in advance (vendor/README.md);
//! these tests fail if a stream's entries are missing, doubled or never given back.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::backend::Backend;
use support::frames::{H3Raw, h3_headers};
use support::proxy::{Proxy, app_upstream, pipeline_with};
use support::{TempDir, TestCert};

fn start(cert: &TestCert, backend: &Backend, max_streams: u32) -> Proxy {
    Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &format!(
            "{}\nmax_streams_per_connection = {max_streams}",
            cert.toml()
        ),
        &app_upstream(&backend.url()),
    ))
}

fn get(path: &str) -> Vec<u8> {
    h3_headers(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ])
    .to_vec()
}

/// Writes a whole GET on an open stream and reads its answer (bounded), as text.
async fn answer(tx: &mut quinn::SendStream, rx: &mut quinn::RecvStream, path: &str) -> String {
    tx.write_all(&get(path)).await.expect("write");
    tx.finish().expect("finish");
    let body = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(64 * 1024))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_streams_are_served_in_any_order_of_opening() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = start(&cert, &backend, 8);
    let raw = H3Raw::connect(proxy.h3_addr, &cert.der).await;

    // Three request streams (indices 0, 1, 2) whose ids quinn allocates in order but sends
    // nothing on until written: the proxy first hears of index 2, which opens 0 and 1 too.
    let (mut tx0, mut rx0) = raw.conn.open_bi().await.expect("bidi 0");
    let (mut tx1, mut rx1) = raw.conn.open_bi().await.expect("bidi 1");
    let (mut tx2, mut rx2) = raw.conn.open_bi().await.expect("bidi 2");
    let third = answer(&mut tx2, &mut rx2, "/third").await;
    assert!(third.contains("backend /third"), "{third:?}");
    // The two lower streams, opened implicitly, still take their requests.
    let second = answer(&mut tx1, &mut rx1, "/second").await;
    assert!(second.contains("backend /second"), "{second:?}");
    let first = answer(&mut tx0, &mut rx0, "/first").await;
    assert!(first.contains("backend /first"), "{first:?}");

    // Streams first named by STOP_SENDING (index 3) and RESET_STREAM (index 4) are opened by
    // those frames; the streams above them are served as before.
    let (_tx3, mut rx3) = raw.conn.open_bi().await.expect("bidi 3");
    rx3.stop(quinn::VarInt::from_u32(0x10c)).expect("stop"); // H3_REQUEST_CANCELLED
    let (mut tx4, _rx4) = raw.conn.open_bi().await.expect("bidi 4");
    tx4.reset(quinn::VarInt::from_u32(0x10c)).expect("reset");
    let (mut tx5, mut rx5) = raw.conn.open_bi().await.expect("bidi 5");
    let sixth = answer(&mut tx5, &mut rx5, "/sixth").await;
    assert!(sixth.contains("backend /sixth"), "{sixth:?}");
    assert!(raw.conn.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_credit_bounds_open_requests_and_comes_back() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = start(&cert, &backend, 3);
    let raw = Arc::new(H3Raw::connect(proxy.h3_addr, &cert.der).await);

    // Three requests held at the backend use all of the connection's credit.
    let mut held = Vec::new();
    for i in 0..3 {
        let raw = raw.clone();
        held.push(tokio::spawn(async move {
            let (mut tx, mut rx) = raw.conn.open_bi().await.expect("bidi");
            answer(&mut tx, &mut rx, &format!("/hold/{i}")).await
        }));
    }
    backend.state.wait_held(3).await;
    // A fourth stream cannot be opened while they are open (the client waits for credit)...
    let fourth = {
        let raw = raw.clone();
        tokio::spawn(async move {
            let (mut tx, mut rx) = raw.conn.open_bi().await.expect("bidi");
            answer(&mut tx, &mut rx, "/fourth").await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // the absence of an event: bounded
    assert!(
        !fourth.is_finished(),
        "a fourth stream opened beyond the credit of 3"
    );
    assert_eq!(
        backend.state.seen.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    // ...and is served once one of them ends.
    backend.state.release(1);
    let fourth = tokio::time::timeout(Duration::from_secs(10), fourth)
        .await
        .expect("the fourth request within 10 s once credit came back")
        .expect("task");
    assert!(fourth.contains("backend /fourth"), "{fourth:?}");
    backend.state.release(2);
    for h in held {
        let text = h.await.expect("task");
        assert!(text.contains("released /hold/"), "{text:?}");
    }

    // Every closed stream gives its credit back: many more requests than the credit, one
    // after another on the same connection.
    for i in 0..30 {
        let (mut tx, mut rx) = raw.conn.open_bi().await.expect("bidi");
        let text = answer(&mut tx, &mut rx, &format!("/seq/{i}")).await;
        assert!(text.contains(&format!("backend /seq/{i}")), "{text:?}");
    }
    assert!(raw.conn.close_reason().is_none());
}
