//! Steering QUIC datagrams between two processes that share a UDP socket (a restart with
//! socket inheritance).
//!
//! Every connection ID this process issues carries its *process tag* in its first byte and
//! the worker's index in its second (the other six bytes are random, from the system's
//! CSPRNG): [`TaggedCids`]. Every QUIC endpoint reads its UDP socket through a
//! [`SteeredSocket`]. While this process owns the socket, a datagram whose destination
//! connection ID carries the predecessor's tag is not given to quinn (which would answer a
//! connection it does not know with a stateless reset) but forwarded to the predecessor's
//! *inbox* for that worker — a loopback UDP socket — with the client's address in front.
//! Once this process hands over to a successor it *retires*: its endpoints stop reading the
//! shared socket and read their inbox instead, while still sending from the shared socket,
//! so their connections go on with the same address until they finish.
//!
//! A datagram carrying neither tag (the first Initial of a new connection, whose destination
//! ID the client chose) belongs to the process that reads it. While both read the shared
//! socket (between the successor's start and the predecessor's retirement, a few
//! milliseconds), a datagram for the successor's connections that the predecessor reads is
//! dropped (QUIC retransmits it) rather than answered with a reset. This is also the ground
//! for QUIC-LB style routing by connection ID across machines.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller};
use ring::rand::SecureRandom;

/// The length of the connection IDs this process issues.
pub const CID_LEN: usize = 8;
/// What a forwarded datagram carries in front: the client's IPv6 (or mapped IPv4) address and
/// port.
const FORWARD_HEADER: usize = 18;

/// Connection IDs that name this process and worker.
pub struct TaggedCids {
    tag: u8,
    worker: u8,
    rng: ring::rand::SystemRandom,
}

impl TaggedCids {
    pub fn new(tag: u8, worker: usize) -> TaggedCids {
        TaggedCids {
            tag,
            worker: (worker % 256) as u8,
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

impl ConnectionIdGenerator for TaggedCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        // The system CSPRNG does not fail on Linux; if it ever did, the ID would still be
        // unique enough for routing, only less private.
        let _ = self.rng.fill(&mut b[2..]);
        b[0] = self.tag;
        b[1] = self.worker;
        ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The process tag and worker of a datagram's destination connection ID, when it is one of
/// the IDs processes issue (8 bytes); `None` for a client-chosen one.
pub fn dcid_route(packet: &[u8]) -> Option<(u8, u8)> {
    let first = *packet.first()?;
    let at = if first & 0x80 != 0 {
        // Long header: version (4 bytes), then the destination ID's length and the ID.
        if usize::from(*packet.get(5)?) != CID_LEN {
            return None;
        }
        6
    } else {
        1
    };
    Some((*packet.get(at)?, *packet.get(at + 1)?))
}

/// Whether a datagram is a long-header Initial or 0-RTT packet (whose destination ID the
/// client may have chosen).
fn is_initial(packet: &[u8]) -> bool {
    packet
        .first()
        .is_some_and(|b| b & 0x80 != 0 && (b >> 4) & 0x3 <= 1)
}

/// This process's tag, and where its predecessor's connections go.
pub struct Steering {
    pub tag: u8,
    /// The predecessor's tag and its inboxes, by worker.
    predecessor: Mutex<Option<(u8, Vec<SocketAddr>)>>,
    /// Sends forwarded datagrams (loopback).
    forwarder: std::net::UdpSocket,
}

impl fmt::Debug for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steering").field("tag", &self.tag).finish()
    }
}

impl Steering {
    pub fn new(tag: u8) -> io::Result<Arc<Steering>> {
        let forwarder = std::net::UdpSocket::bind((IpAddr::from([127, 0, 0, 1]), 0))?;
        forwarder.set_nonblocking(true)?;
        Ok(Arc::new(Steering {
            tag,
            predecessor: Mutex::new(None),
            forwarder,
        }))
    }

    /// Datagrams for connections tagged `tag` go to `inboxes[worker]` from now on.
    pub fn set_predecessor(&self, tag: u8, inboxes: Vec<SocketAddr>) {
        *self
            .predecessor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((tag, inboxes));
    }

    /// What to do with a datagram: deliver it here, forward it (to where), or drop it.
    fn route(&self, packet: &[u8]) -> Route {
        let Some((tag, worker)) = dcid_route(packet) else {
            return Route::Here;
        };
        if tag == self.tag {
            return Route::Here;
        }
        if let Some((t, inboxes)) = &*self
            .predecessor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            && *t == tag
        {
            // Its connection (or its handshake in progress): the predecessor's.
            return inboxes
                .get(usize::from(worker))
                .copied()
                .map_or(Route::Drop, Route::Forward);
        }
        if is_initial(packet) {
            // A client-chosen destination ID that happens to be 8 bytes long: a new
            // connection, ours.
            return Route::Here;
        }
        if tag == self.tag.wrapping_add(1) {
            // The successor's connection, read while both of us read the socket: not ours to
            // answer (a reset would kill it); QUIC retransmits.
            return Route::Drop;
        }
        // A connection nobody here knows (of a process long gone): quinn answers it with a
        // stateless reset, so the client learns at once.
        Route::Here
    }

    fn forward(&self, to: SocketAddr, from: SocketAddr, packet: &[u8]) {
        let mut out = Vec::with_capacity(FORWARD_HEADER + packet.len());
        let ip = match from.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        out.extend_from_slice(&ip.octets());
        out.extend_from_slice(&from.port().to_be_bytes());
        out.extend_from_slice(packet);
        // Loopback, non-blocking: a full buffer loses the datagram, as the network could.
        let _ = self.forwarder.send_to(&out, to);
    }
}

enum Route {
    Here,
    Forward(SocketAddr),
    Drop,
}

/// A QUIC endpoint's UDP socket, read through the steering.
pub struct SteeredSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    steering: Arc<Steering>,
    /// Where a successor forwards this endpoint's datagrams.
    inbox: tokio::net::UdpSocket,
    /// Handed over: read the inbox, not the shared socket.
    retired: AtomicBool,
}

impl fmt::Debug for SteeredSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteeredSocket")
            .field("steering", &self.steering)
            .field("retired", &self.retired.load(Ordering::Relaxed))
            .finish()
    }
}

impl SteeredSocket {
    /// Wraps `socket` (quinn's own wrapper for the runtime) with an inbox on loopback. Must
    /// run inside tokio.
    pub fn new(
        socket: std::net::UdpSocket,
        steering: Arc<Steering>,
    ) -> io::Result<Arc<SteeredSocket>> {
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        let inbox = std::net::UdpSocket::bind((IpAddr::from([127, 0, 0, 1]), 0))?;
        inbox.set_nonblocking(true)?;
        Ok(Arc::new(SteeredSocket {
            inner,
            steering,
            inbox: tokio::net::UdpSocket::from_std(inbox)?,
            retired: AtomicBool::new(false),
        }))
    }

    /// Where a successor sends this endpoint's datagrams.
    pub fn inbox(&self) -> io::Result<SocketAddr> {
        self.inbox.local_addr()
    }

    /// Stops reading the shared socket: from now on datagrams come from the inbox.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    fn poll_inbox(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            let mut rb = tokio::io::ReadBuf::new(&mut buf[..]);
            match self.inbox.poll_recv_from(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {}
            }
            let len = rb.filled().len();
            if len <= FORWARD_HEADER {
                continue;
            }
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&buf[..16]);
            let ip = Ipv6Addr::from(ip);
            let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
            let port = u16::from_be_bytes([buf[16], buf[17]]);
            // The datagram, moved to the front of the buffer.
            buf.copy_within(FORWARD_HEADER..len, 0);
            let packet = len - FORWARD_HEADER;
            *m = RecvMeta {
                addr: SocketAddr::new(ip, port),
                len: packet,
                stride: packet,
                ecn: None,
                dst_ip: None,
            };
            return Poll::Ready(Ok(1));
        }
    }
}

impl AsyncUdpSocket for SteeredSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.retired.load(Ordering::Acquire) {
            return self.poll_inbox(cx, bufs, meta);
        }
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        for (m, buf) in meta.iter_mut().zip(bufs.iter()).take(n) {
            // A GRO batch comes from one client address: its first datagram decides.
            let first = &buf[..m.len.min(m.stride)];
            match self.steering.route(first) {
                Route::Here => {}
                Route::Forward(to) => {
                    let mut at = 0;
                    while at < m.len {
                        let end = (at + m.stride).min(m.len);
                        self.steering.forward(to, m.addr, &buf[at..end]);
                        at = end;
                    }
                    // quinn skips an empty buffer.
                    m.len = 0;
                }
                Route::Drop => m.len = 0,
            }
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_carry_the_tag_and_worker_and_are_routed_by_them() {
        let mut g = TaggedCids::new(7, 3);
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_eq!((a.len(), a[0], a[1]), (CID_LEN, 7, 3));
        assert_ne!(a, b, "random after the tag");
        // A short-header packet to it.
        let mut short = vec![0x40];
        short.extend_from_slice(&a);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(dcid_route(&short), Some((7, 3)));
        // A long-header packet with an 8-byte destination ID, and one a client chose (16).
        let mut long = vec![0xc0, 0, 0, 0, 1, 8];
        long.extend_from_slice(&b);
        assert_eq!(dcid_route(&long), Some((7, 3)));
        let initial = [vec![0xc0, 0, 0, 0, 1, 16], vec![9; 16]].concat();
        assert_eq!(dcid_route(&initial), None);
        assert_eq!(dcid_route(&[]), None);
    }

    #[test]
    fn the_predecessors_datagrams_are_forwarded_the_successors_dropped_new_ones_kept() {
        let s = Steering::new(2).expect("steering");
        let short = |tag: u8, worker: u8| [vec![0x40, tag, worker], vec![0; 30]].concat();
        // An Initial with an 8-byte destination ID the client chose.
        let initial = |tag: u8| [vec![0xc0, 0, 0, 0, 1, 8, tag, 0], vec![0; 30]].concat();
        assert!(matches!(s.route(&short(2, 0)), Route::Here));
        assert!(
            matches!(s.route(&short(3, 0)), Route::Drop),
            "the successor's"
        );
        assert!(
            matches!(s.route(&short(9, 0)), Route::Here),
            "unknown: quinn resets it"
        );
        assert!(
            matches!(s.route(&initial(3)), Route::Here),
            "a new connection"
        );
        let inbox: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        s.set_predecessor(1, vec![inbox]);
        assert!(matches!(s.route(&short(1, 0)), Route::Forward(a) if a == inbox));
        assert!(matches!(s.route(&initial(1)), Route::Forward(a) if a == inbox));
        assert!(
            matches!(s.route(&short(1, 5)), Route::Drop),
            "no such worker"
        );
        assert!(matches!(s.route(&initial(7)), Route::Here));
    }
}
