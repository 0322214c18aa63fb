//! What a TCP connection may say before TLS or HTTP: a PROXY protocol header from a trusted
//! load balancer in front (v1 text or v2 binary, as HAProxy defines them), and the first bytes
//! that tell a TLS ClientHello from a plain HTTP request sent to a TLS port.
//!
//! The PROXY header is read exactly (peeked, then consumed up to its last byte), so the bytes
//! after it reach TLS or HTTP untouched; the parsing itself is the `ppp` crate's.

use std::net::SocketAddr;

use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ProxyProtocol;

/// v1's longest line (`PROXY TCP6 …\r\n`), per the specification.
const V1_MAX: usize = 107;
/// v2's fixed part: the 12-byte signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;

/// Why a PROXY header was refused (the connection is then closed).
#[derive(Debug)]
pub enum PrefaceError {
    /// The stream ended or failed while the header was read.
    Io(std::io::Error),
    /// Not a header of the configured version, or a malformed one.
    Malformed(String),
}

impl std::fmt::Display for PrefaceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrefaceError::Io(e) => write!(f, "reading the PROXY header: {e}"),
            PrefaceError::Malformed(why) => write!(f, "bad PROXY header: {why}"),
        }
    }
}

/// Reads the PROXY header of `version` that a trusted peer must send first, and returns the
/// client address it reports: `None` when it reports none (v1 `UNKNOWN`, v2 `LOCAL` — a
/// health check of the balancer itself — or a family other than IPv4/IPv6), in which case
/// the peer's own address stands.
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    version: ProxyProtocol,
) -> Result<Option<SocketAddr>, PrefaceError> {
    match version {
        ProxyProtocol::Off => Ok(None),
        ProxyProtocol::V1 => read_v1(stream).await,
        ProxyProtocol::V2 => read_v2(stream).await,
    }
}

async fn read_v1(stream: &mut TcpStream) -> Result<Option<SocketAddr>, PrefaceError> {
    let mut line = Vec::with_capacity(V1_MAX);
    let mut peeked = [0u8; V1_MAX];
    loop {
        // Peek, then consume only up to the line's end: what follows belongs to TLS or HTTP.
        let n = stream.peek(&mut peeked).await.map_err(PrefaceError::Io)?;
        if n == 0 {
            return Err(PrefaceError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let room = V1_MAX - line.len();
        let seen = &peeked[..n.min(room)];
        // The line ends here, or a CR consumed last time is followed by its LF now.
        let end = if line.last() == Some(&b'\r') && seen.first() == Some(&b'\n') {
            Some(1)
        } else {
            seen.windows(2).position(|w| w == b"\r\n").map(|at| at + 2)
        };
        let take = match end {
            Some(take) => take,
            None if seen.len() == room => {
                return Err(PrefaceError::Malformed(format!(
                    "no line end within {V1_MAX} bytes (a v1 header was expected)"
                )));
            }
            None => seen.len(),
        };
        let start = line.len();
        line.resize(start + take, 0);
        stream
            .read_exact(&mut line[start..])
            .await
            .map_err(PrefaceError::Io)?;
        if end.is_some() {
            break;
        }
    }
    let header = ppp::v1::Header::try_from(line.as_slice())
        .map_err(|e| PrefaceError::Malformed(format!("v1: {e}")))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Unknown => None,
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
    })
}

async fn read_v2(stream: &mut TcpStream) -> Result<Option<SocketAddr>, PrefaceError> {
    let mut buf = vec![0u8; V2_FIXED];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(PrefaceError::Io)?;
    let partial = ppp::v2::Header::try_from(buf.as_slice());
    if partial.is_complete() && partial.is_err() {
        return Err(PrefaceError::Malformed(match partial {
            Err(e) => format!("v2: {e}"),
            Ok(_) => "v2".into(),
        }));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    buf.resize(V2_FIXED + len, 0);
    stream
        .read_exact(&mut buf[V2_FIXED..])
        .await
        .map_err(PrefaceError::Io)?;
    let header = ppp::v2::Header::try_from(buf.as_slice())
        .map_err(|e| PrefaceError::Malformed(format!("v2: {e}")))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

/// Whether the connection's first bytes are a plain HTTP/1.x request line rather than a TLS
/// record (a ClientHello starts with the handshake content type, 22). Waits for the first
/// bytes; consumes nothing.
pub async fn is_plain_http(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 8];
    let n = stream.peek(&mut first).await?;
    let first = &first[..n];
    // A method token is upper-case letters (RFC 9110 registers no others) and a space ends it;
    // too short to see the space yet still counts when every byte so far is a letter.
    let letters = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    Ok(letters > 0 && (letters == first.len() || first[letters] == b' '))
}

/// The answer to plain HTTP on a TLS port (nginx's wording), sent before the connection is
/// closed.
pub const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 68\r\n\
connection: close\r\n\
\r\n\
400 Bad Request: a plain HTTP request was sent to an HTTPS port.\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_is_framed_by_its_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).expect("ASCII");
        let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert_eq!(body.len(), 68, "{body:?}");
    }
}
