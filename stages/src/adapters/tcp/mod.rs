//! The TCP adapter: HTTP/1.1 and HTTP/2 over TLS or plaintext (hyper), with the connection
//! clock that times slow clients and the HTTP/1.1 framing guard.

pub mod batch;
pub mod body;
pub mod conn_clock;
pub mod h1_guard;
pub mod preface;
pub mod server;
pub mod sink;
