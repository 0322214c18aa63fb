//! Listening sockets, made before the workers start so that a bad address fails the start with
//! its name. With more than one worker each worker gets its own UDP and TCP socket on the same
//! address (`SO_REUSEPORT`): the kernel spreads connections and QUIC flows across them by their
//! address 4-tuple, and no socket, accept queue or lock is shared between cores.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffers asked for on UDP sockets: room for bursts of QUIC datagrams between two
/// reads. The kernel caps it at `net.core.rmem_max` / `wmem_max` (raise them for more).
pub const UDP_BUFFER: usize = 2 * 1024 * 1024;

/// The accept queue of each TCP socket.
const BACKLOG: i32 = 1024;

/// A non-blocking UDP socket bound to `addr`, shareable with other workers when `reuse_port`.
pub fn udp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Best effort: the kernel's limits decide what we get.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A non-blocking listening TCP socket bound to `addr`, shareable with other workers when
/// `reuse_port`.
pub fn tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's own bind does: a restarted daemon may take its port back at once.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
