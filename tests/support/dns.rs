//! A DNS server on 127.0.0.1 that the test controls: A queries are answered with the
//! addresses it is given (TTL 1 s), or SERVFAIL when it is told to fail; other queries get an
//! empty answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct DnsServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Option<Vec<Ipv4Addr>>>>,
    /// A queries answered so far.
    pub queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    pub async fn start(ips: &[Ipv4Addr]) -> DnsServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new(Some(ips.to_vec())));
        let queries = Arc::new(AtomicUsize::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let ips = a.lock().expect("lock").clone();
                if let Some(reply) = reply(&buf[..n], ips.as_deref(), &q) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        DnsServer {
            addr,
            answer,
            queries,
            task,
        }
    }

    /// Answers `ips` from now on; `None`: SERVFAIL.
    pub fn set(&self, ips: Option<&[Ipv4Addr]>) {
        *self.answer.lock().expect("lock") = ips.map(<[Ipv4Addr]>::to_vec);
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The answer to one query (RFC 1035 §4.1): the question echoed, then the A records.
fn reply(query: &[u8], ips: Option<&[Ipv4Addr]>, count: &AtomicUsize) -> Option<Vec<u8>> {
    // The question: labels up to a zero byte, then QTYPE and QCLASS.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + usize::from(query[i]);
    }
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let question = query.get(12..i + 5)?;
    let a = qtype == 1;
    if a {
        count.fetch_add(1, Ordering::SeqCst);
    }
    let records: &[Ipv4Addr] = match ips {
        Some(ips) if a => ips,
        _ => &[],
    };
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(if ips.is_some() {
        &[0x81, 0x80]
    } else {
        &[0x81, 0x82]
    });
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in records {
        // A pointer to the name in the question, type A, class IN, TTL 1 s, 4 bytes.
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
