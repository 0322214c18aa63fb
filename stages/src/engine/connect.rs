//! CONNECT: the route let the target through by name; here it is resolved, each address
//! checked again (a name must not lead inside unless the inside is listed), dialled within
//! the route's `connect_timeout`, and the client's stream becomes a tunnel to it.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use tokio::net::TcpStream;

use crate::contract::exchange::Exchange;
use crate::contract::reason::Reason;
use crate::contract::route::ConnectPolicy;
use crate::contract::tunnel::{Limits, Tunnel};
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

/// Resolves and dials `target` under `policy`.
pub(super) async fn dial(policy: &ConnectPolicy, target: &Target) -> Result<TcpStream, Unreached> {
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

/// The tunnel's head (`200`) and its limits; the exchange's record and permits go with it.
pub(super) fn tunnel(
    ex: &mut Exchange,
    upstream: TcpStream,
    tunnel_idle: Option<Duration>,
) -> (Response<()>, Tunnel) {
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
        Tunnel {
            upstream: Box::new(upstream),
            client_body,
            limits,
            end,
        },
    )
}
