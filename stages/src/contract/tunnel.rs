//! Tunnels: an exchange whose answer turns its stream into a byte pipe — a WebSocket after
//! the backend's `101` (HTTP/1.1 `Upgrade`, or extended CONNECT with `:protocol = websocket`
//! over HTTP/2, RFC 8441), or a CONNECT to a target a route allows.
//!
//! The exchange stays live for the tunnel's whole life: its permits (caps, the drain guard)
//! ride in its [`End`] until both directions closed, the tunnel sat idle for its limit, its
//! lifetime passed, or the drain deadline came ([`close_all`]). Each direction is pumped by
//! its own future ([`pump_until`]), so neither waits on the other (a client that sends
//! without reading cannot stall what the backend sends it).

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
    /// RFC 6455 over HTTP/1.1 `Upgrade: websocket`, or extended CONNECT (RFC 8441, RFC 9220).
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
    /// A WebSocket: Spooky's own close is a Close frame (1001, going away) to both sides, at
    /// a frame boundary, before the streams end.
    pub websocket: bool,
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

/// Copies `from` into `into` until `from` ends, then closes `into`'s sending half; told to
/// stop, closes `into` cleanly — for a WebSocket (`frames`) after finishing the frame in
/// progress and sending a Close frame (1001, going away).
pub async fn pump_until<R, W>(
    mut from: R,
    mut into: W,
    count: &AtomicU64,
    activity: &Activity,
    mut stop: watch::Receiver<bool>,
    mut frames: Option<Frames>,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut stopping = false;
    loop {
        let n = if stopping {
            from.read(&mut buf).await.map_err(|_| Side::Reader)?
        } else {
            tokio::select! {
                r = from.read(&mut buf) => r.map_err(|_| Side::Reader)?,
                () = async { drop(stop.wait_for(|s| *s).await) } => {
                    stopping = true;
                    if frames.as_ref().is_none_or(Frames::at_boundary) {
                        return close(into, frames).await;
                    }
                    continue;
                }
            }
        };
        if n == 0 {
            let _ = into.shutdown().await;
            return Ok(());
        }
        let upto = match frames.as_mut() {
            Some(f) if stopping => f.advance(&buf[..n]),
            Some(f) => {
                f.feed(&buf[..n]);
                n
            }
            None => n,
        };
        into.write_all(&buf[..upto])
            .await
            .map_err(|_| Side::Writer)?;
        into.flush().await.map_err(|_| Side::Writer)?;
        activity.moved(count, upto);
        if stopping && frames.as_ref().is_some_and(Frames::at_boundary) {
            return close(into, frames).await;
        }
    }
}

/// Ends `into` cleanly: a WebSocket Close frame first (when `frames`), then end of stream.
async fn close<W: AsyncWrite + Unpin>(mut into: W, frames: Option<Frames>) -> Result<(), Side> {
    if let Some(f) = frames {
        let _ = into.write_all(&f.close_frame()).await;
        let _ = into.flush().await;
    }
    let _ = into.shutdown().await;
    Ok(())
}

/// Where a WebSocket byte stream's frame boundaries are (RFC 6455 §5.2), followed byte by
/// byte without holding any of it, so that Spooky's own Close frame goes between frames.
pub struct Frames {
    header: [u8; 14],
    have: usize,
    need: usize,
    /// Payload bytes left of the frame in progress.
    left: u64,
    /// Frames in this direction go to a server: masked (§5.3).
    masked: bool,
}

impl Frames {
    pub fn new(to_server: bool) -> Frames {
        Frames {
            header: [0; 14],
            have: 0,
            need: 2,
            left: 0,
            masked: to_server,
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Follows `data` up to the end of the frame in progress, or all of it; returns how much.
    pub fn advance(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() {
            if self.left > 0 {
                let n = (data.len() - used).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                used += n;
                if self.left == 0 {
                    return used;
                }
                continue;
            }
            let take = (self.need - self.have).min(data.len() - used);
            self.header[self.have..self.have + take].copy_from_slice(&data[used..used + take]);
            self.have += take;
            used += take;
            let len7 = self.header[1] & 0x7f;
            if self.have == 2 {
                let ext = match len7 {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
                self.need = 2 + ext + mask;
            }
            if self.have >= 2 && self.have == self.need {
                let h = &self.header;
                self.left = match len7 {
                    126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                    127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                    n => u64::from(n),
                };
                self.have = 0;
                self.need = 2;
                if self.left == 0 {
                    return used;
                }
            }
        }
        used
    }

    /// Follows all of `data`.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.advance(data);
            data = &data[n..];
        }
    }

    /// A Close frame with status 1001 (going away), masked towards a server.
    fn close_frame(&self) -> Vec<u8> {
        let code = 1001u16.to_be_bytes();
        if self.masked {
            let key: [u8; 4] = std::array::from_fn(|_| fastrand::u8(..));
            vec![
                0x88,
                0x82,
                key[0],
                key[1],
                key[2],
                key[3],
                code[0] ^ key[0],
                code[1] ^ key[1],
            ]
        } else {
            vec![0x88, 0x02, code[0], code[1]]
        }
    }
}

/// A request body (HTTP/3 DATA frames) read as a byte stream; trailers are skipped, a failed
/// body reads as an error.
pub struct BodyReader {
    body: RequestBody,
    /// What is left of the last frame read.
    left: bytes::Bytes,
}

impl BodyReader {
    pub fn new(body: RequestBody) -> BodyReader {
        BodyReader {
            body,
            left: bytes::Bytes::new(),
        }
    }
}

impl AsyncRead for BodyReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.left.is_empty() {
            match std::task::ready!(http_body::Body::poll_frame(
                std::pin::Pin::new(&mut self.body),
                cx
            )) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e.to_string()))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.left = data;
                    }
                }
            }
        }
        let n = self.left.len().min(buf.remaining());
        let chunk = self.left.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// Runs a tunnel's two directions (`up`: client → backend, `down`: backend → client) until
/// both are done or a limit ends it; returns how it ended. When a limit ends it, the
/// directions are told (`stop`) to close cleanly ([`pump_until`]) and get a moment (bounded)
/// to do it.
async fn run_closing<U, D>(
    up: U,
    down: D,
    activity: &Activity,
    limits: Limits,
    stop: &watch::Sender<bool>,
) -> Ended
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
            ended = &mut limit => {
                stop.send_replace(true);
                let closed = async {
                    if !up_done {
                        let _ = (&mut up).await;
                    }
                    if !down_done {
                        let _ = (&mut down).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), closed).await;
                return ended;
            }
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
        websocket,
    } = tunnel;
    drop(client_body);
    let activity = Activity::default();
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let (stop, stopped) = watch::channel(false);
    let frames = |to_server: bool| websocket.then(|| Frames::new(to_server));
    let up = pump_until(
        cr,
        uw,
        &activity.up,
        &activity,
        stopped.clone(),
        frames(true),
    );
    let down = pump_until(ur, cw, &activity.down, &activity, stopped, frames(false));
    let ended = run_closing(up, down, &activity, limits, &stop).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_followed_across_any_split() {
        // A masked text frame "hi", a 300-byte binary frame (16-bit length), an empty ping.
        let mut stream = vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        stream.extend_from_slice(&[0x82, 0x7e, 0x01, 0x2c]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        stream.extend_from_slice(&[0x89, 0x00]);
        let ends = [8, 8 + 4 + 300, stream.len()];
        for split in 1..stream.len() {
            let mut f = Frames::new(false);
            let mut at = 0;
            let mut seen = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let n = f.advance(rest);
                    at += n;
                    rest = &rest[n..];
                    if f.at_boundary() {
                        seen.push(at);
                    }
                }
            }
            assert_eq!(seen, ends, "split at {split}");
        }
    }

    #[test]
    fn spookys_close_frames_are_masked_towards_servers() {
        assert_eq!(
            Frames::new(false).close_frame(),
            vec![0x88, 0x02, 0x03, 0xe9]
        );
        let masked = Frames::new(true).close_frame();
        assert_eq!(&masked[..2], &[0x88, 0x82]);
        assert_eq!([masked[6] ^ masked[2], masked[7] ^ masked[3]], [0x03, 0xe9]);
    }
}
