//! `spooky-bench`: an HTTP/3 client for trying Spooky out, and the load tool of the benches.
//!
//! * `spooky-bench get https://127.0.0.1:8443/hello` — one request, prints status and body;
//!   `-X` method, `-H 'name: value'`, `-d` body, `--timeout`, `--cacert FILE` to verify the
//!   server's certificate (off by default: the quickstart's certificate is self-signed).
//! * `spooky-bench load --url https://127.0.0.1:8443/x --connections 8 --streams 16
//!   --duration 10s` — closed-loop load: each connection keeps `streams` requests in flight;
//!   prints req/s, responses by status (Spooky's own refusals also by reason, from their
//!   `Proxy-Status`) and p50/p90/p99/max latency. Bounded by `--duration` and
//!   `--max-requests`. `--rate R` is open-loop: requests are due at R per second in all,
//!   and latency counts from when each was due, not when it could be sent (no coordinated
//!   omission). `--proto h2|h1` loads an https:// URL over TCP and TLS instead of QUIC. An
//!   `http://` URL loads an HTTP/1.1 server directly (the baseline without the proxy).
//! * `spooky-bench idle --url https://127.0.0.1:8443/x --connections 10000 --hold 10s` — opens
//!   that many connections (`--proto h3|h2|h1`), one request on each, and holds them idle:
//!   the server's memory per idle connection.
//! * `spooky-bench slow --url https://127.0.0.1:8443/1m --requests 1000 --hold 10s` — that
//!   many HTTP/2 responses read no further than their head (64 KiB windows): slow readers.
//! * `spooky-bench backend --addr 127.0.0.1:8080 --size 1024` — an HTTP/1.1 backend answering
//!   every request with `size` bytes.
//! * `spooky-bench quic-serve --addr 127.0.0.1:4434 --size 1048576` — raw QUIC, no HTTP/3:
//!   every stream answered with `size` bytes; `load --proto quic --url https://127.0.0.1:4434/`
//!   downloads from it. The floor an HTTP/3 download through Spooky is measured against.
//!
//! `load` also counts the body bytes of the responses: `bytes=` and `mib_s=` (MiB/s, as
//! h2load counts) in `--machine` output, for download rates.

mod quic;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Uri;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use spooky::h3client::{Error, H3Client, H3Conn, Trust};

#[derive(Parser)]
#[command(name = "spooky-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One HTTP/3 request; prints the status line, headers (with -i) and body.
    Get {
        url: String,
        /// Print response headers.
        #[arg(short = 'i', long)]
        include: bool,
        /// The request method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// A request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// A request body.
        #[arg(short = 'd', long)]
        data: Option<String>,
        /// How long the whole request may take (connecting included), e.g. "10s".
        #[arg(long, default_value = "10s")]
        timeout: String,
        /// Verify the server's certificate against this CA (PEM); without it, any certificate
        /// is accepted.
        #[arg(long)]
        cacert: Option<std::path::PathBuf>,
    },
    /// Closed-loop HTTP/3 load.
    Load {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// How long to run, e.g. "10s".
        #[arg(long, default_value = "5s")]
        duration: String,
        /// Stop after this many requests in all.
        #[arg(long, default_value_t = 10_000_000)]
        max_requests: u64,
        /// Open loop: requests due per second in all, latency counted from when each was due
        /// (0 = closed loop, as fast as responses come back).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Print one machine-readable line (`rps=… p50_us=… …`) instead of a table.
        #[arg(long)]
        machine: bool,
        /// The protocol of an https:// URL: h3 (QUIC), h2 or h1 (over TLS; with h1, each
        /// stream is a connection of its own), or quic (raw streams to `quic-serve`, no
        /// HTTP/3). An http:// URL is HTTP/1.1 in the clear.
        #[arg(long, value_enum, default_value_t = Proto::H3)]
        proto: Proto,
    },
    /// Opens `connections` connections, makes one request on each, then holds them idle for
    /// `hold` (prints `open N` once all are up): the server's memory per idle connection.
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, value_enum, default_value_t = Proto::H3)]
        proto: Proto,
        /// How long to hold them, e.g. "10s".
        #[arg(long, default_value = "10s")]
        hold: String,
    },
    /// Makes `requests` requests over HTTP/2 (100 streams per connection) and reads each
    /// response no further than its head, with a 64 KiB stream window: slow readers, each of
    /// which lets the server send at most 64 KiB. Prints `held N` once every head came, then
    /// holds them for `hold`: the server's memory with that many stalled responses.
    Slow {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// How long to hold them, e.g. "10s".
        #[arg(long, default_value = "10s")]
        hold: String,
    },
    /// Raw QUIC (no HTTP/3): answers every bidirectional stream with `size` bytes once the
    /// client finished its side. Load it with `load --proto quic --url https://ADDR/`.
    QuicServe {
        #[arg(long, default_value = "127.0.0.1:4434")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1024 * 1024)]
        size: usize,
    },
    /// An HTTP/1.1 backend answering every request with `size` bytes.
    Backend {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Each answer takes this long (e.g. "10ms"): with `concurrency`, a backend of known
        /// capacity (concurrency / delay requests per second).
        #[arg(long, default_value = "0s")]
        delay: String,
        /// Requests served at once (0: no limit); the others wait their turn, in order.
        #[arg(long, default_value_t = 0)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The raw QUIC server stands where a one-worker proxy would: one thread.
    let mut rt = if matches!(cli.command, Command::QuicServe { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match rt.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Get {
                url,
                include,
                method,
                headers,
                data,
                timeout,
                cacert,
            } => {
                let timeout =
                    spooky_stages::config::parse_duration(&timeout).map_err(Error::from)?;
                let req = OneRequest {
                    method,
                    headers,
                    body: data.map(Bytes::from),
                    cacert,
                };
                get(&url, include, req, timeout).await
            }
            Command::Load {
                url,
                connections,
                streams,
                duration,
                max_requests,
                rate,
                machine,
                proto,
            } => {
                let d = spooky_stages::config::parse_duration(&duration).map_err(Error::from)?;
                let plan = Plan {
                    connections,
                    streams,
                    duration: d,
                    max_requests,
                    rate,
                    proto,
                };
                load(&url, plan, machine).await
            }
            Command::Idle {
                url,
                connections,
                proto,
                hold,
            } => {
                let hold = spooky_stages::config::parse_duration(&hold).map_err(Error::from)?;
                idle(&url, connections, proto, hold).await
            }
            Command::Slow {
                url,
                requests,
                hold,
            } => {
                let hold = spooky_stages::config::parse_duration(&hold).map_err(Error::from)?;
                slow(&url, requests, hold).await
            }
            Command::QuicServe { addr, size } => quic::serve(addr, size).await,
            Command::Backend {
                addr,
                size,
                delay,
                concurrency,
            } => {
                let delay = spooky_stages::units::parse_duration(&delay)?;
                backend(addr, size, delay, concurrency).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spooky-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Address and TLS server name of an `https://host:port/...` URL.
fn target(url: &str) -> Result<(SocketAddr, String), Error> {
    let uri: Uri = url.parse()?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => {
            return Err(format!("`{url}`: HTTP/3 needs an https:// URL (got {other}://)").into());
        }
        None => return Err(format!("`{url}`: no scheme: expected https://host:port/path").into()),
    }
    let host = uri
        .host()
        .ok_or("URL has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let addr = (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or("host does not resolve")?;
    Ok((addr, host))
}

/// What `get` sends besides the URL.
struct OneRequest {
    method: String,
    headers: Vec<String>,
    body: Option<Bytes>,
    cacert: Option<std::path::PathBuf>,
}

/// How the client checks certificates: against `cacert` (PEM), or not at all.
fn trust(cacert: Option<&std::path::Path>) -> Result<Trust, Error> {
    let Some(path) = cacert else {
        return Ok(Trust::Insecure);
    };
    let pem = std::fs::read(path).map_err(|e| format!("--cacert {}: {e}", path.display()))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--cacert {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("--cacert {}: no certificate in it", path.display()).into());
    }
    Ok(Trust::Roots(certs))
}

async fn get(url: &str, include: bool, one: OneRequest, timeout: Duration) -> Result<(), Error> {
    let (addr, name) = target(url)?;
    let method = http::Method::from_bytes(one.method.as_bytes())
        .map_err(|_| format!("-X {}: not a method", one.method))?;
    let mut req = http::Request::builder().method(method).uri(url);
    for h in &one.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("-H `{h}`: expected `name: value`"))?;
        req = req.header(k.trim(), v.trim());
    }
    let req = req.body(()).map_err(|e| format!("the request: {e}"))?;
    let client = H3Client::new(trust(one.cacert.as_deref())?)?;
    let exchange = async {
        let conn = client.connect(addr, &name).await?;
        let resp = conn.request(req, one.body).await;
        conn.close();
        resp
    };
    let resp = tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        format!("no HTTP/3 answer from {addr} within {timeout:?} (nothing listening on UDP, or not HTTP/3?)")
    })??;
    println!("HTTP/3 {}", resp.status);
    if include {
        for (k, v) in &resp.headers {
            println!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
        println!();
    }
    print!("{}", String::from_utf8_lossy(&resp.body));
    Ok(())
}

/// How much load, for how long.
struct Plan {
    connections: usize,
    streams: usize,
    duration: Duration,
    max_requests: u64,
    rate: f64,
    proto: Proto,
}

/// The protocol `load` speaks to an https:// URL.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Proto {
    H3,
    H2,
    H1,
    Quic,
}

/// One request on whichever protocol the URL names.
#[derive(Clone)]
enum Conn {
    H3(Arc<H3Conn>),
    H1(Arc<Client<HttpConnector, Empty<Bytes>>>),
    /// HTTP/2 over TLS: one connection, streams multiplexed.
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    /// HTTP/1.1 over TLS: this task's own connection.
    H1Tls(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>),
    /// Raw QUIC to `quic-serve`: a stream per request.
    Quic(quinn::Connection),
}

/// A TLS connection (any certificate accepted) to `addr` offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    alpn: &[u8],
) -> Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(spooky_stages::upstreams::tls::NoVerify(
            provider,
        )))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no TCP answer from {addr} within 5s"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_nodelay(true)?;
    let server = rustls_pki_types::ServerName::try_from(name.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(server, tcp)
        .await?;
    Ok(TokioIo::new(tls))
}

impl Conn {
    /// A new connection of `proto` to an https:// target.
    async fn open(
        proto: Proto,
        addr: SocketAddr,
        name: &str,
        h3: &H3Client,
    ) -> Result<Conn, Error> {
        match proto {
            Proto::H3 => {
                let c = tokio::time::timeout(Duration::from_secs(5), h3.connect(addr, name))
                    .await
                    .map_err(|_| format!("no HTTP/3 handshake with {addr} within 5s (nothing listening on UDP, or not HTTP/3?)"))??;
                Ok(Conn::H3(Arc::new(c)))
            }
            Proto::H2 => {
                let io = tls_connect(addr, name, b"h2").await?;
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Ok(Conn::H2(send))
            }
            Proto::H1 => {
                let io = tls_connect(addr, name, b"http/1.1").await?;
                let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Ok(Conn::H1Tls(Arc::new(tokio::sync::Mutex::new(send))))
            }
            Proto::Quic => Ok(Conn::Quic(quic::connect(addr).await?)),
        }
    }
}

/// Closes the QUIC connections among `conns` (TCP ones close when dropped).
fn close_h3(conns: &[Conn]) {
    for c in conns {
        match c {
            Conn::H3(h) => h.close(),
            Conn::Quic(q) => q.close(0u32.into(), b"done"),
            _ => {}
        }
    }
}

/// What came back: the status, the body's length and, for Spooky's own refusals, their
/// reason (the `details` of `Proxy-Status: spooky; …`).
struct Outcome {
    status: u16,
    bytes: u64,
    reason: Option<String>,
}

/// The reason Spooky gave in a `Proxy-Status` field, if Spooky made the response.
fn spooky_reason(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get("proxy-status")?.to_str().ok()?;
    let rest = v.strip_prefix("spooky")?;
    let details = rest
        .split(';')
        .find_map(|p| p.trim().strip_prefix("details="))?;
    Some(details.trim_matches('"').to_string())
}

/// Reads a whole response, counting its body rather than keeping it: its outcome.
async fn whole(resp: http::Response<Incoming>) -> Result<Outcome, Error> {
    let mut outcome = Outcome {
        status: resp.status().as_u16(),
        bytes: 0,
        reason: spooky_reason(resp.headers()),
    };
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            outcome.bytes += data.len() as u64;
        }
    }
    Ok(outcome)
}

impl Conn {
    async fn get(&self, url: &str) -> Result<Outcome, Error> {
        match self {
            Conn::H3(c) => {
                let r = c.get(url).await?;
                Ok(Outcome {
                    status: r.status.as_u16(),
                    bytes: r.body.len() as u64,
                    reason: spooky_reason(&r.headers),
                })
            }
            Conn::Quic(c) => Ok(Outcome {
                status: 200,
                bytes: quic::fetch(c).await?,
                reason: None,
            }),
            Conn::H1(c) => whole(c.get(url.parse()?).await?).await,
            Conn::H2(send) => {
                let mut send = send.clone();
                let req = http::Request::get(url).body(Empty::new())?;
                whole(send.send_request(req).await?).await
            }
            Conn::H1Tls(send) => {
                let uri: Uri = url.parse()?;
                let target = uri.path_and_query().map_or("/", |p| p.as_str());
                let req = http::Request::get(target)
                    .header(
                        http::header::HOST,
                        uri.authority().map_or("", |a| a.as_str()),
                    )
                    .body(Empty::new())?;
                let mut send = send.lock().await;
                send.ready().await?;
                whole(send.send_request(req).await?).await
            }
        }
    }
}

/// What one load task saw.
#[derive(Default)]
struct Tally {
    /// Latencies of 2xx responses.
    ok: Vec<Duration>,
    by_status: BTreeMap<u16, u64>,
    by_reason: BTreeMap<String, u64>,
    errors: u64,
    /// Body bytes of every response.
    bytes: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok.extend(other.ok);
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in other.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
        self.errors += other.errors;
        self.bytes += other.bytes;
    }
}

async fn load(url: &str, plan: Plan, machine: bool) -> Result<(), Error> {
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // One entry per load task: a connection repeated once per stream it carries.
    let mut conns = Vec::new();
    if url.starts_with("http://") {
        for _ in 0..plan.connections {
            let client = Client::builder(TokioExecutor::new()).build_http();
            conns.extend(std::iter::repeat_n(
                Conn::H1(Arc::new(client)),
                plan.streams,
            ));
        }
    } else {
        let (addr, name) = target(url)?;
        let client = H3Client::new(Trust::Insecure)?;
        // HTTP/1.1 has no streams: each one is a connection.
        let (opens, per_conn) = if plan.proto == Proto::H1 {
            (plan.connections * plan.streams, 1)
        } else {
            (plan.connections, plan.streams)
        };
        for _ in 0..opens {
            let c = Conn::open(plan.proto, addr, &name, &client).await?;
            conns.extend(std::iter::repeat_n(c, per_conn));
        }
    }
    let workers = conns.len();
    // Open loop: each task's requests are due every `interval`, staggered across tasks; a task
    // that falls behind sends at once, and the wait counts in the latency.
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(workers as f64 / plan.rate));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (w, conn) in conns.iter().enumerate() {
        let (conn, issued, stop) = (conn.clone(), issued.clone(), stop.clone());
        let url = url.to_string();
        let max = plan.max_requests;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut due = tokio::time::Instant::now()
                + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / workers as f64));
            while !stop.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < max {
                let from = match interval {
                    Some(i) => {
                        tokio::time::sleep_until(due).await;
                        let from = due;
                        due += i;
                        from
                    }
                    None => tokio::time::Instant::now(),
                };
                match conn.get(&url).await {
                    Ok(o) => {
                        if (200..300).contains(&o.status) {
                            tally.ok.push(from.elapsed());
                        }
                        *tally.by_status.entry(o.status).or_default() += 1;
                        tally.bytes += o.bytes;
                        if let Some(r) = o.reason {
                            *tally.by_reason.entry(r).or_default() += 1;
                        }
                    }
                    Err(_) => tally.errors += 1,
                }
            }
            tally
        }));
    }
    // Until the duration is up or `max_requests` were made, whichever comes first.
    let mut joined = futures::future::join_all(tasks);
    let results = tokio::select! {
        r = &mut joined => r,
        () = tokio::time::sleep(plan.duration) => {
            stop.store(true, Ordering::Relaxed);
            joined.await
        }
    };
    let mut all = Tally::default();
    for t in results {
        all.add(t?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = all.ok;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    let rps = lat.len() as f64 / elapsed;
    let errors = all.errors;
    let bytes = all.bytes;
    let mib_s = bytes as f64 / 1_048_576.0 / elapsed;
    let max_us = lat.last().map_or(0, |d| d.as_micros());
    let statuses: Vec<String> = all
        .by_status
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    let reasons: Vec<String> = all
        .by_reason
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    if machine {
        println!(
            "rps={rps:.0} ok={} errors={errors} p50_us={} p90_us={} p99_us={} max_us={max_us} bytes={bytes} mib_s={mib_s:.1} status={} reasons={}",
            lat.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            statuses.join(","),
            if reasons.is_empty() {
                "-".to_string()
            } else {
                reasons.join(",")
            },
        );
    } else {
        println!(
            "requests: {} ok (2xx), {errors} transport errors in {elapsed:.2}s",
            lat.len()
        );
        println!("status:   {}", statuses.join("  "));
        if !reasons.is_empty() {
            println!("refused by spooky: {}", reasons.join("  "));
        }
        println!("req/s:    {rps:.0}");
        println!("body:     {bytes} bytes, {mib_s:.1} MiB/s");
        println!(
            "latency:  p50 {}µs  p90 {}µs  p99 {}µs  max {max_us}µs{}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            if interval.is_some() {
                " (from when each request was due)"
            } else {
                ""
            }
        );
    }
    close_h3(&conns);
    Ok(())
}

async fn idle(url: &str, n: usize, proto: Proto, hold: Duration) -> Result<(), Error> {
    let (addr, name) = target(url)?;
    let client = H3Client::new(Trust::Insecure)?;
    let mut open = Vec::with_capacity(n);
    // Twenty handshakes at a time: quick, without a burst a server would refuse (quic-go, in
    // Caddy, refuses new connections while too many handshakes are in progress).
    while open.len() < n {
        let batch = (n - open.len()).min(20);
        let made = futures::future::join_all((0..batch).map(|_| async {
            let c = Conn::open(proto, addr, &name, &client).await?;
            let o = c.get(url).await?;
            if !(200..300).contains(&o.status) {
                return Err(Error::from(format!("{url}: status {}", o.status)));
            }
            Ok::<_, Error>(c)
        }))
        .await;
        for c in made {
            open.push(c?);
        }
    }
    println!("open {}", open.len());
    tokio::time::sleep(hold).await;
    close_h3(&open);
    Ok(())
}

async fn slow(url: &str, requests: usize, hold: Duration) -> Result<(), Error> {
    const STREAMS: usize = 100;
    const WINDOW: u32 = 64 * 1024;
    let (addr, name) = target(url)?;
    let mut held = Vec::with_capacity(requests);
    let mut left = requests;
    while left > 0 {
        let streams = left.min(STREAMS);
        left -= streams;
        let io = tls_connect(addr, &name, b"h2").await?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW * streams as u32)
            .handshake::<_, Empty<Bytes>>(io)
            .await?;
        tokio::spawn(conn);
        let heads = futures::future::join_all((0..streams).map(|_| {
            let mut send = send.clone();
            async move {
                let req = http::Request::get(url).body(Empty::new())?;
                Ok::<_, Error>(send.send_request(req).await?)
            }
        }))
        .await;
        for h in heads {
            let resp = h?;
            if !resp.status().is_success() {
                return Err(format!("{url}: status {}", resp.status()).into());
            }
            held.push(resp);
        }
    }
    println!("held {}", held.len());
    tokio::time::sleep(hold).await;
    Ok(())
}

async fn backend(
    addr: SocketAddr,
    size: usize,
    delay: Duration,
    concurrency: usize,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("backend listening on http://{}", listener.local_addr()?);
    let body = Bytes::from(vec![b'x'; size]);
    let slots = (concurrency > 0).then(|| Arc::new(tokio::sync::Semaphore::new(concurrency)));
    loop {
        let (stream, _) = listener.accept().await?;
        let (body, slots) = (body.clone(), slots.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |_req: http::Request<Incoming>| {
                let (body, slots) = (body.clone(), slots.clone());
                async move {
                    // Fair: tokio's semaphore serves waiters in order.
                    let _slot = match &slots {
                        Some(s) => s.clone().acquire_owned().await.ok(),
                        None => None,
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
