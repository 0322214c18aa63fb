//! Tunnels: an exchange whose answer turns its stream into a byte pipe — a WebSocket after
//! the backend's `101` (HTTP/1.1 `Upgrade`, or extended CONNECT with `:protocol = websocket`
//! over HTTP/2, RFC 8441), or a CONNECT to a target a route allows.
//!
//! The exchange stays live for the tunnel's whole life: its permits (caps, the drain guard)
//! ride in its [`End`] until both directions closed, the tunnel sat idle for its limit, its
//! lifetime passed, or the drain deadline came ([`close_all`]). Each direction is pumped by
//! its own future, so neither waits on the other (a client that sends without reading
//! cannot stall what the backend sends it).

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::contract::record::Outcome;
use crate::contract::response::End;

/// The tunnel an exchange asks for (set by ingress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// RFC 6455 over HTTP/1.1 `Upgrade: websocket`, or RFC 8441 extended CONNECT.
    WebSocket,
    /// `CONNECT host:port` (RFC 9110 §9.3.6): a TCP connection to the target.
    Connect,
    /// CONNECT-UDP (RFC 9298) over HTTP/3: UDP payloads in HTTP Datagrams (RFC 9297).
    ConnectUdp,
}

/// A byte stream a tunnel can pump: a backend's upgraded connection, a client's.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// When a tunnel is closed though both ends still want it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// No byte either way for this long.
    pub idle: Option<Duration>,
    /// The tunnel's end of life (the route's `timeouts.total`).
    pub until: Option<Instant>,
}

/// Everything a client sink needs to run a tunnel.
pub struct Tunnel {
    /// The backend's side.
    pub upstream: Box<dyn Io>,
    /// The client's bytes where they arrive as request body frames (HTTP/3); the HTTP/1.1
    /// and HTTP/2 sinks read their upgraded connection instead.
    pub client_body: RequestBody,
    pub limits: Limits,
    /// The exchange's permits and record, released when the tunnel ends.
    pub end: End,
}

/// A CONNECT-UDP tunnel: a UDP socket connected to the target, and the exchange.
pub struct UdpTunnel {
    pub socket: tokio::net::UdpSocket,
    /// The request stream: its end (or reset) ends the tunnel (RFC 9298 §3).
    pub client_body: RequestBody,
    pub limits: Limits,
    pub end: End,
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their sending half.
    Closed,
    /// The client's side failed (reset, connection lost).
    ClientGone,
    /// The backend's side failed.
    UpstreamFailed,
    /// Idle for `Limits::idle`.
    Idle,
    /// `Limits::until` passed.
    Lifetime,
    /// The drain deadline passed.
    Draining,
}

impl Ended {
    pub fn label(self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::ClientGone => "client_gone",
            Ended::UpstreamFailed => "upstream_failed",
            Ended::Idle => "idle",
            Ended::Lifetime => "lifetime",
            Ended::Draining => "draining",
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            Ended::Closed | Ended::Idle | Ended::Lifetime | Ended::Draining => Outcome::Complete,
            Ended::ClientGone => Outcome::Cancelled,
            Ended::UpstreamFailed => Outcome::UpstreamFailed,
        }
    }
}

/// Which side of one direction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Reader,
    Writer,
}

/// Bytes each way and when any last moved.
pub struct Activity {
    /// Client → backend.
    pub up: AtomicU64,
    /// Backend → client.
    pub down: AtomicU64,
    start: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Something moved, `n` bytes counted in `count`.
    pub fn moved(&self, count: &AtomicU64, n: usize) {
        count.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Copies `from` into `into` until `from` ends, then closes `into`'s sending half.
pub async fn pump<R, W>(
    mut from: R,
    mut into: W,
    count: &AtomicU64,
    activity: &Activity,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.map_err(|_| Side::Reader)?;
        if n == 0 {
            let _ = into.shutdown().await;
            return Ok(());
        }
        into.write_all(&buf[..n]).await.map_err(|_| Side::Writer)?;
        into.flush().await.map_err(|_| Side::Writer)?;
        activity.moved(count, n);
    }
}

/// Copies the client's request body (HTTP/3 DATA frames) into `into` until it ends, then
/// closes `into`'s sending half.
pub async fn pump_body<W>(
    body: &mut RequestBody,
    mut into: W,
    count: &AtomicU64,
    activity: &Activity,
) -> Result<(), Side>
where
    W: AsyncWrite + Unpin,
{
    use http_body_util::BodyExt;
    loop {
        match body.frame().await {
            None => {
                let _ = into.shutdown().await;
                return Ok(());
            }
            Some(Err(_)) => return Err(Side::Reader),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                into.write_all(&data).await.map_err(|_| Side::Writer)?;
                into.flush().await.map_err(|_| Side::Writer)?;
                activity.moved(count, data.len());
            }
        }
    }
}

/// Runs a tunnel's two directions (`up`: client → backend, `down`: backend → client) until
/// both are done or a limit ends it; returns how it ended.
pub async fn run<U, D>(up: U, down: D, activity: &Activity, limits: Limits) -> Ended
where
    U: Future<Output = Result<(), Side>>,
    D: Future<Output = Result<(), Side>>,
{
    tokio::pin!(up, down);
    let _open = OpenGauge::open();
    let (mut up_done, mut down_done) = (false, false);
    let limit = limited(activity, limits);
    tokio::pin!(limit);
    loop {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                // The backend said all it had: a client that then resets rather than closes
                // (HTTP/2 clients often do) lost nothing.
                Err(Side::Reader) if down_done => return Ended::Closed,
                Err(Side::Reader) => return Ended::ClientGone,
                Err(Side::Writer) => return Ended::UpstreamFailed,
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(Side::Reader) => return Ended::UpstreamFailed,
                Err(Side::Writer) => return Ended::ClientGone,
            },
            ended = &mut limit => return ended,
        }
        if up_done && down_done {
            return Ended::Closed;
        }
    }
}

/// Completes when a limit ends the tunnel: no byte either way for `limits.idle`,
/// `limits.until` passed, or the drain deadline ([`close_all`]).
pub async fn limited(activity: &Activity, limits: Limits) -> Ended {
    let mut closing = closing();
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let idle_at = limits.idle.map_or(far, |idle| activity.last() + idle);
        tokio::select! {
            () = tokio::time::sleep_until(idle_at), if limits.idle.is_some() => {
                // Activity since the timer was set moves the deadline on.
                if limits.idle.is_some_and(|idle| activity.last() + idle <= Instant::now()) {
                    return Ended::Idle;
                }
            }
            () = tokio::time::sleep_until(limits.until.unwrap_or(far)), if limits.until.is_some() => {
                return Ended::Lifetime;
            }
            _ = closing.wait_for(|c| *c) => return Ended::Draining,
        }
    }
}

/// Runs `tunnel` between the client's upgraded connection and the backend's, then ends the
/// exchange. On any end but both sides closing, both sending halves are shut (bounded), so
/// each side reads a clean end of stream.
pub async fn splice(client: impl Io, tunnel: Tunnel) -> Ended {
    let Tunnel {
        upstream,
        limits,
        end,
        client_body,
    } = tunnel;
    drop(client_body);
    let activity = Activity::default();
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let ended = {
        let up = pump(&mut cr, &mut uw, &activity.up, &activity);
        let down = pump(&mut ur, &mut cw, &activity.down, &activity);
        run(up, down, &activity, limits).await
    };
    if ended != Ended::Closed {
        let shut = async {
            let _ = tokio::join!(cw.shutdown(), uw.shutdown());
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), shut).await;
    }
    finish(end, &activity, ended);
    ended
}

/// Records how a tunnel ended in its exchange's record (bytes each way, outcome), then lets
/// the exchange end.
pub fn finish(mut end: End, activity: &Activity, ended: Ended) {
    if let Some(r) = end.record.as_mut() {
        r.bytes_in_counter()
            .add(activity.up.load(Ordering::Relaxed));
        r.bytes_out += activity.down.load(Ordering::Relaxed);
        r.ended(ended.outcome());
    }
    metrics::counter!(crate::metrics::TUNNELS_ENDED, "how" => ended.label()).increment(1);
    tracing::debug!(
        up = activity.up.load(Ordering::Relaxed),
        down = activity.down.load(Ordering::Relaxed),
        how = ended.label(),
        "tunnel ended"
    );
    drop(end);
}

/// `spooky_tunnels_open`, up while a tunnel runs.
pub struct OpenGauge(metrics::Gauge);

impl OpenGauge {
    /// Counts a tunnel open until this is dropped.
    pub fn open() -> Self {
        let g = metrics::gauge!(crate::metrics::TUNNELS_OPEN);
        g.increment(1.0);
        OpenGauge(g)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn closing_signal() -> &'static watch::Sender<bool> {
    static CLOSING: OnceLock<watch::Sender<bool>> = OnceLock::new();
    CLOSING.get_or_init(|| watch::channel(false).0)
}

fn closing() -> watch::Receiver<bool> {
    closing_signal().subscribe()
}

/// The drain deadline passed: every tunnel of the process closes now (both sides' sending
/// halves are shut, so each end sees a clean end of stream rather than a reset).
pub fn close_all() {
    closing_signal().send_replace(true);
}
