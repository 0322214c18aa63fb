//! CONNECT: the route let the target through by name; here it is resolved, each address
//! checked again (a name must not lead inside unless the inside is listed), dialled within
//! the route's `connect_timeout`, and the client's stream becomes a tunnel to it.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use tokio::net::TcpStream;

use crate::contract::exchange::Exchange;
use crate::contract::reason::Reason;
use crate::contract::route::ConnectPolicy;
use crate::contract::tunnel::{Limits, Tunnel, UdpTunnel};
use crate::http::connect_allow::Target;

/// Why a target could not be reached, as RFC 9209 names it.
pub(super) struct Unreached {
    pub reason: Reason,
    /// `Proxy-Status` error type.
    pub error: &'static str,
    pub detail: String,
}

impl Unreached {
    fn failed(error: &'static str, detail: impl Into<String>) -> Unreached {
        Unreached {
            reason: Reason::ConnectFailed,
            error,
            detail: detail.into(),
        }
    }

    /// The `Proxy-Status` field for the refusal.
    pub fn proxy_status(&self) -> Option<HeaderValue> {
        let detail: String = self
            .detail
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .filter(|c| *c != '"' && *c != '\\')
            .collect();
        HeaderValue::from_str(&format!(
            "spooky; error={}; details=\"{}: {detail}\"",
            self.error,
            self.reason.label()
        ))
        .ok()
    }
}

/// The addresses `target` may be reached at under `policy`: resolved (within the connect
/// timeout) and each checked again.
async fn resolve(
    policy: &ConnectPolicy,
    target: &Target,
) -> Result<Vec<std::net::SocketAddr>, Unreached> {
    let addrs: Vec<std::net::SocketAddr> = match target.ip {
        Some(ip) => vec![(ip, target.port).into()],
        None => {
            let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
            match tokio::time::timeout(policy.connect_timeout, lookup).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(e)) => return Err(Unreached::failed("dns_error", e.to_string())),
                Err(_) => return Err(Unreached::failed("dns_timeout", "name lookup timed out")),
            }
        }
    };
    let allowed: Vec<_> = addrs
        .iter()
        .filter(|a| policy.allow.dials(target, a.ip()))
        .copied()
        .collect();
    if allowed.is_empty() {
        return Err(Unreached {
            reason: Reason::ConnectDenied,
            error: "destination_ip_prohibited",
            detail: format!("{} resolves only to addresses not allowed", target.host),
        });
    }
    Ok(allowed)
}

/// A UDP socket connected to `target` under `policy` (CONNECT-UDP).
async fn bind_udp(
    policy: &ConnectPolicy,
    target: &Target,
) -> Result<tokio::net::UdpSocket, Unreached> {
    let addr = resolve(policy, target).await?[0];
    let local: std::net::SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| Unreached::failed("proxy_internal_error", e.to_string()))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| Unreached::failed("destination_ip_unroutable", format!("{addr}: {e}")))?;
    Ok(socket)
}

/// Resolves and dials `target` under `policy`.
async fn dial(policy: &ConnectPolicy, target: &Target) -> Result<TcpStream, Unreached> {
    let allowed = resolve(policy, target).await?;
    let deadline = tokio::time::Instant::now() + policy.connect_timeout;
    let mut last = Unreached::failed("destination_unavailable", "no address");
    for addr in allowed {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => {
                let error = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection_refused",
                    _ => "destination_ip_unroutable",
                };
                last = Unreached::failed(error, format!("{addr}: {e}"));
            }
            Err(_) => {
                return Err(Unreached::failed(
                    "connection_timeout",
                    format!("{addr}: no connection within {:?}", policy.connect_timeout),
                ));
            }
        }
    }
    Err(last)
}

/// A tunnel ready to run, and the head that opens it.
pub(super) enum Opened {
    Tcp(Response<()>, Tunnel),
    Udp(Response<()>, UdpTunnel),
}

/// Reaches `target` (a TCP connection, or for CONNECT-UDP a connected UDP socket) and
/// prepares the tunnel; the exchange's record and permits go into it.
pub(super) async fn open(
    ex: &mut Exchange,
    policy: &ConnectPolicy,
    target: &Target,
    tunnel_idle: Option<Duration>,
) -> Result<Opened, Unreached> {
    if ex.tunnel == Some(crate::contract::tunnel::TunnelKind::ConnectUdp) {
        let socket = bind_udp(policy, target).await?;
        let (head, tunnel) = udp_tunnel(ex, socket, tunnel_idle);
        return Ok(Opened::Udp(head, tunnel));
    }
    let stream = dial(policy, target).await?;
    let (head, parts) = tunnel(ex, stream, tunnel_idle);
    Ok(Opened::Tcp(head, parts.tcp()))
}

/// A CONNECT-UDP tunnel's head (`200`, `capsule-protocol: ?1`) and the tunnel.
fn udp_tunnel(
    ex: &mut Exchange,
    socket: tokio::net::UdpSocket,
    tunnel_idle: Option<Duration>,
) -> (Response<()>, UdpTunnel) {
    let (mut head, t) = tunnel(ex, (), tunnel_idle);
    head.headers_mut()
        .insert("capsule-protocol", HeaderValue::from_static("?1"));
    let tunnel = UdpTunnel {
        socket,
        client_body: t.client_body,
        limits: t.limits,
        end: t.end,
    };
    (head, tunnel)
}

/// The parts every tunnel of a CONNECT has, its upstream side aside.
struct Parts<U> {
    upstream: U,
    client_body: crate::body::RequestBody,
    limits: Limits,
    end: crate::contract::response::End,
}

impl Parts<TcpStream> {
    fn tcp(self) -> Tunnel {
        Tunnel {
            upstream: Box::new(self.upstream),
            client_body: self.client_body,
            limits: self.limits,
            end: self.end,
            websocket: false,
        }
    }
}

/// The tunnel's head (`200`) and its limits; the exchange's record and permits go with it.
fn tunnel<U>(
    ex: &mut Exchange,
    upstream: U,
    tunnel_idle: Option<Duration>,
) -> (Response<()>, Parts<U>) {
    let mut head = Response::new(());
    *head.status_mut() = StatusCode::OK;
    ex.stamp(head.headers_mut());
    let route = ex.decided.route.as_ref();
    let limits = Limits {
        idle: route
            .and_then(|r| r.timeouts.tunnel_idle)
            .map(|d| d.0)
            .or(tunnel_idle),
        until: ex.total_deadline.map(tokio::time::Instant::from_std),
    };
    ex.record.mark("connect");
    let end = ex.end(StatusCode::OK);
    let client_body = std::mem::replace(&mut ex.body, crate::body::RequestBody::empty());
    (
        head,
        Parts {
            upstream,
            client_body,
            limits,
            end,
        },
    )
}
