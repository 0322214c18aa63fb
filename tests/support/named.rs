//! Backends and clients for the routing and balancing tests: a hyper backend that says who
//! it is and what it was sent, and one client type over HTTP/3, HTTP/2 or HTTP/1.1.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use spooky::h3client::H3Conn;

use super::proxy::Proxy;
use super::tcp::{Sender, body};
use super::{TestCert, connect};

/// A backend that says who it is and what it was sent: body `NAME PATH?QUERY`, and headers
/// `x-backend`, `x-seen-host` (the Host it got), `x-seen-original-host`, `x-seen-debug` and
/// the forwarding headers (`x-seen-xff`, `-xfp`, `-xfh`, `-forwarded`).
pub struct Named {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Named {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Named {
    pub async fn start(name: &'static str, delay: Duration) -> Named {
        Named::start_on(name, delay, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// [`Named::start`] on a chosen address.
    pub async fn start_on(name: &'static str, delay: Duration, at: SocketAddr) -> Named {
        let listener = tokio::net::TcpListener::bind(at).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let counter = counter.clone();
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            // Every field line of a name, joined as a list.
                            let h = |n: &str| {
                                let all: Vec<&str> = req
                                    .headers()
                                    .get_all(n)
                                    .iter()
                                    .filter_map(|v| v.to_str().ok())
                                    .collect();
                                if all.is_empty() {
                                    "-".to_string()
                                } else {
                                    all.join(", ")
                                }
                            };
                            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                            let resp = Response::builder()
                                .header("x-backend", name)
                                .header("x-seen-host", h("host"))
                                .header("x-seen-original-host", h("x-original-host"))
                                .header("x-seen-debug", h("x-debug"))
                                .header("x-seen-xff", h("x-forwarded-for"))
                                .header("x-seen-xfp", h("x-forwarded-proto"))
                                .header("x-seen-xfh", h("x-forwarded-host"))
                                .header("x-seen-forwarded", h("forwarded"))
                                .body(Full::new(Bytes::from(format!("{name} {pq}"))))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Named { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// One response, whatever the protocol: status, the headers asked about, body.
#[derive(Debug, Clone)]
pub struct Got {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// A client on one protocol, over one connection.
pub enum Client {
    H3(H3Conn),
    Tcp(Sender),
}

impl Client {
    pub async fn open(proto: &str, proxy: &Proxy, cert: &TestCert) -> Client {
        match proto {
            "h3" => Client::H3(connect(&cert.client(), proxy).await),
            alpn => Client::Tcp(
                Sender::connect(
                    proxy.tcp_addr.expect("tcp"),
                    std::slice::from_ref(&cert.der),
                    if alpn == "h2" { b"h2" } else { b"http/1.1" },
                )
                .await,
            ),
        }
    }

    pub async fn send(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        match self {
            Client::H3(c) => {
                let r = c
                    .request(b.body(()).expect("request"), None)
                    .await
                    .expect("h3 response");
                Got {
                    status: r.status.as_u16(),
                    headers: flat(&r.headers),
                    body: String::from_utf8_lossy(&r.body).into_owned(),
                }
            }
            Client::Tcp(s) => {
                let r = s
                    .send(b.body(Full::new(Bytes::new())).expect("request"))
                    .await;
                let status = r.status().as_u16();
                let headers = flat(r.headers());
                let (bytes, _) = body(r).await;
                Got {
                    status,
                    headers,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                }
            }
        }
    }
}

pub fn flat(h: &http::HeaderMap) -> HashMap<String, String> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}
