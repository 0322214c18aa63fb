//! The HTTP/3 adapter: QUIC connections (quinn), request streams (h3), and the guard in front
//! of h3's head parsing.

pub mod body;
pub mod datagrams;
pub mod guard;
pub mod server;
pub mod sink;
pub mod steer;
