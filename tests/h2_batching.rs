//! HTTP/2 responses that are ready together leave the proxy together: in a few TLS records,
//! not one (or more) per response. The client counts the TLS records it receives below its
//! TLS layer.

mod support;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use support::backend::Backend;
use support::proxy::{Proxy, app_upstream, pipeline_with};
use support::tcp::client_config;
use support::{TempDir, TestCert};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that counts the TLS application-data records coming in.
struct Records {
    inner: TcpStream,
    /// Application-data records whose header has been read.
    count: Arc<AtomicUsize>,
    header: Vec<u8>,
    /// Bytes of the current record's body still to come.
    rest: usize,
}

impl Records {
    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.rest > 0 {
                let n = self.rest.min(bytes.len());
                self.rest -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 5 {
                if self.header[0] == 23 {
                    self.count.fetch_add(1, Ordering::SeqCst);
                }
                self.rest = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                self.header.clear();
            }
        }
    }
}

impl AsyncRead for Records {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scan(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Records {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_ready_together_share_tls_records() {
    const N: usize = 10;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = Proxy::start(&pipeline_with(
        r#"["h2"]"#,
        &cert.toml(),
        &app_upstream(&backend.url()),
    ));
    let tcp = TcpStream::connect(proxy.tcp_addr.expect("tcp listener"))
        .await
        .expect("connect");
    let count = Arc::new(AtomicUsize::new(0));
    let io = Records {
        inner: tcp,
        count: count.clone(),
        header: Vec::new(),
        rest: 0,
    };
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"h2"]);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), io)
        .await
        .expect("tls");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);

    // Bodies of 300 bytes and more: h2 writes each such DATA payload by itself, which is what
    // made every response a record of its own.
    let long = "x".repeat(300);
    let mut answers = Vec::new();
    for i in 0..N {
        let mut send = send.clone();
        let req = Request::get(format!("https://localhost/hold/{i}/{long}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        answers.push(tokio::spawn(async move {
            let resp = send.send_request(req).await.expect("response");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, body)
        }));
    }
    backend.state.wait_held(N).await;
    let before = count.load(Ordering::SeqCst);
    backend.state.release(N);
    for (i, answer) in answers.into_iter().enumerate() {
        let (status, body) = answer.await.expect("request task");
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("released /hold/{i}/")), "{text}");
        assert!(body.len() > 300);
    }
    let records = count.load(Ordering::SeqCst) - before;
    // One record per response without batching (10 here, measured with the batching taken
    // out); 1 or 2 with it: the backend answers all ten at once, so most of them reach the
    // proxy's worker in the same turn.
    assert!(
        records <= N / 2,
        "{records} TLS records carried {N} responses that were ready together"
    );
}
