//! `spooky-bench`: an HTTP/3 client for trying Spooky out and loading it.
//!
//! * `spooky-bench get https://127.0.0.1:8443/hello` — one request, prints status and body.
//! * `spooky-bench load --url https://127.0.0.1:8443/x --connections 8 --streams 16
//!   --duration 10s` — closed-loop load: each connection keeps `streams` requests in flight;
//!   prints req/s and p50/p90/p99/max latency. Bounded by `--duration` and `--max-requests`.
//!   `--rate R` paces requests to R per second in all (for latency at a given load). An
//!   `http://` URL loads an HTTP/1.1 server directly (the baseline without the proxy).
//! * `spooky-bench backend --addr 127.0.0.1:8080 --size 1024` — an HTTP/1.1 backend answering
//!   every request with `size` bytes.

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
use spooky::h3client::{Error, H3Client, H3Conn, Trust};

#[derive(Parser)]
#[command(name = "spooky-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One GET; prints the status line, headers (with -i) and body.
    Get {
        url: String,
        /// Print response headers.
        #[arg(short = 'i', long)]
        include: bool,
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
        /// Requests per second in all (0 = as fast as responses come back).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Print one machine-readable line (`rps=… p50_us=… …`) instead of a table.
        #[arg(long)]
        machine: bool,
    },
    /// An HTTP/1.1 backend answering every request with `size` bytes.
    Backend {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Get { url, include } => get(&url, include).await,
            Command::Load {
                url,
                connections,
                streams,
                duration,
                max_requests,
                rate,
                machine,
            } => {
                let d = spooky_stages::config::parse_duration(&duration).map_err(Error::from)?;
                let plan = Plan {
                    connections,
                    streams,
                    duration: d,
                    max_requests,
                    rate,
                };
                load(&url, plan, machine).await
            }
            Command::Backend { addr, size } => backend(addr, size).await,
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

async fn get(url: &str, include: bool) -> Result<(), Error> {
    let (addr, name) = target(url)?;
    let client = H3Client::new(Trust::Insecure)?;
    let conn = client.connect(addr, &name).await?;
    let resp = conn.get(url).await?;
    println!("HTTP/3 {}", resp.status);
    if include {
        for (k, v) in &resp.headers {
            println!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
        println!();
    }
    print!("{}", String::from_utf8_lossy(&resp.body));
    conn.close();
    Ok(())
}

/// How much load, for how long.
struct Plan {
    connections: usize,
    streams: usize,
    duration: Duration,
    max_requests: u64,
    rate: f64,
}

/// One request on whichever protocol the URL names.
#[derive(Clone)]
enum Conn {
    H3(Arc<H3Conn>),
    H1(Arc<Client<HttpConnector, Empty<Bytes>>>),
}

impl Conn {
    async fn get(&self, url: &str) -> Result<bool, Error> {
        match self {
            Conn::H3(c) => Ok(c.get(url).await?.status.is_success()),
            Conn::H1(c) => {
                let resp = c.get(url.parse()?).await?;
                let ok = resp.status().is_success();
                resp.into_body().collect().await?;
                Ok(ok)
            }
        }
    }
}

async fn load(url: &str, plan: Plan, machine: bool) -> Result<(), Error> {
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    let mut h3 = Vec::new();
    if url.starts_with("http://") {
        for _ in 0..plan.connections {
            let client = Client::builder(TokioExecutor::new()).build_http();
            conns.push(Conn::H1(Arc::new(client)));
        }
    } else {
        let (addr, name) = target(url)?;
        let client = H3Client::new(Trust::Insecure)?;
        for _ in 0..plan.connections {
            let c = Arc::new(client.connect(addr, &name).await?);
            h3.push(c.clone());
            conns.push(Conn::H3(c));
        }
    }
    let workers = plan.connections * plan.streams;
    // With a rate, each worker sends on its own schedule: one request every `interval`.
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(workers as f64 / plan.rate));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (w, conn) in conns
        .iter()
        .flat_map(|c| std::iter::repeat_n(c, plan.streams))
        .enumerate()
    {
        let (conn, issued, stop, errors) =
            (conn.clone(), issued.clone(), stop.clone(), errors.clone());
        let url = url.to_string();
        let max = plan.max_requests;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut next = tokio::time::Instant::now()
                + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / workers as f64));
            while !stop.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < max {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next).await;
                    next += i;
                }
                let t = Instant::now();
                match conn.get(&url).await {
                    Ok(true) => lat.push(t.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(plan.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    let rps = all.len() as f64 / elapsed;
    let errors = errors.load(Ordering::Relaxed);
    let max_us = all.last().map_or(0, |d| d.as_micros());
    if machine {
        println!(
            "rps={rps:.0} ok={} errors={errors} p50_us={} p90_us={} p99_us={} max_us={max_us}",
            all.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99)
        );
    } else {
        println!(
            "requests: {} ok, {errors} errors in {elapsed:.2}s",
            all.len()
        );
        println!("req/s:    {rps:.0}");
        println!(
            "latency:  p50 {}µs  p90 {}µs  p99 {}µs  max {max_us}µs",
            pct(0.5),
            pct(0.9),
            pct(0.99)
        );
    }
    for c in &h3 {
        c.close();
    }
    Ok(())
}

async fn backend(addr: SocketAddr, size: usize) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("backend listening on http://{}", listener.local_addr()?);
    let body = Bytes::from(vec![b'x'; size]);
    loop {
        let (stream, _) = listener.accept().await?;
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req: http::Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
